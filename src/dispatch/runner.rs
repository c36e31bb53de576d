//! The dispatcher of one leadership epoch: an in-memory index of each job's next due instant,
//! claims ahead through Raft, per-target send queues (`targets::Scheduler`), and a recorder that
//! writes outcomes back through Raft. Every decision comes from `plan` and `targets`; this loop
//! only executes them, doing bounded work per turn.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hookd_raft::LeaderTerm;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::core::command::{
    Attempt, AttemptOutcome, AttemptResult, ClaimItem, ClaimKind, Command, CommandResult, Job, Run,
};
use crate::core::events::{self, Announcement, ClusterMemory, Delivery, EventType};
use crate::core::overlap::Overlap;
use crate::core::plan::{self, after_attempt};
use crate::planted;
use crate::replicated::{ReadView, Replica, ReplicaState};

use super::announce;
use super::delivery::{AttemptRequest, Deliver};
use super::doubt::{Doubts, Found};
use super::index::{Indexed, JobId, JobIndex};
use super::pace::Pacer;
use super::stats::{self, Count, Recorder};
use super::targets::{delivery_target, Outcome, Scheduler, TargetKey};
use super::{panic_cause, DispatchConfig, Queries};
use crate::schedule::CronCache;

// Items per claim command (`CLAIM_ITEMS_MAX`, larger rounds are split) and outcomes per record
// command (`RECORD_ITEMS_MAX`) keep a log entry near 64 KiB, so an AppendEntries of
// `RAFT_PAYLOAD_ENTRIES_MAX` entries is sent, decoded and fsynced well within the 50 ms RPC
// timeout even under load.
use crate::limits::{CLAIM_ITEMS_MAX, RECORD_ITEMS_MAX};
/// Claim commands in flight at once.
const CLAIMS_IN_FLIGHT_MAX: usize = 2;
/// In debug builds, an attempt of a job with this header panics (the supervision test).
#[cfg(debug_assertions)]
pub const TEST_PANIC_HEADER: &str = "x-hookd-test-panic";

/// Panics of one run's attempts before the run is recorded failed (error `internal`).
const PANICS_PER_RUN_MAX: u32 = 2;
/// Tries of one record command before leaving its runs to the next leader.
const RECORD_TRIES: u32 = 3;
/// How long outcomes are gathered into one record after the first: a record is a Raft round
/// (an entry, its flushes and applies on every node). Waiting this long delays only what
/// follows from the record: the run's status, callbacks and notifications (a job whose next
/// run waits on it is recorded at once: `ToRecord::at_once`). It also bounds what a leader
/// that dies leaves unrecorded, whose runs the next leader sends again, so unlike claims
/// (`plan::gather_ms`) it does not grow with the shards.
const RECORD_GATHER: Duration = Duration::from_millis(100);
/// Longest sleep of the loop when nothing is scheduled (it also wakes on every event).
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// How long a run whose start is held (`plan::hold_start`) waits before it asks again.
const START_HELD_MS: i64 = 20;
/// How long the epoch's barrier write may take before it is tried again.
const BARRIER_WITHIN: Duration = Duration::from_secs(2);
/// Pause before re-checking the lease gate when it is closed.
const GATE_RECHECK: Duration = Duration::from_millis(10);
/// The one target of every run under the planted `global_queue` bug.
const GLOBAL_QUEUE_KEY: &str = "*";
/// Attempts started in one turn of the loop, so events, claims and queries are not starved.
const STARTS_PER_TURN_MAX: usize = 256;
/// How often the claim horizon is sized again (`plan::claim_horizon`), the furthest it may
/// reach, and how many due instants of the index one sizing looks at.
const HORIZON_EVERY: Duration = Duration::from_millis(500);
const HORIZON_MAX: Duration = Duration::from_secs(60);
const HORIZON_SCAN_MAX: usize = 1_000_000;
/// How often the per-target totals go to `/metrics`, and idle targets are forgotten.
const TOTALS_EVERY: Duration = Duration::from_secs(1);
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(300);

/// An attempt waiting for its instant.
#[derive(Debug, Clone)]
struct Pending {
    run_id: String,
    job_id: String,
    incarnation: u64,
    scheduled_at_ms: i64,
    /// When its first attempt was due: `scheduled_at_ms` plus a jittered job's offset (what
    /// lateness counts from).
    due_ms: i64,
    n: u32,
    /// Set for an event's delivery (`core::events`; `run_id` is its key): it goes to its own
    /// URL's target, not a job's.
    target: Option<TargetKey>,
}

enum Event {
    /// A claim round ended: its items, what was accepted (None: unknown), and when the proposal
    /// was made and how long it took (None: nothing was proposed).
    Claimed(Vec<ClaimItem>, Option<Vec<bool>>, Option<(i64, u64)>),
    Attempted(Sent, AttemptResult, Outcome, Option<String>),
    /// The gate closed between queue and send.
    NotAttempted(Sent),
    /// The attempt's task panicked: its slot is free again.
    Panicked(Sent),
}

/// An attempt taken off its target's queue.
struct Sent {
    p: Pending,
    key: TargetKey,
    probe: bool,
}

