//! The leader's figures per second for `GET /v1/stats` (SPEC §2, the console's plots): runs
//! due, delivered, failed and skipped, client writes, and the first attempts' lateness, for the
//! last hour at most.
//!
//! Kept in the dispatching leader's memory only, like the per-target state: the figures are
//! about what this leader did, and replicating them would cost a log entry a second for
//! something a console only plots. A node that becomes leader starts with none.
//!
//! Pure: [`Ring`] takes every instant from its caller, so tests drive it with made-up clocks;
//! [`Recorder`] is the shared, locked handle the dispatcher's tasks write through.

use std::sync::{Arc, Mutex};

use crate::core::command::{Attempt, AttemptResult, Run};

use super::Clock;

/// Seconds kept: a window ends with the last complete second and reaches back at most this far.
pub const KEPT_S: i64 = 3600;
/// How far ahead of now a second may be counted. A claim counts its runs at their due
/// instants, which are up to the claim horizon ahead (at most 60 s, `runner::HORIZON_MAX`);
/// twice that leaves a margin. Anything further ahead is not counted.
const AHEAD_S: i64 = 120;
/// One slot per second from `KEPT_S` back to `AHEAD_S` ahead, so no two seconds that may be
/// counted or read share a slot.
const SLOTS: usize = (KEPT_S + AHEAD_S + 1) as usize;

/// What is counted per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Runs whose first attempt fell due that second (claimed runs, manual triggers).
    Due,
    /// Attempts that succeeded, by the second they ended.
    Delivered,
    /// Runs that failed for good (their last attempt failed), by the second it ended.
    Failed,
    /// Runs recorded skipped (a misfire range counts its count, an overlap skip one).
    Skipped,
    /// Client write commands the leader applied (`Command::client_writes`).
    Writes,
}

/// Lateness samples of one second as counts in log-spaced bins, so a busy second costs no
/// more than a quiet one: exact below 16 ms, then 8 bins per doubling, each estimated by its
/// midpoint, which is within 1/16 (6.25 %) of any value in the bin. 256 bins reach past
/// 2^34 ms (half a year); later is counted in the last. Only bins in use are stored, in
/// order: a second's deliveries are usually about equally late, so a few pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Lateness {
    bins: Vec<(u8, u32)>,
}

/// Values below this have a bin each.
const EXACT_BELOW: u64 = 16;
/// Bins per doubling above `EXACT_BELOW` (a power of two), and its log.
const SUB_BINS_LOG: u32 = 3;
const SUB_BINS: u64 = 1 << SUB_BINS_LOG;

/// The bin of a lateness of `ms` milliseconds.
fn bin_of(ms: u64) -> u8 {
    if ms < EXACT_BELOW {
        return ms as u8;
    }
    let octave = 63 - u64::from(ms.leading_zeros()); // ≥ 4: ms ≥ 16
    let sub = (ms >> (octave - u64::from(SUB_BINS_LOG))) & (SUB_BINS - 1);
    let bin = EXACT_BELOW + (octave - 4) * SUB_BINS + sub;
    bin.min(u64::from(u8::MAX)) as u8
}

/// The value a bin stands for: its own value below `EXACT_BELOW`, else its midpoint.
fn bin_value(bin: u8) -> u64 {
    let bin = u64::from(bin);
    if bin < EXACT_BELOW {
        return bin;
    }
    let octave = 4 + (bin - EXACT_BELOW) / SUB_BINS;
    let sub = (bin - EXACT_BELOW) % SUB_BINS;
    let width = 1u64 << (octave - u64::from(SUB_BINS_LOG));
    (SUB_BINS + sub) * width + width / 2
}

impl Lateness {
    fn add(&mut self, ms: u64) {
        let bin = bin_of(ms);
        match self.bins.binary_search_by_key(&bin, |(b, _)| *b) {
            Ok(i) => self.bins[i].1 = self.bins[i].1.saturating_add(1),
            Err(i) => self.bins.insert(i, (bin, 1)),
        }
    }

