//! XEP-0054: vcard-temp. Anyone may read an account's vCard; only the owner may set it.

use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_storage::VcardRepo;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, parse_stored};
use crate::ext::{storage_error, HookSet, IqAnswer, Module, ModuleCtx, Switch, Target};

pub struct Vcard;

impl ModuleSpec for Vcard {
    const NAME: &'static str = "mod_vcard";
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(Vcard)
    }
}

#[async_trait::async_trait]
impl Module for Vcard {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }
    fn disco_features(&self, _t: Target) -> &'static [&'static str] {
        &[ns::VCARD]
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::VCARD]
    }
    async fn iq(&self, ctx: &ModuleCtx, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !payload.is("vCard", ns::VCARD) {
            return None;
        }
        if t == Target::Server {
            // The server has no vCard of its own.
            return Some(if iq.stanza.attr("type") == Some("get") {
                Ok(Some(Element::new("vCard", ns::VCARD)))
            } else {
                Err(StanzaErrorCondition::NotAllowed)
            });
        }
        let (user, host) = account_of(&iq.to);
        Some(match iq.stanza.attr("type") {
            Some("get") => match ctx.storage.get_vcard(&host, &user).await {
                Ok(Some(xml)) => Ok(Some(parse_stored(&xml).unwrap_or_else(|| Element::new("vCard", ns::VCARD)))),
                Ok(None) => Err(StanzaErrorCondition::ItemNotFound),
                Err(e) => Err(storage_error("vcard read")(e)),
            },
            _ if t != Target::OwnAccount => Err(StanzaErrorCondition::Forbidden),
            _ => ctx
                .storage
                .set_vcard(&host, &user, &payload.to_xml(ns::CLIENT))
                .await
                .map(|()| None)
                .map_err(storage_error("vcard write")),
        })
    }
}
