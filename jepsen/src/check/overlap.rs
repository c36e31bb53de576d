//! Checker 12, overlap: a job with `overlap: skip` (the workload's overlap jobs, whose runs the
//! sink holds open up to ~3 s) never has two runs open at once, and loses no run silently — each
//! of its instants is delivered or recorded (`skipped` with a reason, or `failed`).
//!
//! From the runs listed at the end (every run of these jobs: they fire fewer times than hookd's
//! run retention) and the sink's log, each run that was attempted gets a *span*: from its first
//! evidence of an attempt (a recorded attempt's `started_at`, an arrival at the sink) to its last
//! (a recorded attempt's `started_at + duration_ms`, an arrival). hookd starts a run only once
//! `Command::StartRun` applied with no other run of the job open, and a run stays open until its
//! last outcome applied, after its last attempt ended: so the spans of two runs never overlap
//! (`OPEN_TOL` covers hookd's ms timestamps). A run re-sent by a new leader keeps its id, so its
//! re-sends widen its own span and clash with nothing; an old leader starts no attempt once its
//! lease is gone, so none of its sends is excused either.
//!
//! Then, for each instant of the job from `head_start` after its create was acknowledged to
//! `drain` before the final read (and its `end_at`): delivered (a 2xx at the sink), or listed
//! `skipped` (`overlap` or `misfire`) or `failed`. Listed but still open or `succeeded` with no
//! 2xx seen, or not listed at all, is a violation. A run skipped for `overlap` must also have had
//! a cause: another run open around its instant (`CAUSE_TOL` for an outcome's trip through the
//! log; excused in node fault and overload windows, where that trip may take longer), and must
//! never have been sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};

use super::model::Timeline;
use super::{Input, RunRecord, Verdict};
use crate::history::{rfc3339_us, Op};
use crate::sink::Delivery;

/// Two runs' spans may touch within this (hookd records attempt starts and durations in whole
/// ms, rounded down).
pub const OPEN_TOL: i64 = 2_000;
/// A run skipped for overlap had another run open when its `StartRun` applied, at or after its
/// instant; that run's last attempt ended at most this long before (the trip of its outcome
/// through the log: the leader's one recorder queue and a commit) outside fault windows. Below
/// the overlap jobs' period, so a skip right after a run that was answered at once is caught.
pub const CAUSE_TOL: i64 = 500_000;

fn ms(t: i64) -> i64 {
    t.div_euclid(1000)
}

/// The jobs created with `overlap: skip`.
pub fn skip_jobs(ops: &[Op]) -> BTreeSet<String> {
    ops.iter()
        .filter(|o| o.f == "create" && o.value["overlap"] == "skip")
        .filter_map(|o| o.job.clone())
        .collect()
}

/// One run's attempts, as far as they were seen.
#[derive(Debug, Clone)]
struct Span<'a> {
    run: &'a str,
    scheduled_at: i64,
    start: i64,
    end: i64,
    /// Nodes that sent or recorded its attempts.
    nodes: BTreeSet<u64>,
}

impl Span<'_> {
    fn json(&self) -> Value {
        json!({
            "run": self.run, "scheduled_at": rfc3339_us(self.scheduled_at),
            "first_attempt": rfc3339_us(self.start), "last_attempt_end": rfc3339_us(self.end),
            "nodes": self.nodes,
        })
    }
}

/// The statuses of a run that has not ended.
pub const OPEN: [&str; 3] = ["pending", "in_flight", "retrying"];

/// When the sink answered an arrival: at once, or after the time it held the answer
/// (`slow:MS:CODE`, `delay:MS`).
fn answered_at(d: &Delivery) -> i64 {
    let held_ms = ["slow:", "delay:"]
        .iter()
        .find_map(|p| d.response.strip_prefix(p))
        .and_then(|rest| rest.split(':').next())
        .and_then(|ms| ms.parse::<i64>().ok())
        .unwrap_or(0);
    d.recv + held_ms * 1000
}

