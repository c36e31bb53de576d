//! Checker 13, events: hookd's callbacks. A job with `on_success` / `on_failure` (the workload's
//! overlap jobs: `Sink::event_url`) gets one *event* per finished run — `run.succeeded` to
//! `on_success` when the run succeeded, `run.failed` to `on_failure` when it failed for good —
//! delivered at least once, under an event id (`webhook-id`, `evt_…`) that is the same on every
//! attempt and across leader changes. The sink records event deliveries apart from run
//! deliveries (`events.jsonl`), with the parts of their body that matter; the runs are those
//! listed at the end (`GET /v1/jobs/{id}/runs`, as the overlap checker reads them).
//!
//! Rules (each broken one is a violation):
//!
//! 1. **well-formed**: every event delivery's body is a JSON object with an `id` starting
//!    `evt_`, a `type` of `run.succeeded` or `run.failed`, a `job.id` and a `run.id`
//!    (`malformed`); its `webhook-id` header is the body's `id` (`webhook_id_mismatch`), its
//!    `hookd-event-type` header the body's `type` (`type_header_mismatch`); the job in the URL,
//!    `hookd-job-id`, `job.id`, `run.job_id` (and the job that lists the run) agree
//!    (`job_mismatch`); `run.succeeded` came to the `on_success` URL and `run.failed` to
//!    `on_failure` (`wrong_callback`); the run in the body has the status the type names
//!    (`body_status_mismatch`: the run is rendered once it reached that outcome).
//! 2. **one event per outcome**: an event id always names the same run and type
//!    (`event_id_reused`), and a run's outcome has exactly one event id: two or more distinct
//!    ids for the same run and type are events invented (or re-made by a new leader)
//!    (`invented`, counted per extra id). The same id arriving again is at-least-once delivery,
//!    only counted (`redelivered_after_2xx`).
//! 3. **nothing lost**: every listed run of a job with the matching callback whose final status
//!    is `succeeded` or `failed`, and whose last recorded attempt ended at least `drain` before
//!    the final read (time for the event and its retries: the events are taken only once the
//!    nodes stopped, later still), got its event, answered 2xx at least once (`lost`: none
//!    arrived; `never_acknowledged`: it arrived, never answered 2xx — the sink refuses only
//!    attempt 1 of a few, so a retry was due). Runs still open at the end, skipped runs and runs
//!    that ended later are not judged.
//! 4. **events match runs** (reported apart from lost/invented): an event for a run that is
//!    not listed is `unknown_run` — unless its job's runs were not read, or the run was
//!    scheduled less than `drain` before the final read (it may have started after the read):
//!    then it is only counted (`events_after_read`). An event whose type does not match the run's
//!    final status (`skipped` matches no event) is `type_mismatch`, unless a later status
//!    explains it: the listed run has more attempts than the event's body showed, so the run
//!    went on after the event (a failed run reopened by `POST /v1/runs/{id}/retry` and then
//!    succeeded; the harness retries nothing by hand, so this count should stay 0) —
//!    `type_mismatch_explained`, counted. An event for a run still open at the end is not judged
//!    (`events_for_open_runs`).
//!
//! Unknown when no job with callbacks was created, a created job's runs could not be read, the
//! sink dropped event deliveries (`sink::EVENTS_MAX`), or no run was judged. The delay from a
//! run's last attempt's end to its event's first arrival is reported (p50/p99/max), to calibrate
//! the `drain` allowance.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};

use super::overlap::OPEN;
use super::{percentile, Input, RunRecord, Verdict};
use crate::history::{rfc3339_us, Op, Type};
use crate::sink::{EventBody, EventDelivery, ON_FAILURE, ON_SUCCESS};

/// The event types and the run statuses they report.
pub const SUCCEEDED: &str = "run.succeeded";
pub const FAILED: &str = "run.failed";

/// The event type a run's final status calls for, if any.
pub fn type_for(status: &str) -> Option<&'static str> {
    match status {
        "succeeded" => Some(SUCCEEDED),
        "failed" => Some(FAILED),
        _ => None,
    }
}

