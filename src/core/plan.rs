//! Pure dispatch decisions: which runs of a job to claim now (with the misfire policy), and what
//! follows a delivery attempt (the retry policy). No clock, no I/O, no randomness of its own.

use std::time::Duration;

use super::command::{
    AttemptResult, ClaimItem, ClaimKind, Job, JobExt, MisfirePolicy, RetrySpec, Run,
};
use chrono::DateTime;

use crate::schedule::Schedule;

/// Most fires a planner looks at for one job in one round; more are left for the next round
/// (the cursor has moved by then).
pub const FIRES_PER_ROUND_MAX: usize = 10_000;

/// Misfired runs of an interval job that its policy skips are recorded as one skipped entry,
/// counted without visiting them, once there are more than this many (fewer go the usual way).
pub const SKIP_FAST_FORWARD_MIN: u64 = 1_000;

/// The next due instant of a job, or None when paused or exhausted.
/// `next_due` with the job's own schedule resolved (None for one that cannot be).
pub fn job_next_due(job: &Job) -> Option<i64> {
    crate::schedule::resolve(&job.spec.schedule, job.schedule_base_ms)
        .and_then(|schedule| next_due(job, &schedule))
}

pub fn next_due(job: &Job, schedule: &Schedule) -> Option<i64> {
    if job.spec.paused {
        return None;
    }
    let span = Span::of(&job.spec.ext, job.schedule_base_ms, schedule);
    next_fire(schedule, job.cursor_ms.max(span.floor_ms)).filter(|due| *due <= span.end_ms)
}

/// Where a job's fires lie within its bounds: strictly after `floor_ms` (a cron schedule's
/// `start_at`) and at or before `end_ms` (`end_at`, or the last of its first `max_runs`
/// fires).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub floor_ms: i64,
    pub end_ms: i64,
}

impl Span {
    /// The span of a schedule with bounds `ext` and base instant `base_ms`. `max_runs` counts
    /// the schedule's fires from its start (`start_at`, else the base: the create or the last
    /// change of the schedule), fires while paused included.
    pub fn of(ext: &JobExt, base_ms: i64, schedule: &Schedule) -> Span {
        let floor_ms = ext.start_at_ms.map_or(i64::MIN, |s| s.saturating_sub(1));
        let mut end_ms = ext.end_at_ms.unwrap_or(i64::MAX);
        if let Some(n) = ext.max_runs {
            let counted_from = match schedule {
                // An interval counts from its anchor, its first fire.
                Schedule::Every { .. } | Schedule::Once(_) => floor_ms,
                Schedule::Cron(_) => floor_ms.max(base_ms),
            };
            if let Some(last) = nth_fire(schedule, counted_from, n) {
                end_ms = end_ms.min(last);
            }
        }
        Span { floor_ms, end_ms }
    }
}

/// Cron schedules' `nth_fire`, remembered: it visits `n` fires (up to `MAX_RUNS_MAX`), and the
/// planner asks for the same one at every round of the job.
static NTH_FIRES: std::sync::LazyLock<std::sync::Mutex<NthFires>> =
    std::sync::LazyLock::new(Default::default);
/// (expression, time zone, after, n) → the `n`th fire.
type NthFires = std::collections::HashMap<(String, String, i64, u32), Option<i64>>;
const NTH_FIRES_KEPT: usize = 4096;

/// The `n`th fire of `schedule` strictly after `after_ms` (n from 1 to `MAX_RUNS_MAX`, which
/// a replicated value is held to here too); None when it has fewer.
pub fn nth_fire(schedule: &Schedule, after_ms: i64, n: u32) -> Option<i64> {
    let n = n.clamp(1, crate::limits::MAX_RUNS_MAX);
    match schedule {
        Schedule::Every { anchor, period } => {
            let anchor_ms = anchor.timestamp_millis();
            let first = if after_ms < anchor_ms {
                anchor_ms
            } else {
                next_fire(schedule, after_ms)?
            };
            let period = i64::try_from(period.as_millis()).ok()?;
            first.checked_add(period.checked_mul(i64::from(n - 1))?)
        }
        Schedule::Once(_) => (n == 1).then(|| next_fire(schedule, after_ms))?,
        Schedule::Cron(cron) => {
            let key = (
                cron.expr().to_owned(),
                cron.timezone().name().to_owned(),
                after_ms,
                n,
            );
            let mut memo = NTH_FIRES.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(found) = memo.get(&key) {
                return *found;
            }
            let mut at = Some(after_ms);
            for _ in 0..n {
                at = at.and_then(|t| next_fire(schedule, t));
            }
            if memo.len() >= NTH_FIRES_KEPT {
                memo.clear();
            }
            memo.insert(key, at);
            at
        }
    }
}

