//! What each XEP-0060 request does to a node, on SQL, and the
//! notifications it makes. Runs inside the node's actor ([`super::actor`]),
//! so requests to one node never interleave.

use meerkat_storage::{
    PubsubItem, PubsubNode, PubsubRepo as _, PubsubSubscription, RosterRepo as _, Storage, StorageError, Subscription,
};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{parse_bare, parse_jid, Bare as _};

use super::config::{AccessModel, NodeConfig, PublishModel, SendLast};
use super::{NS_PUBSUB, NS_PUBSUB_EVENT, NS_PUBSUB_OWNER};
use crate::ext::util::now_micros;

/// The namespace of XEP-0060's application error conditions.
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

/// A request's failure: a stanza error condition, with XEP-0060's
/// application condition when there is one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PsError {
    /// The defined condition's name (RFC 6120 §8.3.3).
    pub condition: String,
    /// The element of `pubsub#errors` (`precondition-not-met`, `closed-node`, …).
    pub app: Option<String>,
    /// For `unsupported`: the feature.
    pub feature: Option<String>,
}

impl PsError {
    pub fn new(condition: StanzaErrorCondition) -> PsError {
        PsError { condition: condition.as_str().to_owned(), app: None, feature: None }
    }

    pub fn app(condition: StanzaErrorCondition, app: &str) -> PsError {
        PsError { condition: condition.as_str().to_owned(), app: Some(app.to_owned()), feature: None }
    }

    /// `feature-not-implemented` with `unsupported` naming the feature (XEP-0060 §10).
    pub fn unsupported(feature: &str) -> PsError {
        PsError {
            condition: StanzaErrorCondition::FeatureNotImplemented.as_str().to_owned(),
            app: Some("unsupported".into()),
            feature: Some(feature.to_owned()),
        }
    }

    /// The `<error/>` element of the reply.
    pub fn element(&self) -> Element {
        let cond = StanzaErrorCondition::from_name(&self.condition).unwrap_or(StanzaErrorCondition::UndefinedCondition);
        let mut e = meerkat_xmpp::error::error_element(cond, None, meerkat_xmpp::ns::CLIENT);
        if let Some(app) = &self.app {
            let mut a = Element::new(app.as_str(), NS_ERRORS);
            if let Some(f) = &self.feature {
                a.set_attr("feature", f.clone());
            }
            e.push_child(a);
        }
        e
    }
}

/// A storage failure, logged, as the requester sees it.
pub fn storage_error(e: StorageError) -> PsError {
    tracing::error!(error = %e, "pubsub storage");
    PsError::new(StanzaErrorCondition::InternalServerError)
}

/// A form's fields, as they travel.
pub type Form = Vec<(String, Vec<String>)>;

/// A request to one node.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Op {
    Create {
        config: Option<Form>,
    },
    GetConfig,
    Configure {
        form: Form,
    },
    Delete {
        redirect: Option<String>,
    },
    Purge,
    Publish {
        item_id: Option<String>,
        payload: Option<String>,
        options: Option<Form>,
    },
    Retract {
        ids: Vec<String>,
        notify: bool,
    },
    Subscribe {
        jid: String,
    },
    Unsubscribe {
        jid: String,
        subid: Option<String>,
    },
    Items {
        max: Option<u64>,
        ids: Vec<String>,
    },
    GetSubscriptions,
    SetSubscriptions {
        entries: Vec<(String, String)>,
    },
    GetAffiliations,
    SetAffiliations {
        entries: Vec<(String, String)>,
    },
    /// An owner's answer to a subscription request (XEP-0060 §8.6).
    Authorize {
        subid: Option<String>,
        jid: String,
        allow: bool,
    },
}

/// A request: the service (a PubSub domain, or an account for PEP), the
/// node, who asks (a full JID) and what.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub service: String,
    pub node: String,
    pub from: String,
    pub op: Op,
}

/// A notification to send: the event element, to these JIDs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Notification {
    /// `pubsub#event` element, serialized.
    pub event: String,
    /// Subscribers, each with its subscription id (a SHIM header).
    pub subscribers: Vec<(String, String)>,
    /// Accounts that get it by their interest (PEP `+notify`), as bare JIDs:
    /// their sessions keep it only where the client asked for the node.
    pub interested: Vec<String>,
    /// PEP: the node's name, and the contacts on other servers the node lets
    /// in (bare JIDs); each of their resources whose caps ask for the node
    /// gets it ([`super::remote`]).
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub remote: Vec<String>,
}

