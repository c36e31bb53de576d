//! Per-target queues, caps and circuit breakers (SPEC §3, "One target cannot hurt the others").
//! Pure: the caller passes the time in; nothing here sleeps, spawns or does I/O.
//!
//! - Every target host:port has its own queue of attempts, in attempt-time order, and at most
//!   `host_max` attempts in flight. A saturated target's queue waits; it holds back no other.
//! - The node-wide cap `node_max` is shared max-min fairly: of the targets that may start an
//!   attempt now, the one with the fewest attempts in flight goes first (ties: the earliest due
//!   head, then the key). A target holding many slots never takes the next free one from a
//!   target holding fewer, and a slot no one else wants is never left idle.
//! - A breaker per target opens after `BREAKER_FAILURES` consecutive timeouts or connection
//!   errors. While it is open the target's queue waits (its runs keep their attempt times and
//!   attempt numbers); then one probe at a time decides: any answer closes it, another failure
//!   opens it again for twice the pause, up to `BREAKER_PAUSE_MAX_MS`.
//!
//! Index: every target with queued work is in exactly one of `waiting` (keyed by the instant it
//! may start next) or `ready` (due now, keyed by in-flight count), or in neither while it is at
//! its cap or a probe is out; `place` recomputes that after every change to the target.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub use crate::core::command::TargetPolicy as Policy;
use crate::metrics::TargetTotals;

/// A target: `host:port` of a delivery URL, lower-case host, default port filled in.
pub type TargetKey = Arc<str>;

/// Consecutive timeouts or connection errors that open a target's circuit.
pub const BREAKER_FAILURES: u32 = 20;
/// First pause of an opened circuit; each failed probe doubles it up to the maximum.
pub const BREAKER_PAUSE_MIN_MS: i64 = 1_000;
pub const BREAKER_PAUSE_MAX_MS: i64 = 60_000;
/// Runs a target whose circuit is not closed may have waiting before the dispatcher stops
/// claiming more for it: enough for every probe, and a bound on the leader's memory however long
/// the target stays down. Its jobs then wait unclaimed, and when it recovers their runs are
/// claimed late, under the misfire policy.
pub const HELD_QUEUE_MAX: usize = 256;
/// A target whose circuit is closed but that does not keep up (slow answers, or more due runs
/// than the node can send) is held too once this many runs wait for it and the earliest of them
/// is `BEHIND_MS` late: claims then follow its sending rate instead of piling up claimed runs in
/// the leader's memory and work in the Raft log. Large enough that its queue does not run dry
/// during one claim's commit at full rate.
pub const BEHIND_QUEUE_MAX: usize = 1024;
pub const BEHIND_MS: i64 = 1_000;

/// The `host:port` a URL delivers to, or None when it has no host.
/// The queue of every job whose URL names no http(s) host and port (stored before validation
/// refused such URLs, or replicated from a hostile peer): its runs are attempted, and fail for
/// good, like any other run, instead of never leaving the open state.
pub const UNDELIVERABLE_KEY: &str = "(invalid url)";

/// The queue a job's runs wait in: its URL's `host:port`, else `UNDELIVERABLE_KEY`.
pub fn delivery_target(url: &str) -> TargetKey {
    target_key(url).unwrap_or_else(|| TargetKey::from(UNDELIVERABLE_KEY))
}

pub fn target_key(url: &str) -> Option<TargetKey> {
    crate::core::filter::target_of(url).map(Arc::from)
}

/// A target's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Attempts flow; `failures` timeouts or connection errors in a row so far.
    Closed { failures: u32 },
    /// No attempt starts before `until_ms`; then one probe.
    Open { until_ms: i64, pause_ms: i64 },
    /// A probe is in flight; nothing else starts until it ends.
    HalfOpen { pause_ms: i64 },
}

/// How an attempt ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered with any status: it is reachable.
    Answered,
    /// Timeout or connection error.
    Failed,
    /// The attempt never left (the lease gate closed, or the job changed): proves nothing.
    NotSent,
}

