//! XEP-0030: service discovery of the server and of accounts, and XEP-0115:
//! entity capabilities of the server.
//!
//! The server's identities and features do not change while it runs, so its
//! capabilities hash is computed once, when the module list is built
//! ([`Disco::new`]), and announced in the stream features as
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

use super::{IqAnswer, Module, Target};
use crate::services::Services;

/// The XEP-0115 node naming this software.
pub const CAPS_NODE: &str = "urn:meerkat:caps";

/// A disco#info identity (XEP-0030 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    pub category: &'a str,
    pub kind: &'a str,
    /// `xml:lang`, empty when absent.
    pub lang: &'a str,
    pub name: &'a str,
}

/// What the server says it is.
pub const SERVER_IDENTITY: Identity<'static> = Identity { category: "server", kind: "im", lang: "", name: "Meerkat" };

/// The features disco itself adds to every disco#info answer.
const DISCO_FEATURES: [&str; 2] = [ns::DISCO_INFO, ns::DISCO_ITEMS];

/// XEP-0115 §5.1: the verification string of these identities and features
/// (no extended information), hashed with SHA-1, in base64.
pub fn caps_ver(identities: &[Identity<'_>], features: &[&str]) -> String {
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

/// The server's features: those of every module, sorted, without duplicates.
fn server_features(svc_modules: &[Arc<dyn Module>]) -> Vec<&'static str> {
    let mut features: Vec<&'static str> =
        svc_modules.iter().flat_map(|m| m.disco_features(Target::Server).iter().copied()).collect();
    features.sort_unstable();
    features.dedup();
    features
}

pub struct Disco {
    /// XEP-0115 `ver` of the server.
    caps_ver: String,
}

impl Disco {
    /// Disco for a server running `others` besides this module.
    pub fn new(others: &[Arc<dyn Module>]) -> Self {
        let mut features = server_features(others);
        features.extend(DISCO_FEATURES);
        Disco { caps_ver: caps_ver(&[SERVER_IDENTITY], &features) }
    }

    pub fn caps_ver(&self) -> &str {
        &self.caps_ver
    }
}

#[async_trait::async_trait]
impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }

    fn disco_features(&self, _target: Target) -> &'static [&'static str] {
        &DISCO_FEATURES
    }

    fn stream_features(&self, _post_auth: bool) -> Vec<Element> {
        vec![Element::new("c", ns::CAPS)
            .with_attr("hash", "sha-1")
            .with_attr("node", CAPS_NODE)
            .with_attr("ver", self.caps_ver.clone())]
    }

    async fn iq(&self, svc: &Arc<Services>, target: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        let info = payload.is("query", ns::DISCO_INFO);
        let items = payload.is("query", ns::DISCO_ITEMS);
        if !info && !items {
            return None;
        }
        if iq.stanza.attr("type") != Some("get") {
            return Some(Err(StanzaErrorCondition::NotAllowed));
        }
        let node = payload.attr("node");
        if let Some(node) = node {
            // The only node is the caps node of the server's info (XEP-0115 §6.2).
            let caps_node = node.strip_prefix(CAPS_NODE).and_then(|n| n.strip_prefix('#'));
            if !(info && target == Target::Server && caps_node == Some(self.caps_ver.as_str())) {
                return Some(Err(StanzaErrorCondition::ItemNotFound));
            }
        }
        if items {
            return Some(Ok(Some(Element::new("query", ns::DISCO_ITEMS))));
        }
        let mut q = Element::new("query", ns::DISCO_INFO);
        if let Some(node) = node {
            q.set_attr("node", node);
        }
        let identity = match target {
            Target::Server => SERVER_IDENTITY,
            _ => Identity { category: "account", kind: "registered", lang: "", name: "" },
        };
        let mut el = Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", identity.category)
            .with_attr("type", identity.kind);
        if !identity.name.is_empty() {
            el.set_attr("name", identity.name);
        }
        q.push_child(el);
        let mut features: Vec<&str> =
            svc.modules.iter().flat_map(|m| m.disco_features(target).iter().copied()).collect();
        features.sort_unstable();
        features.dedup();
        for f in features {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        Some(Ok(Some(q)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of XEP-0115 §5.2.
    #[test]
    fn caps_ver_of_the_simple_example() {
        let identity = Identity { category: "client", kind: "pc", lang: "", name: "Exodus 0.9.1" };
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
        let a = Identity { category: "client", kind: "pc", lang: "en", name: "A" };
        let b = Identity { category: "client", kind: "pc", lang: "de", name: "B" };
        let c = Identity { category: "automation", kind: "x", lang: "", name: "" };
        assert_eq!(caps_ver(&[a, b, c], &["f", "e"]), caps_ver(&[c, b, a], &["e", "f", "e"]));
    }
}
