//! `apply` over an in-memory map: each command's effect, and properties over generated ones.

use std::collections::BTreeMap;

use super::*;
use crate::core::command::{
    BulkAction, JobSpec, MisfirePolicy, MisfireSpec, RetrySpec, ScheduleSpec,
};
pub(crate) use crate::core::mem::MemTables;

/// A record as schemas 1 and 2 wrote it.
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

#[test]
fn tables_are_named_in_the_order_of_their_discriminants() {
    for (i, t) in Table::ALL.iter().enumerate() {
        assert_eq!(*t as usize, i);
        assert_eq!(t.name(), Table::NAMES[i]);
    }
    assert_eq!(Table::ALL.len(), Table::NAMES.len());
}

/// The record of a job `id` as schemas 1 and 2 wrote it (JSON).
pub(crate) fn job_as_schema_2_wrote_it(id: &str) -> Vec<u8> {
    let t = MemTables::default();
    apply(
        &t,
        1,
        Command::CreateJob {
            id: id.into(),
            spec: spec("http://x/"),
            now_ms: 1,
        },
    );
    json(&get_job(&t, id).unwrap().unwrap())
}

pub(crate) fn spec(url: &str) -> JobSpec {
    JobSpec {
        url: url.into(),
        method: "POST".into(),
        headers: BTreeMap::new(),
        body: None,
        schedule: ScheduleSpec::After { after_ms: 1000 },
        retry: RetrySpec {
            max_attempts: 5,
            initial_backoff_ms: 1000,
            max_backoff_ms: 3_600_000,
            multiplier: 2.0,
            jitter: 0.2,
        },
        timeout_ms: 10_000,
        misfire: MisfireSpec {
            policy: MisfirePolicy::FireOnce,
            grace_ms: 60_000,
            catchup_window_ms: 86_400_000,
        },
        paused: false,
        secret_headers: Vec::new(),
        ext: Default::default(),
    }
}

pub(crate) fn at(index: u64) -> Position {
    Position {
        index,
        epoch: Epoch {
            term: 1,
            node_id: 1,
        },
        shard: 0,
    }
}

fn apply(t: &MemTables, index: u64, cmd: Command) -> CommandResult {
    apply_command(t, &at(index), &cmd, &mut Touched::default())
        .expect("in-memory apply cannot fail")
}

#[test]
fn create_is_idempotent_for_equal_specs_and_conflicts_otherwise() {
    let t = MemTables::default();
    let create = |url: &str, now| Command::CreateJob {
        id: "a".into(),
        spec: spec(url),
        now_ms: now,
    };
    let CommandResult::Job {
        job, created: true, ..
    } = apply(&t, 1, create("http://x/", 10))
    else {
        panic!("first create must create");
    };
    assert_eq!(
        (job.incarnation, job.version, job.created_at_ms),
        (1 << 16, 1, 10)
    );
    match apply(&t, 2, create("http://x/", 20)) {
        CommandResult::Job {
            job: again,
            created: false,
            changed: false,
        } => assert_eq!(again, job, "a safe retry returns the stored job unchanged"),
        other => panic!("unexpected {other:?}"),
    }
    match apply(&t, 3, create("http://y/", 30)) {
        CommandResult::Conflict { existing } => assert_eq!(existing, job),
        other => panic!("unexpected {other:?}"),
    }
}

/// A create or replace proposed again because its first proposal's fate was unknown
/// (`Command::repeatable`) answers as the first apply did: created, once the job is what that
/// very command made. Touched since, or made by another command, it is an ordinary retry.
#[test]
fn a_repeated_create_or_put_answers_as_its_first_apply_did() {
    let job_cmd = |put: bool, url: &str, now_ms| {
        let (id, spec) = ("a".to_owned(), spec(url));
        if put {
            Command::PutJob { id, spec, now_ms }
        } else {
            Command::CreateJob { id, spec, now_ms }
        }
    };
    let created = |r: CommandResult| match r {
        CommandResult::Job { created, .. } => created,
        other => panic!("unexpected {other:?}"),
    };
    for first_put in [false, true] {
        for again_put in [false, true] {
            let t = MemTables::default();
            let first = job_cmd(first_put, "http://x/", 10);
            assert!(first.repeatable() && job_cmd(again_put, "u", 1).repeatable());
            assert!(created(apply(&t, 1, first.clone())));
            assert!(
                created(apply(&t, 2, first.clone())),
                "the same command again"
            );
            let later = job_cmd(again_put, "http://x/", 11);
            assert!(!created(apply(&t, 3, later)), "another command: a retry");
            // Touched since: no longer what the first apply made.
            let pause = |paused| Command::SetPaused {
                id: "a".into(),
                paused,
                now_ms: 12,
            };
            apply(&t, 4, pause(true));
            apply(&t, 5, pause(false));
            assert!(!created(apply(&t, 6, first)));
        }
    }
    let delete = Command::DeleteJob {
        id: "a".into(),
        now_ms: 1,
    };
    assert!(!delete.repeatable(), "a second delete answers 404");
}

#[test]
fn secret_headers_sent_masked_keep_the_stored_value_and_never_show_in_debug() {
    let t = MemTables::default();
    let mut secret = spec("http://x/");
    secret
        .headers
        .insert("authorization".into(), "Bearer s3cr3t".into());
    secret.headers.insert("x-plain".into(), "visible".into());
    secret.secret_headers = vec!["authorization".into()];
    let mut masked = secret.clone();
    masked.headers.insert("authorization".into(), MASK.into());
    let put = |spec: &JobSpec, now_ms| Command::PutJob {
        id: "a".into(),
        spec: spec.clone(),
        now_ms,
    };
    // Masked before anything is stored: nothing to keep.
    let r = apply(&t, 1, put(&masked, 1));
    assert!(
        matches!(&r, CommandResult::Rejected { field, .. } if field == "headers.authorization"),
        "{r:?}"
    );
    assert!(matches!(
        apply(&t, 2, put(&secret, 2)),
        CommandResult::Job { created: true, .. }
    ));
    // The masked round trip is no change at all, and keeps the value.
    let CommandResult::Job { job, changed, .. } = apply(&t, 3, put(&masked, 3)) else {
        panic!("put")
    };
    assert!(!changed);
    assert_eq!(job.spec.headers["authorization"], "Bearer s3cr3t");
    // A create retried with the masked value is the same definition.
    let create = Command::CreateJob {
        id: "a".into(),
        spec: masked.clone(),
        now_ms: 4,
    };
    assert!(matches!(
        apply(&t, 4, create),
        CommandResult::Job { created: false, .. }
    ));
    // A new value replaces it; Debug never shows either.
    let mut rotated = secret.clone();
    rotated
        .headers
        .insert("authorization".into(), "Bearer n3w".into());
    let CommandResult::Job { job, changed, .. } = apply(&t, 5, put(&rotated, 5)) else {
        panic!("put")
    };
    assert!(changed);
    assert_eq!(job.spec.headers["authorization"], "Bearer n3w");
    let debug = format!("{job:?}");
    assert!(
        !debug.contains("n3w") && debug.contains("visible"),
        "{debug}"
    );
}

