//! The session table: full JID → (node, session, priority, creation time).
//!
//! RFC 6120 §7.7.2.2: when a second session binds a full JID that is already
//! bound, the older session is terminated with `<conflict/>`. [`SessionTable::open`]
//! reports the displaced session so the caller can kick it.

use std::collections::HashMap;
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
    /// The older session with the same full JID, which must now be closed with `<conflict/>`.
    pub replaced: Option<SessionInfo>,
}

/// The registry of every bound resource, keyed by bare JID.
#[derive(Debug, Default)]
pub struct SessionTable {
    inner: RwLock<HashMap<BareJid, Vec<SessionInfo>>>,
}

impl SessionTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<BareJid, Vec<SessionInfo>>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every write is a single push/remove), so a poisoned lock is still usable.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<BareJid, Vec<SessionInfo>>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a bound resource; the previous holder of the same full JID, if any, is returned.
    pub fn open(&self, info: SessionInfo) -> OpenOutcome {
        let mut map = self.write();
        let list = map.entry(info.jid.to_bare()).or_default();
        let replaced = list.iter().position(|s| s.jid == info.jid).map(|i| list.swap_remove(i));
        list.push(info);
        OpenOutcome { replaced }
    }

    /// Removes a session, only if `sid` still holds the JID (a newer session may have replaced it).
    pub fn close(&self, jid: &FullJid, node: NodeId, sid: SessionId) -> bool {
        let mut map = self.write();
        let bare = jid.to_bare();
        let Some(list) = map.get_mut(&bare) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| !(s.jid == *jid && s.sid == sid && s.node == node));
        let removed = list.len() != before;
        if list.is_empty() {
            map.remove(&bare);
        }
        removed
    }

    /// Sets the presence priority; `None` marks the resource unavailable.
    pub fn set_priority(&self, jid: &FullJid, sid: SessionId, priority: Option<i8>) -> bool {
        let mut map = self.write();
        match map.get_mut(&jid.to_bare()).and_then(|l| l.iter_mut().find(|s| s.jid == *jid && s.sid == sid)) {
            Some(s) => {
                s.priority = priority;
                true
            }
            None => false,
        }
    }

    /// The session bound to a full JID.
    pub fn get(&self, jid: &FullJid) -> Option<SessionInfo> {
        self.read().get(&jid.to_bare()).and_then(|l| l.iter().find(|s| s.jid == *jid).cloned())
    }

    /// Every session of an account.
    pub fn resources(&self, bare: &BareJid) -> Vec<SessionInfo> {
        self.read().get(bare).cloned().unwrap_or_default()
    }

    /// RFC 6121 §8.5.2.1.1: the available resources with the highest non-negative priority.
    pub fn highest_priority(&self, bare: &BareJid) -> Vec<SessionInfo> {
        let map = self.read();
        let Some(list) = map.get(bare) else {
            return Vec::new();
        };
        let best = list.iter().filter_map(|s| s.priority).filter(|p| *p >= 0).max();
        match best {
            Some(best) => list.iter().filter(|s| s.priority == Some(best)).cloned().collect(),
            None => Vec::new(),
        }
    }

    /// Every session, in no particular order.
    pub fn all(&self) -> Vec<SessionInfo> {
        self.read().values().flatten().cloned().collect()
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
        assert_eq!(t.open(info("a@x/r", 1, None)).replaced, None);
        let out = t.open(info("a@x/r", 2, None));
        assert_eq!(out.replaced.map(|s| s.sid), Some(SessionId(1)));
        assert_eq!(t.len(), 1);
        // The displaced session's late close must not remove the new one.
        assert!(!t.close(&parse_full("a@x/r").unwrap(), NodeId(1), SessionId(1)));
        assert_eq!(t.len(), 1);
        assert!(t.close(&parse_full("a@x/r").unwrap(), NodeId(1), SessionId(2)));
        assert!(t.is_empty());
    }

    #[test]
    fn highest_priority_ignores_unavailable_and_negative() {
        let t = SessionTable::new();
        t.open(info("a@x/1", 1, Some(5)));
        t.open(info("a@x/2", 2, Some(5)));
        t.open(info("a@x/3", 3, Some(1)));
        t.open(info("a@x/4", 4, None));
        let bare = parse_full("a@x/1").unwrap().to_bare();
        let mut best: Vec<u64> = t.highest_priority(&bare).iter().map(|s| s.sid.0).collect();
        best.sort();
        assert_eq!(best, vec![1, 2]);

        let t = SessionTable::new();
        t.open(info("b@x/1", 1, Some(-1)));
        t.open(info("b@x/2", 2, None));
        assert!(t.highest_priority(&parse_full("b@x/1").unwrap().to_bare()).is_empty());
    }
}
