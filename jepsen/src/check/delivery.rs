//! Checkers 2 and 3. Delivery: every run due while its job was owed runs — at least `head_start`
//! after the create (or resume) was acknowledged, before the next pause/delete was invoked, and
//! at least `drain` before the final read — reached the sink with a 2xx, or is listed `skipped`
//! by the misfire policy (Chronos's target matching; the stable webhook-id makes the match
//! exact). Deliveries of instants that were never due are phantoms. Timeliness: lateness of each
//! run's first delivery, quiet vs fault windows (and overload windows apart), early fires, and the
//! time from each leader fault to the first delivery of a run due after it.
//!
//! Jobs aimed at the black-hole target owe nothing (they can never be delivered). Under an
//! overload hookd legitimately holds a backlog, and a delete cancels the backlog's runs of the
//! job: a run due in an overload window is owed before a close only if hookd had, by then,
//! already started runs due later than it (`Progress`; it sends each target's runs in due
//! order, SPEC §3), so a run skipped while later ones went out is still missed.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::model::{Sched, Timeline};
use super::{first_deliveries, percentile, Input, Verdict};
use crate::history::{rfc3339_us, Type};

fn ms(t: i64) -> i64 {
    t.div_euclid(1000)
}

/// Whether a run due at `due` was still owed when its window closed at `close` (a pause or
/// delete invocation): hookd must have had a chance to send it first. A quiet run is owed if due
/// `QUIET_SLACK` before the close, a run due during a fault `FAULT_SLACK` before it; a run that
/// fell due while no leader could act (from a leader fault until a new leader was named; through
/// a quorum loss until the heal) only if the close came `RECOVERY_SLACK` after that outage — a
/// run due while the cluster was down, then paused before a leader was back, is rightly never
/// sent.
pub fn owed_before_close(input: &Input, progress: &Progress, due: i64, close: i64) -> bool {
    if close == i64::MAX {
        return true;
    }
    if let Some(b) = outage_end(input, due) {
        if close < b + RECOVERY_SLACK {
            return false;
        }
    }
    if input.overload_at(due).is_some() && due > progress.sent_through(close) - ORDER_TOL {
        return false;
    }
    let in_fault = input.fault_at(due).is_some() || input.overload_at(due).is_some();
    due <= close - if in_fault { FAULT_SLACK } else { QUIET_SLACK }
}

/// How far hookd had got through the due runs at each instant: the latest due instant among
/// deliveries received by then. Every run due `ORDER_TOL` before that had been started too,
/// since one target's runs go out in due order (a claim batch answered before an earlier one
/// may reorder them by a claim round trip, well under `ORDER_TOL`).
#[derive(Debug, Default)]
pub struct Progress {
    /// (receipt, latest due among deliveries received by then), by receipt.
    steps: Vec<(i64, i64)>,
}

impl Progress {
    pub fn new(deliveries: &[crate::sink::Delivery]) -> Progress {
        let mut ds: Vec<(i64, i64)> = deliveries
            .iter()
            .map(|d| (d.recv, d.scheduled_at))
            .collect();
        ds.sort_unstable();
        let mut max = i64::MIN;
        let steps = ds
            .into_iter()
            .map(|(r, s)| {
                max = max.max(s);
                (r, max)
            })
            .collect();
        Progress { steps }
    }

    /// The first receipt by which a delivery of a run due at or after `due` had arrived.
    pub fn reached(&self, due: i64) -> Option<i64> {
        let n = self.steps.partition_point(|(_, m)| *m < due);
        self.steps.get(n).map(|(r, _)| *r)
    }

    /// The latest due instant among deliveries received at or before `t` (far in the past when
    /// none was).
    pub fn sent_through(&self, t: i64) -> i64 {
        let n = self.steps.partition_point(|(r, _)| *r <= t);
        if n == 0 {
            i64::MIN / 2
        } else {
            self.steps[n - 1].1
        }
    }
}

/// See `Progress`.
pub const ORDER_TOL: i64 = 2_000_000;

