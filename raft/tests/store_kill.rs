//! Kill-and-reopen test of the sled store: a writer process is SIGKILLed at random moments;
//! after each kill, everything it had acknowledged as durable must be there when reopened.

use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};

use std::sync::Arc;

use hookd_raft::machine::kv::Kv;
use hookd_raft::store::Store;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::RaftLogReader;
use rand::{Rng, SeedableRng};

#[derive(Default, Debug)]
struct Acked {
    vote: u64,
    append: u64,
    apply: u64,
}

/// Runs the writer until it has acknowledged `stop_after` lines, then kills it.
fn run_writer_and_kill(dir: &std::path::Path, stop_after: usize) -> Acked {
    let mut child = Process::new(env!("CARGO_BIN_EXE_store-writer"))
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn store-writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = Acked::default();
    for line in BufReader::new(stdout).lines().take(stop_after) {
        let line = line.expect("read writer output");
        let (what, n) = line.split_once(' ').expect("writer line is 'WHAT N'");
        let n: u64 = n.parse().expect("number");
        match what {
            "vote" => acked.vote = n,
            "append" => acked.append = n,
            "apply" => acked.apply = n,
            other => panic!("unexpected writer line {other}"),
        }
    }
    child.kill().expect("SIGKILL the writer");
    let _ = child.wait();
    acked
}

#[tokio::test(flavor = "current_thread")]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut last = Acked::default();
    for round in 0..6 {
        let acked = run_writer_and_kill(dir.path(), rng.random_range(3..120));
        let store = Store::open(dir.path(), 1, Arc::new(Kv)).expect("reopen after SIGKILL");
        let mut log = store.log_store();
        let mut sm = store.state_machine();

        let vote = log
            .read_vote()
            .await
            .expect("read vote")
            .expect("a vote was saved");
        assert!(
            vote.leader_id().term >= acked.vote.max(last.vote),
            "round {round}: vote {vote:?} older than acknowledged {acked:?}"
        );
        let state = log.get_log_state().await.expect("log state");
        let last_log = state.last_log_id.map_or(0, |l| l.index);
        assert!(
            last_log >= acked.append,
            "round {round}: log ends at {last_log}, acked {acked:?}"
        );
        let entries = log
            .try_get_log_entries(1..=last_log)
            .await
            .expect("read log");
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(
            indexes,
            (1..=last_log).collect::<Vec<_>>(),
            "round {round}: log has holes"
        );

        // Applying does not flush (the log is durable; openraft re-applies from it), so the
        // state may be behind what was applied before the kill, but never ahead of the durable
        // log, and it is exactly the state of its `last_applied`: nothing of a later entry.
        let (applied, _) = sm.applied_state().await.expect("applied state");
        let applied = applied.map_or(0, |l| l.index);
        assert!(
            applied <= last_log,
            "round {round}: applied {applied} beyond the log's end {last_log}, acked {acked:?}"
        );
        for n in 1..=applied {
            let job = store
                .view()
                .tables()
                .get(0, format!("job-{n}").as_bytes())
                .expect("read job");
            assert!(
                job.is_some(),
                "round {round}: applied job-{n} missing after reopen"
            );
        }
        let beyond = store
            .view()
            .tables()
            .get(0, format!("job-{}", applied + 1).as_bytes())
            .expect("read job");
        assert!(
            beyond.is_none(),
            "round {round}: job-{} is in the state but last_applied is {applied}",
            applied + 1
        );
        last = acked;
        drop(store);
    }
    assert!(
        last.apply > 0 && last.append > 0,
        "the writer made progress"
    );
}

/// A batch is all or nothing without sled's transactions (`Change` in `store/sm.rs`): the
/// writer applies batches of 64 keys back to back and is SIGKILLed at random moments, while
/// sled's flusher has written out whatever it had, often part of a batch. After each kill
/// every key holds the batch of `last_applied`, and the data dir holds no unfinished change.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_cut_short_by_sigkill_is_whole_after_reopen() {
    const KEYS: u64 = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut finished, mut last) = (0, 0);
    for round in 0..8 {
        let mut child = Process::new(env!("CARGO_BIN_EXE_store-writer"))
            .arg(dir.path())
            .arg("changes")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn store-writer");
        let stdout = child.stdout.take().expect("piped stdout");
        // Past sled's first background flush (every 500 ms), which writes out a batch part way.
        let until = std::time::Instant::now()
            + std::time::Duration::from_millis(rng.random_range(600..1_500));
        let mut lines = BufReader::new(stdout).lines();
        let mut printed = 0;
        while std::time::Instant::now() < until {
            match lines.next() {
                Some(Ok(_)) => printed += 1,
                _ => break,
            }
        }
        child.kill().expect("SIGKILL the writer");
        let _ = child.wait();
        assert!(printed > 0, "round {round}: the writer made no progress");

        // What the kill left, before anything finishes it.
        {
            let db = sled::open(dir.path().join("db")).expect("open sled");
            let sm_meta = db.open_tree("sm_meta").expect("sm_meta");
            finished += usize::from(sm_meta.get(b"pending_change").expect("read").is_some());
        }
        let store = Store::open(dir.path(), 1, Arc::new(Kv)).expect("reopen after SIGKILL");
        let (applied, _) = store
            .state_machine()
            .applied_state()
            .await
            .expect("applied state");
        let applied = applied.map_or(0, |l| l.index);
        assert_eq!(
            applied % KEYS,
            0,
            "round {round}: applied {applied} is inside a batch"
        );
        let batch = applied / KEYS;
        assert!(batch >= last, "round {round}: batch {batch} before {last}");
        let t = store.view().tables();
        for k in 0..KEYS {
            let value = t.get(0, format!("k{k:02}").as_bytes()).expect("read");
            let value = value.map(|v| String::from_utf8(v).expect("utf-8"));
            assert_eq!(
                value,
                (batch > 0).then(|| batch.to_string()),
                "round {round}: k{k:02} after batch {batch} was applied"
            );
        }
        last = batch;
        drop((t, store));
    }
    eprintln!("{finished} of 8 kills left a change half made");
    assert!(last > 0, "the writer made progress");
}
