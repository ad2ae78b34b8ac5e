//! The table of routes: who serves a domain.
//!
//! One table answers for every domain ([`Router::route_of`]):
//! - the local hosts, fixed at start-up from the configuration, served by
//!   [`crate::LocalLink`];
//! - service and component domains registered at run time
//!   ([`Router::register_domain`]), each held by one node of the cluster.
//!   Which node holds a domain is plain data in the replicated
//!   [`DomainTable`](meerkat_cluster::DomainTable); the [`DomainHandler`] that takes its stanzas lives
//!   only here, on that node, as session sinks do.
//!
//! As in ejabberd's `ejabberd_router` (`register_route`, and the route that
//! goes when its owner dies) and MongooseIM's `mongoose_component`
//! (`is_already_registered`), a domain has one route: registering a domain
//! that a local host, a service or a component already has is refused, and
//! the route goes when the [`DomainGuard`] the registration returned is
//! dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use meerkat_cluster::{DomainError, DomainKind, DomainRecord, DomainRegistry, NodeId, RegistryError};
use meerkat_xmpp::jid::canonical_domain;

use crate::{Routed, Router};

/// What takes the stanzas of a service or component domain on this node.
pub trait DomainHandler: Send + Sync {
    /// Delivers without waiting. The stanza comes back when the handler's
    /// bounded queue is full or closed; the router then answers it with
    /// `resource-constraint`.
    #[allow(clippy::result_large_err)]
    fn deliver(&self, routed: Routed) -> Result<(), Routed>;
}

/// Who already serves a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// One of the configured hosts.
    Host,
    /// A service or component on this node.
    Local(DomainKind),
    /// A service or component on another node of the cluster.
    Node(NodeId, DomainKind),
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Host => f.write_str("a local host"),
            Holder::Local(kind) => write!(f, "a {kind} on this node"),
            Holder::Node(node, kind) => write!(f, "a {kind} on node {node}"),
        }
    }
}

/// Why a domain could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Not a domain name.
    #[error("not a domain name: {0:?}")]
    InvalidDomain(String),
    /// The domain already has a route: a refusal, retrying will not help.
    #[error("domain {domain} is already served by {holder}")]
    Conflict { domain: String, holder: Holder },
    /// The registration could not be committed in the cluster: retry later.
    #[error(transparent)]
    Cluster(#[from] RegistryError),
}

/// The route of a domain, as [`Router::route_of`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A local host: users and the server itself.
    Host,
    /// A service or component domain whose handler is on this node.
    Here(DomainKind),
    /// A service or component domain served by another node.
    Node(NodeId, DomainKind),
    /// No route in this cluster: s2s, if installed.
    Remote,
}

/// A registered domain. Dropping it unregisters the domain, on this node
/// and, in a cluster, everywhere.
#[must_use = "dropping the guard unregisters the domain"]
pub struct DomainGuard {
    router: Weak<Router>,
    record: DomainRecord,
    /// Whether dropping it unregisters the domain in the table too (false
    /// when the table refused it, so there is nothing to take back).
    release: bool,
}

impl DomainGuard {
    /// The canonical domain.
    pub fn domain(&self) -> &str {
        &self.record.domain
    }

    pub fn kind(&self) -> DomainKind {
        self.record.kind
    }
}

impl std::fmt::Debug for DomainGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainGuard").field("record", &self.record).finish()
    }
}

impl Drop for DomainGuard {
    fn drop(&mut self) {
        if let Some(router) = self.router.upgrade() {
            router.routes.unregister(&self.record, self.release);
            if self.release {
                if let Some(g) = router.global() {
                    g.domain_down(&self.record.domain);
                }
            }
        }
    }
}

struct LocalRoute {
    id: u64,
    kind: DomainKind,
    handler: Arc<dyn DomainHandler>,
    /// Served by every node of the cluster on its own ([`Router::serve_on_every_node`]):
    /// routed here, whatever the replicated table says.
    everywhere: bool,
}

/// The table of routes of one node.
pub(crate) struct Routes {
    /// The configured hosts, canonical, in configuration order.
    hosts: Vec<String>,
    registry: Arc<dyn DomainRegistry>,
    /// Handlers of the domains this node registered, by canonical domain.
    handlers: RwLock<HashMap<String, LocalRoute>>,
    next_id: AtomicU64,
}

impl Routes {
    pub(crate) fn new(hosts: Vec<String>, registry: Arc<dyn DomainRegistry>) -> Self {
        // Registration ids only need to differ from those of this node's
        // earlier runs whose unregistrations may still be in flight.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Routes { hosts, registry, handlers: RwLock::new(HashMap::new()), next_id: AtomicU64::new(start) }
    }

    pub(crate) fn hosts(&self) -> &[String] {
        &self.hosts
    }

    pub(crate) fn is_local_host(&self, domain: &str) -> bool {
        self.hosts.iter().any(|h| h == domain)
    }

    pub(crate) fn registry(&self) -> &Arc<dyn DomainRegistry> {
        &self.registry
    }