#[test]
fn put_replaces_and_bumps_version_delete_then_create_gets_new_incarnation() {
    let t = MemTables::default();
    let put = |url: &str, now| Command::PutJob {
        id: "a".into(),
        spec: spec(url),
        now_ms: now,
    };
    assert!(matches!(
        apply(&t, 1, put("http://x/", 10)),
        CommandResult::Job { created: true, .. }
    ));
    let CommandResult::Job {
        job,
        created: false,
        changed: true,
    } = apply(&t, 2, put("http://y/", 5))
    else {
        panic!("replace expected");
    };
    assert_eq!(job.version, 2);
    assert_eq!(job.updated_at_ms, 10, "updated_at never goes backwards");
    assert_eq!(job.spec.url, "http://y/");
    let del = Command::DeleteJob {
        id: "a".into(),
        now_ms: 30,
    };
    assert!(matches!(
        apply(&t, 3, del.clone()),
        CommandResult::Deleted { .. }
    ));
    assert_eq!(apply(&t, 4, del), CommandResult::NotFound);
    let CommandResult::Job {
        job, created: true, ..
    } = apply(&t, 5, put("http://y/", 40))
    else {
        panic!("create expected");
    };
    assert_eq!((job.incarnation, job.version), (5 << 16, 1));
}

/// A bulk part applies its action to each id as the single command would, and counts what
/// changed: unknown ids and jobs already in the asked state are not counted; the runs a bulk
/// trigger opens get distinct ids.
#[test]
fn a_bulk_part_acts_on_each_id_and_counts_the_changes() {
    let t = MemTables::default();
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let create = Command::CreateJob {
            id: id.into(),
            spec: spec("http://x/"),
            now_ms: 1,
        };
        apply(&t, 1 + i as u64, create);
    }
    let bulk = |action, ids: &[&str]| Command::Bulk {
        action,
        ids: ids.iter().map(|s| s.to_string()).collect(),
        now_ms: 5,
    };
    let changed = |r: CommandResult| match r {
        CommandResult::Bulk { changed } => changed,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        changed(apply(&t, 10, bulk(BulkAction::Pause, &["a", "b", "zz"]))),
        2
    );
    assert_eq!(
        changed(apply(&t, 11, bulk(BulkAction::Pause, &["a", "b"]))),
        0
    );
    let paused = |id: &str| get_job(&t, id).unwrap().unwrap().spec.paused;
    assert!(paused("a") && paused("b") && !paused("c"));
    assert_eq!(
        changed(apply(&t, 12, bulk(BulkAction::Resume, &["b", "c"]))),
        1
    );
    assert!(paused("a") && !paused("b"));

    let mut touched = Touched::default();
    let trigger = bulk(BulkAction::Trigger { retention: 10 }, &["a", "b", "c"]);
    let result = apply_command(&t, &at(13), &trigger, &mut touched).unwrap();
    assert_eq!(changed(result), 3);
    assert_eq!(touched.runs.len(), 3);
    let distinct: std::collections::BTreeSet<_> = touched.runs.iter().collect();
    assert_eq!(distinct.len(), 3, "{:?}", touched.runs);

    // Retry opens failed runs only: these are pending.
    let runs: Vec<&str> = touched.runs.iter().map(String::as_str).collect();
    assert_eq!(changed(apply(&t, 14, bulk(BulkAction::Retry, &runs))), 0);

    assert_eq!(
        changed(apply(&t, 15, bulk(BulkAction::Delete, &["a", "c", "d"]))),
        2
    );
    assert!(get_job(&t, "a").unwrap().is_none() && get_job(&t, "b").unwrap().is_some());
}

/// A conditional command applies only over a version it names (any with none named), and
/// reports the version found otherwise; without the job it fails and creates nothing.
#[test]
fn a_conditional_command_applies_only_over_a_version_it_names() {
    let t = MemTables::default();
    let pause = |paused| {
        Box::new(Command::SetPaused {
            id: "a".into(),
            paused,
            now_ms: 2,
        })
    };
    let guarded = |versions: &[u64], command| Command::IfVersion {
        id: "a".into(),
        versions: versions.to_vec(),
        command,
    };
    let put = Box::new(Command::PutJob {
        id: "a".into(),
        spec: spec("http://x/"),
        now_ms: 1,
    });
    assert_eq!(
        apply(&t, 1, guarded(&[], put.clone())),
        CommandResult::PreconditionFailed { current: None }
    );
    assert!(
        get_job(&t, "a").unwrap().is_none(),
        "If-Match creates nothing"
    );
    apply(&t, 2, *put);
    assert_eq!(
        apply(&t, 3, guarded(&[2, 3], pause(true))),
        CommandResult::PreconditionFailed { current: Some(1) }
    );
    assert!(matches!(
        apply(&t, 4, guarded(&[1, 7], pause(true))),
        CommandResult::Job { changed: true, ref job, .. } if job.version == 2
    ));
    assert!(matches!(
        apply(&t, 5, guarded(&[], pause(false))),
        CommandResult::Job { changed: true, ref job, .. } if job.version == 3
    ));
}

