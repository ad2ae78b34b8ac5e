//! Stanzas arriving from other nodes of the cluster.
//!
//! A forwarded stanza is delivered on this node or falls back here (another
//! resource of this node, offline storage, an error to the sender); a stanza
//! for a service or component domain goes to its handler here, or is
//! answered with an error. It is never forwarded again, so a table that is briefly stale on two nodes
//! cannot make a stanza bounce between them.

use meerkat_xmpp::jid::Bare as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use meerkat_cluster::transport::{StanzaFrame, StanzaInbox, StanzaTarget};
use meerkat_cluster::SessionId;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{parse_full, parse_jid, Jid};
use meerkat_xmpp::stanza::StanzaKind;

use crate::links::deliver_to_domain;
use crate::local::deliver_forwarded_message;
use crate::{Routed, Router};

/// The router's side of the cluster transport.
pub struct ClusterInbox {
    router: Arc<Router>,
}

impl ClusterInbox {
    pub fn new(router: Arc<Router>) -> Arc<Self> {
        Arc::new(ClusterInbox { router })
    }

    fn routed(frame: StanzaFrame) -> Option<Routed> {
        let from = parse_jid(&frame.from).ok()?;
        let to = parse_jid(&frame.to).ok()?;
        Some(Routed { from, to, stanza: frame.stanza })
    }

    /// What happens to a stanza whose session is not here (any more).
    fn fallback(&self, routed: Routed) {
        match StanzaKind::of(&routed.stanza) {
            Some(StanzaKind::Message) => {
                let mut routed = routed;
                routed.to = Jid::from(routed.to.bare());
                deliver_forwarded_message(&self.router, routed);
            }
            Some(StanzaKind::Iq) => self.router.bounce(routed, StanzaErrorCondition::ServiceUnavailable),
            // Presence to a resource that is gone is dropped, as on one node.
            _ => {}
        }
    }
}

impl StanzaInbox for ClusterInbox {
    fn on_stanza(&self, from_node: u64, frame: StanzaFrame) {
        match frame.target.clone() {
            StanzaTarget::Session { jid, sid, if_available } => {
                let info = parse_full(&jid)
                    .ok()
                    .and_then(|j| self.router.sessions().get(&j))
                    .filter(|s| s.node == self.router.node() && s.sid == SessionId(sid));
                let stanza = match info {
                    Some(info) => {
                        if if_available && info.priority.is_none() {
                            return;
                        }
                        // Direct delivery needs no addresses: pushes from the server have no 'from'.
                        match self.router.deliver_to_session(&info, frame.stanza) {
                            Ok(()) => return,
                            Err(stanza) => stanza,
                        }
                    }
                    None => frame.stanza,
                };
                let to = if frame.to.is_empty() { jid } else { frame.to };
                match Self::routed(StanzaFrame { stanza, to, ..frame }) {
                    Some(routed) => self.fallback(routed),
                    None => tracing::debug!(from_node, "dropping an undeliverable forwarded stanza without a sender"),
                }
            }
            StanzaTarget::Account => match Self::routed(frame) {
                Some(routed) if StanzaKind::of(&routed.stanza) == Some(StanzaKind::Message) => {
                    deliver_forwarded_message(&self.router, routed)
                }
                Some(routed) => self.fallback(routed),
                None => tracing::warn!(from_node, "dropping a forwarded stanza with unparsable addresses"),
            },
            StanzaTarget::Domain { .. } => match Self::routed(frame) {
                Some(routed) => deliver_to_domain(&self.router, routed),
                None => tracing::warn!(from_node, "dropping a forwarded stanza with unparsable addresses"),
            },
        }
    }

    fn kick(&self, _from_node: u64, sid: u64, reason: u8) -> bool {
        match self.router.sink(meerkat_cluster::SessionId(sid)) {
            Some(sink) => {
                sink.kick(crate::KickReason::from_code(reason));
                true
            }
            None => false,
        }
    }

    fn deliver_checked(&self, _from_node: u64, frame: StanzaFrame) -> bool {
        let router = &self.router;
        match frame.target {
            StanzaTarget::Session { jid, sid, .. } => {
                let info = parse_full(&jid)
                    .ok()
                    .and_then(|j| router.sessions().get(&j))
                    .filter(|s| s.node == router.node() && s.sid == SessionId(sid));
                info.is_some_and(|info| router.deliver_to_session(&info, frame.stanza).is_ok())
            }
            StanzaTarget::Account => {
                let Ok(to) = parse_jid(&frame.to) else { return false };
                let bare = to.bare();
                let local: Vec<_> =
                    router.sessions().resources(&bare).into_iter().filter(|s| s.node == router.node()).collect();
                let Some(best) = local.iter().filter_map(|s| s.priority).filter(|p| *p >= 0).max() else {
                    return false;
                };
                let mut delivered = false;
                for info in local.iter().filter(|s| s.priority == Some(best) && router.sink(s.sid).is_some()) {
                    delivered |= router.deliver_to_session(info, frame.stanza.clone()).is_ok();
                }
                delivered
            }
            StanzaTarget::Domain { domain } => {
                let handler = router.domain_handler(&domain);
                let routed = Self::routed(StanzaFrame { target: StanzaTarget::Account, ..frame });
                let (Some(handler), Some(routed)) = (handler, routed) else {
                    return false;
                };
                handler.deliver(routed).is_ok()
            }
        }
    }

    fn undeliverable(&self, node: u64, frame: StanzaFrame, queued_at: SystemTime) {
        // The node went down with this queued for it or not acknowledged; its
        // sessions have left the table, so routing again reaches other
        // resources, the user's new node or offline storage.
        let copy_for_one_session = matches!(frame.target, StanzaTarget::Session { .. });
        let domain_target = matches!(frame.target, StanzaTarget::Domain { .. });
        let Some(routed) = Self::routed(frame) else { return };
        if domain_target {
            // Its domains left the table with it: the domain may be served
            // elsewhere by now (a component that reconnected), else it is gone.
            if self.router.domains().contains(routed.to.domain().as_str()) {
                self.router.route(routed);
            } else {
                self.router.bounce(routed, StanzaErrorCondition::ServiceUnavailable);
            }
            return;
        }
        if StanzaKind::of(&routed.stanza) != Some(StanzaKind::Message) {
            return;
        }
        let bare = routed.to.bare();
        if copy_for_one_session {
            // A message for the account goes to every available resource of
            // highest priority: one that was already bound when this copy was
            // queued got its own copy then, and must not get a second one.
            let queued_micros = queued_at.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(i64::MAX);
            let had_its_copy =
                self.router.sessions().highest_priority(&bare).iter().any(|s| s.created_micros < queued_micros);
            if had_its_copy {
                tracing::debug!(node, to = %routed.to, "a copy for a resource on a node that went down; the other resources have theirs");
                return;
            }
        }
        tracing::debug!(node, to = %routed.to, "re-routing a message the node that went down did not take");
        let mut routed = routed;
        routed.to = Jid::from(bare);
        self.router.route(routed);
    }
}
