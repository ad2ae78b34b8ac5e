//! A cluster member: Raft, its storage and transport, and the tasks that
//! keep the replicated session table true.
//!
//! # What the tasks do
//! - **announce**: after start, and whenever the log says this node was
//!   marked down, commit `NodeUp` with the sessions this node really serves.
//!   Logins wait for it (a node that restarted must first clear what its
//!   previous incarnation left in the table).
//! - **proposer**: closes and priority changes, committed in the background
//!   with retries, so that a session never waits on the log to end.
//! - **watch**: follows membership and leadership. On the leader, a member
//!   silent for `down_after` is marked down (`NodeDown`), which removes its
//!   sessions everywhere; messages to them then go to offline storage.
//! - **reconcile**: entries of this node that no live session backs (a
//!   proposal that committed after its login gave up) are closed, and so are
//!   domains of this node that no live registration backs.
//!
//! Service and component domains ([`DomainRegistry`]) follow sessions: a
//! registration is committed before it is routable, a node marked down or
//! removed loses its domains everywhere, and its `NodeUp` carries the
//! domains it still serves (`NodeUpWithDomains`), registered in the same step.
//!
//! # Partitions
//! A node that cannot reach a majority cannot commit, so it refuses logins:
//! [`SessionRegistry::open`] fails within `commit_timeout`. Its existing
//! sessions keep working locally. After the heal it learns from the log that
//! it was marked down and re-registers its sessions; where a full JID was
//! bound again meanwhile, the older session loses, so no full JID ends up
//! with two sessions.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use meerkat_xmpp::jid::FullJid;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};

use crate::command::{Command, CommandResponse, CommandV1, CommandV2, SessionRecord};
use crate::domain_table::{DomainRecord, DomainTable};
use crate::network::Network;
use crate::registry::RegistryObserver;
use crate::registry_api::{DomainError, DomainRegistry, Kicker, RegistryError, SessionRegistry};
use crate::store::{LogStore, StateMachineStore};
use crate::transport::{ClusterTls, Reply, Request, RequestHandler, Response, Transport, TransportError, WireError};
use crate::types::{MemberNode, Raft};
use crate::{NodeId, OpenOutcome, SessionId, SessionInfo, SessionTable};

/// Settings of a cluster member, filled from `[cluster]` by `node`.
#[derive(Clone)]
pub struct ClusterSettings {
    /// Nodes only talk to nodes of the same cluster name.
    pub name: String,
    pub node_id: u64,
    /// Where the cluster transport listens.
    pub listen: SocketAddr,
    /// The address other nodes use to reach this one.
    pub advertise: String,
    /// Where the vote, the log and snapshots live.
    pub dir: PathBuf,
    /// Start a new one-node cluster if this node has no state yet.
    pub bootstrap: bool,
    /// fsync the log before acknowledging (turn off only for throwaway tests).
    pub sync_log: bool,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// The leader marks a member down after this long without an answer.
    pub down_after: Duration,
    /// A login that cannot commit within this long is refused.
    pub commit_timeout: Duration,
    pub tls: Option<ClusterTls>,
    /// `cluster.shared_secret`: every peer proves it knows it, both ways.
    pub secret: Option<crate::peer_auth::SharedSecret>,
}

/// Errors of cluster operations.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Refused(String),
}

/// One member as `GET /api/cluster` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    pub id: u64,
    pub address: String,
    /// "voter" or "learner".
    pub role: &'static str,
    /// This node has heard from it within `down_after` (always true for itself).
    pub reachable: bool,
    /// Marked down in the replicated registry.
    pub down: bool,
    pub sessions: usize,
    /// Milliseconds since this node last heard from it.
    pub last_seen_ms: Option<u64>,
    /// Leader only: the last log index replicated to it, and how far it is behind.
    pub matched_index: Option<u64>,
    pub lag: Option<u64>,
}

/// The cluster as this node sees it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub node: u64,
    /// leader, follower, candidate or learner.
    pub state: String,
    pub ready: bool,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub sessions: usize,
}

struct Hooks(OnceLock<Weak<ClusterNode>>);

impl RegistryObserver for Hooks {
    fn session_lost(&self, lost: &SessionInfo) {
        if let Some(node) = self.0.get().and_then(Weak::upgrade) {
            node.on_session_lost(lost);
        }
    }
    fn node_down(&self, down: NodeId) {
        if let Some(node) = self.0.get().and_then(Weak::upgrade) {
            node.on_node_down(down);
        }
    }
}

