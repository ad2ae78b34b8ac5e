//! A node's configuration (XEP-0060 §16.4, `pubsub#node_config`), its data
//! form both ways, and publish-options preconditions (§7.1.5).

use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;

pub const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// Who may subscribe and read items.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessModel {
    Open,
    #[default]
    Presence,
    Roster,
    Whitelist,
    Authorize,
}

impl AccessModel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Open => "open",
            AccessModel::Presence => "presence",
            AccessModel::Roster => "roster",
            AccessModel::Whitelist => "whitelist",
            AccessModel::Authorize => "authorize",
        }
    }

    fn parse(s: &str) -> Option<AccessModel> {
        Some(match s {
            "open" => AccessModel::Open,
            "presence" => AccessModel::Presence,
            "roster" => AccessModel::Roster,
            "whitelist" => AccessModel::Whitelist,
            "authorize" => AccessModel::Authorize,
            _ => return None,
        })
    }
}

/// Who may publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishModel {
    #[default]
    Publishers,
    Subscribers,
    Open,
}

impl PublishModel {
    pub fn as_str(self) -> &'static str {
        match self {
            PublishModel::Publishers => "publishers",
            PublishModel::Subscribers => "subscribers",
            PublishModel::Open => "open",
        }
    }
}

/// When the last item goes to a new subscriber.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendLast {
    Never,
    OnSub,
    #[default]
    OnSubAndPresence,
}

impl SendLast {
    pub fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
}

/// A node's configuration, kept as JSON in the node's row.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    pub access_model: AccessModel,
    /// Roster groups allowed under the `roster` access model.
    pub roster_groups_allowed: Vec<String>,
    pub publish_model: PublishModel,
    /// Items kept; `None` is the service's `max_items_per_node`.
    pub max_items: Option<u64>,
    pub persist_items: bool,
    pub deliver_payloads: bool,
    pub deliver_notifications: bool,
    pub notify_retract: bool,
    pub notify_delete: bool,
    pub notify_config: bool,
    pub send_last_published_item: SendLast,
    pub title: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            access_model: AccessModel::Presence,
            roster_groups_allowed: Vec::new(),
            publish_model: PublishModel::Publishers,
            max_items: None,
            persist_items: true,
            deliver_payloads: true,
            deliver_notifications: true,
            notify_retract: true,
            notify_delete: true,
            notify_config: false,
            send_last_published_item: SendLast::OnSubAndPresence,
            title: String::new(),
        }
    }
}

/// Why a form was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FormError {
    /// A value the field cannot take (`not-acceptable`).
    Invalid(String),
    /// A feature this service does not have (`feature-not-implemented` with
    /// `unsupported`): collection nodes (XEP-0248).
    Unsupported(&'static str),
}

