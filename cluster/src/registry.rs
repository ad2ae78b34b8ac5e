//! The replicated state: what applying the log builds on every node.
//!
//! [`Registry::apply`] is deterministic: the same commands in the same order
//! give the same table on every node. What a node must *do* about a change
//! (kick its own session that lost its JID, re-register after being marked
//! down) is reported to a [`RegistryObserver`], which acts only on its own
//! node's sessions and never blocks.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResponse, CommandV1, CommandV2, SessionRecord};
use crate::domain_table::{DomainRecord, DomainTable};
use crate::{NodeId, SessionId, SessionInfo, SessionTable};

/// What a node learns from the log about its own sessions.
pub trait RegistryObserver: Send + Sync {
    /// A session lost its full JID to a newer one (RFC 6120 §7.7.2.2). Called
    /// on every node; the node that serves `lost` closes it with `<conflict/>`.
    fn session_lost(&self, lost: &SessionInfo);
    /// A node was marked down. When it is this node, it must re-register the
    /// sessions it still serves.
    fn node_down(&self, node: NodeId);
}

/// The applied state besides Raft's own membership.
pub struct Registry {
    sessions: Arc<SessionTable>,
    domains: Arc<DomainTable>,
    down: BTreeSet<u64>,
    observer: Option<Arc<dyn RegistryObserver>>,
}

/// The registry as a snapshot stores it (snapshot format 2 and later; see
/// `store::state_machine` for how the format is told).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryImage {
    pub sessions: Vec<SessionRecord>,
    pub down: Vec<u64>,
    /// Service and component domains.
    pub domains: Vec<DomainRecord>,
}

/// The registry as snapshots of format 1 stored it, before domains.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryImageV1 {
    pub sessions: Vec<SessionRecord>,
    pub down: Vec<u64>,
}

impl From<RegistryImageV1> for RegistryImage {
    fn from(v1: RegistryImageV1) -> Self {
        RegistryImage { sessions: v1.sessions, down: v1.down, domains: Vec::new() }
    }
}

impl Registry {
    /// A registry applying to `sessions`, with a domain table of its own.
    pub fn new(sessions: Arc<SessionTable>) -> Self {
        Self::with_domains(sessions, Arc::new(DomainTable::new()))
    }

    /// A registry applying to `sessions` and `domains`.
    pub fn with_domains(sessions: Arc<SessionTable>, domains: Arc<DomainTable>) -> Self {
        Registry { sessions, domains, down: BTreeSet::new(), observer: None }
    }

    pub fn domains(&self) -> &Arc<DomainTable> {
        &self.domains
    }

    pub fn set_observer(&mut self, observer: Arc<dyn RegistryObserver>) {
        self.observer = Some(observer);
    }

    pub fn sessions(&self) -> &Arc<SessionTable> {
        &self.sessions
    }

    /// Nodes marked down and not back up.
    pub fn down_nodes(&self) -> Vec<u64> {
        self.down.iter().copied().collect()
    }

    pub fn is_down(&self, node: u64) -> bool {
        self.down.contains(&node)
    }

    fn lost(&self, info: &SessionInfo) {
        if let Some(o) = &self.observer {
            o.session_lost(info);
        }
    }

    fn open(&self, rec: &SessionRecord) -> CommandResponse {
        let Some(info) = rec.to_info() else {
            return CommandResponse::Opened { accepted: false, loser: None };
        };
        let outcome = self.sessions.open(info.clone());
        if outcome.accepted && rec.prio_seq > 0 {
            self.sessions.set_priority(&info.jid, info.node, info.sid, rec.priority, rec.prio_seq);
        }
        if let Some(loser) = &outcome.loser {
            self.lost(loser);
        }
        CommandResponse::Opened {
            accepted: outcome.accepted,
            loser: outcome.loser.map(|l| SessionRecord::from_info(&l, 0)),
        }
    }

