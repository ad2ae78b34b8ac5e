//! XEP-0049: private XML storage, readable and writable by the owner only.

use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_storage::PrivateRepo;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, parse_stored};
use crate::ext::{storage_error, HookSet, IqAnswer, Module, ModuleCtx, Switch, Target};

pub struct PrivateStorage;

impl ModuleSpec for PrivateStorage {
    const NAME: &'static str = "mod_private";
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(PrivateStorage)
    }
}

#[async_trait::async_trait]
impl Module for PrivateStorage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }
    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        if t == Target::Server {
            &[ns::PRIVATE]
        } else {
            &[]
        }
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::PRIVATE]
    }
    async fn iq(&self, ctx: &ModuleCtx, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
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
            Some("get") => match ctx.storage.get_private(&host, &user, &child.ns).await {
                Ok(Some(xml)) => {
                    let stored = parse_stored(&xml).unwrap_or_else(|| (*child).clone());
                    Ok(Some(Element::new("query", ns::PRIVATE).with_child(stored)))
                }
                Ok(None) => Ok(Some(Element::new("query", ns::PRIVATE).with_child((*child).clone()))),
                Err(e) => Err(storage_error("private storage read")(e)),
            },
            _ => ctx
                .storage
                .set_private(&host, &user, &child.ns, &child.to_xml(ns::CLIENT))
                .await
                .map(|()| None)
                .map_err(storage_error("private storage write")),
        })
    }
}
