//! Conformance of the sled store with openraft's storage test suite.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::{LogStore, StateMachineStore, Store};
use crate::machine::kv::{Cmd, Kv};
use crate::machine::Machine;
use crate::typ::{Cfg, StorageError, StorageIOError};

/// Opens the store of node 1 in `dir` with the test machine. A database this process just
/// dropped may hold its file lock a moment longer (a job of sled's thread pool still writing
/// it out), so a lock refused is tried again for up to 5 s.
pub(super) fn open(dir: &std::path::Path) -> Result<Store<Kv>, super::OpenError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(dir, 1, Arc::new(Kv)) {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => return opened,
        }
    }
}

struct SledBuilder;

impl StoreBuilder<Cfg<Kv>, LogStore<Kv>, StateMachineStore<Kv>, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore<Kv>, StateMachineStore<Kv>), StorageError> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let store = open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, store.log_store(), store.state_machine()))
    }
}

#[test]
fn openraft_storage_suite_passes_on_sled() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}

/// A snapshot is the state at the point its builder was taken, although applies went on while
/// it was built: keys overwritten, created and deleted after that point come out as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_the_state_when_taken_while_applies_go_on() -> Result<(), StorageError> {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftSnapshotBuilder};

    type Entry = crate::typ::Entry<Kv>;

    let entry = |index: u64, cmd: Cmd| Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    };
    let node = |i: u64, addr: &str| Kv::record_node(i, format!("{addr}{i}"));
    let job = |id: &str| Cmd::Put {
        key: format!("job/{id}"),
        value: "spec".into(),
    };
    let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
    let store = open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
    let mut sm = store.state_machine();
    let mut before: Vec<Entry> = (1..=50).map(|i| entry(i, node(i, "a"))).collect();
    before.push(entry(51, job("old")));
    sm.apply(before).await?;

    let mut builder = sm.get_snapshot_builder().await;
    // After the capture: overwrite ten keys (some twice), delete one job, create another.
    let mut after: Vec<Entry> = (1..=10).map(|i| entry(51 + i, node(i, "b"))).collect();
    after.push(entry(62, node(3, "c")));
    after.push(entry(
        63,
        Cmd::Del {
            key: "job/old".into(),
        },
    ));
    after.push(entry(64, job("new")));
    after.push(entry(65, node(99, "a")));
    let (applied, snapshot) = tokio::join!(sm.apply(after), builder.build_snapshot());
    applied?;
    let snapshot = snapshot?;
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(51));

    // The live state moved on.
    let live = store.view().tables();
    let has = |t: &crate::machine::AppliedTables, id: &str| {
        t.get(0, format!("job/{id}").as_bytes()).unwrap().is_some()
    };
    assert_eq!(Kv::node_api_addrs(&live).len(), 51);
    assert!(!has(&live, "old") && has(&live, "new"));

    // The snapshot, installed elsewhere, is the state at index 51 exactly.
    let dir2 = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
    let other = Store::open(dir2.path(), 2, Arc::new(Kv)).map_err(|e| StorageIOError::write(&e))?;
    other
        .state_machine()
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await?;
    let view = other.view().tables();
    let mut want: Vec<(u64, String)> = (1..=50).map(|i| (i, format!("a{i}"))).collect();
    want.sort_by_key(|(i, _)| i.to_string());
    assert_eq!(Kv::node_api_addrs(&view), want);
    assert!(has(&view, "old"), "deleted after the capture");
    assert!(!has(&view, "new"), "created after the capture");

    // A second build, with nothing applied since, is the live state.
    let mut again = sm.get_snapshot_builder().await;
    let second = again.build_snapshot().await?;
    assert_eq!(second.meta.last_log_id.map(|l| l.index), Some(65));
    assert_eq!(sm.open_captures(), 0, "a build closes its capture");
    // A builder dropped unused closes its capture too (else applies would record forever).
    drop(sm.get_snapshot_builder().await);
    assert_eq!(sm.open_captures(), 0);
    sm.apply([entry(66, node(7, "d"))]).await?;
    Ok(())
}

#[test]
fn data_dirs_are_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("nodes/1");
    let store = open(&data).unwrap();
    for d in [dir.path().join("nodes"), data.clone(), data.join("db")] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    drop(store);
}