/// The run status an event type reports, and the callback (`?on=`) it is sent to.
fn status_and_callback(typ: &str) -> Option<(&'static str, &'static str)> {
    match typ {
        SUCCEEDED => Some(("succeeded", ON_SUCCESS)),
        FAILED => Some(("failed", ON_FAILURE)),
        _ => None,
    }
}

/// Which callbacks a job was created with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Callbacks {
    pub on_success: bool,
    pub on_failure: bool,
}

impl Callbacks {
    fn wants(self, typ: &str) -> bool {
        match typ {
            SUCCEEDED => self.on_success,
            FAILED => self.on_failure,
            _ => false,
        }
    }
}

/// The jobs created with `on_success` or `on_failure`, and which.
pub fn callback_jobs(ops: &[Op]) -> BTreeMap<String, Callbacks> {
    let mut out: BTreeMap<String, Callbacks> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.f == "create") {
        let cb = Callbacks {
            on_success: o.value["on_success"]["url"].is_string(),
            on_failure: o.value["on_failure"]["url"].is_string(),
        };
        if let (Some(job), true) = (&o.job, cb.on_success || cb.on_failure) {
            let e = out.entry(job.clone()).or_default();
            e.on_success |= cb.on_success;
            e.on_failure |= cb.on_failure;
        }
    }
    out
}

/// When a run's last recorded attempt ended (its instant if it has none).
fn run_end(r: &RunRecord) -> i64 {
    r.attempts
        .iter()
        .map(|a| a.started_at + a.duration_ms.max(0) * 1000)
        .max()
        .unwrap_or(r.scheduled_at)
}

/// Why a body is not a well-formed event, if it is not.
fn malformed(body: Option<&EventBody>) -> Option<&'static str> {
    let Some(b) = body else {
        return Some("body is not a JSON object");
    };
    if !b.id.starts_with("evt_") {
        Some("id does not start with evt_")
    } else if status_and_callback(&b.typ).is_none() {
        Some("type is neither run.succeeded nor run.failed")
    } else if b.job_id.is_empty() {
        Some("no job.id")
    } else if b.run_id.is_empty() {
        Some("no run.id")
    } else {
        None
    }
}

/// All deliveries of one run's outcome (run id, type), whatever their event ids.
#[derive(Debug, Default)]
struct Outcome<'a> {
    /// Event id → its deliveries.
    ids: BTreeMap<&'a str, Vec<&'a EventDelivery>>,
    job: &'a str,
    scheduled_at: Option<i64>,
    /// The most attempts any of its bodies listed.
    body_attempts: usize,
}

impl Outcome<'_> {
    fn acked(&self) -> bool {
        self.ids.values().flatten().any(|e| e.ok)
    }
    fn first_recv(&self) -> Option<i64> {
        self.ids.values().flatten().map(|e| e.recv).min()
    }
    fn arrivals(&self) -> Vec<Value> {
        let mut all: Vec<&EventDelivery> = self.ids.values().flatten().copied().collect();
        all.sort_by_key(|e| e.recv);
        all.iter()
            .take(8)
            .map(|e| {
                json!([
                    e.webhook_id,
                    rfc3339_us(e.recv),
                    e.attempt,
                    e.response,
                    e.from
                ])
            })
            .collect()
    }
}

/// The well-formed event deliveries, by (run id, type).
fn outcomes(events: &[EventDelivery]) -> BTreeMap<(&str, &str), Outcome<'_>> {
    let mut out: BTreeMap<(&str, &str), Outcome<'_>> = BTreeMap::new();
    for e in events {
        let Some(b) = e
            .body
            .as_ref()
            .filter(|_| malformed(e.body.as_ref()).is_none())
        else {
            continue;
        };
        let o = out.entry((b.run_id.as_str(), b.typ.as_str())).or_default();
        o.ids.entry(b.id.as_str()).or_default().push(e);
        o.job = b.job_id.as_str();
        o.scheduled_at = o.scheduled_at.or(b.run_scheduled_at);
        o.body_attempts = o.body_attempts.max(b.run_attempts);
    }
    out
}