/// `1`/`true` or `0`/`false` (XEP-0004 booleans).
fn boolean(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// The values of each field of a submitted form, FORM_TYPE left out.
pub fn fields(form: &Element) -> Vec<(String, Vec<String>)> {
    form.elements()
        .filter(|f| f.is("field", ns::DATA_FORMS))
        .filter_map(|f| {
            let var = f.attr("var")?;
            if var == "FORM_TYPE" {
                return None;
            }
            let values = f.elements().filter(|v| v.is("value", ns::DATA_FORMS)).map(|v| v.text()).collect();
            Some((var.to_owned(), values))
        })
        .collect()
}

/// The FORM_TYPE of a submitted form.
pub fn form_type(form: &Element) -> Option<String> {
    form.elements()
        .find(|f| f.is("field", ns::DATA_FORMS) && f.attr("var") == Some("FORM_TYPE"))
        .and_then(|f| f.get_child("value", ns::DATA_FORMS))
        .map(|v| v.text().trim().to_owned())
}

impl NodeConfig {
    /// Applies the fields of a submitted form (configure, create or
    /// publish-options). Unknown fields and empty values are left alone, as
    /// some clients send back every field they got; a known field with a
    /// value it cannot take refuses the whole form. `max_items_per_node`
    /// bounds `max_items` (and is what `max` means).
    pub fn apply(&mut self, form: &[(String, Vec<String>)], max_items_per_node: u64) -> Result<(), FormError> {
        let mut next = self.clone();
        for (var, values) in form {
            let Some(name) = var.strip_prefix("pubsub#") else { continue };
            let first = values.first().map(|v| v.trim()).unwrap_or("");
            if (first.is_empty() || first == "null") && name != "roster_groups_allowed" {
                continue;
            }
            let invalid = || FormError::Invalid(format!("{var} cannot be {first:?}"));
            let flag = || boolean(first).ok_or_else(invalid);
            match name {
                "access_model" => next.access_model = AccessModel::parse(first).ok_or_else(invalid)?,
                "roster_groups_allowed" => {
                    next.roster_groups_allowed = values.iter().filter(|v| !v.is_empty()).cloned().collect()
                }
                "publish_model" => {
                    next.publish_model = match first {
                        "publishers" => PublishModel::Publishers,
                        "subscribers" => PublishModel::Subscribers,
                        "open" => PublishModel::Open,
                        _ => return Err(invalid()),
                    }
                }
                "max_items" => {
                    next.max_items = match first {
                        "max" => None,
                        n => match n.parse::<u64>() {
                            Ok(n) if n >= 1 && n <= max_items_per_node => Some(n),
                            _ => return Err(invalid()),
                        },
                    }
                }
                "persist_items" => next.persist_items = flag()?,
                "deliver_payloads" => next.deliver_payloads = flag()?,
                "deliver_notifications" => next.deliver_notifications = flag()?,
                "notify_retract" => next.notify_retract = flag()?,
                "notify_delete" => next.notify_delete = flag()?,
                "notify_config" => next.notify_config = flag()?,
                "send_last_published_item" => {
                    next.send_last_published_item = match first {
                        "never" => SendLast::Never,
                        "on_sub" => SendLast::OnSub,
                        "on_sub_and_presence" => SendLast::OnSubAndPresence,
                        _ => return Err(invalid()),
                    }
                }
                "title" => next.title = first.to_owned(),
                // Every node is a leaf: collections (XEP-0248) are not served.
                "node_type" if first == "leaf" => {}
                "node_type" | "collection" | "children" => return Err(FormError::Unsupported("collections")),
                _ => {}
            }
        }
        *self = next;
        Ok(())
    }

    /// Whether publish-options match this configuration (XEP-0060 §7.1.5):
    /// every field it knows must have the value asked; an unknown field is
    /// a precondition that cannot be met.
    pub fn meets(&self, options: &[(String, Vec<String>)], max_items_per_node: u64) -> bool {
        let mut wanted = self.clone();
        for (var, values) in options {
            if !var.starts_with("pubsub#") || !KNOWN.contains(&&var["pubsub#".len()..]) {
                return false;
            }
            if wanted.apply(&[(var.clone(), values.clone())], max_items_per_node).is_err() {
                return false;
            }
        }
        wanted == *self
    }

    /// Items kept, with `max_items_per_node` as the bound.
    pub fn kept(&self, max_items_per_node: u64) -> u64 {
        self.max_items.unwrap_or(max_items_per_node).min(max_items_per_node)
    }

    /// The configuration form (`pubsub#node_config`) with the current values.
    pub fn form(&self, max_items_per_node: u64) -> Element {
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", "form");
        x.push_child(field("FORM_TYPE", "hidden", &[NODE_CONFIG]));
        let b = |v: bool| if v { "1" } else { "0" };
        let max = self.max_items.map_or_else(|| "max".to_owned(), |n| n.to_string());
        let _ = max_items_per_node;
        x.push_child(field("pubsub#title", "text-single", &[&self.title]));
        x.push_child(list(
            "pubsub#access_model",
            self.access_model.as_str(),
            &["open", "presence", "roster", "whitelist", "authorize"],
        ));
        let groups: Vec<&str> = self.roster_groups_allowed.iter().map(String::as_str).collect();
        x.push_child(field("pubsub#roster_groups_allowed", "list-multi", &groups));
        x.push_child(list("pubsub#publish_model", self.publish_model.as_str(), &["publishers", "subscribers", "open"]));
        x.push_child(field("pubsub#max_items", "text-single", &[&max]));
        x.push_child(field("pubsub#persist_items", "boolean", &[b(self.persist_items)]));
        x.push_child(field("pubsub#deliver_payloads", "boolean", &[b(self.deliver_payloads)]));
        x.push_child(field("pubsub#deliver_notifications", "boolean", &[b(self.deliver_notifications)]));
        x.push_child(field("pubsub#notify_retract", "boolean", &[b(self.notify_retract)]));
        x.push_child(field("pubsub#notify_delete", "boolean", &[b(self.notify_delete)]));
        x.push_child(field("pubsub#notify_config", "boolean", &[b(self.notify_config)]));
        x.push_child(list(
            "pubsub#send_last_published_item",
            self.send_last_published_item.as_str(),
            &["never", "on_sub", "on_sub_and_presence"],
        ));
        x
    }
}

/// The fields [`NodeConfig::meets`] can compare.
const KNOWN: &[&str] = &[
    "access_model",
    "roster_groups_allowed",
    "publish_model",
    "max_items",
    "persist_items",
    "deliver_payloads",
    "deliver_notifications",
    "notify_retract",
    "notify_delete",
    "notify_config",
    "send_last_published_item",
    "title",
];

fn field(var: &str, kind: &str, values: &[&str]) -> Element {
    let mut f = Element::new("field", ns::DATA_FORMS).with_attr("var", var).with_attr("type", kind);
    for v in values {
        let mut value = Element::new("value", ns::DATA_FORMS);
        value.push_text(*v);
        f.push_child(value);
    }
    f
}

fn list(var: &str, value: &str, options: &[&str]) -> Element {
    let mut f = field(var, "list-single", &[value]);
    for o in options {
        let mut opt = Element::new("option", ns::DATA_FORMS);
        let mut v = Element::new("value", ns::DATA_FORMS);
        v.push_text(*o);
        opt.push_child(v);
        f.push_child(opt);
    }
    f
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
        pairs.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect()
    }

    #[test]
    fn forms_set_the_configuration_and_odd_values_are_tolerated_or_refused() {
        let mut c = NodeConfig::default();
        c.apply(
            &f(&[("pubsub#access_model", "open"), ("pubsub#persist_items", "true"), ("pubsub#max_items", "max")]),
            100,
        )
        .unwrap();
        assert_eq!((c.access_model, c.persist_items, c.max_items), (AccessModel::Open, true, None));
        c.apply(&f(&[("pubsub#max_items", "1"), ("pubsub#title", "null"), ("pubsub#unknown", "x")]), 100).unwrap();
        assert_eq!((c.max_items, c.title.as_str()), (Some(1), ""));
        let before = c.clone();
        assert!(c.apply(&f(&[("pubsub#title", "t"), ("pubsub#access_model", "everyone")]), 100).is_err());
        assert_eq!(c, before, "a refused form changes nothing");
        assert!(c.apply(&f(&[("pubsub#max_items", "101")]), 100).is_err());
        assert!(c.apply(&f(&[("pubsub#max_items", "0")]), 100).is_err());
        // A leaf is what every node is; a collection, or a place in one, is refused as unsupported.
        c.apply(&f(&[("pubsub#node_type", "leaf"), ("pubsub#collection", "")]), 100).unwrap();
        assert_eq!(c.apply(&f(&[("pubsub#node_type", "collection")]), 100), Err(FormError::Unsupported("collections")));
        assert_eq!(c.apply(&f(&[("pubsub#collection", "parent")]), 100), Err(FormError::Unsupported("collections")));
        assert_eq!(c.kept(100), 1);
        assert_eq!(NodeConfig::default().kept(100), 100);
    }

    #[test]
    fn preconditions_compare_known_fields() {
        let mut c = NodeConfig::default();
        c.apply(&f(&[("pubsub#access_model", "open"), ("pubsub#persist_items", "1")]), 100).unwrap();
        assert!(c.meets(&f(&[("pubsub#access_model", "open"), ("pubsub#persist_items", "true")]), 100));
        assert!(!c.meets(&f(&[("pubsub#access_model", "whitelist")]), 100));
        assert!(!c.meets(&f(&[("pubsub#max_items", "1")]), 100));
        assert!(c.meets(&f(&[("pubsub#max_items", "max")]), 100));
        assert!(!c.meets(&f(&[("pubsub#made_up", "1")]), 100));
    }

    #[test]
    fn the_form_round_trips() {
        let mut c = NodeConfig::default();
        c.apply(&f(&[("pubsub#access_model", "roster"), ("pubsub#max_items", "5"), ("pubsub#title", "News")]), 100)
            .unwrap();
        let form = c.form(100);
        assert_eq!(form_type(&form).as_deref(), Some(NODE_CONFIG));
        let mut back = NodeConfig::default();
        back.apply(&fields(&form), 100).unwrap();
        assert_eq!(back, c);
    }
}
