//! The router chain and its table of routes.
//!
//! # Layout
//! Every stanza a session, a server module, a service or a component emits
//! goes through [`Router::route`]. The router asks each [`Link`] in turn
//! whether it can deliver; the first one that can, does. The order is fixed:
//!
//! | # | link | takes a stanza to |
//! |---|------|-------------------|
//! | 1 | [`links::GlobalLink`] | a user of a local host who is not served in this data center, or whose (sender, recipient) pair has stanzas pending, or a domain no host, service or component of this cluster has but another data center's does ([`global`], through [`GlobalHook`]); only with global distribution |
//! | 2 | [`local::LocalLink`] | a local host and its users, on any node of the cluster or the server itself (RFC 6121 §8.5) |
//! | 3 | [`links::DomainLink`] (services) | a domain a module or service registered (`pubsub.HOST`, `muclight.HOST`), on this node or the one that holds it |
//! | 4 | [`links::DomainLink`] (components) | a domain an external component (XEP-0114) registered when it connected |
//! | 5 | links added by [`Router::push_link`] | whatever they take |
//! | 6 | the s2s link ([`Router::set_s2s`]) | any other domain |
//!
//! Links 2 to 4 read one table of routes ([`routes`], [`Router::route_of`]):
//! the configured hosts, then the domains registered at run time with
//! [`Router::register_domain`], each held by exactly one node; the cluster
//! replicates which node ([`meerkat_cluster::DomainTable`]), and the handler
//! lives on that node only. Global distribution comes first because it
//! decides whether a local user is served here at all;
//! [`Router::route_here`] routes past it.
//!
//! A session on another node, or a domain another node holds, is reached
//! through the cluster transport ([`Router::set_transport`]);
//! [`cluster::ClusterInbox`] takes stanzas arriving from other nodes.
//!
//! A stanza no link takes is bounced with `remote-server-not-found` (no s2s
//! link, or it declined), or dropped if it is itself an error or an IQ
//! result: an error stanza never triggers another error and a result is
//! never answered, so no routing loop can form.
//!
//! **Architecture Invariants:**
//! - Routing never blocks and never awaits. Delivery into a session is a
//!   `try_send` into a bounded mailbox, delivery to another node a `try_send`
//!   into that peer's bounded queue, delivery to a service or component a
//!   non-blocking [`DomainHandler::deliver`] into its bounded queue; work
//!   that needs storage is handed to the [`ServerHandler`], whose queues are
//!   bounded too. Only registering a domain waits (for the cluster to commit
//!   it), and so does an operator's [`Router::kick`] of a session on another node.
//! - A domain has one route: a local host, or one registration of one node.
//! - A stanza forwarded from another node is never forwarded again: the
//!   receiving node delivers it to its own sessions, offline storage or
//!   domain handlers, so a stale table cannot make stanzas bounce between nodes.
//! - A node decides the availability of its own sessions: when another
//!   node's view may be stale (a resource that just sent initial presence),
//!   the stanza goes to the owning node with `if_available` and that node
//!   checks.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod global;
pub mod links;
pub mod local;
pub mod pressure;
pub mod routes;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock, RwLock};

use meerkat_cluster::transport::{StanzaFrame, StanzaTarget, Transport};
use meerkat_cluster::{DomainRegistry, NodeId, SessionId, SessionInfo, SessionTable, StandaloneDomains};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{error_reply, StanzaErrorCondition};
use meerkat_xmpp::jid::Jid;

pub use links::{DomainLink, GlobalLink};
pub use local::LocalLink;
pub use routes::{DomainGuard, DomainHandler, Holder, Route, RouteError};

/// A stanza in flight, with its addresses already parsed and checked.
#[derive(Clone, Debug)]
pub struct Routed {
    pub from: Jid,
    pub to: Jid,
    pub stanza: Element,
}

/// Why a session must end on the server's initiative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KickReason {
    /// Another session bound the same full JID (RFC 6120 §7.7.2.2).
    Conflict,
    /// The node is shutting down.
    Shutdown,
    /// An administrator closed the session.
    Admin,
    /// The account was removed.
    AccountRemoved,
}

