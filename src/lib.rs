//! hookd, a self-hosted replicated webhook scheduler: the domain core (`core`), the state
//! machine the replicated core (`hookd-raft`) runs with it (`replicated`), configuration, the
//! public HTTP API, schedules and leader-only dispatch.

pub mod api;
pub mod cli;
pub mod config;
pub mod core;
pub mod dispatch;
pub mod egress;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod planted;
pub mod replicated;
pub mod schedule;
pub mod serve;
pub mod shards;
