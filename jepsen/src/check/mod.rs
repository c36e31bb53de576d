//! The checkers: each reads the recorded run (client history, sink deliveries and event
//! deliveries, nemesis log, final state) and returns a Jepsen-style verdict — valid | invalid |
//! unknown, with counts and at most 16 examples. They are pure functions over data, so
//! `hookd-jepsen check DIR` can re-run them on a stored run and the unit tests can feed them
//! small synthetic histories.

pub mod after_delete;
pub mod cluster;
pub mod delivery;
pub mod duplicates;
pub mod durability;
pub mod events;
pub mod isolation;
pub mod linear;
pub mod model;
pub mod overlap;
pub mod overload;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::UnexpectedExit;
use crate::history::Op;
use crate::nemesis::{Event, Kind, Window};
use crate::sink::{Delivery, EventDelivery};

pub const EXAMPLES_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Invalid,
    Unknown,
}

/// One checker's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub name: String,
    pub valid: Validity,
    pub summary: String,
    pub counts: BTreeMap<String, Value>,
    pub examples: Vec<Value>,
}

impl Verdict {
    pub fn new(name: &str) -> Verdict {
        Verdict {
            name: name.to_owned(),
            valid: Validity::Valid,
            summary: String::new(),
            counts: BTreeMap::new(),
            examples: Vec::new(),
        }
    }
    pub fn count(&mut self, key: &str, v: impl Into<Value>) {
        self.counts.insert(key.to_owned(), v.into());
    }
    pub fn example(&mut self, v: Value) {
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(v);
        }
    }
    pub fn invalid(&mut self) {
        self.valid = Validity::Invalid;
    }
    pub fn unknown(&mut self) {
        if self.valid == Validity::Valid {
            self.valid = Validity::Unknown;
        }
    }
}

/// Checker thresholds, all in µs. (Fields missing from an older run's `final.json` take their
/// defaults.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    /// A run is required only if due at least this long after its create was acknowledged
    /// (or its resume).
    pub head_start: i64,
    /// ...and at least this long before the final read (time for retries).
    pub drain: i64,
    /// Fault windows are extended by this much after the heal (recovery counts as faulty).
    pub settle: i64,
    /// A run due this little before a node fault began may still have been on its way (claimed,
    /// its request in flight) when the fault landed; its lateness counts as the fault's.
    pub in_flight: i64,
    /// A first delivery this much before its due instant is early.
    pub early_tol: i64,
    /// Quiet-window p99 lateness above this is a violation.
    pub quiet_p99_max: i64,
    /// An attempt that reaches the sink this long after a delete/pause was acknowledged started
    /// after it (the attempt's own travel time is below this).
    pub after_ack_tol: i64,
    /// Two different nodes delivering alternately within this span are two dispatchers at once
    /// (of one shard: each shard has its own dispatcher).
    pub split_brain_span: i64,
    /// The cluster's shard count (runs of an older harness: one).
    #[serde(default = "one_shard")]
    pub shards: u32,
    pub required_faults: Vec<Kind>,
    pub min_ok_ops: usize,
    pub min_due_runs: usize,
    /// The nodes' `--host-concurrency` and `--deliveries-max` (0: hookd's defaults, unknown
    /// here), for the isolation checker's cap rule.
    pub host_concurrency: usize,
    pub deliveries_max: usize,
    /// Isolation: the floor of the bound on the healthy sink's p99 lateness during a black hole
    /// (see `isolation.rs`).
    pub isolation_p99_floor: i64,
    /// Overload: every 1 s bucket of the full-load span must hold at least this fraction of the
    /// median bucket's deliveries (see `overload.rs`).
    pub overload_bucket_min: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            head_start: 1_500_000,
            drain: 10_000_000,
            settle: 5_000_000,
            in_flight: 100_000,
            early_tol: 20_000,
            quiet_p99_max: 500_000,
            after_ack_tol: 250_000,
            split_brain_span: 150_000,
            required_faults: Kind::REQUIRED.to_vec(),
            min_ok_ops: 500,
            min_due_runs: 500,
            host_concurrency: 0,
            deliveries_max: 0,
            isolation_p99_floor: isolation::P99_FLOOR,
            overload_bucket_min: overload::BUCKET_MIN,
            shards: 1,
        }
    }
}

fn one_shard() -> u32 {
    1
}

/// The shard of job `id` among `count`, as hookd places it: FNV-1a (64-bit) of the id's bytes,
/// modulo the count (docs/operations.md, "Shards").
pub fn shard_of(id: &str, count: u32) -> u32 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(id.as_bytes());
    (h.finish() % u64::from(count.max(1))) as u32
}

