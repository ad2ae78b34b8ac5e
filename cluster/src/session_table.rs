//! The session table: full JID → (node, session, priority, creation time).
//!
//! RFC 6120 §7.7.2.2: when a second session binds a full JID that is already
//! bound, the older session is terminated with `<conflict/>`. [`SessionTable::open`]
//! reports the displaced session so the caller can kick it.

use meerkat_xmpp::jid::Bare as _;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use meerkat_xmpp::jid::{BareJid, FullJid};

use crate::{NodeId, SessionId};

/// One bound resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub jid: FullJid,
    pub node: NodeId,
    pub sid: SessionId,
    /// `None` until the session sends available presence (RFC 6121 §4.2);
    /// an unavailable resource never receives messages sent to the bare JID.
    pub priority: Option<i8>,
    pub created_micros: i64,
}

/// What [`SessionTable::open`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct OpenOutcome {
    /// The new session is in the table. It is not when an existing session
    /// with the same full JID was created later (a node re-registering its
    /// sessions after a partition): the newer one keeps the JID.
    pub accepted: bool,
    /// The session that lost the full JID and must now be closed with
    /// `<conflict/>`: the older holder, or the new session if it was refused.
    pub loser: Option<SessionInfo>,
}

/// The order in which two sessions bound the same full JID: the greater one is newer.
fn age_key(s: &SessionInfo) -> (i64, NodeId, SessionId) {
    (s.created_micros, s.node, s.sid)
}

#[derive(Clone, Debug)]
struct Entry {
    info: SessionInfo,
    /// Sequence number of the last priority change, so that a late replicated
    /// change never overwrites a newer one the owning node already applied.
    prio_seq: u64,
}

/// The registry of every bound resource, keyed by bare JID.
#[derive(Debug, Default)]
pub struct SessionTable {
    inner: RwLock<HashMap<BareJid, Vec<Entry>>>,
    /// Nodes this node cannot hear from: their sessions stay in the table
    /// (only a commit removes them) but are not offered to routing, so that
    /// a stanza goes to another resource or offline storage rather than to
    /// a node that will not take it. Local to this node, not replicated.
    unreachable: RwLock<HashSet<NodeId>>,
    /// Whether `unreachable` is not empty: lookups skip its lock otherwise.
    any_unreachable: AtomicBool,
    /// The cluster's members as this node last saw them (empty outside a
    /// cluster). Local to this node, as `unreachable` is.
    members: RwLock<Vec<NodeId>>,
}

