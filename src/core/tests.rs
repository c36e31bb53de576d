//! The planner and the state machine together, in process: plan → claim → attempt → record
//! sequences over in-memory tables with a fake clock. The leader plans from the applied state
//! and proposes claims that `apply` must accept exactly once; these tests drive both sides the
//! way the dispatcher and the replicated store do, without either.

use super::command::{
    Attempt, AttemptOutcome, AttemptResult, ClaimItem, ClaimKind, Command, CommandResult, Epoch,
    Job, JobSpec, MisfirePolicy, Run, RunStatus, ScheduleSpec,
};
use super::mem::MemTables;
use super::plan::{self, HttpOutcome};
use super::state::tests::spec;
use super::state::{apply_command, Position, Table, Tables, Touched};
use super::view::View;
use crate::schedule;

const LEADER: Epoch = Epoch {
    term: 3,
    node_id: 1,
};
/// The base claim horizon the dispatcher uses.
const HORIZON_MS: i64 = 300;

/// One leader's world: the applied tables, the log index of the next entry, and the clock.
struct World {
    tables: MemTables,
    index: u64,
    now_ms: i64,
}

impl World {
    fn new() -> World {
        World {
            tables: MemTables::default(),
            index: 1,
            now_ms: 1_000_000,
        }
    }

    fn view(&self) -> View<&MemTables> {
        View::new(&self.tables)
    }

    /// Applies `cmd` as the next entry, proposed by `epoch`.
    fn apply_as(&mut self, epoch: Epoch, cmd: Command) -> CommandResult {
        let at = Position {
            index: self.index,
            epoch,
            shard: 0,
        };
        self.index += 1;
        apply_command(&self.tables, &at, &cmd, &mut Touched::default()).expect("in memory")
    }

    fn apply(&mut self, cmd: Command) -> CommandResult {
        self.apply_as(LEADER, cmd)
    }

    fn create(&mut self, id: &str, spec: JobSpec) -> Job {
        let now_ms = self.now_ms;
        match self.apply(Command::CreateJob {
            id: id.into(),
            spec,
            now_ms,
        }) {
            CommandResult::Job { job, .. } => job,
            other => panic!("create: {other:?}"),
        }
    }

    /// What the dispatcher would claim for `id` now, from the applied state.
    fn plan(&self, id: &str) -> Vec<ClaimItem> {
        let Some(job) = self.view().get_job(id).unwrap() else {
            return Vec::new();
        };
        let s = schedule::resolve(&job.spec.schedule, job.schedule_base_ms).expect("schedule");
        plan::plan_job(&job, &s, self.now_ms, HORIZON_MS)
    }

    fn claim_as(&mut self, epoch: Epoch, items: Vec<ClaimItem>) -> CommandResult {
        let now_ms = self.now_ms;
        self.apply_as(
            epoch,
            Command::ClaimRuns {
                epoch,
                now_ms,
                items,
                retention: 100,
            },
        )
    }

    /// Claims `items` as the leader; returns which were accepted.
    fn claim(&mut self, items: Vec<ClaimItem>) -> Vec<bool> {
        match self.claim_as(LEADER, items) {
            CommandResult::Claimed { accepted } => accepted,
            other => panic!("claim: {other:?}"),
        }
    }

    /// Delivers run `id` now with an HTTP answer of `status`, decides what follows by the job's
    /// retry policy, and records it; returns the decision.
    fn attempt(&mut self, run_id: &str, status: u16) -> AttemptResult {
        let run = self.view().get_run(run_id).unwrap().expect("run");
        let job = self.view().get_job(&run.job_id).unwrap().expect("job");
        let n = run.attempts.len() as u32 + 1;
        let outcome = HttpOutcome {
            status: Some(status),
            retry_after: None,
            denied: false,
        };
        let result = plan::after_attempt(n, &job.spec.retry, &outcome, self.now_ms, 0.5);
        self.record(run_id, n, status, result.clone());
        result
    }

    fn record(&mut self, run_id: &str, n: u32, status: u16, result: AttemptResult) {
        let attempt = Attempt {
            n,
            started_at_ms: self.now_ms,
            duration_ms: 1,
            status_code: Some(status),
            error: None,
            node_id: LEADER.node_id,
        };
        let outcomes = vec![AttemptOutcome {
            run_id: run_id.into(),
            attempt,
            result,
        }];
        assert_eq!(
            self.apply(Command::RecordAttempts { outcomes }),
            CommandResult::Done
        );
    }