/// (first arrival, first arrival − the run's last attempt end) of each event whose run is
/// listed with the final status it reports, µs: how long an outcome took to be called back
/// (the report plots it beside the deliveries' lateness).
pub fn event_delays(input: &Input) -> Vec<(i64, i64)> {
    let runs: HashMap<&str, &RunRecord> = input
        .final_state
        .runs
        .values()
        .flatten()
        .map(|r| (r.id.as_str(), r))
        .collect();
    let mut out: Vec<(i64, i64)> = outcomes(&input.events)
        .iter()
        .filter_map(|((run, typ), o)| {
            let r = runs.get(run)?;
            let first = o.first_recv()?;
            (type_for(&r.status) == Some(*typ)).then(|| (first, first - run_end(r)))
        })
        .collect();
    out.sort_unstable();
    out
}

#[derive(Default)]
struct Tally {
    malformed: u64,
    webhook_id_mismatch: u64,
    type_header_mismatch: u64,
    job_mismatch: u64,
    wrong_callback: u64,
    body_status_mismatch: u64,
    event_id_reused: u64,
    invented: u64,
    unknown_run: u64,
    after_read: u64,
    of_unread_jobs: u64,
    for_open_runs: u64,
    type_mismatch: u64,
    type_mismatch_explained: u64,
    judged_succeeded: u64,
    judged_failed: u64,
    ended_late: u64,
    open_at_end: u64,
    lost: u64,
    never_acknowledged: u64,
    redelivered_after_ok: u64,
    refused: u64,
}

