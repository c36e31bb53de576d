//! Planted bugs for the chaos harness's self-test (CHAOS.md, last point). Compiled in only with
//! the `planted` cargo feature; then `HOOKD_PLANT=<name>` switches one bug on at run time.
//! Without the feature every check is a constant `false`. The bugs of the replicated core are
//! named here; a crate built on it names its own (hookd's dispatch bugs: `hookd::planted`).

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

/// The log acknowledges appends before they are flushed (and never flushes them itself).
pub const ACK_BEFORE_FLUSH: &str = "ack_before_flush";
/// Followers serve "linearizable" reads from local state without a read index.
pub const STALE_FOLLOWER_READS: &str = "stale_follower_reads";