/// Every attempted run's span: recorded attempts and arrivals at the sink, by run id. A
/// recorded attempt the sink saw ends no later than the sink answered it: the node that made
/// it may note its end much later, if it was paused in between (the pause-leader fault), while
/// a new leader ended the run and started the next.
fn spans<'a>(runs: &'a [RunRecord], deliveries: &[&'a Delivery]) -> Vec<Span<'a>> {
    // The latest answer to each (run, attempt number) the sink saw.
    let mut answered: HashMap<(&str, u32), i64> = HashMap::new();
    for d in deliveries {
        let at = answered
            .entry((d.webhook_id.as_str(), d.attempt))
            .or_insert(i64::MIN);
        *at = (*at).max(answered_at(d));
    }
    let mut by_run: BTreeMap<&str, Span<'a>> = BTreeMap::new();
    let mut add = |run: &'a str, scheduled_at: i64, start: i64, end: i64, node: Option<u64>| {
        let s = by_run.entry(run).or_insert(Span {
            run,
            scheduled_at,
            start,
            end,
            nodes: BTreeSet::new(),
        });
        s.start = s.start.min(start);
        s.end = s.end.max(end);
        s.nodes.extend(node);
    };
    for r in runs {
        for a in &r.attempts {
            let recorded_end = a.started_at + a.duration_ms.max(0) * 1000;
            let end = answered
                .get(&(r.id.as_str(), a.n))
                .map_or(recorded_end, |t| recorded_end.min(*t).max(a.started_at));
            add(&r.id, r.scheduled_at, a.started_at, end, a.node_id);
        }
    }
    for d in deliveries {
        add(&d.webhook_id, d.scheduled_at, d.recv, d.recv, d.from);
    }
    // A run still open at the final read (a retry due after the nodes stopped) was open from
    // its first attempt to the end: runs skipped meanwhile had it to wait for.
    for r in runs.iter().filter(|r| OPEN.contains(&r.status.as_str())) {
        if let Some(s) = by_run.get_mut(r.id.as_str()) {
            s.end = i64::MAX;
        }
    }
    let mut out: Vec<Span<'a>> = by_run.into_values().collect();
    out.sort_by_key(|s| (s.start, s.end));
    out
}

#[derive(Default)]
struct Tally {
    due: u64,
    delivered: u64,
    skipped_overlap: u64,
    skipped_misfire: u64,
    failed: u64,
    open_at_end: u64,
    succeeded_unseen: u64,
    lost: u64,
}

