//! hookd's replicated core: openraft 0.9 on sled, the peer transport, and the job state machine.
//! It knows nothing of the public HTTP API or of webhook delivery.

// openraft's storage traits return its large `StorageError` by value; our helpers follow suit.
#![allow(clippy::result_large_err)]

pub mod command;
pub mod lease;
pub mod network;
pub mod planted;
pub mod replica;
pub mod secret;
pub mod state;
pub mod store;
pub mod tls;
pub mod typ;

pub use command::{Command, CommandResult, Job, JobSpec};
pub use replica::{RaftTiming, Replica, ReplicaConfig, ReplicaError, StartError};
pub use secret::Secret;
pub use store::StateView;
pub use typ::NodeId;