/// A running cluster member.
pub struct ClusterNode {
    id: u64,
    settings: ClusterSettings,
    raft: Raft,
    transport: Arc<Transport>,
    log: LogStore,
    sm: StateMachineStore,
    table: Arc<SessionTable>,
    domains: Arc<DomainTable>,
    /// The sessions this node serves, with their priority sequence numbers.
    own: Mutex<HashMap<SessionId, (SessionInfo, u64)>>,
    /// The domains this node serves, by domain.
    own_domains: Mutex<HashMap<String, DomainRecord>>,
    seq: AtomicU64,
    /// Sessions this node registered alone, without a majority (every other
    /// member's process gone): in its own table only, until `NodeUp` commits them.
    alone: Mutex<HashSet<SessionId>>,
    kicker: OnceLock<Kicker>,
    ready: AtomicBool,
    stopping: AtomicBool,
    announce: Notify,
    proposals: mpsc::Sender<Command>,
    shutdown: watch::Sender<bool>,
    /// How many times this node saw the leader change (metrics).
    leader_changes: AtomicU64,
}

/// Proposals waiting to be committed in the background.
const PROPOSAL_QUEUE: usize = 64 * 1024;
/// How often a node probes members it has not heard from.
const PROBE_EVERY: Duration = Duration::from_millis(1000);

impl ClusterNode {
    /// Opens the node's Raft state, starts its transport and tasks, and
    /// bootstraps a new cluster if asked to and there is no state yet.
    pub async fn start(settings: ClusterSettings, table: Arc<SessionTable>) -> Result<Arc<ClusterNode>, ClusterError> {
        let id = settings.node_id;
        if id == 0 {
            return Err(ClusterError::Refused("node id 0 is reserved".into()));
        }
        let dir = settings.dir.join("raft");
        let hooks = Arc::new(Hooks(OnceLock::new()));
        let log = LogStore::open(&dir, settings.sync_log)?;
        let domains = Arc::new(DomainTable::new());
        let sm = StateMachineStore::open_with_domains(
            &dir,
            table.clone(),
            domains.clone(),
            Some(hooks.clone() as Arc<dyn RegistryObserver>),
        )?;
        let transport =
            Transport::with_secret(id, settings.name.clone(), settings.tls.clone(), settings.secret.clone());
        let listener = TcpListener::bind(settings.listen).await?;
        let config = openraft::Config {
            cluster_name: settings.name.clone(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout_min.as_millis() as u64,
            election_timeout_max: settings.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
            max_in_snapshot_log_to_keep: 1000,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| ClusterError::Raft(e.to_string()))?);
        let raft = Raft::new(id, config, Network { transport: transport.clone() }, log.clone(), sm.clone())
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let (proposals, proposals_rx) = mpsc::channel(PROPOSAL_QUEUE);
        let node = Arc::new(ClusterNode {
            id,
            settings: settings.clone(),
            raft,
            transport: transport.clone(),
            log,
            sm,
            table,
            domains,
            own: Mutex::new(HashMap::new()),
            own_domains: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            alone: Mutex::new(HashSet::new()),
            kicker: OnceLock::new(),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            announce: Notify::new(),
            proposals,
            shutdown: watch::channel(false).0,
            leader_changes: AtomicU64::new(0),
        });
        let _ = hooks.0.set(Arc::downgrade(&node));
        transport.set_handler(Arc::new(Handler(Arc::downgrade(&node))));
        tokio::spawn(transport.clone().serve(listener));

        let initialized = node.raft.is_initialized().await.map_err(|e| ClusterError::Raft(e.to_string()))?;
        if settings.bootstrap && !initialized {
            let members = BTreeMap::from([(id, MemberNode { addr: settings.advertise.clone() })]);
            node.raft.initialize(members).await.map_err(|e| ClusterError::Raft(e.to_string()))?;
            tracing::info!(node = id, "bootstrapped a new cluster");
        }
        tokio::spawn(node.clone().announce_task());
        tokio::spawn(node.clone().proposer_task(proposals_rx));
        tokio::spawn(node.clone().watch_task());
        tokio::spawn(node.clone().reconcile_task());
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Graceful stop: tells the cluster this node's sessions are gone (one
    /// `NodeDown` instead of a close per session, and stanzas queued for this
    /// node elsewhere go to offline storage), then stops Raft and the transport.
    pub async fn stop(&self, deadline: tokio::time::Instant) {
        self.stopping.store(true, Ordering::Release);
        self.ready.store(false, Ordering::Release);
        let budget = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(500));
        let _ = tokio::time::timeout(budget, self.propose(CommandV1::NodeDown { node: self.id }.into())).await;
        self.shutdown().await;
    }