#[tokio::test]
async fn a_removal_is_recorded_durably_and_read_back_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.removed(), None);
    store.mark_removed("told by the leader").await.unwrap();
    drop(store);
    let again = open(dir.path()).unwrap();
    assert_eq!(again.removed().as_deref(), Some("told by the leader"));
    assert!(!again.is_fresh());
}

/// Rewrites the meta record of the data dir `data` as a binary with one version number wrote it
/// (`schema_version` only), or with explicit store and machine format versions.
fn set_versions(data: &std::path::Path, schema_version: u32, split: Option<(u32, u32)>) {
    let db = sled::open(data.join("db")).unwrap();
    let meta = db.open_tree("meta").unwrap();
    let rec = super::MetaRecord {
        schema_version,
        store_version: split.map(|s| s.0),
        machine_format: split.map(|s| s.1),
        node_id: 1,
        removed: None,
        joined: false,
        held: None,
    };
    meta.insert(super::META_KEY, serde_json::to_vec(&rec).unwrap())
        .unwrap();
    db.flush().unwrap();
}

fn meta_of(data: &std::path::Path) -> super::MetaRecord {
    let db = sled::open(data.join("db")).unwrap();
    let bytes = db
        .open_tree("meta")
        .unwrap()
        .get(super::META_KEY)
        .unwrap()
        .unwrap();
    serde_json::from_slice::<super::MetaRecord>(&bytes).unwrap()
}

#[test]
fn an_older_schema_is_upgraded_in_place_as_far_as_the_previous_release_and_a_newer_one_refused() {
    let (store_v, machine_v) = (super::STORE_VERSION, Kv::FORMAT_VERSION);
    let previous = Kv::FORMAT_PREVIOUS_RELEASE;
    assert!(
        previous < machine_v,
        "the test machine has a format to finalize"
    );
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("n1");
    drop(open(&data).unwrap());
    let written = meta_of(&data);
    assert_eq!(
        written.versions(),
        (store_v, previous),
        "a new data dir is in the format the previous release reads until the cluster's is raised"
    );
    assert_eq!(
        written.schema_version,
        super::data_dir_version(store_v, previous)
    );

    // A data dir of a binary with one number for both: each is that number.
    set_versions(&data, super::STORE_READABLE_FROM, None);
    drop(open(&data).expect("an older schema opens"));
    assert_eq!(
        meta_of(&data).versions(),
        (store_v, previous),
        "and is recorded as upgraded, as far as the previous release would"
    );
    // One the newest format wrote (the cluster's was raised) stays as it is.
    set_versions(
        &data,
        super::data_dir_version(store_v, machine_v),
        Some((store_v, machine_v)),
    );
    drop(open(&data).expect("the newest format opens"));
    assert_eq!(meta_of(&data).versions(), (store_v, machine_v));

    let refused = |schema: u32, split: Option<(u32, u32)>, says: String| {
        set_versions(&data, schema, split);
        let e = open(&data).err().expect("a newer version is refused");
        let msg = e.to_string();
        assert!(msg.contains(&says), "{msg}");
        assert!(msg.contains("newer hookd"), "{msg}");
    };
    refused(store_v + 1, None, format!("schema version {}", store_v + 1));
    refused(
        super::data_dir_version(store_v, machine_v + 1),
        Some((store_v, machine_v + 1)),
        format!("record format version {}", machine_v + 1),
    );
}