/// A command under an idempotency key acts once: a repeat of the same request gets what the
/// first got (the same run), another request with the key is refused, and after 24 hours the
/// key is free again.
#[test]
fn a_keyed_command_acts_once_and_recalls_what_it_got() {
    use crate::core::idempotency::Recall;
    let t = MemTables::default();
    create_a(&t, spec("http://x/"));
    let keyed = |fingerprint: u8, now_ms| Command::Idempotent {
        key: "k".into(),
        fingerprint: [fingerprint; 32],
        now_ms,
        command: Box::new(Command::TriggerJob {
            id: "a".into(),
            now_ms,
            retention: 10,
        }),
    };
    let CommandResult::Run { run } = apply(&t, 2, keyed(1, 1000)) else {
        panic!("the first trigger makes a run");
    };
    assert_eq!(
        apply(&t, 3, keyed(1, 2000)),
        CommandResult::Recalled {
            recall: Recall::Run { id: run.id.clone() }
        }
    );
    assert_eq!(apply(&t, 4, keyed(2, 2000)), CommandResult::KeyReused);
    let runs = || decode_run_list(&t.get(Table::JobRuns, b"a").unwrap().unwrap()).unwrap();
    assert_eq!(runs().len(), 1, "repeats make no run");
    let day = crate::limits::IDEMPOTENCY_TTL_MS;
    assert!(matches!(
        apply(&t, 5, keyed(2, 1000 + day)),
        CommandResult::Run { .. }
    ));
    assert_eq!(runs().len(), 2);
}

/// The overlap policy in `apply`: a run asking to start while another of its job is open is
/// skipped (`skip`), held back and released when the open one ends (`buffer_one`, further ones
/// skipped), or ends the open one (`cancel_previous`); a run already started may go again.
#[test]
fn a_run_falling_due_while_another_is_open_follows_the_overlap_policy() {
    use crate::core::command::{Attempt, SkipReason};
    use crate::core::overlap::Overlap;
    let start = |t: &MemTables, index, run: &str| match apply(
        t,
        index,
        Command::StartRun { run_id: run.into() },
    ) {
        CommandResult::Start { go } => go,
        other => panic!("{other:?}"),
    };
    let run = |t: &MemTables, id: &str| get_run(t, id).unwrap().unwrap();
    let fail = |t: &MemTables, index, run: &str, result| {
        let outcome = AttemptOutcome {
            run_id: run.into(),
            attempt: Attempt {
                n: 1,
                started_at_ms: 5_000,
                duration_ms: 10,
                status_code: Some(503),
                error: None,
                node_id: 1,
            },
            result,
        };
        apply(
            t,
            index,
            Command::RecordAttempts {
                outcomes: vec![outcome],
            },
        );
    };
    for policy in [Overlap::Skip, Overlap::BufferOne, Overlap::CancelPrevious] {
        let t = MemTables::default();
        let mut s = spec("http://x/");
        s.ext.overlap = Some(policy);
        create_a(&t, s);
        for (i, due) in [1000, 2000, 3000].into_iter().enumerate() {
            claim(&t, 2 + i as u64, due);
        }
        let [r1, r2, r3] = [1000, 2000, 3000].map(|d| Run::scheduled_id(1 << 16, d));
        // (After the three instants: a pause forgets runs due after it.)
        let pause = |paused| Command::SetPaused {
            id: "a".into(),
            paused,
            now_ms: 3_500,
        };
        apply(&t, 8, pause(true));
        assert!(
            !start(&t, 9, &r1),
            "{policy:?}: a paused job starts nothing"
        );
        assert!(
            run(&t, &r1).status.is_open(),
            "it stays open for the resume"
        );
        apply(&t, 9, pause(false));
        assert!(start(&t, 10, &r1), "{policy:?}: nothing open");
        fail(&t, 11, &r1, AttemptResult::RetryAt(9_000));
        assert!(start(&t, 12, &r1), "{policy:?}: started already");
        match policy {
            Overlap::Skip => {
                assert!(!start(&t, 13, &r2));
                assert_eq!(run(&t, &r2).status, RunStatus::Skipped);
                assert_eq!(run(&t, &r2).ext.skip_reason, Some(SkipReason::Overlap));
            }
            Overlap::BufferOne => {
                assert!(!start(&t, 13, &r2));
                assert!(run(&t, &r2).ext.waiting);
                assert!(!start(&t, 14, &r3));
                assert_eq!(
                    run(&t, &r3).status,
                    RunStatus::Skipped,
                    "one waits, no more"
                );
                let mut touched = Touched::default();
                let ended = AttemptOutcome {
                    run_id: r1.clone(),
                    attempt: Attempt {
                        n: 2,
                        started_at_ms: 9_000,
                        duration_ms: 40,
                        status_code: Some(503),
                        error: None,
                        node_id: 1,
                    },
                    result: AttemptResult::Failed,
                };
                let cmd = Command::RecordAttempts {
                    outcomes: vec![ended],
                };
                apply_command(&t, &at(15), &cmd, &mut touched).unwrap();
                let released = run(&t, &r2);
                assert!(!released.ext.waiting && released.ext.started);
                assert_eq!(released.next_attempt_at_ms, Some(9_040));
                assert_eq!(touched.runs, std::slice::from_ref(&r2));
            }
            _ => {
                assert!(start(&t, 13, &r2));
                let ended = run(&t, &r1);
                assert_eq!(ended.status, RunStatus::Failed);
                assert_eq!(ended.ext.ended_by.as_deref(), Some("superseded"));
            }
        }
    }
}

#[test]
fn pause_changes_once_and_unknown_ids_are_not_found() {
    let t = MemTables::default();
    apply(
        &t,
        1,
        Command::CreateJob {
            id: "a".into(),
            spec: spec("http://x/"),
            now_ms: 1,
        },
    );
    let pause = || Command::SetPaused {
        id: "a".into(),
        paused: true,
        now_ms: 2,
    };
    assert!(matches!(
        apply(&t, 2, pause()),
        CommandResult::Job { changed: true, .. }
    ));
    match apply(&t, 3, pause()) {
        CommandResult::Job {
            job,
            changed: false,
            ..
        } => {
            assert!(job.spec.paused);
            assert_eq!(job.version, 2);
        }
        other => panic!("unexpected {other:?}"),
    }
    let unknown = Command::SetPaused {
        id: "b".into(),
        paused: true,
        now_ms: 2,
    };
    assert_eq!(apply(&t, 4, unknown), CommandResult::NotFound);
}

