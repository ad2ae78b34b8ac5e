//! The `rdbms_async` backend's writer: message updates coalesced per
//! conversation in memory and written in batches, one transaction each.
//!
//! A conversation's updates between two writes become one [`InboxDelta`]:
//! the received messages counted, whether the account wrote in between (the
//! count starts again from those after it), the newest message, and the chat
//! markers that must be tried against the stored entry. So a conversation
//! that gets a hundred messages between two writes costs one statement, not
//! a hundred, and a write is one transaction for up to `batch_size`
//! conversations instead of one per message.
//!
//! Pending updates live in `pool_size` shards by account, each written by
//! one writer at a time. Every `flush_interval` each shard writes what it
//! holds; a shard that holds [`MAX_PENDING`] conversations is written at once
//! by the poster that filled it, which waits (back-pressure). A request to
//! an inbox (a query, an action, the badge) first writes that account's
//! pending updates, so it sees every update posted before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meerkat_storage::{InboxDelta, InboxLast, InboxMessage, InboxRepo, Storage};

use super::actor::Op;

/// Conversations one shard holds before its poster writes them at once.
pub const MAX_PENDING: usize = 20_000;
/// Chat markers kept for one conversation before a write; beyond, the oldest go.
const MAX_MARKS: usize = 16;

/// The maps' hasher: foldhash, seeded per map, several times faster than
/// SipHash on short keys such as JIDs, and still not predictable by a client.
type Hasher = foldhash::fast::RandomState;
/// hashbrown's map, for `entry_ref`: one lookup, and a key copied only when
/// it goes in.
type HashMap<K, V> = hashbrown::HashMap<K, V, Hasher>;

/// One account's pending conversations, by remote bare JID.
type Conversations = HashMap<String, Conversation>;

/// A conversation's updates waiting to be written.
struct Conversation {
    delta: InboxDelta,
    /// For received messages: the checks' answers (the account exists, it
    /// does not block the sender), as given for this sender's full JID at
    /// this generation of the node's blocklists
    /// ([`crate::ext::Module::blocks_generation`]). A message from the same
    /// sender at the same generation needs no checks again while the
    /// conversation waits here (at most one `flush_interval`).
    checked: Option<(u64, Box<str>)>,
}

/// A message update, borrowed from the hook that makes it.
#[derive(Clone, Copy)]
pub struct MessageRef<'a> {
    /// The other party's bare JID.
    pub remote: &'a str,
    pub msg_id: &'a Arc<str>,
    pub content: &'a Arc<str>,
    pub stamp_micros: i64,
    /// Received by the account (one more unread), rather than sent.
    pub incoming: bool,
}

impl<'a> MessageRef<'a> {
    /// An owned copy, for a job.
    pub fn owned(&self) -> InboxMessage {
        InboxMessage {
            remote_jid: self.remote.to_owned(),
            msg_id: self.msg_id.clone(),
            content: self.content.clone(),
            stamp_micros: self.stamp_micros,
            incoming: self.incoming,
        }
    }

    pub fn of(m: &'a InboxMessage) -> Self {
        MessageRef {
            remote: &m.remote_jid,
            msg_id: &m.msg_id,
            content: &m.content,
            stamp_micros: m.stamp_micros,
            incoming: m.incoming,
        }
    }
}

