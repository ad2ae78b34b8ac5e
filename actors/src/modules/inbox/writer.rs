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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meerkat_storage::{InboxDelta, InboxLast, InboxRepo, Storage};

use super::actor::Op;

/// Conversations one shard holds before its poster writes them at once.
pub const MAX_PENDING: usize = 20_000;
/// Chat markers kept for one conversation before a write; beyond, the oldest go.
const MAX_MARKS: usize = 16;

/// The maps' hasher: foldhash, seeded per map, several times faster than
/// SipHash on short keys such as JIDs, and still not predictable by a client.
type Hasher = foldhash::fast::RandomState;

/// One account's pending conversations, by remote bare JID.
type Conversations = HashMap<String, InboxDelta, Hasher>;

#[derive(Default)]
struct Pending {
    /// By account (`user@domain`).
    accounts: HashMap<String, Conversations, Hasher>,
    conversations: usize,
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

/// Merges `op` into `pending` (an account's conversations): whether it
/// opened a conversation there. `Err(op)` when the operation is not an update
/// that can wait (queries and actions).
// The operation comes back unchanged to the caller, which queues it elsewhere.
#[allow(clippy::result_large_err)]
fn merge(pending: &mut Conversations, domain: &str, user: &str, op: Op) -> Result<bool, Op> {
    let remote = match &op {
        Op::Message(m) => &m.remote_jid,
        Op::Marker { remote, .. } => remote,
        _ => return Err(op),
    };
    // A new conversation is looked up twice (was it there, then its
    // entry), one already waiting twice as well (was it there, then get it).
    let fresh = !pending.contains_key(remote.as_str());
    let delta = if fresh {
        let delta = InboxDelta {
            domain: domain.to_owned(),
            user: user.to_owned(),
            remote_jid: remote.clone(),
            ..Default::default()
        };
        pending.entry(remote.clone()).or_insert(delta)
    } else {
        match pending.get_mut(remote.as_str()) {
            Some(d) => d,
            None => return Err(op),
        }
    };
    match op {
        Op::Message(m) => {
            if m.incoming {
                delta.add += 1;
            } else {
                // The account wrote: nothing before is unread.
                delta.reset = true;
                delta.add = 0;
            }
            // An older copy written late counts, but does not replace the last message.
            if delta.last.as_ref().is_none_or(|l| m.stamp_micros >= l.stamp_micros) {
                delta.last = Some(InboxLast { msg_id: m.msg_id, content: m.content, stamp_micros: m.stamp_micros });
            }
        }
        Op::Marker { msg_id, .. } => match &delta.last {
            // The conversation's last message is the pending one.
            Some(last) => {
                if last.msg_id == msg_id {
                    delta.reset = true;
                    delta.add = 0;
                }
            }
            // The last message is the stored one: tried when written.
            None => {
                if delta.marks.len() == MAX_MARKS {
                    delta.marks.remove(0);
                }
                delta.marks.push(msg_id);
            }
        },
        _ => {}
    }
    Ok(fresh)
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
        let conversations = match p.accounts.get_mut(account) {
            Some(c) => c,
            None => p.accounts.entry(account.to_owned()).or_default(),
        };
        if merge(conversations, domain, user, op)? {
            p.conversations += 1;
        }
        Ok(())
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
                    c.into_values().collect()
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
            std::mem::take(&mut p.accounts).into_values().flat_map(|c| c.into_values()).collect()
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
    use meerkat_storage::InboxMessage;

    fn msg(id: &str, stamp: i64, incoming: bool) -> Op {
        Op::Message(InboxMessage {
            remote_jid: "bob@example.org".into(),
            msg_id: id.into(),
            content: format!("<message id='{id}'/>"),
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
        c.into_values().next().unwrap()
    }

    #[test]
    fn coalesces_as_the_messages_would_have_been_written() {
        let d = merged(&[msg("m1", 1, true), msg("m2", 2, true), msg("m3", 3, true)]);
        assert_eq!((d.add, d.reset, d.last.unwrap().msg_id.as_str()), (3, false, "m3"));
        // A reply: only what came after it is unread.
        let d = merged(&[msg("m1", 1, true), msg("r1", 2, false), msg("m2", 3, true)]);
        assert_eq!((d.add, d.reset, d.last.unwrap().msg_id.as_str()), (1, true, "m2"));
        // A late older copy counts but does not become the last message.
        let d = merged(&[msg("m2", 2, true), msg("m1", 1, true)]);
        assert_eq!((d.add, d.last.unwrap().msg_id.as_str()), (2, "m2"));
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

    #[test]
    fn queries_and_actions_do_not_wait() {
        let mut c = Conversations::default();
        assert!(merge(&mut c, "example.org", "alice", Op::Totals).is_err());
        assert!(c.is_empty());
    }
}