    pub(crate) fn route_of(&self, me: NodeId, domain: &str) -> Route {
        if self.is_local_host(domain) {
            return Route::Host;
        }
        if let Some(local) =
            self.handlers.read().unwrap_or_else(|e| e.into_inner()).get(domain).filter(|r| r.everywhere)
        {
            return Route::Here(local.kind);
        }
        match self.registry.domains().get(domain) {
            Some(r) if r.node == me.0 => Route::Here(r.kind),
            Some(r) => Route::Node(NodeId(r.node), r.kind),
            // Not in the table, yet registered here: the table lost this
            // node's domains (it was marked down, or is registering them
            // again after `NodeUp`); this node's own traffic still reaches them.
            None => match self.handlers.read().unwrap_or_else(|e| e.into_inner()).get(domain) {
                Some(local) => Route::Here(local.kind),
                None => Route::Remote,
            },
        }
    }

    /// The handler of a domain this node serves.
    pub(crate) fn handler(&self, domain: &str) -> Option<Arc<dyn DomainHandler>> {
        self.handlers.read().unwrap_or_else(|e| e.into_inner()).get(domain).map(|r| r.handler.clone())
    }

    /// Checks for a conflict and reserves the domain on this node.
    fn reserve(
        &self,
        me: NodeId,
        domain: String,
        kind: DomainKind,
        handler: Arc<dyn DomainHandler>,
        everywhere: bool,
    ) -> Result<DomainRecord, RouteError> {
        if self.is_local_host(&domain) {
            return Err(RouteError::Conflict { domain, holder: Holder::Host });
        }
        let mut handlers = self.handlers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = handlers.get(&domain) {
            return Err(RouteError::Conflict { domain, holder: Holder::Local(held.kind) });
        }
        // The table can only be stale towards this node here: another node's
        // registration is refused at once rather than after a round trip.
        if let Some(held) = self.registry.domains().get(&domain).filter(|r| r.node != me.0) {
            return Err(RouteError::Conflict { domain, holder: Holder::Node(NodeId(held.node), held.kind) });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        handlers.insert(domain.clone(), LocalRoute { id, kind, handler, everywhere });
        Ok(DomainRecord { domain, node: me.0, kind, id })
    }

    fn unregister(&self, record: &DomainRecord, release: bool) {
        {
            let mut handlers = self.handlers.write().unwrap_or_else(|e| e.into_inner());
            if handlers.get(&record.domain).is_some_and(|r| r.id == record.id) {
                handlers.remove(&record.domain);
            }
        }
        if release {
            self.registry.release_domain(record);
        }
    }
}

impl Router {
    /// Registers a service or component domain served by `handler` on this
    /// node, and returns once every node of the cluster routes it here.
    /// Refused when a local host, a service or a component already has the
    /// domain. Dropping the guard unregisters it.
    pub async fn register_domain(
        self: &Arc<Self>,
        domain: &str,
        kind: DomainKind,
        handler: Arc<dyn DomainHandler>,
    ) -> Result<DomainGuard, RouteError> {
        let domain = canonical_domain(domain).map_err(|_| RouteError::InvalidDomain(domain.to_owned()))?;
        let record = self.routes.reserve(self.node(), domain, kind, handler, false)?;
        // Made before waiting, so that a caller that gives up waiting leaves
        // nothing registered behind it.
        let mut guard = DomainGuard { router: Arc::downgrade(self), record: record.clone(), release: true };
        match self.routes.registry().claim_domain(record).await {
            Ok(()) => {
                tracing::info!(domain = guard.domain(), %kind, "domain registered");
                if let Some(g) = self.global() {
                    g.domain_up(guard.domain(), guard.record.id);
                }
                Ok(guard)
            }
            Err(e) => {
                guard.release = false;
                let domain = guard.record.domain.clone();
                drop(guard);
                Err(match e {
                    DomainError::Taken(held) => {
                        RouteError::Conflict { domain, holder: Holder::Node(NodeId(held.node), held.kind) }
                    }
                    DomainError::Registry(e) => RouteError::Cluster(e),
                })
            }
        }
    }

    /// The route of a canonical domain.
    pub fn route_of(&self, domain: &str) -> Route {
        self.routes.route_of(self.node(), domain)
    }

    /// Serves a service domain on this node for this node's own traffic,
    /// without claiming it in the cluster: every node of the cluster is
    /// meant to serve it the same way (a module every node runs, such as
    /// PubSub), so each routes it to itself and none depends on another.
    /// Refused when a host, or a service or component of this node or
    /// another, has the domain. Dropping the guard unregisters it here.
    pub fn serve_on_every_node(
        self: &Arc<Self>,
        domain: &str,
        handler: Arc<dyn DomainHandler>,
    ) -> Result<DomainGuard, RouteError> {
        let domain = canonical_domain(domain).map_err(|_| RouteError::InvalidDomain(domain.to_owned()))?;
        let record = self.routes.reserve(self.node(), domain, DomainKind::Service, handler, true)?;
        tracing::info!(domain = %record.domain, "service domain served on this node");
        Ok(DomainGuard { router: Arc::downgrade(self), record, release: false })
    }

    /// The replicated table of service and component domains.
    pub fn domains(&self) -> &Arc<meerkat_cluster::DomainTable> {
        self.routes.registry().domains()
    }

    /// The handler of a domain served on this node.
    pub fn domain_handler(&self, domain: &str) -> Option<Arc<dyn DomainHandler>> {
        self.routes.handler(domain)
    }
}
