//! The domain table: service and component domain → (node, kind, registration).
//!
//! Local hosts come from the configuration and are the same on every node;
//! this table holds the domains that a service or a component (XEP-0114)
//! registers at run time, and which node serves each. A domain has at most
//! one holder: [`DomainTable::claim`] refuses a domain another node holds,
//! as MongooseIM's `mongoose_component` refuses a route that already exists.
//! The table holds plain data only; the handler that takes the stanzas lives
//! in `routing`, on the node that holds the domain.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// What serves a registered domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DomainKind {
    /// A module or service of the server (`pubsub.HOST`, `muclight.HOST`).
    Service,
    /// An external component connected over XEP-0114.
    Component,
    /// A component routed to like any other but left out of the service
    /// discovery that clients get (MongooseIM's `hidden_components`).
    /// Appended last: logs and snapshots written before it still decode.
    HiddenComponent,
}

impl DomainKind {
    /// The link of the table of routes that takes the domain: hidden
    /// components are components.
    pub fn link(self) -> DomainKind {
        match self {
            DomainKind::HiddenComponent => DomainKind::Component,
            k => k,
        }
    }

    /// Left out of the disco#items clients get.
    pub fn is_hidden(self) -> bool {
        self == DomainKind::HiddenComponent
    }
}

impl std::fmt::Display for DomainKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DomainKind::Service => "service",
            DomainKind::Component => "component",
            DomainKind::HiddenComponent => "hidden component",
        })
    }
}

/// One registered domain, as the log and snapshots carry it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DomainRecord {
    /// The canonical domain (`meerkat_xmpp::jid::canonical_domain`).
    pub domain: String,
    /// The node whose handler takes the domain's stanzas.
    pub node: u64,
    pub kind: DomainKind,
    /// Tells this registration from an earlier one of the same domain by the
    /// same node, so that a late unregistration of the earlier one is a no-op.
    pub id: u64,
}

/// Every registered domain, keyed by canonical domain.
#[derive(Debug, Default)]
pub struct DomainTable {
    inner: RwLock<BTreeMap<String, DomainRecord>>,
}

impl DomainTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, DomainRecord>> {
        // Every write is one insert or remove, so a poisoned lock still holds a whole map.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, DomainRecord>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a domain. Refused with the current holder when another node
    /// holds it. The same node may register it again (the same command
    /// applied twice, or a registration that replaces one it dropped).
    #[allow(clippy::result_large_err)]
    pub fn claim(&self, rec: DomainRecord) -> Result<(), DomainRecord> {
        let mut map = self.write();
        match map.get(&rec.domain) {
            Some(held) if held.node != rec.node => Err(held.clone()),
            _ => {
                map.insert(rec.domain.clone(), rec);
                Ok(())
            }
        }
    }

    /// Unregisters a domain, only if this registration still holds it.
    pub fn release(&self, domain: &str, node: u64, id: u64) -> bool {
        let mut map = self.write();
        match map.get(domain) {
            Some(held) if held.node == node && held.id == id => map.remove(domain).is_some(),
            _ => false,
        }
    }

    /// The holder of a domain.
    pub fn get(&self, domain: &str) -> Option<DomainRecord> {
        self.read().get(domain).cloned()
    }

    /// Whether a domain is registered.
    pub fn contains(&self, domain: &str) -> bool {
        self.read().contains_key(domain)
    }

    /// Removes every domain a node holds and returns them.
    pub fn remove_node(&self, node: NodeId) -> Vec<DomainRecord> {
        let mut map = self.write();
        let mut removed = Vec::new();
        map.retain(|_, rec| {
            if rec.node == node.0 {
                removed.push(rec.clone());
                false
            } else {
                true
            }
        });
        removed
    }

    /// Removes the domains of every node not in `members`.
    pub fn retain_nodes(&self, members: &BTreeSet<u64>) {
        self.write().retain(|_, rec| members.contains(&rec.node));
    }

    /// The domains one node holds.
    pub fn domains_of(&self, node: NodeId) -> Vec<DomainRecord> {
        self.read().values().filter(|r| r.node == node.0).cloned().collect()
    }

    /// The whole table, sorted by domain, for snapshots and comparisons.
    pub fn export(&self) -> Vec<DomainRecord> {
        self.read().values().cloned().collect()
    }

    /// Replaces the whole table (installing a snapshot).
    pub fn replace_all(&self, records: Vec<DomainRecord>) {
        *self.write() = records.into_iter().map(|r| (r.domain.clone(), r)).collect();
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(domain: &str, node: u64, id: u64) -> DomainRecord {
        DomainRecord { domain: domain.into(), node, kind: DomainKind::Component, id }
    }

    #[test]
    fn a_domain_has_one_holder_and_a_stale_release_is_a_no_op() {
        let t = DomainTable::new();
        assert_eq!(t.claim(rec("irc.x", 1, 1)), Ok(()));
        assert_eq!(t.claim(rec("irc.x", 2, 5)), Err(rec("irc.x", 1, 1)));
        // The holder registers it again: the newer registration replaces the older.
        assert_eq!(t.claim(rec("irc.x", 1, 2)), Ok(()));
        assert!(!t.release("irc.x", 1, 1), "the release of the replaced registration");
        assert!(!t.release("irc.x", 2, 2), "another node's release");
        assert_eq!(t.get("irc.x"), Some(rec("irc.x", 1, 2)));
        assert!(t.release("irc.x", 1, 2));
        assert!(t.is_empty());
    }

    #[test]
    fn remove_node_and_export_round_trip() {
        let t = DomainTable::new();
        t.claim(rec("b.x", 2, 1)).unwrap();
        t.claim(rec("a.x", 1, 1)).unwrap();
        t.claim(rec("c.x", 2, 2)).unwrap();
        let copy = DomainTable::new();
        copy.replace_all(t.export());
        assert_eq!(copy.export(), t.export());
        assert_eq!(t.export().iter().map(|r| r.domain.as_str()).collect::<Vec<_>>(), ["a.x", "b.x", "c.x"]);
        assert_eq!(t.remove_node(NodeId(2)).len(), 2);
        assert_eq!(t.domains_of(NodeId(1)), vec![rec("a.x", 1, 1)]);
        t.retain_nodes(&BTreeSet::from([3]));
        assert!(t.is_empty());
    }
}
