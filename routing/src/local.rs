//! The local link: recipients on this node's hosts (RFC 6121 §8.5).
//!
//! | to            | message                                   | presence                        | iq                      |
//! |---------------|-------------------------------------------|---------------------------------|-------------------------|
//! | host          | server                                    | server                          | server                  |
//! | bare JID      | highest-priority resources, else offline  | subscription/probe: server; else all available resources | server, on the account's behalf |
//! | full JID, bound | that resource                           | that resource (probe: server)   | that resource           |
//! | full JID, not bound | as if to the bare JID (chat/normal) | subscription: as bare; else dropped | `service-unavailable` |
//!
//! Sessions bound on another node make this link pass the stanza on, so a
//! cluster link placed after it can forward it.

use meerkat_cluster::SessionInfo;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::stanza::{MessageType, PresenceType, StanzaKind};

use crate::{Link, Routed, Router, ServerJob, Step};

/// Delivery to this node's hosts.
pub struct LocalLink;

impl Link for LocalLink {
    fn name(&self) -> &'static str {
        "local"
    }

    fn route(&self, router: &Router, routed: Routed) -> Step {
        if !router.is_local_host(routed.to.domain().as_str()) {
            return Step::Next(routed);
        }
        let Some(kind) = StanzaKind::of(&routed.stanza) else {
            router.bounce(routed, StanzaErrorCondition::BadRequest);
            return Step::Done;
        };
        if routed.to.node().is_none() {
            router.submit(ServerJob::ToServer(routed));
            return Step::Done;
        }
        let full = routed.to.try_as_full().ok().cloned();
        match full {
            Some(full) => match router.sessions().get(&full) {
                Some(info) => to_bound_resource(router, routed, kind, info),
                None => to_unbound_resource(router, routed, kind),
            },
            None => to_bare(router, routed, kind),
        }
    }
}

fn to_bound_resource(router: &Router, routed: Routed, kind: StanzaKind, info: SessionInfo) -> Step {
    if info.node != router.node() {
        return Step::Next(routed);
    }
    if kind == StanzaKind::Presence {
        if let Some(t) = PresenceType::of(&routed.stanza) {
            if t == PresenceType::Probe || t.is_subscription() {
                router.submit(ServerJob::InboundPresence(routed));
                return Step::Done;
            }
        }
    }
    let Routed { from, to, stanza } = routed;
    match router.deliver_to_session(&info, stanza) {
        Ok(()) => Step::Done,
        Err(stanza) => {
            let routed = Routed { from, to, stanza };
            match kind {
                // The resource cannot take it right now: a message falls back to the
                // account (other resources or offline storage) rather than vanishing.
                StanzaKind::Message => to_bare(router, routed, kind),
                StanzaKind::Iq => {
                    router.bounce(routed, StanzaErrorCondition::ResourceConstraint);
                    Step::Done
                }
                StanzaKind::Presence => {
                    router.stats.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Step::Done
                }
            }
        }
    }
}

fn to_unbound_resource(router: &Router, routed: Routed, kind: StanzaKind) -> Step {
    match kind {
        StanzaKind::Message => match MessageType::of(&routed.stanza) {
            MessageType::Normal | MessageType::Chat => to_bare(router, routed, kind),
            MessageType::Groupchat => {
                router.bounce(routed, StanzaErrorCondition::ServiceUnavailable);
                Step::Done
            }
            // Headlines and errors to a gone resource are silently dropped (§8.5.3.2.1).
            MessageType::Headline | MessageType::Error => Step::Done,
        },
        StanzaKind::Presence => {
            match PresenceType::of(&routed.stanza) {
                Some(t) if t.is_subscription() || t == PresenceType::Probe => {
                    router.submit(ServerJob::InboundPresence(routed));
                }
                _ => {}
            }
            Step::Done
        }
        StanzaKind::Iq => {
            router.bounce(routed, StanzaErrorCondition::ServiceUnavailable);
            Step::Done
        }
    }
}

fn to_bare(router: &Router, routed: Routed, kind: StanzaKind) -> Step {
    let bare = routed.to.to_bare();
    match kind {
        StanzaKind::Iq => {
            router.submit(ServerJob::ToAccount(routed));
            Step::Done
        }
        StanzaKind::Presence => {
            match PresenceType::of(&routed.stanza) {
                Some(t) if t.is_subscription() || t == PresenceType::Probe => {
                    router.submit(ServerJob::InboundPresence(routed));
                }
                Some(_) => {
                    // Broadcast presence goes to every available resource (§8.5.2.1.2).
                    for info in router.sessions().resources(&bare) {
                        if info.priority.is_some() {
                            let _ = deliver_copy(router, &info, &routed.stanza);
                        }
                    }
                }
                None => router.bounce(routed, StanzaErrorCondition::BadRequest),
            }
            Step::Done
        }
        StanzaKind::Message => {
            let mtype = MessageType::of(&routed.stanza);
            if mtype == MessageType::Groupchat {
                router.bounce(routed, StanzaErrorCondition::ServiceUnavailable);
                return Step::Done;
            }
            let targets = router.sessions().highest_priority(&bare);
            if targets.iter().any(|t| t.node != router.node()) {
                return Step::Next(routed);
            }
            let mut delivered = false;
            for info in &targets {
                delivered |= deliver_copy(router, info, &routed.stanza);
            }
            if !delivered {
                match mtype {
                    // Headlines and errors are not worth storing (§8.5.2.2.1).
                    MessageType::Headline | MessageType::Error => {}
                    _ => router.submit(ServerJob::Undelivered(routed)),
                }
            }
            Step::Done
        }
    }
}

fn deliver_copy(router: &Router, info: &SessionInfo, stanza: &Element) -> bool {
    router.deliver_to_session(info, stanza.clone()).is_ok()
}