    /// Applies one command.
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        match cmd {
            Command::V1(cmd) => self.apply_v1(cmd),
            Command::V2(cmd) => self.apply_v2(cmd),
        }
    }

    fn apply_v2(&mut self, cmd: &CommandV2) -> CommandResponse {
        match cmd {
            CommandV2::RegisterDomain(rec) => {
                if self.down.contains(&rec.node) {
                    return CommandResponse::NodeIsDown;
                }
                match self.domains.claim(rec.clone()) {
                    Ok(()) => CommandResponse::DomainRegistered,
                    Err(holder) => CommandResponse::DomainTaken { holder },
                }
            }
            CommandV2::UnregisterDomain { domain, node, id } => {
                self.domains.release(domain, *node, *id);
                CommandResponse::Done
            }
            CommandV2::NodeUpWithDomains { node, sessions, domains } => {
                self.apply_v1(&CommandV1::NodeUp { node: *node, sessions: sessions.clone() });
                let mut taken = Vec::new();
                for rec in domains.iter().filter(|r| r.node == *node) {
                    if let Err(holder) = self.domains.claim(rec.clone()) {
                        taken.push(holder);
                    }
                }
                CommandResponse::DomainsTaken { taken }
            }
        }
    }

    /// Everything a node served leaves the tables.
    fn forget_node(&self, node: NodeId) {
        self.sessions.remove_node(node);
        self.domains.remove_node(node);
    }

    fn apply_v1(&mut self, cmd: &CommandV1) -> CommandResponse {
        match cmd {
            CommandV1::OpenSession(rec) => {
                if self.down.contains(&rec.node) {
                    return CommandResponse::NodeIsDown;
                }
                self.open(rec)
            }
            CommandV1::CloseSession { jid, node, sid } => {
                if let Ok(jid) = meerkat_xmpp::jid::parse_full(jid) {
                    self.sessions.close(&jid, NodeId(*node), SessionId(*sid));
                }
                CommandResponse::Done
            }
            CommandV1::SetPriority { jid, node, sid, priority, seq } => {
                if let Ok(jid) = meerkat_xmpp::jid::parse_full(jid) {
                    self.sessions.set_priority(&jid, NodeId(*node), SessionId(*sid), *priority, *seq);
                }
                CommandResponse::Done
            }
            CommandV1::NodeDown { node } => {
                if self.down.insert(*node) {
                    self.forget_node(NodeId(*node));
                    if let Some(o) = &self.observer {
                        o.node_down(NodeId(*node));
                    }
                }
                CommandResponse::Done
            }
            CommandV1::NodeUp { node, sessions } => {
                // What a previous incarnation registered goes; the node
                // registers its domains again after this.
                self.down.remove(node);
                self.forget_node(NodeId(*node));
                for rec in sessions.iter().filter(|r| r.node == *node) {
                    self.open(rec);
                }
                CommandResponse::Done
            }
            CommandV1::NodeRemoved { node } => {
                self.down.remove(node);
                self.forget_node(NodeId(*node));
                CommandResponse::Done
            }
        }
    }

    /// A new membership was applied: nodes outside it serve nothing any more.
    pub fn retain_members(&mut self, members: &BTreeSet<u64>) {
        let gone: BTreeSet<NodeId> =
            self.sessions.count_by_node().into_keys().filter(|n| !members.contains(&n.0)).collect();
        for node in gone {
            self.sessions.remove_node(node);
        }
        self.domains.retain_nodes(members);
        self.down.retain(|n| members.contains(n));
    }

    pub fn image(&self) -> RegistryImage {
        RegistryImage {
            sessions: self.sessions.export().iter().map(|(info, seq)| SessionRecord::from_info(info, *seq)).collect(),
            down: self.down_nodes(),
            domains: self.domains.export(),
        }
    }

    pub fn restore(&mut self, image: &RegistryImage) {
        let sessions = image.sessions.iter().filter_map(|r| r.to_info().map(|i| (i, r.prio_seq))).collect();
        self.sessions.replace_all(sessions);
        self.domains.replace_all(image.domains.clone());
        self.down = image.down.iter().copied().collect();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl RegistryObserver for Seen {
        fn session_lost(&self, lost: &SessionInfo) {
            self.0.lock().unwrap().push(format!("lost {} {}", lost.node, lost.sid.0));
        }
        fn node_down(&self, node: NodeId) {
            self.0.lock().unwrap().push(format!("down {node}"));
        }
    }

    fn rec(jid: &str, node: u64, sid: u64, created: i64) -> SessionRecord {
        SessionRecord { jid: jid.into(), node, sid, priority: None, prio_seq: 0, created_micros: created }
    }

    fn open(r: SessionRecord) -> Command {
        CommandV1::OpenSession(r).into()
    }

    #[test]
    fn duplicate_full_jid_on_two_nodes_keeps_the_newer() {
        let seen = Arc::new(Seen::default());
        let mut reg = Registry::new(Arc::new(SessionTable::new()));
        reg.set_observer(seen.clone());
        reg.apply(&open(rec("a@x/r", 1, 10, 100)));
        let r = reg.apply(&open(rec("a@x/r", 3, 30, 200)));
        assert_eq!(r, CommandResponse::Opened { accepted: true, loser: Some(rec("a@x/r", 1, 10, 100)) });
        assert_eq!(*seen.0.lock().unwrap(), vec!["lost 1 10"]);
        assert_eq!(reg.sessions().len(), 1);
    }

    #[test]
    fn node_down_removes_its_sessions_and_refuses_opens_until_up() {
        let seen = Arc::new(Seen::default());
        let mut reg = Registry::new(Arc::new(SessionTable::new()));
        reg.set_observer(seen.clone());
        reg.apply(&open(rec("a@x/r", 2, 1, 1)));
        reg.apply(&open(rec("b@x/r", 1, 2, 1)));
        reg.apply(&CommandV1::NodeDown { node: 2 }.into());
        assert_eq!(reg.sessions().len(), 1);
        assert_eq!(reg.apply(&open(rec("c@x/r", 2, 3, 1))), CommandResponse::NodeIsDown);
        // Marking it down twice reports once.
        reg.apply(&CommandV1::NodeDown { node: 2 }.into());
        assert_eq!(*seen.0.lock().unwrap(), vec!["down 2"]);
        reg.apply(&CommandV1::NodeUp { node: 2, sessions: vec![rec("a@x/r", 2, 1, 1)] }.into());
        assert!(!reg.is_down(2));
        assert_eq!(reg.sessions().len(), 2);
    }

    #[test]
    fn image_round_trip_and_membership_purge() {
        let mut reg = Registry::new(Arc::new(SessionTable::new()));
        reg.apply(&open(rec("a@x/r", 1, 1, 1)));
        reg.apply(&open(rec("b@x/r", 2, 2, 1)));
        reg.apply(&CommandV1::SetPriority { jid: "a@x/r".into(), node: 1, sid: 1, priority: Some(3), seq: 4 }.into());
        reg.apply(&CommandV1::NodeDown { node: 4 }.into());
        let image = reg.image();
        let mut copy = Registry::new(Arc::new(SessionTable::new()));
        copy.restore(&image);
        assert_eq!(copy.image(), image);
        reg.retain_members(&[1, 3].into_iter().collect());
        assert_eq!(reg.sessions().len(), 1);
        assert!(reg.down_nodes().is_empty());
    }

    fn domain(domain: &str, node: u64, id: u64) -> DomainRecord {
        DomainRecord { domain: domain.into(), node, kind: crate::domain_table::DomainKind::Service, id }
    }

    fn register(rec: DomainRecord) -> Command {
        CommandV2::RegisterDomain(rec).into()
    }

    #[test]
    fn register_and_unregister_domains() {
        let mut reg = Registry::new(Arc::new(SessionTable::new()));
        assert_eq!(reg.apply(&register(domain("pubsub.x", 1, 1))), CommandResponse::DomainRegistered);
        // Another node cannot take it; the holder is named.
        assert_eq!(
            reg.apply(&register(domain("pubsub.x", 2, 7))),
            CommandResponse::DomainTaken { holder: domain("pubsub.x", 1, 1) }
        );
        // The same command applied twice changes nothing.
        assert_eq!(reg.apply(&register(domain("pubsub.x", 1, 1))), CommandResponse::DomainRegistered);
        // Another node's unregistration, or a stale one, is a no-op.
        reg.apply(&CommandV2::UnregisterDomain { domain: "pubsub.x".into(), node: 2, id: 7 }.into());
        reg.apply(&CommandV2::UnregisterDomain { domain: "pubsub.x".into(), node: 1, id: 0 }.into());
        assert_eq!(reg.domains().get("pubsub.x"), Some(domain("pubsub.x", 1, 1)));
        reg.apply(&CommandV2::UnregisterDomain { domain: "pubsub.x".into(), node: 1, id: 1 }.into());
        assert!(reg.domains().is_empty());
        assert_eq!(reg.apply(&register(domain("pubsub.x", 2, 7))), CommandResponse::DomainRegistered);
    }

    #[test]
    fn a_node_down_up_or_removed_loses_its_domains() {
        let mut reg = Registry::new(Arc::new(SessionTable::new()));
        reg.apply(&register(domain("a.x", 1, 1)));
        reg.apply(&register(domain("b.x", 2, 1)));
        reg.apply(&register(domain("c.x", 3, 1)));
        reg.apply(&CommandV1::NodeDown { node: 2 }.into());
        assert_eq!(reg.domains().get("b.x"), None);
        // A node marked down registers nothing until it is up again.
        assert_eq!(reg.apply(&register(domain("b.x", 2, 2))), CommandResponse::NodeIsDown);
        reg.apply(&CommandV1::NodeUp { node: 2, sessions: vec![] }.into());
        assert_eq!(reg.apply(&register(domain("b.x", 2, 2))), CommandResponse::DomainRegistered);
        // A restarted node's NodeUp clears what its previous incarnation left.
        reg.apply(&CommandV1::NodeUp { node: 1, sessions: vec![] }.into());
        assert_eq!(reg.domains().get("a.x"), None);
        reg.apply(&CommandV1::NodeRemoved { node: 2 }.into());
        assert_eq!(reg.domains().get("b.x"), None);
        reg.retain_members(&[1, 2].into_iter().collect());
        assert!(reg.domains().is_empty(), "node 3 is no member any more");
    }

    #[test]
    fn a_node_up_with_its_domains_registers_them_in_the_same_step() {
        let mut reg = Registry::new(Arc::new(SessionTable::new()));
        reg.apply(&register(domain("a.x", 1, 1)));
        reg.apply(&register(domain("b.x", 1, 2)));
        reg.apply(&CommandV1::NodeDown { node: 1 }.into());
        assert!(reg.domains().is_empty());
        // Node 2 took b.x while node 1 was down.
        reg.apply(&register(domain("b.x", 2, 7)));
        let up = CommandV2::NodeUpWithDomains {
            node: 1,
            sessions: vec![rec("a@x/r", 1, 1, 1)],
            // A record of another node in the list is ignored.
            domains: vec![domain("a.x", 1, 3), domain("b.x", 1, 4), domain("c.x", 3, 1)],
        };
        assert_eq!(reg.apply(&up.into()), CommandResponse::DomainsTaken { taken: vec![domain("b.x", 2, 7)] });
        assert_eq!(reg.domains().get("a.x"), Some(domain("a.x", 1, 3)));
        assert_eq!(reg.domains().get("b.x"), Some(domain("b.x", 2, 7)));
        assert_eq!(reg.domains().get("c.x"), None);
        assert_eq!(reg.sessions().len(), 1);
    }

    #[test]
    fn image_round_trip_includes_domains() {
        let mut reg = Registry::new(Arc::new(SessionTable::new()));
        reg.apply(&open(rec("a@x/r", 1, 1, 1)));
        reg.apply(&register(domain("muclight.x", 2, 4)));
        let image = reg.image();
        assert_eq!(image.domains, vec![domain("muclight.x", 2, 4)]);
        let mut copy = Registry::new(Arc::new(SessionTable::new()));
        copy.restore(&image);
        assert_eq!(copy.image(), image);
        assert_eq!(copy.domains().get("muclight.x").map(|r| r.node), Some(2));
    }
}
