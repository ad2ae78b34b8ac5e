//! XEP-0077 after authentication: password change and account removal.
//! Registration of new accounts happens during stream negotiation.

use meerkat_xmpp::jid::Bare as _;
use std::sync::Arc;

use meerkat_routing::{KickReason, Routed};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;

use super::{account_of, IqAnswer, Module, Target};
use crate::services::Services;

pub struct Register;

#[async_trait::async_trait]
impl Module for Register {
    fn name(&self) -> &'static str {
        "register"
    }
    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        if t == Target::Server {
            &[ns::REGISTER]
        } else {
            &[]
        }
    }
    async fn iq(&self, svc: &Arc<Services>, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
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
            return Some(match svc.accounts.remove(&host, &user).await {
                Ok(()) => {
                    for info in svc.router.sessions().resources(&iq.from.bare()) {
                        if let Some(sink) = svc.router.sink(info.sid) {
                            sink.kick(KickReason::AccountRemoved);
                        }
                    }
                    Ok(None)
                }
                Err(_) => Err(StanzaErrorCondition::InternalServerError),
            });
        }
        let username = payload.get_child("username", ns::REGISTER).map(|e| e.text());
        let password = payload.get_child("password", ns::REGISTER).map(|e| e.text());
        Some(match (username, password) {
            (Some(u), Some(p)) if u == user && !p.is_empty() => match svc.accounts.set_password(&host, &user, &p).await
            {
                Ok(()) => Ok(None),
                Err(_) => Err(StanzaErrorCondition::InternalServerError),
            },
            _ => Err(StanzaErrorCondition::BadRequest),
        })
    }
}