/// The data dir's recorded format follows the cluster's: it stays the previous release's while
/// entries of that format are applied, is raised (durably, before anything later) by the entry
/// that raises the cluster's, by a snapshot of a raised state, and at open when a crash came
/// between, and is never lowered.
#[tokio::test]
async fn the_recorded_format_follows_the_clusters() -> Result<(), StorageError> {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftSnapshotBuilder};

    let entry = |index: u64, cmd: Cmd| crate::typ::Entry::<Kv> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    };
    let put = |k: &str| Cmd::Put {
        key: k.into(),
        value: "v".into(),
    };
    let (previous, newest) = (Kv::FORMAT_PREVIOUS_RELEASE, Kv::FORMAT_VERSION);
    let io = |e: std::io::Error| StorageError::from(StorageIOError::write(&e));
    let dir = TempDir::new().map_err(io)?;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let format_of = |data: &std::path::Path| meta_of(data).versions().1;

    let store = open(&a).map_err(|e| io(std::io::Error::other(e)))?;
    let mut sm = store.state_machine();
    sm.apply([entry(1, put("x")), entry(2, put("y"))]).await?;
    assert_eq!(Kv::cluster_format(&store.view().tables()), None);
    drop((sm, store));
    assert_eq!(format_of(&a), previous, "nothing raised it");

    let store = open(&a).map_err(|e| io(std::io::Error::other(e)))?;
    let mut sm = store.state_machine();
    let raise = Kv::batch(vec![put("z"), Kv::record_cluster_format(newest)]);
    assert_eq!(Kv::format_set_by(&raise), Some(newest));
    sm.apply([entry(3, raise)]).await?;
    assert_eq!(
        store.recorded_versions().1,
        newest,
        "raised with the entry that raised the cluster's"
    );
    sm.apply([entry(4, Kv::record_cluster_format(previous))])
        .await?;
    assert_eq!(Kv::cluster_format(&store.view().tables()), Some(newest));
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
    drop((sm, store));
    assert_eq!(format_of(&a), newest, "durably, and never lowered");

    // A snapshot of a raised state raises the data dir it is installed in.
    let other = Store::open(&b, 2, Arc::new(Kv)).map_err(|e| io(std::io::Error::other(e)))?;
    assert_eq!(other.recorded_versions().1, previous);
    other
        .state_machine()
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await?;
    drop(other);
    assert_eq!(format_of(&b), newest);

    // A crash after the raising entry applied but before the record followed: the open does.
    set_versions(
        &a,
        super::data_dir_version(super::STORE_VERSION, previous),
        Some((super::STORE_VERSION, previous)),
    );
    drop(open(&a).map_err(|e| io(std::io::Error::other(e)))?);
    assert_eq!(format_of(&a), newest);
    Ok(())
}

#[test]
fn the_version_older_binaries_check_grows_with_either_version() {
    let base = super::data_dir_version(super::STORE_VERSION, 3);
    assert_eq!(base, 3, "what one number said before the split");
    assert!(super::data_dir_version(super::STORE_VERSION + 1, 3) > base);
    assert!(super::data_dir_version(super::STORE_VERSION, 4) > base);
    assert_eq!(
        super::readable((3, 2), 1..=3, 1..=3),
        Ok(()),
        "both within their ranges"
    );
    assert_eq!(
        super::readable((4, 2), 1..=3, 1..=3),
        Err(("schema", 4, 1..=3))
    );
    assert_eq!(
        super::readable((3, 0), 1..=3, 1..=3),
        Err(("record format", 0, 1..=3))
    );
}

/// The read side: rows in key order or against it, within bounds, from one pinned generation.
#[tokio::test]
async fn tables_read_ranges_both_ways_within_bounds() -> Result<(), StorageError> {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use std::ops::Bound::{Excluded, Included, Unbounded};

    let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
    let store = open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
    let entries = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, k)| crate::typ::Entry::<Kv> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(Cmd::Put {
                key: (*k).into(),
                value: k.to_uppercase(),
            }),
        });
    store.state_machine().apply(entries).await?;
    let t = store.view().tables();
    let keys = |from, to, reverse| -> Vec<String> {
        t.range(0, from, to, reverse)
            .map(|r| String::from_utf8(r.unwrap().0).unwrap())
            .collect()
    };
    assert_eq!(keys(Unbounded, Unbounded, false), ["a", "b", "c", "d"]);
    assert_eq!(keys(Unbounded, Unbounded, true), ["d", "c", "b", "a"]);
    let (b, d) = (b"b".to_vec(), b"d".to_vec());
    assert_eq!(keys(Excluded(b.clone()), Unbounded, false), ["c", "d"]);
    assert_eq!(keys(Included(b), Excluded(d), true), ["c", "b"]);
    assert_eq!(t.get(0, b"c").unwrap().as_deref(), Some(&b"C"[..]));
    assert_eq!(t.len(0), 4);
    assert!(t
        .range(7, Unbounded, Unbounded, false)
        .next()
        .unwrap()
        .is_err());
    Ok(())
}