/// How long after its nominal instant `due_ms` a run of `job` is due: a fixed offset in
/// `[0, jitter)` from a hash of the job id, its incarnation and the instant, so every leader
/// computes the same one and a failover never moves a run.
pub fn jitter_offset(job: &Job, due_ms: i64) -> i64 {
    let Some(jitter) = job.spec.ext.jitter_ms.filter(|j| *j > 0) else {
        return 0;
    };
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(job.id.as_bytes());
    h.update(job.incarnation.to_be_bytes());
    h.update(due_ms.to_be_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % jitter) as i64
}

fn next_fire(schedule: &Schedule, after_ms: i64) -> Option<i64> {
    let after = DateTime::from_timestamp_millis(after_ms)?;
    schedule.next_after(after).map(|t| t.timestamp_millis())
}

/// The claim items for `job` at `now_ms`: runs due up to `now_ms + horizon_ms`, in due order.
/// Runs more than `grace` late are misfired and handled by the job's misfire policy.
pub fn plan_job(job: &Job, schedule: &Schedule, now_ms: i64, horizon_ms: i64) -> Vec<ClaimItem> {
    if job.spec.paused {
        return Vec::new();
    }
    let misfire = &job.spec.misfire;
    let before_now = |ms: u64| now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX));
    let late_before = before_now(misfire.grace_ms);
    // `fire_all` delivers misfired runs from here on, and skips older ones.
    let oldest_kept = before_now(misfire.catchup_window_ms);
    let mut misfired = Vec::new();
    let mut on_time = Vec::new();
    let mut cursor = job.cursor_ms;
    let item = |due: i64, kind: ClaimKind| ClaimItem {
        job_id: job.id.clone(),
        incarnation: job.incarnation,
        due_ms: due,
        kind,
    };
    let mut items = Vec::new();
    let span = Span::of(&job.spec.ext, job.schedule_base_ms, schedule);
    cursor = cursor.max(span.floor_ms);
    // A long stretch of misfired interval runs the policy skips (a cluster down for long, a
    // `start_at` far back) becomes one entry at once, instead of rounds of 10,000.
    let bulk_before = late_before.min(span.end_ms.saturating_add(1));
    if let Some((count, first, last)) =
        skipped_in_bulk(job, schedule, cursor, bulk_before, oldest_kept)
    {
        items.push(item(
            last,
            ClaimKind::Skip {
                count,
                first_ms: first,
            },
        ));
        cursor = last;
    }
    while misfired.len() + on_time.len() < FIRES_PER_ROUND_MAX {
        let Some(due) = next_fire(schedule, cursor) else {
            break;
        };
        if due > now_ms.saturating_add(horizon_ms) || due > span.end_ms {
            break;
        }
        if due.saturating_add(jitter_offset(job, due)) < late_before {
            misfired.push(due);
        } else {
            on_time.push(due);
        }
        cursor = due;
    }
    let skip = |fires: &[i64]| -> Option<ClaimItem> {
        let (first, last) = (fires.first()?, fires.last()?);
        Some(item(
            *last,
            ClaimKind::Skip {
                count: fires.len() as u64,
                first_ms: *first,
            },
        ))
    };
    match misfire.policy {
        MisfirePolicy::Skip => items.extend(skip(&misfired)),
        MisfirePolicy::FireOnce => {
            if let Some((last, older)) = misfired.split_last() {
                items.extend(skip(older));
                items.push(item(*last, ClaimKind::Deliver));
            }
        }
        MisfirePolicy::FireAll => {
            let split = misfired.partition_point(|due| *due < oldest_kept);
            items.extend(skip(&misfired[..split]));
            items.extend(
                misfired[split..]
                    .iter()
                    .map(|d| item(*d, ClaimKind::Deliver)),
            );
        }
    }
    items.extend(on_time.into_iter().map(|d| item(d, ClaimKind::Deliver)));
    // A jittered run is due its offset after its instant.
    for i in &mut items {
        let offset = jitter_offset(job, i.due_ms);
        if i.kind == ClaimKind::Deliver && offset > 0 {
            i.kind = ClaimKind::DeliverAt {
                at_ms: i.due_ms.saturating_add(offset),
            };
        }
    }
    items
}

/// The interval runs after the job's cursor that its misfire policy skips, when there are more
/// than `SKIP_FAST_FORWARD_MIN`: (count, first, last due instant). Misfired runs are those
/// before `late_before`; `skip` skips them all, `fire_once` all but the last, `fire_all` those
/// before `oldest_kept` (older than its catch-up window).
fn skipped_in_bulk(
    job: &Job,
    schedule: &Schedule,
    cursor_ms: i64,
    late_before: i64,
    oldest_kept: i64,
) -> Option<(u64, i64, i64)> {
    let at = |ms: i64| DateTime::from_timestamp_millis(ms);
    let after = at(cursor_ms)?;
    let misfire = &job.spec.misfire;
    let before = match misfire.policy {
        MisfirePolicy::Skip => late_before,
        // Up to (not including) the last misfired run, which is delivered.
        MisfirePolicy::FireOnce => schedule
            .interval_fires_between(after, at(late_before)?)?
            .2
            .timestamp_millis(),
        MisfirePolicy::FireAll => late_before.min(oldest_kept),
    };
    let (count, first, last) = schedule.interval_fires_between(after, at(before)?)?;
    (count > SKIP_FAST_FORWARD_MIN)
        .then(|| (count, first.timestamp_millis(), last.timestamp_millis()))
}