/// What a message update needs before it can wait here.
#[derive(Clone, Copy)]
pub enum Checks<'a> {
    /// Nothing: the account's own message.
    None,
    /// The caller made them, for `sender` at `generation`: they are kept
    /// with the conversation.
    Made { generation: u64, sender: &'a str },
    /// Taken only when the conversation waits here with the checks made for
    /// `sender` at `generation`; refused otherwise, and the caller checks.
    IfKnown { generation: u64, sender: &'a str },
}

#[derive(Default)]
struct Pending {
    /// By account (`user@domain`).
    accounts: HashMap<String, Conversations>,
    conversations: usize,
}

impl Pending {
    /// The conversations of `account`, a map made for it if needed.
    fn account(&mut self, account: &str) -> &mut Conversations {
        self.accounts.entry_ref(account).or_default()
    }
}

struct Shard {
    pending: Mutex<Pending>,
    /// Held while this shard writes, so that a request waiting for its
    /// account's updates also waits for a write that took them already.
    writing: tokio::sync::Mutex<()>,
}

/// The writer of one node's inbox updates.
pub struct AsyncWriter {
    storage: Arc<Storage>,
    shards: Vec<Shard>,
    /// Picks an account's shard.
    shard_of: Hasher,
    batch_size: usize,
    /// Conversations whose updates could not be written.
    lost: AtomicU64,
}

/// A message merged into a conversation's delta.
fn merge_message(delta: &mut InboxDelta, m: MessageRef<'_>) {
    if m.incoming {
        delta.add += 1;
    } else {
        // The account wrote: nothing before is unread.
        delta.reset = true;
        delta.add = 0;
    }
    // An older copy written late counts, but does not replace the last message.
    if delta.last.as_ref().is_none_or(|l| m.stamp_micros >= l.stamp_micros) {
        delta.last =
            Some(InboxLast { msg_id: m.msg_id.clone(), content: m.content.clone(), stamp_micros: m.stamp_micros });
    }
}

/// A chat marker merged into a conversation's delta.
fn merge_marker(delta: &mut InboxDelta, msg_id: &str) {
    match &delta.last {
        // The conversation's last message is the pending one.
        Some(last) => {
            if &*last.msg_id == msg_id {
                delta.reset = true;
                delta.add = 0;
            }
        }
        // The last message is the stored one: tried when written.
        None => {
            if delta.marks.len() == MAX_MARKS {
                delta.marks.remove(0);
            }
            delta.marks.push(msg_id.to_owned());
        }
    }
}

/// The conversation with `remote` in `pending` (an account's), opened when
/// absent: with whether it was opened.
fn conversation<'p>(
    pending: &'p mut Conversations,
    domain: &str,
    user: &str,
    remote: &str,
) -> (&'p mut Conversation, bool) {
    match pending.entry_ref(remote) {
        hashbrown::hash_map::EntryRef::Occupied(o) => (o.into_mut(), false),
        hashbrown::hash_map::EntryRef::Vacant(v) => {
            let delta = InboxDelta {
                domain: domain.to_owned(),
                user: user.to_owned(),
                remote_jid: remote.to_owned(),
                ..Default::default()
            };
            (v.insert(Conversation { delta, checked: None }), true)
        }
    }
}

/// Merges `op` into `pending` (an account's conversations): whether it
/// opened a conversation there. `Err(op)` when the operation is not an update
/// that can wait (queries and actions).
// The operation comes back unchanged to the caller, which queues it elsewhere.
#[allow(clippy::result_large_err)]
fn merge(pending: &mut Conversations, domain: &str, user: &str, op: Op) -> Result<bool, Op> {
    match &op {
        Op::Message(m) => {
            let (c, fresh) = conversation(pending, domain, user, &m.remote_jid);
            merge_message(&mut c.delta, MessageRef::of(m));
            Ok(fresh)
        }
        Op::Marker { remote, msg_id } => {
            let (c, fresh) = conversation(pending, domain, user, remote);
            merge_marker(&mut c.delta, msg_id);
            Ok(fresh)
        }
        _ => Err(op),
    }
}

impl AsyncWriter {
    pub fn new(storage: Arc<Storage>, pool_size: usize, batch_size: usize) -> Self {
        let shards = (0..pool_size.max(1))
            .map(|_| Shard { pending: Mutex::new(Pending::default()), writing: tokio::sync::Mutex::new(()) })
            .collect();
        AsyncWriter {
            storage,
            shards,
            shard_of: Hasher::default(),
            batch_size: batch_size.max(1),
            lost: AtomicU64::new(0),
        }
    }

    fn shard(&self, account: &str) -> &Shard {
        use std::hash::BuildHasher as _;
        &self.shards[(self.shard_of.hash_one(account) % self.shards.len() as u64) as usize]
    }

    /// Takes an update of the inbox of `account` (`user@domain`, its bare
    /// JID) without waiting. `Err(op)` back when `op` is not one that waits
    /// (queries and actions go to the actor) or when the account's shard is
    /// full: the caller then posts it with [`AsyncWriter::post`], which
    /// writes the shard first.
    #[allow(clippy::result_large_err)]
    pub fn try_post(&self, account: &str, domain: &str, user: &str, op: Op) -> Result<(), Op> {
        if !matches!(op, Op::Message(_) | Op::Marker { .. }) {
            return Err(op);
        }
        let shard = self.shard(account);
        let mut guard = shard.pending.lock().unwrap_or_else(|e| e.into_inner());
        let p = &mut *guard;
        if p.conversations >= MAX_PENDING {
            return Err(op);
        }
        if merge(p.account(account), domain, user, op)? {
            p.conversations += 1;
        }
        Ok(())
    }

