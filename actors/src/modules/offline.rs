//! XEP-0160: offline messages, stamped with XEP-0203 delay and delivered
//! after the user's next initial presence.

use meerkat_xmpp::jid::Bare as _;
use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_storage::OfflineRepo;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::has_storable_content;

use super::{account_of, parse_stored, Module};
use crate::services::{now_micros, Services};

pub struct Offline;

#[async_trait::async_trait]
impl Module for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn disco_features(&self, target: super::Target) -> &'static [&'static str] {
        if target == super::Target::Server {
            &["msgoffline"]
        } else {
            &[]
        }
    }

    async fn user_available(&self, svc: &Arc<Services>, jid: &FullJid) {
        let (user, host) =
            (jid.node().map(|n| n.as_str().to_owned()).unwrap_or_default(), jid.domain().as_str().to_owned());
        // Most logins find nothing stored: a read answers that without taking
        // the database's write lock, which `take_offline` needs.
        match svc.storage.count_offline(&host, &user).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, %jid, "offline messages could not be counted; they stay stored");
                return;
            }
        }
        let msgs = match svc.storage.take_offline(&host, &user).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, %jid, "offline messages could not be read; they stay stored");
                return;
            }
        };
        let Some(info) = svc.router.sessions().get(jid) else {
            // The resource went away meanwhile: put the messages back, in order.
            for m in msgs {
                let _ = svc.storage.store_offline(&host, &user, &m.from, &m.stanza, m.stamp_micros, u64::MAX).await;
            }
            return;
        };
        if let Some(sink) = svc.router.sink(info.sid).filter(|_| info.node == svc.router.node()) {
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
                    if let Err(el) = svc.router.deliver_to_session(&info, el) {
                        // The session cannot take it now: keep it for the next login.
                        let _ = svc
                            .storage
                            .store_offline(&host, &user, &m.from, &el.to_xml(ns::CLIENT), m.stamp_micros, u64::MAX)
                            .await;
                    }
                }
                None => tracing::error!(id = m.id, "a stored offline message does not parse; dropped"),
            }
        }
    }
}

/// A message no resource could take (RFC 6121 §8.5.2.2.1): stored, or answered with an error.
pub async fn undelivered(svc: &Arc<Services>, r: Routed) {
    let (user, host) = account_of(&r.to);
    match svc.accounts.exists(&host, &user).await {
        Ok(true) => {}
        Ok(false) => {
            svc.router.bounce(r, StanzaErrorCondition::ServiceUnavailable);
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed");
            svc.router.bounce(r, StanzaErrorCondition::InternalServerError);
            return;
        }
    }
    if !has_storable_content(&r.stanza) {
        return;
    }
    let now = now_micros();
    let mut stanza = r.stanza.clone();
    stanza.set_attr("to", Jid::from(r.to.bare()).to_string());
    stanza
        .push_child(Element::new("delay", ns::DELAY).with_attr("from", host.clone()).with_attr("stamp", xep0082(now)));
    match svc
        .storage
        .store_offline(
            &host,
            &user,
            &r.from.to_string(),
            &stanza.to_xml(ns::CLIENT),
            now,
            svc.settings.max_offline_messages,
        )
        .await
    {
        Ok(true) => late_flush(svc, &r.to, &host, &user).await,
        Ok(false) => svc.router.bounce(r, StanzaErrorCondition::ServiceUnavailable),
        Err(e) => {
            tracing::error!(error = %e, "offline store failed");
            svc.router.bounce(r, StanzaErrorCondition::InternalServerError);
        }
    }
}

/// A resource became available while the message was being stored: its
/// login already fetched the stored messages, so this one goes to it now
/// rather than waiting for the next login.
async fn late_flush(svc: &Arc<Services>, to: &Jid, host: &str, user: &str) {
    let bare = to.bare();
    let best = svc
        .router
        .sessions()
        .resources(&bare)
        .into_iter()
        .filter(|s| s.priority.is_some_and(|p| p >= 0))
        .max_by_key(|s| (s.priority, s.created_micros));
    let Some(info) = best else { return };
    let msgs = match svc.storage.take_offline(host, user).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "offline messages could not be read; they stay stored");
            return;
        }
    };
    if let Some(sink) = svc.router.sink(info.sid).filter(|_| info.node == svc.router.node()) {
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
        if let Err(el) = svc.router.deliver_to_session(&info, el) {
            let _ =
                svc.storage.store_offline(host, user, &m.from, &el.to_xml(ns::CLIENT), m.stamp_micros, u64::MAX).await;
        }
    }
}

/// XEP-0082 date-time in UTC with milliseconds.
pub fn xep0082(micros: i64) -> String {
    let t = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}
