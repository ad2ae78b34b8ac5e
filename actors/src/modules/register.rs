//! XEP-0077 after authentication: password change and account removal.
//! Registration of new accounts happens during stream negotiation.

use meerkat_xmpp::jid::Bare as _;
use std::sync::Arc;

use meerkat_routing::{KickReason, Routed};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::account_of;
use crate::ext::{account_error, CoreTuning, HookSet, IqAnswer, Module, ModuleCtx, Switch, Target};

pub struct Register;

impl ModuleSpec for Register {
    const NAME: &'static str = "mod_register";
    /// `enabled`: clients may create accounts in-band, change their password and remove their account.
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn tune(cfg: &Switch, core: &mut CoreTuning) {
        core.in_band_registration = cfg.enabled;
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(Register)
    }
}

#[async_trait::async_trait]
impl Module for Register {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }
    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        if t == Target::Server {
            &[ns::REGISTER]
        } else {
            &[]
        }
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::REGISTER]
    }
    async fn iq(&self, ctx: &ModuleCtx, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !payload.is("query", ns::REGISTER) {
            return None;
        }
        if t == Target::OtherAccount {
            return Some(Err(StanzaErrorCondition::Forbidden));
        }
        let (user, host) = account_of(&iq.from);
        if iq.stanza.attr("type") == Some("get") {
            return Some(Ok(Some(
                Element::new("query", ns::REGISTER)
                    .with_child(Element::new("registered", ns::REGISTER))
                    .with_child(Element::new("username", ns::REGISTER).with_text(user)),
            )));
        }
        if payload.has_child("remove", ns::REGISTER) {
            return Some(match ctx.accounts.remove(&host, &user).await {
                Ok(()) => {
                    for info in ctx.router.sessions().resources(&iq.from.bare()) {
                        if let Some(sink) = ctx.router.sink(info.sid) {
                            sink.kick(KickReason::AccountRemoved);
                        }
                    }
                    Ok(None)
                }
                Err(e) => Err(account_error("account removal")(e)),
            });
        }
        let username = payload.get_child("username", ns::REGISTER).map(|e| e.text());
        let password = payload.get_child("password", ns::REGISTER).map(|e| e.text());
        Some(match (username, password) {
            (Some(u), Some(p)) if u == user && !p.is_empty() => ctx
                .accounts
                .set_password(&host, &user, &p)
                .await
                .map(|()| None)
                .map_err(account_error("password change")),
            _ => Err(StanzaErrorCondition::BadRequest),
        })
    }
}