struct Dispatcher<D> {
    replica: Arc<Replica>,
    view: ReadView,
    deliverer: D,
    config: DispatchConfig,
    epoch: LeaderTerm,
    cancel: CancellationToken,
    /// The index: every job, and the due instant of those with a run to claim.
    index: JobIndex,
    claiming: HashSet<JobId>,
    claims_in_flight: usize,
    /// Parsed schedules, shared by jobs with the same cron expression and time zone.
    schedules: CronCache,
    /// Per-target queues of attempts, with the caps and breakers.
    sched: Scheduler<Pending>,
    /// Runs in `sched`, and runs with an attempt in flight: neither may be queued again.
    queued: HashSet<String>,
    /// Runs with an attempt in flight (this epoch's tasks), and their jobs.
    attempting: InFlight,
    /// Runs whose attempt task panicked, and how often: a second panic fails the run
    /// (`PANICS_PER_RUN_MAX`) instead of letting it block its target.
    panicked: HashMap<String, u32>,
    /// Runs of claims whose outcome is unknown, until found applied or queued.
    doubts: Doubts,
    /// Jobs not claimed because their target is held (see `Scheduler::holds`), by target, with
    /// the due instant they were taken out of the index at.
    held: HashMap<TargetKey, HashMap<JobId, i64>>,
    /// How many runs may be claimed, adapting to the claims' commit latency.
    pacer: Pacer,
    /// The claim horizon in force (ms), and when it was last sized.
    horizon_ms: i64,
    horizon_at: Instant,
    /// How far past the horizon a claim reaches (`plan::gather_ms`).
    gather_ms: i64,
    /// Whether the lease gate was open when attempts were last ready (closures are counted).
    gate_open: bool,
    events_tx: mpsc::Sender<Event>,
    record_tx: RecordQueue,
    /// What cluster events have told, as last read (`announce`), and since when this node
    /// leads (what a member never heard from is silent since).
    told: ClusterMemory,
    leading_since: std::time::Instant,
    /// This leadership's figures per second (`GET /v1/stats`).
    stats: Recorder,
}