impl KickReason {
    /// Its code on the cluster transport ([`meerkat_cluster::transport::Request::Kick`]).
    pub fn code(self) -> u8 {
        match self {
            KickReason::Conflict => 0,
            KickReason::Shutdown => 1,
            KickReason::Admin => 2,
            KickReason::AccountRemoved => 3,
        }
    }

    /// The reason of a code; an unknown one (a newer node's) is an administrator's.
    pub fn from_code(code: u8) -> KickReason {
        match code {
            0 => KickReason::Conflict,
            1 => KickReason::Shutdown,
            3 => KickReason::AccountRemoved,
            _ => KickReason::Admin,
        }
    }
}

/// Why a session on another node could not be told to end.
#[derive(Debug, thiserror::Error)]
pub enum KickError {
    #[error("node {0} did not answer: {1}")]
    Unreachable(u64, String),
}

/// Told whether a session took a batch of stored messages ([`SessionSink::deliver_stored`]).
pub type Accepted = tokio::sync::oneshot::Sender<bool>;

/// A local session's mailbox as the router sees it.
pub trait SessionSink: Send + Sync {
    /// Delivers without waiting. The stanza comes back when the mailbox is full or closed.
    fn deliver(&self, stanza: Element) -> Result<(), Element>;
    /// Asks the session to end.
    fn kick(&self, reason: KickReason);
    /// Stored (offline) messages, written before any live message the session
    /// holds since its initial presence; `release` ends that hold. `accepted`
    /// is told whether the session took them all (wrote them to its
    /// connection): only then may they be deleted from storage.
    fn deliver_stored(&self, stanzas: Vec<Element>, _release: bool, accepted: Option<Accepted>) {
        let mut all = true;
        for s in stanzas {
            all &= self.deliver(s).is_ok();
        }
        if let Some(a) = accepted {
            let _ = a.send(all);
        }
    }
}

/// Work the server does itself: stanzas to a host or to an account, and
/// stanzas no session could take.
#[derive(Debug)]
pub enum ServerJob {
    /// A stanza addressed to the server (a host, or the sender's own account with no resource).
    ToServer(Routed),
    /// An IQ to a user's bare JID, answered by the server on the account's behalf (RFC 6120 §10.5.3.1).
    ToAccount(Routed),
    /// Presence of a subscription type or a probe, addressed to a local account (RFC 6121 §3, §4.3).
    InboundPresence(Routed),
    /// A message no available resource could take (RFC 6121 §8.5.2.2): offline storage or an error.
    Undelivered(Routed),
}

impl ServerJob {
    pub fn routed(&self) -> &Routed {
        match self {
            ServerJob::ToServer(r)
            | ServerJob::ToAccount(r)
            | ServerJob::InboundPresence(r)
            | ServerJob::Undelivered(r) => r,
        }
    }
    pub fn into_routed(self) -> Routed {
        match self {
            ServerJob::ToServer(r)
            | ServerJob::ToAccount(r)
            | ServerJob::InboundPresence(r)
            | ServerJob::Undelivered(r) => r,
        }
    }
}

/// The server's own stanza processing (modules), reached without blocking.
pub trait ServerHandler: Send + Sync {
    /// Queues a job. It comes back when the queue is full.
    // The job comes back by value so the router can bounce it without an allocation.
    #[allow(clippy::result_large_err)]
    fn submit(&self, job: ServerJob) -> Result<(), ServerJob>;
}

/// Global distribution as the router sees it ([`global::GlobalDistrib`]).
pub trait GlobalHook: Send + Sync {
    /// Takes a stanza to a user of a local host before local delivery. Returns
    /// it when it is to be delivered in this data center now; keeps it when it
    /// goes to another data center or must wait behind earlier stanzas.
    fn intercept(&self, router: &Router, routed: Routed) -> Option<Routed>;
    /// A message a closing session could not deliver.
    fn rerouted(&self, router: &Router, routed: Routed) {
        router.route(routed);
    }
    /// A session on this node was bound.
    fn session_up(&self, router: &Router, info: &SessionInfo);
    /// A session on this node ended.
    fn session_down(&self, sid: SessionId);
    /// A service or component domain was registered on this node
    /// ([`Router::register_domain`]), with its registration's id (a time in
    /// microseconds): other data centers may now route to it here.
    fn domain_up(&self, _domain: &str, _id: u64) {}
    /// This node's registration of a domain ended.
    fn domain_down(&self, _domain: &str) {}
}

