//! The replicated commands and what applying them answers.
//!
//! Every change to the registry is one [`Command`] in the Raft log. The enum
//! is versioned: a node only ever adds a new version beside the old ones, so a
//! log written by an older release still decodes. `tests::golden_bytes` pins
//! the encoding.

use serde::{Deserialize, Serialize};

use meerkat_xmpp::jid::parse_full;

use crate::domain_table::DomainRecord;
use crate::{NodeId, SessionId, SessionInfo};

/// A session as it travels in the log: plain strings and numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub jid: String,
    pub node: u64,
    pub sid: u64,
    pub priority: Option<i8>,
    pub prio_seq: u64,
    pub created_micros: i64,
}

impl SessionRecord {
    pub fn from_info(info: &SessionInfo, prio_seq: u64) -> Self {
        SessionRecord {
            jid: info.jid.to_string(),
            node: info.node.0,
            sid: info.sid.0,
            priority: info.priority,
            prio_seq,
            created_micros: info.created_micros,
        }
    }

    /// The session, or `None` if the JID does not parse (a log written by a
    /// node with different JID rules): such a record is skipped, never fatal.
    pub fn to_info(&self) -> Option<SessionInfo> {
        Some(SessionInfo {
            jid: parse_full(&self.jid).ok()?,
            node: NodeId(self.node),
            sid: SessionId(self.sid),
            priority: self.priority,
            created_micros: self.created_micros,
        })
    }
}

/// A change to the cluster registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    V1(CommandV1),
    /// Added beside version 1: version 1 commands keep their encoding.
    V2(CommandV2),
}

/// Version 1 of the commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandV1 {
    /// A resource was bound. If its full JID is bound elsewhere, the older session loses.
    OpenSession(SessionRecord),
    /// A session ended.
    CloseSession { jid: String, node: u64, sid: u64 },
    /// A session's presence priority changed; `None` is unavailable.
    SetPriority { jid: String, node: u64, sid: u64, priority: Option<i8>, seq: u64 },
    /// The leader lost contact with a node: its sessions leave the table, and
    /// it may open none until it says [`CommandV1::NodeUp`].
    NodeDown { node: u64 },
    /// A node (re)started or found itself marked down: its entries are replaced
    /// by the sessions it really serves now.
    NodeUp { node: u64, sessions: Vec<SessionRecord> },
    /// A node left the cluster for good.
    NodeRemoved { node: u64 },
}

/// Version 2 of the commands: the table of service and component domains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandV2 {
    /// A service or component domain is served by `node`. Refused when
    /// another node holds the domain.
    RegisterDomain(DomainRecord),
    /// A domain's registration ended; a no-op unless registration `id` of
    /// `node` still holds it.
    UnregisterDomain { domain: String, node: u64, id: u64 },
    /// [`CommandV1::NodeUp`] with the domains the node serves, registered in
    /// the same step, so that they are never missing from the table between
    /// the two (a domain another node took meanwhile stays with that node).
    /// Proposed only by a node that holds domains. Appended last: logs of
    /// earlier versions still decode.
    NodeUpWithDomains { node: u64, sessions: Vec<SessionRecord>, domains: Vec<DomainRecord> },
}

impl From<CommandV2> for Command {
    fn from(c: CommandV2) -> Self {
        Command::V2(c)
    }
}

impl From<CommandV1> for Command {
    fn from(c: CommandV1) -> Self {
        Command::V1(c)
    }
}

/// What applying a command answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Applied (or a no-op: closing an unknown session, a stale priority).
    #[default]
    Done,
    /// `OpenSession`: whether the new session holds its JID, and the session that lost it.
    Opened { accepted: bool, loser: Option<SessionRecord> },
    /// `OpenSession` from a node marked down: it must say `NodeUp` first.
    NodeIsDown,
    /// `RegisterDomain`: the domain is registered.
    DomainRegistered,
    /// `RegisterDomain`: another node holds the domain.
    DomainTaken { holder: DomainRecord },
    /// `NodeUpWithDomains`: the domains that another node held, with their holders.
    DomainsTaken { taken: Vec<DomainRecord> },
}

/// The bincode configuration of everything the cluster writes or sends.
pub fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log written today must decode in every later release.
    #[test]
    fn golden_bytes() {
        let cmd = Command::V1(CommandV1::OpenSession(SessionRecord {
            jid: "a@x/r".into(),
            node: 2,
            sid: 7,
            priority: Some(-1),
            prio_seq: 1,
            created_micros: 1000,
        }));
        let bytes = bincode::serde::encode_to_vec(&cmd, bincode_config()).unwrap();
        assert_eq!(bytes, [0, 0, 5, b'a', b'@', b'x', b'/', b'r', 2, 7, 1, 255, 1, 251, 208, 7]);
        let (back, _): (Command, usize) = bincode::serde::decode_from_slice(&bytes, bincode_config()).unwrap();
        assert_eq!(back, cmd);

        let down =
            bincode::serde::encode_to_vec(Command::V1(CommandV1::NodeDown { node: 3 }), bincode_config()).unwrap();
        assert_eq!(down, [0, 3, 3]);

        let register = Command::V2(CommandV2::RegisterDomain(DomainRecord {
            domain: "c.x".into(),
            node: 2,
            kind: crate::domain_table::DomainKind::Component,
            id: 9,
        }));
        let bytes = bincode::serde::encode_to_vec(&register, bincode_config()).unwrap();
        assert_eq!(bytes, [1, 0, 3, b'c', b'.', b'x', 2, 1, 9]);
        let (back, _): (Command, usize) = bincode::serde::decode_from_slice(&bytes, bincode_config()).unwrap();
        assert_eq!(back, register);
        let unregister = Command::V2(CommandV2::UnregisterDomain { domain: "c.x".into(), node: 2, id: 9 });
        let bytes = bincode::serde::encode_to_vec(&unregister, bincode_config()).unwrap();
        assert_eq!(bytes, [1, 1, 3, b'c', b'.', b'x', 2, 9]);
    }
}