pub fn check(input: &Input) -> Verdict {
    let mut v = Verdict::new("events");
    let p = &input.params;
    let fs = &input.final_state;
    let horizon = fs.read_at - p.drain;
    let jobs = callback_jobs(&input.ops);
    let deleted: BTreeSet<&str> = input
        .ops
        .iter()
        .filter(|o| o.f == "delete" && o.typ != Type::Fail)
        .filter_map(|o| o.job.as_deref())
        .collect();
    let acked: BTreeSet<&str> = input
        .ops
        .iter()
        .filter(|o| o.f == "create" && o.ok())
        .filter_map(|o| o.job.as_deref())
        .collect();
    let mut t = Tally::default();

    // The runs of the jobs with callbacks, as listed at the end; jobs whose runs are unknown.
    let mut runs: HashMap<&str, (&str, &RunRecord)> = HashMap::new();
    let mut unjudged: BTreeSet<&str> = BTreeSet::new();
    let (mut unread, mut listed) = (0u64, 0u64);
    for job in jobs.keys() {
        let job = job.as_str();
        match fs.runs.get(job) {
            Some(rs) if !deleted.contains(job) => {
                listed += rs.len() as u64;
                for r in rs {
                    runs.insert(r.id.as_str(), (job, r));
                }
            }
            _ => {
                unjudged.insert(job);
                let has_events = input
                    .events
                    .iter()
                    .any(|e| e.path_job == job || e.job_header == job);
                if !deleted.contains(job) && (acked.contains(job) || has_events) {
                    unread += 1;
                    v.unknown();
                    v.example(json!({"runs_unread": job}));
                }
            }
        }
    }

    // 1. Each delivery on its own.
    let mut claims: BTreeMap<&str, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for e in &input.events {
        t.refused += u64::from(!e.ok);
        if let Some(why) = malformed(e.body.as_ref()) {
            t.malformed += 1;
            v.invalid();
            v.example(json!({
                "malformed_event": e.webhook_id, "why": why, "job": e.path_job,
                "type_header": e.event_type, "at": rfc3339_us(e.recv),
            }));
            continue;
        }
        let Some(b) = &e.body else { continue };
        if e.webhook_id != b.id {
            t.webhook_id_mismatch += 1;
            v.invalid();
            v.example(
                json!({"webhook_id_mismatch": e.webhook_id, "body_id": b.id, "run": b.run_id}),
            );
        }
        if e.event_type != b.typ {
            t.type_header_mismatch += 1;
            v.invalid();
            v.example(json!({"type_header_mismatch": b.id, "hookd_event_type": e.event_type, "body_type": b.typ, "run": b.run_id}));
        }
        let listed_job = runs.get(b.run_id.as_str()).map(|(j, _)| *j);
        let job_names = [
            e.path_job.as_str(),
            e.job_header.as_str(),
            b.job_id.as_str(),
            b.run_job_id.as_str(),
        ];
        if job_names.iter().chain(&listed_job).any(|j| *j != b.job_id) {
            t.job_mismatch += 1;
            v.invalid();
            v.example(json!({
                "job_mismatch": b.id, "url": e.path_job, "hookd_job_id": e.job_header,
                "body_job": b.job_id, "body_run_job": b.run_job_id, "listed_under": listed_job,
            }));
        }
        if let Some((status, on)) = status_and_callback(&b.typ) {
            if e.callback != on {
                t.wrong_callback += 1;
                v.invalid();
                v.example(json!({"wrong_callback": b.id, "type": b.typ, "sent_to": e.callback}));
            }
            if b.run_status != status {
                t.body_status_mismatch += 1;
                v.invalid();
                v.example(json!({"body_status_mismatch": b.id, "type": b.typ, "run": b.run_id, "run_status": b.run_status}));
            }
        }
        claims
            .entry(b.id.as_str())
            .or_default()
            .insert((b.run_id.as_str(), b.typ.as_str()));
    }
    for (id, c) in &claims {
        if c.len() > 1 {
            t.event_id_reused += 1;
            v.invalid();
            v.example(json!({"event_id_reused": id, "for": c.iter().take(4).collect::<Vec<_>>()}));
        }
    }

    // 2. One event id per outcome, and the outcome is the run's.
    let outcomes = outcomes(&input.events);
    for ((run, typ), o) in &outcomes {
        for es in o.ids.values() {
            let mut es = es.clone();
            es.sort_by_key(|e| e.recv);
            if let Some(i) = es.iter().position(|e| e.ok) {
                t.redelivered_after_ok += (es.len() - i - 1) as u64;
            }
        }
        if o.ids.len() > 1 {
            t.invented += o.ids.len() as u64 - 1;
            v.invalid();
            v.example(json!({
                "invented": run, "type": typ, "job": o.job,
                "event_ids": o.ids.keys().collect::<Vec<_>>(), "arrivals": o.arrivals(),
            }));
        }
        let Some((job, r)) = runs.get(run) else {
            if unjudged.contains(o.job) {
                t.of_unread_jobs += 1;
            } else if o.scheduled_at.is_none_or(|s| s > horizon) {
                t.after_read += 1;
            } else {
                t.unknown_run += 1;
                v.invalid();
                v.example(json!({
                    "unknown_run": run, "type": typ, "job": o.job,
                    "scheduled_at": o.scheduled_at.map(rfc3339_us), "arrivals": o.arrivals(),
                }));
            }
            continue;
        };
        if OPEN.contains(&r.status.as_str()) {
            t.for_open_runs += 1;
        } else if type_for(&r.status) != Some(*typ) {
            if r.attempts.len() > o.body_attempts {
                t.type_mismatch_explained += 1;
            } else {
                t.type_mismatch += 1;
                v.invalid();
                v.example(json!({
                    "type_mismatch": run, "job": job, "type": typ, "final_status": r.status,
                    "attempts_listed": r.attempts.len(), "attempts_in_event": o.body_attempts,
                    "arrivals": o.arrivals(),
                }));
            }
        }
    }

    // 3. Every finished run got its event.
    for (job, cb) in &jobs {
        if unjudged.contains(job.as_str()) {
            continue;
        }
        for r in fs.runs.get(job).map(Vec::as_slice).unwrap_or(&[]) {
            if OPEN.contains(&r.status.as_str()) {
                t.open_at_end += 1;
                continue;
            }
            let Some(typ) = type_for(&r.status).filter(|typ| cb.wants(typ)) else {
                continue;
            };
            let end = run_end(r);
            if end > horizon {
                t.ended_late += 1;
                continue;
            }
            if typ == SUCCEEDED {
                t.judged_succeeded += 1;
            } else {
                t.judged_failed += 1;
            }
            let why = match outcomes.get(&(r.id.as_str(), typ)) {
                None => {
                    t.lost += 1;
                    "no event delivered"
                }
                Some(o) if !o.acked() => {
                    t.never_acknowledged += 1;
                    "delivered, never answered 2xx"
                }
                Some(_) => continue,
            };
            v.invalid();
            let of_run = outcomes
                .iter()
                .filter(|((run, _), _)| *run == r.id)
                .map(|((_, typ), o)| json!({"type": typ, "arrivals": o.arrivals()}))
                .collect::<Vec<_>>();
            v.example(json!({
                "lost": job, "run": r.id, "status": r.status, "want": typ, "why": why,
                "scheduled_at": rfc3339_us(r.scheduled_at), "ended": rfc3339_us(end),
                "fault": input.fault_at(end).map(|w| w.fault.name()),
                "events_of_run": of_run,
            }));
        }
    }

    let judged = t.judged_succeeded + t.judged_failed;
    if jobs.is_empty() {
        v.unknown();
        v.example(json!({"no_job": "no job with on_success/on_failure was created"}));
    } else if judged == 0 {
        v.unknown();
        v.example(json!({"not_exercised": "no finished run of a job with callbacks to judge"}));
    }
    if fs.events_dropped > 0 {
        v.unknown();
        v.example(json!({"events_dropped": fs.events_dropped}));
    }
    let mut delays: Vec<i64> = event_delays(input).into_iter().map(|(_, d)| d).collect();
    delays.sort_unstable();
    let delay_ms = |q: f64| percentile(&delays, q).map(|d| d.max(0) as f64 / 1000.0);
    let ids: BTreeSet<&str> = outcomes
        .values()
        .flat_map(|o| o.ids.keys().copied())
        .collect();
    let headers = t.webhook_id_mismatch
        + t.type_header_mismatch
        + t.job_mismatch
        + t.wrong_callback
        + t.body_status_mismatch
        + t.malformed;
    v.count("jobs", jobs.len() as u64);
    v.count("jobs_runs_unread", unread);
    v.count("runs_listed", listed);
    v.count("runs_judged_succeeded", t.judged_succeeded);
    v.count("runs_judged_failed", t.judged_failed);
    v.count("runs_ended_too_late_to_judge", t.ended_late);
    v.count("runs_open_at_end", t.open_at_end);
    v.count("event_deliveries", input.events.len() as u64);
    v.count("events", ids.len() as u64);
    v.count("answered_non_2xx", t.refused);
    v.count("redelivered_after_2xx", t.redelivered_after_ok);
    v.count("events_dropped_by_sink", fs.events_dropped);
    v.count("lost", t.lost);
    v.count("never_acknowledged", t.never_acknowledged);
    v.count("invented", t.invented);
    v.count("event_id_reused", t.event_id_reused);
    v.count("unknown_run", t.unknown_run);
    v.count("events_after_read", t.after_read);
    v.count("events_of_unread_jobs", t.of_unread_jobs);
    v.count("events_for_open_runs", t.for_open_runs);
    v.count("type_mismatch", t.type_mismatch);
    v.count("type_mismatch_explained", t.type_mismatch_explained);
    v.count("malformed", t.malformed);
    v.count("webhook_id_mismatch", t.webhook_id_mismatch);
    v.count("type_header_mismatch", t.type_header_mismatch);
    v.count("job_mismatch", t.job_mismatch);
    v.count("wrong_callback", t.wrong_callback);
    v.count("body_status_mismatch", t.body_status_mismatch);
    v.count("event_delay_p50_ms", delay_ms(0.5));
    v.count("event_delay_p99_ms", delay_ms(0.99));
    v.count("event_delay_max_ms", delay_ms(1.0));
    v.summary = format!(
        "{} jobs with callbacks, {judged} finished runs judged ({} succeeded, {} failed): {} events lost, {} never acknowledged, {} invented; {} deliveries of {} events ({} answered non-2xx, {} again after a 2xx); {} for unknown runs, {} of the wrong type (+{} explained by a later status); {headers} malformed or with mismatched headers/ids; delay p99 {} ms",
        jobs.len(),
        t.judged_succeeded,
        t.judged_failed,
        t.lost,
        t.never_acknowledged,
        t.invented,
        input.events.len(),
        ids.len(),
        t.refused,
        t.redelivered_after_ok,
        t.unknown_run,
        t.type_mismatch,
        t.type_mismatch_explained,
        delay_ms(0.99).map_or("-".into(), |d| format!("{d:.0}")),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testkit::*;
    use crate::check::{AttemptRecord, Validity};

    const MS: i64 = 1000;

    /// Job "o" with both callbacks, read at T0 + 40 s (drain 10 s: runs that ended by T0 + 30 s
    /// are judged).
    fn create() -> Op {
        let mut o = op(
            "create",
            "o",
            T0,
            T0 + 10_000,
            Type::Ok,
            json!({"status": 201}),
        );
        o.value = json!({"id": "o", "overlap": "skip",
            "schedule": {"every": "1s", "start_at": rfc3339_us(T0 + 2 * S)},
            "on_success": {"url": "http://sink/events/o?on=success"},
            "on_failure": {"url": "http://sink/events/o?on=failure"}});
        o
    }

    fn run(k: i64, status: &str) -> RunRecord {
        let due = T0 + k * S;
        let attempts = if status == "skipped" {
            vec![]
        } else {
            vec![AttemptRecord {
                n: 1,
                started_at: due + 5 * MS,
                duration_ms: 3,
                status_code: Some(if status == "failed" { 503 } else { 200 }),
                node_id: Some(1),
            }]
        };
        RunRecord {
            id: format!("run_o_{k}"),
            scheduled_at: due,
            status: status.into(),
            skip_reason: (status == "skipped").then(|| "overlap".into()),
            attempts,
            ..RunRecord::default()
        }
    }

    /// An event delivery for `run`, as hookd would send it (the sink's record of it).
    fn event(id: &str, r: &RunRecord, attempt: u32, ok: bool) -> EventDelivery {
        let typ = type_for(&r.status).unwrap_or(SUCCEEDED);
        let on = if typ == SUCCEEDED {
            ON_SUCCESS
        } else {
            ON_FAILURE
        };
        EventDelivery {
            webhook_id: id.into(),
            event_type: typ.into(),
            job_header: "o".into(),
            path_job: "o".into(),
            callback: on.into(),
            attempt,
            recv: run_end(r) + 20 * MS + i64::from(attempt) * S,
            from: Some(1),
            response: if ok { "200".into() } else { "503".into() },
            ok,
            body: Some(EventBody {
                id: id.into(),
                typ: typ.into(),
                job_id: "o".into(),
                node_id: Some(1),
                run_id: r.id.clone(),
                run_job_id: "o".into(),
                run_status: r.status.clone(),
                run_scheduled_at: Some(r.scheduled_at),
                run_attempts: r.attempts.len(),
            }),
        }
    }

    /// Runs at T0+2..T0+21 s: succeeded, failed or skipped in turn, the last two still open;
    /// each finished run got one event (a few refused once, then acknowledged), one acknowledged
    /// event delivered twice.
    fn clean() -> (Vec<RunRecord>, Vec<EventDelivery>) {
        let (mut runs, mut events) = (Vec::new(), Vec::new());
        for k in 2..=21 {
            let status = match k {
                20 => "retrying",
                21 => "pending",
                _ if k % 3 == 0 => "skipped",
                _ if k % 5 == 0 => "failed",
                _ => "succeeded",
            };
            let r = run(k, status);
            if type_for(status).is_some() {
                let id = format!("evt_{k}");
                if k % 4 == 0 {
                    events.push(event(&id, &r, 1, false));
                    events.push(event(&id, &r, 2, true));
                } else {
                    events.push(event(&id, &r, 1, true));
                }
                if k == 7 {
                    events.push(event(&id, &r, 1, true));
                }
            }
            runs.push(r);
        }
        (runs, events)
    }

    fn input_with(runs: Vec<RunRecord>, events: Vec<EventDelivery>) -> Input {
        let mut i = input(vec![create()], vec![], T0 + 40 * S);
        i.final_state.runs.insert("o".into(), runs);
        i.events = events;
        i
    }

    fn find<'a>(events: &'a mut [EventDelivery], id: &str) -> &'a mut EventDelivery {
        events.iter_mut().find(|e| e.webhook_id == id).unwrap()
    }

    #[test]
    fn one_event_per_finished_run_is_valid() {
        let (runs, events) = clean();
        let v = check(&input_with(runs, events));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["runs_judged_succeeded"], 10);
        assert_eq!(v.counts["runs_judged_failed"], 2);
        assert_eq!(v.counts["runs_open_at_end"], 2);
        assert_eq!(v.counts["events"], 12);
        assert_eq!(v.counts["answered_non_2xx"], 3);
        assert_eq!(v.counts["redelivered_after_2xx"], 1);
        assert_eq!(v.counts["lost"], 0);
        assert_eq!(v.counts["invented"], 0);
        assert!(v.counts["event_delay_p99_ms"].as_f64().unwrap() > 0.0);
    }

    /// A finished run with no event at all, and one whose event was never answered 2xx (the
    /// retry after the sink's 503 never came).
    #[test]
    fn a_lost_event_fails() {
        let (runs, mut events) = clean();
        events.retain(|e| e.webhook_id != "evt_10"); // failed run
        let v = check(&input_with(runs.clone(), events.clone()));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["lost"], 1);
        events.retain(|e| !(e.webhook_id == "evt_8" && e.ok));
        let v = check(&input_with(runs, events));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["lost"], 1);
        assert_eq!(v.counts["never_acknowledged"], 1);
    }

    /// A run that ended less than `drain` before the final read, or is still open, owes nothing
    /// yet; an event that came anyway is fine.
    #[test]
    fn runs_ending_late_or_open_are_not_judged() {
        let (mut runs, mut events) = clean();
        runs.push(run(35, "succeeded"));
        runs.push(run(36, "succeeded"));
        events.push(event("evt_36", &runs[runs.len() - 1], 1, true));
        let v = check(&input_with(runs, events));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["runs_ended_too_late_to_judge"], 2);
    }

    /// A second event id for the same run and type: an event invented (say by a new leader
    /// that made the event again instead of re-sending it).
    #[test]
    fn a_second_event_id_for_one_outcome_is_invented() {
        let (runs, mut events) = clean();
        let r = runs.iter().find(|r| r.id == "run_o_4").unwrap();
        events.push(event("evt_4_again", r, 1, true));
        let v = check(&input_with(runs, events));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["invented"], 1);
        assert_eq!(v.counts["lost"], 0);
    }

    /// One event id naming two runs.
    #[test]
    fn an_event_id_reused_for_another_run_fails() {
        let (runs, mut events) = clean();
        let r = runs.iter().find(|r| r.id == "run_o_4").unwrap();
        events.push(event("evt_2", r, 1, true));
        let v = check(&input_with(runs, events));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["event_id_reused"], 1);
        assert_eq!(v.counts["invented"], 1);
    }

    #[test]
    fn mismatched_headers_fail() {
        let (runs, events) = clean();
        let mut e = events.clone();
        find(&mut e, "evt_4").webhook_id = "evt_other".into();
        let v = check(&input_with(runs.clone(), e));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["webhook_id_mismatch"], 1);

        let mut e = events.clone();
        find(&mut e, "evt_4").event_type = FAILED.into();
        let v = check(&input_with(runs.clone(), e));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["type_header_mismatch"], 1);
        assert_eq!(v.counts["webhook_id_mismatch"], 0);

        let mut e = events.clone();
        find(&mut e, "evt_4").job_header = "p".into();
        let v = check(&input_with(runs.clone(), e));
        assert_eq!(v.counts["job_mismatch"], 1, "{v:?}");

        // run.succeeded sent to the on_failure URL.
        let mut e = events.clone();
        find(&mut e, "evt_4").callback = ON_FAILURE.into();
        let v = check(&input_with(runs.clone(), e));
        assert_eq!(v.counts["wrong_callback"], 1, "{v:?}");

        // evt_2 was delivered once: unreadable, it delivered nothing.
        let mut e = events.clone();
        find(&mut e, "evt_2").body = None;
        let v = check(&input_with(runs.clone(), e));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["malformed"], 1);
        assert_eq!(v.counts["lost"], 1, "a malformed event delivers nothing");

        let mut e = events;
        if let Some(b) = find(&mut e, "evt_4").body.as_mut() {
            b.id = "run_4".into();
        }
        let v = check(&input_with(runs, e));
        assert_eq!(v.counts["malformed"], 1, "{v:?}");
    }

    /// An event for a run never listed (scheduled well before the read), and one whose type
    /// does not match the run's final status; a mismatch the listed run explains (it went on
    /// after the event: more attempts) is only counted.
    #[test]
    fn events_for_unknown_runs_or_of_the_wrong_type_fail() {
        let (runs, mut events) = clean();
        let ghost = run(25, "succeeded");
        events.push(event("evt_ghost", &ghost, 1, true));
        let v = check(&input_with(runs.clone(), events.clone()));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["unknown_run"], 1);
        assert_eq!(v.counts["type_mismatch"], 0);

        // A run scheduled after the read (read at T0+40 s, drain 10 s): only counted.
        let (runs, mut events) = clean();
        events.push(event("evt_late", &run(33, "succeeded"), 1, true));
        let v = check(&input_with(runs, events));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["events_after_read"], 1);

        // run.failed for a run listed succeeded, and for a skipped one.
        let (runs, mut events) = clean();
        let mut failed = run(4, "failed");
        events.push(event("evt_4_failed", &failed, 1, true));
        let skipped_as_failed = run(6, "failed");
        events.push(event("evt_6", &skipped_as_failed, 1, true));
        let v = check(&input_with(runs.clone(), events.clone()));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["type_mismatch"], 2);

        // The run succeeded after the failed event, on a later attempt (a manual retry).
        let (mut runs, mut events) = clean();
        failed.attempts[0].status_code = Some(503);
        events.push(event("evt_4_failed", &failed, 1, true));
        let r = runs.iter_mut().find(|r| r.id == "run_o_4").unwrap();
        r.attempts.push(AttemptRecord {
            n: 2,
            started_at: T0 + 9 * S,
            duration_ms: 2,
            status_code: Some(200),
            node_id: Some(2),
        });
        let v = check(&input_with(runs, events));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["type_mismatch_explained"], 1);
    }

    #[test]
    fn a_body_whose_run_status_contradicts_its_type_fails() {
        let (runs, mut events) = clean();
        if let Some(b) = find(&mut events, "evt_4").body.as_mut() {
            b.run_status = "retrying".into();
        }
        let v = check(&input_with(runs, events));
        assert_eq!(v.valid, Validity::Invalid, "{v:?}");
        assert_eq!(v.counts["body_status_mismatch"], 1);
    }

    #[test]
    fn no_callback_job_unread_runs_or_dropped_events_are_unknown() {
        let v = check(&input(
            vec![create_every("a", T0, T0, 1)],
            vec![],
            T0 + 40 * S,
        ));
        assert_eq!(v.valid, Validity::Unknown, "{v:?}");
        let (runs, events) = clean();
        let mut i = input_with(runs, events);
        i.final_state.runs.clear();
        assert_eq!(check(&i).valid, Validity::Unknown);
        let (runs, events) = clean();
        let mut i = input_with(runs, events);
        i.final_state.events_dropped = 3;
        assert_eq!(check(&i).valid, Validity::Unknown);
        // Only open or skipped runs: nothing exercised.
        let v = check(&input_with(
            vec![run(3, "skipped"), run(4, "retrying")],
            vec![],
        ));
        assert_eq!(v.valid, Validity::Unknown, "{v:?}");
    }

    /// The workload's overlap jobs carry both callbacks, at the sink's event URLs.
    #[test]
    fn the_overlap_jobs_are_callback_jobs() {
        let body = crate::workload::overlap_job_body(
            "j1-ovl-0",
            "http://10.77.0.1:9/hook/j1-ovl-0?answer=overlap",
            "http://10.77.0.1:9/events/j1-ovl-0?on=success",
            "http://10.77.0.1:9/events/j1-ovl-0?on=failure",
            T0,
            40,
        );
        let mut o = create();
        o.job = Some("j1-ovl-0".into());
        o.value = body;
        let jobs = callback_jobs(&[o, create_every("plain", T0, T0, 1)]);
        let both = Callbacks {
            on_success: true,
            on_failure: true,
        };
        assert_eq!(
            jobs.into_iter().collect::<Vec<_>>(),
            [("j1-ovl-0".to_owned(), both)]
        );
    }
}