impl SessionTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<BareJid, Vec<Entry>>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every write is a single push/remove), so a poisoned lock is still usable.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<BareJid, Vec<Entry>>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks whether `node` is reachable from here; true when that changed.
    pub fn set_unreachable(&self, node: NodeId, unreachable: bool) -> bool {
        let mut set = self.unreachable.write().unwrap_or_else(|e| e.into_inner());
        let changed = if unreachable { set.insert(node) } else { set.remove(&node) };
        self.any_unreachable.store(!set.is_empty(), Ordering::Release);
        changed
    }

    /// Sets the cluster's members as this node sees them now.
    pub fn set_members(&self, members: impl IntoIterator<Item = NodeId>) {
        let mut list: Vec<NodeId> = members.into_iter().collect();
        list.sort();
        list.dedup();
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = list;
    }

    /// The members this node can reach, `me` included, in id order: what
    /// placing work by a hash over the live members uses. Outside a cluster,
    /// `me` alone. Each node has its own view, so two nodes may briefly
    /// disagree about it.
    pub fn live_nodes(&self, me: NodeId) -> Vec<NodeId> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner()).clone();
        let unreachable = self.unreachable.read().unwrap_or_else(|e| e.into_inner());
        let mut live: Vec<NodeId> = members.into_iter().filter(|n| *n == me || !unreachable.contains(n)).collect();
        if !live.contains(&me) {
            live.push(me);
            live.sort();
        }
        live
    }

    /// The nodes marked unreachable from here.
    pub fn unreachable_nodes(&self) -> Vec<NodeId> {
        self.unreachable.read().unwrap_or_else(|e| e.into_inner()).iter().copied().collect()
    }

    /// The entries routing may use: those of reachable nodes.
    fn routable<'a>(&self, list: &'a [Entry]) -> impl Iterator<Item = &'a Entry> {
        let hidden: Option<HashSet<NodeId>> = self
            .any_unreachable
            .load(Ordering::Acquire)
            .then(|| self.unreachable.read().unwrap_or_else(|e| e.into_inner()).clone());
        list.iter().filter(move |e| hidden.as_ref().is_none_or(|h| !h.contains(&e.info.node)))
    }

    /// Registers a bound resource. When the full JID is already bound, the
    /// older of the two sessions loses it (RFC 6120 §7.7.2.2) and is returned.
    pub fn open(&self, info: SessionInfo) -> OpenOutcome {
        let mut map = self.write();
        let list = map.entry(info.jid.bare()).or_default();
        if list.iter().any(|e| e.info.node == info.node && e.info.sid == info.sid) {
            // The same session registered twice (a retried command): nothing changes.
            return OpenOutcome { accepted: true, loser: None };
        }
        match list.iter().position(|e| e.info.jid == info.jid) {
            Some(i) if age_key(&list[i].info) > age_key(&info) => OpenOutcome { accepted: false, loser: Some(info) },
            Some(i) => {
                let old = list.swap_remove(i);
                list.push(Entry { info, prio_seq: 0 });
                OpenOutcome { accepted: true, loser: Some(old.info) }
            }
            None => {
                list.push(Entry { info, prio_seq: 0 });
                OpenOutcome { accepted: true, loser: None }
            }
        }
    }

    /// Removes a session, only if `sid` still holds the JID (a newer session may have replaced it).
    pub fn close(&self, jid: &FullJid, node: NodeId, sid: SessionId) -> bool {
        let mut map = self.write();
        let bare = jid.bare();
        let Some(list) = map.get_mut(&bare) else {
            return false;
        };
        let before = list.len();
        list.retain(|e| !(e.info.jid == *jid && e.info.sid == sid && e.info.node == node));
        let removed = list.len() != before;
        if list.is_empty() {
            map.remove(&bare);
        }
        removed
    }

    /// Sets the presence priority; `None` marks the resource unavailable. A
    /// change older than the last one applied (by `seq`) is ignored.
    pub fn set_priority(&self, jid: &FullJid, node: NodeId, sid: SessionId, priority: Option<i8>, seq: u64) -> bool {
        let mut map = self.write();
        let entry = map
            .get_mut(&jid.bare())
            .and_then(|l| l.iter_mut().find(|e| e.info.jid == *jid && e.info.sid == sid && e.info.node == node));
        match entry {
            Some(e) if seq >= e.prio_seq => {
                e.info.priority = priority;
                e.prio_seq = seq;
                true
            }
            _ => false,
        }
    }

    /// Removes every session of a node and returns them.
    pub fn remove_node(&self, node: NodeId) -> Vec<SessionInfo> {
        let mut map = self.write();
        let mut removed = Vec::new();
        map.retain(|_, list| {
            list.retain(|e| {
                if e.info.node == node {
                    removed.push(e.info.clone());
                    false
                } else {
                    true
                }
            });
            !list.is_empty()
        });
        removed
    }

    /// Every session bound on one node.
    pub fn sessions_of(&self, node: NodeId) -> Vec<SessionInfo> {
        self.read().values().flatten().filter(|e| e.info.node == node).map(|e| e.info.clone()).collect()
    }

    /// Number of sessions per node.
    pub fn count_by_node(&self) -> std::collections::BTreeMap<NodeId, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for e in self.read().values().flatten() {
            *counts.entry(e.info.node).or_insert(0) += 1;
        }
        counts
    }

    /// The whole table with priority sequence numbers, sorted, for snapshots and comparisons.
    pub fn export(&self) -> Vec<(SessionInfo, u64)> {
        let mut all: Vec<(SessionInfo, u64)> =
            self.read().values().flatten().map(|e| (e.info.clone(), e.prio_seq)).collect();
        all.sort_by(|a, b| (a.0.jid.as_str(), a.0.node, a.0.sid).cmp(&(b.0.jid.as_str(), b.0.node, b.0.sid)));
        all
    }

    /// Replaces the whole table (installing a snapshot).
    pub fn replace_all(&self, sessions: Vec<(SessionInfo, u64)>) {
        let mut map: HashMap<BareJid, Vec<Entry>> = HashMap::new();
        for (info, prio_seq) in sessions {
            map.entry(info.jid.bare()).or_default().push(Entry { info, prio_seq });
        }
        *self.write() = map;
    }

    /// The session bound to a full JID (on a reachable node).
    pub fn get(&self, jid: &FullJid) -> Option<SessionInfo> {
        self.read().get(&jid.bare()).and_then(|l| self.routable(l).find(|e| e.info.jid == *jid).map(|e| e.info.clone()))
    }

    /// Every session of an account (on reachable nodes).
    pub fn resources(&self, bare: &BareJid) -> Vec<SessionInfo> {
        self.read().get(bare).map(|l| self.routable(l).map(|e| e.info.clone()).collect()).unwrap_or_default()
    }

    /// The other sessions of `jid`'s account (on reachable nodes); no allocation when there are none.
    pub fn other_resources(&self, jid: &FullJid) -> Vec<SessionInfo> {
        self.read()
            .get(&jid.bare())
            .map(|l| self.routable(l).filter(|e| e.info.jid != *jid).map(|e| e.info.clone()).collect())
            .unwrap_or_default()
    }

    /// RFC 6121 §8.5.2.1.1: the available resources with the highest
    /// non-negative priority (on reachable nodes).
    pub fn highest_priority(&self, bare: &BareJid) -> Vec<SessionInfo> {
        let map = self.read();
        let Some(list) = map.get(bare) else {
            return Vec::new();
        };
        let best = self.routable(list).filter_map(|e| e.info.priority).filter(|p| *p >= 0).max();
        match best {
            Some(best) => {
                self.routable(list).filter(|e| e.info.priority == Some(best)).map(|e| e.info.clone()).collect()
            }
            None => Vec::new(),
        }
    }

    /// Every session, in no particular order.
    pub fn all(&self) -> Vec<SessionInfo> {
        self.read().values().flatten().map(|e| e.info.clone()).collect()
    }

    /// Number of bound resources.
    pub fn len(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meerkat_xmpp::jid::parse_full;

    fn info(jid: &str, sid: u64, prio: Option<i8>) -> SessionInfo {
        SessionInfo {
            jid: parse_full(jid).unwrap(),
            node: NodeId(1),
            sid: SessionId(sid),
            priority: prio,
            created_micros: sid as i64,
        }
    }

    #[test]
    fn same_full_jid_replaces_older_session() {
        let t = SessionTable::new();
        assert_eq!(t.open(info("a@x/r", 1, None)).loser, None);
        let out = t.open(info("a@x/r", 2, None));
        assert!(out.accepted);
        assert_eq!(out.loser.map(|s| s.sid), Some(SessionId(1)));
        assert_eq!(t.len(), 1);
        // The displaced session's late close must not remove the new one.
        assert!(!t.close(&parse_full("a@x/r").unwrap(), NodeId(1), SessionId(1)));
        assert_eq!(t.len(), 1);
        assert!(t.close(&parse_full("a@x/r").unwrap(), NodeId(1), SessionId(2)));
        assert!(t.is_empty());
    }

    #[test]
    fn an_older_session_arriving_late_loses_the_jid() {
        let t = SessionTable::new();
        t.open(info("a@x/r", 5, None));
        let out = t.open(info("a@x/r", 3, None));
        assert!(!out.accepted);
        assert_eq!(out.loser.map(|s| s.sid), Some(SessionId(3)));
        assert_eq!(t.get(&parse_full("a@x/r").unwrap()).map(|s| s.sid), Some(SessionId(5)));
        // The same command applied twice changes nothing.
        assert_eq!(t.open(info("a@x/r", 5, None)), OpenOutcome { accepted: true, loser: None });
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn late_priority_changes_do_not_overwrite_newer_ones() {
        let t = SessionTable::new();
        let j = parse_full("a@x/r").unwrap();
        t.open(info("a@x/r", 1, None));
        assert!(t.set_priority(&j, NodeId(1), SessionId(1), Some(5), 2));
        assert!(!t.set_priority(&j, NodeId(1), SessionId(1), Some(1), 1));
        assert_eq!(t.get(&j).and_then(|s| s.priority), Some(5));
        assert!(!t.set_priority(&j, NodeId(2), SessionId(1), Some(1), 3), "another node's session of the same id");
    }

    #[test]
    fn remove_node_and_export_round_trip() {
        let t = SessionTable::new();
        t.open(info("a@x/r", 1, Some(1)));
        let mut other = info("b@x/r", 2, None);
        other.node = NodeId(2);
        t.open(other);
        let copy = SessionTable::new();
        copy.replace_all(t.export());
        assert_eq!(copy.export(), t.export());
        assert_eq!(t.count_by_node().get(&NodeId(2)), Some(&1));
        assert_eq!(t.remove_node(NodeId(2)).len(), 1);
        assert_eq!(t.len(), 1);
        assert!(t.sessions_of(NodeId(2)).is_empty());
    }

    #[test]
    fn sessions_of_an_unreachable_node_are_not_routed_to_until_it_answers() {
        let t = SessionTable::new();
        t.open(info("a@x/1", 1, Some(5)));
        t.open(SessionInfo { node: NodeId(2), ..info("a@x/2", 2, Some(5)) });
        let bare = parse_full("a@x/1").unwrap().bare();
        let node_of_2 = NodeId(2);
        assert!(t.set_unreachable(node_of_2, true));
        assert!(!t.set_unreachable(node_of_2, true), "no change the second time");
        assert!(t.get(&parse_full("a@x/2").unwrap()).is_none());
        assert_eq!(t.resources(&bare).len(), 1);
        assert_eq!(t.highest_priority(&bare).len(), 1);
        assert!(t.other_resources(&parse_full("a@x/1").unwrap()).is_empty());
        // Still in the replicated table: only a commit removes it.
        assert_eq!(t.len(), 2);
        assert!(t.set_unreachable(node_of_2, false));
        assert_eq!(t.highest_priority(&bare).len(), 2);
    }

    #[test]
    fn highest_priority_ignores_unavailable_and_negative() {
        let t = SessionTable::new();
        t.open(info("a@x/1", 1, Some(5)));
        t.open(info("a@x/2", 2, Some(5)));
        t.open(info("a@x/3", 3, Some(1)));
        t.open(info("a@x/4", 4, None));
        let bare = parse_full("a@x/1").unwrap().bare();
        let mut best: Vec<u64> = t.highest_priority(&bare).iter().map(|s| s.sid.0).collect();
        best.sort();
        assert_eq!(best, vec![1, 2]);

        let t = SessionTable::new();
        t.open(info("b@x/1", 1, Some(-1)));
        t.open(info("b@x/2", 2, None));
        assert!(t.highest_priority(&parse_full("b@x/1").unwrap().bare()).is_empty());
    }
}
