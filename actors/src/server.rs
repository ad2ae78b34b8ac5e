//! The server's own stanza processing, on a fixed set of sharded workers.
//!
//! Jobs about one account always land on the same shard (hash of the bare
//! JID), so they are processed in order; shards run in parallel. Every shard
//! queue is bounded: when one is full, the router answers the sender with
//! `resource-constraint` instead of letting memory grow.

use meerkat_xmpp::jid::Bare as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use meerkat_routing::{Routed, ServerHandler, ServerJob};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::jid::{FullJid, Jid};
use tokio::sync::mpsc;

use crate::services::Services;

/// Work for a server shard.
#[derive(Debug)]
pub enum WorkerJob {
    /// A job from the router.
    Routed(ServerJob),
    /// Presence a session sent without `to` (RFC 6121 §4.2–§4.6): broadcast it.
    Broadcast { from: FullJid, presence: Element, initial: bool, directed: Vec<Jid> },
    /// A subscription request or answer a user sent (RFC 6121 §3, outbound side).
    OutboundSubscription(Routed),
    /// Archive rows of a message a user sent (XEP-0313).
    Archive(crate::modules::mam::ArchiveJob),
}

impl WorkerJob {
    fn shard_key(&self) -> String {
        match self {
            WorkerJob::Routed(j) => routed_key(j),
            WorkerJob::Broadcast { from, .. } => from.bare().to_string(),
            WorkerJob::OutboundSubscription(r) => r.from.bare().to_string(),
            WorkerJob::Archive(j) => j.shard_key(),
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

/// One shard's loop, until its queue is closed and drained. Archive jobs found
/// queued one after another are written together, in one transaction; jobs
/// still run in queue order.
async fn run_shard(svc: &Arc<Services>, rx: &mut mpsc::Receiver<WorkerJob>) {
    let mut next = rx.recv().await;
    while let Some(job) = next.take() {
        match job {
            WorkerJob::Archive(first) => {
                let mut batch = vec![first];
                while batch.len() < crate::modules::mam::MAX_BATCH {
                    match rx.try_recv() {
                        Ok(WorkerJob::Archive(j)) => batch.push(j),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                crate::modules::mam::store(svc, batch).await;
            }
            job => crate::modules::handle_job(svc, job).await,
        }
        if next.is_none() {
            next = rx.recv().await;
        }
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