impl Breaker {
    /// The breaker after an attempt ended at `now_ms`; `probe` says whether it was the probe.
    pub fn after(self, outcome: Outcome, probe: bool, now_ms: i64) -> Breaker {
        match (self, outcome) {
            (Breaker::HalfOpen { pause_ms }, Outcome::NotSent) if probe => Breaker::Open {
                until_ms: now_ms,
                pause_ms,
            },
            (b, Outcome::NotSent) => b,
            (_, Outcome::Answered) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, Outcome::Failed) => {
                let failures = failures.saturating_add(1);
                if failures >= BREAKER_FAILURES {
                    Breaker::Open {
                        until_ms: now_ms.saturating_add(BREAKER_PAUSE_MIN_MS),
                        pause_ms: BREAKER_PAUSE_MIN_MS,
                    }
                } else {
                    Breaker::Closed { failures }
                }
            }
            (Breaker::HalfOpen { pause_ms }, Outcome::Failed) if probe => {
                let pause_ms = pause_ms.saturating_mul(2).min(BREAKER_PAUSE_MAX_MS);
                Breaker::Open {
                    until_ms: now_ms.saturating_add(pause_ms),
                    pause_ms,
                }
            }
            // An attempt that started before the circuit opened: already counted.
            (b, Outcome::Failed) => b,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Breaker::Closed { .. } => "closed",
            Breaker::Open { .. } => "open",
            Breaker::HalfOpen { .. } => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Idle,
    Waiting(i64),
    Ready(usize, i64),
}

struct Target<T> {
    queue: BTreeMap<(i64, String), T>,
    in_flight: usize,
    breaker: Breaker,
    last_error: Option<String>,
    place: Place,
    /// The rate limit's state (GCRA): the theoretical arrival time of the next attempt, in ms.
    tat_ms: f64,
}

/// The part of a cluster-wide limit `n` one of `shards` shards' dispatchers enforces: a
/// node leading `k` shards enforces `k` parts. Rounded down, so the parts never add up to more
/// than `n`, but never 0 (a limit below the shard count allows one per shard).
pub fn share(n: usize, shards: u32) -> usize {
    (n / shards.max(1) as usize).max(1)
}

/// A target's policy as one of `shards` shards' dispatchers enforces it: its share of the
/// concurrency cap, the rate and the burst (`share`; a rate keeps at least a thousandth of an
/// attempt a second).
pub fn policy_share(p: Policy, shards: u32) -> Policy {
    let s = u64::from(shards.max(1));
    Policy {
        max_concurrency: p.max_concurrency.map(|n| share(n as usize, shards) as u32),
        rate_milli_per_s: p.rate_milli_per_s.map(|r| (r / s).max(1)),
        burst: p.burst.map(|b| share(b as usize, shards) as u32),
    }
}

/// A target's rate limit as GCRA (a token bucket): milliseconds between attempts at
/// `rate_per_s`, and the tolerance `burst` gives. An attempt at `t` may start once
/// `t >= tat - tolerance`, and moves `tat` to `max(tat, t) + interval`.
fn gcra(p: &Policy) -> Option<(f64, f64)> {
    let milli = p.rate_milli_per_s.filter(|r| *r > 0)?;
    let interval = 1_000_000.0 / milli as f64;
    let burst = f64::from(p.burst.unwrap_or(1).max(1));
    Some((interval, (burst - 1.0) * interval))
}

/// An attempt taken off a target's queue; hand `key` and `probe` back to `finish`.
#[derive(Debug, PartialEq, Eq)]
pub struct Started<T> {
    pub key: TargetKey,
    pub at_ms: i64,
    pub id: String,
    pub item: T,
    pub probe: bool,
}

/// What `GET /v1/targets` shows of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetStatus {
    pub target: String,
    pub in_flight: usize,
    pub waiting: usize,
    pub last_error: Option<String>,
    pub breaker: Breaker,
    pub policy: Option<Policy>,
}

/// The per-target queues of one dispatcher.
pub struct Scheduler<T> {
    host_max: usize,
    node_max: usize,
    /// As the state holds them: cluster-wide; this dispatcher enforces its share (`enforced`).
    policies: BTreeMap<TargetKey, Policy>,
    /// The cluster's shard count: `host_max` and the policies are cluster-wide limits, and
    /// `node_max` a node-wide one, of which this dispatcher, one shard's, enforces its part
    /// (`share`), so the shards a node leads never have more than `node_max` in flight.
    shards: u32,
    targets: BTreeMap<TargetKey, Target<T>>,
    waiting: BTreeSet<(i64, TargetKey)>,
    ready: BTreeSet<(usize, i64, TargetKey)>,
    in_flight: usize,
    queued: usize,
}

impl<T> Scheduler<T> {
    /// The scheduler of one of `shards` shards' dispatchers.
    pub fn with_shards(mut self, shards: u32) -> Scheduler<T> {
        self.shards = shards.max(1);
        self
    }

    /// The limits of target `key` this dispatcher enforces: its share of the policy's.
    fn enforced(&self, key: &str) -> Option<Policy> {
        let p = self.policies.get(key)?;
        Some(policy_share(*p, self.shards))
    }

    pub fn new(host_max: usize, node_max: usize) -> Scheduler<T> {
        Scheduler {
            host_max: host_max.max(1),
            node_max: node_max.max(1),
            policies: BTreeMap::new(),
            shards: 1,
            targets: BTreeMap::new(),
            waiting: BTreeSet::new(),
            ready: BTreeSet::new(),
            in_flight: 0,
            queued: 0,
        }
    }

