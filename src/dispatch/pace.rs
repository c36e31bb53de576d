//! How many runs the dispatcher may claim, so that its own Raft traffic (claims, then the records
//! of their attempts) never grows past what the cluster commits promptly. Pure: time and the
//! observed commit latencies are passed in.
//!
//! A token bucket whose rate adapts to the commit latency of claims (additive increase,
//! multiplicative decrease, as TCP): a claim that commits slowly or fails halves the rate; a fast
//! one raises it by a step. Under overload the claims then stay near the rate the cluster can
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
}

impl Pacer {
    pub fn new(now_ms: i64) -> Pacer {
        Pacer {
            rate_per_s: RATE_MAX_PER_S,
            tokens: RATE_MAX_PER_S * BURST_S,
            at_ms: now_ms,
        }
    }

    pub fn rate_per_s(&self) -> f64 {
        self.rate_per_s
    }

    /// Runs that may be claimed at `now_ms`.
    pub fn budget(&mut self, now_ms: i64) -> usize {
        let elapsed_s = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
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

    /// Adapts the rate to one claim's commit: `latency_ms`, and whether it was confirmed.
    pub fn observe(&mut self, latency_ms: u64, confirmed: bool) {
        if !confirmed || latency_ms > SLOW_MS {
            self.rate_per_s = (self.rate_per_s / 2.0).max(RATE_MIN_PER_S);
            self.tokens = self.tokens.min(self.cap());
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
        let cases: Vec<(u64, bool, f64)> = vec![
            (10, true, start),                                   // fast at the maximum: stays
            (SLOW_MS + 1, true, start / 2.0),                    // slow: halved
            (5, false, start / 4.0),                             // failed: halved
            (FAST_MS - 1, true, start / 4.0 + RATE_STEP_PER_S),  // fast: a step up
            (FAST_MS + 10, true, start / 4.0 + RATE_STEP_PER_S), // in between: unchanged
        ];
        for (latency, confirmed, want) in cases {
            p.observe(latency, confirmed);
            assert_eq!(
                p.rate_per_s(),
                want,
                "after {latency} ms, confirmed {confirmed}"
            );
        }
        for _ in 0..100 {
            p.observe(SLOW_MS * 10, true);
        }
        assert_eq!(p.rate_per_s(), RATE_MIN_PER_S, "never below the minimum");
    }

    #[test]
    fn the_budget_refills_at_the_rate_up_to_half_a_second() {
        let mut p = Pacer::new(0);
        while p.rate_per_s() > 1000.0 {
            p.observe(SLOW_MS * 2, true);
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
