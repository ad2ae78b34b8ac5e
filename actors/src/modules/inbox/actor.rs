//! One actor per account's inbox, and the node's table of them.
//!
//! Every change to an inbox and every query of it goes through its actor,
//! one at a time and in arrival order ([`AtomicResponse`]: the next message
//! waits for the previous one's SQL to finish). Requests ([`Inboxes::call`])
//! are answered once written; message updates ([`Inboxes::post`]) are only
//! queued, and written before whatever is queued after them. The actor holds no copy of the inbox: a new
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use meerkat_storage::{
    InboxChange, InboxEntry, InboxMessage, InboxQuery, InboxRepo, InboxTotals, Storage, StorageError,
};
use meerkat_xmpp::jid::{parse_bare, Jid};

use super::writer::AsyncWriter;
use crate::ext::ModuleCtx;

/// What an inbox actor is asked to do.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, serde::Serialize, serde::Deserialize)]
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

/// An update posted without waiting for it ([`Inboxes::post`]), with, for a
/// received message, its sender: the owner must exist and not block it.
struct Posted(Op, Option<Jid>, tokio::sync::OwnedSemaphorePermit);

impl Message for Posted {
    type Result = ();
}

/// The actor of one account's inbox.
pub struct InboxActor {
    domain: String,
    user: String,
    storage: Arc<Storage>,
    mailbox: usize,
    /// Posted updates not handled yet (shared with the table, which does not
    /// stop an actor with any).
    posted: Arc<AtomicUsize>,
    /// For the checks of received messages.
    ctx: Option<ModuleCtx>,
    /// Accounts known to exist, shared by the node's inbox actors.
    known: Arc<KnownAccounts>,
}

/// Accounts known to exist, each until a time ([`ACCOUNT_KNOWN_FOR`] after it
/// was read, so that a removed account stops getting entries). Forgotten all
/// at once past [`KnownAccounts::MAX`].
#[derive(Default)]
pub struct KnownAccounts(Mutex<HashMap<String, KnownUntil, foldhash::fast::RandomState>>);

struct KnownUntil {
    until: Instant,
    /// Someone was told to read the account again ([`Known::Refresh`]).
    refreshing: bool,
}

/// What [`KnownAccounts::check`] knows of an account.
#[derive(Debug, PartialEq, Eq)]
pub enum Known {
    Yes,
    /// Known, but soon no longer: the caller reads the account again
    /// ([`Inboxes::refresh_account`]), so that its messages never wait for
    /// that read. Answered once per period.
    Refresh,
    No,
}

impl KnownAccounts {
    const MAX: usize = 100_000;

    fn known(&self, account: &str) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(account).is_some_and(|k| Instant::now() < k.until)
    }

    fn check(&self, account: &str) -> Known {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(account) {
            Some(k) if now >= k.until => Known::No,
            Some(k) if k.refreshing || now + ACCOUNT_REFRESH_BEFORE < k.until => Known::Yes,
            Some(k) => {
                k.refreshing = true;
                Known::Refresh
            }
            None => Known::No,
        }
    }

    fn remember(&self, account: String) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(account, KnownUntil { until: Instant::now() + ACCOUNT_KNOWN_FOR, refreshing: false });
    }

    fn forget(&self, account: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(account);
    }
}

/// How long an inbox actor trusts that its account exists without asking again.
const ACCOUNT_KNOWN_FOR: Duration = Duration::from_secs(10);
/// How long before that an account in use is read again.
const ACCOUNT_REFRESH_BEFORE: Duration = Duration::from_secs(3);

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

/// An update sent by another node, answered once written: `id` makes it
/// written once, however often it comes.
struct Apply {
    op: Op,
    sender: Option<Jid>,
    id: String,
}

impl Message for Apply {
    type Result = Result<(), StorageError>;
}