/// One node's view at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeView {
    /// Linearizable list (all pages): job id → paused. None when unreadable.
    pub jobs: Option<BTreeMap<String, bool>>,
    /// `GET /v1/cluster`: (leader_id, term).
    pub leader: Option<(u64, u64)>,
    /// `GET /v1/cluster`: the voters it names, ascending (None: unread, or an older run).
    #[serde(default)]
    pub voters: Option<Vec<u64>>,
}

/// A run as `GET /v1/jobs/{id}/runs` lists it (only what the checkers need).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub scheduled_at: i64,
    pub status: String,
    /// For `skipped` entries covering a range.
    pub skipped_from: Option<i64>,
    pub skipped_to: Option<i64>,
    /// For `skipped` entries: `misfire` or `overlap` (absent in runs stored before it existed).
    #[serde(default)]
    pub skip_reason: Option<String>,
    /// Its recorded attempts (empty in runs stored before they were kept).
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
}

/// One recorded attempt of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub n: u32,
    /// `started_at`, µs (hookd records it in ms).
    pub started_at: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub node_id: Option<u64>,
}

/// What the harness saw after healing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FinalState {
    /// When the final reads were invoked (R).
    pub read_at: i64,
    pub nodes: BTreeMap<u64, NodeView>,
    /// Stale (local) job sets per node once they had caught up, for convergence.
    pub stale_sets_equal: Option<bool>,
    pub stale_sets_detail: String,
    /// Runs of jobs with a due run lacking a delivery (to tell skipped from missed), and every
    /// run of the overlap jobs (`overlap::skip_jobs`) and of the jobs with callbacks
    /// (`events::callback_jobs`), with their attempts.
    pub runs: BTreeMap<String, Vec<RunRecord>>,
    /// The fresh job created after healing: id, acknowledged?, µs from create to delivery.
    pub fresh_job: Option<String>,
    pub fresh_created: bool,
    pub fresh_delivered_after_us: Option<i64>,
    /// When the workload stopped and everything was healed.
    pub healed_at: i64,
    pub network: String,
    /// The members at the end, as the harness keeps them (they change with the membership
    /// fault; empty in runs stored before it existed), and how many voters a run must end with.
    #[serde(default)]
    pub members: Vec<u64>,
    #[serde(default)]
    pub expected_voters: usize,
    /// Event deliveries the sink received beyond what it keeps (`sink::EVENTS_MAX`).
    #[serde(default)]
    pub events_dropped: u64,
    /// When the checkers' run deliveries were taken from the sink (µs): a re-check reads the
    /// sink's log only up to here, as the run's own check did (the nodes ran on until stopped).
    /// None for runs stored before it was kept.
    #[serde(default)]
    pub deliveries_until: Option<i64>,
}

/// Logs and exits, for the crash checker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CrashInfo {
    /// (node, log line) of panics.
    pub panics: Vec<(u64, String)>,
    pub unexpected_exits: Vec<UnexpectedExit>,
    /// Nodes that did not stop cleanly on SIGTERM at the end.
    pub unclean_stops: Vec<(u64, String)>,
    /// Nodes removed from the cluster that did not stop by themselves in time.
    #[serde(default)]
    pub not_stopped_after_removal: Vec<(u64, String)>,
}

/// Everything a checker may read.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub ops: Vec<Op>,
    /// Run deliveries at the sink (`deliveries.jsonl`); never event deliveries.
    pub deliveries: Vec<Delivery>,
    /// Event deliveries (callbacks) at the sink (`events.jsonl`), taken once the nodes stopped.
    pub events: Vec<EventDelivery>,
    pub nemesis: Vec<Event>,
    pub windows: Vec<Window>,
    pub final_state: FinalState,
    pub crashes: CrashInfo,
    pub params: Params,
    /// Connections to the black-hole target (`blackhole.jsonl`).
    pub blackhole: Vec<crate::blackhole::Conn>,
}

impl Input {
    /// The node or sink fault window (extended by `settle`) containing `t`, if any. Workload
    /// faults are not among them: a black hole excuses nothing, and an overload has rules of its
    /// own (`overload_at`).
    pub fn fault_at(&self, t: i64) -> Option<&Window> {
        self.windows
            .iter()
            .filter(|w| !w.fault.is_workload())
            .find(|w| t >= w.start && t <= w.end + self.params.settle)
    }

