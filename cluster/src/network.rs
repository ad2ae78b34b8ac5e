//! openraft's network, over the cluster [`Transport`].

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::transport::{Request, Response, Transport, TransportError, WireError};
use crate::types::{MemberNode, TypeConfig};

/// Hands out one [`PeerNetwork`] per replication target.
#[derive(Clone)]
pub struct Network {
    pub transport: Arc<Transport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> PeerNetwork {
        self.transport.set_address(target, &node.addr);
        PeerNetwork { transport: self.transport.clone(), target }
    }
}

/// Raft RPCs to one peer.
pub struct PeerNetwork {
    transport: Arc<Transport>,
    target: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

fn rpc_error<E: std::error::Error>(target: u64, e: TransportError) -> RPCError<u64, MemberNode, RaftError<u64, E>> {
    match e {
        TransportError::Remote(WireError::Failed(m)) => RPCError::Network(NetworkError::new(&Msg(m))),
        TransportError::Remote(e) => RPCError::Network(NetworkError::new(&e)),
        other => RPCError::Unreachable(Unreachable::new(&Msg(format!("node {target}: {other}")))),
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<u64, MemberNode, RaftError<u64, E>> {
    RPCError::Network(NetworkError::new(&Msg("unexpected response type".into())))
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        match self.transport.request(self.target, Request::AppendEntries(rpc), option.hard_ttl()).await {
            Ok(Response::AppendEntries(r)) => Ok(r),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_error(self.target, e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, MemberNode, RaftError<u64, InstallSnapshotError>>> {
        match self.transport.request(self.target, Request::InstallSnapshot(rpc), option.hard_ttl()).await {
            Ok(Response::InstallSnapshot(r)) => Ok(r),
            Ok(_) => Err(unexpected()),
            Err(TransportError::Remote(WireError::Snapshot(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, *e)))
            }
            Err(e) => Err(rpc_error(self.target, e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        match self.transport.request(self.target, Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Response::Vote(r)) => Ok(r),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_error(self.target, e)),
        }
    }
}
