//! One actor per PubSub node, and the node's table of them.
//!
//! Every request to a node goes through its actor, one at a time and in
//! arrival order ([`AtomicResponse`]: the next request waits for the
//! previous one's SQL). The actor holds no copy of the node: a new actor
//! reads SQL, so stopping one loses nothing. [`Nodes`] starts actors on
//! demand, keeps at most `max_resident`, stops idle ones after
//! `idle_timeout` (a sweep) and makes room by stopping the least recently
//! used idle one. Each mailbox holds `mailbox` requests; a requester waits
//! while it is full.
//!
//! Notifications leave the actor: each actor hands them, in publication
//! order, to its own fan-out task through a bounded queue, and the task
//! routes them while holding a permit of the module's fan-out bound. When
//! the queue is full (the router or the permits push back), the actor
//! waits, and with it the publishers behind it in its mailbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use meerkat_routing::pressure;
use meerkat_routing::{Routed, Router};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::jid::parse_jid;
use meerkat_xmpp::ns;
use tokio::sync::{mpsc, Semaphore};

use super::config::NodeConfig;
use super::engine::{self, Done, Env, Notification, PsError, Request};
use meerkat_storage::Storage;

/// Notifications queued for one node's fan-out.
const FANOUT_QUEUE: usize = 64;

/// What the actors share.
pub struct Shared {
    pub storage: Arc<Storage>,
    pub router: Arc<Router>,
    pub max_items_per_node: u64,
    pub max_pep_nodes: usize,
    pub max_nodes_per_account: usize,
    pub default_config: NodeConfig,
    /// Domains whose accounts may create nodes on the service domains.
    pub create_domains: Option<Vec<String>>,
    /// Notifications being routed, at most, over all nodes.
    pub fanout: Arc<Semaphore>,
    /// What is known of remote contacts' caps, for PEP events to them.
    pub remote: Arc<super::remote::Remote>,
    pub ctx: crate::ext::ModuleCtx,
}

impl Shared {
    fn may_create(&self, bare: &str) -> bool {
        match &self.create_domains {
            None => true,
            Some(domains) => {
                let domain = bare.rsplit('@').next().unwrap_or(bare);
                domains.iter().any(|d| d == domain)
            }
        }
    }
}

/// The actor of one node.
struct NodeActor {
    shared: Arc<Shared>,
    mailbox: usize,
    fanout: mpsc::Sender<Notification>,
}

impl Actor for NodeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

struct Run(Request);

impl Message for Run {
    type Result = Result<Option<String>, PsError>;
}

impl Handler<Run> for NodeActor {
    type Result = AtomicResponse<Self, Result<Option<String>, PsError>>;

    fn handle(&mut self, Run(req): Run, _ctx: &mut Context<Self>) -> Self::Result {
        let (shared, fanout) = (self.shared.clone(), self.fanout.clone());
        AtomicResponse::new(Box::pin(
            async move {
                let may = |bare: &str| shared.may_create(bare);
                let env = Env {
                    storage: &shared.storage,
                    max_items_per_node: shared.max_items_per_node,
                    max_pep_nodes: shared.max_pep_nodes,
                    max_nodes_per_account: shared.max_nodes_per_account,
                    default_config: &shared.default_config,
                    may_create: &may,
                    hosts: shared.router.hosts(),
                };
                let Done { payload, notify, messages } = engine::run(&env, &req).await?;
                for n in notify {
                    // Waits while the fan-out is behind: back-pressure to the publishers.
                    let _ = fanout.send(n).await;
                }
                for (to, child) in messages {
                    send_message(&shared.router, &req.service, &to, &child);
                }
                Ok(payload)
            }
            .into_actor(self),
        ))
    }
}

/// Routes a node's notifications, in order, each under a fan-out permit.
/// When a recipient's queue (a session's mailbox, a link to another node)
/// went over its bound with one, the next waits until it drains
/// ([`meerkat_routing::pressure`]): this queue then fills, the node's actor
/// waits on it, and so do the node's publishers.
async fn fan_out(service: String, shared: Arc<Shared>, mut rx: mpsc::Receiver<Notification>) {
    while let Some(n) = rx.recv().await {
        let Ok(permit) = shared.fanout.clone().acquire_owned().await else { return };
        // Routing is synchronous: what the queues report is this notification's.
        let _ = pressure::take();
        send_notification(&shared.router, &service, &n);
        if !n.remote.is_empty() {
            super::notify_remote(&shared.ctx, &shared.remote, &service, &n);
        }
        let pressed = pressure::take();
        drop(permit);
        if let Some(p) = pressed {
            FANOUT_WAITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !p.relieved(PRESSURE_WAIT).await {
                tracing::debug!(%service, "a recipient stayed over its bound; fanning out on");
            }
        }
    }
}

/// How long a fan-out waits at most for a recipient's queue to drain (one
/// that stalls must not stall the node for good).
const PRESSURE_WAIT: Duration = Duration::from_secs(5);

