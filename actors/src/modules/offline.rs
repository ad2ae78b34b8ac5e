//! XEP-0160: offline messages, stamped with XEP-0203 delay and delivered
//! after the user's next initial presence.
//!
//! A message no session took reaches [`Module::undelivered_message`]; the
//! stored ones go out when the user's initial presence has been broadcast
//! ([`Module::user_available`]). Meanwhile the session holds live messages
//! (asked for in [`Module::user_send_presence`]), so that none overtakes a
//! stored one; this module releases them once the stored ones are written.

use meerkat_xmpp::jid::Bare as _;
use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_storage::OfflineRepo;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::has_storable_content;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, now_micros, parse_stored, xep0082};
use crate::ext::{
    account_error, storage_error, Flow, HookSet, Module, ModuleCtx, SessionAcc, SessionState, Target, Undelivered,
};

pub struct Offline {
    max_messages: u64,
}

/// `[modules.mod_offline]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Store messages for users with no available resource.
    pub enabled: bool,
    /// Most messages stored for one user; past it, messages are answered with
    /// `service-unavailable`.
    pub max_messages: u64,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig { enabled: true, max_messages: 1000 }
    }
}

impl ModuleSpec for Offline {
    const NAME: &'static str = "mod_offline";
    type Config = OfflineConfig;
    fn enabled(cfg: &OfflineConfig) -> bool {
        cfg.enabled
    }
    fn build(cfg: &OfflineConfig) -> Arc<dyn Module> {
        Arc::new(Offline { max_messages: cfg.max_messages })
    }
}

#[async_trait::async_trait]
impl Module for Offline {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }

    fn disco_features(&self, target: Target) -> &'static [&'static str] {
        if target == Target::Server {
            &["msgoffline"]
        } else {
            &[]
        }
    }

    fn user_send_presence(
        &self,
        _ctx: &ModuleCtx,
        _state: &mut SessionState,
        _from: &FullJid,
        to: Option<&Jid>,
        _presence: &Element,
        initial: bool,
        acc: &mut SessionAcc,
    ) -> Flow {
        if to.is_none() && initial {
            // Released by `user_available` once the stored messages are out.
            acc.hold_messages = true;
        }
        Flow::Continue
    }

    async fn undelivered_message(&self, ctx: &ModuleCtx, r: &Routed, acc: &mut Undelivered) -> Flow {
        acc.handled = true;
        acc.stored = self.store(ctx, r).await;
        Flow::Continue
    }

    async fn user_available(&self, ctx: &ModuleCtx, jid: &FullJid) {
        self.flush(ctx, jid).await;
        // Stored messages are out: live ones held meanwhile may follow.
        if let Some(sink) = ctx.router.sessions().get(jid).and_then(|i| ctx.router.sink(i.sid)) {
            sink.deliver_stored(Vec::new(), true);
        }
    }
}

