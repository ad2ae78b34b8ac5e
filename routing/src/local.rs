//! The local link: recipients on this node's hosts (RFC 6121 §8.5).
//!
//! | to            | message                                   | presence                        | iq                      |
//! |---------------|-------------------------------------------|---------------------------------|-------------------------|
//! | host          | server                                    | server                          | server                  |
//! | bare JID      | highest-priority resources, else offline  | subscription/probe: server; else all available resources | server, on the account's behalf |
//! | full JID, bound | that resource                           | that resource (probe: server)   | that resource           |
//! | full JID, not bound | as if to the bare JID (chat/normal) | subscription: as bare; else dropped | `service-unavailable` |
//!
//! Sessions bound on another node of the cluster are reached through the
//! cluster transport ([`Router::deliver_to_session`]); when this node's view
//! of their availability may be stale, the owning node decides
//! ([`Router::deliver_if_available`], [`Router::forward_to_account`]).

use meerkat_cluster::SessionInfo;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::Bare as _;
use meerkat_xmpp::stanza::{MessageType, PresenceType, StanzaKind};

use crate::{Link, Routed, Router, ServerJob, Step};

/// Delivery to the cluster's hosts and their users (link 2 of the chain).
pub struct LocalLink;

impl Link for LocalLink {
    fn name(&self) -> &'static str {
        "local"
    }

    fn route(&self, router: &Router, routed: Routed) -> Step {
        if !router.is_local_host(routed.to.domain().as_str()) {
            return Step::Next(routed);
        }
        route_local(router, routed);
        Step::Done
    }
}

/// Delivery in this data center: what the local link does once global
/// distribution ([`crate::GlobalLink`]) let a stanza through, and what
/// [`Router::route_here`] does directly.
pub(crate) fn route_local(router: &Router, routed: Routed) {
    let Some(kind) = StanzaKind::of(&routed.stanza) else {
        router.bounce(routed, StanzaErrorCondition::BadRequest);
        return;
    };
    if routed.to.node().is_none() {
        router.submit(ServerJob::ToServer(routed));
        return;
    }
    let _ = route_to_user(router, routed, kind);
}

fn route_to_user(router: &Router, routed: Routed, kind: StanzaKind) -> Step {
    {
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
    let bare = routed.to.bare();
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
                        let _ = router.deliver_if_available(&info, routed.stanza.clone());
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
            let mut delivered = false;
            for info in &targets {
                delivered |= deliver_copy(router, info, &routed.stanza);
            }
            if delivered {
                return Step::Done;
            }
            // No resource is available as far as this node knows. A resource on
            // another node may have become available since the table was
            // replicated here: that node decides.
            let owner = router
                .sessions()
                .resources(&bare)
                .into_iter()
                .filter(|s| s.node != router.node())
                .max_by_key(|s| s.created_micros)
                .map(|s| s.node);
            let routed = match owner {
                Some(node) => match router.forward_to_account(node, routed) {
                    Ok(()) => return Step::Done,
                    Err(routed) => routed,
                },
                None => routed,
            };
            undelivered(router, routed, mtype);
            Step::Done
        }
    }
}

/// A message no resource took: offline storage, except headlines and errors,
/// which are not worth storing (§8.5.2.2.1).
fn undelivered(router: &Router, routed: Routed, mtype: MessageType) {
    match mtype {
        MessageType::Headline | MessageType::Error => {}
        _ => router.submit(ServerJob::Undelivered(routed)),
    }
}

/// A message for an account that another node forwarded here because this
/// node serves its resources: delivered to this node's available resources
/// of highest priority, else stored offline. Never forwarded again.
pub fn deliver_forwarded_message(router: &Router, routed: Routed) {
    let mtype = MessageType::of(&routed.stanza);
    let bare = routed.to.bare();
    let local: Vec<SessionInfo> =
        router.sessions().resources(&bare).into_iter().filter(|s| s.node == router.node()).collect();
    let best = local.iter().filter_map(|s| s.priority).filter(|p| *p >= 0).max();
    let mut delivered = false;
    if let Some(best) = best {
        for info in local.iter().filter(|s| s.priority == Some(best)) {
            delivered |= deliver_copy(router, info, &routed.stanza);
        }
    }
    if !delivered {
        undelivered(router, routed, mtype);
    }
}

fn deliver_copy(router: &Router, info: &SessionInfo, stanza: &Element) -> bool {
    router.deliver_to_session(info, stanza.clone()).is_ok()
}