fn claim(t: &MemTables, index: u64, due_ms: i64) -> CommandResult {
    let incarnation = match t.get(Table::Jobs, b"a").ok().flatten() {
        Some(bytes) => decode_job(&bytes).expect("job").incarnation,
        None => 0,
    };
    apply(
        t,
        index,
        Command::ClaimRuns {
            epoch: Epoch {
                term: 1,
                node_id: 1,
            },
            now_ms: due_ms - 100,
            items: vec![ClaimItem {
                job_id: "a".into(),
                incarnation,
                due_ms,
                kind: ClaimKind::Deliver,
            }],
            retention: 100,
        },
    )
}

/// Creates job `a` at instant 0 (log index 1).
fn create_a(t: &MemTables, spec: JobSpec) {
    apply(
        t,
        1,
        Command::CreateJob {
            id: "a".into(),
            spec,
            now_ms: 0,
        },
    );
}

/// The job's cursor as `get_job` sees it.
fn cursor(t: &MemTables) -> i64 {
    get_job(t, "a").ok().flatten().expect("job").cursor_ms
}

#[test]
fn a_claim_moves_the_guard_and_never_rewrites_the_job_record() {
    let t = MemTables::default();
    let mut big = spec("http://x/");
    big.body = Some("x".repeat(256 << 10));
    create_a(&t, big);
    let record = t.get(Table::Jobs, b"a").unwrap();
    let ok = CommandResult::Claimed {
        accepted: vec![true],
    };
    assert_eq!(claim(&t, 2, 1000), ok);
    assert_eq!(
        t.get(Table::Jobs, b"a").unwrap(),
        record,
        "record untouched"
    );
    assert_eq!(cursor(&t), 1000);
    let guard = Guard::decode(&t.get(Table::Guards, b"a").unwrap().unwrap()).unwrap();
    assert_eq!(guard.cursor_ms, 1000);
    // The guard decides: a due at or before the cursor is refused, the next accepted.
    let no = CommandResult::Claimed {
        accepted: vec![false],
    };
    assert_eq!(claim(&t, 3, 1000), no);
    assert_eq!(claim(&t, 4, 2000), ok);
    // Changing the job rewrites both, keeping the cursor; deleting removes both.
    let mut changed = spec("http://y/");
    changed.body = None;
    apply(
        &t,
        5,
        Command::PutJob {
            id: "a".into(),
            spec: changed,
            now_ms: 1500,
        },
    );
    assert_eq!(cursor(&t), 2000);
    apply(
        &t,
        6,
        Command::DeleteJob {
            id: "a".into(),
            now_ms: 1600,
        },
    );
    assert!(t.get(Table::Guards, b"a").unwrap().is_none());
    assert!(t.get(Table::Jobs, b"a").unwrap().is_none());
}

/// Format 4 writes job records compactly with their `JobExt`; format 3's compact records and
/// the JSON records of formats 1 and 2 still read, and a record in a format this code does not
/// know is refused, not misread.
#[test]
fn job_records_are_compact_older_ones_read_and_newer_ones_are_refused() {
    let t = MemTables::default();
    let mut labelled = spec("http://x/");
    labelled.ext.labels.insert("team".into(), "ops".into());
    create_a(&t, labelled);
    let stored = t.get(Table::Jobs, b"a").unwrap().unwrap();
    assert_eq!(stored[0], 0x02);
    let job = decode_job(&stored).unwrap();
    assert_eq!(job.spec.ext.labels["team"], "ops");
    assert!(stored.len() < json(&job).len() / 2, "{}", stored.len());
    assert_eq!(decode_job(&json(&job)).unwrap(), job);
    // Format 3: the same record without `ext`, behind `COMPACT`.
    let mut old = job.clone();
    old.spec.ext = Default::default();
    let format_3 = Job3Layout::of(&old);
    assert_eq!(decode_job(&format_3).unwrap(), old);
    let mut newer = stored.clone();
    newer[0] = 0x03;
    let e = decode_job(&newer).unwrap_err();
    assert!(matches!(e, StateFault::NewerFormat { byte: 3, .. }), "{e}");
    assert!(matches!(
        decode_job(&stored[..stored.len() / 2]),
        Err(StateFault::DecodeCompact { .. })
    ));
}

#[test]
fn a_job_written_by_schema_1_is_claimed_from_its_record() {
    let t = MemTables::default();
    create_a(&t, spec("http://x/"));
    // Schema 1 kept the cursor in the job record and had no guard.
    let mut job = get_job(&t, "a").unwrap().unwrap();
    job.cursor_ms = 5000;
    t.put(Table::Jobs, b"a", json(&job)).unwrap();
    t.del(Table::Guards, b"a").unwrap();
    assert_eq!(cursor(&t), 5000);
    let no = CommandResult::Claimed {
        accepted: vec![false],
    };
    assert_eq!(claim(&t, 2, 4000), no, "the record's cursor holds");
    let ok = CommandResult::Claimed {
        accepted: vec![true],
    };
    assert_eq!(claim(&t, 3, 6000), ok);
    assert_eq!(cursor(&t), 6000, "the claim wrote a guard");
    // A paused schema-1 job is not claimed.
    apply(
        &t,
        4,
        Command::SetPaused {
            id: "a".into(),
            paused: true,
            now_ms: 6500,
        },
    );
    assert_eq!(claim(&t, 5, 7000), no);
}