/// Runs dispatch for `epoch` until `cancel`.
pub async fn run_epoch<D: Deliver>(
    replica: Arc<Replica>,
    deliverer: D,
    config: DispatchConfig,
    epoch: LeaderTerm,
    queries: Queries,
    stats: Recorder,
    cancel: CancellationToken,
) {
    // Only one epoch task runs at a time; it answers `GET /v1/targets` for its node.
    let mut queries = queries.lock().await;
    // Everything in the log before this epoch must be applied before planning from it. A read
    // index is not enough: after a whole-cluster restart a node can lead the same term again
    // (openraft restores its vote), and a claim its previous process appended but did not
    // commit then commits later under this very epoch, after the open runs were re-queued,
    // leaving its runs to no one (found by the chaos soak). So the barrier is a write of this
    // epoch, an empty claim: once it is applied, so is every entry before it.
    loop {
        let barrier = Command::ClaimRuns {
            epoch: epoch.into(),
            now_ms: config.clock.now_ms(),
            items: Vec::new(),
            retention: config.retention,
        };
        match replica.propose_local(barrier, BARRIER_WITHIN).await {
            Ok(CommandResult::Claimed { .. }) => break,
            other => {
                let e = match other {
                    Ok(r) => format!("{r:?}"),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(error = %e, "dispatch barrier failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
    let view = replica.state();
    let changes = replica.subscribe();
    // Bounded by what can be outstanding: one event per attempt in flight or claim in flight.
    let capacity = config.in_flight_max + CLAIMS_IN_FLIGHT_MAX + 16;
    let base_horizon_ms = config.horizon.as_millis() as i64;
    let (events_tx, mut events) = mpsc::channel(capacity);
    let (record_tx, record_rx) = mpsc::channel(capacity);
    let recording = Recording::default();
    let recorder = tokio::spawn(record_loop(replica.clone(), record_rx, recording.clone()));
    let gather_ms = plan::gather_ms(config.shards);
    let record_tx = RecordQueue {
        tx: record_tx,
        recording,
    };
    let started_ms = config.clock.now_ms();
    let mut d = Dispatcher {
        sched: if planted::is(planted::GLOBAL_QUEUE) {
            // One queue whose cap is the node's: no per-target isolation at all.
            Scheduler::new(config.in_flight_max, config.in_flight_max)
        } else {
            Scheduler::new(config.host_max, config.in_flight_max).with_shards(config.shards)
        },
        replica,
        view,
        deliverer,
        config,
        epoch,
        cancel: cancel.clone(),
        index: JobIndex::default(),
        schedules: CronCache::default(),
        claiming: HashSet::new(),
        claims_in_flight: 0,
        queued: HashSet::new(),
        attempting: InFlight::default(),
        panicked: HashMap::new(),
        doubts: Doubts::default(),
        held: HashMap::new(),
        pacer: Pacer::new(started_ms),
        horizon_ms: base_horizon_ms,
        gather_ms,
        horizon_at: Instant::now() - HORIZON_EVERY,
        gate_open: true,
        events_tx,
        record_tx,
        told: ClusterMemory::default(),
        leading_since: std::time::Instant::now(),
        stats,
    };
    d.rebuild();
    d.load_policies();
    if !planted::is(planted::IGNORE_OPEN_CLAIMS) {
        d.requeue_open_runs(None);
    }
    d.requeue_deliveries();
    d.read_told();
    d.announce(Announcement::LeaderChanged {
        term: epoch.term,
        node_id: epoch.node_id,
    });
    let mut totals_at = Instant::now();
    let mut forgot_at = Instant::now();
    loop {
        d.claim_due();
        d.send_due();
        if totals_at.elapsed() >= TOTALS_EVERY {
            totals_at = Instant::now();
            crate::metrics::targets(d.config.shard, &d.sched.totals());
            crate::metrics::claim_rate(d.config.shard, d.pacer.rate_per_s());
            d.announce_nodes();
        }
        if forgot_at.elapsed() >= FORGET_IDLE_EVERY {
            forgot_at = Instant::now();
            d.sched.forget_idle();
            d.schedules.forget_unused();
        }
        let wake = d.next_wake();
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(q) = queries.recv() => {
                let _ = q.reply.send(d.sched.page(q.after.as_deref(), q.limit));
            }
            _ = tokio::time::sleep_until(wake) => {}
            changed = changes.changed() => {
                let now = d.now_ms();
                d.stats.count(Count::Writes, now, changed.writes);
                d.stats.count(Count::Skipped, now, changed.skipped);
                if changed.all {
                    d.rebuild();
                    for id in d.doubts.jobs() {
                        d.resolve_doubts(&id);
                    }
                } else {
                    let jobs: Vec<String> = changed.jobs.into_iter().collect();
                    d.refresh(&jobs);
                    for id in &jobs {
                        if d.doubts.has_job(id) {
                            d.resolve_doubts(id);
                        }
                    }
                }
                d.queue_runs(&changed.runs);
                if changed.policies || changed.all {
                    d.load_policies();
                }
            }
            Some(event) = events.recv() => d.handle(event),
        }
    }
    crate::metrics::targets(d.config.shard, &Default::default());
    crate::metrics::claim_rate(d.config.shard, 0.0);
    drop(d);
    // Outcomes already queued are still worth recording if we remain leader; bounded wait.
    let _ = tokio::time::timeout(Duration::from_secs(1), recorder).await;
}

impl<D: Deliver> Dispatcher<D> {
    /// Rebuilds the index of every job from the state machine.
    fn rebuild(&mut self) {
        let mut cached = std::mem::take(&mut self.index);
        for job in self.view.all_jobs() {
            match job {
                // A job with a claim in flight is re-read when the claim returns.
                Ok(job) if self.claiming.contains(job.id.as_str()) => {}
                Ok(job) => {
                    let old = cached.remove(job.id.as_str());
                    self.index_job(job, old)
                }
                Err(e) => tracing::error!(error = %e, "skipping an unreadable job"),
            }
        }
        tracing::debug!(jobs = self.index.len(), "dispatch index rebuilt");
    }

    /// Re-reads `ids` from the state machine after they changed.
    fn refresh(&mut self, ids: &[String]) {
        for id in ids {
            if self.claiming.contains(id.as_str()) {
                continue; // refreshed when the claim returns
            }
            self.refresh_one(id);
        }
    }

    fn refresh_one(&mut self, id: &str) {
        let old = self.index.remove(id);
        match self.view.get_job(id) {
            Ok(Some(job)) => {
                let resumed = old.as_ref().is_some_and(|e| e.paused) && !job.spec.paused;
                self.index_job(job, old);
                if resumed {
                    self.requeue_open_runs(Some(id));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(job_id = id, error = %e, "cannot read a changed job"),
        }
    }

    /// Indexes a job, reusing the parsed schedule of `old` while the definition is unchanged
    /// (parsing a cron expression is far dearer than the per-claim refresh).
    fn index_job(&mut self, job: Job, old: Option<Indexed>) {
        let schedule = match old {
            Some(e) if e.version == job.version && e.incarnation == job.incarnation => e.schedule,
            _ => self
                .schedules
                .resolve(&job.spec.schedule, job.schedule_base_ms),
        };
        let next_due = schedule
            .as_ref()
            .and_then(|s| s.schedule())
            .and_then(|s| plan::next_due(&job, &s));
        let target = Some(delivery_target(&job.spec.url));
        let indexed = Indexed {
            version: job.version,
            incarnation: job.incarnation,
            paused: job.spec.paused,
            schedule,
        };
        self.index
            .insert(JobId::from(job.id.as_str()), indexed, next_due, target);
    }

    /// Queues the open runs of one job (or of all jobs) for another attempt.
    fn requeue_open_runs(&mut self, job_id: Option<&str>) {
        let runs = match job_id {
            Some(id) => self.view.job_runs(id, None, usize::MAX),
            None => self.view.open_runs(),
        };
        let runs = match runs {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read open runs");
                return;
            }
        };
        for run in runs {
            match (job_id, self.view.get_job(&run.job_id)) {
                // At the epoch's start: a run a previous epoch may still have out.
                (None, Ok(Some(job))) => {
                    let at = plan::first_send_at(&job, &run, self.now_ms());
                    self.enqueue_run_at(run, at);
                }
                _ => self.enqueue_run(run),
            }
        }
    }

    /// Queues every event delivery still to make (`core::events`).
    fn requeue_deliveries(&mut self) {
        match self.view.open_deliveries() {
            Ok(found) => {
                for (key, d) in found {
                    self.enqueue_delivery(key, &d);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the events to deliver"),
        }
    }

    /// Queues the next attempt of event delivery `key`.
    fn enqueue_delivery(&mut self, key: String, d: &Delivery) {
        self.enqueue(
            d.next_attempt_at_ms,
            Pending {
                run_id: key,
                job_id: d.job_id.clone().unwrap_or_default(),
                incarnation: 0,
                scheduled_at_ms: d.created_at_ms,
                due_ms: d.next_attempt_at_ms,
                n: d.attempts.saturating_add(1),
                target: Some(delivery_target(&d.to.url)),
            },
        );
    }

    /// Proposes cluster event `a` (`core::events`) if a notification takes its type, without
    /// waiting: `apply` tells it only if it is news, so one lost here is announced again by
    /// the next check or leader. (Nothing is written for types no one takes.)
    fn announce(&self, a: Announcement) {
        if self.config.shard != 0 {
            return;
        }
        match self.view.subscribed_events() {
            Ok(types) if types.contains(&a.kind()) => {}
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot read which events notifications take");
                return;
            }
        }
        let replica = self.replica.clone();
        let cmd = Command::Announce {
            announcement: a,
            at_ms: self.now_ms(),
        };
        tokio::spawn(async move {
            if let Err(e) = replica.propose(cmd).await {
                tracing::info!(error = %e, "announcing a cluster event failed");
            }
        });
    }

    /// Reads what cluster events told.
    fn read_told(&mut self) {
        match self.view.cluster_memory() {
            Ok(told) => self.told = told,
            Err(e) => tracing::error!(error = %e, "cannot read what cluster events told"),
        }
    }

    /// Announces the members lost or back (`announce::node_events`).
    fn announce_nodes(&mut self) {
        self.read_told();
        let members = self.replica.status().members.iter().map(|m| m.id).collect();
        let heard = self.replica.leadership().heard_from(self.epoch);
        let due = announce::node_events(
            std::time::Instant::now(),
            self.leading_since,
            self.replica.id(),
            &members,
            &heard,
            &self.told.unreachable,
        );
        for a in due {
            self.announce(a);
        }
    }

    /// Queues the next attempt of an open run, at its attempt time. The attempt number follows
    /// the recorded ones (an attempt a former leader made but did not record is repeated under
    /// the same number).
    fn enqueue_run(&mut self, run: Run) {
        let at = run.next_due_ms();
        self.enqueue_run_at(run, at);
    }

    /// `enqueue_run`, at `at`.
    fn enqueue_run_at(&mut self, run: Run, at: i64) {
        if !run.status.is_open() {
            return;
        }
        self.enqueue(
            at,
            Pending {
                n: u32::try_from(run.attempts.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(1),
                run_id: run.id,
                job_id: run.job_id,
                incarnation: run.incarnation,
                scheduled_at_ms: run.scheduled_at_ms,
                due_ms: at,
                target: None,
            },
        );
    }

    /// Puts the jobs held back for targets that no longer hold into the claim index again, at
    /// the instant they left it. Done before every claim round, so that no job of a target is
    /// claimed while one of the same target due earlier is still held: the target's runs then
    /// keep their due order (a release only on an attempt's end let a round in between claim
    /// later runs, sent before the held ones). No re-read: a job that changed meanwhile was
    /// re-indexed by the change feed already (then it has a next due and is left alone).
    fn release_held(&mut self) {
        let now = self.now_ms();
        let sched = &self.sched;
        let free: Vec<TargetKey> = self
            .held
            .keys()
            .filter(|key| !sched.holds(key, now))
            .cloned()
            .collect();
        for key in free {
            for (id, due) in self.held.remove(&key).unwrap_or_default() {
                if self.claiming.contains(&id) {
                    continue;
                }
                self.index.restore_due(&id, due);
            }
        }
    }

    /// Queues the runs of doubtful claims of `job_id` that turned out applied.
    fn resolve_doubts(&mut self, job_id: &str) {
        let (view, doubts) = (&self.view, &mut self.doubts);
        let mut open = Vec::new();
        doubts.resolve(job_id, |run_id| match view.get_run(run_id) {
            Ok(Some(run)) if run.status.is_open() => {
                open.push(run);
                Found::Open
            }
            Ok(Some(_)) => Found::Finished,
            _ => Found::Absent,
        });
        for run in open {
            tracing::info!(run_id = %run.id, "a claim given up on was applied after all; queuing its run");
            self.enqueue_run(run);
        }
    }

    /// The targets' policies as the state holds them (`PUT /v1/targets/{host:port}/policy`),
    /// read at the start and whenever one changes.
    fn load_policies(&mut self) {
        match self.view.target_policies() {
            Ok(policies) => self.sched.set_policies(
                policies
                    .into_iter()
                    .map(|(k, p)| (TargetKey::from(k.as_str()), p))
                    .collect(),
            ),
            Err(e) => tracing::error!(error = %e, "cannot read the targets' policies"),
        }
    }

    /// Queues runs opened outside a claim (trigger, retry), and new event deliveries.
    fn queue_runs(&mut self, ids: &[String]) {
        for id in ids {
            if events::is_delivery(id) {
                match self.view.get_delivery(id) {
                    Ok(Some(d)) => self.enqueue_delivery(id.clone(), &d),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(key = %id, error = %e, "cannot read an event delivery")
                    }
                }
                continue;
            }
            match self.view.get_run(id) {
                Ok(Some(run)) => {
                    if let Some(due) = stats::opened_due_ms(&run) {
                        self.stats.count(Count::Due, due, 1);
                    }
                    self.enqueue_run(run)
                }
                Ok(None) => {}
                Err(e) => tracing::error!(run_id = %id, error = %e, "cannot read an opened run"),
            }
        }
    }

    fn enqueue(&mut self, at: i64, p: Pending) {
        if p.target.is_none() {
            self.doubts.queued(&p.job_id, &p.run_id);
        }
        if self.attempting.contains(&p.run_id)
            || self.queued.contains(&p.run_id)
            || self.record_tx.recording.contains(&p.run_id)
        {
            return;
        }
        let key = match &p.target {
            Some(key) => key.clone(),
            None => match self.target_of(&p.job_id) {
                Some(key) => key,
                None => return, // the job is gone: no attempt
            },
        };
        self.queued.insert(p.run_id.clone());
        self.sched.push(key, at, p.run_id.clone(), p);
    }

    /// The target a job delivers to, from the index or else from the state machine.
    fn target_of(&self, job_id: &str) -> Option<TargetKey> {
        if planted::is(planted::GLOBAL_QUEUE) {
            return Some(TargetKey::from(GLOBAL_QUEUE_KEY));
        }
        if let Some(found) = self.index.get(job_id) {
            return found.target;
        }
        match self.view.get_job(job_id) {
            Ok(Some(job)) => Some(delivery_target(&job.spec.url)),
            _ => None,
        }
    }

    /// The claim horizon, widened ahead of a herd of runs due together; sized again at most
    /// every `HORIZON_EVERY`.
    fn horizon(&mut self, now: i64) -> i64 {
        if self.horizon_at.elapsed() >= HORIZON_EVERY {
            self.horizon_at = Instant::now();
            let base = self.config.horizon.as_millis() as i64;
            let widened = plan::claim_horizon(
                self.index.dues().take(HORIZON_SCAN_MAX),
                now,
                base,
                HORIZON_MAX.as_millis() as i64,
                plan::CLAIM_PLAN_RATE_PER_S,
            );
            if widened != self.horizon_ms {
                tracing::debug!(horizon_ms = widened, "claim horizon sized");
            }
            self.horizon_ms = widened;
        }
        self.horizon_ms
    }

    /// Claims every run due within the horizon, in bounded batches.
    fn claim_due(&mut self) {
        self.release_held();
        let now = self.now_ms();
        let base = self.config.horizon.as_millis() as i64;
        let horizon = self.horizon(now);
        let mut budget = self.pacer.budget(now);
        while self.claims_in_flight < CLAIMS_IN_FLIGHT_MAX && budget > 0 {
            let first = self.index.first_due_at();
            let Some(until) =
                first.and_then(|d| plan::claim_until(d, now, horizon, self.gather_ms))
            else {
                return;
            };
            let mut items = Vec::new();
            let mut batch_jobs = Vec::new();
            while let Some(due) = self.index.first_due_at() {
                if due > until || items.len() >= CLAIM_ITEMS_MAX.min(budget) {
                    break;
                }
                // Out of the due order until claimed and re-indexed, or released.
                let Some((due, id)) = self.index.pop_first_due() else {
                    break;
                };
                let found = self.index.get(&id);
                let target = found.as_ref().and_then(|f| f.target.clone());
                if let Some(key) = target.clone().filter(|k| self.sched.holds(k, now)) {
                    // Left unclaimed until the target no longer holds (`release_held`).
                    self.held.entry(key).or_default().insert(id, due);
                    continue;
                }
                // Runs of jobs further behind go first (see `plan::due_prefix`).
                let frontier = self.index.first_due_at().unwrap_or(i64::MAX);
                let limited = target.as_ref().is_some_and(|k| self.sched.rate_limited(k));
                let schedule = found.and_then(|f| f.schedule);
                let planned = match (self.view.get_job(&id), schedule) {
                    (Ok(Some(mut job)), Some(s)) => s
                        .schedule()
                        .map(|s| {
                            // Up to its next run when the horizon reaches past the base for a
                            // herd: one run ahead, never a job's whole horizon of runs.
                            let ahead = base.max(due.saturating_sub(now));
                            if limited {
                                // Runs its target's rate limit holds back go later, never
                                // misfired: the delay is the policy's, not an outage.
                                job.spec.misfire.grace_ms = u64::MAX;
                            }
                            plan::due_prefix(plan::plan_job(&job, &s, now, ahead), frontier)
                        })
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                self.claiming.insert(id.clone());
                batch_jobs.push(id);
                items.extend(planned);
            }
            if batch_jobs.is_empty() {
                return;
            }
            budget = budget.saturating_sub(items.len());
            self.pacer.spend(items.len());
            self.claims_in_flight += 1;
            let replica = self.replica.clone();
            let tx = self.events_tx.clone();
            let cmd = Command::ClaimRuns {
                epoch: self.epoch.into(),
                now_ms: now,
                items: items.clone(),
                retention: self.config.retention,
            };
            // Jobs with nothing to claim still go through the round, to be refreshed after it.
            let jobs_only: Vec<ClaimItem> = batch_jobs
                .into_iter()
                .map(|id| ClaimItem {
                    job_id: id.to_string(),
                    incarnation: 0,
                    due_ms: 0,
                    kind: ClaimKind::Deliver,
                })
                .collect();
            tokio::spawn(async move {
                let started = Instant::now();
                let accepted = if items.is_empty() {
                    Some(Vec::new())
                } else {
                    match replica.propose(cmd).await {
                        Ok(CommandResult::Claimed { accepted }) => Some(accepted),
                        Ok(other) => {
                            tracing::warn!(?other, "claim not accepted");
                            None
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "claim failed");
                            None
                        }
                    }
                };
                let mut all = items;
                let n = all.len();
                all.extend(jobs_only);
                let accepted = accepted.map(|mut a| {
                    a.resize(n, false);
                    a
                });
                let latency = (n > 0).then(|| (now, started.elapsed().as_millis() as u64));
                let _ = tx.send(Event::Claimed(all, accepted, latency)).await;
            });
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Claimed(items, accepted, latency) => {
                self.claims_in_flight -= 1;
                let outcome_known = accepted.is_some();
                if let Some((started_ms, ms)) = latency {
                    self.pacer.observe(started_ms, ms, outcome_known);
                }
                let accepted = accepted.unwrap_or_default();
                let mut done_jobs = HashSet::new();
                let (committed_ms, mut late) = (self.now_ms(), 0);
                for (i, item) in items.into_iter().enumerate() {
                    let ok = accepted.get(i).copied().unwrap_or(false);
                    if let (true, ClaimKind::Skip { count, .. }) = (ok, &item.kind) {
                        crate::metrics::skipped(*count);
                    }
                    let run_id =
                        crate::core::command::Run::scheduled_id(item.incarnation, item.due_ms);
                    let attempt_at = item.kind.attempt_at(item.due_ms);
                    // Items with incarnation 0 only carry a job through the round.
                    let real = attempt_at.is_some() && item.incarnation != 0;
                    if real && !outcome_known {
                        // It may still be applied after we gave up on it.
                        self.doubts.add(&item.job_id, run_id.clone());
                    }
                    if let (true, Some(at)) = (ok, attempt_at) {
                        if at < committed_ms {
                            late += 1;
                        }
                        // (A claim whose answer was lost is not counted: its runs are found
                        // open again and queued, but not as newly due.)
                        if real {
                            self.stats.count(Count::Due, at, 1);
                        }
                        self.enqueue(
                            at,
                            Pending {
                                run_id,
                                job_id: item.job_id.clone(),
                                incarnation: item.incarnation,
                                scheduled_at_ms: item.due_ms,
                                due_ms: at,
                                n: 1,
                                target: None,
                            },
                        );
                    }
                    done_jobs.insert(item.job_id);
                }
                crate::metrics::claimed_late(late);
                for id in done_jobs {
                    self.claiming.remove(id.as_str());
                    self.refresh_one(&id);
                    if !outcome_known {
                        // The claim may have been applied although its answer was lost: the
                        // state machine knows which runs it opened.
                        self.requeue_open_runs(Some(&id));
                    }
                }
            }
            Event::NotAttempted(Sent { p, key, probe }) => {
                let now = self.now_ms();
                self.attempting.remove(&p.run_id);
                self.sched.finish(&key, probe, Outcome::NotSent, None, now);
                self.enqueue(now + GATE_RECHECK.as_millis() as i64, p);
            }
            Event::Panicked(Sent { p, key, probe }) => {
                let now = self.now_ms();
                self.attempting.remove(&p.run_id);
                self.sched.finish(&key, probe, Outcome::NotSent, None, now);
                let panics = self.panicked.entry(p.run_id.clone()).or_insert(0);
                *panics += 1;
                if *panics < PANICS_PER_RUN_MAX {
                    self.enqueue(now, p);
                    return;
                }
                self.panicked.remove(&p.run_id);
                tracing::error!(run_id = %p.run_id, "the run's attempt panicked again; recording it failed");
                if p.target.is_none() {
                    self.stats.count(Count::Failed, now, 1);
                }
                let record = AttemptOutcome {
                    run_id: p.run_id,
                    attempt: Attempt {
                        n: p.n,
                        started_at_ms: now,
                        duration_ms: 0,
                        status_code: None,
                        error: Some("internal".into()),
                        node_id: self.replica.id(),
                    },
                    result: AttemptResult::Failed,
                };
                let record = ToRecord {
                    outcome: record,
                    at_once: true,
                };
                if !self.record_tx.try_send(record) {
                    tracing::warn!("the record queue is full; the next leader retries the run");
                }
            }
            Event::Attempted(Sent { p, key, probe }, result, outcome, error) => {
                self.attempting.remove(&p.run_id);
                self.panicked.remove(&p.run_id);
                if self
                    .sched
                    .finish(&key, probe, outcome, error, self.now_ms())
                {
                    tracing::warn!(target = %key, "circuit opened after consecutive timeouts or connection errors");
                    crate::metrics::circuit_opened();
                    if self.told.open_circuits.insert(key.to_string()) {
                        self.announce(Announcement::CircuitOpened {
                            target: key.to_string(),
                        });
                    }
                } else if outcome == Outcome::Answered
                    && self.told.open_circuits.remove(key.as_ref())
                {
                    // The target answered: its circuit is closed (for a new leader, which
                    // starts with every circuit closed, at its first answer).
                    self.announce(Announcement::CircuitClosed {
                        target: key.to_string(),
                    });
                }
                crate::metrics::in_flight(self.config.shard, self.sched.in_flight());
                if let AttemptResult::RetryAt(at) = result {
                    let n = p.n.saturating_add(1);
                    self.enqueue(at, Pending { n, ..p });
                }
            }
        }
    }

    /// Starts the attempts whose instant has come, as the per-target scheduler picks them,
    /// while the lease gate is open; at most `STARTS_PER_TURN_MAX` per turn.
    fn send_due(&mut self) {
        let now = self.now_ms();
        for _ in 0..STARTS_PER_TURN_MAX {
            if !self.sched.can_start(now) {
                return; // a finishing attempt or a new run wakes the loop
            }
            if !self.may_act() {
                if std::mem::replace(&mut self.gate_open, false) {
                    crate::metrics::lease_gate_closed();
                }
                return; // the gate re-check wakes the loop
            }
            self.gate_open = true;
            let Some(started) = self.sched.next(now) else {
                return;
            };
            let (key, probe, p) = (started.key, started.probe, started.item);
            self.queued.remove(&p.run_id);
            if p.target.is_some() {
                // An event's delivery: sent as it was written, unless already done.
                match self.view.get_delivery(&p.run_id) {
                    Ok(Some(d)) => {
                        self.attempting.insert(p.run_id.clone(), p.job_id.clone());
                        let event = Some((d.event_id.clone(), d.kind));
                        self.spawn_attempt(d.request(), Sent { p, key, probe }, false, event);
                    }
                    _ => {
                        self.sched.finish(&key, probe, Outcome::NotSent, None, now);
                    }
                }
                continue;
            }
            let run = self.view.get_run(&p.run_id).ok().flatten();
            let job = match self.view.get_job(&p.job_id) {
                Ok(Some(job)) if plan::may_attempt(&job, run.as_ref(), p.incarnation) => job,
                // Deleted, re-created, paused, or its run forgotten by a pause or finished: no
                // new attempt (resume re-queues the open runs).
                _ => {
                    self.sched.finish(&key, probe, Outcome::NotSent, None, now);
                    continue;
                }
            };
            if !planted::is(planted::GLOBAL_QUEUE) && delivery_target(&job.spec.url) != key {
                // The URL changed since the run was queued: queue it under its new target.
                self.sched.finish(&key, probe, Outcome::NotSent, None, now);
                self.enqueue(started.at_ms, p);
                continue;
            }
            // A job with an overlap policy: its run asks to start first (`Command::StartRun`).
            let overlap = job.spec.ext.overlap;
            let first = run.as_ref().is_some_and(|r| r.attempts.is_empty());
            let started = run.as_ref().is_some_and(|r| r.ext.started);
            let ask_to_start = overlap.is_some() && first && !started;
            // ...but not while an attempt of another of its runs is in flight from here: that
            // run may already be recorded as ended (its outcome came from a previous epoch's
            // attempt while this epoch sent it again), yet the target still has it open. Once
            // started, a run of a job whose runs never overlap waits for any such attempt.
            let ended = |id: &str| {
                let run = self.view.get_run(id).ok().flatten();
                run.is_none_or(|r| !r.status.is_open())
            };
            let one_at_a_time = overlap.is_some_and(Overlap::one_at_a_time);
            let held = (ask_to_start || (first && started && one_at_a_time))
                && self
                    .attempting
                    .holds_start(&p.job_id, &p.run_id, started, ended);
            if held {
                self.sched.finish(&key, probe, Outcome::NotSent, None, now);
                self.enqueue(now + START_HELD_MS, p);
                continue;
            }
            self.attempting.insert(p.run_id.clone(), p.job_id.clone());
            self.spawn_attempt(job, Sent { p, key, probe }, ask_to_start, None);
        }
    }

    /// Runs one attempt in its own task; its end comes back as an event. `event` is an event
    /// delivery's id and type.
    fn spawn_attempt(
        &self,
        job: Job,
        sent: Sent,
        ask_to_start: bool,
        event: Option<(String, EventType)>,
    ) {
        let replica = self.replica.clone();
        let deliverer = self.deliverer.clone();
        let clock = self.config.clock.clone();
        let leadership = self.replica.leadership().clone();
        let epoch = self.epoch;
        let record_tx = self.record_tx.clone();
        let events_tx = self.events_tx.clone();
        let cancel = self.cancel.clone();
        // Runs are counted; events' deliveries are not runs.
        let stats = event.is_none().then(|| self.stats.clone());
        let p = &sent.p;
        let span = tracing::info_span!("attempt", job_id = %p.job_id, run_id = %p.run_id, n = p.n);
        // What the supervisor below hands back if the task panics (its slot must come back).
        let slot = Sent {
            p: p.clone(),
            key: sent.key.clone(),
            probe: sent.probe,
        };
        let supervisor_tx = self.events_tx.clone();
        let attempting = self.attempting.clone();
        let task = async move {
            let p = &sent.p;
            // The gate again, right before the request leaves.
            let gate_open = planted::is(planted::LEASE_GATE) || leadership.may_act(epoch);
            if cancel.is_cancelled() || !gate_open {
                // Not attempted: back to the queue, in case the gate opens again.
                let _ = events_tx.send(Event::NotAttempted(sent)).await;
                return;
            }
            if ask_to_start {
                let asked = Command::StartRun {
                    run_id: p.run_id.clone(),
                };
                if !matches!(
                    replica.propose(asked).await,
                    Ok(CommandResult::Start { go: true })
                ) {
                    // Skipped or held back (the queue drops it: `plan::may_attempt`), or not
                    // answered (asked again).
                    let _ = events_tx.send(Event::NotAttempted(sent)).await;
                    return;
                }
                // Started; but another run of the job may have ended in the state meanwhile
                // while this epoch still has it out (`plan::hold_start`): then a run of a job
                // whose runs never overlap waits, queued again.
                let one_at_a_time = job.spec.ext.overlap.is_some_and(Overlap::one_at_a_time);
                if one_at_a_time && attempting.holds_start(&p.job_id, &p.run_id, true, |_| true) {
                    let _ = events_tx.send(Event::NotAttempted(sent)).await;
                    return;
                }
            }
            // Debug builds only: the supervision test's way to make an attempt panic.
            #[cfg(debug_assertions)]
            if job.spec.headers.contains_key(TEST_PANIC_HEADER) {
                panic!("planted: an attempt of a job with {TEST_PANIC_HEADER}");
            }
            let req = AttemptRequest {
                job: &job,
                run_id: event.as_ref().map_or(&p.run_id, |(id, _)| id),
                scheduled_at_ms: p.scheduled_at_ms,
                n: p.n,
                event: event.as_ref().map(|(_, kind)| *kind),
            };
            let (attempt, http) = deliverer.attempt(&req).await;
            crate::metrics::attempt(&attempt, p.due_ms, p.n);
            let result = after_attempt(p.n, &job.spec.retry, &http, clock.now_ms(), rand::random());
            crate::metrics::run_result(&result);
            if let Some(stats) = &stats {
                stats.attempt(&attempt, p.due_ms, p.n, &result);
            }
            let (outcome, error) = match (&attempt.status_code, &attempt.error) {
                // Nothing reached the target: the policy stopped it, which says nothing of it.
                (None, e) if http.denied => (Outcome::NotSent, e.clone()),
                (None, e) => (Outcome::Failed, e.clone()),
                (Some(_), _) if http.succeeded() => (Outcome::Answered, None),
                (Some(s), _) => (Outcome::Answered, Some(format!("status {s}"))),
            };
            match &result {
                AttemptResult::Succeeded => tracing::debug!("delivered"),
                AttemptResult::RetryAt(at) => {
                    tracing::info!(status = ?attempt.status_code, error = ?attempt.error, retry_at = at, "attempt failed; will retry")
                }
                AttemptResult::Failed => {
                    tracing::warn!(status = ?attempt.status_code, error = ?attempt.error, "run failed after its last attempt")
                }
            }
            let outcome_record = AttemptOutcome {
                run_id: p.run_id.clone(),
                attempt,
                result: result.clone(),
            };
            record_tx
                .send(ToRecord {
                    outcome: outcome_record,
                    // Its job's next run asks the state whether this one is still open.
                    at_once: job.spec.ext.overlap.is_some(),
                })
                .await;
            let _ = events_tx
                .send(Event::Attempted(sent, result, outcome, error))
                .await;
        };
        let attempt = tokio::spawn(task.instrument(span));
        tokio::spawn(async move {
            let Err(e) = attempt.await else { return };
            if e.is_panic() {
                crate::metrics::task_panicked("attempt");
                tracing::error!(run_id = %slot.p.run_id, cause = %panic_cause(e.into_panic()), "an attempt panicked; its delivery slot is released");
                let _ = supervisor_tx.send(Event::Panicked(slot)).await;
            }
        });
    }

    fn now_ms(&self) -> i64 {
        self.config.clock.now_ms()
    }

    /// The lease gate: this node still leads this epoch with a fresh quorum ack.
    fn may_act(&self) -> bool {
        planted::is(planted::LEASE_GATE) || self.replica.leadership().may_act(self.epoch)
    }

    /// When the loop must wake next: at once while attempts may start (the gate re-check when
    /// it is closed), the first waiting target, the first claim, or idle.
    fn next_wake(&mut self) -> Instant {
        let now = self.now_ms();
        let horizon = self.horizon_ms;
        let mut wake_ms = now + IDLE_WAKE.as_millis() as i64;
        if self.sched.can_start(now) {
            let gate_closed = !self.may_act();
            wake_ms = if gate_closed {
                now + GATE_RECHECK.as_millis() as i64
            } else {
                now
            };
        } else if let Some(at) = self.sched.next_wake() {
            wake_ms = wake_ms.min(at);
        }
        if self.claims_in_flight < CLAIMS_IN_FLIGHT_MAX {
            if let Some(due) = self.index.first_due_at() {
                wake_ms = wake_ms.min(
                    due.saturating_sub(horizon)
                        .max(now.saturating_add(self.pacer.wait_ms(1))),
                );
            }
        }
        let delay = wake_ms
            .saturating_sub(now)
            .clamp(0, IDLE_WAKE.as_millis() as i64) as u64;
        Instant::now() + Duration::from_millis(delay)
    }
}

/// Runs with an attempt in flight from a dispatcher (its epoch's tasks), and their jobs: shared
/// with the attempt tasks, which look again once their run's start is decided.
#[derive(Clone, Default)]
struct InFlight(Arc<std::sync::Mutex<HashMap<String, String>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, run: String, job: String) {
        self.lock().insert(run, job);
    }

    fn remove(&self, run: &str) {
        self.lock().remove(run);
    }

    fn contains(&self, run: &str) -> bool {
        self.lock().contains_key(run)
    }

    /// `plan::hold_start` over the runs in flight now.
    fn holds_start(
        &self,
        job: &str,
        run: &str,
        started: bool,
        ended: impl Fn(&str) -> bool,
    ) -> bool {
        plan::hold_start(&self.lock(), job, run, started, ended)
    }
}

/// An attempt's outcome for `record_loop`; `at_once` when the job's next run may wait for it (a
/// job with an overlap policy: its runs ask the state what is open, `Command::StartRun`).
struct ToRecord {
    outcome: AttemptOutcome,
    at_once: bool,
}

/// Runs whose attempt ended for good while their outcome waits to be recorded (up to
/// `RECORD_GATHER`, then a Raft round): the state still shows them open, so nothing may queue
/// them again (a resume, a claim of unknown outcome) until `record_loop` is done with them.
#[derive(Clone, Default)]
struct Recording(Arc<std::sync::Mutex<HashSet<String>>>);

impl Recording {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, run_id: &str) -> bool {
        self.lock().contains(run_id)
    }

    /// Marks the run of `r` when its outcome ends it.
    fn mark(&self, r: &ToRecord) {
        if !matches!(r.outcome.result, AttemptResult::RetryAt(_)) {
            self.lock().insert(r.outcome.run_id.clone());
        }
    }

    fn unmark<'a>(&self, run_ids: impl IntoIterator<Item = &'a str>) {
        let mut recording = self.lock();
        for id in run_ids {
            recording.remove(id);
        }
    }
}

/// The way to `record_loop`: an outcome that ends its run is marked `Recording` before it goes.
#[derive(Clone)]
struct RecordQueue {
    tx: mpsc::Sender<ToRecord>,
    recording: Recording,
}

impl RecordQueue {
    async fn send(&self, r: ToRecord) {
        self.recording.mark(&r);
        let id = r.outcome.run_id.clone();
        if self.tx.send(r).await.is_err() {
            self.recording.unmark([id.as_str()]);
        }
    }

    /// False when the queue is full (or gone): nothing was queued.
    fn try_send(&self, r: ToRecord) -> bool {
        self.recording.mark(&r);
        let id = r.outcome.run_id.clone();
        let sent = self.tx.try_send(r).is_ok();
        if !sent {
            self.recording.unmark([id.as_str()]);
        }
        sent
    }
}

/// Writes outcomes through Raft in batches, in the order they happened: each batch takes what
/// arrives within `RECORD_GATHER` of its first, and goes at once with an outcome that is
/// `at_once`. A batch's runs leave `recording` once it is applied or given up on.
async fn record_loop(
    replica: Arc<Replica>,
    mut rx: mpsc::Receiver<ToRecord>,
    recording: Recording,
) {
    let leadership = replica.leadership().clone();
    while let Some(first) = rx.recv().await {
        let until = tokio::time::Instant::now() + RECORD_GATHER;
        let mut at_once = first.at_once;
        let mut outcomes = vec![first.outcome];
        // A leader handing over waits for its records only briefly (`Replica::hand_over`: 250 ms
        // to 1 s, while a gather takes 100 ms): an outcome that arrives then goes at once, or
        // the next leader would send its run again.
        while outcomes.len() < RECORD_ITEMS_MAX && !at_once && !leadership.is_aside() {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(o)) => {
                    at_once = o.at_once;
                    outcomes.push(o.outcome);
                }
                // Time is up, or the dispatcher is gone: record what there is.
                Ok(None) | Err(_) => break,
            }
        }
        // A lost record leaves its runs open until the next epoch re-delivers them, so try a few
        // times; a retried record that had in fact been applied only repeats attempt entries.
        let ids: Vec<String> = outcomes.iter().map(|o| o.run_id.clone()).collect();
        let cmd = Command::RecordAttempts { outcomes };
        for try_n in 1..=RECORD_TRIES {
            match replica.propose(cmd.clone()).await {
                Ok(CommandResult::Rejected { field, message }) => {
                    // Never expected: the outcomes come from this node's own attempts.
                    tracing::error!(%field, %message, "attempt outcomes refused by the leader");
                    break;
                }
                Ok(_) => break,
                Err(e)
                    if try_n == RECORD_TRIES
                        || replica.leadership().epochs().borrow().is_none() =>
                {
                    // The next leader re-delivers runs without a recorded outcome.
                    tracing::warn!(error = %e, "recording attempt outcomes failed");
                    break;
                }
                Err(e) => {
                    tracing::info!(error = %e, "recording attempt outcomes failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        recording.unmark(ids.iter().map(String::as_str));
    }
}
