//! Global distribution: one XMPP domain served by clusters in several data
//! centers.
//!
//! Every data center is one cluster with its own `local_host`; all of them
//! serve `global_host`. A stanza to a user of `global_host` who has no
//! session in this data center is looked up in the routing table
//! ([`table`], in Redis or Dynomite, behind a short-lived local cache) and
//! sent over a link ([`link`]) to the data center that serves the user.
//!
//! # Order and loss
//! Stanzas are queued per (sender, recipient) pair. A stanza leaves its
//! queue only when every earlier stanza of the pair is finished (delivered
//! here, or acknowledged by the remote data center) or is in flight on the
//! same link, so a pair's stanzas arrive in order even when the recipient
//! changes data center while some are in flight: the new ones wait until
//! the old ones have been delivered wherever the recipient went.
//!
//! A data center that receives a stanza for a user it does not serve looks
//! the user up again and forwards it (the hop TTL bounds this), or parks
//! the pair and retries with backoff until the user's location is known
//! ("bounce"). Once the budget is spent the stanza is handled as for a user
//! who is offline: offline storage or an error. It acknowledges the frame to
//! the sender only then, so the sender keeps later stanzas of the pair
//! behind it.
//!
//! # When Redis is unreachable
//! Traffic inside the data center never touches Redis. Lookups that miss the
//! cache park their pair and retry within the bounce budget; a node whose
//! data vanished from Redis (a restart without persistence) writes all of it
//! again within a second of Redis coming back.

pub mod link;
pub mod table;
#[cfg(test)]
mod tests;

use meerkat_xmpp::jid::Bare as _;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use meerkat_cluster::transport::{
    ClusterTls, Request as ClusterRequest, Response as ClusterResponse, StanzaFrame, StanzaTarget,
};
use meerkat_cluster::SessionId;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::jid::{parse_jid, FullJid, Jid};
use meerkat_xmpp::stanza::StanzaKind;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::{GlobalHook, Routed, Router};
use link::{GdStanza, Inbound, LinkConfig, LinkEvents, OutLink, Upstream};
use table::{Location, RoutingTable};

/// Settings of `[global_distribution]`.
#[derive(Clone)]
pub struct GlobalConfig {
    /// The domain clients use, served by every data center.
    pub global_host: String,
    /// This data center's name in the routing table.
    pub local_host: String,
    /// This node's id within its cluster.
    pub node_id: u64,
    /// `redis://host:port/db` (or `rediss://` for TLS) of the routing table.
    pub redis_url: String,
    /// TLS settings for a `rediss://` URL.
    pub redis_tls: Option<table::RedisTls>,
    /// Entries not refreshed for this long are ignored (and expire).
    pub expire_after: Duration,
    /// How often a node writes all its entries again.
    pub refresh_after: Duration,
    /// Addresses the links listen on.
    pub endpoints: Vec<SocketAddr>,
    /// `host:port` other data centers dial; the listen addresses when empty.
    pub advertised_endpoints: Vec<String>,
    pub connections_per_endpoint: usize,
    /// How often the list of data centers and their endpoints is read.
    pub hosts_refresh_interval: Duration,
    /// A link down this long whose endpoint is no longer advertised gives its
    /// stanzas back to be sent over another link.
    pub disabled_gc_interval: Duration,
    pub tls: Option<ClusterTls>,
    /// Links prove both ways that they know this secret (`meerkat_cluster::peer_auth`).
    pub secret: Option<meerkat_cluster::peer_auth::SharedSecret>,
    /// Hops a stanza may make between data centers.
    pub message_ttl: u8,
    pub cache_jid_lifetime: Duration,
    pub cache_max_jids: u64,
    pub bounce_enabled: bool,
    /// First retry delay; each retry doubles it, up to 2 s.
    pub bounce_resend_after: Duration,
    pub bounce_max_retries: u32,
    /// Frames queued plus unacknowledged on one link.
    pub link_window: usize,
    /// Stanzas waiting in pair queues on this node before new ones are refused.
    pub max_pending: usize,
}

