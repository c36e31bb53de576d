//! hookd's replicated core: openraft 0.9 on sled and the peer transport, replicating a
//! `Machine` it knows only through that trait. It knows nothing of jobs, of the public HTTP API
//! or of webhook delivery.

// openraft's storage traits return its large `StorageError` by value; our helpers follow suit.
#![allow(clippy::result_large_err)]

pub mod api_addrs;
pub mod archive;
pub mod backup;
pub mod cadence;
mod forward;
mod gather;
pub mod lease;
pub mod machine;
pub mod members;
pub mod membership;
pub mod network;
pub mod pause;
pub mod peer_server;
pub mod planted;
pub mod release;
pub mod replica;
pub mod secret;
pub mod status;
pub mod store;
pub mod tls;
pub mod typ;

pub use lease::LeaderTerm;
pub use machine::{AppliedTables, LogPosition, Machine, ReadError, TableWriter, Tx, TxError};
pub use membership::{AddMember, MemberError, RemoveMember};
pub use release::Release;
pub use replica::{ClusterIdOf, RaftTiming, Replica, ReplicaConfig, ReplicaError, StartError};
pub use secret::Secret;
pub use status::{ClusterStatus, MemberStatus, Role};
pub use store::StateView;

/// Node ids are the small integers given with `--node-id`.
pub type NodeId = u64;