    /// Takes a message update of the inbox of `account` (`user@domain`, its
    /// bare JID) without waiting, as [`AsyncWriter::try_post`] does an
    /// [`Op::Message`], but with nothing copied but what a new conversation
    /// needs. `false` when it did not: the account's shard is full, or
    /// `checks` wants answers the conversation does not have.
    pub fn post_message(&self, account: &str, domain: &str, user: &str, m: MessageRef<'_>, checks: Checks<'_>) -> bool {
        let shard = self.shard(account);
        let mut guard = shard.pending.lock().unwrap_or_else(|e| e.into_inner());
        let p = &mut *guard;
        if let Checks::IfKnown { generation, sender } = checks {
            let known = p
                .accounts
                .get_mut(account)
                .and_then(|c| c.get_mut(m.remote))
                .filter(|c| c.checked.as_ref().is_some_and(|(g, s)| *g == generation && &**s == sender));
            return match known {
                Some(c) => {
                    merge_message(&mut c.delta, m);
                    true
                }
                None => false,
            };
        }
        if p.conversations >= MAX_PENDING {
            return false;
        }
        let (c, fresh) = conversation(p.account(account), domain, user, m.remote);
        merge_message(&mut c.delta, m);
        if let Checks::Made { generation, sender } = checks {
            if c.checked.as_ref().is_none_or(|(g, s)| *g != generation || &**s != sender) {
                c.checked = Some((generation, sender.into()));
            }
        }
        if fresh {
            p.conversations += 1;
        }
        true
    }

    /// [`AsyncWriter::try_post`], writing the account's shard first when it is full.
    #[allow(clippy::result_large_err)]
    pub async fn post(&self, domain: &str, user: &str, op: Op) -> Result<(), Op> {
        let account = format!("{user}@{domain}");
        match self.try_post(&account, domain, user, op) {
            Err(op @ (Op::Message(_) | Op::Marker { .. })) => {
                self.flush_shard(self.shard(&account)).await;
                self.try_post(&account, domain, user, op)
            }
            other => other,
        }
    }

    /// Writes the pending updates of `user@domain` (and waits for a write
    /// under way that holds some of them).
    pub async fn flush_account(&self, domain: &str, user: &str) {
        let account = format!("{user}@{domain}");
        let shard = self.shard(&account);
        let _writing = shard.writing.lock().await;
        let batch: Vec<InboxDelta> = {
            let mut p = shard.pending.lock().unwrap_or_else(|e| e.into_inner());
            match p.accounts.remove(&account) {
                Some(c) => {
                    p.conversations = p.conversations.saturating_sub(c.len());
                    c.into_values().map(|c| c.delta).collect()
                }
                None => return,
            }
        };
        self.write(batch).await;
    }

    /// Writes everything pending, the shards side by side.
    pub async fn flush_all(&self) {
        futures_util::future::join_all(self.shards.iter().map(|s| self.flush_shard(s))).await;
    }

    async fn flush_shard(&self, shard: &Shard) {
        let _writing = shard.writing.lock().await;
        let batch: Vec<InboxDelta> = {
            let mut p = shard.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.conversations = 0;
            std::mem::take(&mut p.accounts).into_values().flat_map(|c| c.into_values().map(|c| c.delta)).collect()
        };
        self.write(batch).await;
    }

    /// Conversations with updates not written yet.
    pub fn pending(&self) -> usize {
        self.shards.iter().map(|s| s.pending.lock().unwrap_or_else(|e| e.into_inner()).conversations).sum()
    }