/// What the snapshot cadence weighs: the bytes of commands applied since the last capture are
/// counted with every apply, start again at a capture, and once saved survive closing and
/// reopening the data dir (a restart must not start a whole-state build at once); the snapshot's
/// size is known once one was built, and after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_bytes_since_a_snapshot_are_counted_and_survive_a_restart(
) -> Result<(), StorageError> {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftSnapshotBuilder};

    let entry = |index: u64, len: usize| crate::typ::Entry::<Kv> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Cmd::Put {
            key: format!("k{index}"),
            value: "v".repeat(len),
        }),
    };
    let bytes_of = |from: u64, to: u64, len: usize| -> u64 {
        (from..=to)
            .map(|i| match entry(i, len).payload {
                EntryPayload::Normal(c) => Kv::approx_bytes(&c) as u64,
                _ => 0,
            })
            .sum()
    };
    let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
    {
        let store = open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        let mut sm = store.state_machine();
        // A fresh data dir has counted nothing yet: the entry count alone decides.
        assert_eq!(sm.snapshot_progress(), (None, 0));
        sm.apply((1..=10).map(|i| entry(i, 100))).await?;
        let mut builder = sm.get_snapshot_builder().await;
        assert_eq!(
            sm.snapshot_progress().0,
            Some(0),
            "a capture restarts the count"
        );
        let snapshot = builder.build_snapshot().await?;
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(10));
        let (_, snapshot_bytes) = sm.snapshot_progress();
        assert!(snapshot_bytes > 1_000, "{snapshot_bytes}");
        sm.apply((11..=15).map(|i| entry(i, 1_000))).await?;
        sm.apply((16..=17).map(|i| entry(i, 10))).await?;
        let want = bytes_of(11, 15, 1_000) + bytes_of(16, 17, 10);
        assert_eq!(sm.snapshot_progress(), (Some(want), snapshot_bytes));
        sm.save_applied_bytes()
            .map_err(|e| StorageIOError::write(&e))?;
        store.flush().await.map_err(|e| StorageIOError::write(&e))?;
    }
    let store = open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
    let (bytes, snapshot_bytes) = store.state_machine().snapshot_progress();
    assert_eq!(bytes, Some(bytes_of(11, 15, 1_000) + bytes_of(16, 17, 10)));
    assert!(snapshot_bytes > 1_000, "{snapshot_bytes}");
    Ok(())
}

/// A batch applies over its own writes: a command reads what an earlier one of the same batch
/// wrote or removed (the first cluster id counts, a key put and removed is gone), and the
/// batch's changes and `last_applied` are there together after a reopen.
#[tokio::test]
async fn a_batch_reads_its_own_writes_and_commits_them_with_last_applied(
) -> Result<(), StorageError> {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    let put = |key: &str, value: &str| Cmd::Put {
        key: key.into(),
        value: value.into(),
    };
    let cmds = [
        put("a", "1"),
        Kv::record_cluster_id("first".into()),
        Kv::record_cluster_id("second".into()),
        put("b", "2"),
        Cmd::Del { key: "b".into() },
        Cmd::Del { key: "a".into() },
        put("a", "3"),
        Kv::record_cluster_format(4),
        Kv::record_cluster_format(3),
    ];
    let entries = cmds
        .iter()
        .enumerate()
        .map(|(i, cmd)| crate::typ::Entry::<Kv> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(cmd.clone()),
        })
        .collect::<Vec<_>>();
    let last = entries.last().map(|e| e.log_id);
    let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
    {
        let store = open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        store.state_machine().apply(entries).await?;
    }
    let store = open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
    let (applied, _) = store.state_machine().applied_state().await?;
    assert_eq!(applied, last);
    let t = store.view().tables();
    assert_eq!(Kv::cluster_id(&t).as_deref(), Some("first"));
    assert_eq!(Kv::cluster_format(&t), Some(4));
    assert_eq!(t.get(0, b"a").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(t.get(0, b"b").unwrap(), None);
    Ok(())
}