    /// Stops Raft and the transport.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        self.transport.shutdown();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    fn is_member(&self) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&self.id).is_some()
    }

    // ----- observer callbacks (called while applying; must not block) -----

    fn on_session_lost(&self, lost: &SessionInfo) {
        if lost.node.0 != self.id {
            return;
        }
        self.own.lock().unwrap_or_else(|e| e.into_inner()).remove(&lost.sid);
        if let Some(kick) = self.kicker.get() {
            kick(lost.sid);
        }
    }

    fn on_node_down(&self, down: NodeId) {
        if down.0 == self.id {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            tracing::warn!("the cluster marked this node down; re-registering its sessions");
            self.ready.store(false, Ordering::Release);
            self.announce.notify_one();
        } else {
            tracing::warn!(node = down.0, "node marked down; its sessions left the table");
            self.transport.peer_down(down.0);
        }
    }

    // ----- proposals -----

    /// Commits a command through the leader and waits until this node applied it.
    async fn propose(&self, cmd: Command) -> Result<CommandResponse, RegistryError> {
        let timeout = self.settings.commit_timeout;
        let work = async {
            let (index, response) = match self.raft.client_write(cmd.clone()).await {
                Ok(resp) => (resp.log_id.index, resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    let Some(leader) = f.leader_id else {
                        return Err(RegistryError::NoQuorum("no leader is known".into()));
                    };
                    if let Some(n) = &f.leader_node {
                        self.transport.set_address(leader, &n.addr);
                    }
                    match self.transport.request(leader, Request::ClientWrite(cmd), timeout).await {
                        Ok(Response::ClientWrite { index, response }) => (index, response),
                        Ok(_) => return Err(RegistryError::NoQuorum("unexpected answer from the leader".into())),
                        Err(e) => return Err(RegistryError::NoQuorum(format!("leader {leader}: {e}"))),
                    }
                }
                Err(e) => return Err(RegistryError::NoQuorum(e.to_string())),
            };
            self.raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "proposal applied")
                .await
                .map_err(|e| RegistryError::NoQuorum(format!("not applied locally: {e}")))?;
            Ok(response)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(RegistryError::NoQuorum(format!("nothing committed within {timeout:?}"))),
        }
    }

    /// Queues a proposal that nobody waits for.
    fn propose_later(&self, cmd: Command) {
        if self.proposals.try_send(cmd).is_err() {
            tracing::warn!("cluster proposal queue full; the reconciler will catch up");
        }
    }

    async fn proposer_task(self: Arc<Self>, mut rx: mpsc::Receiver<Command>) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let cmd = tokio::select! {
                c = rx.recv() => match c { Some(c) => c, None => return },
                _ = shutdown.changed() => return,
            };
            let mut delay = Duration::from_millis(100);
            for attempt in 0..5 {
                match self.propose(cmd.clone()).await {
                    Ok(_) => break,
                    Err(e) if attempt == 4 => tracing::warn!(error = %e, "giving up on a cluster proposal"),
                    Err(_) => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        }
    }

    /// Whether this node serves alone: it was registered with the cluster,
    /// and every other member has been silent for `down_after` with its
    /// address refusing connections (its process is gone; a partition would
    /// time out instead). A cluster of two that lost one then keeps taking
    /// logins; a node cut off by a partition still refuses them.
    fn serving_alone(&self) -> bool {
        if !self.is_ready() {
            return false;
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let others: Vec<u64> = membership.membership().voter_ids().filter(|id| *id != self.id).collect();
        let unreachable = self.table.unreachable_nodes();
        !others.is_empty()
            && others.iter().all(|id| unreachable.contains(&NodeId(*id)) && self.transport.is_refusing(*id))
    }

    /// Registers a session in this node's table only, as [`SessionRegistry::open`]
    /// would with a majority; `NodeUp` commits it once one is back.
    fn open_alone(&self, info: SessionInfo) -> OpenOutcome {
        tracing::warn!(jid = %info.jid, "no other member is running; registering the session on this node alone");
        self.own.lock().unwrap_or_else(|e| e.into_inner()).insert(info.sid, (info.clone(), 0));
        self.alone.lock().unwrap_or_else(|e| e.into_inner()).insert(info.sid);
        let outcome = self.table.open(info.clone());
        if !outcome.accepted {
            self.own.lock().unwrap_or_else(|e| e.into_inner()).remove(&info.sid);
            self.alone.lock().unwrap_or_else(|e| e.into_inner()).remove(&info.sid);
        }
        if let Some(loser) = &outcome.loser {
            self.on_session_lost(loser);
        }
        outcome
    }

    fn own_records(&self) -> Vec<SessionRecord> {
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(info, seq)| SessionRecord::from_info(info, *seq))
            .collect()
    }

    /// Commits `NodeUp` after start and after being marked down.
    async fn announce_task(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut metrics = self.raft.metrics();
        loop {
            // Wait to be a member with a known leader.
            loop {
                if *shutdown.borrow() {
                    return;
                }
                let has_leader = metrics.borrow().current_leader.is_some();
                if has_leader && self.is_member() {
                    break;
                }
                tokio::select! {
                    _ = metrics.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.changed() => return,
                }
            }
            let registered_alone: Vec<SessionId> =
                self.alone.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
            // With the domains it serves, when it serves any, in the same step:
            // a plain NodeUp would leave them out of the table until registered again.
            let own_domains: Vec<DomainRecord> =
                self.own_domains.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
            let cmd: Command = if own_domains.is_empty() {
                CommandV1::NodeUp { node: self.id, sessions: self.own_records() }.into()
            } else {
                CommandV2::NodeUpWithDomains { node: self.id, sessions: self.own_records(), domains: own_domains }
                    .into()
            };
            match self.propose(cmd).await {
                Ok(response) => {
                    self.ready.store(true, Ordering::Release);
                    {
                        let mut alone = self.alone.lock().unwrap_or_else(|e| e.into_inner());
                        for sid in &registered_alone {
                            alone.remove(sid);
                        }
                    }
                    tracing::info!(node = self.id, "registered with the cluster");
                    match response {
                        CommandResponse::DomainsTaken { taken } => {
                            for holder in taken {
                                tracing::warn!(domain = %holder.domain, holder = holder.node, "domain taken while this node was down");
                                let mine = self
                                    .own_domains
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get(&holder.domain)
                                    .cloned();
                                if let Some(mine) = mine {
                                    self.forget_own_domain(&mine);
                                }
                            }
                            // Registered meanwhile (after the list was read): registered again.
                            tokio::spawn(self.clone().reclaim_domains());
                        }
                        // NodeUp cleared this node's domains: register those it still serves again.
                        _ => {
                            tokio::spawn(self.clone().reclaim_domains());
                        }
                    }
                    tokio::select! {
                        _ = self.announce.notified() => {}
                        _ = shutdown.changed() => return,
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "NodeUp not committed yet");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    /// Registers again the domains this node serves, after `NodeUp`. One that
    /// another node took meanwhile stays with that node.
    async fn reclaim_domains(self: Arc<Self>) {
        let own: Vec<DomainRecord> =
            self.own_domains.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for rec in own {
            match self.propose(CommandV2::RegisterDomain(rec.clone()).into()).await {
                Ok(CommandResponse::DomainTaken { holder }) => {
                    tracing::warn!(domain = %rec.domain, holder = holder.node, "domain taken while this node was down");
                    self.forget_own_domain(&rec);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(domain = %rec.domain, error = %e, "could not register a domain again"),
            }
        }
    }

    fn forget_own_domain(&self, rec: &DomainRecord) {
        let mut own = self.own_domains.lock().unwrap_or_else(|e| e.into_inner());
        if own.get(&rec.domain).is_some_and(|r| r.id == rec.id) {
            own.remove(&rec.domain);
        }
    }

    /// Follows membership (peer addresses) and, on the leader, marks silent members down.
    async fn watch_task(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut metrics = self.raft.metrics();
        // Members, with when this node first knew of them.
        let mut known: HashMap<u64, Instant> = HashMap::new();
        let mut leading_since: Option<(u64, Instant)> = None;
        let mut proposed_down: HashMap<u64, Instant> = HashMap::new();
        let mut last_probe = Instant::now();
        let mut last_leader = None;
        loop {
            tokio::select! {
                _ = metrics.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => return,
            }
            let m = metrics.borrow().clone();
            if m.current_leader.is_some() && m.current_leader != last_leader {
                self.leader_changes.fetch_add(1, Ordering::Relaxed);
                last_leader = m.current_leader;
            }
            let members: BTreeMap<u64, MemberNode> =
                m.membership_config.membership().nodes().map(|(id, n)| (*id, n.clone())).collect();
            for (id, n) in &members {
                self.transport.set_address(*id, &n.addr);
            }
            self.table.set_members(members.keys().map(|id| NodeId(*id)));
            for gone in known.keys().filter(|id| !members.contains_key(id)).copied().collect::<Vec<_>>() {
                self.transport.remove_peer(gone);
                self.table.set_unreachable(NodeId(gone), false);
                known.remove(&gone);
            }
            // Sessions registered alone are committed once a majority is back.
            let pending_alone = !self.alone.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
            if pending_alone && m.current_leader.is_some() && !self.serving_alone() {
                tracing::info!("a majority is back; committing the sessions registered alone");
                self.announce.notify_one();
            }
            // Every node, leader or not, routes around a member it cannot hear
            // from, at once: what it queued for that member goes back to routing,
            // and the member's sessions are not offered to routing until it
            // answers again. Raft may not be able to commit its removal (a
            // cluster of two that lost one has no majority).
            for id in members.keys().filter(|id| **id != self.id).copied() {
                let known_since = *known.entry(id).or_insert_with(Instant::now);
                let silent = self.transport.last_seen(id).unwrap_or(known_since).elapsed() >= self.settings.down_after;
                if self.table.set_unreachable(NodeId(id), silent) {
                    if silent {
                        tracing::warn!(
                            node = id,
                            "no answer for {:?}; routing around its sessions",
                            self.settings.down_after
                        );
                        self.transport.peer_down(id);
                    } else {
                        tracing::info!(node = id, "answering again; its sessions are routed to again");
                    }
                }
            }
            // Followers hear from the leader only: probe every member that has
            // been quiet, so that every node knows who it can reach.
            if last_probe.elapsed() >= PROBE_EVERY {
                last_probe = Instant::now();
                for id in members.keys().filter(|id| **id != self.id).copied() {
                    let quiet = self.transport.last_seen(id).is_none_or(|t| t.elapsed() >= PROBE_EVERY);
                    if quiet {
                        let transport = self.transport.clone();
                        tokio::spawn(async move {
                            let _ = transport.request(id, Request::Ping, PROBE_EVERY).await;
                        });
                    }
                }
            }

            if m.state != ServerState::Leader {
                leading_since = None;
                continue;
            }
            let term = m.current_term;
            let since = match leading_since {
                Some((t, at)) if t == term => at,
                _ => {
                    let now = Instant::now();
                    leading_since = Some((term, now));
                    now
                }
            };
            let down: BTreeSet<u64> = self.sm.down_nodes().into_iter().collect();
            proposed_down.retain(|node, at| !down.contains(node) && at.elapsed() < Duration::from_secs(10));
            for id in members.keys().filter(|id| **id != self.id) {
                if down.contains(id) || proposed_down.contains_key(id) {
                    continue;
                }
                let last = self.transport.last_seen(*id).map_or(since, |t| t.max(since));
                if last.elapsed() >= self.settings.down_after {
                    tracing::warn!(node = id, "no answer for {:?}; marking it down", self.settings.down_after);
                    proposed_down.insert(*id, Instant::now());
                    self.propose_later(CommandV1::NodeDown { node: *id }.into());
                }
            }
        }
    }

    /// Closes table entries of this node that no live session backs.
    async fn reconcile_task(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                _ = shutdown.changed() => return,
            }
            if !self.is_ready() {
                continue;
            }
            // Sessions opened after this snapshot of `own` are not in the table snapshot below yet
            // either, or are in `own` already; both orders are taken under the same lock.
            let stale: Vec<SessionInfo> = {
                let own = self.own.lock().unwrap_or_else(|e| e.into_inner());
                self.table.sessions_of(NodeId(self.id)).into_iter().filter(|s| !own.contains_key(&s.sid)).collect()
            };
            for s in stale {
                tracing::info!(jid = %s.jid, "closing a registry entry no session backs");
                self.propose_later(
                    CommandV1::CloseSession { jid: s.jid.to_string(), node: self.id, sid: s.sid.0 }.into(),
                );
            }
            let stale: Vec<DomainRecord> = {
                let own = self.own_domains.lock().unwrap_or_else(|e| e.into_inner());
                self.domains
                    .domains_of(NodeId(self.id))
                    .into_iter()
                    .filter(|r| own.get(&r.domain).is_none_or(|o| o.id != r.id))
                    .collect()
            };
            for r in stale {
                tracing::info!(domain = %r.domain, "unregistering a domain no registration backs");
                self.propose_later(CommandV2::UnregisterDomain { domain: r.domain, node: self.id, id: r.id }.into());
            }
        }
    }

    // ----- membership operations -----

    /// Asks a member at `addr` to add this node (learner, then voter).
    pub async fn join(&self, addr: &str) -> Result<(), ClusterError> {
        if self.is_member() {
            let voters: Vec<u64> = self.raft.metrics().borrow().membership_config.voter_ids().collect();
            if voters.iter().any(|v| *v != self.id) || voters.is_empty() {
                return Err(ClusterError::Refused(format!("this node is already a member of a cluster: {voters:?}")));
            }
            return Err(ClusterError::Refused(
                "this node already started its own cluster (bootstrap); only a node with no cluster state can join"
                    .into(),
            ));
        }
        let req = Request::Join { node: self.id, addr: self.settings.advertise.clone() };
        match self.transport.request_addr(addr, req, Duration::from_secs(60)).await {
            Ok(_) => Ok(()),
            Err(TransportError::Remote(WireError::Failed(m))) => Err(ClusterError::Refused(m)),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes this node from the cluster. Its sessions must be closed by the caller first.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.remove(self.id).await?;
        self.stopping.store(true, Ordering::Release);
        self.ready.store(false, Ordering::Release);
        Ok(())
    }

    /// Removes a node (dead or alive) from the membership and the session table.
    pub async fn remove(&self, node: u64) -> Result<(), ClusterError> {
        self.forward_to_leader(Request::Remove { node }).await.map(|_| ())
    }

    async fn forward_to_leader(&self, req: Request) -> Result<Response, ClusterError> {
        let leader =
            self.raft.current_leader().await.ok_or_else(|| ClusterError::Refused("no leader is known".into()))?;
        if leader == self.id {
            return handle_request(self, self.id, req).await.map_err(|e| ClusterError::Refused(e.to_string()));
        }
        match self.transport.request(leader, req, Duration::from_secs(60)).await {
            Ok(r) => Ok(r),
            // The leader answered and said no: that is a refusal, not a network problem.
            Err(TransportError::Remote(WireError::Failed(m))) => Err(ClusterError::Refused(m)),
            Err(e) => Err(e.into()),
        }
    }

    async fn leader_join(&self, node: u64, addr: String) -> Result<Response, WireError> {
        let member = MemberNode { addr };
        self.transport.set_address(node, &member.addr);
        self.raft.add_learner(node, member, true).await.map_err(write_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node])), false)
            .await
            .map_err(write_error)?;
        tracing::info!(node, "node joined the cluster");
        Ok(Response::Done)
    }

    async fn leader_remove(&self, node: u64) -> Result<Response, WireError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let is_voter = membership.voter_ids().any(|v| v == node);
        if membership.membership().get_node(&node).is_none() {
            return Err(WireError::Failed(format!("node {node} is not a member")));
        }
        if is_voter {
            if membership.voter_ids().count() == 1 {
                return Err(WireError::Failed("the last voter cannot leave".into()));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false)
                .await
                .map_err(write_error)?;
        } else {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node])), false)
                .await
                .map_err(write_error)?;
        }
        tracing::info!(node, "node removed from the cluster");
        if node != self.id {
            // The membership change already dropped its sessions; this records it explicitly.
            let _ = self.raft.client_write(CommandV1::NodeRemoved { node }.into()).await;
        }
        Ok(Response::Done)
    }

    // ----- status -----

    /// How many times this node saw a new leader (the first one included).
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let down: BTreeSet<u64> = self.sm.down_nodes().into_iter().collect();
        let counts = self.table.count_by_node();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        let last_log = m.last_log_index;
        let mut members = Vec::new();
        for (id, node) in membership.nodes() {
            let last_seen = if *id == self.id { Some(Instant::now()) } else { self.transport.last_seen(*id) };
            let matched = replication.get(id).and_then(|l| l.map(|l| l.index));
            members.push(MemberStatus {
                id: *id,
                address: node.addr.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" },
                reachable: last_seen.is_some_and(|t| t.elapsed() < self.settings.down_after),
                down: down.contains(id),
                sessions: counts.get(&NodeId(*id)).copied().unwrap_or(0),
                last_seen_ms: last_seen.map(|t| t.elapsed().as_millis() as u64),
                matched_index: matched,
                lag: if m.state == ServerState::Leader {
                    Some(last_log.unwrap_or(0).saturating_sub(matched.unwrap_or(0)))
                } else {
                    None
                },
            });
        }
        // On the leader, the committed index is the highest one a majority of voters holds.
        let committed_index = if m.state == ServerState::Leader {
            let mut matched: Vec<u64> = voters
                .iter()
                .map(|v| {
                    if *v == self.id {
                        last_log.unwrap_or(0)
                    } else {
                        replication.get(v).and_then(|l| l.map(|l| l.index)).unwrap_or(0)
                    }
                })
                .collect();
            matched.sort_unstable_by(|a, b| b.cmp(a));
            matched.get(voters.len() / 2).copied()
        } else {
            self.log.committed().map(|l| l.index)
        };
        ClusterStatus {
            cluster: self.settings.name.clone(),
            node: self.id,
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_owned(),
            ready: self.is_ready(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: last_log,
            committed_index,
            applied_index: m.last_applied.map(|l| l.index),
            members,
            sessions: self.table.len(),
        }
    }
}

