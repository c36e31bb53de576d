//! Planted bugs for the chaos harness's self-test (CHAOS.md, last point). Compiled in only with
//! the `planted` cargo feature; then `HOOKD_PLANT=<name>` switches one bug on at run time.
//! Without the feature every check is a constant `false`.

/// True when the planted bug `name` is switched on.
#[cfg(feature = "planted")]
pub fn is(name: &str) -> bool {
    static PLANT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let plant = PLANT.get_or_init(|| {
        let p = std::env::var("HOOKD_PLANT").unwrap_or_default();
        if !p.is_empty() {
            tracing::warn!(plant = %p, "PLANTED BUG ACTIVE: this node is deliberately broken");
        }
        p
    });
    plant == name
}

#[cfg(not(feature = "planted"))]
#[inline(always)]
pub fn is(_name: &str) -> bool {
    false
}

/// Dispatch sends without checking the quorum lease.
pub const LEASE_GATE: &str = "lease_gate";
/// The log acknowledges appends before they are flushed (and never flushes them itself).
pub const ACK_BEFORE_FLUSH: &str = "ack_before_flush";
/// A new leader does not re-deliver runs claimed by its predecessor.
pub const IGNORE_OPEN_CLAIMS: &str = "ignore_open_claims";
/// Followers serve "linearizable" reads from local state without a read index.
pub const STALE_FOLLOWER_READS: &str = "stale_follower_reads";
/// Dispatch keeps one global queue with no per-target caps: a black-holed target takes every
/// delivery slot and starves the others.
pub const GLOBAL_QUEUE: &str = "global_queue";