    /// Queues `item` for `key` at `at_ms`; an equal `(at_ms, id)` is replaced.
    pub fn push(&mut self, key: TargetKey, at_ms: i64, id: String, item: T) {
        let t = self.targets.entry(key.clone()).or_insert_with(|| Target {
            queue: BTreeMap::new(),
            in_flight: 0,
            breaker: Breaker::Closed { failures: 0 },
            last_error: None,
            place: Place::Idle,
            tat_ms: f64::MIN,
        });
        if t.queue.insert((at_ms, id), item).is_none() {
            self.queued += 1;
        }
        self.place(&key);
    }

    /// Replaces every target's policy (those not in `policies` have none).
    pub fn set_policies(&mut self, policies: BTreeMap<TargetKey, Policy>) {
        if policies == self.policies {
            return;
        }
        let changed: Vec<TargetKey> = self
            .policies
            .keys()
            .chain(policies.keys())
            .cloned()
            .collect();
        self.policies = policies;
        for key in changed {
            self.place(&key);
        }
    }

    /// Whether `key` has a rate limit.
    pub fn rate_limited(&self, key: &str) -> bool {
        self.enforced(key).as_ref().and_then(gcra).is_some()
    }

    /// True when `next(now_ms)` would start an attempt.
    pub fn can_start(&mut self, now_ms: i64) -> bool {
        self.promote(now_ms);
        self.in_flight < share(self.node_max, self.shards) && !self.ready.is_empty()
    }

    /// Takes the next attempt to start at `now_ms`, if any target may start one.
    pub fn next(&mut self, now_ms: i64) -> Option<Started<T>> {
        if !self.can_start(now_ms) {
            return None;
        }
        let (_, _, key) = self.ready.pop_first()?;
        let rate = self.enforced(&key).as_ref().and_then(gcra);
        let t = self.targets.get_mut(&key)?;
        t.place = Place::Idle;
        let ((at_ms, id), item) = t.queue.pop_first()?;
        self.queued -= 1;
        let probe = match t.breaker {
            Breaker::Open { pause_ms, .. } => {
                t.breaker = Breaker::HalfOpen { pause_ms };
                true
            }
            _ => false,
        };
        if let Some((interval, _)) = rate {
            // An attempt that starts a little late (the loop wakes in whole milliseconds) keeps
            // the limit's rhythm instead of losing the delay: less than one interval late, the
            // next token counts from the theoretical instant.
            let now = now_ms as f64;
            let base = if now - t.tat_ms < interval {
                t.tat_ms
            } else {
                now
            };
            t.tat_ms = base + interval;
        }
        t.in_flight += 1;
        self.in_flight += 1;
        self.place(&key);
        Some(Started {
            key,
            at_ms,
            id,
            item,
            probe,
        })
    }

    /// Ends an attempt started by `next`. `error` describes a failed attempt (None on success).
    /// Returns true when this end opened the target's circuit.
    pub fn finish(
        &mut self,
        key: &TargetKey,
        probe: bool,
        outcome: Outcome,
        error: Option<String>,
        now_ms: i64,
    ) -> bool {
        let Some(t) = self.targets.get_mut(key) else {
            return false;
        };
        t.in_flight = t.in_flight.saturating_sub(1);
        self.in_flight = self.in_flight.saturating_sub(1);
        let before = t.breaker;
        t.breaker = t.breaker.after(outcome, probe, now_ms);
        let opened =
            matches!(before, Breaker::Closed { .. }) && matches!(t.breaker, Breaker::Open { .. });
        if outcome != Outcome::NotSent {
            t.last_error = error;
        }
        // A target whose rate limit still counts recent attempts is kept, or its next burst
        // would start from a full bucket.
        let idle = t.queue.is_empty() && t.in_flight == 0 && t.tat_ms <= now_ms as f64;
        if idle && t.breaker == (Breaker::Closed { failures: 0 }) && t.last_error.is_none() {
            // Nothing to show and nothing to remember: keep memory bounded by active targets.
            if let Some(t) = self.targets.remove(key) {
                self.unplace(key, t.place);
            }
            return opened;
        }
        self.place(key);
        opened
    }

    /// Forgets idle targets whose circuit is closed (their last error is dropped with them).
    /// Called rarely; O(targets).
    pub fn forget_idle(&mut self) {
        self.targets.retain(|_, t| {
            !(t.queue.is_empty() && t.in_flight == 0 && matches!(t.breaker, Breaker::Closed { .. }))
        });
    }