/// The part of one job's planned `items` (in due order) to claim now, when the earliest other
/// job waiting to be claimed is due at `frontier_ms`: the first item, and every further one due
/// no later than the frontier. A job that is behind (after an outage, or under overload) would
/// otherwise claim all its overdue runs at once, ahead of older runs of jobs not claimed yet,
/// and runs would go out of due order across jobs; the rest is claimed when the job comes up
/// again in due order. A prefix, so the job's cursor still moves forward only.
pub fn due_prefix(mut items: Vec<ClaimItem>, frontier_ms: i64) -> Vec<ClaimItem> {
    let keep = items
        .iter()
        .skip(1)
        .take_while(|i| i.due_ms <= frontier_ms)
        .count()
        + 1;
    items.truncate(keep);
    items
}

/// Runs per second the dispatcher counts on claiming when it sizes its horizon: below the rate
/// claims commit at on a busy 2-core machine (a 100k herd with 10k/s planned had 38 % of its
/// runs claimed after they were due), so a herd is claimed with time to spare.
pub const CLAIM_PLAN_RATE_PER_S: f64 = 4_000.0;

/// How far ahead to claim: `base_ms`, widened so that runs claimed back to back at
/// `rate_per_s`, in due order, are all claimed before they fall due. Runs `j..=k` claimed back
/// to back from `due_j - horizon` on are done by `due_k` only if the horizon is at least
/// `(k - j + 1) / rate - (due_k - due_j)`; the horizon is the largest such bound over the runs
/// due within `max_ms` (in one pass, with the running maximum of `due_j - j / rate`), never
/// more than `max_ms`. So 100k jobs due at one instant are claimed from 10 s before it on at
/// 10k runs/s, while a steady spread of due runs keeps the base horizon. `dues` are the index's
/// due instants in ascending order; the caller bounds how many it passes.
pub fn claim_horizon(
    dues: impl Iterator<Item = i64>,
    now_ms: i64,
    base_ms: i64,
    max_ms: i64,
    rate_per_s: f64,
) -> i64 {
    let per_run_ms = 1000.0 / rate_per_s;
    let mut horizon = base_ms as f64;
    let mut latest_start = f64::MIN;
    for (k, due) in dues.enumerate() {
        if due.saturating_sub(now_ms) > max_ms {
            break;
        }
        let due = due as f64;
        latest_start = latest_start.max(due - k as f64 * per_run_ms);
        horizon = horizon.max((k + 1) as f64 * per_run_ms - due + latest_start);
    }
    (horizon.ceil() as i64).clamp(base_ms, max_ms.max(base_ms))
}

/// How far past the horizon a shard's claims reach (`claim_until`), so how far apart its claim
/// rounds go. Every node applies every shard's rounds, each at a cost of its own (the entry's
/// flushes, messages and apply on every node), so with more shards each gathers longer: 100 ms
/// per two shards, from 100 to 300 ms (docs/performance.md, "Rounds per shard"). Claiming
/// earlier costs no duplicate: a run claimed and not sent is sent by the next leader once.
pub fn gather_ms(shards: u32) -> i64 {
    100 * i64::from(shards.div_ceil(2).clamp(1, 3))
}

/// The latest due instant a claim takes now, or none while the first unclaimed run (due at
/// `first_due_ms`) is not yet within `horizon_ms`: a claim waits for a run to come within the
/// horizon, then takes along every run due up to `gather_ms` further. So claims go out in
/// batches about `gather_ms` apart, not one per run entering the horizon.
pub fn claim_until(first_due_ms: i64, now_ms: i64, horizon_ms: i64, gather_ms: i64) -> Option<i64> {
    let reach = now_ms.saturating_add(horizon_ms);
    (first_due_ms <= reach).then(|| reach.saturating_add(gather_ms))
}

/// Whether the first attempt of run `run_id` of job `job_id` (a job with an overlap policy)
/// waits, given the runs with an attempt in flight from this dispatcher and their jobs, and
/// which runs the state has `ended`: while another run of the job is in flight from here but
/// ended in the state (its outcome came from an earlier epoch's attempt while this epoch sent it
/// again), it is open at its target and the overlap decision (`Command::StartRun`) would not
/// see it. Before that decision (`started` false), one the state has open is seen there (and
/// decides as the policy says). Once the run is `started` (the decision said go), any other
/// run of the job in flight from here holds it: the state may have ended that run between the
/// check before the decision and the decision (found by the chaos smoke: a new leader sent a
/// run again, the old leader's outcome for it then applied, and the next run started 11 ms
/// later while the target still had the first open).
pub fn hold_start(
    attempting: &std::collections::HashMap<String, String>,
    job_id: &str,
    run_id: &str,
    started: bool,
    ended: impl Fn(&str) -> bool,
) -> bool {
    attempting
        .iter()
        .any(|(run, job)| job == job_id && run != run_id && (started || ended(run)))
}