/// What a link did with a stanza.
pub enum Step {
    /// Delivered, queued, or handled with an error reply.
    Done,
    /// Not for this link: try the next one.
    Next(Routed),
}

/// One link of the chain.
pub trait Link: Send + Sync {
    fn name(&self) -> &'static str;
    fn route(&self, router: &Router, routed: Routed) -> Step;
}

fn session_target(info: &SessionInfo, if_available: bool) -> StanzaTarget {
    StanzaTarget::Session { jid: info.jid.to_string(), sid: info.sid.0, if_available }
}

/// The stanza with its routing addresses written into it, so that the
/// receiving node routes it exactly as this one would have.
pub(crate) fn stanza_with(from: &Jid, to: &Jid, mut stanza: Element) -> Element {
    stanza.set_attr("from", from.to_string());
    stanza.set_attr("to", to.to_string());
    stanza
}

/// Counters the admin API and metrics read.
#[derive(Debug, Default)]
pub struct RouterStats {
    pub routed: std::sync::atomic::AtomicU64,
    pub bounced: std::sync::atomic::AtomicU64,
    /// Messages answered `service-unavailable` (no resource could take them).
    pub messages_bounced: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
}

/// The router: the session table, the table of routes, the local delivery
/// handles and the chain of links.
pub struct Router {
    node: NodeId,
    routes: routes::Routes,
    sessions: Arc<SessionTable>,
    sinks: RwLock<std::collections::HashMap<SessionId, Arc<dyn SessionSink>>>,
    /// Links 1 to 5 of the chain, replaced whole when one is added, so that
    /// routing takes a snapshot without copying.
    links: RwLock<Arc<[Arc<dyn Link>]>>,
    s2s: OnceLock<Arc<dyn Link>>,
    server: OnceLock<Arc<dyn ServerHandler>>,
    transport: OnceLock<Arc<Transport>>,
    global: OnceLock<Arc<dyn GlobalHook>>,
    pub stats: RouterStats,
}

impl Router {
    /// A router for `hosts` (canonical domains) of a node that is not part of
    /// a cluster: service and component domains are this node's alone.
    pub fn new(node: NodeId, hosts: Vec<String>, sessions: Arc<SessionTable>) -> Arc<Router> {
        Self::with_domains(node, hosts, sessions, Arc::new(StandaloneDomains::default()))
    }

    /// A router for `hosts` (canonical domains) whose service and component
    /// domains are registered through `domains` (a cluster member).
    pub fn with_domains(
        node: NodeId,
        hosts: Vec<String>,
        sessions: Arc<SessionTable>,
        domains: Arc<dyn DomainRegistry>,
    ) -> Arc<Router> {
        let links: [Arc<dyn Link>; 4] = [
            Arc::new(GlobalLink),
            Arc::new(LocalLink),
            Arc::new(DomainLink(meerkat_cluster::DomainKind::Service)),
            Arc::new(DomainLink(meerkat_cluster::DomainKind::Component)),
        ];
        let router = Router {
            node,
            routes: routes::Routes::new(hosts, domains),
            sessions,
            sinks: RwLock::new(Default::default()),
            links: RwLock::new(Arc::new(links)),
            s2s: OnceLock::new(),
            server: OnceLock::new(),
            transport: OnceLock::new(),
            global: OnceLock::new(),
            stats: RouterStats::default(),
        };
        Arc::new(router)
    }

    /// Appends a link after the built-in ones and those added before, and
    /// before the s2s link.
    pub fn push_link(&self, link: Arc<dyn Link>) {
        let mut links = self.links.write().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Arc<dyn Link>> = links.to_vec();
        all.push(link);
        *links = all.into();
    }

    /// Installs the s2s link, the last of the chain, which takes stanzas to
    /// domains no other link has. Without it they are bounced with
    /// `remote-server-not-found`.
    pub fn set_s2s(&self, link: Arc<dyn Link>) {
        let _ = self.s2s.set(link);
    }