#[test]
fn runs_are_stored_compact_and_schema_1_json_runs_still_read() {
    let run = Run {
        id: Run::scheduled_id(1 << 16, 1_796_000_000_000),
        job_id: "a-job-with-a-usual-name".into(),
        incarnation: 1 << 16,
        scheduled_at_ms: 1_796_000_000_000,
        status: RunStatus::Retrying,
        attempts: vec![crate::core::command::Attempt {
            n: 1,
            started_at_ms: 1_796_000_000_002,
            duration_ms: 12,
            status_code: Some(503),
            error: Some("status 503".into()),
            node_id: 2,
        }],
        next_attempt_at_ms: Some(1_796_000_001_000),
        manual: false,
        skipped: None,
        claimed_at_ms: 1_795_999_999_000,
        ext: Default::default(),
    };
    // Format 3's layout: this one without `ext` (an empty `ext` is its last byte, a 0 length).
    let mut small = compact(&run);
    assert_eq!(small.pop(), Some(0));
    let old = json(&run);
    assert_eq!(decode_run(&small).unwrap(), run, "format 3");
    assert_eq!(decode_run(&old).unwrap(), run, "schema 1 wrote JSON");
    assert!(
        small.len() * 2 < old.len(),
        "compact {} vs JSON {} bytes",
        small.len(),
        old.len()
    );
    let list: RunList = vec![(5, "r5".into()), (6, "r6".into())];
    assert_eq!(decode_run_list(&compact(&list)).unwrap(), list);
    assert_eq!(decode_run_list(&json(&list)).unwrap(), list);
    let mut broken = small.clone();
    broken.truncate(small.len() / 2);
    assert!(matches!(
        decode_run(&broken),
        Err(StateFault::DecodeCompact { table: "runs", .. })
    ));
    // What apply writes is compact.
    let t = MemTables::default();
    create_a(&t, spec("http://x/"));
    claim(&t, 2, 1000);
    let stored = t
        .get(Table::Runs, Run::scheduled_id(1 << 16, 1000).as_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(stored[0], 0x02, "format 4");
    assert_eq!(decode_run(&stored).unwrap().ext, Default::default());
    assert_eq!(t.get(Table::JobRuns, b"a").unwrap().unwrap()[0], COMPACT);
    // A run's ext round-trips.
    let mut with_ext = decode_run(&stored).unwrap();
    with_ext.ext.skip_reason = Some(crate::core::command::SkipReason::Overlap);
    with_ext.ext.due_ms = Some(1234);
    put_run(&t, &with_ext, None).unwrap();
    assert_eq!(get_run(&t, &with_ext.id).unwrap().unwrap(), with_ext);
}

#[test]
fn guards_round_trip_and_reject_other_lengths() {
    for g in [
        Guard {
            incarnation: 0,
            paused: false,
            cursor_ms: i64::MIN,
        },
        Guard {
            incarnation: u64::MAX,
            paused: true,
            cursor_ms: -1,
        },
    ] {
        assert_eq!(Guard::decode(&g.encode()), Some(g));
    }
    assert_eq!(Guard::decode(&[0; 16]), None);
    assert_eq!(Guard::decode(&[0; 18]), None);
}

/// Regression (chaos smoke): a run claimed ahead of time that fell due after an
/// acknowledged pause was delivered after the resume.
/// A replace that changes the schedule drops the old schedule's runs claimed ahead of their
/// instant and moves the cursor back to the replace, so the new schedule's first run is its
/// first fire after it; one that keeps the schedule keeps both (docs/api.md#safe-edits).
#[test]
fn a_new_schedule_drops_runs_claimed_ahead_and_counts_from_the_replace() {
    let t = MemTables::default();
    let mut every = spec("http://x/");
    every.schedule = ScheduleSpec::Every {
        every_ms: 1000,
        start_at_ms: Some(1000),
    };
    create_a(&t, every.clone());
    for (index, due) in [(2, 1000), (3, 2000), (4, 30_000)] {
        assert_eq!(
            claim(&t, index, due),
            CommandResult::Claimed {
                accepted: vec![true]
            }
        );
    }
    let put = |index, spec: &JobSpec| {
        let cmd = Command::PutJob {
            id: "a".into(),
            spec: spec.clone(),
            now_ms: 1500,
        };
        apply(&t, index, cmd)
    };
    let dues = || -> Vec<i64> {
        let bytes = t.get(Table::JobRuns, b"a").ok().flatten().expect("list");
        decode_run_list(&bytes)
            .expect("list")
            .iter()
            .map(|(d, _)| *d)
            .collect()
    };
    let mut same_schedule = every.clone();
    same_schedule.body = Some("new".into());
    put(5, &same_schedule);
    assert_eq!((dues(), cursor(&t)), (vec![1000, 2000, 30_000], 30_000));

    let mut other = same_schedule;
    other.schedule = ScheduleSpec::Every {
        every_ms: 3000,
        start_at_ms: None,
    };
    put(6, &other);
    assert_eq!(dues(), [1000], "the run due before the replace stays open");
    assert_eq!(cursor(&t), 1499);
    let job = get_job(&t, "a").unwrap().unwrap();
    assert_eq!(job.schedule_base_ms, 1500);
    assert_eq!(crate::core::plan::job_next_due(&job), Some(4500));
}

#[test]
fn pausing_drops_runs_claimed_ahead_that_fall_due_after_the_pause() {
    let t = MemTables::default();
    create_a(&t, spec("http://x/"));
    assert_eq!(
        claim(&t, 2, 1000),
        CommandResult::Claimed {
            accepted: vec![true]
        }
    );
    assert_eq!(
        claim(&t, 3, 2000),
        CommandResult::Claimed {
            accepted: vec![true]
        }
    );
    apply(
        &t,
        4,
        Command::SetPaused {
            id: "a".into(),
            paused: true,
            now_ms: 1500,
        },
    );
    let list =
        decode_run_list(&t.get(Table::JobRuns, b"a").ok().flatten().expect("list")).expect("list");
    assert_eq!(
        list.len(),
        1,
        "only the run due before the pause remains: {list:?}"
    );
    assert_eq!(list[0].0, 1000);
    assert!(t
        .get(Table::Runs, Run::scheduled_id(1 << 16, 2000).as_bytes())
        .ok()
        .flatten()
        .is_none());
    assert!(t
        .get(
            Table::ByStatus,
            &status_key(RunStatus::Pending, 2000, &Run::scheduled_id(1 << 16, 2000))
        )
        .ok()
        .flatten()
        .is_none());
    // A claim from another epoch than the entry's own is refused.
    let stale = apply(
        &t,
        5,
        Command::ClaimRuns {
            epoch: Epoch {
                term: 9,
                node_id: 2,
            },
            now_ms: 0,
            items: vec![],
            retention: 100,
        },
    );
    assert_eq!(stale, CommandResult::StaleEpoch);
}

#[test]
fn numbers_made_from_the_log_position_are_unique_across_shards_and_shard_0s_are_as_before() {
    // The same entry index in three shards' logs: three incarnations, so three run ids for
    // runs due at one instant (webhook-ids a receiver deduplicates by).
    let incarnation = |shard: u32| {
        let t = MemTables::default();
        let at = Position { shard, ..at(7) };
        let created = apply_command(
            &t,
            &at,
            &Command::create_job("j".into(), spec("http://a.test/"), 0),
            &mut Touched::default(),
        )
        .expect("in memory");
        match created {
            CommandResult::Job { job, .. } => job.incarnation,
            other => panic!("{other:?}"),
        }
    };
    let (a, b, c) = (incarnation(0), incarnation(1), incarnation(2));
    assert_eq!(a, 7 << 16, "shard 0 as a lone group");
    assert!(a != b && b != c && a != c, "{a} {b} {c}");
    assert_ne!(Run::scheduled_id(b, 1_000), Run::scheduled_id(c, 1_000));
}

#[test]
fn cluster_id_is_set_once() {
    let t = MemTables::default();
    apply(
        &t,
        1,
        Command::SetClusterId {
            cluster_id: "one".into(),
        },
    );
    apply(
        &t,
        2,
        Command::SetClusterId {
            cluster_id: "two".into(),
        },
    );
    assert_eq!(
        t.get(Table::Misc, CLUSTER_ID_KEY).ok().flatten(),
        Some(b"one".to_vec())
    );
}

#[test]
fn the_cluster_format_is_raised_never_lowered_and_validated_before_it_is_proposed() {
    let t = MemTables::default();
    let view = || crate::core::view::View::new(&t).cluster_format();
    assert_eq!(
        view(),
        None,
        "a cluster made before the record: the previous release's"
    );
    let set = |format| Command::SetFormat { format };
    apply(&t, 1, set(FORMAT_NEWEST));
    assert_eq!(view(), Some(FORMAT_NEWEST));
    apply(&t, 2, set(FORMAT_PREVIOUS_RELEASE));
    assert_eq!(view(), Some(FORMAT_NEWEST), "never lowered");
    for (format, ok) in [
        (FORMAT_PREVIOUS_RELEASE, true),
        (FORMAT_NEWEST, true),
        (FORMAT_PREVIOUS_RELEASE - 1, false),
        (FORMAT_NEWEST + 1, false),
        (u32::MAX, false),
    ] {
        let checked = crate::core::validate::command(&set(format), 0);
        assert_eq!(checked.is_ok(), ok, "{format}");
    }
}

/// Bytes for `arbitrary` that favour the values arithmetic breaks on: whole 8-byte words of
/// zeros, ones, `i64::MIN` and `i64::MAX` (little-endian), small numbers, or random bytes.
pub(crate) fn edgy_bytes(rng: &mut impl rand::Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        let word: [u8; 8] = match rng.random_range(0..8) {
            0 => [0; 8],
            1 => [0xFF; 8],
            2 => i64::MIN.to_le_bytes(),
            3 => i64::MAX.to_le_bytes(),
            4 => rng.random_range(0u64..4).to_le_bytes(),
            _ => rng.random(),
        };
        // Shifted by a random amount, since `arbitrary` reads fields of every size.
        out.extend_from_slice(&word[rng.random_range(0..4)..]);
    }
    out
}