    /// The `percent`th percentile (nearest rank: the smallest sample with at least `percent`%
    /// of the samples at or below it), as its bin's value; None without samples.
    fn percentile(&self, percent: u32) -> Option<u64> {
        let total: u64 = self.bins.iter().map(|(_, n)| u64::from(*n)).sum();
        if total == 0 {
            return None;
        }
        let rank = (total * u64::from(percent.min(100))).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (bin, n) in &self.bins {
            seen += u64::from(*n);
            if seen >= rank {
                return Some(bin_value(*bin));
            }
        }
        self.bins.last().map(|(bin, _)| bin_value(*bin))
    }
}

/// What was counted in one second.
#[derive(Debug, Clone, Default)]
struct Second {
    /// The second (Unix seconds) the slot holds; `i64::MIN` for none.
    at_s: i64,
    counts: [u64; 5],
    lateness: Lateness,
}

impl Count {
    fn index(self) -> usize {
        self as usize
    }
}

/// One column per figure, one entry per second of a window, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Series {
    pub due: Vec<u64>,
    pub delivered: Vec<u64>,
    pub failed: Vec<u64>,
    pub skipped: Vec<u64>,
    /// None for a second without a first attempt.
    pub lateness_p50_ms: Vec<Option<u64>>,
    pub lateness_p99_ms: Vec<Option<u64>>,
    pub writes: Vec<u64>,
}

/// The figures of the seconds `from_s` (Unix seconds) onwards, one entry per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub from_s: i64,
    pub series: Series,
}

/// The last hour, a slot per second: each slot holds the one second it was last written for,
/// and a second whose slot holds another reads as nothing happened.
pub struct Ring {
    slots: Vec<Second>,
}

impl Default for Ring {
    fn default() -> Ring {
        let empty = Second {
            at_s: i64::MIN,
            ..Second::default()
        };
        Ring {
            slots: vec![empty; SLOTS],
        }
    }
}

impl Ring {
    /// The slot of second `at_s` as seen at `now_s`, emptied for it if it held an older one;
    /// None for a second too old or too far ahead to count, or older than its slot's (the
    /// clock went back).
    fn slot(&mut self, now_s: i64, at_s: i64) -> Option<&mut Second> {
        if at_s < now_s.saturating_sub(KEPT_S) || at_s > now_s.saturating_add(AHEAD_S) {
            return None;
        }
        let slot = &mut self.slots[at_s.rem_euclid(SLOTS as i64) as usize];
        if slot.at_s > at_s {
            return None;
        }
        if slot.at_s < at_s {
            *slot = Second {
                at_s,
                ..Second::default()
            };
        }
        Some(slot)
    }

    /// Adds `n` to `what` in the second of `at_ms`, as seen at `now_ms`.
    pub fn count(&mut self, now_ms: i64, at_ms: i64, what: Count, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(slot) = self.slot(second(now_ms), second(at_ms)) {
            let c = &mut slot.counts[what.index()];
            *c = c.saturating_add(n);
        }
    }

    /// Adds a first attempt that started at `at_ms`, `late_ms` after it was due.
    pub fn lateness(&mut self, now_ms: i64, at_ms: i64, late_ms: u64) {
        if let Some(slot) = self.slot(second(now_ms), second(at_ms)) {
            slot.lateness.add(late_ms);
        }
    }

    /// The last `seconds` complete seconds before `now_ms` (at most `KEPT_S`).
    pub fn window(&self, now_ms: i64, seconds: u32) -> Window {
        let end_s = second(now_ms);
        let from_s = end_s - i64::from(seconds).min(KEPT_S);
        let mut series = Series::default();
        for at_s in from_s..end_s {
            let slot = &self.slots[at_s.rem_euclid(SLOTS as i64) as usize];
            let empty = Second::default();
            let s = if slot.at_s == at_s { slot } else { &empty };
            let count = |what: Count| s.counts[what.index()];
            series.due.push(count(Count::Due));
            series.delivered.push(count(Count::Delivered));
            series.failed.push(count(Count::Failed));
            series.skipped.push(count(Count::Skipped));
            series.writes.push(count(Count::Writes));
            series.lateness_p50_ms.push(s.lateness.percentile(50));
            series.lateness_p99_ms.push(s.lateness.percentile(99));
        }
        Window { from_s, series }
    }
}

