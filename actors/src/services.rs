//! What every session and server worker shares on one node.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meerkat_cluster::SessionRegistry;
use meerkat_routing::Router;
use meerkat_storage::Storage;

use crate::auth::Accounts;
use crate::ext::{Hooks, ModuleCtx};
use crate::server::ServerWorkers;

/// Per-node settings of the session layer, filled from the config file by `node`.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Mailbox capacity of each session actor.
    pub mailbox_capacity: usize,
    /// Deliveries a session takes past a full mailbox while their senders wait.
    pub mailbox_overflow: usize,
    /// Bytes a session may have queued for a client that is not reading before it is disconnected.
    pub max_outgoing_bytes: usize,
    /// A client that sends nothing for this long is disconnected (`connection-timeout`).
    pub idle_timeout: Duration,
    /// The server writes a whitespace keepalive after this much silence.
    pub keepalive_interval: Duration,
    /// Time allowed from TCP accept to a bound resource.
    pub negotiation_timeout: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            mailbox_capacity: 1024,
            mailbox_overflow: crate::session::DELIVERY_OVERFLOW,
            max_outgoing_bytes: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(600),
            keepalive_interval: Duration::from_secs(60),
            negotiation_timeout: Duration::from_secs(60),
        }
    }
}

/// The node's shared services.
pub struct Services {
    pub router: Arc<Router>,
    /// Where sessions are registered: this node alone, or the cluster's log.
    pub registry: Arc<dyn SessionRegistry>,
    pub storage: Arc<Storage>,
    pub accounts: Accounts,
    pub settings: SessionSettings,
    pub workers: Arc<ServerWorkers>,
    /// What the modules see of the node, with the modules themselves (`ctx.hooks`).
    pub ctx: ModuleCtx,
    /// Traffic and session counters (see [`crate::instrument`]).
    pub instruments: Arc<crate::instrument::Instruments>,
    next_sid: AtomicU64,
    shutting_down: AtomicBool,
    shutdown_signal: tokio::sync::watch::Sender<bool>,
    connections: std::sync::atomic::AtomicUsize,
    started_micros: i64,
    /// XEP-0198: sessions that can be resumed, by resumption id (one entry per
    /// session that enabled resumption, so bounded by the sessions on the node).
    resumable: std::sync::Mutex<std::collections::HashMap<String, actix::Addr<crate::session::C2sSession>>>,
}

/// Counts a connection for as long as it lives.
pub struct ConnectionGuard(Arc<Services>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Services {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        router: Arc<Router>,
        registry: Arc<dyn SessionRegistry>,
        storage: Arc<Storage>,
        accounts: Accounts,
        settings: SessionSettings,
        workers: Arc<ServerWorkers>,
        modules: Arc<Hooks>,
        pools: Arc<crate::ext::pools::ModulePools>,
    ) -> Arc<Self> {
        let instruments = Arc::new(crate::instrument::Instruments::register(router.hosts()));
        let ctx = ModuleCtx {
            instruments: instruments.clone(),
            router: router.clone(),
            storage: storage.clone(),
            accounts: accounts.clone(),
            hooks: modules,
            pools,
        };
        Arc::new(Services {
            instruments,
            router,
            registry,
            storage,
            accounts,
            settings,
            workers,
            ctx,
            // Start from a random point so ids of a restarted node do not repeat.
            next_sid: AtomicU64::new(rand::random::<u32>() as u64 * 1_000_000),
            shutting_down: AtomicBool::new(false),
            shutdown_signal: tokio::sync::watch::channel(false).0,
            connections: std::sync::atomic::AtomicUsize::new(0),
            started_micros: now_micros(),
            resumable: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    pub fn next_session_id(&self) -> meerkat_cluster::SessionId {
        meerkat_cluster::SessionId(self.next_sid.fetch_add(1, Ordering::Relaxed))
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Registers a live client connection; the count drops when the guard does.
    pub fn connection_guard(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    /// Client connections still open (negotiating or bound).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Resolves when shutdown begins.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown_signal.subscribe()
    }

    /// Stops new logins and asks every session on this node to end with `<system-shutdown/>`.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown_signal.send_replace(true);
        self.kick_local_sessions();
    }

    /// Stops new logins and closes this node's sessions with
    /// `<system-shutdown/>`, without stopping the node (leaving the cluster).
    pub fn drain_sessions(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.kick_local_sessions();
    }

    /// Sessions bound on this node and still running.
    pub fn local_sessions(&self) -> usize {
        self.router.sink_count()
    }

    fn kick_local_sessions(&self) {
        for sink in self.router.local_sinks() {
            sink.kick(meerkat_routing::KickReason::Shutdown);
        }
    }

    /// XEP-0198: `session` can be resumed with `id`.
    pub fn add_resumable(&self, id: String, session: actix::Addr<crate::session::C2sSession>) {
        self.resumable.lock().unwrap_or_else(|e| e.into_inner()).insert(id, session);
    }

    /// The session a resumption id names, if it is still waiting.
    pub fn resumable(&self, id: &str) -> Option<actix::Addr<crate::session::C2sSession>> {
        self.resumable.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    pub fn remove_resumable(&self, id: &str) {
        self.resumable.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    pub fn uptime(&self) -> Duration {
        Duration::from_micros((now_micros() - self.started_micros).max(0) as u64)
    }
}

pub use crate::ext::util::now_micros;