/// Points a generated command at a few shared ids, so commands meet each other's jobs and
/// runs, and lets some claims carry the epoch of their entry.
fn aim(cmd: &mut Command, pick: u8, runs: &[String], at: &Position) {
    let job = ["a", "b"][(pick & 1) as usize].to_owned();
    let run = || runs.get(pick as usize % runs.len().max(1)).cloned();
    match cmd {
        Command::CreateJob { id, .. }
        | Command::PutJob { id, .. }
        | Command::CreateJob3 { id, .. }
        | Command::PutJob3 { id, .. }
        | Command::DeleteJob { id, .. }
        | Command::SetPaused { id, .. }
        | Command::TriggerJob { id, .. } => *id = job,
        Command::ClaimRuns { epoch, items, .. } => {
            if pick & 2 == 0 {
                *epoch = at.epoch;
            }
            for item in items {
                item.job_id = job.clone();
            }
        }
        Command::RecordAttempts { outcomes } => {
            for o in outcomes {
                o.run_id = run().unwrap_or_default();
            }
        }
        Command::RetryRun { run_id, .. } => *run_id = run().unwrap_or_default(),
        Command::Batch { commands } => {
            for c in commands {
                aim(c, pick, runs, at);
            }
        }
        Command::Bulk { action, ids, .. } => {
            *ids = match action {
                BulkAction::Retry => run().into_iter().collect(),
                _ => vec!["a".into(), "b".into()],
            };
        }
        Command::IfVersion { id, command, .. } => {
            *id = job;
            aim(command, pick, runs, at);
        }
        Command::Idempotent { key, command, .. } => {
            *key = ["k1", "k2"][(pick >> 1 & 1) as usize].into();
            aim(command, pick, runs, at);
        }
        Command::Remember { key, .. } => *key = ["k1", "k2"][(pick >> 1 & 1) as usize].into(),
        Command::StartRun { run_id } => *run_id = run().unwrap_or_default(),
        Command::SetTargetPolicy { .. }
        | Command::SetNotification { .. }
        | Command::Announce { .. }
        | Command::SetNodeInfo { .. }
        | Command::SetClusterId { .. }
        | Command::SetFormat { .. } => {}
    }
}