/// The answer: a payload for the IQ result, and what to notify.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Done {
    pub payload: Option<String>,
    pub notify: Vec<Notification>,
    /// Other messages from the service: (to, the message's child, serialized).
    pub messages: Vec<(String, String)>,
}

/// What the engine needs from the module.
pub struct Env<'a> {
    pub storage: &'a Storage,
    pub max_items_per_node: u64,
    /// PEP nodes one account may have.
    pub max_pep_nodes: usize,
    /// Nodes one account may own on a service domain.
    pub max_nodes_per_account: usize,
    pub default_config: &'a NodeConfig,
    /// Whether `jid`'s domain may create nodes on a service domain.
    pub may_create: &'a (dyn Fn(&str) -> bool + Send + Sync),
    /// This server's hosts: PEP notifies by interest only contacts here,
    /// whose sessions know what their clients asked for.
    pub hosts: &'a [String],
}

/// Whether the service is an account (PEP) rather than a PubSub domain.
pub fn is_pep(service: &str) -> bool {
    service.contains('@')
}

fn bare_of(jid: &str) -> String {
    parse_jid(jid).map(|j| j.bare().to_string()).unwrap_or_else(|_| jid.to_owned())
}

fn config_of(node: &PubsubNode) -> NodeConfig {
    serde_json::from_str(&node.config).unwrap_or_default()
}

fn to_json(c: &NodeConfig) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

/// Affiliations a node can hold.
const AFFILIATIONS: &[&str] = &["owner", "publisher", "publish-only", "member", "outcast", "none"];

/// The requester's affiliation: PEP nodes are their account's; others as stored.
async fn affiliation(env: &Env<'_>, service: &str, node: &str, bare: &str) -> Result<String, PsError> {
    if is_pep(service) && service == bare {
        return Ok("owner".into());
    }
    let affs = env.storage.pubsub_affiliations(service, node).await.map_err(storage_error)?;
    Ok(affs.into_iter().find(|(j, _)| j == bare).map(|(_, a)| a).unwrap_or_else(|| "none".into()))
}

/// The roster item the node's owner has for `bare`, when the owner is an account here.
async fn owners_item(env: &Env<'_>, owner: &str, bare: &str) -> Option<meerkat_storage::RosterItem> {
    let owner = parse_bare(owner).ok()?;
    let user = owner.node()?.to_string();
    env.storage.get_item(owner.domain().as_str(), &user, bare).await.ok().flatten()
}

/// Whether `bare` may read items and subscribe (XEP-0060 §4.5), else why not.
async fn may_access(env: &Env<'_>, n: &PubsubNode, cfg: &NodeConfig, aff: &str, bare: &str) -> Result<(), PsError> {
    match aff {
        "owner" | "publisher" | "member" => return Ok(()),
        "outcast" => return Err(PsError::new(StanzaErrorCondition::Forbidden)),
        _ => {}
    }
    let owner = if is_pep(&n.service) { n.service.as_str() } else { n.owner.as_str() };
    match cfg.access_model {
        AccessModel::Open | AccessModel::Authorize => Ok(()),
        AccessModel::Presence => match owners_item(env, owner, bare).await {
            Some(i) if matches!(i.subscription, Subscription::From | Subscription::Both) => Ok(()),
            _ => Err(PsError::app(StanzaErrorCondition::NotAuthorized, "presence-subscription-required")),
        },
        AccessModel::Roster => match owners_item(env, owner, bare).await {
            Some(i) if i.groups.iter().any(|g| cfg.roster_groups_allowed.contains(g)) => Ok(()),
            _ => Err(PsError::app(StanzaErrorCondition::NotAuthorized, "not-in-roster-group")),
        },
        AccessModel::Whitelist => Err(PsError::app(StanzaErrorCondition::NotAllowed, "closed-node")),
    }
}