/// When a dispatcher whose epoch began at `epoch_start_ms` may first send open run `run` of
/// `job`: when it falls due (or its retry does), except that a run of a job whose runs never
/// overlap (`Overlap::one_at_a_time`) that a previous epoch may still have out (started or
/// attempted, due by the epoch's start) waits until that attempt must have ended, a timeout
/// after the epoch began. If its outcome applies meanwhile, the run is not sent again at all,
/// and no next run starts while the target still has it open (found by the six-shard chaos
/// smoke: leadership handed over twice within one slow attempt, the second new leader started
/// the next run while the first one's re-send of the previous run was still open). Pure.
pub fn first_send_at(job: &Job, run: &Run, epoch_start_ms: i64) -> i64 {
    let at = run.next_due_ms();
    let one_at_a_time = job
        .spec
        .ext
        .overlap
        .is_some_and(super::overlap::Overlap::one_at_a_time);
    let maybe_out = run.ext.started || !run.attempts.is_empty();
    if one_at_a_time && maybe_out && at <= epoch_start_ms {
        let timeout = i64::try_from(job.spec.timeout_ms).unwrap_or(i64::MAX);
        at.max(epoch_start_ms.saturating_add(timeout))
    } else {
        at
    }
}

/// Whether a queued attempt of a run of incarnation `incarnation` may go out now, given its job
/// and the run as the applied state holds them: the job is still that incarnation and not
/// paused, and the run still exists and is open. A run queued before a pause that forgot it
/// (it fell due while paused) must not go out after the resume, although its job is running
/// again (found by the chaos soak: one such run was delivered 0.4 s after a resume).
pub fn may_attempt(job: &Job, run: Option<&Run>, incarnation: u64) -> bool {
    job.incarnation == incarnation
        && !job.spec.paused
        && run.is_some_and(|r| r.incarnation == incarnation && r.status.is_open() && !r.ext.waiting)
}

/// How an HTTP attempt went, as far as the retry policy cares.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpOutcome {
    pub status: Option<u16>,
    /// `Retry-After` of a 429 or 503, if it parsed.
    pub retry_after: Option<Duration>,
    /// The attempt can never succeed (the egress policy denies the target): no retry.
    pub denied: bool,
}

