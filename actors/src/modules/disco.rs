//! XEP-0030: service discovery of the server and of accounts.

use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;

use super::{IqAnswer, Module, Target};
use crate::services::Services;

pub struct Disco;

#[async_trait::async_trait]
impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }

    fn disco_features(&self, _target: Target) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
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
        if payload.attr("node").is_some() {
            // No nodes are published yet.
            return Some(Err(StanzaErrorCondition::ItemNotFound));
        }
        if items {
            return Some(Ok(Some(Element::new("query", ns::DISCO_ITEMS))));
        }
        let mut q = Element::new("query", ns::DISCO_INFO);
        let (category, kind) = match target {
            Target::Server => ("server", "im"),
            _ => ("account", "registered"),
        };
        let mut identity =
            Element::new("identity", ns::DISCO_INFO).with_attr("category", category).with_attr("type", kind);
        if target == Target::Server {
            identity.set_attr("name", "Meerkat");
        }
        q.push_child(identity);
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
