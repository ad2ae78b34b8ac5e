//! The server's own stanza processing, on a fixed set of sharded workers.
//!
//! Jobs about one account always land on the same shard (hash of the bare
//! JID), so they are processed in order; shards run in parallel. Every shard
//! queue is bounded: when one is full, the router answers the sender with
//! `resource-constraint` instead of letting memory grow.
//!
//! A job is either a stanza from the router, dispatched to the modules'
//! hooks here ([`handle_routed`]), or a module's own [`ModuleJob`], which
//! the shard runs (and lets batch the jobs queued behind it) without knowing
//! what it is.

use meerkat_xmpp::jid::Bare as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use meerkat_routing::{Routed, ServerHandler, ServerJob};
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::stanza::{iq_payload, IqType, StanzaKind};
use tokio::sync::mpsc;

use crate::ext::util::reply;
use crate::ext::{ModuleCtx, ModuleJob, Receive, Target};
use crate::services::Services;

/// Work for a server shard.
#[derive(Debug)]
pub enum WorkerJob {
    /// A job from the router.
    Routed(ServerJob),
    /// A module's job.
    Module(Box<dyn ModuleJob>),
}

impl WorkerJob {
    fn shard_key(&self) -> String {
        match self {
            WorkerJob::Routed(j) => routed_key(j),
            WorkerJob::Module(j) => j.shard_key(),
        }
    }
}

/// Jobs about the server itself follow the sender; all others follow the recipient account.
fn routed_key(job: &ServerJob) -> String {
    match job {
        ServerJob::ToServer(r) => r.from.bare().to_string(),
        j => j.routed().to.bare().to_string(),
    }
}

