//! hookd, a self-hosted replicated webhook scheduler: the node around the replicated core
//! (`hookd-raft`): configuration, the public HTTP API, schedules and leader-only dispatch.

pub mod api;
pub mod config;
pub mod dispatch;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod schedule;
pub mod serve;
