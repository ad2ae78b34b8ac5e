//! One actor per account's inbox, and the node's table of them.
//!
//! Every change to an inbox and every query of it goes through its actor,
//! one at a time and in arrival order ([`AtomicResponse`]: the next message
//! waits for the previous one's SQL to finish), and is written through to
//! storage before it is answered. The actor holds no copy of the inbox: a new
//! actor for the same account simply reads SQL, so stopping one loses
//! nothing.
//!
//! [`Inboxes`] starts actors on demand and keeps at most
//! [`Limits::max_resident`] of them. An actor is stopped (its address
//! dropped) only while nobody is sending to it: senders take the address and
//! mark it in use under the table's lock, so no message is ever sent to an
//! actor that is being stopped, and two actors never serve one account at
//! once. Idle actors are stopped after [`Limits::idle_timeout`] by
//! [`Inboxes::sweep`], and the least recently used idle one makes room when
//! the table is full. Each mailbox holds [`Limits::mailbox`] messages; a
//! sender waits while it is full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use meerkat_storage::{
    InboxChange, InboxEntry, InboxMessage, InboxQuery, InboxRepo, InboxTotals, Storage, StorageError,
};

/// What an inbox actor is asked to do.
#[derive(Clone, Debug)]
pub enum Op {
    /// A message became the conversation's last one.
    Message(InboxMessage),
    /// A chat marker for `msg_id` in the conversation with `remote`.
    Marker {
        remote: String,
        msg_id: String,
    },
    Get {
        remote: String,
    },
    Change {
        remote: String,
        change: InboxChange,
    },
    Query(InboxQuery),
    Totals,
    EmptyBin,
}

/// What it answers.
#[derive(Debug)]
pub enum Answer {
    Entry(Option<InboxEntry>),
    Marked(bool),
    Page(Vec<InboxEntry>, InboxTotals),
    Totals(InboxTotals),
    Removed(u64),
}

impl Message for Op {
    type Result = Result<Answer, StorageError>;
}

/// The actor of one account's inbox.
pub struct InboxActor {
    domain: String,
    user: String,
    storage: Arc<Storage>,
    mailbox: usize,
}

impl Actor for InboxActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<Op> for InboxActor {
    type Result = AtomicResponse<Self, Result<Answer, StorageError>>;

    fn handle(&mut self, op: Op, _ctx: &mut Context<Self>) -> Self::Result {
        let (domain, user, s) = (self.domain.clone(), self.user.clone(), self.storage.clone());
        AtomicResponse::new(Box::pin(async move { run(&s, &domain, &user, op).await }.into_actor(self)))
    }
}

async fn run(s: &Storage, domain: &str, user: &str, op: Op) -> Result<Answer, StorageError> {
    Ok(match op {
        Op::Message(m) => Answer::Entry(Some(s.inbox_message(domain, user, &m).await?)),
        Op::Marker { remote, msg_id } => Answer::Marked(s.inbox_mark_read(domain, user, &remote, &msg_id).await?),
        Op::Get { remote } => Answer::Entry(s.inbox_entry(domain, user, &remote).await?),
        Op::Change { remote, change } => Answer::Entry(s.inbox_change(domain, user, &remote, &change).await?),
        Op::Query(q) => {
            let page = s.inbox_query(domain, user, &q).await?;
            Answer::Page(page, s.inbox_totals(domain, user).await?)
        }
        Op::Totals => Answer::Totals(s.inbox_totals(domain, user).await?),
        Op::EmptyBin => Answer::Removed(s.inbox_empty_bin(domain, user).await?),
    })
}

/// How many actors, for how long, with how much queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_resident: usize,
    pub idle_timeout: Duration,
    pub mailbox: usize,
}

struct Resident {
    addr: Addr<InboxActor>,
    /// Senders holding the address right now.
    in_use: usize,
    last_used: Instant,
}

/// Why an operation did not reach an inbox.
#[derive(Debug)]
pub enum InboxError {
    Storage(StorageError),
    /// The actor stopped before it answered (the node is shutting down).
    Gone,
}

/// The node's inbox actors, by account (`user@domain`).
pub struct Inboxes {
    storage: Arc<Storage>,
    limits: Limits,
    resident: Mutex<HashMap<String, Resident>>,
}