pub fn check(input: &Input, timelines: &BTreeMap<String, Timeline>) -> Verdict {
    let mut v = Verdict::new("overlap");
    let p = &input.params;
    let jobs = skip_jobs(&input.ops);
    let mut by_job: HashMap<&str, Vec<&Delivery>> = HashMap::new();
    for d in &input.deliveries {
        by_job.entry(d.job_id.as_str()).or_default().push(d);
    }
    let hi = input.final_state.read_at - p.drain;
    let mut total = Tally::default();
    let (mut overlapping, mut skipped_sent, mut unexplained, mut unexplained_in_faults) =
        (0u64, 0u64, 0u64, 0u64);
    let (mut unread, mut listed, mut attempted, mut unlisted) = (0u64, 0u64, 0u64, 0u64);
    let mut min_gap: Option<i64> = None;
    // The longest a skip came after the run that explains it had ended (calibrates `CAUSE_TOL`).
    let mut max_lag: Option<i64> = None;
    let mut per_job = Vec::new();
    for job in &jobs {
        let Some(tl) = timelines.get(job) else {
            continue;
        };
        let ds = by_job.get(job.as_str()).cloned().unwrap_or_default();
        let Some(runs) = input.final_state.runs.get(job) else {
            if tl.created_ok.is_some() || !ds.is_empty() {
                unread += 1;
                v.unknown();
                v.example(json!({"runs_unread": job}));
            }
            continue;
        };
        listed += runs.len() as u64;
        let listed_ids: BTreeSet<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        unlisted += ds
            .iter()
            .map(|d| d.webhook_id.as_str())
            .filter(|w| !listed_ids.contains(w))
            .collect::<BTreeSet<_>>()
            .len() as u64;

        // (a) No two runs open at once.
        let spans = spans(runs, &ds);
        attempted += spans.len() as u64;
        let mut widest: Option<&Span> = None;
        for s in &spans {
            if let Some(w) = widest {
                let gap = s.start - w.end;
                if gap < -OPEN_TOL {
                    overlapping += 1;
                    v.invalid();
                    v.example(json!({
                        "two_runs_open": job, "overlap_ms": -gap as f64 / 1000.0,
                        "open": w.json(), "then_started": s.json(),
                    }));
                } else {
                    min_gap = Some(min_gap.map_or(gap, |m| m.min(gap)));
                }
            }
            if widest.is_none_or(|w| s.end > w.end) {
                widest = Some(s);
            }
        }

        // A run skipped for overlap: never sent, and another run was open around its instant.
        let sent: BTreeSet<&str> = spans.iter().map(|s| s.run).collect();
        for r in runs.iter().filter(|r| r.status == "skipped") {
            if sent.contains(r.id.as_str()) {
                skipped_sent += 1;
                v.invalid();
                v.example(json!({"skipped_but_attempted": job, "run": r.id, "scheduled_at": rfc3339_us(r.scheduled_at)}));
            }
            if r.skip_reason.as_deref() != Some("overlap") {
                continue;
            }
            let at = r.scheduled_at;
            let cause = spans
                .iter()
                .filter(|s| {
                    s.run != r.id
                        && s.end.saturating_add(CAUSE_TOL) >= at
                        && (s.scheduled_at < at || s.start <= at + CAUSE_TOL)
                })
                .map(|s| s.end)
                .max();
            if let Some(end) = cause {
                let lag = (at - end).max(0);
                max_lag = Some(max_lag.map_or(lag, |m| m.max(lag)));
            } else {
                let excuse = input
                    .fault_hitting(at)
                    .or(input.overload_at(at))
                    .map(|w| w.fault.name());
                if excuse.is_some() {
                    unexplained_in_faults += 1;
                } else {
                    unexplained += 1;
                    v.invalid();
                    let before = spans.iter().rev().find(|s| s.start <= at);
                    v.example(json!({
                        "skipped_with_no_run_open": job, "run": r.id,
                        "scheduled_at": rfc3339_us(at),
                        "latest_run_before": before.map(Span::json),
                    }));
                }
            }
        }

        // (b) No run lost silently.
        let ok: BTreeSet<i64> = ds
            .iter()
            .filter(|d| d.ok)
            .map(|d| ms(d.scheduled_at))
            .collect();
        let mut t = Tally::default();
        if let Some(sched) = &tl.sched {
            for &(s, e) in &tl.owed {
                let up = if e == i64::MAX { hi } else { e.min(hi) };
                for due in sched.dues(s + p.head_start, up) {
                    t.due += 1;
                    if ok.contains(&ms(due)) {
                        t.delivered += 1;
                        continue;
                    }
                    let rec = runs.iter().find(|r| {
                        ms(r.scheduled_at) == ms(due)
                            || (r.skipped_from.is_some_and(|f| ms(f) <= ms(due))
                                && r.skipped_to.is_some_and(|t| ms(due) <= ms(t)))
                    });
                    let what = match rec.map(|r| (r.status.as_str(), r.skip_reason.as_deref())) {
                        Some(("skipped", Some("overlap"))) => {
                            t.skipped_overlap += 1;
                            continue;
                        }
                        Some(("skipped", _)) => {
                            t.skipped_misfire += 1;
                            continue;
                        }
                        Some(("failed", _)) => {
                            t.failed += 1;
                            continue;
                        }
                        Some(("succeeded", _)) => {
                            t.succeeded_unseen += 1;
                            "succeeded, no 2xx at the sink"
                        }
                        Some(_) => {
                            t.open_at_end += 1;
                            "still open at the final read"
                        }
                        None => {
                            t.lost += 1;
                            "neither delivered nor listed"
                        }
                    };
                    v.invalid();
                    let attempts: Vec<Value> = ds
                        .iter()
                        .filter(|d| ms(d.scheduled_at) == ms(due))
                        .map(|d| json!([rfc3339_us(d.recv), d.response, d.from]))
                        .collect();
                    v.example(json!({
                        "lost": job, "due": rfc3339_us(due), "why": what,
                        "listed": rec.map(|r| json!({"id": r.id, "status": r.status})),
                        "arrivals": attempts,
                        "fault": input.fault_hitting(due).map(|w| w.fault.name()),
                    }));
                }
            }
        }
        per_job.push(json!({
            "job": job, "due": t.due, "delivered": t.delivered,
            "skipped_overlap": t.skipped_overlap, "runs_listed": runs.len(),
        }));
        total.due += t.due;
        total.delivered += t.delivered;
        total.skipped_overlap += t.skipped_overlap;
        total.skipped_misfire += t.skipped_misfire;
        total.failed += t.failed;
        total.open_at_end += t.open_at_end;
        total.succeeded_unseen += t.succeeded_unseen;
        total.lost += t.lost;
    }
    if jobs.is_empty() {
        v.unknown();
        v.example(json!({"no_job": "no job with overlap: skip was created"}));
    } else if total.delivered == 0 || total.skipped_overlap == 0 {
        // Nothing overlapped (or nothing ran): the property was not exercised.
        v.unknown();
        v.example(json!({"not_exercised": "no instant delivered, or none skipped for overlap", "due": total.due}));
    }
    v.count("jobs", jobs.len() as u64);
    v.count("runs_listed", listed);
    v.count("runs_attempted", attempted);
    v.count("runs_sent_but_unlisted", unlisted);
    v.count("jobs_runs_unread", unread);
    v.count("two_runs_open", overlapping);
    v.count("skipped_but_attempted", skipped_sent);
    v.count("skipped_with_no_run_open", unexplained);
    v.count("skipped_with_no_run_open_in_faults", unexplained_in_faults);
    v.count(
        "min_gap_between_runs_ms",
        min_gap.map(|g| g as f64 / 1000.0),
    );
    v.count(
        "max_skip_after_open_run_ended_ms",
        max_lag.map(|g| g as f64 / 1000.0),
    );
    v.count("instants_checked", total.due);
    v.count("delivered", total.delivered);
    v.count("skipped_overlap", total.skipped_overlap);
    v.count("skipped_misfire", total.skipped_misfire);
    v.count("failed", total.failed);
    v.count("open_at_end", total.open_at_end);
    v.count("succeeded_unseen", total.succeeded_unseen);
    v.count("lost", total.lost);
    v.count("per_job", json!(per_job));
    v.summary = format!(
        "{} jobs with overlap: skip, {attempted} runs attempted, {overlapping} times two open at once (closest: {} ms apart); of {} instants {} delivered, {} skipped for overlap, {} skipped by misfire, {} failed, {} lost ({} open at the end, {} succeeded unseen); {skipped_sent} skipped runs sent, {unexplained} skipped with no run open (+{unexplained_in_faults} in faults)",
        jobs.len(),
        min_gap.map_or("-".into(), |g| format!("{:.1}", g as f64 / 1000.0)),
        total.due,
        total.delivered,
        total.skipped_overlap,
        total.skipped_misfire,
        total.failed,
        total.lost + total.open_at_end + total.succeeded_unseen,
        total.open_at_end,
        total.succeeded_unseen,
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::model::timelines;
    use crate::check::testkit::*;
    use crate::check::{AttemptRecord, Validity};
    use crate::history::Type;
    use crate::nemesis::Kind;

    const MS: i64 = 1000;

    /// Job "o": every 1 s from T0 + 2 s, 20 fires, `overlap: skip`; read at T0 + 40 s (drain
    /// 10 s), so instants T0+2 .. T0+21 are checked.
    fn create() -> Op {
        let mut o = op(
            "create",
            "o",
            T0,
            T0 + 10_000,
            Type::Ok,
            json!({"status": 201}),
        );
        o.value = json!({"id": "o", "overlap": "skip", "schedule": {"every": "1s",
            "start_at": rfc3339_us(T0 + 2 * S), "end_at": rfc3339_us(T0 + 21 * S + 500 * MS)}});
        o
    }

    fn attempt(n: u32, start: i64, dur_ms: i64, code: u16, node: u64) -> AttemptRecord {
        AttemptRecord {
            n,
            started_at: start,
            duration_ms: dur_ms,
            status_code: Some(code),
            node_id: Some(node),
        }
    }

    fn run(due: i64, status: &str, attempts: Vec<AttemptRecord>) -> RunRecord {
        RunRecord {
            id: format!("run_o_{due}"),
            scheduled_at: due,
            status: status.into(),
            skip_reason: (status == "skipped").then(|| "overlap".into()),
            attempts,
            ..RunRecord::default()
        }
    }

    fn arrival(due: i64, n: u32, recv: i64, code: &str, from: u64) -> Delivery {
        Delivery {
            attempt: n,
            response: code.into(),
            ok: code == "200",
            ..delivery("o", due, recv, true, from)
        }
    }

    /// A clean history: every third instant delivered after two 503s ~3 s apart, the two in
    /// between skipped while it was open.
    fn clean() -> (Vec<RunRecord>, Vec<Delivery>) {
        let (mut runs, mut ds) = (Vec::new(), Vec::new());
        for k in 2..=21 {
            let due = T0 + k * S;
            if (k - 2) % 3 != 0 {
                runs.push(run(due, "skipped", vec![]));
                continue;
            }
            let times = [due + 5 * MS, due + S, due + 3 * S];
            let codes = [503, 503, 200];
            let mut atts = Vec::new();
            for (i, (t, c)) in times.iter().zip(codes).enumerate() {
                atts.push(attempt(i as u32 + 1, *t, 4, c, 1));
                ds.push(arrival(due, i as u32 + 1, t + 2 * MS, &c.to_string(), 1));
            }
            runs.push(run(due, "succeeded", atts));
        }
        (runs, ds)
    }

    fn input_with(runs: Vec<RunRecord>, ds: Vec<Delivery>) -> Input {
        let mut i = input(vec![create()], ds, T0 + 40 * S);
        i.final_state.runs.insert("o".into(), runs);
        i
    }

    fn checked(i: &Input) -> Verdict {
        check(i, &timelines(&i.ops))
    }

    #[test]
    fn runs_one_at_a_time_with_the_others_skipped_are_valid() {
        let (runs, ds) = clean();
        let v = checked(&input_with(runs, ds));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["instants_checked"], 20);
        assert_eq!(v.counts["delivered"], 7);
        assert_eq!(v.counts["skipped_overlap"], 13);
        assert_eq!(v.counts["two_runs_open"], 0);
        assert_eq!(v.counts["runs_attempted"], 7);
    }

    /// A run re-sent by a new leader (same run id, from another node, even while the old
    /// leader's attempt was in flight) is one run: no overlap.
    #[test]
    fn a_run_re_sent_by_a_new_leader_is_the_same_run() {
        let (mut runs, mut ds) = clean();
        let due = T0 + 5 * S;
        ds.push(arrival(due, 1, due + 1500 * MS, "200", 2));
        runs.iter_mut()
            .find(|r| r.scheduled_at == due)
            .unwrap()
            .attempts
            .push(attempt(1, due + 1498 * MS, 700, 200, 2));
        let v = checked(&input_with(runs, ds));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
    }

    /// The next run starting while the previous one waits for its retry: two open runs.
    #[test]
    fn a_run_started_while_another_is_open_fails() {
        let (mut runs, mut ds) = clean();
        // T0+3s was skipped while the run of T0+2s was open (retrying until T0+5s); send it.
        let due = T0 + 3 * S;
        let r = runs.iter_mut().find(|r| r.scheduled_at == due).unwrap();
        r.status = "succeeded".into();
        r.skip_reason = None;
        r.attempts = vec![attempt(1, due + 5 * MS, 3, 200, 1)];
        ds.push(arrival(due, 1, due + 6 * MS, "200", 1));
        let v = checked(&input_with(runs, ds));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["two_runs_open"], 1);
    }

    /// A leader paused with an attempt in flight notes its end only once it runs again, long
    /// after the sink answered and a new leader ended the run and started the next: judged by
    /// the sink's answer, no overlap. Without that arrival, the recorded end counts.
    #[test]
    fn an_attempt_ends_when_the_sink_answered_it_not_when_a_paused_node_noted_it() {
        let (mut runs, ds) = clean();
        // The run of T0+2s: its third attempt (sent T0+5s, answered T0+5.002s) noted 2 s long.
        let r = runs
            .iter_mut()
            .find(|r| r.scheduled_at == T0 + 2 * S)
            .unwrap();
        r.attempts[2].duration_ms = 2000;
        r.attempts[2].node_id = Some(3);
        let v = checked(&input_with(runs.clone(), ds.clone()));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        let unseen: Vec<Delivery> = ds
            .into_iter()
            .filter(|d| !(d.webhook_id == format!("run_o_{}", T0 + 2 * S) && d.attempt == 3))
            .collect();
        let v = checked(&input_with(runs, unseen));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["two_runs_open"], 1);
    }

    /// An old leader sending an attempt of a run after a new leader finished it and started
    /// the next one: not excused (it could only send without its lease).
    #[test]
    fn a_deposed_leaders_late_attempt_is_not_excused() {
        let (runs, mut ds) = clean();
        // The run of T0+2s ended at T0+5.004s; the run of T0+5s is open T0+5.005 .. T0+8.004.
        ds.push(arrival(T0 + 2 * S, 2, T0 + 6 * S, "200", 3));
        let v = checked(&input_with(runs, ds));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["two_runs_open"], 1);
    }

    #[test]
    fn an_instant_neither_delivered_nor_listed_is_lost() {
        let (mut runs, ds) = clean();
        runs.retain(|r| r.scheduled_at != T0 + 9 * S);
        let v = checked(&input_with(runs.clone(), ds.clone()));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["lost"], 1);
        // Listed but still retrying at the end: not resolved either.
        runs.push(run(T0 + 9 * S, "retrying", vec![]));
        let v = checked(&input_with(runs, ds));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["open_at_end"], 1);
    }

    #[test]
    fn a_skipped_run_that_was_sent_fails() {
        let (runs, mut ds) = clean();
        // T0+4s is listed skipped (while T0+2s was open), yet an attempt of it arrived later.
        ds.push(arrival(T0 + 4 * S, 1, T0 + 30 * S, "200", 1));
        let v = checked(&input_with(runs, ds));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["skipped_but_attempted"], 1);
    }

    /// Every run answered at once, yet one is skipped for overlap: nothing was open. Inside a
    /// node fault window it is only counted.
    #[test]
    fn a_skip_with_no_run_open_fails_outside_faults() {
        let (mut runs, mut ds) = (Vec::new(), Vec::new());
        for k in 2..=21 {
            let due = T0 + k * S;
            if k == 10 {
                runs.push(run(due, "skipped", vec![]));
                continue;
            }
            runs.push(run(
                due,
                "succeeded",
                vec![attempt(1, due + 5 * MS, 3, 200, 1)],
            ));
            ds.push(arrival(due, 1, due + 6 * MS, "200", 1));
        }
        let mut i = input_with(runs, ds);
        let v = checked(&i);
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["skipped_with_no_run_open"], 1);
        i.windows = vec![window(
            Kind::KillLeader,
            &[1],
            T0 + 9 * S,
            T0 + 12 * S,
            Some(S),
        )];
        let v = checked(&i);
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["skipped_with_no_run_open_in_faults"], 1);
    }

    /// A run left retrying when the nodes stopped is open to the end: the runs skipped after
    /// its last attempt had it to wait for (seen in a smoke run: a retry due 0.3 s after the
    /// stop).
    #[test]
    fn a_run_still_retrying_at_the_end_explains_the_skips_after_it() {
        let (mut runs, mut ds) = clean();
        let last = runs.iter().map(|r| r.scheduled_at).max().unwrap_or(0);
        // Well after every run of the clean history ended.
        let (first, next) = (last + 5_000_000, last + 6_000_000);
        runs.push(run(
            first,
            "retrying",
            vec![attempt(1, first + 5_000, 0, 503, 1)],
        ));
        ds.push(arrival(first, 1, first + 6_000, "503", 1));
        let mut skipped = run(next, "skipped", vec![]);
        skipped.skip_reason = Some("overlap".into());
        runs.push(skipped);
        let v = checked(&input_with(runs, ds));
        assert_eq!(v.counts["skipped_with_no_run_open"], 0, "{v:?}");
        assert_eq!(v.counts["two_runs_open"], 0, "{v:?}");
    }

    #[test]
    fn unread_runs_or_nothing_skipped_is_unknown() {
        let (runs, ds) = clean();
        let mut i = input_with(runs, ds.clone());
        i.final_state.runs.clear();
        assert_eq!(checked(&i).valid, Validity::Unknown);
        // Every run answered at once and delivered: the overlap never happened.
        let mut runs = Vec::new();
        let mut ds = Vec::new();
        for k in 2..=21 {
            let due = T0 + k * S;
            runs.push(run(due, "succeeded", vec![attempt(1, due, 3, 200, 1)]));
            ds.push(arrival(due, 1, due + MS, "200", 1));
        }
        let v = checked(&input_with(runs, ds));
        assert_eq!(v.valid, Validity::Unknown, "{v:?}");
        // No overlap job at all.
        let v = checked(&input(
            vec![create_every("a", T0, T0, 1)],
            vec![],
            T0 + 40 * S,
        ));
        assert_eq!(v.valid, Validity::Unknown, "{v:?}");
    }
}
