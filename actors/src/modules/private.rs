//! XEP-0049: private XML storage, readable and writable by the owner only.

use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_storage::PrivateRepo;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;

use super::{account_of, parse_stored, IqAnswer, Module, Target};
use crate::services::Services;

pub struct PrivateStorage;

#[async_trait::async_trait]
impl Module for PrivateStorage {
    fn name(&self) -> &'static str {
        "private"
    }
    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        if t == Target::Server {
            &[ns::PRIVATE]
        } else {
            &[]
        }
    }
    async fn iq(&self, svc: &Arc<Services>, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !payload.is("query", ns::PRIVATE) {
            return None;
        }
        if t != Target::OwnAccount {
            return Some(Err(StanzaErrorCondition::Forbidden));
        }
        let (user, host) = account_of(&iq.from);
        let children: Vec<&Element> = payload.elements().collect();
        // Exactly one child, and never one in the jabber:* namespaces (XEP-0049 §3).
        let [child] = children.as_slice() else {
            return Some(Err(StanzaErrorCondition::NotAcceptable));
        };
        if child.ns.starts_with("jabber:") || child.ns.is_empty() {
            return Some(Err(StanzaErrorCondition::NotAcceptable));
        }
        Some(match iq.stanza.attr("type") {
            Some("get") => match svc.storage.get_private(&host, &user, &child.ns).await {
                Ok(Some(xml)) => {
                    let stored = parse_stored(&xml).unwrap_or_else(|| (*child).clone());
                    Ok(Some(Element::new("query", ns::PRIVATE).with_child(stored)))
                }
                Ok(None) => Ok(Some(Element::new("query", ns::PRIVATE).with_child((*child).clone()))),
                Err(_) => Err(StanzaErrorCondition::InternalServerError),
            },
            _ => match svc.storage.set_private(&host, &user, &child.ns, &child.to_xml(ns::CLIENT)).await {
                Ok(()) => Ok(None),
                Err(_) => Err(StanzaErrorCondition::InternalServerError),
            },
        })
    }
}