/// When the leader outage that `due` fell into ended, if it fell into one: from a leader fault
/// until the others named a new leader (or the heal), through a quorum loss until the heal.
pub fn outage_end(input: &Input, due: i64) -> Option<i64> {
    let settle = input.params.settle;
    input
        .windows
        .iter()
        // A run due just before an outage began may not have been sent yet either.
        .filter(|w| due >= w.start - OUTAGE_LEAD && due <= w.end + settle)
        .filter_map(|w| match w.fault {
            k if k.takes_quorum() => Some(w.end),
            k if k.hits_leader() => {
                Some(w.new_leader_after_us.map(|x| w.start + x).unwrap_or(w.end))
            }
            _ => None,
        })
        .filter(|b| due <= *b)
        .max()
}

/// How long before an outage a run may fall due and still be held by it (claim round trip and
/// send; regression: a one-shot due 2 ms before a restart-all was called stuck).
const OUTAGE_LEAD: i64 = 1_000_000;

/// A run's first attempt may start at most this long after it fell due, or after the leader
/// outage it fell into ended (SPEC §5: failover to first delivery p99 ≤ 2 s).
pub const STUCK_MAX: i64 = 5_000_000;

const QUIET_SLACK: i64 = 200_000;
const FAULT_SLACK: i64 = 1_000_000;
const RECOVERY_SLACK: i64 = 3_000_000;

/// What became of an owed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    SkippedByPolicy,
    Missed,
    /// Attempted, never with a 2xx, while still owed.
    NeverSucceeded,
    /// Attempted without a 2xx, then its job was paused or deleted.
    Cancelled,
}

/// One run hookd owed (see the module doc), and its fate.
#[derive(Debug, Clone)]
pub struct OwedRun<'a> {
    pub job: &'a str,
    pub due: i64,
    pub owed_from: i64,
    pub attempts: u32,
    pub fate: Fate,
}

/// Whether `t` is the instant hookd scheduled a one-shot job's run at because its `at` had
/// passed when the node stamped the create (SPEC §2: an `at` in the past is due at creation).
/// The stamp is unknown to the client: somewhere after the `at`, up to the create's
/// acknowledgement (or the delivery, for a create with no answer). It happens when the `at`
/// falls inside the create's latency, e.g. a create sent to a node that was SIGSTOPped.
fn due_at_creation(sched: &Sched, tl: &Timeline, t: i64, recv: i64) -> bool {
    matches!(*sched, Sched::At(at) if at < t && t <= tl.created_ok.unwrap_or(recv))
}

/// Every owed run of every job (black-hole jobs owe nothing), with its fate.
pub fn owed_runs<'a>(
    input: &'a Input,
    timelines: &'a BTreeMap<String, Timeline>,
) -> Vec<OwedRun<'a>> {
    let p = &input.params;
    let hi = input.final_state.read_at - p.drain;
    let progress = Progress::new(&input.deliveries);
    // (job, due ms) → (attempts, any 2xx)
    let mut got: HashMap<(&str, i64), (u32, bool)> = HashMap::new();
    for d in &input.deliveries {
        let e = got
            .entry((d.job_id.as_str(), ms(d.scheduled_at)))
            .or_default();
        e.0 += 1;
        e.1 |= d.ok;
    }
    let mut out = Vec::new();
    for tl in timelines.values().filter(|t| !t.is_blackhole()) {
        let Some(sched) = &tl.sched else { continue };
        for &(s, e) in &tl.owed {
            let lo = s + p.head_start;
            let closed = e != i64::MAX;
            // A run due just before a pause/delete may legitimately lose its retries to it.
            let up = if closed { e.min(hi) } else { hi };
            for due in sched.dues(lo, up) {
                if !owed_before_close(input, &progress, due, e) {
                    continue;
                }
                let (attempts, fate) = match got.get(&(tl.id.as_str(), ms(due))) {
                    Some((n, true)) => (*n, Fate::Delivered),
                    Some((n, false)) if closed => (*n, Fate::Cancelled),
                    Some((n, false)) => (*n, Fate::NeverSucceeded),
                    None => {
                        let skip = input.final_state.runs.get(&tl.id).is_some_and(|runs| {
                            runs.iter().any(|r| {
                                r.status == "skipped"
                                    && (ms(r.scheduled_at) == ms(due)
                                        || (r.skipped_from.is_some_and(|f| ms(f) <= ms(due))
                                            && r.skipped_to.is_some_and(|t| ms(due) <= ms(t))))
                            })
                        });
                        (
                            0,
                            if skip {
                                Fate::SkippedByPolicy
                            } else {
                                Fate::Missed
                            },
                        )
                    }
                };
                out.push(OwedRun {
                    job: tl.id.as_str(),
                    due,
                    owed_from: s,
                    attempts,
                    fate,
                });
            }
        }
    }
    out
}