/// The Unix second of `ms`.
fn second(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// When a run opened outside a claim first falls due, if it is new work to count as due: a
/// manual run (a trigger) not yet started. A retry has attempts already, and a run released by
/// `buffer_one` is started; both were counted when they first fell due.
pub fn opened_due_ms(run: &Run) -> Option<i64> {
    (run.manual && run.attempts.is_empty() && !run.ext.started && run.status.is_open())
        .then(|| run.next_due_ms())
}

/// The figures of one leadership, shared by the dispatcher's loop, its attempt tasks and the
/// API (`DispatchHandle::stats`). Each call holds the lock for a few array writes.
#[derive(Clone)]
pub struct Recorder {
    ring: Arc<Mutex<Ring>>,
    clock: Clock,
}

impl Recorder {
    pub fn new(clock: Clock) -> Recorder {
        Recorder {
            ring: Arc::default(),
            clock,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Ring, i64) -> R) -> R {
        let now = self.clock.now_ms();
        f(
            &mut self.ring.lock().unwrap_or_else(|p| p.into_inner()),
            now,
        )
    }

    /// Adds `n` to `what` in the second of `at_ms`.
    pub fn count(&self, what: Count, at_ms: i64, n: u64) {
        self.with(|ring, now| ring.count(now, at_ms, what, n));
    }

    /// Counts a run's attempt `n`, due (its first attempt) at `due_ms`, that `result` followed:
    /// a success as delivered, a last failure as failed, a first attempt's lateness.
    pub fn attempt(&self, a: &Attempt, due_ms: i64, n: u32, result: &AttemptResult) {
        self.with(|ring, now| {
            match result {
                AttemptResult::Succeeded => ring.count(now, now, Count::Delivered, 1),
                AttemptResult::Failed => ring.count(now, now, Count::Failed, 1),
                AttemptResult::RetryAt(_) => {}
            }
            if let Some(late_ms) = crate::metrics::lateness_ms(a, due_ms, n) {
                ring.lateness(now, a.started_at_ms, late_ms);
            }
        });
    }

    /// The last `seconds` complete seconds.
    pub fn window(&self, seconds: u32) -> Window {
        self.with(|ring, now| ring.window(now, seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_796_000_000_000; // a whole second, in 2026

    #[test]
    fn a_window_ends_with_the_last_complete_second_and_counts_each_in_its_own() {
        let mut ring = Ring::default();
        let now = T0 + 10_500; // second 10 of the window is not complete
                               // (at, what, n)
        let counted = [
            (T0, Count::Due, 3),
            (T0 + 999, Count::Due, 1),
            (T0 + 1_000, Count::Delivered, 2),
            (T0 + 9_999, Count::Failed, 1),
            (T0 + 9_000, Count::Skipped, 12),
            (T0 + 10_000, Count::Writes, 5), // the current second: not in the window yet
            (T0 + 5_000, Count::Writes, 0),  // nothing
        ];
        for (at, what, n) in counted {
            ring.count(now, at, what, n);
        }
        let w = ring.window(now, 10);
        assert_eq!(w.from_s, T0 / 1000);
        let s = &w.series;
        assert_eq!(s.due, [4, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(s.delivered, [0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(s.failed, [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s.skipped, [0, 0, 0, 0, 0, 0, 0, 0, 0, 12]);
        assert_eq!(s.writes, [0; 10]);
        assert_eq!(s.lateness_p50_ms, [None; 10]);
        // A second later the current one is complete.
        let w = ring.window(now + 1_000, 10);
        assert_eq!(w.from_s, T0 / 1000 + 1);
        assert_eq!(w.series.writes.last(), Some(&5));
        assert_eq!(w.series.due.first(), Some(&0));
    }

    #[test]
    fn seconds_older_than_an_hour_fall_off_and_only_a_little_ahead_is_counted() {
        // (counted at, seen at, read at, in the window of an hour)
        let cases = [
            (T0, T0, T0 + 1_000, true),
            (T0, T0, T0 + 3_600_000, true),  // the oldest second kept
            (T0, T0, T0 + 3_601_000, false), // an hour and a second: gone
            (T0, T0 + 3_600_000, T0 + 3_600_000, true), // counted late, still kept
            (T0, T0 + 3_601_000, T0 + 3_601_000, false), // too old to count
            (T0 + 120_999, T0, T0 + 121_000, true), // due 2 min ahead: counted
            (T0 + 121_000, T0, T0 + 122_000, false), // further ahead: not
            (T0 - 1, T0, T0 + 1_000, true),  // the second before
        ];
        for (at, seen, read, kept) in cases {
            let mut ring = Ring::default();
            ring.count(seen, at, Count::Due, 1);
            let w = ring.window(read, 3600);
            let total: u64 = w.series.due.iter().sum();
            assert_eq!(total == 1, kept, "counted {at} at {seen}, read at {read}");
            assert_eq!(w.series.due.len(), 3600);
        }
    }

    #[test]
    fn a_slot_reused_for_a_later_second_forgets_the_earlier_and_never_the_reverse() {
        let mut ring = Ring::default();
        let later = T0 + SLOTS as i64 * 1000; // the same slot as T0
        ring.count(T0, T0, Count::Due, 7);
        ring.count(later, later, Count::Due, 1);
        assert_eq!(ring.window(later + 1_000, 1).series.due, [1]);
        assert_eq!(
            ring.window(T0 + 1_000, 1).series.due,
            [0],
            "T0 was forgotten"
        );
        // The clock went back: T0 is in range again, but its slot holds a later second.
        ring.count(T0, T0, Count::Due, 5);
        assert_eq!(ring.window(later + 1_000, 1).series.due, [1]);
    }

    #[test]
    fn counts_saturate_and_windows_are_bounded_by_the_hour_at_any_clock() {
        let mut ring = Ring::default();
        ring.count(T0, T0, Count::Writes, u64::MAX);
        ring.count(T0, T0, Count::Writes, 1);
        assert_eq!(ring.window(T0 + 1_000, 1).series.writes, [u64::MAX]);
        for now in [i64::MIN, -1, 0, i64::MAX] {
            ring.count(now, now, Count::Due, 1);
            ring.lateness(now, now, u64::MAX);
            let w = ring.window(now, u32::MAX);
            assert_eq!(w.series.due.len(), KEPT_S as usize, "{now}");
        }
    }

    #[test]
    fn lateness_percentiles_are_per_second_and_null_without_samples() {
        let mut ring = Ring::default();
        let now = T0 + 3_000;
        for late in 1..=100 {
            ring.lateness(now, T0 + 1_200, late);
        }
        ring.lateness(now, T0 + 2_000, 5);
        let s = ring.window(now, 3).series;
        // 1..=100: p50 is 50 (its bin 48..=51 reads 50), p99 is 99 (bin 96..=103 reads 100).
        assert_eq!(s.lateness_p50_ms, [None, Some(50), Some(5)]);
        assert_eq!(s.lateness_p99_ms, [None, Some(100), Some(5)]);
    }

    #[test]
    fn bins_are_exact_below_16_ms_and_then_within_a_sixteenth() {
        // (value, its bin's value)
        let cases = [
            (0, 0),
            (1, 1),
            (15, 15),
            (16, 17), // 16..=17
            (17, 17),
            (18, 19),
            (31, 31),
            (32, 34), // 32..=35
            (33, 34),
            (1_000, 992),     // 960..=1023
            (60_000, 59_392), // 57344..=61439
            (u64::MAX, bin_value(255)),
        ];
        for (ms, want) in cases {
            assert_eq!(bin_value(bin_of(ms)), want, "{ms}");
        }
        let mut last = 0;
        for bin in 0..=255u8 {
            let v = bin_value(bin);
            assert!(bin == 0 || v > last, "bins increase: {bin}");
            assert_eq!(bin_of(v), bin, "a bin's value lies in it");
            last = v;
        }
        for ms in (0..200_000).chain((1..40).map(|k| (1u64 << k) - 1)) {
            let got = bin_value(bin_of(ms));
            if ms < 1 << 34 {
                assert!(got.abs_diff(ms) * 16 <= ms.max(1), "{ms} read as {got}");
            }
        }
    }

    /// The exact nearest-rank percentile of `samples`.
    fn exact(samples: &mut [u64], percent: u64) -> u64 {
        samples.sort_unstable();
        let rank = (samples.len() as u64 * percent).div_ceil(100).max(1);
        samples[rank as usize - 1]
    }

    #[test]
    fn percentiles_are_within_a_sixteenth_of_the_exact_ones() {
        // Deterministic spreads: uniform, two clusters, a long tail, one value, small values.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let spreads: Vec<Vec<u64>> = vec![
            (0..1000).map(|_| next() % 2_000).collect(),
            (0..1000)
                .map(|i| {
                    if i % 10 == 0 {
                        5_000 + next() % 100
                    } else {
                        3 + next() % 4
                    }
                })
                .collect(),
            (0..5000).map(|_| 1u64 << (next() % 20)).collect(),
            vec![42; 7],
            (0..10).collect(),
            vec![250],
        ];
        for mut samples in spreads {
            let mut l = Lateness::default();
            for s in &samples {
                l.add(*s);
            }
            assert!(l.bins.len() <= 256);
            for p in [1, 50, 90, 99, 100] {
                let want = exact(&mut samples, p);
                let got = l.percentile(p as u32).expect("samples");
                assert!(
                    got.abs_diff(want) * 16 <= want.max(1),
                    "p{p}: {got} for {want} ({} samples)",
                    samples.len()
                );
            }
        }
        assert_eq!(Lateness::default().percentile(50), None);
    }

    #[test]
    fn only_a_new_manual_run_opened_outside_a_claim_counts_as_due() {
        use crate::core::command::{RunExt, RunStatus};
        let run = |manual: bool, attempts: usize, started: bool, status: RunStatus| Run {
            id: "run_1_1".into(),
            job_id: "j".into(),
            incarnation: 1,
            scheduled_at_ms: T0,
            status,
            attempts: vec![
                Attempt {
                    n: 1,
                    started_at_ms: T0,
                    duration_ms: 1,
                    status_code: Some(500),
                    error: None,
                    node_id: 1,
                };
                attempts
            ],
            next_attempt_at_ms: Some(T0 + 5),
            manual,
            skipped: None,
            claimed_at_ms: T0,
            ext: RunExt {
                started,
                ..RunExt::default()
            },
        };
        // (run, counted at)
        let cases = [
            (run(true, 0, false, RunStatus::Pending), Some(T0 + 5)), // a trigger
            (run(true, 1, false, RunStatus::Retrying), None),        // a retry
            (run(false, 1, false, RunStatus::Retrying), None),       // a retry
            (run(true, 0, true, RunStatus::Pending), None),          // released by buffer_one
            (run(false, 0, true, RunStatus::Pending), None),         // released by buffer_one
            (run(false, 0, false, RunStatus::Pending), None),        // claimed: counted then
            (run(true, 0, false, RunStatus::Skipped), None),         // skipped: not due
        ];
        for (i, (run, want)) in cases.into_iter().enumerate() {
            assert_eq!(opened_due_ms(&run), want, "case {i}");
        }
    }
}