    fn runs(&self, id: &str) -> Vec<Run> {
        let mut runs = self.view().job_runs(id, None, usize::MAX).unwrap();
        runs.reverse();
        runs
    }
}

fn every(ms: u64) -> JobSpec {
    JobSpec {
        schedule: ScheduleSpec::Every {
            every_ms: ms,
            start_at_ms: None,
        },
        ..spec("http://127.0.0.1:1/")
    }
}

/// A leader that plans and claims every 100 ms for 10 s claims each run of an every-second job
/// exactly once, ahead of its due instant, and the planner never proposes a run the state
/// already claimed: its cursor and `apply`'s claim rule agree.
#[test]
fn each_run_is_claimed_once_ahead_of_time_and_recorded() {
    let mut w = World::new();
    let created = w.now_ms;
    w.create("a", every(1000));
    let end = w.now_ms + 10_000;
    while w.now_ms <= end {
        let items = w.plan("a");
        for item in &items {
            assert!(item.due_ms > w.now_ms - 1, "planned late: {item:?}");
            assert!(item.due_ms <= w.now_ms + HORIZON_MS);
        }
        let n = items.len();
        assert_eq!(w.claim(items), vec![true; n], "at {}", w.now_ms);
        assert!(w.plan("a").is_empty(), "a claimed run is planned again");
        // Deliver what is due.
        for run in w.runs("a") {
            if run.status == RunStatus::Pending && run.scheduled_at_ms <= w.now_ms {
                assert_eq!(w.attempt(&run.id, 204), AttemptResult::Succeeded);
            }
        }
        w.now_ms += 100;
    }
    let runs = w.runs("a");
    let dues: Vec<i64> = runs.iter().map(|r| r.scheduled_at_ms).collect();
    let want: Vec<i64> = (1..=10).map(|k| created + k * 1000).collect();
    assert_eq!(dues, want);
    assert!(runs.iter().all(|r| r.status == RunStatus::Succeeded));
    assert!(runs.iter().all(|r| r.attempts.len() == 1));
    assert!(runs.iter().all(|r| r.claimed_at_ms < r.scheduled_at_ms));
}

/// A target that keeps failing is retried by the job's policy, then the run fails; a success
/// reported late (by a former leader) still counts, but nothing reopens a finished run.
#[test]
fn a_failing_run_is_retried_by_its_policy_then_fails() {
    let mut w = World::new();
    let mut s = every(60_000);
    s.retry.max_attempts = 3;
    w.create("a", s);
    w.now_ms += 60_000 - 200;
    let items = w.plan("a");
    assert_eq!(items.len(), 1);
    assert_eq!(w.claim(items), [true]);
    let run = w.runs("a").pop().expect("claimed run");
    w.now_ms = run.scheduled_at_ms;

    let AttemptResult::RetryAt(at) = w.attempt(&run.id, 503) else {
        panic!("a 503 is retried");
    };
    let stored = w.view().get_run(&run.id).unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.next_attempt_at_ms),
        (RunStatus::Retrying, Some(at))
    );
    // 1 s initial backoff, no jitter at 0.5.
    assert_eq!(at, w.now_ms + 1000);
    w.now_ms = at;
    assert!(matches!(w.attempt(&run.id, 500), AttemptResult::RetryAt(_)));
    assert_eq!(w.attempt(&run.id, 500), AttemptResult::Failed);
    let failed = w.view().get_run(&run.id).unwrap().unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.attempts.len(), 3);
    assert_eq!(
        w.view()
            .runs_with_status(RunStatus::Failed, 10)
            .unwrap()
            .len(),
        1
    );
    assert!(w.view().open_runs().unwrap().is_empty());

    // A late "retry" report from a former leader cannot reopen it; a late success wins.
    w.record(&run.id, 2, 500, AttemptResult::RetryAt(w.now_ms + 5));
    assert_eq!(
        w.view().get_run(&run.id).unwrap().unwrap().status,
        RunStatus::Failed
    );
    w.record(&run.id, 2, 200, AttemptResult::Succeeded);
    assert_eq!(
        w.view().get_run(&run.id).unwrap().unwrap().status,
        RunStatus::Succeeded
    );
}