impl Handler<Posted> for InboxActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, Posted(op, sender, permit): Posted, _ctx: &mut Context<Self>) -> Self::Result {
        let (domain, user, s, posted) =
            (self.domain.clone(), self.user.clone(), self.storage.clone(), self.posted.clone());
        let checks = self.ctx.clone().map(|c| (c, self.known.clone()));
        AtomicResponse::new(Box::pin(
            async move {
                let _ = apply(checks.as_ref(), &s, &domain, &user, op, sender, None).await;
                count_off(&posted);
                // One more update may wait now.
                drop(permit);
            }
            .into_actor(self),
        ))
    }
}

impl Handler<Apply> for InboxActor {
    type Result = AtomicResponse<Self, Result<(), StorageError>>;

    fn handle(&mut self, a: Apply, _ctx: &mut Context<Self>) -> Self::Result {
        let (domain, user, s) = (self.domain.clone(), self.user.clone(), self.storage.clone());
        let checks = self.ctx.clone().map(|c| (c, self.known.clone()));
        AtomicResponse::new(Box::pin(
            async move { apply(checks.as_ref(), &s, &domain, &user, a.op, a.sender, Some(&a.id)).await }
                .into_actor(self),
        ))
    }
}

/// Checks and writes one update, trying again (3 times in all) on a
/// transient error. With `id`, a message is written once only.
async fn apply(
    checks: Option<&(ModuleCtx, Arc<KnownAccounts>)>,
    s: &Storage,
    domain: &str,
    user: &str,
    op: Op,
    sender: Option<Jid>,
    id: Option<&str>,
) -> Result<(), StorageError> {
    if let (Some((ctx, known)), Some(sender)) = (checks, &sender) {
        if !wanted(ctx, known, domain, user, sender).await {
            return Ok(());
        }
    }
    let mut attempt = 1;
    loop {
        let done = match (&op, id) {
            (Op::Message(m), Some(id)) => s.inbox_write_once(domain, user, m, id).await.map(|_| ()),
            // Nobody waits for the entry: the write alone.
            (Op::Message(m), None) => s.inbox_write(domain, user, m).await,
            (op, _) => run(s, domain, user, op.clone()).await.map(|_| ()),
        };
        match done {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && attempt < 3 => {
                tracing::warn!(error = %e, attempt, %user, %domain, "inbox write failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(error = %e, %user, %domain, "inbox not updated");
                return Err(e);
            }
        }
    }
}

/// One posted update less (never below zero, should an update be counted off twice at shutdown).
fn count_off(posted: &AtomicUsize) {
    let _ = posted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(1)));
}