impl GlobalConfig {
    /// Defaults as in MongooseIM's `mod_global_distrib`, for `global_host` and `local_host`.
    pub fn new(global_host: &str, local_host: &str) -> GlobalConfig {
        GlobalConfig {
            global_host: global_host.to_owned(),
            local_host: local_host.to_owned(),
            node_id: 1,
            redis_url: "redis://127.0.0.1:6379/0".to_owned(),
            redis_tls: None,
            expire_after: Duration::from_secs(120),
            refresh_after: Duration::from_secs(60),
            endpoints: vec![SocketAddr::from(([127, 0, 0, 1], 5555))],
            advertised_endpoints: Vec::new(),
            connections_per_endpoint: 1,
            hosts_refresh_interval: Duration::from_secs(3),
            disabled_gc_interval: Duration::from_secs(60),
            tls: None,
            secret: None,
            message_ttl: 4,
            cache_jid_lifetime: Duration::from_secs(5),
            cache_max_jids: 10_000,
            bounce_enabled: true,
            bounce_resend_after: Duration::from_millis(200),
            bounce_max_retries: 8,
            link_window: 4096,
            max_pending: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// Counters for the admin API and metrics.
#[derive(Debug, Default)]
pub struct GlobalStats {
    pub forwarded: AtomicU64,
    pub received: AtomicU64,
    pub delivered_here: AtomicU64,
    pub parked: AtomicU64,
    pub bounce_expired: AtomicU64,
    pub ttl_zero: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub lookups: AtomicU64,
    pub redis_errors: AtomicU64,
    pub learned: AtomicU64,
    pub link_full: AtomicU64,
    pub requeued: AtomicU64,
    pub refused: AtomicU64,
    pub full_refreshes: AtomicU64,
}

/// (sender, recipient, lane): stanzas that entered global routing here use
/// the lane "", stanzas from another data center the lane of that data
/// center, so a pair's forwarded stanzas never wait behind the same pair's
/// stanzas that this data center itself has in flight.
type PairKey = (String, String, String);

#[derive(Clone, Debug, PartialEq, Eq)]
enum EntryState {
    Waiting,
    /// On the link `(dc, addr, index)`.
    InFlight(LinkId),
}

type LinkId = (String, String, usize);

struct Entry {
    token: u64,
    routed: Routed,
    ttl: u8,
    origin_dc: String,
    origin_start: Option<i64>,
    upstream: Option<Upstream>,
    /// Park rather than treat as offline when the recipient is nowhere: it
    /// was sent here by a data center that believed the recipient is here.
    bounce: bool,
    attempts: u32,
    /// Seconds spent waiting for an unreachable Redis.
    redis_waits: u32,
    state: EntryState,
}

#[derive(Default)]
struct PairQueue {
    entries: VecDeque<Entry>,
    pumping: bool,
    lookup_running: bool,
    retry_scheduled: bool,
    /// A lookup's answer for the head's target, valid for the next pump.
    answer: Option<(String, Result<Option<Location>, ()>)>,
    /// The head's target must be read from Redis, not from the cache.
    fresh: bool,
}

#[derive(Default)]
struct State {
    pairs: HashMap<PairKey, PairQueue>,
    inflight: HashMap<u64, PairKey>,
    entries: usize,
}

enum Action {
    Local(Routed, Option<Upstream>),
    Send(Arc<OutLink>, u64, GdStanza),
    Lookup(String),
    Retry(Duration),
    RefreshEndpoints,
    /// Deliver on another node of this data center and wait for its answer.
    DeliverVia(u64, StanzaTarget, Routed, u64),
}

enum Decision {
    Local,
    Remote(String),
    NeedLookup(String),
    Park,
    /// The table could not be read.
    WaitRedis,
}

struct DcLinks {
    links: Vec<(LinkId, Arc<OutLink>)>,
    /// Links whose endpoint vanished, with when they were last seen connected.
    disabled: Vec<(LinkId, Arc<OutLink>, Instant)>,
}

enum TableOp {
    Publish(Vec<(String, i64)>),
    Unpublish(Vec<String>),
}

/// Global distribution on one node.
pub struct GlobalDistrib {
    cfg: GlobalConfig,
    router: Weak<Router>,
    table: RoutingTable,
    link_cfg: LinkConfig,
    inbound: Mutex<Option<Arc<Inbound>>>,
    dcs: Mutex<HashMap<String, DcLinks>>,
    state: Mutex<State>,
    cache: moka::sync::Cache<String, Location>,
    /// Recipients this node delivered to in this data center lately.
    seen_here: moka::sync::Cache<String, ()>,
    local: Mutex<HashMap<SessionId, (FullJid, i64)>>,
    ops: mpsc::Sender<TableOp>,
    redis_up: AtomicBool,
    /// Until then the table may still lack entries that every node is
    /// writing again (Redis came back, or lost its data), so "nowhere" is
    /// not believed.
    settling_until: Mutex<Option<Instant>>,
    last_redis_error: Mutex<Option<String>>,
    needs_full_refresh: AtomicBool,
    next_token: AtomicU64,
    shutdown: watch::Sender<bool>,
    writer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    me: Weak<GlobalDistrib>,
    pub stats: GlobalStats,
}

/// How long a stanza waits for an unreachable Redis before the bounce budget applies.
const MAX_REDIS_WAITS: u32 = 60;

/// How long after Redis comes back (or is found to have lost its data) an
/// answer "found nowhere" is not believed: every node checks Redis each
/// second and writes its entries again at once, so by then they are back.
const TABLE_SETTLE: Duration = Duration::from_secs(5);

/// How long after its last delivery here a recipient who is found nowhere is
/// taken to be moving between data centers.
const RECENTLY_HERE: Duration = Duration::from_secs(10);

fn backoff(cfg: &GlobalConfig, attempt: u32) -> Duration {
    let base = cfg.bounce_resend_after.max(Duration::from_millis(1));
    base.saturating_mul(1u32 << attempt.min(16)).min(Duration::from_secs(2).max(base))
}

fn key_of(routed: &Routed, lane: &str) -> PairKey {
    (routed.from.bare().to_string(), routed.to.bare().to_string(), lane.to_owned())
}

impl GlobalDistrib {
    /// Connects to Redis, listens on the endpoints, announces this data
    /// center and starts the background tasks. Fails when Redis or a listen
    /// address is not available at start.
    pub async fn start(cfg: GlobalConfig, router: &Arc<Router>) -> Result<Arc<GlobalDistrib>, GlobalError> {
        let conn = table::connect_tls(&cfg.redis_url, cfg.redis_tls.as_ref()).await?;
        let table =
            RoutingTable::new(conn, cfg.global_host.clone(), cfg.local_host.clone(), cfg.node_id, cfg.expire_after);
        let mut listeners = Vec::new();
        for addr in &cfg.endpoints {
            listeners.push(TcpListener::bind(addr).await.map_err(|e| GlobalError::Listen(*addr, e))?);
        }
        let mut cfg = cfg;
        if cfg.advertised_endpoints.is_empty() {
            cfg.advertised_endpoints =
                listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect();
        }
        let link_cfg = LinkConfig {
            global_host: cfg.global_host.clone(),
            local_host: cfg.local_host.clone(),
            tls: cfg.tls.clone(),
            secret: cfg.secret.clone(),
            window: cfg.link_window,
        };
        let (ops_tx, ops_rx) = mpsc::channel(65_536);
        let (shutdown, _) = watch::channel(false);
        let cache =
            moka::sync::Cache::builder().max_capacity(cfg.cache_max_jids).time_to_live(cfg.cache_jid_lifetime).build();
        let gd = Arc::new_cyclic(|me| GlobalDistrib {
            cfg: cfg.clone(),
            router: Arc::downgrade(router),
            table,
            link_cfg: link_cfg.clone(),
            inbound: Mutex::new(None),
            dcs: Mutex::new(HashMap::new()),
            state: Mutex::new(State::default()),
            cache,
            seen_here: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_max_jids.max(1000) * 10)
                .time_to_live(RECENTLY_HERE)
                .build(),
            local: Mutex::new(HashMap::new()),
            ops: ops_tx,
            redis_up: AtomicBool::new(true),
            settling_until: Mutex::new(None),
            last_redis_error: Mutex::new(None),
            needs_full_refresh: AtomicBool::new(false),
            next_token: AtomicU64::new(1),
            shutdown,
            writer_task: Mutex::new(None),
            me: me.clone(),
            stats: GlobalStats::default(),
        });
        let events: Weak<dyn LinkEvents> = {
            let w: Weak<GlobalDistrib> = Arc::downgrade(&gd);
            w
        };
        let inbound = Inbound::new(link_cfg, events);
        *gd.inbound.lock().unwrap_or_else(|e| e.into_inner()) = Some(inbound.clone());
        for l in listeners {
            tokio::spawn(inbound.clone().serve(l, gd.shutdown.subscribe()));
        }
        gd.table.announce(&gd.cfg.advertised_endpoints).await?;
        let writer = tokio::spawn(gd.clone().writer(ops_rx));
        *gd.writer_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
        tokio::spawn(gd.clone().keeper());
        tokio::spawn(gd.clone().discovery());
        router.set_global(gd.clone());
        tracing::info!(
            global_host = %gd.cfg.global_host,
            local_host = %gd.cfg.local_host,
            endpoints = ?gd.cfg.advertised_endpoints,
            "global distribution started"
        );
        Ok(gd)
    }

    pub fn config(&self) -> &GlobalConfig {
        &self.cfg
    }

    /// Stops the links and removes this node's entries from the table.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
        let writer = self.writer_task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer {
            let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
        }
        let jids: Vec<String> = {
            let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<String> = local.values().map(|(j, _)| j.to_string()).collect();
            v.extend(local.values().map(|(j, _)| j.bare().to_string()));
            v.extend(self.local_domains().into_iter().map(|(d, _)| d));
            v
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.table.unpublish(&jids)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.table.withdraw(&self.cfg.advertised_endpoints)).await;
        let links: Vec<Arc<OutLink>> = {
            let dcs = self.dcs.lock().unwrap_or_else(|e| e.into_inner());
            dcs.values().flat_map(|d| d.links.iter().map(|(_, l)| l.clone())).collect()
        };
        for l in links {
            l.stop();
        }
    }

    /// Writes every entry of this node again, at once.
    pub async fn refresh_now(&self) -> Result<usize, GlobalError> {
        self.full_refresh().await
    }

    fn router(&self) -> Option<Arc<Router>> {
        self.router.upgrade()
    }

    fn is_global(&self, jid: &Jid) -> bool {
        jid.domain().as_str() == self.cfg.global_host
    }

    // ----- the routing table -----

    fn local_jids(&self) -> Vec<(String, i64)> {
        let mut out = {
            let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            let mut bare: HashMap<String, i64> = HashMap::new();
            let mut out = Vec::with_capacity(local.len() * 2);
            for (jid, start) in local.values() {
                out.push((jid.to_string(), *start));
                let e = bare.entry(jid.bare().to_string()).or_insert(*start);
                *e = (*e).max(*start);
            }
            out.extend(bare);
            out
        };
        out.extend(self.local_domains());
        out
    }

    /// The service and component domains this node holds, with their
    /// registrations' ids as start times (MongooseIM's subdomain entries).
    fn local_domains(&self) -> Vec<(String, i64)> {
        let Some(router) = self.router() else { return Vec::new() };
        router
            .domains()
            .domains_of(router.node())
            .into_iter()
            .map(|r| (r.domain, i64::try_from(r.id).unwrap_or(i64::MAX)))
            .collect()
    }

    /// A stanza to a domain that is not a local host: a service or component
    /// domain, maybe served in another data center.
    fn is_domain_target(&self, router: &Router, to: &Jid) -> bool {
        !router.is_local_host(to.domain().as_str())
    }

    /// What the routing table is asked for `to`: the JID for a user, the
    /// domain for a service or component.
    fn lookup_key(&self, router: &Router, to: &Jid) -> String {
        if self.is_domain_target(router, to) {
            to.domain().to_string()
        } else {
            to.to_string()
        }
    }

    async fn full_refresh(&self) -> Result<usize, GlobalError> {
        self.stats.full_refreshes.fetch_add(1, Ordering::Relaxed);
        self.table.announce(&self.cfg.advertised_endpoints).await?;
        let jids = self.local_jids();
        for chunk in jids.chunks(500) {
            self.table.publish(chunk).await?;
        }
        Ok(jids.len())
    }

    fn redis_failed(&self, what: &str, e: &redis::RedisError) {
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.needs_full_refresh.store(true, Ordering::Relaxed);
        *self.last_redis_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        if self.redis_up.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %e, what, "the global routing table in Redis is unreachable; traffic across data centers waits or degrades");
        }
    }

    fn redis_ok(&self) {
        if !self.redis_up.swap(true, Ordering::Relaxed) {
            tracing::info!("the global routing table in Redis is reachable again");
            self.table_settling();
        }
    }

    /// The table is being written again by every node: for a while, a
    /// recipient found nowhere may only not be written back yet.
    fn table_settling(&self) {
        *self.settling_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + TABLE_SETTLE);
    }

    fn is_settling(&self) -> bool {
        let mut until = self.settling_until.lock().unwrap_or_else(|e| e.into_inner());
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Applies session changes to the table, in order, batching what is queued.
    async fn writer(self: Arc<Self>, mut rx: mpsc::Receiver<TableOp>) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let op = tokio::select! {
                op = rx.recv() => op,
                _ = shutdown.changed() => {
                    // Sessions that closed while the node drained: their entries go too.
                    while let Ok(op) = rx.try_recv() {
                        let _ = match &op {
                            TableOp::Publish(_) => Ok(()),
                            TableOp::Unpublish(j) => self.table.unpublish(j).await,
                        };
                    }
                    return;
                }
            };
            let Some(op) = op else { return };
            let mut batch = vec![op];
            while batch.len() < 500 {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            for op in batch {
                let r = match &op {
                    TableOp::Publish(j) => self.table.publish(j).await,
                    TableOp::Unpublish(j) => self.table.unpublish(j).await,
                };
                match r {
                    Ok(()) => self.redis_ok(),
                    Err(e) => self.redis_failed("session update", &e),
                }
            }
        }
    }

    /// Refreshes this node's data, and writes it again as soon as Redis
    /// lost it or comes back.
    async fn keeper(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut check = tokio::time::interval(Duration::from_secs(1));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_full = Instant::now();
        loop {
            tokio::select! {
                _ = check.tick() => {}
                _ = shutdown.changed() => return,
            }
            let due = last_full.elapsed() >= self.cfg.refresh_after;
            let lost = match self.table.still_present().await {
                Ok(present) => {
                    self.redis_ok();
                    if !present {
                        tracing::warn!("this node's entries are gone from Redis; writing them again");
                        self.table_settling();
                    }
                    !present
                }
                Err(e) => {
                    self.redis_failed("health check", &e);
                    continue;
                }
            };
            if due || lost || self.needs_full_refresh.swap(false, Ordering::Relaxed) {
                match self.full_refresh().await {
                    Ok(n) => {
                        last_full = Instant::now();
                        tracing::debug!(jids = n, "global routing entries refreshed");
                    }
                    Err(GlobalError::Redis(e)) => self.redis_failed("refresh", &e),
                    Err(e) => tracing::warn!(error = %e, "refresh failed"),
                }
            }
        }
    }

    /// Keeps links to every endpoint of every other data center.
    async fn discovery(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut tick = tokio::time::interval(self.cfg.hosts_refresh_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.refresh_links().await;
        }
    }

    async fn refresh_links(&self) {
        let dcs = match self.table.remote_dcs().await {
            Ok(d) => d,
            Err(e) => {
                self.redis_failed("data center list", &e);
                return;
            }
        };
        let mut found = HashMap::new();
        for dc in dcs {
            match self.table.endpoints(&dc).await {
                Ok(eps) => {
                    found.insert(dc, eps);
                }
                Err(e) => {
                    self.redis_failed("endpoint list", &e);
                    return;
                }
            }
        }
        let mut give_back = Vec::new();
        {
            let mut dcs = self.dcs.lock().unwrap_or_else(|e| e.into_inner());
            for (dc, eps) in &found {
                let entry =
                    dcs.entry(dc.clone()).or_insert_with(|| DcLinks { links: Vec::new(), disabled: Vec::new() });
                let mut wanted: Vec<LinkId> = Vec::new();
                for ep in eps {
                    for i in 0..self.cfg.connections_per_endpoint.max(1) {
                        wanted.push((dc.clone(), ep.addr.clone(), i));
                    }
                }
                // Links whose endpoint is no longer advertised stop taking new stanzas.
                let (keep, gone): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut entry.links).into_iter().partition(|(id, _)| wanted.contains(id));
                entry.links = keep;
                for (id, l) in gone {
                    tracing::info!(dc = %id.0, addr = %id.1, "endpoint no longer advertised; link disabled");
                    entry.disabled.push((id, l, Instant::now()));
                }
                for id in wanted {
                    if entry.links.iter().any(|(i, _)| *i == id) {
                        continue;
                    }
                    // An endpoint advertised again gets its old link (and its unacknowledged frames) back.
                    if let Some(pos) = entry.disabled.iter().position(|(i, _, _)| *i == id) {
                        let (i, l, _) = entry.disabled.remove(pos);
                        entry.links.push((i, l));
                        continue;
                    }
                    let events: Weak<dyn LinkEvents> = {
                        let w: Weak<GlobalDistrib> = self.me.clone();
                        w
                    };
                    let link = OutLink::start(self.link_cfg.clone(), dc.clone(), id.1.clone(), events);
                    tracing::info!(dc = %dc, addr = %id.1, "link to data center endpoint created");
                    entry.links.push((id, link));
                }
                entry.links.sort_by(|a, b| a.0.cmp(&b.0));
            }
            // Disabled links that stayed down give their stanzas back.
            for d in dcs.values_mut() {
                let gc = self.cfg.disabled_gc_interval;
                d.disabled.retain(|(_, l, since)| {
                    let connected = l.stats.connected.load(Ordering::Relaxed);
                    let idle = l.queued() == 0 && l.stats.unacked.load(Ordering::Relaxed) == 0;
                    if idle || (!connected && since.elapsed() > gc) {
                        give_back.push(l.clone());
                        false
                    } else {
                        true
                    }
                });
            }
        }
        for l in give_back {
            l.stop();
        }
    }

    fn pick_link(&self, dc: &str, sender: &str) -> Option<(LinkId, Arc<OutLink>)> {
        let dcs = self.dcs.lock().unwrap_or_else(|e| e.into_inner());
        let d = dcs.get(dc)?;
        // The connected links, when there are any: a link to an endpoint that
        // is down hands its frames back, and they must not go to it again.
        let live: Vec<&(LinkId, Arc<OutLink>)> =
            d.links.iter().filter(|(_, l)| l.stats.connected.load(Ordering::Relaxed)).collect();
        let pool: Vec<&(LinkId, Arc<OutLink>)> = if live.is_empty() { d.links.iter().collect() } else { live };
        if pool.is_empty() {
            return None;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        sender.hash(&mut h);
        let (id, l) = pool[(h.finish() % pool.len() as u64) as usize];
        Some((id.clone(), l.clone()))
    }

    // ----- routing -----

    /// Whether the recipient is served in this data center.
    fn present_here(&self, router: &Router, to: &Jid, strict: bool) -> bool {
        if self.is_domain_target(router, to) {
            return router.route_of(to.domain().as_str()) != crate::Route::Remote;
        }
        let live = |s: &meerkat_cluster::SessionInfo| s.node != router.node() || router.sink(s.sid).is_some();
        if let Ok(full) = to.try_as_full() {
            if router.sessions().get(full).is_some_and(|s| live(&s)) {
                return true;
            }
        }
        let bare = to.bare();
        let sessions = router.sessions().resources(&bare);
        if strict {
            // A stanza bounced here waits for an available resource rather than
            // going to offline storage while the user is between data centers.
            sessions.iter().any(|s| live(s) && s.priority.is_some_and(|p| p >= 0))
        } else {
            sessions.iter().any(live)
        }
    }

    /// For a message bounced here: the other node of this data center that
    /// serves the recipient, when this node does not.
    fn served_elsewhere(&self, router: &Router, to: &Jid) -> Option<(u64, StanzaTarget)> {
        router.transport()?;
        let me = router.node();
        if let Ok(full) = to.try_as_full() {
            if let Some(s) = router.sessions().get(full) {
                return (s.node != me).then(|| {
                    (s.node.0, StanzaTarget::Session { jid: s.jid.to_string(), sid: s.sid.0, if_available: false })
                });
            }
        }
        let sessions = router.sessions().resources(&to.bare());
        let available = |s: &&meerkat_cluster::SessionInfo| s.priority.is_some_and(|p| p >= 0);
        if sessions.iter().filter(available).any(|s| s.node == me && router.sink(s.sid).is_some()) {
            return None;
        }
        sessions
            .iter()
            .filter(available)
            .filter(|s| s.node != me)
            .max_by_key(|s| (s.priority, s.created_micros))
            .map(|s| (s.node.0, StanzaTarget::Account))
    }

    /// A confirmed delivery on another node failed: the entry waits and tries again.
    fn delivery_refused(&self, token: u64) {
        let (key, delay) = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(key) = st.inflight.remove(&token) else { return };
            let Some(pq) = st.pairs.get_mut(&key) else { return };
            let mut delay = None;
            for e in pq.entries.iter_mut().filter(|e| e.token == token) {
                e.state = EntryState::Waiting;
                delay = Some(backoff(&self.cfg, e.attempts));
                e.attempts += 1;
            }
            self.stats.parked.fetch_add(1, Ordering::Relaxed);
            if pq.retry_scheduled {
                return;
            }
            pq.retry_scheduled = true;
            (key, delay.unwrap_or(self.cfg.bounce_resend_after))
        };
        self.schedule_retry(key, delay, true);
    }

    fn mark_here(&self, to: &Jid) {
        let bare = to.bare().to_string();
        if !self.seen_here.contains_key(&bare) {
            self.seen_here.insert(bare, ());
        }
    }

    fn recently_here(&self, to: &Jid) -> bool {
        self.seen_here.contains_key(&to.bare().to_string())
    }

    fn cached(&self, jid: &str) -> Option<Location> {
        let hit = self.cache.get(jid);
        if hit.is_some() {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    fn decide(
        &self,
        router: &Router,
        answer: Option<&(String, Result<Option<Location>, ()>)>,
        fresh: bool,
        e: &Entry,
    ) -> Decision {
        let strict = (e.bounce || e.attempts > 0) && StanzaKind::of(&e.routed.stanza) == Some(StanzaKind::Message);
        if self.present_here(router, &e.routed.to, strict) {
            return Decision::Local;
        }
        if e.ttl == 0 {
            self.stats.ttl_zero.fetch_add(1, Ordering::Relaxed);
            return Decision::Local;
        }
        let target = self.lookup_key(router, &e.routed.to);
        let answer = match answer {
            Some((t, a)) if *t == target => Some(a.clone()),
            _ => None,
        };
        let loc = match answer {
            Some(Ok(loc)) => loc,
            Some(Err(())) => return Decision::WaitRedis,
            // A data center that sent the stanza here had the same kind of cache
            // this one has; a bounced stanza therefore reads the table itself.
            None if fresh || (e.bounce && e.attempts == 0) => return Decision::NeedLookup(target),
            None => match self.cached(&target) {
                Some(l) => Some(l),
                None => return Decision::NeedLookup(target),
            },
        };
        match loc {
            Some(l) if l.dc != self.cfg.local_host => Decision::Remote(l.dc),
            _ if e.bounce => Decision::Park,
            // Served here moments ago and now nowhere: most likely moving to
            // another data center, so the stanza waits for the new location
            // rather than going to offline storage.
            _ if self.recently_here(&e.routed.to) => Decision::Park,
            // Redis has just come back or lost its data: the recipient's data
            // center may not have written its entry again yet.
            None if self.is_settling() => Decision::WaitRedis,
            // Offline everywhere as far as the table knows: ordinary handling here.
            _ => Decision::Local,
        }
    }

    /// Plans what can happen to the pair's queue now. Called with the state locked.
    fn plan(&self, router: &Router, key: &PairKey, st: &mut State) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(pq) = st.pairs.get_mut(key) else { return actions };
        if pq.lookup_running || pq.retry_scheduled {
            return actions;
        }
        let mut i = 0;
        // The link every unfinished entry before `i` is in flight on, if all share one.
        let mut ahead: Option<Option<LinkId>> = None;
        while i < pq.entries.len() {
            if let EntryState::InFlight(id) = &pq.entries[i].state {
                ahead = match ahead {
                    None => Some(Some(id.clone())),
                    Some(Some(a)) if a == *id => Some(Some(a)),
                    _ => Some(None),
                };
                i += 1;
                continue;
            }
            let decision = self.decide(router, pq.answer.as_ref(), pq.fresh, &pq.entries[i]);
            match decision {
                Decision::Local => {
                    if ahead.is_some() {
                        break;
                    }
                    let e = &mut pq.entries[i];
                    // Past the budget, ordinary handling here (the other node stores it offline).
                    let within_budget = e.attempts < self.cfg.bounce_max_retries;
                    if e.bounce && within_budget && StanzaKind::of(&e.routed.stanza) == Some(StanzaKind::Message) {
                        if let Some((node, target)) = self.served_elsewhere(router, &e.routed.to) {
                            // Another node of this data center serves the user: it must
                            // confirm delivery before the sender's data center hears of it.
                            let id: LinkId = ("#node".to_owned(), node.to_string(), e.token as usize);
                            e.state = EntryState::InFlight(id.clone());
                            st.inflight.insert(e.token, key.clone());
                            ahead = Some(Some(id));
                            actions.push(Action::DeliverVia(node, target, e.routed.clone(), e.token));
                            i += 1;
                            continue;
                        }
                    }
                    let Some(e) = pq.entries.remove(i) else { break };
                    st.entries = st.entries.saturating_sub(1);
                    self.stats.delivered_here.fetch_add(1, Ordering::Relaxed);
                    pq.fresh = false;
                    actions.push(Action::Local(e.routed, e.upstream));
                }
                Decision::Remote(dc) => {
                    let sender = key.0.clone();
                    let Some((id, link)) = self.pick_link(&dc, &sender) else {
                        // No link to that data center yet: read its endpoints and retry.
                        let e = &mut pq.entries[i];
                        e.attempts += 1;
                        if e.attempts > self.cfg.bounce_max_retries.max(1) * 2 {
                            if ahead.is_some() {
                                break;
                            }
                            tracing::warn!(%dc, to = %e.routed.to, "no link to the data center; handling the stanza here");
                            let Some(e) = pq.entries.remove(i) else { break };
                            st.entries = st.entries.saturating_sub(1);
                            self.stats.bounce_expired.fetch_add(1, Ordering::Relaxed);
                            actions.push(Action::Local(e.routed, e.upstream));
                            continue;
                        }
                        let delay = backoff(&self.cfg, e.attempts);
                        pq.retry_scheduled = true;
                        actions.push(Action::RefreshEndpoints);
                        actions.push(Action::Retry(delay));
                        break;
                    };
                    if matches!(&ahead, Some(a) if a.as_ref() != Some(&id)) {
                        break;
                    }
                    let e = &mut pq.entries[i];
                    let stanza = GdStanza {
                        seq: 0,
                        ttl: e.ttl.saturating_sub(1),
                        origin_dc: e.origin_dc.clone(),
                        origin_start_micros: e.origin_start,
                        from: e.routed.from.to_string(),
                        to: e.routed.to.to_string(),
                        stanza: e.routed.stanza.clone(),
                    };
                    e.state = EntryState::InFlight(id.clone());
                    st.inflight.insert(e.token, key.clone());
                    ahead = Some(Some(id));
                    pq.fresh = false;
                    self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    actions.push(Action::Send(link, e.token, stanza));
                    i += 1;
                }
                Decision::NeedLookup(target) => {
                    pq.lookup_running = true;
                    actions.push(Action::Lookup(target));
                    break;
                }
                Decision::WaitRedis if pq.entries[i].redis_waits < MAX_REDIS_WAITS => {
                    // Redis is unreachable: wait for it at a steady pace, without
                    // spending the bounce budget, up to MAX_REDIS_WAITS seconds.
                    if ahead.is_some() {
                        break;
                    }
                    pq.entries[i].redis_waits += 1;
                    self.stats.parked.fetch_add(1, Ordering::Relaxed);
                    pq.retry_scheduled = true;
                    pq.answer = None;
                    actions.push(Action::Retry(Duration::from_secs(1)));
                    break;
                }
                Decision::Park | Decision::WaitRedis => {
                    if ahead.is_some() {
                        // Wait for the entries in flight; their outcome may tell more.
                        break;
                    }
                    let e = &mut pq.entries[i];
                    if self.cfg.bounce_enabled && e.attempts < self.cfg.bounce_max_retries {
                        let delay = backoff(&self.cfg, e.attempts);
                        e.attempts += 1;
                        self.stats.parked.fetch_add(1, Ordering::Relaxed);
                        pq.retry_scheduled = true;
                        pq.answer = None;
                        actions.push(Action::Retry(delay));
                        break;
                    }
                    if e.bounce || e.attempts > 0 {
                        self.stats.bounce_expired.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(to = %e.routed.to, "recipient not found in any data center; handling the stanza here");
                    }
                    let Some(e) = pq.entries.remove(i) else { break };
                    st.entries = st.entries.saturating_sub(1);
                    pq.answer = None;
                    pq.fresh = false;
                    actions.push(Action::Local(e.routed, e.upstream));
                }
            }
        }
        // A lookup's answer serves one pass; later ones read the cache (or Redis again).
        if !pq.lookup_running {
            pq.answer = None;
        }
        actions
    }

    fn pump(&self, key: &PairKey) {
        let Some(router) = self.router() else { return };
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(pq) = st.pairs.get_mut(key) else { return };
            if pq.pumping {
                return;
            }
            pq.pumping = true;
        }
        loop {
            let actions = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let actions = self.plan(&router, key, &mut st);
                if actions.is_empty() {
                    let remove = match st.pairs.get_mut(key) {
                        Some(pq) => {
                            pq.pumping = false;
                            pq.entries.is_empty() && !pq.lookup_running && !pq.retry_scheduled
                        }
                        None => false,
                    };
                    if remove {
                        st.pairs.remove(key);
                    }
                    return;
                }
                actions
            };
            for a in actions {
                self.execute(&router, key, a);
            }
        }
    }

    fn execute(&self, router: &Router, key: &PairKey, action: Action) {
        match action {
            Action::Local(routed, upstream) => {
                router.route_here(routed);
                if let Some(u) = upstream {
                    u.done();
                }
            }
            Action::Send(link, token, stanza) => {
                if link.try_send(token, stanza).is_err() {
                    // The link is full: the entry waits and tries again.
                    self.stats.link_full.fetch_add(1, Ordering::Relaxed);
                    let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.inflight.remove(&token);
                    if let Some(pq) = st.pairs.get_mut(key) {
                        for e in pq.entries.iter_mut() {
                            if e.token == token {
                                e.state = EntryState::Waiting;
                            }
                        }
                        if !pq.retry_scheduled {
                            pq.retry_scheduled = true;
                            drop(st);
                            self.schedule_retry(key.clone(), Duration::from_millis(50), false);
                        }
                    }
                }
            }
            Action::Lookup(target) => {
                let Some(me) = self.me.upgrade() else { return };
                let key = key.clone();
                tokio::spawn(async move { me.lookup(key, target).await });
            }
            Action::Retry(delay) => self.schedule_retry(key.clone(), delay, true),
            Action::DeliverVia(node, target, routed, token) => {
                let (Some(me), Some(transport)) = (self.me.upgrade(), router.transport().cloned()) else { return };
                let frame = StanzaFrame {
                    target,
                    from: routed.from.to_string(),
                    to: routed.to.to_string(),
                    stanza: routed.stanza,
                };
                tokio::spawn(async move {
                    let answer =
                        transport.request(node, ClusterRequest::DeliverChecked(frame), Duration::from_secs(2)).await;
                    match answer {
                        Ok(ClusterResponse::Delivered(true)) => me.acked(token),
                        _ => me.delivery_refused(token),
                    }
                });
            }
            Action::RefreshEndpoints => {
                if let Some(me) = self.me.upgrade() {
                    tokio::spawn(async move { me.refresh_links().await });
                }
            }
        }
    }

    fn schedule_retry(&self, key: PairKey, delay: Duration, fresh: bool) {
        let Some(me) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            {
                let mut st = me.state.lock().unwrap_or_else(|e| e.into_inner());
                let Some(pq) = st.pairs.get_mut(&key) else { return };
                pq.retry_scheduled = false;
                if fresh {
                    pq.fresh = true;
                    pq.answer = None;
                }
            }
            me.pump(&key);
        });
    }

    async fn lookup(&self, key: PairKey, target: String) {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let result = match self.table.lookup(&target).await {
            Ok(Some(l)) => Ok(Some(l)),
            Ok(None) => {
                // A full JID the table does not know: the account's newest location.
                match parse_jid(&target) {
                    Ok(j) if j.try_as_full().is_ok() => self.table.lookup(&j.bare().to_string()).await,
                    _ => Ok(None),
                }
            }
            Err(e) => Err(e),
        };
        let answer = match result {
            Ok(loc) => {
                self.redis_ok();
                if let Some(l) = &loc {
                    self.cache.insert(target.clone(), l.clone());
                }
                Ok(loc)
            }
            Err(e) => {
                self.redis_failed("lookup", &e);
                Err(())
            }
        };
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(pq) = st.pairs.get_mut(&key) else { return };
            pq.lookup_running = false;
            pq.fresh = false;
            pq.answer = Some((target, answer));
        }
        self.pump(&key);
    }

    #[allow(clippy::result_large_err)]
    fn enqueue(&self, key: PairKey, entry: Entry) -> Result<(), Entry> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.entries >= self.cfg.max_pending {
            return Err(entry);
        }
        st.entries += 1;
        st.pairs.entry(key).or_default().entries.push_back(entry);
        Ok(())
    }

    fn origin_start(&self, router: &Router, from: &Jid) -> Option<i64> {
        let full = from.try_as_full().ok()?;
        router.sessions().get(full).map(|s| s.created_micros)
    }

    /// Remembers where a sender from another data center is, so that a reply
    /// does not wait for the table to replicate.
    fn learn(&self, from: &str, dc: &str, start: Option<i64>) {
        let Some(start) = start else { return };
        let Ok(jid) = parse_jid(from) else { return };
        let loc = Location { dc: dc.to_owned(), start_micros: start };
        for k in [jid.to_string(), jid.bare().to_string()] {
            let newer = self.cache.get(&k).is_none_or(|c| c.start_micros <= start);
            if newer {
                self.cache.insert(k, loc.clone());
                self.stats.learned.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What the admin API shows.
    pub fn status(&self) -> GlobalStatus {
        let dcs = self.dcs.lock().unwrap_or_else(|e| e.into_inner());
        let mut data_centers: Vec<DcStatus> = dcs
            .iter()
            .map(|(dc, d)| {
                let link_status = |l: &Arc<OutLink>, disabled: bool| LinkStatus {
                    endpoint: l.addr.clone(),
                    connected: l.stats.connected.load(Ordering::Relaxed),
                    disabled,
                    queued: l.queued(),
                    unacked: l.stats.unacked.load(Ordering::Relaxed),
                    sent: l.stats.sent.load(Ordering::Relaxed),
                    acked: l.stats.acked.load(Ordering::Relaxed),
                    resent: l.stats.resent.load(Ordering::Relaxed),
                    connects: l.stats.connects.load(Ordering::Relaxed),
                    failures: l.stats.failures.load(Ordering::Relaxed),
                    handed_back: l.stats.handed_back.load(Ordering::Relaxed),
                };
                let mut links: Vec<LinkStatus> = d.links.iter().map(|(_, l)| link_status(l, false)).collect();
                links.extend(d.disabled.iter().map(|(_, l, _)| link_status(l, true)));
                let mut endpoints: Vec<String> = d.links.iter().map(|(id, _)| id.1.clone()).collect();
                endpoints.dedup();
                DcStatus { local_host: dc.clone(), endpoints, links }
            })
            .collect();
        drop(dcs);
        data_centers.sort_by(|a, b| a.local_host.cmp(&b.local_host));
        let (pairs, pending, in_flight, parked) = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let parked = st.pairs.values().filter(|p| p.retry_scheduled).count();
            (st.pairs.len(), st.entries, st.inflight.len(), parked)
        };
        let s = &self.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let inbound = self.inbound.lock().unwrap_or_else(|e| e.into_inner()).clone();
        GlobalStatus {
            global_host: self.cfg.global_host.clone(),
            local_host: self.cfg.local_host.clone(),
            advertised_endpoints: self.cfg.advertised_endpoints.clone(),
            redis: RedisStatus {
                reachable: self.redis_up.load(Ordering::Relaxed),
                last_error: self.last_redis_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                errors: load(&s.redis_errors),
                full_refreshes: load(&s.full_refreshes),
            },
            data_centers,
            queues: QueueStatus { pairs, pending, in_flight, parked_pairs: parked },
            counters: Counters {
                forwarded: load(&s.forwarded),
                received: inbound.as_ref().map(|i| i.stats.received.load(Ordering::Relaxed)).unwrap_or(0),
                duplicates: inbound.as_ref().map(|i| i.stats.duplicates.load(Ordering::Relaxed)).unwrap_or(0),
                links_refused: inbound.as_ref().map(|i| i.stats.refused.load(Ordering::Relaxed)).unwrap_or(0),
                link_bad_frames: inbound.as_ref().map(|i| i.stats.bad_frames.load(Ordering::Relaxed)).unwrap_or(0),
                delivered_here: load(&s.delivered_here),
                bounces: load(&s.parked),
                bounce_expired: load(&s.bounce_expired),
                resends: self.resends(),
                ttl_zero: load(&s.ttl_zero),
                cache_hits: load(&s.cache_hits),
                cache_misses: load(&s.cache_misses),
                lookups: load(&s.lookups),
                learned: load(&s.learned),
                link_full: load(&s.link_full),
                refused: load(&s.refused),
                requeued: load(&s.requeued),
            },
            local_sessions: self.local.lock().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }

    fn resends(&self) -> u64 {
        let dcs = self.dcs.lock().unwrap_or_else(|e| e.into_inner());
        dcs.values()
            .flat_map(|d| d.links.iter().map(|(_, l)| l).chain(d.disabled.iter().map(|(_, l, _)| l)))
            .map(|l| l.stats.resent.load(Ordering::Relaxed))
            .sum()
    }
}

impl GlobalHook for GlobalDistrib {
    fn intercept(&self, router: &Router, routed: Routed) -> Option<Routed> {
        let domain_target = self.is_domain_target(router, &routed.to);
        if !domain_target && (!self.is_global(&routed.to) || routed.to.node().is_none()) {
            return Some(routed);
        }
        let key = key_of(&routed, "");
        {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.pairs.contains_key(&key) && self.present_here(router, &routed.to, false) {
                // The common case inside one data center: nothing of the pair is pending.
                drop(st);
                self.mark_here(&routed.to);
                return Some(routed);
            }
        }
        let entry = Entry {
            token: self.next_token.fetch_add(1, Ordering::Relaxed),
            origin_start: self.origin_start(router, &routed.from),
            routed,
            ttl: self.cfg.message_ttl,
            origin_dc: self.cfg.local_host.clone(),
            upstream: None,
            bounce: false,
            attempts: 0,
            redis_waits: 0,
            state: EntryState::Waiting,
        };
        match self.enqueue(key.clone(), entry) {
            Ok(()) => {
                self.pump(&key);
                None
            }
            Err(e) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("global routing queues are full; answering resource-constraint");
                router.bounce(e.routed, meerkat_xmpp::error::StanzaErrorCondition::ResourceConstraint);
                None
            }
        }
    }

    fn rerouted(&self, router: &Router, routed: Routed) {
        // A stanza a closing session could not deliver: the user may be
        // moving to another data center, so it waits for the new location.
        if !self.is_global(&routed.to) {
            router.route(routed);
            return;
        }
        let key = key_of(&routed, "");
        let entry = Entry {
            token: self.next_token.fetch_add(1, Ordering::Relaxed),
            origin_start: None,
            origin_dc: self.cfg.local_host.clone(),
            routed,
            ttl: self.cfg.message_ttl,
            upstream: None,
            bounce: true,
            attempts: 0,
            redis_waits: 0,
            state: EntryState::Waiting,
        };
        match self.enqueue(key.clone(), entry) {
            Ok(()) => self.pump(&key),
            Err(e) => router.route_here(e.routed),
        }
    }

    fn session_up(&self, router: &Router, info: &meerkat_cluster::SessionInfo) {
        let sid = info.sid;
        let _ = router;
        if info.jid.domain().as_str() != self.cfg.global_host {
            return;
        }
        let bare = info.jid.bare().to_string();
        let newest = {
            let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            local.insert(sid, (info.jid.clone(), info.created_micros));
            local.values().filter(|(j, _)| j.bare().to_string() == bare).map(|(_, s)| *s).max()
        };
        let start = newest.unwrap_or(info.created_micros);
        let op = TableOp::Publish(vec![(info.jid.to_string(), info.created_micros), (bare, start)]);
        if self.ops.try_send(op).is_err() {
            self.needs_full_refresh.store(true, Ordering::Relaxed);
        }
    }

    fn domain_up(&self, domain: &str, id: u64) {
        let op = TableOp::Publish(vec![(domain.to_owned(), i64::try_from(id).unwrap_or(i64::MAX))]);
        if self.ops.try_send(op).is_err() {
            self.needs_full_refresh.store(true, Ordering::Relaxed);
        }
    }

    fn domain_down(&self, domain: &str) {
        if self.ops.try_send(TableOp::Unpublish(vec![domain.to_owned()])).is_err() {
            self.needs_full_refresh.store(true, Ordering::Relaxed);
        }
    }

    fn session_down(&self, sid: SessionId) {
        let (jid, remaining) = {
            let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            let Some((jid, _)) = local.remove(&sid) else { return };
            let bare = jid.bare();
            let remaining = local.values().filter(|(j, _)| j.bare() == bare).map(|(_, s)| *s).max();
            (jid, remaining)
        };
        let bare = jid.bare().to_string();
        let ok = self.ops.try_send(TableOp::Unpublish(vec![jid.to_string()])).is_ok()
            && match remaining {
                Some(start) => self.ops.try_send(TableOp::Publish(vec![(bare, start)])).is_ok(),
                None => self.ops.try_send(TableOp::Unpublish(vec![bare])).is_ok(),
            };
        if !ok {
            self.needs_full_refresh.store(true, Ordering::Relaxed);
        }
    }
}

impl LinkEvents for GlobalDistrib {
    fn acked(&self, token: u64) {
        let (key, upstream) = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(key) = st.inflight.remove(&token) else { return };
            let mut upstream = None;
            let mut removed = false;
            if let Some(pq) = st.pairs.get_mut(&key) {
                if let Some(pos) = pq.entries.iter().position(|e| e.token == token) {
                    if let Some(e) = pq.entries.remove(pos) {
                        upstream = e.upstream;
                        removed = true;
                    }
                }
            }
            if removed {
                st.entries = st.entries.saturating_sub(1);
            }
            (key, upstream)
        };
        if let Some(u) = upstream {
            u.done();
        }
        self.pump(&key);
    }

    fn failed(&self, tokens: Vec<u64>) {
        let mut keys = Vec::new();
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for t in tokens {
                let Some(key) = st.inflight.remove(&t) else { continue };
                if let Some(pq) = st.pairs.get_mut(&key) {
                    for e in pq.entries.iter_mut().filter(|e| e.token == t) {
                        e.state = EntryState::Waiting;
                        self.stats.requeued.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        for k in keys {
            self.pump(&k);
        }
    }

    fn incoming(&self, from_dc: &str, upstream: Upstream, stanza: GdStanza) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let Some(router) = self.router() else { return };
        let (Ok(from), Ok(to)) = (parse_jid(&stanza.from), parse_jid(&stanza.to)) else {
            tracing::warn!(%from_dc, "dropping a stanza with unparsable addresses from another data center");
            upstream.done();
            return;
        };
        self.learn(&stanza.from, &stanza.origin_dc, stanza.origin_start_micros);
        let routed = Routed { from, to, stanza: stanza.stanza };
        if !self.is_global(&routed.to) || routed.to.node().is_none() {
            router.route_here(routed);
            upstream.done();
            return;
        }
        let key = key_of(&routed, from_dc);
        let entry = Entry {
            token: self.next_token.fetch_add(1, Ordering::Relaxed),
            routed,
            ttl: stanza.ttl,
            origin_dc: stanza.origin_dc,
            origin_start: stanza.origin_start_micros,
            upstream: Some(upstream),
            bounce: true,
            attempts: 0,
            redis_waits: 0,
            state: EntryState::Waiting,
        };
        match self.enqueue(key.clone(), entry) {
            Ok(()) => self.pump(&key),
            Err(e) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                router.route_here(e.routed);
                if let Some(u) = e.upstream {
                    u.done();
                }
            }
        }
    }
}

/// `GET /api/global`.
#[derive(Clone, Debug, Serialize)]
pub struct GlobalStatus {
    pub global_host: String,
    pub local_host: String,
    pub advertised_endpoints: Vec<String>,
    pub redis: RedisStatus,
    pub data_centers: Vec<DcStatus>,
    pub queues: QueueStatus,
    pub counters: Counters,
    pub local_sessions: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct RedisStatus {
    pub reachable: bool,
    pub last_error: Option<String>,
    pub errors: u64,
    pub full_refreshes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DcStatus {
    pub local_host: String,
    pub endpoints: Vec<String>,
    pub links: Vec<LinkStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinkStatus {
    pub endpoint: String,
    pub connected: bool,
    pub disabled: bool,
    pub queued: u64,
    pub unacked: u64,
    pub sent: u64,
    pub acked: u64,
    pub resent: u64,
    pub connects: u64,
    pub failures: u64,
    /// Frames given to another endpoint of the data center because this one was unreachable.
    pub handed_back: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QueueStatus {
    /// Sender/recipient pairs with stanzas waiting or in flight.
    pub pairs: usize,
    pub pending: usize,
    pub in_flight: usize,
    /// Pairs waiting for a bounce retry.
    pub parked_pairs: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Counters {
    pub forwarded: u64,
    pub received: u64,
    pub duplicates: u64,
    /// Incoming link connections refused: a failed TLS handshake or a Hello
    /// for another global host or data center, or more than the links allowed at once.
    pub links_refused: u64,
    /// Incoming link connections closed for a frame that did not decode or was too big.
    pub link_bad_frames: u64,
    pub delivered_here: u64,
    pub bounces: u64,
    pub bounce_expired: u64,
    pub resends: u64,
    pub ttl_zero: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub lookups: u64,
    pub learned: u64,
    pub link_full: u64,
    pub refused: u64,
    pub requeued: u64,
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<GlobalDistrib>();
    let _ = Element::new("x", "y");
}