fn write_error<E: std::fmt::Display>(e: E) -> WireError {
    WireError::Failed(e.to_string())
}

#[async_trait::async_trait]
impl SessionRegistry for ClusterNode {
    fn table(&self) -> &Arc<SessionTable> {
        &self.table
    }

    fn node(&self) -> NodeId {
        NodeId(self.id)
    }

    fn set_kicker(&self, kicker: Kicker) {
        let _ = self.kicker.set(kicker);
    }

    async fn open(&self, info: SessionInfo) -> Result<OpenOutcome, RegistryError> {
        if !self.is_ready() || !self.is_member() {
            return Err(RegistryError::NotReady("not registered with the cluster".into()));
        }
        if self.serving_alone() {
            return Ok(self.open_alone(info));
        }
        if self.raft.metrics().borrow().current_leader.is_none() {
            return Err(RegistryError::NoQuorum("no leader is known".into()));
        }
        self.own.lock().unwrap_or_else(|e| e.into_inner()).insert(info.sid, (info.clone(), 0));
        let rec = SessionRecord::from_info(&info, 0);
        match self.propose(CommandV1::OpenSession(rec).into()).await {
            Ok(CommandResponse::Opened { accepted, loser }) => {
                if !accepted {
                    self.own.lock().unwrap_or_else(|e| e.into_inner()).remove(&info.sid);
                }
                Ok(OpenOutcome { accepted, loser: loser.and_then(|l| l.to_info()) })
            }
            Ok(CommandResponse::NodeIsDown) => {
                self.own.lock().unwrap_or_else(|e| e.into_inner()).remove(&info.sid);
                self.ready.store(false, Ordering::Release);
                self.announce.notify_one();
                Err(RegistryError::NotReady("this node is re-registering with the cluster".into()))
            }
            // Answers of other commands; `OpenSession` never gives them.
            Ok(
                CommandResponse::Done
                | CommandResponse::DomainRegistered
                | CommandResponse::DomainTaken { .. }
                | CommandResponse::DomainsTaken { .. },
            ) => Ok(OpenOutcome { accepted: true, loser: None }),
            Err(e) => {
                self.own.lock().unwrap_or_else(|e| e.into_inner()).remove(&info.sid);
                // The proposal may still commit later; make sure it does not linger.
                self.propose_later(
                    CommandV1::CloseSession { jid: info.jid.to_string(), node: self.id, sid: info.sid.0 }.into(),
                );
                Err(e)
            }
        }
    }

