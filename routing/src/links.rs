//! The built-in links besides the local one: global distribution, which
//! comes first, and the service and component domains of the table of
//! routes, which come after the local hosts.

use meerkat_cluster::transport::StanzaTarget;
use meerkat_cluster::{DomainKind, NodeId};
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::stanza::StanzaKind;

use crate::routes::Route;
use crate::{stanza_with, Link, Routed, Router, Step};

/// Global distribution ([`crate::global`]): a stanza to a user of a local
/// host, or to a domain this cluster does not route (a service or component
/// of another data center, or a remote server), goes through
/// [`crate::GlobalHook::intercept`], which keeps it when the user or domain
/// is served in another data center or the pair has stanzas pending, and
/// gives it back for delivery here (or to s2s) otherwise. Stanzas to a
/// host itself, and stanzas that are not one of the three kinds, pass on to
/// the local link unseen, as [`Router::route_here`] routes past this link.
pub struct GlobalLink;

impl Link for GlobalLink {
    fn name(&self) -> &'static str {
        "global"
    }

    fn route(&self, router: &Router, routed: Routed) -> Step {
        let Some(global) = router.global() else {
            return Step::Next(routed);
        };
        let domain = routed.to.domain();
        let to_user = routed.to.node().is_some() && router.is_local_host(domain.as_str());
        // A domain no host, service or component of this cluster has may be
        // a service or component of another data center.
        let to_other_dc_domain =
            !router.is_local_host(domain.as_str()) && router.route_of(domain.as_str()) == Route::Remote;
        if !(to_user || to_other_dc_domain) || StanzaKind::of(&routed.stanza).is_none() {
            return Step::Next(routed);
        }
        match global.intercept(router, routed) {
            Some(routed) => Step::Next(routed),
            None => Step::Done,
        }
    }
}

/// Service or component domains of the table of routes: delivered to the
/// domain's handler on this node, or forwarded to the node that holds it.
pub struct DomainLink(pub DomainKind);

impl Link for DomainLink {
    fn name(&self) -> &'static str {
        match self.0 {
            DomainKind::Service => "service",
            DomainKind::Component | DomainKind::HiddenComponent => "component",
        }
    }

    fn route(&self, router: &Router, routed: Routed) -> Step {
        match router.route_of(routed.to.domain().as_str()) {
            Route::Here(kind) if kind.link() == self.0 => {
                deliver_to_domain(router, routed);
                Step::Done
            }
            Route::Node(node, kind) if kind.link() == self.0 => {
                forward_to_domain(router, node, routed);
                Step::Done
            }
            _ => Step::Next(routed),
        }
    }
}

/// Hands a stanza to the handler of a domain this node serves. A stanza
/// forwarded from another node comes here too and is never forwarded again.
pub(crate) fn deliver_to_domain(router: &Router, routed: Routed) {
    let Some(handler) = router.domain_handler(routed.to.domain().as_str()) else {
        // The table says this node, but the registration is gone (its
        // unregistration is not applied yet).
        router.bounce(routed, StanzaErrorCondition::ServiceUnavailable);
        return;
    };
    if let Err(routed) = handler.deliver(routed) {
        tracing::debug!(domain = %routed.to.domain(), "domain handler full; answering resource-constraint");
        router.bounce(routed, StanzaErrorCondition::ResourceConstraint);
    }
}

fn forward_to_domain(router: &Router, node: NodeId, routed: Routed) {
    let Routed { from, to, stanza } = routed;
    let target = StanzaTarget::Domain { domain: to.domain().to_string() };
    if let Err(stanza) = router.send_to_node(node, target, stanza_with(&from, &to, stanza)) {
        // With a transport, the peer's queue is full; without one, no node can be reached.
        let cond = if router.transport().is_some() {
            StanzaErrorCondition::ResourceConstraint
        } else {
            StanzaErrorCondition::ServiceUnavailable
        };
        router.bounce(Routed { from, to, stanza }, cond);
    }
}
