//! The cluster registry: the replicated session table, membership and the
//! node-to-node transport.
//!
//! # Layout
//! - [`session_table`] maps every full JID to the node and session that serve
//!   it, with the presence priority the router needs for RFC 6121 §8.5. Routing
//!   reads it without any network round trip.
//! - [`domain_table`] maps every service and component domain registered at
//!   run time to the node that serves it, replicated the same way.
//! - [`registry_api`]: [`SessionRegistry`], the only way sessions enter or
//!   leave the table: [`StandaloneRegistry`] on a single node, or
//!   [`node::ClusterNode`], which commits every change through Raft first;
//!   [`DomainRegistry`] does the same for domains ([`StandaloneDomains`] or
//!   [`node::ClusterNode`]).
//! - [`command`] (the versioned log commands), [`registry`] (their
//!   deterministic apply), [`store`] (the vote, log and snapshots on disk),
//!   [`types`] (openraft's type config), [`network`] (openraft over the transport).
//! - [`transport`]: framed TCP, optionally mutual TLS, carrying Raft RPCs and stanzas.
//!
//! **Architecture Invariants:**
//! - The table holds plain data (JIDs, ids, numbers). It never holds a
//!   mailbox, a socket or an actor address: delivery handles live in
//!   `routing`, on the node that owns the session.
//! - In a cluster, only applying the log changes other nodes' entries. A node
//!   may change its *own* sessions' priority at once (with a sequence number,
//!   so the later replicated copy of the change is a no-op).
//! - Every queue is bounded: per-peer frames, background proposals, replies.
#![forbid(unsafe_code)]

pub mod cert_identity;
pub mod command;
pub mod domain_table;
pub mod network;
pub mod node;
pub mod peer_auth;
pub mod placement;
pub mod registry;
pub mod registry_api;
pub mod session_table;
pub mod store;
pub mod transport;
pub mod types;

pub use domain_table::{DomainKind, DomainRecord, DomainTable};
pub use registry_api::{
    DomainError, DomainRegistry, Kicker, RegistryError, SessionRegistry, StandaloneDomains, StandaloneRegistry,
};

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