    fn close(&self, info: &SessionInfo) {
        self.own.lock().unwrap_or_else(|e| e.into_inner()).remove(&info.sid);
        if self.alone.lock().unwrap_or_else(|e| e.into_inner()).remove(&info.sid) {
            // Never committed: only this node's table has it.
            self.table.close(&info.jid, NodeId(self.id), info.sid);
        }
        self.propose_later(
            CommandV1::CloseSession { jid: info.jid.to_string(), node: self.id, sid: info.sid.0 }.into(),
        );
    }

    fn set_priority(&self, jid: &FullJid, sid: SessionId, priority: Option<i8>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = self.own.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&sid) {
            entry.0.priority = priority;
            entry.1 = seq;
        }
        // This node routes by the new priority at once; the others once it commits.
        self.table.set_priority(jid, NodeId(self.id), sid, priority, seq);
        self.propose_later(
            CommandV1::SetPriority { jid: jid.to_string(), node: self.id, sid: sid.0, priority, seq }.into(),
        );
    }
}

#[async_trait::async_trait]
impl DomainRegistry for ClusterNode {
    fn domains(&self) -> &Arc<DomainTable> {
        &self.domains
    }

    async fn claim_domain(&self, record: DomainRecord) -> Result<(), DomainError> {
        if !self.is_ready() || !self.is_member() {
            return Err(RegistryError::NotReady("not registered with the cluster".into()).into());
        }
        if record.node != self.id {
            return Err(
                RegistryError::NotReady(format!("node {} cannot register for node {}", self.id, record.node)).into()
            );
        }
        self.own_domains.lock().unwrap_or_else(|e| e.into_inner()).insert(record.domain.clone(), record.clone());
        match self.propose(CommandV2::RegisterDomain(record.clone()).into()).await {
            Ok(CommandResponse::DomainRegistered) => Ok(()),
            Ok(CommandResponse::DomainTaken { holder }) => {
                self.forget_own_domain(&record);
                Err(DomainError::Taken(holder))
            }
            Ok(CommandResponse::NodeIsDown) => {
                self.forget_own_domain(&record);
                self.ready.store(false, Ordering::Release);
                self.announce.notify_one();
                Err(RegistryError::NotReady("this node is re-registering with the cluster".into()).into())
            }
            Ok(other) => {
                self.forget_own_domain(&record);
                Err(RegistryError::NoQuorum(format!("unexpected answer to a registration: {other:?}")).into())
            }
            Err(e) => {
                self.forget_own_domain(&record);
                // The proposal may still commit later; make sure it does not linger.
                self.release_domain(&record);
                Err(e.into())
            }
        }
    }