    /// The names of the chain's links, in the order they are asked.
    pub fn chain(&self) -> Vec<&'static str> {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner()).clone();
        links.iter().chain(self.s2s.get()).map(|l| l.name()).collect()
    }

    /// Installs the server's handler. The server needs the router to send
    /// replies and the router needs the server, so they meet at run time.
    pub fn set_server_handler(&self, handler: Arc<dyn ServerHandler>) {
        let _ = self.server.set(handler);
    }

    /// Connects the router to the other nodes of the cluster.
    pub fn set_transport(&self, transport: Arc<Transport>) {
        let _ = self.transport.set(transport);
    }

    /// Connects the router to the other data centers.
    pub fn set_global(&self, global: Arc<dyn GlobalHook>) {
        let _ = self.global.set(global);
    }

    pub fn transport(&self) -> Option<&Arc<Transport>> {
        self.transport.get()
    }

    pub fn global(&self) -> Option<&Arc<dyn GlobalHook>> {
        self.global.get()
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The configured hosts: the table's fixed routes.
    pub fn hosts(&self) -> &[String] {
        self.routes.hosts()
    }

    pub fn is_local_host(&self, domain: &str) -> bool {
        self.routes.is_local_host(domain)
    }

    pub fn sessions(&self) -> &Arc<SessionTable> {
        &self.sessions
    }

    /// Registers the delivery handle of a session bound on this node.
    pub fn register_sink(&self, sid: SessionId, sink: Arc<dyn SessionSink>) {
        self.sinks.write().unwrap_or_else(|e| e.into_inner()).insert(sid, sink);
    }

    /// The delivery handles of every live session on this node.
    pub fn local_sinks(&self) -> Vec<Arc<dyn SessionSink>> {
        self.sinks.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Sessions with a delivery handle on this node (live local sessions).
    pub fn sink_count(&self) -> usize {
        self.sinks.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Registers a bound session: its delivery handle, and its location for
    /// other data centers.
    pub fn register_session(&self, info: &SessionInfo, sink: Arc<dyn SessionSink>) {
        self.register_sink(info.sid, sink);
        if let Some(g) = self.global.get() {
            g.session_up(self, info);
        }
    }

    pub fn unregister_sink(&self, sid: SessionId) {
        let removed = self.sinks.write().unwrap_or_else(|e| e.into_inner()).remove(&sid);
        if let (Some(_), Some(g)) = (removed, self.global.get()) {
            g.session_down(sid);
        }
    }

    /// Routes a message that a closing session could not deliver to its client.
    pub fn reroute(&self, routed: Routed) {
        match self.global.get() {
            Some(g) => g.rerouted(self, routed),
            None => self.route(routed),
        }
    }

    /// Routes a stanza in this data center only, past global distribution.
    pub fn route_here(&self, routed: Routed) {
        if self.is_local_host(routed.to.domain().as_str()) {
            local::route_local(self, routed);
        } else {
            // A service or component of this cluster, else s2s: global
            // distribution has had its say.
            self.route_through(routed, false);
        }
    }

    pub fn sink(&self, sid: SessionId) -> Option<Arc<dyn SessionSink>> {
        self.sinks.read().unwrap_or_else(|e| e.into_inner()).get(&sid).cloned()
    }

    /// Delivers straight into a session, on this node or another, bypassing
    /// server processing. Returns the stanza if the session cannot take it.
    pub fn deliver_to_session(&self, info: &SessionInfo, stanza: Element) -> Result<(), Element> {
        if info.node != self.node {
            return self.send_to_node(info.node, session_target(info, false), stanza);
        }
        match self.sink(info.sid) {
            Some(sink) => sink.deliver(stanza),
            None => Err(stanza),
        }
    }

    /// Delivers to a session only if its resource is available. Another
    /// node's sessions are checked by that node, which knows their presence
    /// before the replicated table does.
    pub fn deliver_if_available(&self, info: &SessionInfo, stanza: Element) -> Result<(), Element> {
        if info.node != self.node {
            return self.send_to_node(info.node, session_target(info, info.priority.is_none()), stanza);
        }
        if info.priority.is_none() {
            return Err(stanza);
        }
        self.deliver_to_session(info, stanza)
    }

    /// Hands a stanza for an account to the node that serves its resources,
    /// which delivers it to them or stores it offline.
    #[allow(clippy::result_large_err)]
    pub fn forward_to_account(&self, node: NodeId, routed: Routed) -> Result<(), Routed> {
        let Routed { from, to, stanza } = routed;
        self.send_to_node(node, StanzaTarget::Account, stanza_with(&from, &to, stanza)).map_err(|stanza| Routed {
            from,
            to,
            stanza,
        })
    }

    pub(crate) fn send_to_node(&self, node: NodeId, target: StanzaTarget, stanza: Element) -> Result<(), Element> {
        let Some(transport) = self.transport.get() else {
            return Err(stanza);
        };
        let from = stanza.attr("from").unwrap_or_default().to_owned();
        let to = stanza.attr("to").unwrap_or_default().to_owned();
        transport.send_stanza(node.0, StanzaFrame { target, from, to, stanza }).map_err(|f| f.stanza)
    }

    /// Hands a job to the server.
    pub fn submit(&self, job: ServerJob) {
        let Some(server) = self.server.get() else {
            self.bounce(job.into_routed(), StanzaErrorCondition::ServiceUnavailable);
            return;
        };
        if let Err(job) = server.submit(job) {
            tracing::warn!("server queue full; answering resource-constraint");
            self.bounce(job.into_routed(), StanzaErrorCondition::ResourceConstraint);
        }
    }

    /// Ends a session wherever it is in the cluster: at once on this node,
    /// through the cluster transport on another. `Ok(false)` when the session
    /// was gone already. Waits for the other node's answer (an operator's
    /// request, never on a stanza's path).
    pub async fn kick(&self, info: &SessionInfo, reason: KickReason) -> Result<bool, KickError> {
        if info.node == self.node {
            return Ok(match self.sink(info.sid) {
                Some(sink) => {
                    sink.kick(reason);
                    true
                }
                None => false,
            });
        }
        let Some(transport) = self.transport() else { return Ok(false) };
        let request = meerkat_cluster::transport::Request::Kick { sid: info.sid.0, reason: reason.code() };
        match transport.request(info.node.0, request, std::time::Duration::from_secs(5)).await {
            Ok(meerkat_cluster::transport::Response::Delivered(found)) => Ok(found),
            Ok(other) => Err(KickError::Unreachable(info.node.0, format!("unexpected answer {other:?}"))),
            Err(e) => Err(KickError::Unreachable(info.node.0, e.to_string())),
        }
    }

    /// Routes a stanza through the chain.
    pub fn route(&self, routed: Routed) {
        self.route_through(routed, true);
    }

    /// The chain, with or without the global link.
    fn route_through(&self, routed: Routed, with_global: bool) {
        self.stats.routed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let links = self.links.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut routed = routed;
        for link in links.iter().chain(self.s2s.get()) {
            if !with_global && link.name() == "global" {
                continue;
            }
            match link.route(self, routed) {
                Step::Done => return,
                Step::Next(r) => routed = r,
            }
        }
        let cond = if self.is_local_host(routed.to.domain().as_str()) {
            StanzaErrorCondition::ServiceUnavailable
        } else {
            StanzaErrorCondition::RemoteServerNotFound
        };
        self.bounce(routed, cond);
    }

    /// Answers a stanza with an error, unless it is an error itself (RFC 6120 §8.3.1)
    /// or an IQ result, which must not be answered either (RFC 6120 §8.2.3).
    pub fn bounce(&self, routed: Routed, cond: StanzaErrorCondition) {
        let is_iq_result = routed.stanza.name == "iq" && routed.stanza.attr("type") == Some("result");
        let reply = if is_iq_result { None } else { error_reply(&routed.stanza, cond, None) };
        match reply {
            Some(mut reply) => {
                self.stats.bounced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if routed.stanza.name == "message" && cond == StanzaErrorCondition::ServiceUnavailable {
                    self.stats.messages_bounced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                reply.set_attr("from", routed.to.to_string());
                reply.set_attr("to", routed.from.to_string());
                self.route(Routed { from: routed.to, to: routed.from, stanza: reply });
            }
            None => {
                self.stats.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(to = %routed.to, "dropping an undeliverable error or IQ result");
            }
        }
    }
}