impl Inboxes {
    pub fn new(storage: Arc<Storage>, limits: Limits) -> Self {
        Inboxes { storage, limits, resident: Mutex::new(HashMap::new()) }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resident>> {
        self.resident.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many actors run now.
    pub fn resident(&self) -> usize {
        self.table().len()
    }

    /// Runs `op` on the inbox of `user@domain`, starting its actor if needed;
    /// waits while its mailbox is full.
    pub async fn call(&self, domain: &str, user: &str, op: Op) -> Result<Answer, InboxError> {
        let key = format!("{user}@{domain}");
        let addr = self.take(&key, domain, user);
        let answer = addr.send(op).await;
        self.give_back(&key);
        match answer {
            Ok(r) => r.map_err(InboxError::Storage),
            Err(_) => Err(InboxError::Gone),
        }
    }

    /// The account's actor, marked in use; started (after making room) when absent.
    fn take(&self, key: &str, domain: &str, user: &str) -> Addr<InboxActor> {
        let mut table = self.table();
        if let Some(r) = table.get_mut(key) {
            r.in_use += 1;
            r.last_used = Instant::now();
            return r.addr.clone();
        }
        if table.len() >= self.limits.max_resident {
            // The least recently used actor nobody is sending to. Each sender
            // holds one actor at a time, so with more residents than concurrent
            // senders there always is one.
            let lru =
                table.iter().filter(|(_, r)| r.in_use == 0).min_by_key(|(_, r)| r.last_used).map(|(k, _)| k.clone());
            match lru {
                Some(k) => {
                    table.remove(&k);
                }
                None => tracing::warn!(resident = table.len(), "every inbox actor is busy; starting one more"),
            }
        }
        let actor = InboxActor {
            domain: domain.to_owned(),
            user: user.to_owned(),
            storage: self.storage.clone(),
            mailbox: self.limits.mailbox,
        };
        let addr = actor.start();
        table.insert(key.to_owned(), Resident { addr: addr.clone(), in_use: 1, last_used: Instant::now() });
        addr
    }

    fn give_back(&self, key: &str) {
        if let Some(r) = self.table().get_mut(key) {
            r.in_use = r.in_use.saturating_sub(1);
            r.last_used = Instant::now();
        }
    }

    /// Stops the actors idle for longer than the idle timeout; how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut table = self.table();
        let before = table.len();
        table.retain(|_, r| r.in_use > 0 || now.duration_since(r.last_used) < self.limits.idle_timeout);
        before - table.len()
    }

    /// Stops every actor nobody is sending to (at shutdown).
    pub fn stop_all(&self) {
        self.table().retain(|_, r| r.in_use > 0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meerkat_storage::{DbTls, StorageConfig};

    async fn storage() -> Arc<Storage> {
        let cfg = StorageConfig {
            url: "sqlite::memory:".into(),
            pool_size: 1,
            connect_timeout: Duration::from_secs(5),
            tls: DbTls::Disabled,
        };
        Arc::new(Storage::connect(&cfg).await.unwrap())
    }

    fn message(remote: &str, incoming: bool) -> Op {
        Op::Message(InboxMessage {
            remote_jid: remote.into(),
            msg_id: "m".into(),
            content: "<message/>".into(),
            stamp_micros: 1,
            incoming,
        })
    }

    async fn unread(inboxes: &Inboxes, user: &str) -> i64 {
        match inboxes.call("example.org", user, Op::Totals).await.unwrap() {
            Answer::Totals(t) => t.unread_messages,
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn actors_are_bounded_evicted_when_idle_and_lose_nothing() {
        actix::System::new().block_on(async {
            let limits = Limits { max_resident: 2, idle_timeout: Duration::from_secs(3600), mailbox: 4 };
            let inboxes = Arc::new(Inboxes::new(storage().await, limits));
            // 20 concurrent messages to one inbox: one at a time, none lost.
            let calls = (0..20).map(|_| inboxes.call("example.org", "alice", message("bob@example.org", true)));
            for r in futures_util::future::join_all(calls).await {
                r.unwrap();
            }
            assert_eq!(unread(&inboxes, "alice").await, 20);
            // A third inbox makes room by stopping the least recently used.
            inboxes.call("example.org", "bob", message("alice@example.org", true)).await.unwrap();
            inboxes.call("example.org", "carol", message("alice@example.org", true)).await.unwrap();
            assert_eq!(inboxes.resident(), 2);
            // The stopped one comes back from SQL as it was.
            assert_eq!(unread(&inboxes, "alice").await, 20);
            assert_eq!(inboxes.resident(), 2);
            // Nothing idle long enough: the sweep keeps them; with no idle time, it stops them.
            assert_eq!(inboxes.sweep(), 0);
            let eager = Inboxes::new(storage().await, Limits { idle_timeout: Duration::ZERO, ..limits });
            eager.call("example.org", "alice", message("bob@example.org", false)).await.unwrap();
            assert_eq!(eager.sweep(), 1);
            assert_eq!(eager.resident(), 0);
        });
    }

    #[test]
    fn an_actor_in_use_is_not_evicted() {
        actix::System::new().block_on(async {
            let limits = Limits { max_resident: 1, idle_timeout: Duration::ZERO, mailbox: 4 };
            let inboxes = Inboxes::new(storage().await, limits);
            let held = inboxes.take("alice@example.org", "example.org", "alice");
            assert_eq!(inboxes.sweep(), 0, "a sender holds it");
            // The table is full and its one actor busy: one more starts.
            inboxes.call("example.org", "bob", message("alice@example.org", true)).await.unwrap();
            assert_eq!(inboxes.resident(), 2);
            held.send(message("bob@example.org", true)).await.unwrap().unwrap();
            inboxes.give_back("alice@example.org");
            assert_eq!(inboxes.sweep(), 2);
        });
    }
}