pub fn check_delivery(input: &Input, timelines: &BTreeMap<String, Timeline>) -> Verdict {
    let mut v = Verdict::new("delivery");
    let (mut owed, mut delivered, mut skipped, mut missed, mut cancelled, mut unsucceeded) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for r in owed_runs(input, timelines) {
        owed += 1;
        match r.fate {
            Fate::Delivered => delivered += 1,
            Fate::Cancelled => cancelled += 1,
            Fate::SkippedByPolicy => skipped += 1,
            Fate::NeverSucceeded => {
                unsucceeded += 1;
                v.invalid();
                v.example(json!({"never_succeeded": r.job, "due": rfc3339_us(r.due), "attempts": r.attempts}));
            }
            Fate::Missed => {
                missed += 1;
                v.invalid();
                let fault = input
                    .fault_at(r.due)
                    .or(input.overload_at(r.due))
                    .map(|w| w.fault.name());
                v.example(json!({"missed": r.job, "due": rfc3339_us(r.due), "owed_from": rfc3339_us(r.owed_from), "fault": fault}));
            }
        }
    }
    // Phantoms: a delivery of an instant the job's schedule never had, or of an unknown job.
    let mut phantom = 0u64;
    for d in &input.deliveries {
        match timelines.get(&d.job_id) {
            Some(tl) => {
                let scheduled = |s: &Sched| {
                    s.is_due(d.scheduled_at) || due_at_creation(s, tl, d.scheduled_at, d.recv)
                };
                if tl.sched.as_ref().is_some_and(|s| !scheduled(s)) {
                    phantom += 1;
                    v.invalid();
                    v.example(json!({"phantom_instant": d.job_id, "scheduled_at": rfc3339_us(d.scheduled_at), "webhook_id": d.webhook_id}));
                }
            }
            None => {
                phantom += 1;
                v.invalid();
                v.example(json!({"phantom_job": d.job_id, "webhook_id": d.webhook_id}));
            }
        }
    }
    v.count("owed", owed);
    v.count("delivered", delivered);
    v.count("skipped_by_policy", skipped);
    v.count("missed", missed);
    v.count("never_succeeded", unsucceeded);
    v.count("cancelled_by_pause_or_delete", cancelled);
    v.count("phantom", phantom);
    v.count("deliveries_received", input.deliveries.len() as u64);
    v.summary = format!(
        "{delivered} of {owed} owed runs delivered, {skipped} skipped by policy, {missed} missed, {unsucceeded} never succeeded, {phantom} phantom deliveries"
    );
    v
}

/// Jobs with an owed run that has no delivery at all (their runs are fetched at the end, to
/// tell a run skipped by the misfire policy from a missed one).
pub fn jobs_missing_runs(
    input: &Input,
    timelines: &BTreeMap<String, Timeline>,
) -> std::collections::BTreeSet<String> {
    let hi = input.final_state.read_at - input.params.drain;
    let progress = Progress::new(&input.deliveries);
    let got: std::collections::HashSet<(&str, i64)> = input
        .deliveries
        .iter()
        .map(|d| (d.job_id.as_str(), ms(d.scheduled_at)))
        .collect();
    let mut out = std::collections::BTreeSet::new();
    for tl in timelines.values().filter(|t| !t.is_blackhole()) {
        let Some(sched) = &tl.sched else { continue };
        for &(s, e) in &tl.owed {
            let up = if e == i64::MAX { hi } else { e.min(hi) };
            if sched.dues(s + input.params.head_start, up).iter().any(|d| {
                owed_before_close(input, &progress, *d, e)
                    && !got.contains(&(tl.id.as_str(), ms(*d)))
            }) {
                out.insert(tl.id.clone());
            }
        }
    }
    out
}