    fn release_domain(&self, record: &DomainRecord) {
        self.forget_own_domain(record);
        self.propose_later(
            CommandV2::UnregisterDomain { domain: record.domain.clone(), node: record.node, id: record.id }.into(),
        );
    }
}

/// Serves requests from other nodes.
struct Handler(Weak<ClusterNode>);

impl RequestHandler for Handler {
    fn handle(&self, from: u64, request: Request) -> Reply<'_> {
        Box::pin(async move {
            let Some(node) = self.0.upgrade() else {
                return Err(WireError::Failed("node is shutting down".into()));
            };
            handle_request(&node, from, request).await
        })
    }
}

async fn handle_request(node: &ClusterNode, from: u64, request: Request) -> Result<Response, WireError> {
    match request {
        Request::AppendEntries(rpc) => {
            node.raft.append_entries(rpc).await.map(Response::AppendEntries).map_err(write_error)
        }
        Request::Vote(rpc) => node.raft.vote(rpc).await.map(Response::Vote).map_err(write_error),
        Request::InstallSnapshot(rpc) => node
            .raft
            .install_snapshot(rpc)
            .await
            .map(Response::InstallSnapshot)
            .map_err(|e| WireError::Snapshot(Box::new(e))),
        Request::ClientWrite(cmd) => match node.raft.client_write(cmd).await {
            Ok(resp) => Ok(Response::ClientWrite { index: resp.log_id.index, response: resp.data }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(WireError::NotLeader { leader: f.leader_id, addr: f.leader_node.map(|n| n.addr) })
            }
            Err(e) => Err(write_error(e)),
        },
        Request::Join { node: joining, addr } => {
            if node.raft.current_leader().await == Some(node.id) {
                node.leader_join(joining, addr).await
            } else {
                let leader =
                    node.raft.current_leader().await.ok_or_else(|| WireError::Failed("no leader is known".into()))?;
                node.transport
                    .request(leader, Request::Join { node: joining, addr }, Duration::from_secs(60))
                    .await
                    .map_err(write_error)
            }
        }
        Request::Remove { node: leaving } => {
            if node.raft.current_leader().await == Some(node.id) {
                node.leader_remove(leaving).await
            } else {
                let leader =
                    node.raft.current_leader().await.ok_or_else(|| WireError::Failed("no leader is known".into()))?;
                node.transport
                    .request(leader, Request::Remove { node: leaving }, Duration::from_secs(60))
                    .await
                    .map_err(write_error)
            }
        }
        Request::DeliverChecked(frame) => Ok(Response::Delivered(node.transport.deliver_checked(from, frame))),
        Request::Ping => Ok(Response::Done),
        Request::Kick { sid, reason } => Ok(Response::Delivered(node.transport.kick(from, sid, reason))),
        Request::Module { module, body } => node.transport.module_request(from, module, body).await,
    }
}
