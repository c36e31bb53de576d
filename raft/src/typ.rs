//! openraft type configuration and the aliases the rest of the crate uses, so that no other
//! module spells openraft's generic parameters.

use std::marker::PhantomData;

use crate::machine::Machine;

pub use crate::NodeId;

/// The Raft types of machine `M`: its commands as log payload, peer addresses as node info,
/// snapshots as files.
pub struct Cfg<M>(PhantomData<fn() -> M>);

// By hand: derived impls would ask the same of `M`.
impl<M> Clone for Cfg<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Cfg<M> {}
impl<M> Default for Cfg<M> {
    fn default() -> Self {
        Cfg(PhantomData)
    }
}
impl<M> PartialEq for Cfg<M> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<M> Eq for Cfg<M> {}
impl<M> PartialOrd for Cfg<M> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<M> Ord for Cfg<M> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
impl<M> std::fmt::Debug for Cfg<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cfg")
    }
}

impl<M: Machine> openraft::RaftTypeConfig for Cfg<M> {
    type D = M::Command;
    type R = M::Output;
    type NodeId = NodeId;
    type Node = openraft::BasicNode;
    type Entry = openraft::Entry<Cfg<M>>;
    type SnapshotData = SnapshotFile;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder = openraft::impls::OneshotResponder<Cfg<M>>;
}

/// A snapshot is a file (`store/snapfile.rs`), streamed to and from disk.
pub type SnapshotFile = tokio::fs::File;
pub type Raft<M> = openraft::Raft<Cfg<M>>;
pub type Node = openraft::BasicNode;
pub type Entry<M> = openraft::Entry<Cfg<M>>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot<M> = openraft::Snapshot<Cfg<M>>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StorageIOError = openraft::StorageIOError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type RpcError<E = openraft::error::Infallible> =
    openraft::error::RPCError<NodeId, Node, RaftError<E>>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Node>;
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, Node>;
pub type ForwardToLeader = openraft::error::ForwardToLeader<NodeId, Node>;
pub type AppendEntriesRequest<M> = openraft::raft::AppendEntriesRequest<Cfg<M>>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
pub type InstallSnapshotRequest<M> = openraft::raft::InstallSnapshotRequest<Cfg<M>>;
pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;
pub type InstallSnapshotError = openraft::error::InstallSnapshotError;
pub use openraft::ServerState;