    /// True while the dispatcher should claim nothing more for `key` at `now_ms`: its circuit is
    /// not closed and `HELD_QUEUE_MAX` runs already wait for it, or it is behind (at least
    /// `BEHIND_QUEUE_MAX` wait and the earliest is `BEHIND_MS` late).
    pub fn holds(&self, key: &str, now_ms: i64) -> bool {
        self.targets.get(key).is_some_and(|t| {
            let waiting = t.queue.len();
            match t.breaker {
                Breaker::Closed { .. } => {
                    waiting >= BEHIND_QUEUE_MAX
                        && t.queue
                            .first_key_value()
                            .is_some_and(|((at, _), _)| *at <= now_ms.saturating_sub(BEHIND_MS))
                }
                _ => waiting >= HELD_QUEUE_MAX,
            }
        })
    }

    /// The earliest instant a waiting target may start, if any.
    pub fn next_wake(&self) -> Option<i64> {
        self.waiting.first().map(|(at, _)| *at)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    /// One page of targets in key order, after `after`, and the key to continue from.
    pub fn page(&self, after: Option<&str>, limit: usize) -> (Vec<TargetStatus>, Option<String>) {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let take = limit.saturating_add(1);
        // Targets with state, and those with a policy (idle ones too, so a policy can always
        // be seen and removed), merged in key order.
        let keys: std::collections::BTreeSet<&TargetKey> = self
            .targets
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(k, _)| k)
            .take(take)
            .chain(
                self.policies
                    .range::<str, _>((from, Bound::Unbounded))
                    .map(|(k, _)| k)
                    .take(take),
            )
            .collect();
        let mut out: Vec<TargetStatus> = keys
            .into_iter()
            .take(take)
            .map(|k| {
                let t = self.targets.get(k);
                TargetStatus {
                    target: k.to_string(),
                    in_flight: t.map_or(0, |t| t.in_flight),
                    waiting: t.map_or(0, |t| t.queue.len()),
                    last_error: t.and_then(|t| t.last_error.clone()),
                    breaker: t.map_or(Breaker::Closed { failures: 0 }, |t| t.breaker),
                    policy: self.policies.get(k).copied(),
                }
            })
            .collect();
        let next = if out.len() > limit {
            out.truncate(limit);
            out.last().map(|s| s.target.clone())
        } else {
            None
        };
        (out, next)
    }

    /// Totals over every target. O(targets): for metrics, not per attempt.
    pub fn totals(&self) -> TargetTotals {
        let mut totals = TargetTotals {
            targets: self.targets.len(),
            in_flight: self.in_flight,
            waiting: self.queued,
            ..TargetTotals::default()
        };
        for t in self.targets.values() {
            match t.breaker {
                Breaker::Open { .. } => totals.open += 1,
                Breaker::HalfOpen { .. } => totals.half_open += 1,
                Breaker::Closed { .. } => {}
            }
        }
        totals
    }

    /// Moves every waiting target whose instant has come to `ready`.
    fn promote(&mut self, now_ms: i64) {
        while let Some((at, key)) = self.waiting.first().cloned() {
            if at > now_ms {
                break;
            }
            self.waiting.pop_first();
            let Some(t) = self.targets.get_mut(&key) else {
                continue;
            };
            let Some(((head, _), _)) = t.queue.first_key_value() else {
                t.place = Place::Idle;
                continue;
            };
            let head = *head;
            t.place = Place::Ready(t.in_flight, head);
            self.ready.insert((t.in_flight, head, key));
        }
    }

    fn unplace(&mut self, key: &TargetKey, place: Place) {
        match place {
            Place::Idle => {}
            Place::Waiting(at) => {
                self.waiting.remove(&(at, key.clone()));
            }
            Place::Ready(n, at) => {
                self.ready.remove(&(n, at, key.clone()));
            }
        }
    }