/// When a run could first have been known: its due instant, or, for a job whose create was
/// acknowledged only after that (or never: it may have taken effect at any time before the
/// first delivery), the create's acknowledgement or the delivery itself. A fire-once run of a
/// job created after its instant is on time when it fires right away. Lateness is measured
/// from here.
pub fn known_from(timelines: &BTreeMap<String, Timeline>, d: &crate::sink::Delivery) -> i64 {
    let created = timelines
        .get(&d.job_id)
        .map_or(d.scheduled_at, |tl| tl.created_ok.unwrap_or(d.recv));
    d.scheduled_at.max(created)
}

pub fn check_timeliness(input: &Input, timelines: &BTreeMap<String, Timeline>) -> Verdict {
    let mut v = Verdict::new("timeliness");
    let p = &input.params;
    let first = first_deliveries(&input.deliveries);
    let known_from = |d: &crate::sink::Delivery| known_from(timelines, d);
    let (mut quiet, mut fault, mut overload) = (Vec::new(), Vec::new(), Vec::new());
    let mut early = 0u64;
    for d in first.values() {
        let before_due = d.scheduled_at - d.recv;
        if before_due > p.early_tol {
            early += 1;
            v.invalid();
            v.example(json!({"early": d.webhook_id, "by_ms": before_due / 1000, "from": d.from}));
        }
        let late = d.recv - known_from(d);
        if input.fault_hitting(d.scheduled_at).is_some() {
            fault.push(late);
        } else if input.overload_at(d.scheduled_at).is_some() {
            overload.push(late);
        } else {
            quiet.push(late);
        }
    }
    // Stuck runs: first attempted long after they fell due, or after their outage ended — a
    // leader that failed to pick them up (they would be missed without the next leader change).
    let mut stuck = 0u64;
    let progress = Progress::new(&input.deliveries);
    let paused: HashMap<&str, Vec<(i64, i64)>> = timelines
        .values()
        .map(|t| (t.id.as_str(), t.paused_intervals()))
        .collect();
    for d in first.values() {
        let due_while_paused = paused.get(d.job_id.as_str()).is_some_and(|ps| {
            ps.iter()
                .any(|(p, l)| d.scheduled_at > *p && d.scheduled_at < *l)
        });
        if due_while_paused {
            continue; // after_delete's finding, not a lateness one
        }
        let mut from =
            outage_end(input, d.scheduled_at).map_or(known_from(d), |b| b.max(known_from(d)));
        // Under an overload a backlog is legitimate: measure from when hookd had moved on past
        // this run (sent runs due `ORDER_TOL` after it), or not at all if it never did.
        if input.overload_at(d.scheduled_at).is_some() {
            from = from.max(
                progress
                    .reached(d.scheduled_at + ORDER_TOL)
                    .unwrap_or(d.recv),
            );
        }
        // A pause holds a run due before it until the resume: measure from the resume.
        if let Some(tl) = timelines.get(&d.job_id) {
            // The resume may take effect (and the held run go out) before the harness has
            // recorded its answer: count it from its invocation.
            let resumed_after_pause = tl
                .changes
                .iter()
                .filter(|r| r.f == "resume" && r.typ != Type::Fail && r.invoke <= d.recv)
                .filter(|r| {
                    tl.changes
                        .iter()
                        .any(|p| p.f == "pause" && p.typ != Type::Fail && p.invoke < r.complete)
                })
                .map(|r| r.invoke)
                .max();
            if let Some(c) = resumed_after_pause {
                from = from.max(c);
            }
        }
        if d.recv - from > STUCK_MAX {
            stuck += 1;
            v.invalid();
            v.example(json!({
                "stuck": d.webhook_id, "job": d.job_id, "scheduled_at": rfc3339_us(d.scheduled_at),
                "first_attempt_at": rfc3339_us(d.recv), "late_ms": (d.recv - d.scheduled_at) / 1000,
                "late_after_outage_ms": (d.recv - from) / 1000, "from": d.from,
                "fault": input.fault_hitting(d.scheduled_at).map(|w| w.fault.name()),
            }));
        }
    }
    v.count("stuck", stuck);
    quiet.sort_unstable();
    fault.sort_unstable();
    overload.sort_unstable();
    let stats = |xs: &[i64]| {
        json!({
            "n": xs.len(),
            "p50_ms": percentile(xs, 0.5).map(|x| x as f64 / 1000.0),
            "p99_ms": percentile(xs, 0.99).map(|x| x as f64 / 1000.0),
            "max_ms": xs.last().map(|x| *x as f64 / 1000.0),
        })
    };
    v.count("quiet", stats(&quiet));
    v.count("fault", stats(&fault));
    v.count("overload", stats(&overload));
    v.count("early", early);
    if let Some(p99) = percentile(&quiet, 0.99) {
        if p99 > p.quiet_p99_max {
            v.invalid();
            v.example(json!({"quiet_p99_ms": p99 / 1000, "limit_ms": p.quiet_p99_max / 1000}));
        }
    }
    // Leader faults: from the fault to the first delivery of a run due after it, by a node
    // other than the one hit (when the sender is known). A fault that takes the quorum down
    // (kill-two, restart-all, power-loss) is measured from its end, to a delivery by any node:
    // the nodes it hit are back then, and one of them may well lead.
    let mut recoveries = Vec::new();
    for w in input.windows.iter().filter(|w| w.fault.hits_leader()) {
        let outage = w.fault.takes_quorum();
        let from = if outage { w.end } else { w.start };
        let next = input
            .deliveries
            .iter()
            .filter(|d| d.scheduled_at >= w.start && d.recv >= from)
            .filter(|d| outage || d.from.is_none_or(|f| !w.targets.contains(&f)))
            .map(|d| d.recv)
            .min();
        recoveries.push(json!({
            "fault": w.fault.name(),
            "at": rfc3339_us(w.start),
            "held_ms": (w.end - w.start) / 1000,
            "measured_from": if outage { "heal" } else { "fault" },
            "to_next_delivery_ms": next.map(|n| (n - from) / 1000),
            "new_leader_after_ms": w.new_leader_after_us.map(|x| x / 1000),
        }));
    }
    v.count("leader_faults", json!(recoveries));
    v.summary = format!(
        "quiet p50/p99/max {}/{}/{} ms over {} runs; in faults {}/{}/{} ms over {}; {early} early",
        fmt_ms(percentile(&quiet, 0.5)),
        fmt_ms(percentile(&quiet, 0.99)),
        fmt_ms(quiet.last().copied()),
        quiet.len(),
        fmt_ms(percentile(&fault, 0.5)),
        fmt_ms(percentile(&fault, 0.99)),
        fmt_ms(fault.last().copied()),
        fault.len(),
    ) + &format!(
        "; in overloads {}/{}/{} ms over {}; {stuck} stuck (> {} s after due, outage end or being overtaken)",
        fmt_ms(percentile(&overload, 0.5)),
        fmt_ms(percentile(&overload, 0.99)),
        fmt_ms(overload.last().copied()),
        overload.len(),
        STUCK_MAX / 1_000_000
    );
    v
}