/// Whether a message from `sender` belongs in the inbox of `user@domain`: the
/// account exists and does not block the sender (XEP-0191).
async fn wanted(ctx: &ModuleCtx, known: &KnownAccounts, domain: &str, user: &str, sender: &Jid) -> bool {
    let account = format!("{user}@{domain}");
    if !known.known(&account) {
        match ctx.accounts.exists(domain, user).await {
            Ok(false) => return false,
            Ok(true) => known.remember(account.clone()),
            Err(e) => tracing::warn!(error = %e, "account lookup failed; updating the inbox anyway"),
        }
    }
    match parse_bare(&account) {
        Ok(owner) => !ctx.hooks.of(owner.domain().as_str()).blocks(ctx, &owner, sender).await,
        Err(_) => false,
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
    /// Updates posted to it and not handled yet.
    posted: Arc<AtomicUsize>,
    last_used: Instant,
}

impl Resident {
    fn idle(&self) -> bool {
        self.in_use == 0 && self.posted.load(Ordering::Acquire) == 0
    }
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
    ctx: Option<ModuleCtx>,
    /// The threads the actors run on, whoever asks for them (a session, a
    /// server shard, a request from another node): an account's actor on the
    /// one its key hashes to.
    arbiters: Vec<ArbiterHandle>,
    /// To stop those threads at shutdown.
    threads: Mutex<Vec<Arbiter>>,
    known: Arc<KnownAccounts>,
    /// With the `rdbms_async` backend: where message updates wait to be written.
    writer: Option<Arc<AsyncWriter>>,
    /// Permits for updates posted to the actors and not written yet.
    unwritten: Arc<tokio::sync::Semaphore>,
}

/// Updates posted to the node's inbox actors and not written yet, at most:
/// beyond, posters wait (and so the sessions behind them) rather than queue
/// more than the database takes.
pub const MAX_UNWRITTEN: usize = 4096;

/// How many threads run inbox actors: one per core, at most 4.
fn inbox_threads() -> Vec<Arbiter> {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    (0..n).map(|_| Arbiter::new()).collect()
}

impl Inboxes {
    /// Starts the actors' threads: call it where an actix `System` runs.
    pub fn new(storage: Arc<Storage>, limits: Limits) -> Self {
        let threads = inbox_threads();
        Inboxes {
            storage,
            limits,
            resident: Mutex::new(HashMap::new()),
            ctx: None,
            arbiters: threads.iter().map(|a| a.handle()).collect(),
            threads: Mutex::new(threads),
            known: Arc::default(),
            writer: None,
            unwritten: Arc::new(tokio::sync::Semaphore::new(MAX_UNWRITTEN)),
        }
    }

    /// Message updates go to `writer` rather than through the actors.
    pub fn with_writer(self, writer: Arc<AsyncWriter>) -> Self {
        Inboxes { writer: Some(writer), ..self }
    }

    pub fn writer(&self) -> Option<&Arc<AsyncWriter>> {
        self.writer.as_ref()
    }

    /// Whether `account` (`user@domain`) was seen to exist a short while ago.
    pub fn known_account(&self, account: &str) -> Known {
        self.known.check(account)
    }

    /// Reads again whether `user@domain` exists, after [`Known::Refresh`].
    pub async fn refresh_account(&self, domain: &str, user: &str) {
        let Some(ctx) = &self.ctx else { return };
        let account = format!("{user}@{domain}");
        match ctx.accounts.exists(domain, user).await {
            Ok(true) => self.known.remember(account),
            Ok(false) => self.known.forget(&account),
            // Known until it expires; then the actor asks again.
            Err(e) => tracing::warn!(error = %e, %account, "account lookup failed; asking again later"),
        }
    }

    /// With the node's context, for the checks of received messages.
    pub fn with_ctx(ctx: ModuleCtx, limits: Limits) -> Self {
        Inboxes { ctx: Some(ctx.clone()), ..Inboxes::new(ctx.storage.clone(), limits) }
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
        if let Some(w) = &self.writer {
            // What was posted before this request is written before it runs.
            w.flush_account(domain, user).await;
        }
        let key = format!("{user}@{domain}");
        let addr = self.take(&key, domain, user);
        let answer = addr.send(op).await;
        self.give_back(&key);
        match answer {
            Ok(r) => r.map_err(InboxError::Storage),
            Err(_) => Err(InboxError::Gone),
        }
    }

    /// Queues an update for the inbox of `user@domain` and returns once it is
    /// in the actor's mailbox, without waiting for it to be written; when the
    /// mailbox is full, waits until the actor took it (back-pressure). The
    /// actor writes it before anything queued after it, queries included.
    pub async fn post(&self, domain: &str, user: &str, mut op: Op, sender: Option<Jid>) {
        if let Some(w) = &self.writer {
            if let (Some(ctx), Some(sender)) = (&self.ctx, &sender) {
                if !wanted(ctx, &self.known, domain, user, sender).await {
                    return;
                }
            }
            match w.post(domain, user, op).await {
                Ok(()) => return,
                Err(back) => op = back,
            }
        }
        let key = format!("{user}@{domain}");
        let addr = self.take(&key, domain, user);
        let posted = self.table().get(&key).map(|r| r.posted.clone());
        if let Some(p) = &posted {
            p.fetch_add(1, Ordering::AcqRel);
        }
        // Handled, the update counts itself off; not handled, it is counted off here.
        // At most MAX_UNWRITTEN updates wait on the node: the poster waits beyond.
        let Ok(permit) = self.unwritten.clone().acquire_owned().await else {
            tracing::error!(%key, "inbox shutting down; update not written");
            self.give_back(&key);
            return;
        };
        let handled = match addr.try_send(Posted(op, sender, permit)) {
            Ok(()) => true,
            Err(SendError::Full(p)) => addr.send(p).await.is_ok(),
            Err(SendError::Closed(_)) => false,
        };
        if !handled {
            tracing::error!(%key, "inbox actor gone (shutting down?); update not written");
            if let Some(p) = &posted {
                count_off(p);
            }
        }
        self.give_back(&key);
    }

    /// Writes an update another node sent, `id` making it written once, and
    /// returns once it is (or failed): queued behind what the actor has.
    pub async fn apply(
        &self,
        domain: &str,
        user: &str,
        op: Op,
        sender: Option<Jid>,
        id: String,
    ) -> Result<(), InboxError> {
        let key = format!("{user}@{domain}");
        let addr = self.take(&key, domain, user);
        let done = addr.send(Apply { op, sender, id }).await;
        self.give_back(&key);
        match done {
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
        // The least recently used actor nobody is sending to. Each sender
        // holds one actor at a time, so with more residents than concurrent
        // senders there always is one.
        if !crate::ext::util::make_room(&mut table, self.limits.max_resident, |r| r.in_use > 0, |r| r.last_used) {
            tracing::warn!(resident = table.len(), "every inbox actor is busy; starting one more");
        }
        let posted = Arc::new(AtomicUsize::new(0));
        let actor = InboxActor {
            domain: domain.to_owned(),
            user: user.to_owned(),
            storage: self.storage.clone(),
            mailbox: self.limits.mailbox,
            posted: posted.clone(),
            ctx: self.ctx.clone(),
            known: self.known.clone(),
        };
        let thread = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            (h.finish() % self.arbiters.len().max(1) as u64) as usize
        };
        let addr = match self.arbiters.get(thread) {
            Some(arbiter) => InboxActor::start_in_arbiter(arbiter, move |_| actor),
            None => actor.start(),
        };
        table.insert(key.to_owned(), Resident { addr: addr.clone(), in_use: 1, posted, last_used: Instant::now() });
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
        table.retain(|_, r| !r.idle() || now.duration_since(r.last_used) < self.limits.idle_timeout);
        before - table.len()
    }

    /// Updates posted and not written yet, all inboxes together.
    pub fn unwritten(&self) -> usize {
        let pending = self.writer.as_ref().map_or(0, |w| w.pending());
        pending + self.table().values().map(|r| r.posted.load(Ordering::Acquire)).sum::<usize>()
    }

    /// At shutdown: waits (until `deadline`) for the posted updates to be
    /// written, then stops every actor and their threads.
    pub async fn stop_all(&self, deadline: tokio::time::Instant) {
        if let Some(w) = &self.writer {
            w.flush_all().await;
        }
        while self.unwritten() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.unwritten();
        if left > 0 {
            tracing::warn!(updates = left, "inbox updates still unwritten at shutdown");
        }
        self.table().clear();
        for thread in self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            thread.stop();
        }
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
    fn posted_updates_are_written_in_order_before_later_requests() {
        actix::System::new().block_on(async {
            // A mailbox of 2: most posts find it full and wait for room.
            let limits = Limits { max_resident: 256, idle_timeout: Duration::ZERO, mailbox: 2 };
            let inboxes = Inboxes::new(storage().await, limits);
            for _ in 0..50 {
                inboxes.post("example.org", "alice", message("bob@example.org", true), None).await;
            }
            // A request queued after them sees every one.
            assert_eq!(unread(&inboxes, "alice").await, 50);
            inboxes.post("example.org", "alice", message("bob@example.org", false), None).await;
            assert_eq!(unread(&inboxes, "alice").await, 0, "the reply came after the 50");
            assert_eq!(inboxes.sweep(), 1, "idle once everything is written");
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
