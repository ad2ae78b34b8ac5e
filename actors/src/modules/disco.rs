//! XEP-0030: service discovery of the server and of accounts, and XEP-0115:
//! entity capabilities of the server.
//!
//! Identities, features and items come from every module's disco hooks
//! ([`Module::disco_identities`], [`Module::disco_features`],
//! [`Module::disco_items`]); this module answers the queries. The server's
//! items also list every service and component domain of the table of
//! routes, on whichever node of the cluster it is served. Items marked
//! `hidden` (hidden components) are listed only to entities without a
//! localpart (components, servers), unless `users_can_see_hidden_services`
//! is on (MongooseIM's default).
//!
//! The server's identities and features do not change while it runs, so its
//! capabilities hash is computed once, when the stream features are collected
//! at start, and announced in them as
//! `<c xmlns='http://jabber.org/protocol/caps'/>` (XEP-0115 §6.3). A client
//! that does not know the hash asks disco#info with the node `node#ver` and
//! gets the same answer as without a node.

use std::sync::Arc;

use base64::Engine as _;
use meerkat_routing::Routed;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;
use sha1::{Digest as _, Sha1};

use crate::ext::registry::{ModuleSpec, Registry};
use crate::ext::{DiscoItem, HookSet, Identity, IqAnswer, Module, ModuleCtx, Target};

/// The XEP-0115 node naming this software.
pub const CAPS_NODE: &str = "urn:meerkat:caps";

/// What the server says it is.
fn server_identity() -> Identity {
    Identity { category: "server", kind: "im", lang: "", name: "Meerkat".into() }
}

/// What an account says it is (RFC 6121 answers disco#info of a bare JID for it).
fn account_identity() -> Identity {
    Identity { category: "account", kind: "registered", lang: "", name: String::new() }
}

/// The features disco itself adds to every disco#info answer.
const DISCO_FEATURES: [&str; 2] = [ns::DISCO_INFO, ns::DISCO_ITEMS];

/// XEP-0115 §5.1: the verification string of these identities and features
/// (no extended information), hashed with SHA-1, in base64.
pub fn caps_ver(identities: &[Identity], features: &[&str]) -> String {
    let mut ids = identities.to_vec();
    ids.sort_by(|a, b| (a.category, a.kind, a.lang).cmp(&(b.category, b.kind, b.lang)));
    let mut features = features.to_vec();
    features.sort_unstable();
    features.dedup();
    let mut s = String::new();
    for i in &ids {
        s.push_str(&format!("{}/{}/{}/{}<", i.category, i.kind, i.lang, i.name));
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()))
}

#[derive(Default)]
pub struct Disco {
    /// XEP-0115 `ver` of the server, once computed.
    users_can_see_hidden_services: bool,
}

/// `[modules.mod_disco]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoConfig {
    /// Answer service discovery.
    pub enabled: bool,
    /// List hidden components to users too; when off, only entities without
    /// a localpart (components, servers) see them.
    pub users_can_see_hidden_services: bool,
}

impl Default for DiscoConfig {
    fn default() -> Self {
        DiscoConfig { enabled: true, users_can_see_hidden_services: true }
    }
}

impl ModuleSpec for Disco {
    const NAME: &'static str = "mod_disco";
    type Config = DiscoConfig;
    fn enabled(cfg: &DiscoConfig) -> bool {
        cfg.enabled
    }
    fn build(cfg: &DiscoConfig) -> Arc<dyn Module> {
        Arc::new(Disco { users_can_see_hidden_services: cfg.users_can_see_hidden_services })
    }
}

impl Disco {
    /// The server's `ver` for a host: the server identities and features of
    /// its modules (`hooks`, the host's chain).
    fn server_ver(hooks: &Registry) -> String {
        caps_ver(&hooks.disco_identities(Target::Server), &hooks.disco_features(Target::Server))
    }
}