/// After an outage longer than the grace period, the `skip` policy records the missed runs as
/// one skipped range and claims the next on-time run, all in one claim.
#[test]
fn runs_missed_beyond_the_grace_are_recorded_as_one_skipped_range() {
    let mut w = World::new();
    let created = w.now_ms;
    let mut s = every(1000);
    s.misfire.policy = MisfirePolicy::Skip;
    s.misfire.grace_ms = 1500;
    w.create("a", s);
    // Nobody led for 10.2 s.
    w.now_ms += 10_200;
    let items = w.plan("a");
    assert!(
        matches!(
            items.first().map(|i| &i.kind),
            Some(ClaimKind::Skip { count: 8, .. })
        ),
        "{items:?}"
    );
    let n = items.len();
    assert_eq!(w.claim(items), vec![true; n]);
    assert!(w.plan("a").is_empty());
    let runs = w.runs("a");
    let skipped = &runs[0];
    assert_eq!(skipped.status, RunStatus::Skipped);
    let range = skipped.skipped.as_ref().expect("range");
    assert_eq!(
        (range.count, range.first_ms, range.last_ms),
        (8, created + 1000, created + 8000)
    );
    // Within the grace (1.2 s late) and due now; 11 s is beyond the horizon.
    let pending: Vec<i64> = runs[1..]
        .iter()
        .map(|r| r.scheduled_at_ms - created)
        .collect();
    assert_eq!(pending, [9000, 10_000]);
    assert!(runs[1..].iter().all(|r| r.status == RunStatus::Pending));
}

/// A claim planned from a state that changed before the claim applied is refused item by
/// item: the job was paused, or deleted and created again (another incarnation). After the
/// pause ends, runs that fell due while paused are neither claimed nor recorded.
#[test]
fn claims_planned_before_a_pause_or_a_recreate_are_refused() {
    let mut w = World::new();
    w.create("a", every(1000));
    w.now_ms += 1000 - HORIZON_MS;
    let planned = w.plan("a");
    assert_eq!(planned.len(), 1);
    let now_ms = w.now_ms;
    w.apply(Command::SetPaused {
        id: "a".into(),
        paused: true,
        now_ms,
    });
    assert_eq!(w.claim(planned.clone()), [false], "paused meanwhile");
    assert!(w.plan("a").is_empty(), "a paused job plans nothing");

    w.now_ms += 5000;
    let now_ms = w.now_ms;
    w.apply(Command::SetPaused {
        id: "a".into(),
        paused: false,
        now_ms,
    });
    let after = w.plan("a");
    assert!(after.iter().all(|i| i.due_ms > now_ms), "{after:?}");
    let n = after.len();
    assert_eq!(w.claim(after), vec![true; n]);

    // Deleted and created again between plan and claim.
    w.now_ms += 1000;
    let planned = w.plan("a");
    assert!(!planned.is_empty());
    let now_ms = w.now_ms;
    w.apply(Command::DeleteJob {
        id: "a".into(),
        now_ms,
    });
    let again = w.create("a", every(1000));
    assert_ne!(again.incarnation, planned[0].incarnation);
    assert!(w.claim(planned).iter().all(|a| !a), "another incarnation");
    assert!(w.runs("a").is_empty(), "the new job has no runs yet");
}

/// Only the leader whose entry carries the claim may claim: a claim naming another epoch (a
/// former leader's, proposed late) is refused whole and changes nothing.
#[test]
fn a_claim_of_another_epoch_is_stale_and_changes_nothing() {
    let mut w = World::new();
    w.create("a", every(1000));
    w.now_ms += 1000 - HORIZON_MS;
    let planned = w.plan("a");
    let former = Epoch {
        term: LEADER.term - 1,
        ..LEADER
    };
    let now_ms = w.now_ms;
    // The former leader's claim, in an entry of the current leader.
    let result = w.apply(Command::ClaimRuns {
        epoch: former,
        now_ms,
        items: planned.clone(),
        retention: 100,
    });
    assert_eq!(result, CommandResult::StaleEpoch);
    assert!(w.runs("a").is_empty());
    assert_eq!(w.plan("a"), planned, "still owed");
    assert_eq!(w.claim(planned), [true]);
}