/// What every stored job and run goes through after `apply` (planner, retry policy,
/// metrics, API rendering) at edge-case clocks: none of it may panic on a replicated value.
fn downstream_never_panics(tables: &MemTables, rng: &mut impl rand::Rng) {
    use crate::core::plan::{self, HttpOutcome};
    let rows: Vec<(u8, Vec<u8>)> = tables
        .0
        .borrow()
        .iter()
        .map(|((table, _), v)| (*table, v.clone()))
        .collect();
    let nows = [i64::MIN, -1, 0, i64::MAX, rng.random()];
    for (table, value) in rows {
        if table == Table::Jobs as u8 {
            let job = decode_job(&value).expect("a stored job decodes");
            for now in nows {
                if let Some(s) = crate::schedule::resolve(&job.spec.schedule, job.schedule_base_ms)
                {
                    plan::next_due(&job, &s);
                    plan::plan_job(&job, &s, now, rng.random());
                }
                for status in [None, Some(200), Some(503)] {
                    let http = HttpOutcome {
                        status,
                        retry_after: Some(std::time::Duration::from_millis(rng.random())),
                        denied: false,
                    };
                    plan::after_attempt(rng.random(), &job.spec.retry, &http, now, rng.random());
                }
            }
            serde_json::to_string(&crate::api::model::JobView::new(job)).expect("renders");
        } else if table == Table::Runs as u8 {
            let run = decode_run(&value).expect("a stored run decodes");
            for a in &run.attempts {
                crate::metrics::attempt(a, run.scheduled_at_ms, a.n);
            }
            for now in nows {
                let view = crate::api::runs::RunView::new(run.clone(), now);
                serde_json::to_string(&view).expect("renders");
            }
        }
    }
}

/// SPEC §7: `apply` never panics on any command value, and equal inputs give equal results
/// and writes (every node must reach the same state).
#[test]
fn apply_never_panics_and_is_deterministic_on_arbitrary_commands() {
    use arbitrary::{Arbitrary, Unstructured};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x600d_5eed);
    let mut applied = 0;
    for round in 0..1500 {
        let (a, b) = (MemTables::default(), MemTables::default());
        for step in 0..8u64 {
            let bytes = edgy_bytes(&mut rng, 256);
            let mut u = Unstructured::new(&bytes);
            let Ok(mut cmd) = Command::arbitrary(&mut u) else {
                continue;
            };
            let index = match step {
                0 => u64::MAX,
                1 => 0,
                _ => rng.random_range(0..1 << 40),
            };
            let at = Position {
                index,
                epoch: Epoch {
                    term: rng.random_range(0..3),
                    node_id: 1,
                },
                shard: rng.random_range(0..3),
            };
            let runs: Vec<String> =
                a.0.borrow()
                    .keys()
                    .filter(|(t, _)| *t == Table::Runs as u8)
                    .map(|(_, k)| String::from_utf8_lossy(k).into_owned())
                    .collect();
            aim(&mut cmd, rng.random(), &runs, &at);
            let (mut ta, mut tb) = (Touched::default(), Touched::default());
            let ra = apply_command(&a, &at, &cmd, &mut ta);
            let rb = apply_command(&b, &at, &cmd, &mut tb);
            assert_eq!(
                format!("{ra:?}"),
                format!("{rb:?}"),
                "round {round}: {cmd:?}"
            );
            assert_eq!((ta.jobs, ta.runs), (tb.jobs, tb.runs));
            downstream_never_panics(&a, &mut rng);
            applied += 1;
        }
        assert_eq!(*a.0.borrow(), *b.0.borrow(), "round {round}: tables differ");
    }
    assert!(applied > 5000, "only {applied} commands were generated");
}

/// A job record laid out as format 3 wrote it (`COMPACT`, postcard of the fields without `ext`).
struct Job3Layout;

impl Job3Layout {
    fn of(job: &Job) -> Vec<u8> {
        let s = &job.spec;
        let spec = crate::core::command::JobSpec3 {
            url: s.url.clone(),
            method: s.method.clone(),
            headers: s.headers.clone(),
            body: s.body.clone(),
            schedule: s.schedule.clone(),
            retry: s.retry.clone(),
            timeout_ms: s.timeout_ms,
            misfire: s.misfire.clone(),
            paused: s.paused,
            secret_headers: s.secret_headers.clone(),
        };
        let fields = (
            &job.id,
            spec,
            job.incarnation,
            job.created_at_ms,
            job.updated_at_ms,
            job.version,
            job.schedule_base_ms,
            job.cursor_ms,
        );
        let mut out = vec![COMPACT];
        out.extend(postcard::to_allocvec(&fields).unwrap());
        out
    }
}