impl Offline {
    /// Writes the stored messages to the resource that just became available.
    async fn flush(&self, ctx: &ModuleCtx, jid: &FullJid) {
        let (user, host) =
            (jid.node().map(|n| n.as_str().to_owned()).unwrap_or_default(), jid.domain().as_str().to_owned());
        // Most logins find nothing stored: a read answers that without taking
        // the database's write lock, which `take_offline` needs.
        match ctx.storage.count_offline(&host, &user).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, %jid, "offline messages could not be counted; they stay stored");
                return;
            }
        }
        let msgs = match ctx.storage.take_offline(&host, &user).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, %jid, "offline messages could not be read; they stay stored");
                return;
            }
        };
        let Some(info) = ctx.router.sessions().get(jid) else {
            // The resource went away meanwhile: put the messages back, in order.
            for m in msgs {
                let _ = ctx.storage.store_offline(&host, &user, &m.from, &m.stanza, m.stamp_micros, u64::MAX).await;
            }
            return;
        };
        if let Some(sink) = ctx.router.sink(info.sid).filter(|_| info.node == ctx.router.node()) {
            // One batch, ahead of the live messages the session holds meanwhile.
            let mut batch = Vec::with_capacity(msgs.len());
            for m in msgs {
                match parse_stored(&m.stanza) {
                    Some(mut el) => {
                        el.set_attr("to", jid.to_string());
                        batch.push(el);
                    }
                    None => tracing::error!(id = m.id, "a stored offline message does not parse; dropped"),
                }
            }
            sink.deliver_stored(batch, false);
            return;
        }
        for m in msgs {
            match parse_stored(&m.stanza) {
                Some(mut el) => {
                    el.set_attr("to", jid.to_string());
                    if let Err(el) = ctx.router.deliver_to_session(&info, el) {
                        // The session cannot take it now: keep it for the next login.
                        let _ = ctx
                            .storage
                            .store_offline(&host, &user, &m.from, &el.to_xml(ns::CLIENT), m.stamp_micros, u64::MAX)
                            .await;
                    }
                }
                None => tracing::error!(id = m.id, "a stored offline message does not parse; dropped"),
            }
        }
    }

    /// A message no resource could take (RFC 6121 §8.5.2.2.1): stored, or
    /// answered with an error. Whether it was stored.
    async fn store(&self, ctx: &ModuleCtx, r: &Routed) -> bool {
        let r = r.clone();
        let (user, host) = account_of(&r.to);
        match ctx.accounts.exists(&host, &user).await {
            Ok(true) => {}
            Ok(false) => {
                ctx.router.bounce(r, StanzaErrorCondition::ServiceUnavailable);
                return false;
            }
            Err(e) => {
                ctx.router.bounce(r, account_error("account lookup")(e));
                return false;
            }
        }
        if !has_storable_content(&r.stanza) {
            return false;
        }
        let now = now_micros();
        let mut stanza = r.stanza.clone();
        stanza.set_attr("to", Jid::from(r.to.bare()).to_string());
        stanza.push_child(
            Element::new("delay", ns::DELAY).with_attr("from", host.clone()).with_attr("stamp", xep0082(now)),
        );
        let stored = ctx
            .storage
            .store_offline(&host, &user, &r.from.to_string(), &stanza.to_xml(ns::CLIENT), now, self.max_messages)
            .await;
        match stored {
            Ok(true) => {
                late_flush(ctx, &r.to, &host, &user).await;
                true
            }
            Ok(false) => {
                ctx.router.bounce(r, StanzaErrorCondition::ServiceUnavailable);
                false
            }
            Err(e) => {
                ctx.router.bounce(r, storage_error("offline store")(e));
                false
            }
        }
    }
}

/// A resource became available while the message was being stored: its
/// login already fetched the stored messages, so this one goes to it now
/// rather than waiting for the next login.
async fn late_flush(ctx: &ModuleCtx, to: &Jid, host: &str, user: &str) {
    let bare = to.bare();
    let best = ctx
        .router
        .sessions()
        .resources(&bare)
        .into_iter()
        .filter(|s| s.priority.is_some_and(|p| p >= 0))
        .max_by_key(|s| (s.priority, s.created_micros));
    let Some(info) = best else { return };
    let msgs = match ctx.storage.take_offline(host, user).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "offline messages could not be read; they stay stored");
            return;
        }
    };
    if let Some(sink) = ctx.router.sink(info.sid).filter(|_| info.node == ctx.router.node()) {
        // Ahead of any live message the session holds while its login's flush runs.
        let batch: Vec<Element> = msgs
            .iter()
            .filter_map(|m| {
                let el = parse_stored(&m.stanza);
                if el.is_none() {
                    tracing::error!(id = m.id, "a stored offline message does not parse; dropped");
                }
                el
            })
            .map(|mut el| {
                el.set_attr("to", info.jid.to_string());
                el
            })
            .collect();
        sink.deliver_stored(batch, false);
        return;
    }
    for m in msgs {
        let Some(mut el) = parse_stored(&m.stanza) else {
            tracing::error!(id = m.id, "a stored offline message does not parse; dropped");
            continue;
        };
        el.set_attr("to", info.jid.to_string());
        if let Err(el) = ctx.router.deliver_to_session(&info, el) {
            let _ =
                ctx.storage.store_offline(host, user, &m.from, &el.to_xml(ns::CLIENT), m.stamp_micros, u64::MAX).await;
        }
    }
}