    /// Conversations whose updates were given up.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Writes in transactions of `batch_size` conversations, each tried 3
    /// times on a transient error; what still fails is logged and counted.
    async fn write(&self, batch: Vec<InboxDelta>) {
        for chunk in batch.chunks(self.batch_size) {
            let mut attempt = 1;
            loop {
                match self.storage.inbox_apply(chunk).await {
                    Ok(()) => break,
                    Err(e) if e.is_retryable() && attempt < 3 => {
                        tracing::warn!(error = %e, attempt, conversations = chunk.len(), "inbox write failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        attempt += 1;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, conversations = chunk.len(), "inbox updates not written");
                        self.lost.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(id: &str, stamp: i64, incoming: bool) -> Op {
        Op::Message(InboxMessage {
            remote_jid: "bob@example.org".into(),
            msg_id: id.into(),
            content: format!("<message id='{id}'/>").into(),
            stamp_micros: stamp,
            incoming,
        })
    }

    fn marker(id: &str) -> Op {
        Op::Marker { remote: "bob@example.org".into(), msg_id: id.into() }
    }

    fn merged(ops: &[Op]) -> InboxDelta {
        let mut c = Conversations::default();
        for op in ops {
            merge(&mut c, "example.org", "alice", op.clone()).unwrap();
        }
        assert_eq!(c.len(), 1);
        c.into_values().next().unwrap().delta
    }

    #[test]
    fn coalesces_as_the_messages_would_have_been_written() {
        let d = merged(&[msg("m1", 1, true), msg("m2", 2, true), msg("m3", 3, true)]);
        assert_eq!((d.add, d.reset, &*d.last.unwrap().msg_id), (3, false, "m3"));
        // A reply: only what came after it is unread.
        let d = merged(&[msg("m1", 1, true), msg("r1", 2, false), msg("m2", 3, true)]);
        assert_eq!((d.add, d.reset, &*d.last.unwrap().msg_id), (1, true, "m2"));
        // A late older copy counts but does not become the last message.
        let d = merged(&[msg("m2", 2, true), msg("m1", 1, true)]);
        assert_eq!((d.add, &*d.last.unwrap().msg_id), (2, "m2"));
        // A marker for the pending last message reads everything; for an older one, nothing.
        let d = merged(&[msg("m1", 1, true), msg("m2", 2, true), marker("m1")]);
        assert_eq!((d.add, d.reset), (2, false));
        let d = merged(&[msg("m1", 1, true), msg("m2", 2, true), marker("m2"), msg("m3", 3, true)]);
        assert_eq!((d.add, d.reset), (1, true));
        // With no pending message, markers are tried on the stored entry, first.
        let d = merged(&[marker("s1"), marker("s2"), msg("m1", 5, true)]);
        assert_eq!((d.marks, d.add, d.reset), (vec!["s1".to_owned(), "s2".to_owned()], 1, false));
        let many: Vec<Op> = (0..40).map(|i| marker(&format!("s{i}"))).collect();
        assert_eq!(merged(&many).marks.len(), MAX_MARKS);
    }

    /// The checks made for a received message are kept with the waiting
    /// conversation, for that sender's full JID and that generation of the
    /// blocklists only, and go with the conversation when it is written.
    #[tokio::test]
    async fn checks_are_kept_while_the_conversation_waits() {
        use meerkat_storage::{DbTls, StorageConfig};
        let cfg = StorageConfig {
            url: "sqlite::memory:".into(),
            pool_size: 1,
            connect_timeout: Duration::from_secs(5),
            tls: DbTls::Disabled,
        };
        let storage = Arc::new(Storage::connect(&cfg).await.unwrap());
        let w = AsyncWriter::new(storage.clone(), 2, 500);
        let (id, content): (Arc<str>, Arc<str>) = ("m1".into(), "<message id='m1'/>".into());
        let m =
            MessageRef { remote: "bob@example.org", msg_id: &id, content: &content, stamp_micros: 1, incoming: true };
        let (account, domain, user) = ("alice@example.org", "example.org", "alice");
        let (desk, phone) = ("bob@example.org/desk", "bob@example.org/phone");
        let if_known = |generation, sender| Checks::IfKnown { generation, sender };
        // Nothing waits: the caller has to check.
        assert!(!w.post_message(account, domain, user, m, if_known(3, desk)));
        // The account's own message opens the conversation, with nothing checked.
        assert!(w.post_message(account, domain, user, MessageRef { incoming: false, ..m }, Checks::None));
        assert!(!w.post_message(account, domain, user, m, if_known(3, desk)));
        assert!(w.post_message(account, domain, user, m, Checks::Made { generation: 3, sender: desk }));
        assert!(w.post_message(account, domain, user, m, if_known(3, desk)));
        // Another resource (a blocklist may name full JIDs), another generation: checked again.
        assert!(!w.post_message(account, domain, user, m, if_known(3, phone)));
        assert!(!w.post_message(account, domain, user, m, if_known(4, desk)));
        assert_eq!(w.pending(), 1);
        w.flush_all().await;
        assert_eq!(w.pending(), 0);
        let e = storage.inbox_entry(domain, user, "bob@example.org").await.unwrap().unwrap();
        assert_eq!((e.unread_count, e.msg_id.as_str()), (2, "m1"));
        // Written, it no longer carries the checks.
        assert!(!w.post_message(account, domain, user, m, if_known(3, desk)));
    }

    #[test]
    fn queries_and_actions_do_not_wait() {
        let mut c = Conversations::default();
        assert!(merge(&mut c, "example.org", "alice", Op::Totals).is_err());
        assert!(c.is_empty());
    }
}