/// A job record as schemas 1 and 2 wrote it (JSON) reads through the view with its guard's
/// cursor, and a claim moves the guard only: the record stays as it was written.
#[test]
fn a_json_job_record_reads_with_its_guard_and_claims_leave_it_alone() {
    let mut w = World::new();
    let json = super::state::tests::job_as_schema_2_wrote_it("old");
    Tables::put(&w.tables, Table::Jobs, b"old", json.clone()).unwrap();
    let job = w.view().get_job("old").unwrap().expect("job");
    assert_eq!(job.id, "old");
    w.now_ms = job.cursor_ms + 1;
    let s = schedule::resolve(&job.spec.schedule, job.schedule_base_ms).unwrap();
    let items = plan::plan_job(&job, &s, job.schedule_base_ms + 1000, HORIZON_MS);
    assert_eq!(items.len(), 1);
    assert_eq!(w.claim(items.clone()), [true]);
    assert_eq!(
        Tables::get(&w.tables, Table::Jobs, b"old").unwrap(),
        Some(json),
        "the record is not rewritten by a claim"
    );
    assert_eq!(
        w.view().get_job("old").unwrap().unwrap().cursor_ms,
        items[0].due_ms
    );
}

/// A run claimed ahead of time and queued for sending, then forgotten by a pause (it falls due
/// while paused): after the resume its job runs again, but the run may not go out. A run of the
/// same job claimed after the resume may; so may a retry, but not a finished run.
#[test]
fn a_run_forgotten_by_a_pause_may_not_be_attempted_after_the_resume() {
    let mut w = World::new();
    w.create("a", every(1000));
    w.now_ms += 1000 - HORIZON_MS;
    let items = w.plan("a");
    assert_eq!(w.claim(items), [true]);
    let queued = w.runs("a").pop().expect("claimed");
    let may = |w: &World, run: &Run| {
        let job = w.view().get_job("a").unwrap().expect("job");
        let stored = w.view().get_run(&run.id).unwrap();
        plan::may_attempt(&job, stored.as_ref(), run.incarnation)
    };
    assert!(may(&w, &queued));

    for paused in [true, false] {
        w.now_ms += 100;
        let now_ms = w.now_ms;
        w.apply(Command::SetPaused {
            id: "a".into(),
            paused,
            now_ms,
        });
        assert!(!may(&w, &queued), "paused: {paused}");
    }
    assert!(w.view().get_run(&queued.id).unwrap().is_none(), "forgotten");

    w.now_ms += 1000;
    let items = w.plan("a");
    assert_eq!(w.claim(items), [true]);
    let next = w.runs("a").pop().expect("claimed after the resume");
    assert!(may(&w, &next));
    w.now_ms = next.scheduled_at_ms;
    assert!(matches!(
        w.attempt(&next.id, 503),
        AttemptResult::RetryAt(_)
    ));
    assert!(may(&w, &next), "a retry goes out");
    assert_eq!(w.attempt(&next.id, 200), AttemptResult::Succeeded);
    assert!(!may(&w, &next), "a finished run does not");
}

#[test]
fn a_new_epoch_sends_again_a_run_a_previous_one_may_have_out_only_once_that_attempt_must_have_ended(
) {
    use super::overlap::Overlap;
    let mut w = World::new();
    w.create("a", every(1000));
    w.now_ms += 1000 - HORIZON_MS;
    let items = w.plan("a");
    assert_eq!(w.claim(items), [true]);
    let run = w.runs("a").pop().expect("claimed");
    let mut job = w.view().get_job("a").unwrap().expect("job");
    let due = run.scheduled_at_ms;
    let timeout = job.spec.timeout_ms as i64;
    let epoch = due + 500;
    let started = |mut r: Run| {
        r.ext.started = true;
        r
    };
    // (policy, the run as stored, epoch start) -> first send
    let cases = [
        (
            Some(Overlap::Skip),
            started(run.clone()),
            epoch,
            epoch + timeout,
        ),
        (
            Some(Overlap::BufferOne),
            started(run.clone()),
            epoch,
            epoch + timeout,
        ),
        (Some(Overlap::Skip), run.clone(), epoch, due),
        (Some(Overlap::Skip), started(run.clone()), due - 100, due),
        (Some(Overlap::Allow), started(run.clone()), epoch, due),
        (
            Some(Overlap::CancelPrevious),
            started(run.clone()),
            epoch,
            due,
        ),
        (None, started(run.clone()), epoch, due),
    ];
    for (i, (policy, r, epoch_start, want)) in cases.into_iter().enumerate() {
        job.spec.ext.overlap = policy;
        assert_eq!(plan::first_send_at(&job, &r, epoch_start), want, "case {i}");
    }
}