/// A configuration form refused: a value a field cannot take, or a feature not served.
fn form_error(e: super::config::FormError) -> PsError {
    match e {
        super::config::FormError::Invalid(_) => PsError::new(StanzaErrorCondition::NotAcceptable),
        super::config::FormError::Unsupported(feature) => PsError::unsupported(feature),
    }
}

fn item_not_found() -> PsError {
    PsError::new(StanzaErrorCondition::ItemNotFound)
}

fn forbidden() -> PsError {
    PsError::new(StanzaErrorCondition::Forbidden)
}

/// Runs a request.
pub async fn run(env: &Env<'_>, req: &Request) -> Result<Done, PsError> {
    let bare = bare_of(&req.from);
    let node = env.storage.pubsub_node(&req.service, &req.node).await.map_err(storage_error)?;
    match (&req.op, node) {
        (Op::Create { config }, None) => create(env, req, &bare, config.as_ref()).await.map(|_| Done::default()),
        (Op::Create { .. }, Some(_)) => Err(PsError::new(StanzaErrorCondition::Conflict)),
        (Op::Publish { item_id, payload, options }, None) => {
            // Auto-create (XEP-0060 §7.1.4, XEP-0163 §3), with the publish-options as configuration.
            let n = create(env, req, &bare, options.as_ref()).await?;
            publish(env, req, &bare, &n, item_id.clone(), payload.clone(), None).await
        }
        (_, None) => Err(item_not_found()),
        (op, Some(n)) => {
            let aff = affiliation(env, &req.service, &req.node, &bare).await?;
            let cfg = config_of(&n);
            match op {
                Op::Create { .. } => Err(PsError::new(StanzaErrorCondition::Conflict)),
                Op::Publish { item_id, payload, options } => {
                    if let Some(o) = options {
                        if !cfg.meets(&o[..], env.max_items_per_node) {
                            return Err(PsError::app(StanzaErrorCondition::Conflict, "precondition-not-met"));
                        }
                    }
                    let may = match aff.as_str() {
                        "owner" | "publisher" | "publish-only" => true,
                        "outcast" => false,
                        _ => match cfg.publish_model {
                            PublishModel::Open => !is_pep(&n.service),
                            PublishModel::Subscribers => {
                                let subs = env
                                    .storage
                                    .pubsub_subscriptions(&n.service, &n.name)
                                    .await
                                    .map_err(storage_error)?;
                                subs.iter().any(|s| bare_of(&s.jid) == bare && s.state == "subscribed")
                            }
                            PublishModel::Publishers => false,
                        },
                    };
                    if !may {
                        return Err(forbidden());
                    }
                    publish(env, req, &bare, &n, item_id.clone(), payload.clone(), Some(cfg)).await
                }
                Op::GetConfig => {
                    owner_only(&aff)?;
                    let mut c = Element::new("configure", NS_PUBSUB_OWNER).with_attr("node", n.name.clone());
                    c.push_child(cfg.form(env.max_items_per_node));
                    Ok(payload_of(Element::new("pubsub", NS_PUBSUB_OWNER).with_child(c)))
                }
                Op::Configure { form } => {
                    owner_only(&aff)?;
                    let mut next = cfg.clone();
                    next.apply(&form[..], env.max_items_per_node).map_err(form_error)?;
                    env.storage.pubsub_configure(&n.service, &n.name, &to_json(&next)).await.map_err(storage_error)?;
                    let mut done = Done::default();
                    if next.notify_config {
                        let ev =
                            event(Element::new("configuration", NS_PUBSUB_EVENT).with_attr("node", n.name.clone()));
                        done.notify.push(recipients(env, &n, &next, ev, false).await?);
                    }
                    Ok(done)
                }
                Op::Delete { redirect } => {
                    owner_only(&aff)?;
                    // Those to notify, read before they go with the node.
                    let mut del = Element::new("delete", NS_PUBSUB_EVENT).with_attr("node", n.name.clone());
                    if let Some(uri) = redirect {
                        del.push_child(Element::new("redirect", NS_PUBSUB_EVENT).with_attr("uri", uri.clone()));
                    }
                    let note = recipients(env, &n, &cfg, event(del), false).await?;
                    env.storage.pubsub_delete_node(&n.service, &n.name).await.map_err(storage_error)?;
                    Ok(Done { notify: if cfg.notify_delete { vec![note] } else { Vec::new() }, ..Done::default() })
                }
                Op::Purge => {
                    owner_only(&aff)?;
                    env.storage.pubsub_purge(&n.service, &n.name).await.map_err(storage_error)?;
                    let ev = event(Element::new("purge", NS_PUBSUB_EVENT).with_attr("node", n.name.clone()));
                    Ok(Done { notify: vec![recipients(env, &n, &cfg, ev, false).await?], ..Done::default() })
                }
                Op::Retract { ids, notify } => {
                    let mut items = Element::new("items", NS_PUBSUB_EVENT).with_attr("node", n.name.clone());
                    for id in ids {
                        let found = env
                            .storage
                            .pubsub_items_by_id(&n.service, &n.name, std::slice::from_ref(id))
                            .await
                            .map_err(storage_error)?;
                        let Some(item) = found.first() else { return Err(item_not_found()) };
                        if aff != "owner" && !(aff == "publisher" || bare_of(&item.publisher) == bare) {
                            return Err(forbidden());
                        }
                        env.storage.pubsub_retract(&n.service, &n.name, id).await.map_err(storage_error)?;
                        items.push_child(Element::new("retract", NS_PUBSUB_EVENT).with_attr("id", id.clone()));
                    }
                    let mut done = Done::default();
                    if *notify || cfg.notify_retract {
                        done.notify.push(recipients(env, &n, &cfg, event(items), true).await?);
                    }
                    Ok(done)
                }
                Op::Subscribe { jid } => subscribe(env, &n, &cfg, &aff, &bare, jid).await,
                Op::Unsubscribe { jid, subid } => {
                    if bare_of(jid) != bare && aff != "owner" {
                        return Err(PsError::app(StanzaErrorCondition::BadRequest, "invalid-jid"));
                    }
                    let removed = env
                        .storage
                        .pubsub_unsubscribe(&n.service, &n.name, jid, subid.as_deref())
                        .await
                        .map_err(storage_error)?;
                    if removed == 0 {
                        return Err(PsError::app(StanzaErrorCondition::UnexpectedRequest, "not-subscribed"));
                    }
                    Ok(Done::default())
                }
                Op::Items { max, ids } => {
                    may_access(env, &n, &cfg, &aff, &bare).await?;
                    let items = if ids.is_empty() {
                        env.storage.pubsub_items(&n.service, &n.name, *max).await.map_err(storage_error)?
                    } else {
                        env.storage.pubsub_items_by_id(&n.service, &n.name, ids).await.map_err(storage_error)?
                    };
                    let mut list = Element::new("items", NS_PUBSUB).with_attr("node", n.name.clone());
                    for i in &items {
                        list.push_child(item_element(i, NS_PUBSUB, true));
                    }
                    Ok(payload_of(Element::new("pubsub", NS_PUBSUB).with_child(list)))
                }
                Op::GetSubscriptions => {
                    owner_only(&aff)?;
                    let subs = env.storage.pubsub_subscriptions(&n.service, &n.name).await.map_err(storage_error)?;
                    let mut list = Element::new("subscriptions", NS_PUBSUB_OWNER).with_attr("node", n.name.clone());
                    for s in subs {
                        list.push_child(
                            Element::new("subscription", NS_PUBSUB_OWNER)
                                .with_attr("jid", s.jid)
                                .with_attr("subscription", s.state)
                                .with_attr("subid", s.subid),
                        );
                    }
                    Ok(payload_of(Element::new("pubsub", NS_PUBSUB_OWNER).with_child(list)))
                }
                Op::SetSubscriptions { entries } => {
                    owner_only(&aff)?;
                    for (jid, state) in entries {
                        if parse_jid(jid).is_err() {
                            return Err(PsError::app(StanzaErrorCondition::BadRequest, "invalid-jid"));
                        }
                        match state.as_str() {
                            "none" => {
                                env.storage
                                    .pubsub_unsubscribe(&n.service, &n.name, jid, None)
                                    .await
                                    .map_err(storage_error)?;
                            }
                            "subscribed" | "pending" => {
                                let subs = env
                                    .storage
                                    .pubsub_subscriptions(&n.service, &n.name)
                                    .await
                                    .map_err(storage_error)?;
                                let subid = subs
                                    .iter()
                                    .find(|s| &s.jid == jid)
                                    .map(|s| s.subid.clone())
                                    .unwrap_or_else(new_subid);
                                let sub = PubsubSubscription {
                                    subid,
                                    jid: jid.clone(),
                                    state: state.clone(),
                                    created_micros: now_micros(),
                                };
                                env.storage.pubsub_subscribe(&n.service, &n.name, &sub).await.map_err(storage_error)?;
                            }
                            _ => return Err(PsError::new(StanzaErrorCondition::BadRequest)),
                        }
                    }
                    Ok(Done::default())
                }
                Op::GetAffiliations => {
                    owner_only(&aff)?;
                    let affs = env.storage.pubsub_affiliations(&n.service, &n.name).await.map_err(storage_error)?;
                    let mut list = Element::new("affiliations", NS_PUBSUB_OWNER).with_attr("node", n.name.clone());
                    if is_pep(&n.service) && !affs.iter().any(|(j, _)| *j == n.service) {
                        list.push_child(affiliation_el(&n.service, "owner"));
                    }
                    for (jid, a) in affs {
                        list.push_child(affiliation_el(&jid, &a));
                    }
                    Ok(payload_of(Element::new("pubsub", NS_PUBSUB_OWNER).with_child(list)))
                }
                Op::Authorize { subid, jid, allow } => {
                    owner_only(&aff)?;
                    let subs = env.storage.pubsub_subscriptions(&n.service, &n.name).await.map_err(storage_error)?;
                    let Some(sub) = subs.into_iter().find(|s| {
                        s.jid == *jid && s.state == "pending" && subid.as_ref().is_none_or(|id| *id == s.subid)
                    }) else {
                        return Err(item_not_found());
                    };
                    let state = if *allow {
                        let granted = PubsubSubscription { state: "subscribed".into(), ..sub.clone() };
                        env.storage.pubsub_subscribe(&n.service, &n.name, &granted).await.map_err(storage_error)?;
                        "subscribed"
                    } else {
                        env.storage
                            .pubsub_unsubscribe(&n.service, &n.name, jid, Some(&sub.subid))
                            .await
                            .map_err(storage_error)?;
                        "none"
                    };
                    // The subscriber learns the outcome (XEP-0060 §8.6.2).
                    let ev = event(
                        Element::new("subscription", NS_PUBSUB_EVENT)
                            .with_attr("node", n.name.clone())
                            .with_attr("jid", jid.clone())
                            .with_attr("subid", sub.subid.clone())
                            .with_attr("subscription", state),
                    );
                    Ok(Done { messages: vec![(jid.clone(), ev.to_xml(meerkat_xmpp::ns::CLIENT))], ..Done::default() })
                }
                Op::SetAffiliations { entries } => {
                    owner_only(&aff)?;
                    for (jid, a) in entries {
                        let Ok(j) = parse_bare(jid) else {
                            return Err(PsError::app(StanzaErrorCondition::BadRequest, "invalid-jid"));
                        };
                        if !AFFILIATIONS.contains(&a.as_str()) {
                            return Err(PsError::new(StanzaErrorCondition::BadRequest));
                        }
                        // The account's own PEP node keeps its owner.
                        if is_pep(&n.service) && j.to_string() == n.service {
                            return Err(PsError::new(StanzaErrorCondition::NotAcceptable));
                        }
                        let a = (a != "none").then_some(a.as_str());
                        env.storage
                            .pubsub_set_affiliation(&n.service, &n.name, &j.to_string(), a)
                            .await
                            .map_err(storage_error)?;
                    }
                    Ok(Done::default())
                }
            }
        }
    }
}