/// Times a fan-out waited for its recipients' queues (`/metrics`).
pub static FANOUT_WAITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Routes one notification: to each subscriber with its subscription id
/// (SHIM header, XEP-0060 §12.3), and to each interested account's bare
/// JID as a headline its sessions keep only where the client asked for the
/// node (`+notify`, XEP-0163).
pub fn send_notification(router: &Router, service: &str, n: &Notification) {
    let Some(event) = crate::ext::util::parse_stored(&n.event) else { return };
    let Ok(from) = parse_jid(service) else { return };
    let message = |to: &str, subid: Option<&str>| -> Option<Routed> {
        let to_jid = parse_jid(to).ok()?;
        let mut m = Element::new("message", ns::CLIENT)
            .with_attr("from", service.to_owned())
            .with_attr("to", to.to_owned())
            .with_attr("type", "headline")
            .with_attr("id", engine::new_subid());
        m.push_child(event.clone());
        if let Some(subid) = subid {
            let mut header = Element::new("header", super::NS_SHIM).with_attr("name", "SubID");
            header.push_text(subid);
            m.push_child(Element::new("headers", super::NS_SHIM).with_child(header));
        }
        Some(Routed { from: from.clone(), to: to_jid, stanza: m })
    };
    for (jid, subid) in &n.subscribers {
        if let Some(r) = message(jid, Some(subid)) {
            router.route(r);
        }
    }
    for bare in &n.interested {
        if let Some(r) = message(bare, None) {
            router.route(r);
        }
    }
}

/// Routes a message from the service to `to` holding `child` (serialized).
pub fn send_message(router: &Router, service: &str, to: &str, child: &str) {
    let (Ok(from), Ok(to_jid), Some(child)) =
        (parse_jid(service), parse_jid(to), crate::ext::util::parse_stored(child))
    else {
        return;
    };
    let m = Element::new("message", ns::CLIENT)
        .with_attr("from", service.to_owned())
        .with_attr("to", to.to_owned())
        .with_attr("id", engine::new_subid())
        .with_child(child);
    router.route(Routed { from, to: to_jid, stanza: m });
}

/// How many actors, for how long, with how much queued.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_resident: usize,
    pub idle_timeout: Duration,
    pub mailbox: usize,
}

struct Resident {
    addr: Addr<NodeActor>,
    in_use: usize,
    last_used: Instant,
}

/// The node's PubSub node actors, by (service, node).
pub struct Nodes {
    shared: Arc<Shared>,
    limits: Limits,
    resident: Mutex<HashMap<(String, String), Resident>>,
    arbiter: Mutex<Option<Arbiter>>,
    handle: ArbiterHandle,
}

impl Nodes {
    /// Starts the actors' thread: call it where an actix `System` runs.
    pub fn new(shared: Arc<Shared>, limits: Limits) -> Nodes {
        let arbiter = Arbiter::new();
        let handle = arbiter.handle();
        Nodes { shared, limits, resident: Mutex::new(HashMap::new()), arbiter: Mutex::new(Some(arbiter)), handle }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Resident>> {
        self.resident.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many actors run now.
    pub fn resident(&self) -> usize {
        self.table().len()
    }

    /// Runs a request on its node's actor, starting it if needed.
    pub async fn call(&self, req: Request) -> Result<Option<String>, PsError> {
        let key = (req.service.clone(), req.node.clone());
        let addr = self.take(&key);
        let answer = addr.send(Run(req)).await;
        self.give_back(&key);
        answer.unwrap_or_else(|_| Err(PsError::new(meerkat_xmpp::error::StanzaErrorCondition::ServiceUnavailable)))
    }

    fn take(&self, key: &(String, String)) -> Addr<NodeActor> {
        let mut table = self.table();
        if let Some(r) = table.get_mut(key) {
            r.in_use += 1;
            r.last_used = Instant::now();
            return r.addr.clone();
        }
        if !crate::ext::util::make_room(&mut table, self.limits.max_resident, |r| r.in_use > 0, |r| r.last_used) {
            tracing::warn!(resident = table.len(), "every PubSub node actor is busy; starting one more");
        }
        let (tx, rx) = mpsc::channel(FANOUT_QUEUE);
        let (shared, mailbox) = (self.shared.clone(), self.limits.mailbox);
        // The fan-out task ends when the actor, the queue's only sender, is gone.
        self.handle.spawn(fan_out(key.0.clone(), shared.clone(), rx));
        let addr = NodeActor::start_in_arbiter(&self.handle, move |_| NodeActor { shared, mailbox, fanout: tx });
        table.insert(key.clone(), Resident { addr: addr.clone(), in_use: 1, last_used: Instant::now() });
        addr
    }

    fn give_back(&self, key: &(String, String)) {
        if let Some(r) = self.table().get_mut(key) {
            r.in_use = r.in_use.saturating_sub(1);
            r.last_used = Instant::now();
        }
    }

    /// Stops the actors idle for longer than the idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.table().retain(|_, r| r.in_use > 0 || now.duration_since(r.last_used) < self.limits.idle_timeout);
    }

    /// Stops every actor and the thread they run on.
    pub fn stop(&self) {
        self.table().clear();
        if let Some(a) = self.arbiter.lock().unwrap_or_else(|e| e.into_inner()).take() {
            a.stop();
        }
    }
}