    /// Puts a target where it belongs after any change to its queue, count or breaker.
    fn place(&mut self, key: &TargetKey) {
        let policy = self.enforced(key);
        let policy = policy.as_ref();
        let host_max = share(self.host_max, self.shards);
        let Some(t) = self.targets.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut t.place, Place::Idle);
        let cap = policy
            .and_then(|p| p.max_concurrency)
            .map_or(host_max, |n| n as usize)
            .max(1);
        // The rate limit: not before the next token.
        let token_at = policy.and_then(gcra).map_or(i64::MIN, |(_, tolerance)| {
            (t.tat_ms - tolerance).ceil() as i64
        });
        let not_before = match (t.queue.first_key_value(), t.breaker) {
            (None, _) => None,
            _ if t.in_flight >= cap => None,
            (Some(_), Breaker::HalfOpen { .. }) => None,
            (Some(((head, _), _)), Breaker::Open { until_ms, .. }) => {
                Some((*head).max(until_ms).max(token_at))
            }
            (Some(((head, _), _)), Breaker::Closed { .. }) => Some((*head).max(token_at)),
        };
        if let Some(at) = not_before {
            t.place = Place::Waiting(at);
        }
        self.unplace(key, old);
        if let Some(at) = not_before {
            self.waiting.insert((at, key.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_enforces_its_part_of_a_cluster_wide_limit_rounded_up() {
        assert_eq!(share(64, 1), 64);
        assert_eq!(share(64, 6), 10, "six parts never add up to more than 64");
        assert_eq!(share(1, 6), 1, "never 0");
        let p = Policy {
            max_concurrency: Some(10),
            rate_milli_per_s: Some(5_000),
            burst: Some(3),
        };
        assert_eq!(policy_share(p, 1), p);
        let sixth = policy_share(p, 6);
        assert_eq!(sixth.max_concurrency, Some(1));
        assert_eq!(sixth.rate_milli_per_s, Some(833));
        assert_eq!(sixth.burst, Some(1));
        let none = policy_share(Policy::default(), 6);
        assert_eq!(none, Policy::default());
    }

    fn key(s: &str) -> TargetKey {
        Arc::from(s)
    }

    /// The node-wide cap is shared like the per-target one: one of six shards' dispatchers
    /// starts at most a sixth of it, however many targets have work.
    #[test]
    fn a_shard_s_dispatcher_keeps_its_part_of_the_node_wide_cap() {
        for (shards, cap) in [(1, 60), (6, 10)] {
            let mut s = Scheduler::new(64, 60).with_shards(shards);
            for t in ["a", "b", "c", "d", "e", "f", "g", "h"] {
                fill(&mut s, t, 0, 20);
            }
            let mut started = 0;
            while s.next(0).is_some() {
                started += 1;
            }
            assert_eq!(started, cap, "{shards} shard(s)");
        }
    }

    /// Queues `n` items for `target`, all due at `at`.
    fn fill(s: &mut Scheduler<()>, target: &str, at: i64, n: usize) {
        for i in 0..n {
            s.push(key(target), at, format!("{target}-{i:04}"), ());
        }
    }

    /// Starts (and at once ends) every attempt the scheduler allows at each millisecond of
    /// `from..to`: the attempts started per target.
    fn run_for(s: &mut Scheduler<()>, from: i64, to: i64) -> BTreeMap<String, usize> {
        let mut started = BTreeMap::new();
        for now in from..to {
            while let Some(st) = s.next(now) {
                *started.entry(st.id[..1].to_owned()).or_insert(0) += 1;
                s.finish(&st.key, st.probe, Outcome::Answered, None, now);
            }
        }
        started
    }

    /// A target's policy: `rate_per_s` with `burst` starts that many a second after a first
    /// burst, and `max_concurrency` caps its attempts in flight; other targets are untouched,
    /// and removing the policy lifts the limit.
    #[test]
    fn a_policy_limits_its_target_s_rate_and_concurrency_only() {
        let mut s = Scheduler::new(8, 64);
        fill(&mut s, "a", 0, 2000);
        fill(&mut s, "b", 0, 300);
        let limited = Policy {
            max_concurrency: None,
            rate_milli_per_s: Some(50_000),
            burst: Some(5),
        };
        s.set_policies(BTreeMap::from([(key("a"), limited)]));
        let first = run_for(&mut s, 0, 1000);
        assert_eq!(first["b"], 300, "the other target is not limited");
        // A burst of 5, then one every 20 ms: at 0, 20, ..., 980 (50) plus 4 from the burst.
        assert_eq!(first["a"], 54, "{first:?}");
        let second = run_for(&mut s, 1000, 2000);
        assert_eq!(second["a"], 50, "{second:?}");
        s.set_policies(BTreeMap::new());
        let free = run_for(&mut s, 2000, 2001);
        assert!(free["a"] > 100, "{free:?}");

        // Woken late (every 3 ms here), burst 1 still keeps the rate: 50 a second, not fewer.
        let mut s = Scheduler::new(8, 64);
        fill(&mut s, "e", 0, 500);
        let exact = Policy {
            rate_milli_per_s: Some(50_000),
            ..Policy::default()
        };
        s.set_policies(BTreeMap::from([(key("e"), exact)]));
        let mut started = 0;
        for now in (0..2000).step_by(3) {
            while let Some(st) = s.next(now) {
                started += 1;
                s.finish(&st.key, st.probe, Outcome::Answered, None, now);
            }
        }
        assert!((99..=101).contains(&started), "{started} in 2 s at 50/s");

        // max_concurrency replaces host_max for its target.
        let mut s = Scheduler::new(8, 64);
        fill(&mut s, "c", 0, 10);
        fill(&mut s, "d", 0, 10);
        let two = Policy {
            max_concurrency: Some(2),
            ..Policy::default()
        };
        s.set_policies(BTreeMap::from([(key("c"), two)]));
        let mut in_flight = BTreeMap::new();
        while let Some(st) = s.next(0) {
            *in_flight.entry(st.key.to_string()).or_insert(0) += 1;
        }
        assert_eq!((in_flight["c"], in_flight["d"]), (2, 8));
    }

    /// Starts everything that may start at `now`; returns the targets in start order.
    fn drain(s: &mut Scheduler<()>, now: i64) -> Vec<Started<()>> {
        std::iter::from_fn(|| s.next(now)).collect()
    }

    fn targets_of(started: &[Started<()>]) -> Vec<&str> {
        started.iter().map(|s| &*s.key).collect()
    }

    #[test]
    fn target_keys_are_host_and_port_with_the_scheme_default() {
        let cases = [
            ("http://Example.COM/x", Some("example.com:80")),
            ("https://example.com/x?y", Some("example.com:443")),
            ("http://127.0.0.1:8080/", Some("127.0.0.1:8080")),
            ("http://[::1]:9/", Some("[::1]:9")),
            ("http://user:pw@h:1/", Some("h:1")),
            ("not a url", None),
        ];
        for (url, want) in cases {
            assert_eq!(target_key(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn within_a_target_attempts_go_in_due_order_and_only_when_due() {
        let mut s = Scheduler::new(64, 1024);
        s.push(key("a"), 30, "r3".into(), ());
        s.push(key("a"), 10, "r1".into(), ());
        s.push(key("a"), 20, "r2".into(), ());
        assert!(s.next(5).is_none(), "nothing is due yet");
        assert_eq!(s.next_wake(), Some(10));
        let ids: Vec<String> = drain(&mut s, 25).into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["r1", "r2"]);
        assert_eq!(s.next_wake(), Some(30));
        assert_eq!(s.next(30).map(|s| s.id).as_deref(), Some("r3"));
        assert_eq!((s.in_flight(), s.queued()), (3, 0));
    }

    #[test]
    fn a_saturated_target_does_not_block_other_targets() {
        let mut s = Scheduler::new(3, 1024);
        // The black hole's runs are all due first, and far more than its cap.
        fill(&mut s, "hole:80", 0, 100);
        fill(&mut s, "ok:80", 50, 5);
        let started = drain(&mut s, 100);
        let order = targets_of(&started);
        assert_eq!(order.iter().filter(|t| **t == "hole:80").count(), 3);
        assert_eq!(order.iter().filter(|t| **t == "ok:80").count(), 3);
        // The healthy target finishes and goes on while the hole still holds its three slots.
        for st in started.iter().filter(|s| &*s.key == "ok:80") {
            s.finish(&st.key, st.probe, Outcome::Answered, None, 101);
        }
        let more = drain(&mut s, 102);
        assert_eq!(targets_of(&more), ["ok:80", "ok:80"]);
        assert_eq!(s.queued(), 97);
    }

    #[test]
    fn the_node_cap_is_shared_fairly_between_targets_with_work() {
        let mut s = Scheduler::new(64, 10);
        fill(&mut s, "a:80", 0, 100);
        fill(&mut s, "b:80", 5, 100);
        fill(&mut s, "c:80", 9, 2);
        let started = drain(&mut s, 10);
        let count = |t: &str| targets_of(&started).iter().filter(|k| **k == t).count();
        assert_eq!(started.len(), 10, "the node cap");
        assert_eq!((count("a:80"), count("b:80"), count("c:80")), (4, 4, 2));
        // A freed slot goes to the target holding the fewest, not to the earliest due head.
        let b = started
            .iter()
            .find(|s| &*s.key == "b:80")
            .expect("b started");
        s.finish(&b.key, false, Outcome::Answered, None, 11);
        assert_eq!(s.next(11).map(|s| s.key), Some(key("b:80")));
        // A slot no one else wants is used (work-conserving): c has nothing more queued.
        let c = started
            .iter()
            .find(|s| &*s.key == "c:80")
            .expect("c started");
        s.finish(&c.key, false, Outcome::Answered, None, 12);
        let n = s.next(12).expect("a slot left idle");
        assert!(["a:80", "b:80"].contains(&&*n.key));
    }

    #[test]
    fn equal_shares_go_to_the_earliest_due_head() {
        let mut s = Scheduler::new(64, 2);
        s.push(key("late:80"), 20, "l".into(), ());
        s.push(key("early:80"), 10, "e".into(), ());
        s.push(key("mid:80"), 15, "m".into(), ());
        let ids: Vec<String> = drain(&mut s, 30).into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["e", "m"]);
    }

    #[test]
    fn breaker_transitions() {
        use Breaker::*;
        use Outcome::*;
        let closed = Closed { failures: 0 };
        let cases: Vec<(Breaker, Outcome, bool, Breaker)> = vec![
            (closed, Failed, false, Closed { failures: 1 }),
            (
                Closed { failures: 18 },
                Failed,
                false,
                Closed { failures: 19 },
            ),
            (
                Closed { failures: 19 },
                Failed,
                false,
                Open {
                    until_ms: 1_000 + BREAKER_PAUSE_MIN_MS,
                    pause_ms: BREAKER_PAUSE_MIN_MS,
                },
            ),
            (Closed { failures: 19 }, Answered, false, closed),
            (
                Closed { failures: 7 },
                NotSent,
                false,
                Closed { failures: 7 },
            ),
            // Late failures of attempts started before the circuit opened change nothing.
            (
                Open {
                    until_ms: 5,
                    pause_ms: 4,
                },
                Failed,
                false,
                Open {
                    until_ms: 5,
                    pause_ms: 4,
                },
            ),
            (
                Open {
                    until_ms: 5,
                    pause_ms: 4,
                },
                Answered,
                false,
                closed,
            ),
            (HalfOpen { pause_ms: 4_000 }, Answered, true, closed),
            (
                HalfOpen { pause_ms: 4_000 },
                Failed,
                true,
                Open {
                    until_ms: 9_000,
                    pause_ms: 8_000,
                },
            ),
            (
                HalfOpen {
                    pause_ms: BREAKER_PAUSE_MAX_MS,
                },
                Failed,
                true,
                Open {
                    until_ms: 1_000 + BREAKER_PAUSE_MAX_MS,
                    pause_ms: BREAKER_PAUSE_MAX_MS,
                },
            ),
            (
                HalfOpen { pause_ms: 4_000 },
                Failed,
                false,
                HalfOpen { pause_ms: 4_000 },
            ),
            (
                HalfOpen { pause_ms: 4_000 },
                NotSent,
                true,
                Open {
                    until_ms: 1_000,
                    pause_ms: 4_000,
                },
            ),
        ];
        for (from, outcome, probe, want) in cases {
            assert_eq!(
                from.after(outcome, probe, 1_000),
                want,
                "{from:?} + {outcome:?} (probe {probe})"
            );
        }
    }

    #[test]
    fn an_open_circuit_holds_the_queue_then_lets_one_probe_through() {
        let mut s = Scheduler::new(64, 1024);
        fill(&mut s, "hole:80", 0, 40);
        fill(&mut s, "ok:80", 0, 1);
        let started = drain(&mut s, 0);
        assert_eq!(started.len(), 41);
        for st in &started {
            let (outcome, error) = if &*st.key == "hole:80" {
                (Outcome::Failed, Some("timeout".to_owned()))
            } else {
                (Outcome::Answered, None)
            };
            s.finish(&st.key, st.probe, outcome, error, 100);
        }
        // Opened at the 20th failure, at t=100, for the minimum pause.
        let (page, _) = s.page(None, 10);
        let hole = page.iter().find(|t| t.target == "hole:80").expect("listed");
        assert_eq!(
            hole.breaker,
            Breaker::Open {
                until_ms: 100 + BREAKER_PAUSE_MIN_MS,
                pause_ms: BREAKER_PAUSE_MIN_MS
            }
        );
        assert_eq!(hole.last_error.as_deref(), Some("timeout"));
        // Runs keep coming due for the open target: they wait in its queue.
        fill(&mut s, "hole:80", 200, 5);
        assert!(drain(&mut s, 500).is_empty());
        assert_eq!(s.next_wake(), Some(100 + BREAKER_PAUSE_MIN_MS));
        // After the pause exactly one probe goes, the earliest run.
        let probes = drain(&mut s, 100 + BREAKER_PAUSE_MIN_MS);
        assert_eq!(probes.len(), 1);
        assert!(probes[0].probe);
        assert_eq!(probes[0].at_ms, 200);
        assert_eq!(s.totals().half_open, 1);
        // It fails: open again for twice the pause.
        let t = 100 + BREAKER_PAUSE_MIN_MS + 10;
        s.finish(&probes[0].key, true, Outcome::Failed, None, t);
        assert_eq!(s.next_wake(), Some(t + 2 * BREAKER_PAUSE_MIN_MS));
        assert!(drain(&mut s, t + 2 * BREAKER_PAUSE_MIN_MS - 1).is_empty());
        // The next probe is answered: closed, and the rest of the queue flows.
        let probe = s.next(t + 2 * BREAKER_PAUSE_MIN_MS).expect("second probe");
        assert!(probe.probe);
        s.finish(&probe.key, true, Outcome::Answered, None, t + 2_500);
        let rest = drain(&mut s, t + 2_500);
        assert_eq!(rest.len(), 3, "five queued, two went as probes");
        assert!(rest.iter().all(|r| !r.probe));
        assert_eq!(s.totals().open + s.totals().half_open, 0);
    }

    #[test]
    fn a_target_with_an_open_circuit_and_a_full_queue_is_held() {
        let mut s = Scheduler::new(64, 1024);
        fill(&mut s, "hole:80", 0, BREAKER_FAILURES as usize);
        for st in drain(&mut s, 0) {
            s.finish(&st.key, st.probe, Outcome::Failed, None, 10);
        }
        assert!(!s.holds("hole:80", 20), "open, but nothing waits yet");
        fill(&mut s, "hole:80", 20, HELD_QUEUE_MAX - 1);
        assert!(!s.holds("hole:80", 20));
        s.push(key("hole:80"), 30, "last".into(), ());
        assert!(s.holds("hole:80", 30));
        // A closed target with a long queue of runs not yet late is not held, nor an unknown one.
        fill(&mut s, "ok:80", 1_000_000, BEHIND_QUEUE_MAX * 2);
        assert!(!s.holds("ok:80", 1_000_000) && !s.holds("nobody:80", 0));
        // Once the probe is answered the circuit closes and the target is released.
        s.push(key("hole:80"), 31, "extra".into(), ());
        let probe = s.next(10 + BREAKER_PAUSE_MIN_MS).expect("probe");
        assert!(
            probe.probe && s.holds("hole:80", 10 + BREAKER_PAUSE_MIN_MS),
            "half open still holds"
        );
        s.finish(&probe.key, true, Outcome::Answered, None, 2_000);
        assert!(!s.holds("hole:80", 2_000));
    }

    #[test]
    fn a_target_that_falls_behind_is_held_until_its_queue_shrinks() {
        let mut s = Scheduler::new(64, 1024);
        fill(&mut s, "slow:80", 0, BEHIND_QUEUE_MAX);
        // Not late enough yet, then late enough: held although its circuit is closed.
        assert!(!s.holds("slow:80", BEHIND_MS - 1));
        assert!(s.holds("slow:80", BEHIND_MS));
        assert_eq!(s.totals().open, 0);
        // Its attempts go on; once fewer than the bound wait, it is released however late.
        let started = drain(&mut s, BEHIND_MS);
        assert_eq!(started.len(), 64);
        assert!(!s.holds("slow:80", 10 * BEHIND_MS));
        // Another target meanwhile is neither held nor delayed.
        fill(&mut s, "ok:80", 10 * BEHIND_MS, 1);
        assert!(!s.holds("ok:80", 10 * BEHIND_MS));
        s.finish(
            &started[0].key,
            false,
            Outcome::Answered,
            None,
            10 * BEHIND_MS,
        );
        let next = s.next(10 * BEHIND_MS).expect("one slot free");
        assert_eq!(&*next.key, "ok:80", "fewest in flight goes first");
    }

    #[test]
    fn clean_idle_targets_are_forgotten_and_pages_continue_after_a_key() {
        let mut s = Scheduler::new(64, 1024);
        for t in ["a:1", "b:1", "c:1", "d:1"] {
            fill(&mut s, t, 0, 1);
        }
        let started = drain(&mut s, 0);
        let (page, next) = s.page(None, 3);
        assert_eq!(page.len(), 3);
        assert_eq!(next.as_deref(), Some("c:1"));
        let (rest, next) = s.page(next.as_deref(), 3);
        assert_eq!(
            rest.iter().map(|t| t.target.as_str()).collect::<Vec<_>>(),
            ["d:1"]
        );
        assert_eq!(next, None);
        for st in &started {
            let err = (&*st.key == "b:1").then(|| "status 500".to_owned());
            s.finish(&st.key, false, Outcome::Answered, err, 1);
        }
        // Only the target whose last attempt failed is still shown, until forgotten.
        let (page, _) = s.page(None, 10);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].target, "b:1");
        s.forget_idle();
        assert_eq!(s.totals().targets, 0);
        // A target with a policy is listed even while idle, in key order among the others,
        // and pages go on across both kinds.
        fill(&mut s, "c:1", 0, 1);
        let policy = Policy {
            max_concurrency: Some(2),
            ..Policy::default()
        };
        s.set_policies(BTreeMap::from([(key("a:1"), policy), (key("e:1"), policy)]));
        let (page, next) = s.page(None, 2);
        let names = |p: &[TargetStatus]| p.iter().map(|t| t.target.clone()).collect::<Vec<_>>();
        assert_eq!(names(&page), ["a:1", "c:1"]);
        assert_eq!((page[0].waiting, page[0].policy), (0, Some(policy)));
        assert_eq!((page[1].waiting, page[1].policy), (1, None));
        let (rest, next) = s.page(next.as_deref(), 2);
        assert_eq!((names(&rest), next), (vec!["e:1".to_owned()], None));
    }
}