fn affiliation_el(jid: &str, a: &str) -> Element {
    Element::new("affiliation", NS_PUBSUB_OWNER).with_attr("jid", jid.to_owned()).with_attr("affiliation", a.to_owned())
}

fn owner_only(aff: &str) -> Result<(), PsError> {
    if aff == "owner" {
        Ok(())
    } else {
        Err(forbidden())
    }
}

fn payload_of(el: Element) -> Done {
    Done { payload: Some(el.to_xml(meerkat_xmpp::ns::CLIENT)), ..Done::default() }
}

/// The form that asks an owner to approve a subscription (XEP-0060 §8.6.1).
fn authorization_form(node: &str, subid: &str, jid: &str) -> Element {
    let field = |var: &str, kind: &str, value: &str| {
        Element::new("field", meerkat_xmpp::ns::DATA_FORMS)
            .with_attr("var", var.to_owned())
            .with_attr("type", kind.to_owned())
            .with_child(Element::new("value", meerkat_xmpp::ns::DATA_FORMS).with_text(value))
    };
    Element::new("x", meerkat_xmpp::ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(Element::new("title", meerkat_xmpp::ns::DATA_FORMS).with_text("PubSub subscriber request"))
        .with_child(field("FORM_TYPE", "hidden", SUBSCRIBE_AUTHORIZATION))
        .with_child(field("pubsub#subid", "hidden", subid))
        .with_child(field("pubsub#node", "text-single", node))
        .with_child(field("pubsub#subscriber_jid", "jid-single", jid))
        .with_child(field("pubsub#allow", "boolean", "false"))
}

/// The FORM_TYPE of subscription approvals.
pub const SUBSCRIBE_AUTHORIZATION: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";

/// A fresh subscription id.
pub fn new_subid() -> String {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

/// `<event xmlns='…#event'>` around `child`.
fn event(child: Element) -> Element {
    Element::new("event", NS_PUBSUB_EVENT).with_child(child)
}

/// An `<item/>` in namespace `ns`, with its payload when `payload`.
pub fn item_element(i: &PubsubItem, ns: &str, payload: bool) -> Element {
    let mut el = Element::new("item", ns).with_attr("id", i.id.clone());
    if ns == NS_PUBSUB_EVENT {
        el.set_attr("publisher", bare_of(&i.publisher));
    }
    if payload {
        if let Some(p) = crate::ext::util::parse_stored(&i.payload) {
            el.push_child(p);
        }
    }
    el
}

async fn create(env: &Env<'_>, req: &Request, bare: &str, config: Option<&Form>) -> Result<PubsubNode, PsError> {
    if is_pep(&req.service) {
        if req.service != bare {
            return Err(forbidden());
        }
        let held = env.storage.pubsub_nodes(&req.service).await.map_err(storage_error)?.len();
        if held >= env.max_pep_nodes {
            return Err(PsError::app(StanzaErrorCondition::NotAllowed, "max-nodes-exceeded"));
        }
    } else if !(env.may_create)(bare) {
        return Err(forbidden());
    } else {
        let owned = env.storage.pubsub_user_affiliations(&req.service, bare).await.map_err(storage_error)?;
        if owned.iter().filter(|(_, a)| a == "owner").count() >= env.max_nodes_per_account {
            return Err(PsError::app(StanzaErrorCondition::NotAllowed, "max-nodes-exceeded"));
        }
    }
    if req.node.is_empty() {
        return Err(PsError::app(StanzaErrorCondition::NotAcceptable, "nodeid-required"));
    }
    let mut cfg = env.default_config.clone();
    if !is_pep(&req.service) && cfg.access_model == AccessModel::Presence {
        // A service has no roster of its own: its nodes are open unless configured otherwise.
        cfg.access_model = AccessModel::Open;
    }
    if let Some(form) = config {
        cfg.apply(form, env.max_items_per_node).map_err(form_error)?;
    }
    let node = PubsubNode {
        service: req.service.clone(),
        name: req.node.clone(),
        owner: bare.to_owned(),
        config: to_json(&cfg),
        created_micros: now_micros(),
    };
    match env.storage.pubsub_create_node(&node).await {
        Ok(()) => Ok(node),
        Err(StorageError::Conflict(_)) => Err(PsError::new(StanzaErrorCondition::Conflict)),
        Err(e) => Err(storage_error(e)),
    }
}

async fn publish(
    env: &Env<'_>,
    req: &Request,
    bare: &str,
    n: &PubsubNode,
    item_id: Option<String>,
    payload: Option<String>,
    cfg: Option<NodeConfig>,
) -> Result<Done, PsError> {
    let cfg = cfg.unwrap_or_else(|| config_of(n));
    let _ = bare;
    let id = item_id.filter(|i| !i.is_empty()).unwrap_or_else(new_subid);
    let payload = payload.unwrap_or_default();
    if cfg.persist_items && payload.is_empty() && cfg.deliver_payloads {
        return Err(PsError::app(StanzaErrorCondition::BadRequest, "item-required"));
    }
    let item = PubsubItem { id: id.clone(), publisher: req.from.clone(), payload, seq: 0 };
    let keep = if cfg.persist_items { cfg.kept(env.max_items_per_node) } else { 1 };
    env.storage.pubsub_publish(&n.service, &n.name, &item, Some(keep)).await.map_err(storage_error)?;
    let mut items = Element::new("items", NS_PUBSUB_EVENT).with_attr("node", n.name.clone());
    items.push_child(item_element(&item, NS_PUBSUB_EVENT, cfg.deliver_payloads));
    let mut done = Done::default();
    if cfg.deliver_notifications {
        done.notify.push(recipients(env, n, &cfg, event(items), false).await?);
    }
    let publish = Element::new("publish", NS_PUBSUB)
        .with_attr("node", n.name.clone())
        .with_child(Element::new("item", NS_PUBSUB).with_attr("id", id));
    done.payload = Some(Element::new("pubsub", NS_PUBSUB).with_child(publish).to_xml(meerkat_xmpp::ns::CLIENT));
    Ok(done)
}

async fn subscribe(
    env: &Env<'_>,
    n: &PubsubNode,
    cfg: &NodeConfig,
    aff: &str,
    bare: &str,
    jid: &str,
) -> Result<Done, PsError> {
    if parse_jid(jid).is_err() || bare_of(jid) != bare {
        return Err(PsError::app(StanzaErrorCondition::BadRequest, "invalid-jid"));
    }
    may_access(env, n, cfg, aff, bare).await?;
    let state = if cfg.access_model == AccessModel::Authorize && !matches!(aff, "owner" | "publisher" | "member") {
        "pending"
    } else {
        "subscribed"
    };
    let existing = env.storage.pubsub_subscriptions(&n.service, &n.name).await.map_err(storage_error)?;
    let subid = existing.iter().find(|s| s.jid == jid).map(|s| s.subid.clone()).unwrap_or_else(new_subid);
    let sub = PubsubSubscription {
        subid: subid.clone(),
        jid: jid.to_owned(),
        state: state.into(),
        created_micros: now_micros(),
    };
    env.storage.pubsub_subscribe(&n.service, &n.name, &sub).await.map_err(storage_error)?;
    let mut done = payload_of(
        Element::new("pubsub", NS_PUBSUB).with_child(
            Element::new("subscription", NS_PUBSUB)
                .with_attr("node", n.name.clone())
                .with_attr("jid", jid.to_owned())
                .with_attr("subid", subid.clone())
                .with_attr("subscription", state),
        ),
    );
    // A request for an authorize node goes to its owners (XEP-0060 §8.6.1).
    if state == "pending" {
        let mut owners: Vec<String> = env
            .storage
            .pubsub_affiliations(&n.service, &n.name)
            .await
            .map_err(storage_error)?
            .into_iter()
            .filter(|(_, a)| a == "owner")
            .map(|(j, _)| j)
            .collect();
        if is_pep(&n.service) && !owners.contains(&n.service) {
            owners.push(n.service.clone());
        }
        let form = authorization_form(&n.name, &subid, jid).to_xml(meerkat_xmpp::ns::CLIENT);
        done.messages.extend(owners.into_iter().map(|o| (o, form.clone())));
    }
    // The last item to the new subscriber (XEP-0060 §6.1.7).
    if state == "subscribed" && cfg.send_last_published_item != SendLast::Never {
        let last = env.storage.pubsub_items(&n.service, &n.name, Some(1)).await.map_err(storage_error)?;
        if let Some(i) = last.first() {
            let items = Element::new("items", NS_PUBSUB_EVENT)
                .with_attr("node", n.name.clone())
                .with_child(item_element(i, NS_PUBSUB_EVENT, cfg.deliver_payloads));
            done.notify.push(Notification {
                event: event(items).to_xml(meerkat_xmpp::ns::CLIENT),
                subscribers: vec![(jid.to_owned(), subid)],
                interested: Vec::new(),
                node: n.name.clone(),
                remote: Vec::new(),
            });
        }
    }
    Ok(done)
}

/// The event with the last item of `service`'s node `node`, when the node
/// sends it on presence (`send_last_published_item = on_sub_and_presence`)
/// and `reader` (a bare JID) may read it.
pub async fn last_item_event(storage: &Storage, service: &str, node: &str, reader: &str) -> Option<String> {
    let n = storage.pubsub_node(service, node).await.ok()??;
    let cfg = config_of(&n);
    if cfg.send_last_published_item != SendLast::OnSubAndPresence {
        return None;
    }
    let default = NodeConfig::default();
    let never = |_: &str| false;
    let env = Env {
        storage,
        max_items_per_node: u64::MAX,
        max_pep_nodes: 0,
        max_nodes_per_account: 0,
        default_config: &default,
        may_create: &never,
        hosts: &[],
    };
    let aff = affiliation(&env, service, node, reader).await.ok()?;
    may_access(&env, &n, &cfg, &aff, reader).await.ok()?;
    let item = storage.pubsub_items(service, node, Some(1)).await.ok()?.into_iter().next()?;
    let items = Element::new("items", NS_PUBSUB_EVENT).with_attr("node", node.to_owned()).with_child(item_element(
        &item,
        NS_PUBSUB_EVENT,
        cfg.deliver_payloads,
    ));
    Some(event(items).to_xml(meerkat_xmpp::ns::CLIENT))
}

/// Who gets an event of node `n`: its subscribers (with their subscription
/// ids); and, for PEP, the account itself and its contacts whose presence
/// subscription lets them see the node, by interest. A subscriber is not
/// also notified by interest.
async fn recipients(
    env: &Env<'_>,
    n: &PubsubNode,
    cfg: &NodeConfig,
    ev: Element,
    _retract: bool,
) -> Result<Notification, PsError> {
    let subs = env.storage.pubsub_subscriptions(&n.service, &n.name).await.map_err(storage_error)?;
    let subscribers: Vec<(String, String)> =
        subs.into_iter().filter(|s| s.state == "subscribed").map(|s| (s.jid, s.subid)).collect();
    let mut interested = Vec::new();
    let mut remote = Vec::new();
    if is_pep(&n.service) {
        interested.push(n.service.clone());
        if let Ok(owner) = parse_bare(&n.service) {
            let user = owner.node().map(|u| u.to_string()).unwrap_or_default();
            let roster = env.storage.get_roster(owner.domain().as_str(), &user).await.map_err(storage_error)?;
            let affs = if cfg.access_model == AccessModel::Whitelist {
                env.storage.pubsub_affiliations(&n.service, &n.name).await.map_err(storage_error)?
            } else {
                Vec::new()
            };
            for item in roster {
                if !matches!(item.subscription, Subscription::From | Subscription::Both) {
                    continue;
                }
                let local = item.contact.rsplit('@').next().is_some_and(|d| env.hosts.iter().any(|h| h == d));
                let allowed = match cfg.access_model {
                    AccessModel::Open | AccessModel::Presence | AccessModel::Authorize => true,
                    AccessModel::Roster => item.groups.iter().any(|g| cfg.roster_groups_allowed.contains(g)),
                    AccessModel::Whitelist => affs
                        .iter()
                        .any(|(j, a)| *j == item.contact && matches!(a.as_str(), "owner" | "publisher" | "member")),
                };
                match (allowed, local) {
                    (true, true) => interested.push(item.contact),
                    // The contact's resources whose caps ask for the node, as
                    // known where the account's sessions see their presence.
                    (true, false) => remote.push(item.contact),
                    (false, _) => {}
                }
            }
        }
        let subscribed = |b: &String| subscribers.iter().any(|(j, _)| bare_of(j) == *b);
        interested.retain(|b| !subscribed(b));
        remote.retain(|b| !subscribed(b));
    }
    Ok(Notification {
        event: ev.to_xml(meerkat_xmpp::ns::CLIENT),
        subscribers,
        interested,
        node: n.name.clone(),
        remote,
    })
}
