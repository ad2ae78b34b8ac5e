//! The cluster registry.
//!
//! # Layout
//! - [`session_table`] maps every full JID to the node and session that serve
//!   it, with the presence priority the router needs for RFC 6121 §8.5. Routing
//!   reads it without any network round trip.
//! - [`NodeId`] and [`SessionId`] name the places a stanza can be delivered to.
//!
//! On a single node the table is only that node's registry; the replicated
//! table of a multi-node cluster applies the same operations through its log,
//! so callers do not change when a node joins a cluster.
//!
//! **Architecture Invariant:** the table holds plain data (JIDs, ids, numbers).
//! It never holds a mailbox, a socket or an actor address: delivery handles
//! live in `routing`, on the node that owns the session.
#![forbid(unsafe_code)]

pub mod session_table;

pub use session_table::{OpenOutcome, SessionInfo, SessionTable};

use serde::{Deserialize, Serialize};

/// A node of the cluster. A single node is node 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A session, unique within its node for the node's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}