/// Events (`core::events`): a run's final outcome writes, in its own apply, one delivery per
/// destination (the job's callback for it, the notifications whose types and selector match),
/// an outcome that leaves the run open writes none, a delivery's own outcome removes it and
/// writes no event, and each cluster change is told once however often it is announced.
#[test]
fn a_final_outcome_writes_one_event_per_destination_and_a_delivery_causes_none() {
    use crate::core::command::{Attempt, Endpoint};
    use crate::core::events::{Announcement, EventType, NotificationSpec};
    let to = |url: &str| Endpoint {
        url: url.into(),
        ..Default::default()
    };
    let t = MemTables::default();
    let mut s = spec("http://x/");
    s.ext.labels.insert("team".into(), "pay".into());
    s.ext.on_failure = Some(to("http://callback/"));
    create_a(&t, s);
    let notify = |index, id: &str, events: Vec<EventType>, selector: Option<&str>| {
        let cmd = Command::SetNotification {
            id: id.into(),
            spec: Some(NotificationSpec {
                to: to(&format!("http://{id}/")),
                events,
                selector: selector.map(str::to_owned),
            }),
            now_ms: 1,
        };
        assert!(matches!(
            apply(&t, index, cmd),
            CommandResult::Notification { created: true, .. }
        ));
    };
    notify(2, "n1", vec![EventType::RunFailed], Some("team=pay"));
    notify(3, "n2", vec![EventType::RunFailed], Some("team=other"));
    notify(4, "n3", vec![EventType::RunSucceeded], None);
    notify(
        5,
        "n4",
        vec![EventType::LeaderChanged, EventType::NodeUnreachable],
        Some("x"),
    );
    claim(&t, 6, 1000);
    let run_id = Run::scheduled_id(1 << 16, 1000);
    let record = |index, id: &str, n, result| {
        let outcome = AttemptOutcome {
            run_id: id.into(),
            attempt: Attempt {
                n,
                started_at_ms: 1000,
                duration_ms: 5,
                status_code: Some(503),
                error: None,
                node_id: 1,
            },
            result,
        };
        let mut touched = Touched::default();
        let cmd = Command::RecordAttempts {
            outcomes: vec![outcome],
        };
        apply_command(&t, &at(index), &cmd, &mut touched).unwrap();
        touched.runs
    };
    assert!(record(7, &run_id, 1, AttemptResult::RetryAt(2000)).is_empty());
    let written = record(8, &run_id, 2, AttemptResult::Failed);
    let event_id = format!("evt_{run_id}_2");
    assert_eq!(
        written,
        [format!("{event_id}.0"), format!("{event_id}.1")],
        "the callback, then n1 (n2's selector and n3's type do not match)"
    );
    let delivery = |key: &str| -> Option<crate::core::events::Delivery> {
        get_record(&t, Table::Events, key).unwrap()
    };
    let first = delivery(&written[0]).expect("written with the outcome");
    assert_eq!(first.to.url, "http://callback/");
    assert_eq!(delivery(&written[1]).unwrap().to.url, "http://n1/");
    let body: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(body["id"], event_id.as_str());
    assert_eq!(body["type"], "run.failed");
    assert_eq!(body["job"]["labels"]["team"], "pay");
    assert_eq!(body["run"]["id"], run_id.as_str());
    assert_eq!(body["run"]["status"], "failed");
    assert_eq!(body["run"]["attempts"].as_array().unwrap().len(), 2);
    // A delivery's outcomes: a retry keeps it, an end removes it; neither is an event.
    assert!(record(9, &written[0], 1, AttemptResult::RetryAt(3000)).is_empty());
    assert_eq!(delivery(&written[0]).unwrap().attempts, 1);
    assert!(record(10, &written[0], 2, AttemptResult::Succeeded).is_empty());
    assert!(record(11, &written[1], 1, AttemptResult::Failed).is_empty());
    assert!(delivery(&written[0]).is_none() && delivery(&written[1]).is_none());
    assert!(
        record(12, &written[0], 2, AttemptResult::Failed).is_empty(),
        "a repeated report of a finished delivery changes nothing"
    );
    // Cluster events: only n4 takes them; each change once (selector ignored).
    let announce = |index, a: Announcement| {
        let mut touched = Touched::default();
        let cmd = Command::Announce {
            announcement: a,
            at_ms: 5000,
        };
        apply_command(&t, &at(index), &cmd, &mut touched).unwrap();
        touched.runs.len()
    };
    let leader = |term| Announcement::LeaderChanged { term, node_id: 1 };
    assert_eq!(announce(13, leader(2)), 1);
    assert_eq!(announce(14, leader(2)), 0, "the same leader again");
    assert_eq!(announce(15, leader(1)), 0, "an older term");
    let lost = Announcement::NodeUnreachable { node_id: 2 };
    assert_eq!(announce(16, lost.clone()), 1);
    assert_eq!(announce(17, lost), 0);
    let back = Announcement::NodeRecovered { node_id: 2 };
    assert_eq!(
        announce(18, back.clone()),
        0,
        "n4 does not take node.recovered"
    );
    assert_eq!(announce(19, back), 0);
    assert_eq!(
        announce(
            20,
            Announcement::CircuitClosed {
                target: "x:80".into()
            }
        ),
        0
    );
    // Deleting a notification: the next event no longer goes there.
    let delete = Command::SetNotification {
        id: "n1".into(),
        spec: None,
        now_ms: 2,
    };
    assert!(matches!(
        apply(&t, 21, delete.clone()),
        CommandResult::Notification { .. }
    ));
    assert_eq!(apply(&t, 22, delete), CommandResult::NotFound);
}

/// `GET /v1/stats` counts what `apply` reports: client writes (one per command, in a batch too,
/// the dispatcher's not), runs recorded skipped (a misfire range as its count, an overlap skip
/// as one).
#[test]
fn apply_counts_client_writes_and_runs_recorded_skipped() {
    use crate::core::overlap::Overlap;
    let t = MemTables::default();
    let count = |index, cmd: Command| {
        let mut touched = Touched::default();
        apply_command(&t, &at(index), &cmd, &mut touched).expect("applied");
        (touched.writes, touched.skipped)
    };
    let mut s = spec("http://x/");
    s.ext.overlap = Some(Overlap::Skip);
    let create = Command::CreateJob {
        id: "a".into(),
        spec: s,
        now_ms: 0,
    };
    assert_eq!(count(1, create), (1, 0));
    let incarnation = get_job(&t, "a").ok().flatten().expect("job").incarnation;
    let item = |due_ms, kind| ClaimItem {
        job_id: "a".into(),
        incarnation,
        due_ms,
        kind,
    };
    let claim = Command::ClaimRuns {
        epoch: Epoch {
            term: 1,
            node_id: 1,
        },
        now_ms: 5_000,
        items: vec![
            item(
                1_000,
                ClaimKind::Skip {
                    count: 12,
                    first_ms: 1,
                },
            ),
            item(2_000, ClaimKind::Deliver),
            item(3_000, ClaimKind::Deliver),
        ],
        retention: 100,
    };
    assert_eq!(count(2, claim), (0, 12));
    let [r2, r3] = [2_000, 3_000].map(|d| Run::scheduled_id(incarnation, d));
    assert_eq!(count(3, Command::StartRun { run_id: r2 }), (0, 0));
    assert_eq!(
        count(4, Command::StartRun { run_id: r3 }),
        (0, 1),
        "skipped: r2 is open"
    );
    let batch = Command::Batch {
        commands: vec![
            Command::SetPaused {
                id: "a".into(),
                paused: true,
                now_ms: 6_000,
            },
            Command::RecordAttempts {
                outcomes: Vec::new(),
            },
            Command::TriggerJob {
                id: "a".into(),
                now_ms: 6_000,
                retention: 100,
            },
        ],
    };
    assert_eq!(count(5, batch), (2, 0));
}
