//! The dispatcher's planted bugs for the chaos harness's self-test (CHAOS.md, last point),
//! switched on at run time like the replicated core's (`HOOKD_PLANT=<name>`, through
//! `hookd_raft::planted::is`) and compiled in only with the `planted` cargo feature.

pub use hookd_raft::planted::is;

/// Dispatch sends without checking the quorum lease.
pub const LEASE_GATE: &str = "lease_gate";
/// A new leader does not re-deliver runs claimed by its predecessor.
pub const IGNORE_OPEN_CLAIMS: &str = "ignore_open_claims";
/// Dispatch keeps one global queue with no per-target caps: a black-holed target takes every
/// delivery slot and starves the others.
pub const GLOBAL_QUEUE: &str = "global_queue";
