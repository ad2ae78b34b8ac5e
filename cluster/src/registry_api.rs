//! How the session layer changes the registry, alone or in a cluster.
//!
//! [`SessionRegistry`] is the only way sessions enter, change or leave the
//! [`SessionTable`]. A single node applies changes at once
//! ([`StandaloneRegistry`]); a cluster member commits them through the Raft
//! log first ([`crate::node::ClusterNode`]). Either way the registry itself
//! closes a session that loses its full JID, through the kicker the session
//! layer installs.
//!
//! [`DomainRegistry`] is the same for service and component domains: the
//! only way they enter or leave the [`DomainTable`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use meerkat_xmpp::jid::FullJid;

use crate::domain_table::{DomainRecord, DomainTable};
use crate::{NodeId, OpenOutcome, SessionId, SessionInfo, SessionTable};

/// Closes a local session that lost its full JID (`<conflict/>`).
pub type Kicker = Arc<dyn Fn(SessionId) + Send + Sync>;

/// Why a session could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// This node cannot reach a majority of the cluster.
    #[error("this node cannot reach a majority of the cluster ({0}); connect to another node")]
    NoQuorum(String),
    /// The node has not finished joining the cluster yet.
    #[error("this node is not ready to serve sessions yet ({0})")]
    NotReady(String),
}

/// The registry as the session layer sees it.
#[async_trait::async_trait]
pub trait SessionRegistry: Send + Sync {
    /// The table routing reads.
    fn table(&self) -> &Arc<SessionTable>;
    /// This node.
    fn node(&self) -> NodeId;
    /// Installs how a local session that lost its JID is closed.
    fn set_kicker(&self, kicker: Kicker);
    /// Registers a newly bound resource and waits until it is routable.
    async fn open(&self, info: SessionInfo) -> Result<OpenOutcome, RegistryError>;
    /// Unregisters a session; does not wait.
    fn close(&self, info: &SessionInfo);
    /// Records a presence priority change; `None` is unavailable. Takes effect
    /// at once for routing on this node.
    fn set_priority(&self, jid: &FullJid, sid: SessionId, priority: Option<i8>);
}

/// The registry of a node that is not part of a cluster.
pub struct StandaloneRegistry {
    node: NodeId,
    table: Arc<SessionTable>,
    kicker: OnceLock<Kicker>,
    seq: AtomicU64,
}

impl StandaloneRegistry {
    pub fn new(node: NodeId, table: Arc<SessionTable>) -> Self {
        StandaloneRegistry { node, table, kicker: OnceLock::new(), seq: AtomicU64::new(1) }
    }
}

#[async_trait::async_trait]
impl SessionRegistry for StandaloneRegistry {
    fn table(&self) -> &Arc<SessionTable> {
        &self.table
    }

    fn node(&self) -> NodeId {
        self.node
    }

    fn set_kicker(&self, kicker: Kicker) {
        let _ = self.kicker.set(kicker);
    }

    async fn open(&self, info: SessionInfo) -> Result<OpenOutcome, RegistryError> {
        let outcome = self.table.open(info);
        if let (Some(loser), Some(kick)) = (&outcome.loser, self.kicker.get()) {
            kick(loser.sid);
        }
        Ok(outcome)
    }

    fn close(&self, info: &SessionInfo) {
        self.table.close(&info.jid, info.node, info.sid);
    }

    fn set_priority(&self, jid: &FullJid, sid: SessionId, priority: Option<i8>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.table.set_priority(jid, self.node, sid, priority, seq);
    }
}

/// Why a domain could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// Another node holds the domain: a refusal, retrying will not help.
    #[error("domain {} is served by node {}", .0.domain, .0.node)]
    Taken(DomainRecord),
    /// The registration could not be committed: retry, or connect elsewhere.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The domain table as the router sees it.
#[async_trait::async_trait]
pub trait DomainRegistry: Send + Sync {
    /// The table routing reads.
    fn domains(&self) -> &Arc<DomainTable>;
    /// Registers a domain for this node and waits until it is routable: in a
    /// cluster, committed and applied on this node.
    async fn claim_domain(&self, record: DomainRecord) -> Result<(), DomainError>;
    /// Unregisters a domain; does not wait.
    fn release_domain(&self, record: &DomainRecord);
}

/// The domains of a node that is not part of a cluster.
#[derive(Default)]
pub struct StandaloneDomains {
    domains: Arc<DomainTable>,
}

impl StandaloneDomains {
    pub fn new(domains: Arc<DomainTable>) -> Self {
        StandaloneDomains { domains }
    }
}

#[async_trait::async_trait]
impl DomainRegistry for StandaloneDomains {
    fn domains(&self) -> &Arc<DomainTable> {
        &self.domains
    }

    async fn claim_domain(&self, record: DomainRecord) -> Result<(), DomainError> {
        self.domains.claim(record).map_err(DomainError::Taken)
    }

    fn release_domain(&self, record: &DomainRecord) {
        self.domains.release(&record.domain, record.node, record.id);
    }
}