/// One shard's loop, until its queue is closed and drained. A module job may
/// take in the module jobs queued right behind it ([`ModuleJob::absorb`]:
/// archive writes are batched into one transaction); jobs still run in queue order.
async fn run_shard(svc: &Arc<Services>, rx: &mut mpsc::Receiver<WorkerJob>) {
    let mut next = rx.recv().await;
    while let Some(job) = next.take() {
        match job {
            WorkerJob::Module(mut job) => {
                loop {
                    match rx.try_recv() {
                        Ok(WorkerJob::Module(behind)) => match job.absorb(behind) {
                            None => continue,
                            Some(behind) => {
                                next = Some(WorkerJob::Module(behind));
                                break;
                            }
                        },
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                job.run(&svc.ctx).await;
            }
            WorkerJob::Routed(job) => handle_routed(&svc.ctx, job).await,
        }
        if next.is_none() {
            next = rx.recv().await;
        }
    }
}

/// Runs one job from the router through the hooks of the modules of its
/// host (the domain it is addressed to).
async fn handle_routed(ctx: &ModuleCtx, job: ServerJob) {
    match job {
        ServerJob::ToServer(r) => to_server_or_account(ctx, r, Target::Server).await,
        ServerJob::ToAccount(r) => {
            let target = if r.from.bare() == r.to.bare() { Target::OwnAccount } else { Target::OtherAccount };
            if let Some(r) = filter_local(ctx, r).await {
                to_server_or_account(ctx, r, target).await
            }
        }
        ServerJob::InboundPresence(r) => {
            if let Some(r) = filter_local(ctx, r).await {
                let _ = ctx.hooks.of(r.to.domain().as_str()).presence_in(ctx, &r).await;
            }
        }
        ServerJob::Undelivered(r) => {
            if let Some(r) = filter_local(ctx, r).await {
                if !ctx.hooks.of(r.to.domain().as_str()).undelivered_message(ctx, &r).await.handled {
                    // Nobody keeps messages for absent users (RFC 6121 §8.5.2.2.1).
                    ctx.router.bounce(r, StanzaErrorCondition::ServiceUnavailable);
                }
            }
        }
    }
}

/// The filter on what the server handles for a local account (XEP-0191:
/// from someone the account blocks). `None` when it was refused.
async fn filter_local(ctx: &ModuleCtx, r: Routed) -> Option<Routed> {
    match ctx.hooks.of(r.to.domain().as_str()).filter_local(ctx, &r).await {
        Receive::Deliver => Some(r),
        Receive::Bounce(cond) => {
            ctx.router.bounce(r, cond);
            None
        }
        Receive::Drop => {
            tracing::debug!(to = %r.to, "dropping a stanza the account refuses");
            None
        }
    }
}

async fn to_server_or_account(ctx: &ModuleCtx, r: Routed, target: Target) {
    match StanzaKind::of(&r.stanza) {
        Some(StanzaKind::Iq) => handle_iq(ctx, r, target).await,
        // Messages to the server itself carry nothing for us (RFC 6120 §10.3.1);
        // a presence to a host is likewise ignored.
        Some(StanzaKind::Message) | Some(StanzaKind::Presence) | None => {}
    }
}

async fn handle_iq(ctx: &ModuleCtx, r: Routed, target: Target) {
    match IqType::of(&r.stanza) {
        Some(t) if t.is_request() => {}
        // Results and errors addressed to the server answer nothing we asked.
        Some(_) => return,
        None => {
            ctx.router.bounce(r, StanzaErrorCondition::BadRequest);
            return;
        }
    }
    let Some(payload) = iq_payload(&r.stanza).cloned() else {
        ctx.router.bounce(r, StanzaErrorCondition::BadRequest);
        return;
    };
    if target == Target::OtherAccount
        && !ctx
            .accounts
            .exists(r.to.domain().as_str(), r.to.node().map(|n| n.as_str()).unwrap_or(""))
            .await
            .unwrap_or(false)
    {
        ctx.router.bounce(r, StanzaErrorCondition::ServiceUnavailable);
        return;
    }
    match ctx.hooks.of(r.to.domain().as_str()).iq(ctx, target, &r, &payload).await {
        Some(answer) => reply(&ctx.router, r, answer),
        None => ctx.router.bounce(r, StanzaErrorCondition::ServiceUnavailable),
    }
}

/// The shard queues.
pub struct ServerWorkers {
    senders: Mutex<Option<Vec<mpsc::Sender<WorkerJob>>>>,
    receivers: Mutex<Vec<mpsc::Receiver<WorkerJob>>>,
}

impl ServerWorkers {
    /// `shards` queues of `capacity` jobs each; nothing runs until [`ServerWorkers::start`].
    pub fn new(shards: usize, capacity: usize) -> Arc<Self> {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards.max(1)).map(|_| mpsc::channel(capacity.max(1))).unzip();
        Arc::new(ServerWorkers { senders: Mutex::new(Some(senders)), receivers: Mutex::new(receivers) })
    }

    /// Spawns one task per shard through `spawn` (the node spreads them over its arbiters).
    /// Each task ends once [`ServerWorkers::close`] was called and its queue is drained.
    pub fn start(
        &self,
        svc: &Arc<Services>,
        mut spawn: impl FnMut(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    ) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let receivers = std::mem::take(&mut *self.receivers.lock().unwrap_or_else(|e| e.into_inner()));
        let mut done = Vec::new();
        for mut rx in receivers {
            let svc = svc.clone();
            let (tx_done, rx_done) = tokio::sync::oneshot::channel();
            done.push(rx_done);
            spawn(Box::pin(async move {
                run_shard(&svc, &mut rx).await;
                let _ = tx_done.send(());
            }));
        }
        done
    }

    fn sender_for(&self, key: &str) -> Option<mpsc::Sender<WorkerJob>> {
        let guard = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let senders = guard.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        senders.get((h.finish() % senders.len() as u64) as usize).cloned()
    }

    /// Queues a job on its account's shard; gives it back when that queue is full or closed.
    #[allow(clippy::result_large_err)] // the job is handed back by value, by design
    pub fn enqueue(&self, job: WorkerJob) -> Result<(), WorkerJob> {
        let Some(tx) = self.sender_for(&job.shard_key()) else {
            return Err(job);
        };
        let result = match tx.try_reserve() {
            Ok(permit) => {
                permit.send(job);
                Ok(())
            }
            Err(_) => Err(job),
        };
        result
    }

    /// Queues a job on its account's shard, waiting while that queue is full;
    /// gives it back when the workers are closed.
    #[allow(clippy::result_large_err)]
    pub async fn enqueue_wait(&self, job: WorkerJob) -> Result<(), WorkerJob> {
        let Some(tx) = self.sender_for(&job.shard_key()) else {
            return Err(job);
        };
        tx.send(job).await.map_err(|e| e.0)
    }

    /// Stops accepting jobs; the shard tasks finish what is queued and end.
    pub fn close(&self) {
        self.senders.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Jobs waiting, summed over shards.
    pub fn queued(&self) -> usize {
        let guard = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|s| s.iter().map(|tx| tx.max_capacity() - tx.capacity()).sum()).unwrap_or(0)
    }
}

impl ServerHandler for ServerWorkers {
    #[allow(clippy::result_large_err)]
    fn submit(&self, job: ServerJob) -> Result<(), ServerJob> {
        // Reserve before wrapping, so a full queue hands the job back unchanged.
        let Some(tx) = self.sender_for(&routed_key(&job)) else {
            return Err(job);
        };
        let result = match tx.try_reserve() {
            Ok(permit) => {
                permit.send(WorkerJob::Routed(job));
                Ok(())
            }
            Err(_) => Err(job),
        };
        result
    }
}