fn fmt_ms(x: Option<i64>) -> String {
    x.map(|x| format!("{:.1}", x as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::model::timelines;
    use crate::check::testkit::*;
    use crate::check::{RunRecord, Validity};
    use crate::history::Type;
    use crate::nemesis::Kind;
    use serde_json::json;

    /// Job "a" every 1 s from T0+2s; read at T0+30s; drain 10s → owed T0+2..T0+20.
    fn base(skip: Option<i64>) -> (Input, Vec<i64>) {
        let ops = vec![create_every("a", T0, T0 + 2 * S, 1)];
        let dues: Vec<i64> = (2..=20).map(|k| T0 + k * S).collect();
        let dels = dues
            .iter()
            .filter(|d| Some(**d) != skip)
            .map(|d| delivery("a", *d, d + 3_000, true, 1))
            .collect();
        (input(ops, dels, T0 + 30 * S), dues)
    }

    #[test]
    fn every_owed_run_delivered_is_valid() {
        let (i, dues) = base(None);
        let v = check_delivery(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["owed"], dues.len() as u64);
    }

    #[test]
    fn a_missing_run_is_missed_unless_listed_skipped() {
        let (mut i, _) = base(Some(T0 + 7 * S));
        let v = check_delivery(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.counts["missed"], 1);
        i.final_state.runs.insert(
            "a".into(),
            vec![RunRecord {
                id: "r".into(),
                scheduled_at: T0 + 6 * S,
                status: "skipped".into(),
                skipped_from: Some(T0 + 6 * S),
                skipped_to: Some(T0 + 8 * S),
                ..RunRecord::default()
            }],
        );
        let v = check_delivery(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["skipped_by_policy"], 1);
    }

    /// Regression (false phantom in soak-…-s183221 and smoke-…-s847911): a create sent to a
    /// SIGSTOPped node whose `at` passed before the node read it is due at its creation stamp,
    /// after the `at` and no later than the acknowledgement. Before the `at`, or after the
    /// acknowledgement, it is still a phantom.
    #[test]
    fn an_at_that_passed_while_its_create_was_under_way_is_due_at_the_creation() {
        let at = T0 + 2 * S;
        let mut create = create_at("a", T0, at, Type::Ok);
        create.complete = at + 500_000;
        let stamp = at + 90_000;
        let verdict = |scheduled: i64| {
            let dels = vec![delivery("a", scheduled, at + 600_000, true, 1)];
            let i = input(vec![create.clone()], dels, T0 + 30 * S);
            check_delivery(&i, &timelines(&i.ops))
        };
        let v = verdict(stamp);
        assert_eq!(v.counts["phantom"], 0, "{v:?}");
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        for wrong in [at - 5_000, create.complete + 1_000] {
            assert_eq!(verdict(wrong).counts["phantom"], 1, "{wrong}");
        }
    }

    #[test]
    fn runs_while_paused_are_not_owed_and_phantom_instants_are_caught() {
        let (mut i, _) = base(Some(T0 + 7 * S));
        i.ops.push(op(
            "pause",
            "a",
            T0 + 6 * S + 500_000,
            T0 + 6 * S + 600_000,
            Type::Ok,
            json!({"status": 200}),
        ));
        i.ops.push(op(
            "resume",
            "a",
            T0 + 8 * S + 100_000,
            T0 + 8 * S + 200_000,
            Type::Ok,
            json!({"status": 200}),
        ));
        let v = check_delivery(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        i.deliveries
            .push(delivery("a", T0 + 7 * S + 500_000, T0 + 8 * S, true, 1));
        let v = check_delivery(&i, &timelines(&i.ops));
        assert_eq!(v.counts["phantom"], 1);
        assert_eq!(v.valid, Validity::Invalid);
    }

    #[test]
    fn a_run_due_while_the_cluster_was_down_is_owed_only_if_the_pause_came_after_recovery() {
        let (mut i, _) = base(Some(T0 + 7 * S));
        i.windows.push(window(
            Kind::RestartAll,
            &[1, 2, 3],
            T0 + 6 * S + 500_000,
            T0 + 7 * S + 500_000,
            None,
        ));
        // Paused right after the nodes came back: the run due at 7 s had no chance.
        let mut ops = i.ops.clone();
        ops.push(op(
            "pause",
            "a",
            T0 + 7 * S + 600_000,
            T0 + 7 * S + 700_000,
            Type::Ok,
            json!({"status": 200}),
        ));
        let j = Input { ops, ..i.clone() };
        assert_eq!(
            check_delivery(&j, &timelines(&j.ops)).valid,
            Validity::Valid
        );
        // Paused long after recovery: it was owed, and it is missing.
        i.ops.push(op(
            "pause",
            "a",
            T0 + 19 * S + 600_000,
            T0 + 19 * S + 700_000,
            Type::Ok,
            json!({"status": 200}),
        ));
        let v = check_delivery(&i, &timelines(&i.ops));
        assert_eq!(v.counts["missed"], 1, "{v:?}");
    }

    #[test]
    fn attempts_without_a_2xx_are_not_a_delivery() {
        let (mut i, _) = base(None);
        for d in i.deliveries.iter_mut().take(1) {
            d.ok = false;
        }
        let v = check_delivery(&i, &timelines(&i.ops));
        assert_eq!(v.counts["never_succeeded"], 1);
        assert_eq!(v.valid, Validity::Invalid);
    }

    #[test]
    fn lateness_is_split_by_fault_windows_and_early_fires_are_caught() {
        let (mut i, _) = base(None);
        i.windows.push(window(
            Kind::KillLeader,
            &[1],
            T0 + 10 * S,
            T0 + 12 * S,
            Some(700_000),
        ));
        let v = check_timeliness(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert!(v.counts["fault"]["n"].as_u64().unwrap() > 0);
        i.deliveries[0].recv = i.deliveries[0].scheduled_at - 500_000;
        let v = check_timeliness(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.counts["early"], 1);
    }

    #[test]
    fn a_run_picked_up_long_after_the_new_leader_is_stuck() {
        let (mut i, _) = base(None);
        i.windows.push(window(
            Kind::PartitionLeader,
            &[2],
            T0 + 5 * S + 900_000,
            T0 + 10 * S,
            Some(1_500_000),
        ));
        // Due at 6 s, new leader at 7.4 s: delivered at 9 s is fine.
        i.deliveries[4].recv = T0 + 9 * S;
        assert_eq!(
            check_timeliness(&i, &timelines(&i.ops)).valid,
            Validity::Valid,
            "{:?}",
            check_timeliness(&i, &timelines(&i.ops))
        );
        // Delivered at 16 s, after the next leader change: stuck.
        i.deliveries[4].recv = T0 + 16 * S;
        let v = check_timeliness(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.counts["stuck"], 1);
    }

    /// Regression (false "stuck" in smoke-…-s372115): a run due 2 ms before every node was
    /// killed is delivered right after the restart.
    #[test]
    fn a_run_due_just_before_a_cluster_outage_is_measured_from_its_end() {
        let (mut i, _) = base(None);
        let due = i.deliveries[4].scheduled_at;
        i.windows.push(window(
            Kind::RestartAll,
            &[1, 2, 3],
            due + 2_000,
            due + 5 * S,
            None,
        ));
        i.deliveries[4].recv = due + 5 * S + 50_000;
        let v = check_timeliness(&i, &timelines(&i.ops));
        assert_eq!(v.counts["stuck"], 0, "{v:?}");
    }

    /// Regression (soak-…-s87914 reported 883 s "to the next delivery" after a kill-two): a
    /// quorum loss is measured from its heal to a delivery by any node, since a node it hit may
    /// lead again; a single-node leader fault still needs a sender other than the one hit.
    #[test]
    fn recovery_after_a_quorum_loss_is_measured_from_the_heal_by_any_node() {
        let (mut i, _) = base(None); // every delivery comes from node 1
        i.windows
            .push(window(Kind::KillTwo, &[1, 2], T0 + 5 * S, T0 + 8 * S, None));
        i.windows.push(window(
            Kind::KillLeader,
            &[1],
            T0 + 12 * S,
            T0 + 14 * S,
            Some(700_000),
        ));
        let v = check_timeliness(&i, &timelines(&i.ops));
        let faults = v.counts["leader_faults"].as_array().unwrap();
        // Due 8 s, sent at +3 ms by node 1 (back after the heal at 8 s).
        assert_eq!(faults[0]["measured_from"], "heal");
        assert_eq!(faults[0]["to_next_delivery_ms"], 3);
        // Every later delivery comes from node 1, the node hit: none counts.
        assert_eq!(faults[1]["measured_from"], "fault");
        assert!(faults[1]["to_next_delivery_ms"].is_null(), "{faults:?}");
    }

    /// Regression (false "stuck" in soak-…-s340149): a create sent just before a bridge cut got
    /// no answer (info), reached the leader 10 s later by TCP retransmission, and its fire-once
    /// run, due in between, fired at once. Not stuck; but a job acknowledged before its due
    /// instant and fired 9 s late still is.
    #[test]
    fn a_run_of_a_job_created_after_its_instant_is_measured_from_the_creation() {
        let due = T0 + 4 * S;
        let ops = vec![
            create_at("late", T0, due, Type::Info),
            create_at("ok", T0, due, Type::Ok),
        ];
        let dels = vec![
            delivery("late", due, due + 9 * S, true, 1),
            delivery("ok", due, due + 9 * S, true, 1),
        ];
        let i = input(ops, dels, T0 + 30 * S);
        let v = check_timeliness(&i, &timelines(&i.ops));
        assert_eq!(v.counts["stuck"], 1, "{v:?}");
        assert_eq!(v.examples[0]["job"], "ok", "{v:?}");
    }

    /// Regression (false "stuck" in smoke-…-s929981): a run due during a quorum loss, held by a
    /// pause acknowledged right after recovery, and delivered at the resume is not stuck.
    #[test]
    fn a_run_held_by_a_pause_until_the_resume_is_not_stuck() {
        let (mut i, _) = base(None);
        i.windows.push(window(
            Kind::PartitionLeader,
            &[2],
            T0 + 5 * S + 900_000,
            T0 + 7 * S,
            Some(1_500_000),
        ));
        let job = i.deliveries[4].job_id.clone();
        let ok = json!({"status": 200});
        i.ops.push(op(
            "pause",
            &job,
            T0 + 7 * S,
            T0 + 7 * S + 400_000,
            Type::Ok,
            ok.clone(),
        ));
        i.ops.push(op(
            "resume",
            &job,
            T0 + 15 * S,
            T0 + 15 * S + 3000,
            Type::Ok,
            ok,
        ));
        i.deliveries[4].recv = T0 + 15 * S + 4000;
        let v = check_timeliness(&i, &timelines(&i.ops));
        assert_eq!(v.counts["stuck"], 0, "{v:?}");
        // Regression (false "stuck" in workload-…-s12): the held run arrived 1 ms before the
        // harness recorded the resume's answer.
        i.deliveries[4].recv = T0 + 15 * S + 2000;
        let v = check_timeliness(&i, &timelines(&i.ops));
        assert_eq!(v.counts["stuck"], 0, "{v:?}");
    }

    #[test]
    fn progress_knows_how_far_the_due_runs_had_been_sent() {
        let dels = vec![
            delivery("a", T0 + 2 * S, T0 + 5 * S, true, 1),
            delivery("a", T0 + S, T0 + 6 * S, true, 1), // a retry of an older run
            delivery("a", T0 + 3 * S, T0 + 7 * S, true, 1),
        ];
        let p = Progress::new(&dels);
        assert!(p.sent_through(T0 + 4 * S) < T0);
        assert_eq!(p.sent_through(T0 + 6 * S), T0 + 2 * S);
        assert_eq!(p.sent_through(T0 + 8 * S), T0 + 3 * S);
        assert_eq!(p.reached(T0 + 2 * S + 1), Some(T0 + 7 * S));
        assert_eq!(p.reached(T0 + 4 * S), None);
    }

    #[test]
    fn slow_quiet_delivery_is_a_violation() {
        let (mut i, _) = base(None);
        for d in &mut i.deliveries {
            d.recv = d.scheduled_at + 2 * S;
        }
        assert_eq!(
            check_timeliness(&i, &timelines(&i.ops)).valid,
            Validity::Invalid
        );
    }

    #[test]
    fn a_run_due_just_before_a_node_fault_counts_as_hit_by_it() {
        // A whole-cluster restart 4 ms after a run fell due: the run was still on its way and
        // went out after the restart. Its lateness is the fault's, not a quiet one.
        let (mut i, _) = base(None);
        let due = T0 + 10 * S;
        for d in &mut i.deliveries {
            if d.scheduled_at == due {
                d.recv = due + 4_850_000;
            }
        }
        let v = check_timeliness(&i, &timelines(&i.ops));
        assert_eq!(
            v.valid,
            Validity::Invalid,
            "no fault yet: a quiet 4.85 s is late"
        );
        i.windows.push(window(
            Kind::RestartAll,
            &[1, 2, 3],
            due + 4_000,
            due + 3 * S,
            None,
        ));
        let v = check_timeliness(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        // A run due well before the fault (more than `in_flight`) stays quiet.
        i.windows[0].start = due + 2 * i.params.in_flight;
        let v = check_timeliness(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
    }
}
