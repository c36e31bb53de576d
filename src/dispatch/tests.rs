//! The dispatcher in process: a real single-node replica in a temporary data dir, the
//! supervisor and its epoch task, and a fake target in place of the HTTP client (`Deliver`),
//! which records every attempt and answers as the test says. No process, no socket.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookd_raft::{RaftTiming, ReplicaConfig};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::delivery::{AttemptRequest, Deliver};
use super::targets::{Breaker, BREAKER_FAILURES};
use super::{spawn, Clock, DispatchConfig};
use crate::core::command::{Attempt, Command, JobSpec, Run, RunStatus, ScheduleSpec};
use crate::core::plan::HttpOutcome;
use crate::core::state::tests::spec;
use crate::replicated::{Replica, ReplicaState};

/// A fake target: answers each attempt with the status its URL's path asks for (`/200`,
/// `/500`; 200 by default, no answer for `/down`); a path starting `held` (`/held`,
/// `/held-500`) first waits for a permit of `gate`.
#[derive(Clone)]
struct FakeTarget {
    /// (job id, run id, attempt number), in the order attempts reached the target.
    seen: Arc<Mutex<Vec<(String, String, u32)>>>,
    gate: Arc<Semaphore>,
}

impl Default for FakeTarget {
    fn default() -> Self {
        FakeTarget {
            seen: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

impl FakeTarget {
    fn seen(&self) -> Vec<(String, String, u32)> {
        self.seen.lock().unwrap().clone()
    }

    /// Attempts seen of jobs whose id starts with `prefix`.
    fn seen_of(&self, prefix: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(j, _, _)| j.starts_with(prefix))
            .count()
    }
}

impl Deliver for FakeTarget {
    async fn attempt(&self, req: &AttemptRequest<'_>) -> (Attempt, HttpOutcome) {
        let mut path = req
            .job
            .spec
            .url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        self.seen
            .lock()
            .unwrap()
            .push((req.job.id.clone(), req.run_id.to_owned(), req.n));
        if let Some(rest) = path.strip_prefix("held") {
            let _ = self.gate.acquire().await.map(|p| p.forget());
            path = rest.trim_start_matches('-').to_owned();
        }
        // `/down`: no answer at all, as from a target that refuses connections.
        let status = (path != "down").then(|| path.parse::<u16>().unwrap_or(200));
        let attempt = Attempt {
            n: req.n,
            started_at_ms: now_ms(),
            duration_ms: 1,
            status_code: status,
            error: status
                .is_none()
                .then(|| "connect error: refused".to_owned()),
            node_id: 1,
        };
        let outcome = HttpOutcome {
            status,
            retry_after: None,
            denied: false,
        };
        (attempt, outcome)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Member `id` of the cluster of `peers`, its data in `dir`, started.
async fn start(dir: &std::path::Path, id: u64, peers: &BTreeMap<u64, String>) -> Arc<Replica> {
    start_bounded(dir, id, peers, 10_000).await
}

/// `start`, with client writes shed while more than `write_backlog_max` writes wait.
async fn start_bounded(
    dir: &std::path::Path,
    id: u64,
    peers: &BTreeMap<u64, String>,
    write_backlog_max: usize,
) -> Arc<Replica> {
    let config = ReplicaConfig {
        node_id: id,
        data_dir: dir.to_path_buf(),
        api_addr: format!("127.0.0.1:{}", 10 + id),
        initial_members: peers.clone(),
        join: false,
        peer_secret: None,
        peer_tls: None,
        cluster_id: "dispatch-test".into(),
        cluster_id_required: false,
        timing: RaftTiming::default(),
        snapshot_logs: 10_000,
        write_backlog_max,
        group: 0,
        cluster_id_of: None,
        lead_rank: None,
        groups: 1,
    };
    Replica::start(config, Default::default())
        .await
        .expect("start")
}

/// A one-node cluster in `dir`, leading.
async fn leader(dir: &std::path::Path) -> Arc<Replica> {
    leader_bounded(dir, 10_000).await
}

/// `leader`, shedding client writes over a backlog of `write_backlog_max`.
async fn leader_bounded(dir: &std::path::Path, write_backlog_max: usize) -> Arc<Replica> {
    let peers = BTreeMap::from([(1, "127.0.0.1:2".into())]);
    let replica = start_bounded(dir, 1, &peers, write_backlog_max).await;
    eventually("leadership", || replica.status().leader_id == Some(1)).await;
    replica
}

/// Polls `f` every 20 ms until it holds, for at most 20 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config() -> DispatchConfig {
    DispatchConfig {
        horizon: Duration::from_millis(500),
        in_flight_max: 8,
        host_max: 4,
        retention: 100,
        clock: Clock::system(),
        shards: 1,
        shard: 0,
    }
}

/// A job due at once at `url`, retried every 100 ms up to `max_attempts`.
fn due_now(url: &str, max_attempts: u32) -> JobSpec {
    let mut s = spec(url);
    s.schedule = ScheduleSpec::After { after_ms: 0 };
    s.retry.max_attempts = max_attempts;
    s.retry.initial_backoff_ms = 100;
    s.retry.max_backoff_ms = 100;
    s.retry.jitter = 0.0;
    s
}

async fn create(replica: &Replica, id: &str, spec: JobSpec) {
    let cmd = Command::CreateJob {
        id: id.into(),
        spec,
        now_ms: now_ms(),
    };
    replica.propose(cmd).await.expect("create");
}

fn runs(replica: &Replica, id: &str) -> Vec<Run> {
    replica.state().job_runs(id, None, 100).expect("runs")
}

/// Whether job `id`'s newest run has `status`.
fn newest_is(replica: &Replica, id: &str, status: RunStatus) -> bool {
    runs(replica, id)
        .first()
        .is_some_and(|r| r.status == status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_run_is_claimed_sent_once_and_recorded_and_a_failing_one_retried_then_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = leader(dir.path()).await;
    let target = FakeTarget::default();
    let stop = CancellationToken::new();
    let (task, _) = spawn(replica.clone(), target.clone(), config(), stop.clone());
    create(&replica, "ok", due_now("http://t.test/200", 3)).await;
    create(&replica, "bad", due_now("http://t.test/500", 3)).await;

    eventually("the good run recorded succeeded", || {
        newest_is(&replica, "ok", RunStatus::Succeeded)
    })
    .await;
    eventually("the bad run recorded failed", || {
        newest_is(&replica, "bad", RunStatus::Failed)
    })
    .await;
    let ok = &runs(&replica, "ok")[0];
    assert_eq!(ok.attempts.len(), 1);
    assert_eq!(ok.attempts[0].status_code, Some(200));
    let bad = &runs(&replica, "bad")[0];
    let statuses: Vec<_> = bad.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(statuses, [Some(500); 3], "every attempt of its policy");
    // The target saw exactly what was recorded: one attempt of the good run, attempts 1-3 of
    // the bad one, each once.
    let seen = target.seen();
    let of = |job: &str| -> Vec<u32> {
        seen.iter()
            .filter(|(j, _, _)| j == job)
            .map(|(_, _, n)| *n)
            .collect()
    };
    assert_eq!(of("ok"), [1]);
    assert_eq!(of("bad"), [1, 2, 3]);
    assert!(seen.iter().all(|(j, r, _)| r == &runs(&replica, j)[0].id));
    stop.cancel();
    task.await.expect("supervisor");
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_target_takes_only_its_share_and_jobs_paused_or_deleted_during_an_attempt_are_not_retried(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = leader(dir.path()).await;
    let target = FakeTarget::default();
    let stop = CancellationToken::new();
    let (task, _) = spawn(replica.clone(), target.clone(), config(), stop.clone());
    // Two jobs whose attempts the target holds, then fails (each would be retried after
    // 100 ms): one is paused and one deleted while their attempts are in flight.
    for id in ["victim", "doomed"] {
        create(&replica, id, due_now("http://slow.test/held-500", 3)).await;
    }
    eventually("both attempts in flight", || {
        target.seen_of("victim") == 1 && target.seen_of("doomed") == 1
    })
    .await;
    // Five more at the same target: only `host_max` (4) attempts are in flight there at once,
    // and a job at another target is delivered meanwhile.
    for i in 0..5 {
        create(
            &replica,
            &format!("held{i}"),
            due_now("http://slow.test/held", 1),
        )
        .await;
    }
    eventually("the target's share in flight", || {
        target.seen_of("held") == 2
    })
    .await;
    create(&replica, "other", due_now("http://fast.test/200", 1)).await;
    eventually("the other target served", || {
        newest_is(&replica, "other", RunStatus::Succeeded)
    })
    .await;
    assert_eq!(target.seen_of("held"), 2, "the per-target cap of 4");

    let pause = Command::SetPaused {
        id: "victim".into(),
        paused: true,
        now_ms: now_ms(),
    };
    replica.propose(pause).await.expect("pause");
    let delete = Command::DeleteJob {
        id: "doomed".into(),
        now_ms: now_ms(),
    };
    replica.propose(delete).await.expect("delete");
    target.gate.add_permits(100);
    eventually("every other held job delivered", || {
        (0..5).all(|i| newest_is(&replica, &format!("held{i}"), RunStatus::Succeeded))
    })
    .await;
    // The paused job's failed attempt is recorded; the retry it asked for is never attempted
    // while paused, and nothing of the deleted job is attempted again or comes back.
    eventually("the victim's attempt recorded", || {
        runs(&replica, "victim")
            .first()
            .is_some_and(|r| r.attempts.len() == 1)
    })
    .await;
    let retry_due = runs(&replica, "victim")[0]
        .next_attempt_at_ms
        .unwrap_or_else(now_ms);
    eventually("well past the retry's instant", || {
        now_ms() > retry_due + 1_000
    })
    .await;
    assert_eq!(target.seen_of("victim"), 1, "attempted after its pause");
    assert_eq!(target.seen_of("doomed"), 1, "attempted after its delete");
    assert!(replica.state().get_job("doomed").expect("read").is_none());
    assert!(runs(&replica, "doomed").is_empty());
    stop.cancel();
    task.await.expect("supervisor");
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_fell_due_while_no_one_dispatched_follow_the_misfire_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = leader(dir.path()).await;
    let target = FakeTarget::default();
    // The dispatcher's clock runs 10.5 minutes ahead of the clock that stamped the create:
    // as if no leader had dispatched for that long.
    let ahead_ms = 630_000;
    let config = DispatchConfig {
        clock: Clock::from_fn(move || now_ms() + ahead_ms),
        ..config()
    };
    // Every minute from one minute after its creation; runs more than a minute late are
    // skipped: nine are (1 to 9 minutes), the tenth (30 s late) is delivered.
    let mut every = spec("http://t.test/200");
    every.schedule = ScheduleSpec::Every {
        every_ms: 60_000,
        start_at_ms: None,
    };
    every.misfire.policy = crate::core::command::MisfirePolicy::Skip;
    every.misfire.grace_ms = 60_000;
    create(&replica, "every", every).await;
    let stop = CancellationToken::new();
    let (task, _) = spawn(replica.clone(), target.clone(), config, stop.clone());
    eventually("the on-time run delivered", || {
        runs(&replica, "every")
            .iter()
            .any(|r| r.status == RunStatus::Succeeded)
    })
    .await;
    let all = runs(&replica, "every");
    let skipped: u64 = all
        .iter()
        .filter(|r| r.status == RunStatus::Skipped)
        .map(|r| r.skipped.as_ref().map_or(1, |s| s.count))
        .sum();
    assert_eq!(skipped, 9, "{all:?}");
    assert_eq!(target.seen().len(), 1, "only the on-time run is sent");
    stop.cancel();
    task.await.expect("supervisor");
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stops_answering_opens_its_circuit_and_others_are_not_held_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = leader(dir.path()).await;
    let target = FakeTarget::default();
    let stop = CancellationToken::new();
    let (task, handle) = spawn(replica.clone(), target.clone(), config(), stop.clone());
    // More jobs due at once at a dead target than its breaker tolerates failures in a row.
    let n = BREAKER_FAILURES as usize + 5;
    for i in 0..n {
        create(
            &replica,
            &format!("dead{i}"),
            due_now("http://dead.test/down", 1),
        )
        .await;
    }
    let dead = || async {
        let (page, _) = handle.targets(None, 10).await.expect("targets");
        page.into_iter().find(|t| t.target == "dead.test:80")
    };
    // Poll the dispatcher's own view until the circuit is open and the attempts that were in
    // flight when it opened have ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(t) = dead().await {
            if matches!(t.breaker, Breaker::Open { .. }) && t.in_flight == 0 {
                break t;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no open circuit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let tolerated = target.seen_of("dead");
    let host_max = config().host_max;
    assert!(
        (BREAKER_FAILURES as usize..BREAKER_FAILURES as usize + host_max).contains(&tolerated),
        "{tolerated} attempts: its tolerance, plus those in flight when it opened"
    );
    assert!(status.waiting > 0, "its other runs wait");
    // While it is open, another target is served at once, and the dead one gets no attempt
    // until its first pause (1 s) ends.
    create(&replica, "alive", due_now("http://alive.test/200", 1)).await;
    eventually("the live target served", || {
        newest_is(&replica, "alive", RunStatus::Succeeded)
    })
    .await;
    if dead().await.is_some_and(
        |t| matches!(t.breaker, Breaker::Open { until_ms, .. } if until_ms > now_ms() + 50),
    ) {
        assert_eq!(
            target.seen_of("dead"),
            tolerated,
            "an attempt started while open"
        );
    }
    // Then a probe, alone: it fails, and the circuit opens again for longer.
    eventually("a probe", || target.seen_of("dead") > tolerated).await;
    assert_eq!(target.seen_of("dead"), tolerated + 1, "one probe at a time");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let breaker = dead().await.expect("listed").breaker;
        if let Breaker::Open { pause_ms, .. } = breaker {
            assert!(pause_ms >= 2_000, "the pause grows: {breaker:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{breaker:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.expect("supervisor");
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cap_is_shared_between_targets_that_have_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = leader(dir.path()).await;
    let target = FakeTarget::default();
    let stop = CancellationToken::new();
    // Four attempts at once on the node, four per target: one target could take them all.
    let config = DispatchConfig {
        in_flight_max: 4,
        ..config()
    };
    let (task, _) = spawn(replica.clone(), target.clone(), config, stop.clone());
    // Ten held jobs at each of two targets, all due at one instant a moment from now (so every
    // run is claimed and queued before the first may start), the first target's created first.
    let at_ms = now_ms() + 1_500;
    for t in ["a", "b"] {
        for i in 0..10 {
            let mut s = due_now(&format!("http://{t}.test/held"), 1);
            s.schedule = ScheduleSpec::At { at_ms };
            create(&replica, &format!("{t}{i}"), s).await;
        }
    }
    eventually("the node's four slots in use", || target.seen().len() == 4).await;
    assert_eq!(
        (target.seen_of("a"), target.seen_of("b")),
        (2, 2),
        "{:?}",
        target.seen()
    );
    // As slots free up, both targets keep their share.
    target.gate.add_permits(4);
    eventually("the next four in use", || target.seen().len() == 8).await;
    assert_eq!(
        (target.seen_of("a"), target.seen_of("b")),
        (4, 4),
        "{:?}",
        target.seen()
    );
    target.gate.add_permits(100);
    stop.cancel();
    task.await.expect("supervisor");
    replica.shutdown().await;
}

/// Member `id` of a cluster whose peer ports are `peers`, its own served on `listener` until
/// `stop`.
async fn member(
    dir: &std::path::Path,
    id: u64,
    peers: &BTreeMap<u64, String>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> Arc<Replica> {
    let replica = start(&dir.join(format!("n{id}")), id, peers).await;
    let app = hookd_raft::peer_server::peer_router(replica.clone(), axum::Router::new());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    replica
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_sends_nothing_once_its_lease_ran_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in [1, 2] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        peers.insert(id, l.local_addr().expect("addr").to_string());
        listeners.push(l);
    }
    let stops = [CancellationToken::new(), CancellationToken::new()];
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(member(dir.path(), i as u64 + 1, &peers, l, stops[i].clone()).await);
    }
    eventually("an agreed leader", || {
        let l = nodes[0].status().leader_id;
        l.is_some() && l == nodes[1].status().leader_id
    })
    .await;
    let leader = if nodes[0].status().leader_id == Some(1) {
        0
    } else {
        1
    };
    let follower = 1 - leader;
    // Runs are claimed 10 s ahead, so the leader holds claimed runs it could still send.
    let target = FakeTarget::default();
    let config = DispatchConfig {
        horizon: Duration::from_secs(10),
        ..config()
    };
    let stop = CancellationToken::new();
    let (task, _) = spawn(nodes[leader].clone(), target.clone(), config, stop.clone());
    for i in 0..5 {
        let mut s = spec("http://t.test/200");
        s.schedule = ScheduleSpec::Every {
            every_ms: 1_000,
            start_at_ms: None,
        };
        create(&nodes[leader], &format!("tick{i}"), s).await;
    }
    eventually("deliveries flowing", || target.seen().len() >= 5).await;
    // Cut the follower off: the leader keeps believing it leads (openraft does not step down),
    // but no quorum acknowledges it any more.
    stops[follower].cancel();
    nodes[follower].shutdown().await;
    let cut = now_ms();
    let claimed_ahead = nodes[leader]
        .state()
        .runs_with_status(RunStatus::Pending, usize::MAX)
        .expect("runs")
        .iter()
        .filter(|r| r.scheduled_at_ms > cut + 1_000)
        .count();
    assert!(claimed_ahead > 0, "no claimed run left to withhold");
    // Its lease (a fraction of the shortest election timeout) is long gone 1 s later.
    eventually("the lease gone", || now_ms() > cut + 1_000).await;
    let sent = target.seen().len();
    eventually("claimed runs falling due", || now_ms() > cut + 4_000).await;
    assert_eq!(
        target.seen().len(),
        sent,
        "attempts without a quorum's lease"
    );
    stop.cancel();
    task.await.expect("supervisor");
    stops[leader].cancel();
    nodes[leader].shutdown().await;
}

/// Creates job `id`, again while the leader sheds it (as a client retries a `429`).
async fn create_until_accepted(replica: &Replica, id: &str, spec: JobSpec) {
    loop {
        let cmd = Command::CreateJob {
            id: id.into(),
            spec: spec.clone(),
            now_ms: now_ms(),
        };
        match replica.propose(cmd).await {
            Ok(_) => return,
            Err(hookd_raft::ReplicaError::Overloaded(_)) => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("{id}: {e}"),
        }
    }
}

/// Creates flooding a leader whose write backlog bound is 0: what each of its loops got.
#[derive(Default)]
struct Flood {
    accepted: Vec<String>,
    refused: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_leader_sheds_creates_but_keeps_claiming_recording_pausing_and_deleting() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Any write waiting makes the leader shed client writes that add work.
    let replica = leader_bounded(dir.path(), 0).await;
    let target = FakeTarget::default();
    let stop = CancellationToken::new();
    let (task, _) = spawn(replica.clone(), target.clone(), config(), stop.clone());
    let later = |url: &str| {
        let mut s = spec(url);
        s.schedule = ScheduleSpec::After {
            after_ms: 3_600_000,
        };
        s
    };
    for id in ["pause-me", "delete-me"] {
        create_until_accepted(&replica, id, later("http://t.test/200")).await;
    }

    // Eight loops propose creates back to back until told to stop.
    let flooding = CancellationToken::new();
    let refused_so_far = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut loops = Vec::new();
    for l in 0..8 {
        let (replica, flooding, refused_so_far) =
            (replica.clone(), flooding.clone(), refused_so_far.clone());
        let spec = later("http://t.test/200");
        loops.push(tokio::spawn(async move {
            let mut flood = Flood::default();
            for n in 0.. {
                if flooding.is_cancelled() {
                    break;
                }
                let id = format!("flood-{l}-{n}");
                let cmd = Command::CreateJob {
                    id: id.clone(),
                    spec: spec.clone(),
                    now_ms: now_ms(),
                };
                match replica.propose(cmd).await {
                    Ok(_) => flood.accepted.push(id),
                    Err(hookd_raft::ReplicaError::Overloaded(_)) => {
                        flood.refused.push(id);
                        refused_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => panic!("{id}: {e}"),
                }
            }
            flood
        }));
    }
    let refused = || refused_so_far.load(std::sync::atomic::Ordering::Relaxed);
    eventually("the leader shedding creates", || refused() > 0).await;

    // Runs falling due during the flood: claimed, sent and recorded while creates are shed.
    // The dispatcher's own writes are never shed, so nothing waits for the flood to end.
    let due: Vec<String> = (0..6).map(|k| format!("due-{k}")).collect();
    let mut s = due_now("http://t.test/200", 1);
    s.schedule = ScheduleSpec::After { after_ms: 300 };
    // Client creates are shed too: these are retried until accepted, as a client would.
    for id in &due {
        create_until_accepted(&replica, id, s.clone()).await;
    }
    let shed_before = refused();
    // Deletes and pauses shed load: they always pass.
    let pause = Command::SetPaused {
        id: "pause-me".into(),
        paused: true,
        now_ms: now_ms(),
    };
    replica
        .propose(pause)
        .await
        .expect("a pause during overload");
    let delete = Command::DeleteJob {
        id: "delete-me".into(),
        now_ms: now_ms(),
    };
    replica
        .propose(delete)
        .await
        .expect("a delete during overload");
    eventually("every due run delivered and recorded", || {
        due.iter()
            .all(|id| newest_is(&replica, id, RunStatus::Succeeded))
    })
    .await;
    let shed_after = refused();
    flooding.cancel();
    let mut flood = Flood::default();
    for l in loops {
        let f = l.await.expect("flood loop");
        flood.accepted.extend(f.accepted);
        flood.refused.extend(f.refused);
    }
    assert!(
        shed_after > shed_before,
        "the leader was still shedding creates when the last due run was recorded \
         ({shed_before} refused before, {shed_after} after)"
    );
    for id in &due {
        assert_eq!(target.seen_of(id), 1, "{id}: sent once");
    }
    // A shed create left nothing behind; an accepted one stays; nothing was paused or deleted
    // but what was asked.
    let state = replica.state();
    for id in &flood.refused {
        assert!(
            state.get_job(id).expect("read").is_none(),
            "{id} was refused"
        );
    }
    for id in &flood.accepted {
        let job = state.get_job(id).expect("read");
        assert!(job.is_some_and(|j| !j.spec.paused), "{id} was accepted");
    }
    assert!(state
        .get_job("pause-me")
        .expect("read")
        .is_some_and(|j| j.spec.paused));
    assert!(state.get_job("delete-me").expect("read").is_none());
    stop.cancel();
    task.await.expect("supervisor");
    replica.shutdown().await;
}

/// A run whose attempt ended is not sent again while its outcome waits to be recorded (up to
/// `RECORD_GATHER`): a resume in that window queues the job's open runs, and the state still
/// shows this one open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_while_an_outcome_waits_to_be_recorded_does_not_send_the_run_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = leader(dir.path()).await;
    let target = FakeTarget::default();
    let stop = CancellationToken::new();
    let (task, _) = spawn(replica.clone(), target.clone(), config(), stop.clone());
    create(&replica, "once", due_now("http://t.test/200", 1)).await;
    eventually("the run was sent", || target.seen_of("once") == 1).await;
    for paused in [true, false] {
        let cmd = Command::SetPaused {
            id: "once".into(),
            paused,
            now_ms: now_ms(),
        };
        replica.propose(cmd).await.expect("pause or resume");
        // Let the dispatcher see the pause before the resume (its feed coalesces changes).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("the run recorded succeeded", || {
        newest_is(&replica, "once", RunStatus::Succeeded)
    })
    .await;
    // Anything queued by the resume would have gone by now: attempts start at once.
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(300);
    while tokio::time::Instant::now() < quiet_until {
        assert_eq!(target.seen_of("once"), 1, "sent again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runs(&replica, "once")[0].attempts.len(), 1);
    stop.cancel();
    task.await.expect("supervisor");
    replica.shutdown().await;
}