#[async_trait::async_trait]
impl Module for Disco {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }

    fn disco_features(&self, _target: Target) -> &'static [&'static str] {
        &DISCO_FEATURES
    }

    fn disco_identities(&self, target: Target) -> Vec<Identity> {
        match target {
            Target::Server => vec![server_identity()],
            _ => vec![account_identity()],
        }
    }

    fn stream_features(&self, hooks: &Registry, _post_auth: bool) -> Vec<Element> {
        vec![Element::new("c", ns::CAPS)
            .with_attr("hash", "sha-1")
            .with_attr("node", CAPS_NODE)
            .with_attr("ver", Disco::server_ver(hooks))]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &DISCO_FEATURES
    }

    async fn iq(&self, ctx: &ModuleCtx, target: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        let info = payload.is("query", ns::DISCO_INFO);
        let items = payload.is("query", ns::DISCO_ITEMS);
        if !info && !items {
            return None;
        }
        if iq.stanza.attr("type") != Some("get") {
            return Some(Err(StanzaErrorCondition::NotAllowed));
        }
        // What the modules of the addressed host (or account's host) offer.
        let hooks = ctx.hooks.of(iq.to.domain().as_str());
        let node = payload.attr("node");
        if let Some(node) = node {
            // The only node is the caps node of the server's info (XEP-0115 §6.2).
            let caps_node = node.strip_prefix(CAPS_NODE).and_then(|n| n.strip_prefix('#'));
            if !(info && target == Target::Server && caps_node == Some(Disco::server_ver(hooks).as_str())) {
                return Some(Err(StanzaErrorCondition::ItemNotFound));
            }
        }
        if items {
            let mut q = Element::new("query", ns::DISCO_ITEMS);
            let mut listed = hooks.disco_items(ctx, target);
            if target == Target::Server {
                for rec in ctx.router.domains().export() {
                    if !listed.iter().any(|i| i.jid == rec.domain && i.node.is_none()) {
                        listed.push(DiscoItem {
                            jid: rec.domain,
                            node: None,
                            name: None,
                            hidden: rec.kind.is_hidden(),
                        });
                    }
                }
            }
            // MongooseIM's rule: hidden services stay visible to entities
            // without a localpart (other components, servers).
            let sees_hidden = self.users_can_see_hidden_services || iq.from.node().is_none();
            for item in listed.into_iter().filter(|i| sees_hidden || !i.hidden) {
                let mut el = Element::new("item", ns::DISCO_ITEMS).with_attr("jid", item.jid);
                if let Some(n) = item.node {
                    el.set_attr("node", n);
                }
                if let Some(n) = item.name {
                    el.set_attr("name", n);
                }
                q.push_child(el);
            }
            return Some(Ok(Some(q)));
        }
        let mut q = Element::new("query", ns::DISCO_INFO);
        if let Some(node) = node {
            q.set_attr("node", node);
        }
        for identity in hooks.disco_identities(target) {
            let mut el = Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", identity.category)
                .with_attr("type", identity.kind);
            if !identity.name.is_empty() {
                el.set_attr("name", identity.name);
            }
            q.push_child(el);
        }
        for f in hooks.disco_features(target) {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        Some(Ok(Some(q)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(category: &'static str, kind: &'static str, lang: &'static str, name: &str) -> Identity {
        Identity { category, kind, lang, name: name.into() }
    }

    /// The worked example of XEP-0115 §5.2.
    #[test]
    fn caps_ver_of_the_simple_example() {
        let identity = id("client", "pc", "", "Exodus 0.9.1");
        let features = [
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/muc",
            "http://jabber.org/protocol/caps",
            "http://jabber.org/protocol/disco#items",
        ];
        assert_eq!(caps_ver(&[identity], &features), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn identities_sort_before_hashing() {
        let a = id("client", "pc", "en", "A");
        let b = id("client", "pc", "de", "B");
        let c = id("automation", "x", "", "");
        assert_eq!(caps_ver(&[a.clone(), b.clone(), c.clone()], &["f", "e"]), caps_ver(&[c, b, a], &["e", "f", "e"]));
    }
}