impl HttpOutcome {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The delay before attempt `n + 1` after attempt `n` failed: exponential from the initial
/// backoff, jittered by ±`jitter` (with `rand01` in [0, 1)), capped at `max_backoff`.
pub fn backoff_ms(n: u32, retry: &RetrySpec, rand01: f64) -> u64 {
    let exp = retry.multiplier.powi(n.saturating_sub(1).min(1000) as i32);
    let base = (retry.initial_backoff_ms as f64 * exp).min(retry.max_backoff_ms as f64);
    let factor = 1.0 + retry.jitter * (2.0 * rand01.clamp(0.0, 1.0) - 1.0);
    ((base * factor).round() as u64).min(retry.max_backoff_ms)
}

/// What follows attempt `n` of a run: success, another attempt at some instant, or failure.
/// A `Retry-After` is honoured up to `max_backoff`.
pub fn after_attempt(
    n: u32,
    retry: &RetrySpec,
    outcome: &HttpOutcome,
    now_ms: i64,
    rand01: f64,
) -> AttemptResult {
    if outcome.succeeded() {
        return AttemptResult::Succeeded;
    }
    if n >= retry.max_attempts || outcome.denied {
        return AttemptResult::Failed;
    }
    let mut delay = backoff_ms(n, retry, rand01);
    if let Some(ra) = outcome.retry_after {
        delay = delay.max((ra.as_millis() as u64).min(retry.max_backoff_ms));
    }
    AttemptResult::RetryAt(now_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::core::command::{JobSpec, MisfireSpec, ScheduleSpec};

    use super::*;

    #[test]
    fn shards_gather_claims_longer_the_more_there_are_up_to_300_ms() {
        for (shards, ms) in [
            (0, 100),
            (1, 100),
            (2, 100),
            (3, 200),
            (4, 200),
            (5, 300),
            (6, 300),
            (64, 300),
        ] {
            assert_eq!(gather_ms(shards), ms, "{shards} shards");
        }
    }

    #[test]
    fn a_claim_waits_for_a_run_within_the_horizon_then_takes_those_just_beyond_it() {
        // (first due, now, horizon, gather) → latest due claimed
        for (first, now, horizon, gather, until) in [
            (1_300, 1_000, 300, 100, Some(1_400)),
            (1_301, 1_000, 300, 100, None),
            (500, 1_000, 300, 100, Some(1_400)),
            (1_300, 1_000, 300, 0, Some(1_300)),
            (i64::MAX, i64::MAX - 1, 300, 100, Some(i64::MAX)),
            (i64::MIN, 0, 0, 0, Some(0)),
        ] {
            assert_eq!(
                claim_until(first, now, horizon, gather),
                until,
                "{first} {now} {horizon} {gather}"
            );
        }
    }

    #[test]
    fn a_run_waits_to_start_while_another_run_of_its_job_is_in_flight_from_here() {
        let in_flight: std::collections::HashMap<String, String> = [
            ("run_a_1".to_owned(), "a".to_owned()),
            ("run_b_1".to_owned(), "b".to_owned()),
        ]
        .into();
        let ended = |_: &str| true;
        for started in [false, true] {
            assert!(
                hold_start(&in_flight, "a", "run_a_2", started, ended),
                "another run of a is out, ended in the state"
            );
            assert!(
                !hold_start(&in_flight, "a", "run_a_1", started, ended),
                "its own attempt"
            );
            assert!(
                !hold_start(&in_flight, "c", "run_c_1", started, ended),
                "nothing of c is out"
            );
            assert!(!hold_start(
                &Default::default(),
                "a",
                "run_a_2",
                started,
                ended
            ));
        }
        assert!(
            !hold_start(&in_flight, "a", "run_a_2", false, |_| false),
            "open in the state, before the decision: the policy decides there"
        );
        assert!(
            hold_start(&in_flight, "a", "run_a_2", true, |_| false),
            "after it said go, any other run out from here holds it"
        );
    }

    #[test]
    fn the_horizon_widens_ahead_of_a_herd_only() {
        let (now, base, max, rate) = (1_000_000, 2_000, 60_000, 10_000.0);
        let h = |dues: Vec<i64>| claim_horizon(dues.into_iter(), now, base, max, rate);
        // Nothing due, or a steady 1,000 runs/s: the base horizon.
        assert_eq!(h(vec![]), base);
        assert_eq!(h((0..60_000).map(|i| now + i).collect()), base);
        // 100k runs due at one instant take 10 s to claim: from 10 s before it on, whether it
        // is 20 s or 50 s ahead.
        assert_eq!(h(vec![now + 20_000; 100_000]), 10_000);
        assert_eq!(h(vec![now + 50_000; 100_000]), 10_000);
        // 10k at one instant need 1 s: the base horizon is enough.
        assert_eq!(h(vec![now + 2_500; 10_000]), base);
        // Runs due earlier count too: 30k at 3 s after 15k at 1 s: the 30k alone need 3 s.
        let mut two = vec![now + 1_000; 15_000];
        two.extend(vec![now + 3_000; 30_000]);
        assert_eq!(h(two), 3_000);
        // A herd spread over 5 s (20k runs/s) needs 10 s less the 5 s it is spread over.
        let spread = h((0..100_000).map(|i| now + 20_000 + i / 20).collect());
        assert!((5_000..=5_001).contains(&spread), "{spread}");
        // Never beyond `max` (a herd beyond it is not looked at yet), and overdue or extreme
        // instants are fine.
        assert_eq!(h(vec![now + 90_000; 2_000_000]), base);
        assert_eq!(h(vec![now + 1_000; 1_000_000]), max);
        assert_eq!(h(vec![now - 5_000; 10]), base);
        assert_eq!(h(vec![i64::MIN, i64::MAX]), base);
    }
    use crate::schedule::resolve;

    const S: i64 = 1000;

    fn job(schedule: ScheduleSpec, policy: MisfirePolicy, cursor_ms: i64) -> Job {
        Job {
            id: "j".into(),
            spec: JobSpec {
                url: "http://x/".into(),
                method: "POST".into(),
                headers: BTreeMap::new(),
                body: None,
                schedule,
                retry: retry(5),
                timeout_ms: 1000,
                misfire: MisfireSpec {
                    policy,
                    grace_ms: 60_000,
                    catchup_window_ms: 3_600_000,
                },
                paused: false,
                secret_headers: Vec::new(),
                ext: Default::default(),
            },
            incarnation: 7,
            created_at_ms: 0,
            updated_at_ms: 0,
            version: 1,
            schedule_base_ms: 0,
            cursor_ms,
        }
    }

    fn retry(max_attempts: u32) -> RetrySpec {
        RetrySpec {
            max_attempts,
            initial_backoff_ms: 1000,
            max_backoff_ms: 10_000,
            multiplier: 2.0,
            jitter: 0.2,
        }
    }

    fn every_second() -> ScheduleSpec {
        ScheduleSpec::Every {
            every_ms: 1000,
            start_at_ms: Some(0),
        }
    }

    /// `start_at` (cron), `end_at` and `max_runs` bound what is planned and what comes next;
    /// a job past its last fire has none (it is completed).
    #[test]
    fn bounds_keep_the_fires_within_start_end_and_max_runs() {
        let dues = |j: &Job, now: i64| -> Vec<i64> {
            plan(j, now, 0).iter().map(|i| i.due_ms).collect::<Vec<_>>()
        };
        let mut j = job(every_second(), MisfirePolicy::FireAll, -1);
        j.spec.ext.max_runs = Some(3);
        assert_eq!(dues(&j, 10 * S), [0, S, 2 * S]);
        j.cursor_ms = 2 * S;
        assert_eq!(job_next_due(&j), None, "three runs, then completed");
        j.cursor_ms = -1;
        j.spec.ext.max_runs = None;
        j.spec.ext.end_at_ms = Some(4 * S + 500);
        assert_eq!(dues(&j, 10 * S), [0, S, 2 * S, 3 * S, 4 * S]);
        // A cron schedule starts at its start_at and counts max_runs from there (every minute).
        let mut c = job(
            ScheduleSpec::Cron {
                expr: "* * * * *".into(),
                timezone: "UTC".into(),
            },
            MisfirePolicy::FireAll,
            0,
        );
        c.spec.ext.start_at_ms = Some(600 * S);
        c.spec.ext.max_runs = Some(2);
        assert_eq!(job_next_due(&c), Some(600 * S));
        assert_eq!(dues(&c, 3600 * S), [600 * S, 660 * S]);
        c.cursor_ms = 660 * S;
        assert_eq!(job_next_due(&c), None);
        let s = resolve(&c.spec.schedule, 0).unwrap();
        assert_eq!(
            nth_fire(&s, 0, 3),
            Some(180 * S),
            "remembered or not, the same"
        );
        assert_eq!(nth_fire(&s, 0, 3), Some(180 * S));
    }

    /// A jittered run is claimed for its nominal instant and due its offset later: in
    /// `[0, jitter)`, the same every time it is computed, different between instants and jobs.
    #[test]
    fn jitter_is_a_fixed_offset_per_run_below_the_jitter() {
        let mut j = job(every_second(), MisfirePolicy::FireAll, -1);
        j.spec.ext.jitter_ms = Some(800);
        let items = plan(&j, 50 * S, 0);
        assert_eq!(items.len(), 51);
        let mut offsets = std::collections::BTreeSet::new();
        for i in &items {
            let ClaimKind::DeliverAt { at_ms } = i.kind else {
                assert_eq!(jitter_offset(&j, i.due_ms), 0, "{i:?}");
                continue;
            };
            let offset = at_ms - i.due_ms;
            assert!((1..800).contains(&offset), "{i:?}");
            assert_eq!(offset, jitter_offset(&j, i.due_ms));
            offsets.insert(offset);
        }
        assert!(offsets.len() > 40, "spread: {offsets:?}");
        let mut other = j.clone();
        other.incarnation += 1;
        assert_ne!(
            (0..10)
                .map(|k| jitter_offset(&j, k * S))
                .collect::<Vec<_>>(),
            (0..10)
                .map(|k| jitter_offset(&other, k * S))
                .collect::<Vec<_>>()
        );
        j.spec.ext.jitter_ms = None;
        assert!(plan(&j, 5 * S, 0)
            .iter()
            .all(|i| i.kind == ClaimKind::Deliver));
    }

    fn plan(j: &Job, now: i64, horizon: i64) -> Vec<ClaimItem> {
        let schedule = resolve(&j.spec.schedule, j.schedule_base_ms).expect("valid schedule");
        plan_job(j, &schedule, now, horizon)
    }

    fn dues(items: &[ClaimItem]) -> Vec<(i64, ClaimKind)> {
        items.iter().map(|i| (i.due_ms, i.kind.clone())).collect()
    }

    #[test]
    fn on_time_runs_within_the_horizon_are_claimed_in_order() {
        let j = job(every_second(), MisfirePolicy::FireOnce, 10 * S);
        let items = plan(&j, 10 * S + 500, 2000);
        assert_eq!(
            dues(&items),
            vec![(11 * S, ClaimKind::Deliver), (12 * S, ClaimKind::Deliver)]
        );
        assert!(items.iter().all(|i| i.incarnation == 7 && i.job_id == "j"));
        // Late within grace is still on time: a failover never skips.
        let items = plan(&j, 10 * S + 59_000, 0);
        assert_eq!(items.len(), 59);
        assert!(items.iter().all(|i| i.kind == ClaimKind::Deliver));
    }

    #[test]
    fn a_job_behind_claims_only_up_to_the_next_jobs_due() {
        let j = job(every_second(), MisfirePolicy::FireOnce, 10 * S);
        // Five seconds behind: five runs are due, 11..=15 s (and 16 s within the horizon).
        let items = plan(&j, 15 * S + 500, 1000);
        assert_eq!(items.len(), 6);
        // (frontier, runs kept): always the first, then those no later than the frontier.
        let cases = [
            (i64::MIN, vec![11 * S]),
            (11 * S, vec![11 * S]),
            (12 * S, vec![11 * S, 12 * S]),
            (13 * S + 500, vec![11 * S, 12 * S, 13 * S]),
            (i64::MAX, (11..=16).map(|s| s * S).collect()),
        ];
        for (frontier, want) in cases {
            let kept = due_prefix(items.clone(), frontier);
            let got: Vec<i64> = kept.iter().map(|i| i.due_ms).collect();
            assert_eq!(got, want, "frontier {frontier}");
        }
        assert!(due_prefix(Vec::new(), 0).is_empty());
        // A misfired range stays whole: its skip item is one item, due at the range's end.
        let j = job(every_second(), MisfirePolicy::FireOnce, 0);
        let kept = due_prefix(plan(&j, 100 * S, 0), 0);
        assert_eq!(
            dues(&kept),
            vec![(
                38 * S,
                ClaimKind::Skip {
                    count: 38,
                    first_ms: S
                }
            )]
        );
    }

    #[test]
    fn fire_once_delivers_only_the_latest_misfired_run_and_skips_the_rest() {
        let j = job(every_second(), MisfirePolicy::FireOnce, 0);
        // Down for 100 s with a 60 s grace: fires 1..=39 are misfired, 40..=100 on time.
        let items = plan(&j, 100 * S, 0);
        assert_eq!(
            items[0].kind,
            ClaimKind::Skip {
                count: 38,
                first_ms: S
            }
        );
        assert_eq!(items[0].due_ms, 38 * S);
        assert_eq!(
            (items[1].due_ms, &items[1].kind),
            (39 * S, &ClaimKind::Deliver)
        );
        assert_eq!(items.len(), 2 + 61);
        assert!(
            items.windows(2).all(|w| w[0].due_ms < w[1].due_ms),
            "strictly increasing"
        );
    }

    #[test]
    fn fire_all_delivers_misfired_runs_inside_the_catchup_window_and_skips_older_ones() {
        let mut j = job(every_second(), MisfirePolicy::FireAll, 0);
        j.spec.misfire.catchup_window_ms = 80_000;
        let items = plan(&j, 100 * S, 0);
        // 1..=19 are older than the window, 20..=39 misfired but inside it, 40..=100 on time.
        assert_eq!(
            items[0].kind,
            ClaimKind::Skip {
                count: 19,
                first_ms: S
            }
        );
        assert_eq!(items[0].due_ms, 19 * S);
        assert!(items[1..].iter().all(|i| i.kind == ClaimKind::Deliver));
        assert_eq!(items[1].due_ms, 20 * S);
        assert_eq!(items.len(), 1 + 81);
    }

    /// A long misfired stretch of an interval job is one skipped entry, counted without
    /// visiting its runs (an every-1s job started in 1970 used to take a round of 10,000 fires
    /// per entry: the leader wrote skipped ranges for minutes); below the threshold the result
    /// is exactly what visiting gives.
    #[test]
    fn a_long_misfired_interval_stretch_is_skipped_in_one_entry() {
        let skip = |count: u64, first_ms: i64| ClaimKind::Skip { count, first_ms };
        // Now 2,060 s: runs before 2,000 s are misfired (grace 60 s), 2,000..=2,060 on time.
        let now = 2_060 * S;
        let cases = [
            (MisfirePolicy::Skip, skip(1_999, S), 1_999 * S, 61),
            // All but the last misfired run, which is delivered.
            (MisfirePolicy::FireOnce, skip(1_998, S), 1_998 * S, 1 + 61),
            // Older than the 80 s catch-up window: before 1,980 s.
            (MisfirePolicy::FireAll, skip(1_979, S), 1_979 * S, 20 + 61),
        ];
        for (policy, kind, due, delivered) in cases {
            let mut j = job(every_second(), policy, 0);
            j.spec.misfire.catchup_window_ms = 80_000;
            let items = plan(&j, now, 0);
            assert_eq!(
                (&items[0].kind, items[0].due_ms),
                (&kind, due),
                "{policy:?}"
            );
            assert_eq!(items.len(), 1 + delivered, "{policy:?}");
            assert!(items[1..].iter().all(|i| i.kind == ClaimKind::Deliver));
            assert!(items.windows(2).all(|w| w[0].due_ms < w[1].due_ms));
        }
        // Thirty years of every-second runs: one entry, and the rest of the round as usual.
        let thirty_years = 30 * 365 * 86_400 * S;
        for policy in [
            MisfirePolicy::Skip,
            MisfirePolicy::FireOnce,
            MisfirePolicy::FireAll,
        ] {
            let j = job(every_second(), policy, 0);
            let items = plan(&j, thirty_years, 0);
            let ClaimKind::Skip { count, first_ms } = items[0].kind else {
                panic!("{policy:?}: {:?}", items[0]);
            };
            assert_eq!(first_ms, S, "{policy:?}");
            assert!(count > 900_000_000, "{policy:?}: {count}");
            assert_eq!(items[0].due_ms, first_ms + (count as i64 - 1) * S);
            assert!(items.len() <= FIRES_PER_ROUND_MAX + 1, "{policy:?}");
        }
    }

    #[test]
    fn skip_records_every_misfired_run_as_one_skipped_entry() {
        let j = job(every_second(), MisfirePolicy::Skip, 0);
        let items = plan(&j, 100 * S, 0);
        assert_eq!(
            items[0].kind,
            ClaimKind::Skip {
                count: 39,
                first_ms: S
            }
        );
        assert_eq!(items[0].due_ms, 39 * S);
        assert_eq!(items.len(), 1 + 61);
    }

    #[test]
    fn a_misfired_one_shot_is_delivered_unless_the_policy_is_skip() {
        for (policy, expect) in [
            (MisfirePolicy::FireOnce, ClaimKind::Deliver),
            (MisfirePolicy::FireAll, ClaimKind::Deliver),
            (
                MisfirePolicy::Skip,
                ClaimKind::Skip {
                    count: 1,
                    first_ms: 5 * S,
                },
            ),
        ] {
            let j = job(ScheduleSpec::At { at_ms: 5 * S }, policy, 0);
            let items = plan(&j, 500 * S, 0);
            assert_eq!(dues(&items), vec![(5 * S, expect)], "{policy:?}");
        }
    }

    #[test]
    fn a_past_at_is_due_at_creation_not_misfired() {
        let mut j = job(ScheduleSpec::At { at_ms: 5 * S }, MisfirePolicy::Skip, 0);
        j.schedule_base_ms = 500 * S;
        j.cursor_ms = 500 * S - 1;
        let items = plan(&j, 500 * S + 10, 0);
        assert_eq!(dues(&items), vec![(500 * S, ClaimKind::Deliver)]);
        // Once claimed, there is nothing more.
        j.cursor_ms = 500 * S;
        let schedule = resolve(&j.spec.schedule, j.schedule_base_ms).expect("schedule");
        assert_eq!(next_due(&j, &schedule), None);
    }

    #[test]
    fn paused_jobs_plan_nothing() {
        let mut j = job(every_second(), MisfirePolicy::FireOnce, 0);
        j.spec.paused = true;
        assert!(plan(&j, 100 * S, 1000).is_empty());
        let schedule = resolve(&j.spec.schedule, 0).expect("schedule");
        assert_eq!(next_due(&j, &schedule), None);
    }

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter_and_caps() {
        let r = retry(10);
        assert_eq!(backoff_ms(1, &r, 0.5), 1000);
        assert_eq!(backoff_ms(2, &r, 0.5), 2000);
        assert_eq!(backoff_ms(3, &r, 0.5), 4000);
        assert_eq!(backoff_ms(10, &r, 0.5), 10_000, "capped at max_backoff");
        assert_eq!(backoff_ms(1, &r, 0.0), 800, "jitter -20%");
        assert_eq!(backoff_ms(1, &r, 0.999_999), 1200, "jitter +20%");
        assert_eq!(
            backoff_ms(10, &r, 0.999_999),
            10_000,
            "jitter never exceeds the cap"
        );
        assert_eq!(backoff_ms(u32::MAX, &r, 0.5), 10_000, "no overflow");
    }

    #[test]
    fn after_attempt_succeeds_retries_honours_retry_after_and_fails_at_the_last_attempt() {
        let r = retry(3);
        let ok = HttpOutcome {
            status: Some(204),
            retry_after: None,
            denied: false,
        };
        let err = HttpOutcome {
            status: Some(500),
            retry_after: None,
            denied: false,
        };
        let timeout = HttpOutcome {
            status: None,
            retry_after: None,
            denied: false,
        };
        let busy = HttpOutcome {
            status: Some(503),
            retry_after: Some(Duration::from_secs(7)),
            denied: false,
        };
        let too_long = HttpOutcome {
            status: Some(429),
            retry_after: Some(Duration::from_secs(3600)),
            denied: false,
        };
        assert_eq!(after_attempt(1, &r, &ok, 0, 0.5), AttemptResult::Succeeded);
        assert_eq!(
            after_attempt(1, &r, &err, 0, 0.5),
            AttemptResult::RetryAt(1000)
        );
        assert_eq!(
            after_attempt(2, &r, &timeout, 100, 0.5),
            AttemptResult::RetryAt(2100)
        );
        assert_eq!(
            after_attempt(1, &r, &busy, 0, 0.5),
            AttemptResult::RetryAt(7000)
        );
        assert_eq!(
            after_attempt(1, &r, &too_long, 0, 0.5),
            AttemptResult::RetryAt(10_000)
        );
        assert_eq!(after_attempt(3, &r, &err, 0, 0.5), AttemptResult::Failed);
        assert_eq!(after_attempt(3, &r, &ok, 0, 0.5), AttemptResult::Succeeded);
        let denied = HttpOutcome {
            denied: true,
            ..timeout
        };
        assert_eq!(
            after_attempt(1, &r, &denied, 0, 0.5),
            AttemptResult::Failed,
            "an egress denial is never retried"
        );
    }
}