    /// The node or sink fault window that may have delayed a run due at `due`: as `fault_at`,
    /// but from `in_flight` before the fault began.
    pub fn fault_hitting(&self, due: i64) -> Option<&Window> {
        self.fault_at(due)
            .or_else(|| self.fault_at(due + self.params.in_flight))
    }

    /// The overload window (extended by `settle`, while the backlog drains) containing `t`.
    pub fn overload_at(&self, t: i64) -> Option<&Window> {
        self.windows
            .iter()
            .filter(|w| w.fault == Kind::Overload)
            .find(|w| t >= w.start && t <= w.end + self.params.settle)
    }
}

/// Runs all thirteen checkers, in report order.
pub fn run_all(input: &Input) -> Vec<Verdict> {
    let timelines = model::timelines(&input.ops);
    vec![
        durability::check(input, &timelines),
        delivery::check_delivery(input, &timelines),
        delivery::check_timeliness(input, &timelines),
        duplicates::check(input),
        after_delete::check(input, &timelines),
        linear::check(input),
        isolation::check(input, &timelines),
        overload::check(input, &timelines),
        overlap::check(input, &timelines),
        events::check(input),
        cluster::convergence(input),
        cluster::coverage(input, &timelines),
        cluster::crashes(input),
    ]
}

/// Percentile of sorted µs values (nearest rank).
pub fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Each run's first delivery (earliest at the sink), by webhook id.
pub fn first_deliveries(deliveries: &[Delivery]) -> HashMap<&str, &Delivery> {
    let mut first: HashMap<&str, &Delivery> = HashMap::new();
    for d in deliveries {
        first
            .entry(d.webhook_id.as_str())
            .and_modify(|f| {
                if d.recv < f.recv {
                    *f = d;
                }
            })
            .or_insert(d);
    }
    first
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Builders for synthetic histories.
    use super::*;
    use crate::history::Type;
    use serde_json::json;

    pub const S: i64 = 1_000_000;
    /// A base instant (µs), on a whole minute so cron steps align.
    pub const T0: i64 = 1_700_000_040 * S;

    pub fn op(f: &str, job: &str, invoke: i64, complete: i64, typ: Type, result: Value) -> Op {
        Op {
            process: 0,
            f: f.to_owned(),
            job: Some(job.to_owned()),
            node: 1,
            invoke,
            complete,
            typ,
            value: Value::Null,
            result,
        }
    }

    /// An acknowledged create of an `every` job.
    pub fn create_every(job: &str, at: i64, start: i64, period_s: i64) -> Op {
        let mut o = op(
            "create",
            job,
            at,
            at + 10_000,
            Type::Ok,
            json!({"status": 201}),
        );
        o.value = json!({"id": job, "schedule": {"every": format!("{period_s}s"), "start_at": crate::history::rfc3339_us(start)}});
        o
    }

    pub fn create_at(job: &str, at: i64, due: i64, typ: Type) -> Op {
        let mut o = op("create", job, at, at + 10_000, typ, json!({"status": 201}));
        o.value = json!({"id": job, "schedule": {"at": crate::history::rfc3339_us(due)}});
        o
    }

    /// A fault window aimed at `targets`, the first of which led when it was installed.
    pub fn window(
        fault: Kind,
        targets: &[u64],
        start: i64,
        end: i64,
        new_leader_after_us: Option<i64>,
    ) -> Window {
        Window {
            fault,
            targets: targets.to_vec(),
            leader: targets.first().copied(),
            start,
            end,
            new_leader_after_us,
            load: None,
        }
    }

    pub fn delivery(job: &str, due: i64, recv: i64, ok: bool, from: u64) -> Delivery {
        Delivery {
            webhook_id: format!("run_{job}_{due}"),
            job_id: job.to_owned(),
            scheduled_at: due,
            attempt: 1,
            recv,
            from: Some(from),
            response: if ok { "200".into() } else { "503".into() },
            ok,
        }
    }

    pub fn input(ops: Vec<Op>, deliveries: Vec<Delivery>, read_at: i64) -> Input {
        Input {
            ops,
            deliveries,
            final_state: FinalState {
                read_at,
                ..FinalState::default()
            },
            ..Input::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thirteen checkers, each once, the events checker among them (the report, `N passed,
    /// N failed` and the README count them).
    #[test]
    fn run_all_runs_thirteen_checkers() {
        let names: Vec<String> = run_all(&Input::default())
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names.len(), 13, "{names:?}");
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), 13, "{names:?}");
        assert_eq!(names[9], "events", "{names:?}");
    }
}
