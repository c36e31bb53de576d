//! How many runs the dispatcher may claim, so that its own Raft traffic (claims, then the records
//! of their attempts) never grows past what the cluster commits promptly. Pure: time and the
//! observed commit latencies are passed in.
//!
//! A token bucket whose rate adapts to the commit latency of claims (additive increase,
//! multiplicative decrease, as TCP): a claim that commits slowly or fails halves the rate; a fast
//! one raises it by a step. As in TCP, one congestion event halves the rate once: a slow claim
//! that started before the last halving was already answered by it (with several claims in
//! flight, one stall would otherwise divide the rate by 2 per claim and leave delivery idle). Under overload the claims then stay near the rate the cluster can
//! absorb while heartbeats still flow, instead of flooding the log until AppendEntries time out
//! and the leader loses its lease. Runs not claimed yet wait in the index in due order; once
//! later than their grace, the misfire policy applies to them as written.

/// Claims per second the dispatcher never goes below, and never above.
pub const RATE_MIN_PER_S: f64 = 500.0;
pub const RATE_MAX_PER_S: f64 = 200_000.0;
/// Additive step after a fast claim, per second.
pub const RATE_STEP_PER_S: f64 = 500.0;
/// A claim committing slower than this (or failing) halves the rate; one faster than
/// `FAST_MS` raises it.
pub const SLOW_MS: u64 = 150;
pub const FAST_MS: u64 = 50;
/// The bucket holds at most this many seconds of the rate (bursts at a whole second).
const BURST_S: f64 = 0.5;

#[derive(Debug, Clone)]
pub struct Pacer {
    rate_per_s: f64,
    tokens: f64,
    at_ms: i64,
    /// When the rate was last halved.
    halved_at_ms: i64,
}

impl Pacer {
    pub fn new(now_ms: i64) -> Pacer {
        Pacer {
            rate_per_s: RATE_MAX_PER_S,
            tokens: RATE_MAX_PER_S * BURST_S,
            at_ms: now_ms,
            halved_at_ms: i64::MIN,
        }
    }

    pub fn rate_per_s(&self) -> f64 {
        self.rate_per_s
    }

    /// Runs that may be claimed at `now_ms`.
    pub fn budget(&mut self, now_ms: i64) -> usize {
        let elapsed_s = now_ms.saturating_sub(self.at_ms).max(0) as f64 / 1000.0;
        self.at_ms = self.at_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed_s * self.rate_per_s).min(self.cap());
        self.tokens.max(0.0) as usize
    }

    /// Milliseconds until at least `n` runs may be claimed.
    pub fn wait_ms(&self, n: usize) -> i64 {
        let missing = n as f64 - self.tokens;
        if missing <= 0.0 {
            0
        } else {
            (missing / self.rate_per_s * 1000.0).ceil() as i64
        }
    }

    pub fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// Adapts the rate to one claim's commit: proposed at `started_ms`, answered after
    /// `latency_ms`, and whether it was confirmed.
    pub fn observe(&mut self, started_ms: i64, latency_ms: u64, confirmed: bool) {
        if !confirmed || latency_ms > SLOW_MS {
            if started_ms >= self.halved_at_ms {
                self.rate_per_s = (self.rate_per_s / 2.0).max(RATE_MIN_PER_S);
                self.tokens = self.tokens.min(self.cap());
                self.halved_at_ms = started_ms.saturating_add(latency_ms as i64);
            }
        } else if latency_ms < FAST_MS {
            self.rate_per_s = (self.rate_per_s + RATE_STEP_PER_S).min(RATE_MAX_PER_S);
        }
    }

    fn cap(&self) -> f64 {
        self.rate_per_s * BURST_S
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_or_failed_claims_halve_the_rate_and_fast_ones_raise_it_by_a_step() {
        let mut p = Pacer::new(0);
        let start = p.rate_per_s();
        // (started, latency, confirmed, rate after); each claim starts after the previous ended.
        let cases: Vec<(i64, u64, bool, f64)> = vec![
            (0, 10, true, start),                                      // fast at the maximum
            (1_000, SLOW_MS + 1, true, start / 2.0),                   // slow: halved
            (2_000, 5, false, start / 4.0),                            // failed: halved
            (3_000, FAST_MS - 1, true, start / 4.0 + RATE_STEP_PER_S), // fast: a step up
            (4_000, FAST_MS + 10, true, start / 4.0 + RATE_STEP_PER_S), // in between: unchanged
        ];
        for (started, latency, confirmed, want) in cases {
            p.observe(started, latency, confirmed);
            assert_eq!(
                p.rate_per_s(),
                want,
                "after {latency} ms, confirmed {confirmed}"
            );
        }
        for i in 0..100 {
            p.observe(10_000 + i * 10_000, SLOW_MS * 10, true);
        }
        assert_eq!(p.rate_per_s(), RATE_MIN_PER_S, "never below the minimum");
    }

    #[test]
    fn claims_caught_in_one_stall_halve_the_rate_once() {
        let mut p = Pacer::new(0);
        let start = p.rate_per_s();
        // Four claims in flight, started at 0..30 ms, all answered slowly from 400 ms on.
        for started in [0, 10, 20, 30] {
            p.observe(started, 400 - started as u64, true);
        }
        assert_eq!(p.rate_per_s(), start / 2.0, "one stall, one halving");
        // A claim proposed after that reaction that is slow again is a new event.
        p.observe(401, SLOW_MS + 1, true);
        assert_eq!(p.rate_per_s(), start / 4.0);
        // A failure counts alike, once.
        p.observe(402, 5, false);
        assert_eq!(
            p.rate_per_s(),
            start / 4.0,
            "started before the last halving"
        );
    }

    #[test]
    fn the_budget_refills_at_the_rate_up_to_half_a_second() {
        let mut p = Pacer::new(0);
        for t in 0..8 {
            p.observe(t * 1_000, SLOW_MS * 2, true);
        }
        let rate = p.rate_per_s();
        let full = p.budget(10_000);
        assert_eq!(full, (rate * BURST_S) as usize, "capped at half a second");
        p.spend(full);
        assert_eq!(p.budget(10_000), 0);
        assert_eq!(p.wait_ms(100), (100.0 / rate * 1000.0).ceil() as i64);
        assert_eq!(p.budget(10_100), (rate * 0.1) as usize);
        // Time never runs backwards for the bucket.
        assert_eq!(p.budget(9_000), (rate * 0.1) as usize);
    }
}
