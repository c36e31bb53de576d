//! The state machine on sled (`RaftStateMachine`), its snapshots, and `StateView`, the read side
//! the API uses.
//!
//! The tables of the state machine live in trees of one *generation* (`sm_g{N}_{table}`).
//! `apply` writes a whole batch of entries as one `Change` together with `last_applied` and
//! leaves the flush to the next append, purge or snapshot (see `apply`). Installing a snapshot
//! writes generation N+1 from scratch, flushes it, switches `active_gen` in one `Change`, and
//! only then drops generation N; a crash at any point leaves either the old or the new state,
//! never a mix, and leftovers are dropped at the next open.
//!
//! Snapshots are built off the apply path. `get_snapshot_builder` (serialized with apply) only
//! opens a *capture*; from then on `apply` records the value every key had before its first
//! change (its pre-image). The builder then reads the live trees in a blocking thread while
//! applies go on, and finally overlays the pre-images, which yields exactly the state at the
//! capture point (every key changed since then is put back as it was, every key not changed was
//! read as it was). Applies are never stalled by the copy.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::disk::sync_dir;
use super::snapfile::{self, FileWriter, Frame, Header, Reader, SnapFileError, Writer};
use super::{Disk, Meta};
use crate::machine::{
    AppliedTables, LogPosition, Machine, Order, PreImageSets, PreImages, Shown, TableWriter, Tx,
};
use crate::typ::{
    Cfg, Entry, LogId, Snapshot, SnapshotFile, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};

const LAST_APPLIED: &[u8] = b"last_applied";
const LAST_MEMBERSHIP: &[u8] = b"last_membership";
const ACTIVE_GEN: &[u8] = b"active_gen";
/// In `sm_meta`: the name of the current snapshot's file in the snapshot dir.
const SNAP_FILE: &[u8] = b"snapshot_file";
/// In `sm_meta`: bytes of commands applied since the last snapshot's capture (8 bytes BE), saved
/// now and then (`save_applied_bytes`), durable with the next flush; a hint for `cadence.rs` that
/// survives restarts (a lower count after a crash only delays the next snapshot a little).
const APPLIED_BYTES: &[u8] = b"applied_bytes";
const GEN_PREFIX: &str = "sm_g";
/// In `sm_meta`, only while a change is being made: the whole change (`Change`).
const PENDING: &[u8] = b"pending_change";

/// Where schemas 1 and 2 kept the current snapshot (a sled tree with its meta and its whole
/// body); moved into a file at open.
const LEGACY_SNAP_TREE: &str = "snapshot";
const LEGACY_SNAP_META: &[u8] = b"meta";
const LEGACY_SNAP_DATA: &[u8] = b"data";

/// Snapshot format 1 (schemas 1 and 2): every table at once, postcard. Format 2 is the streamed
/// file of `snapfile.rs`. Both install: a format-1 body is what a node of the previous version
/// sends during a rolling upgrade.
#[derive(Serialize, Deserialize)]
struct LegacyBody {
    format: u32,
    tables: Vec<(String, Vec<KeyValue>)>,
}

type KeyValue = (Vec<u8>, Vec<u8>);

/// The frames of a format-1 body (read whole: it is only ever what an older node had in memory
/// anyway).
fn legacy_frames<M: Machine>(data: &[u8]) -> Result<Vec<Frame>, SnapFileError> {
    let body: LegacyBody = postcard::from_bytes(data)
        .map_err(|e| SnapFileError::Corrupt(format!("format-1 body: {e}")))?;
    if body.format != 1 {
        return Err(SnapFileError::Corrupt(format!(
            "unknown snapshot format {}",
            body.format
        )));
    }
    let mut frames = Vec::new();
    for (name, pairs) in body.tables {
        if M::DROPPED_TABLES.contains(&name.as_str()) {
            continue;
        }
        let table = M::TABLES
            .iter()
            .position(|t| *t == name)
            .ok_or_else(|| SnapFileError::Corrupt(format!("unknown table {name}")))?;
        frames.extend(pairs.into_iter().map(|(key, value)| Frame::Put {
            table: table as u8,
            key,
            value,
        }));
    }
    Ok(frames)
}

/// A fresh name for a snapshot file: never the name of the current one.
fn snapshot_file_name(applied: Option<LogId>) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}.snap", applied.map_or(0, |l| l.index))
}

/// The trees of one generation, indexed like `Machine::TABLES`.
pub(super) struct Generation {
    number: u64,
    tables: Arc<Vec<sled::Tree>>,
    /// The state machine's, shared by all its generations.
    order: Order,
}

impl Generation {
    fn open<M: Machine>(
        db: &sled::Db,
        number: u64,
        order: Order,
    ) -> Result<Generation, sled::Error> {
        let tables = M::TABLES
            .iter()
            .map(|t| db.open_tree(gen_tree_name(number, t)))
            .collect::<Result<_, _>>()?;
        Ok(Generation {
            number,
            tables: Arc::new(tables),
            order,
        })
    }

    /// The tables, for reading.
    fn applied(&self) -> AppliedTables {
        AppliedTables {
            trees: self.tables.clone(),
            gen: self.number,
            order: self.order.clone(),
        }
    }

    fn drop_trees<M: Machine>(&self, db: &sled::Db) -> Result<(), sled::Error> {
        for t in M::TABLES {
            db.drop_tree(gen_tree_name(self.number, t).as_bytes())?;
        }
        Ok(())
    }
}

/// `Machine::complete` over the tables of `gen`, which nobody reads yet.
fn complete<M: Machine>(disk: &Disk, gen: &Generation) -> std::io::Result<()> {
    let flushing = disk.clone();
    let writer = TableWriter {
        tables: gen.applied(),
        flush: Box::new(move || flushing.flush_blocking()),
    };
    M::complete(&writer).map_err(std::io::Error::other)
}

/// A change to several trees of a data dir, made so that after a crash, once `open` has
/// finished what it found half made, all of it is there or none (`Inner::make_change`).
///
/// Not a sled transaction: in sled 0.34 the first transaction (or `Tree::apply_batch`) of a
/// process makes every later sled operation of the process, on any tree of any database, take
/// one process-wide lock, which each commit takes exclusively; a node's shards and its readers
/// then queue on each other (docs/decisions.md, "Apply without sled's transactions").
#[derive(Serialize, Deserialize)]
struct Change<K, V> {
    /// The generation whose tables `tables` changes.
    gen: u64,
    /// Per table, in `Machine::TABLES` order: keys and their new values (`None`: removed).
    tables: Vec<Vec<(K, Option<V>)>>,
    /// Keys of `sm_meta` and their new values.
    meta: Vec<(K, V)>,
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> Change<K, V> {
    /// Writes every key of the change, one by one, in order.
    fn write_keys(&self, tables: &[sled::Tree], sm_meta: &sled::Tree) -> Result<(), sled::Error> {
        for (tree, rows) in tables.iter().zip(&self.tables) {
            for (key, value) in rows {
                match value {
                    Some(value) => tree.insert(key.as_ref(), value.as_ref())?,
                    None => tree.remove(key.as_ref())?,
                };
            }
        }
        for (key, value) in &self.meta {
            sm_meta.insert(key.as_ref(), value.as_ref())?;
        }
        Ok(())
    }
}

/// Finishes the change a crash left half made in `sm_meta`'s database, if any: writes all of
/// its keys again (each write sets a key to what the change set it to, so writing one twice
/// is harmless), then removes its record, flushed. Blocking. Returns whether there was one.
fn finish_change<M: Machine>(disk: &Disk, sm_meta: &sled::Tree) -> std::io::Result<bool> {
    let Some(bytes) = sm_meta.get(PENDING)? else {
        return Ok(false);
    };
    let change: Change<Vec<u8>, Vec<u8>> = postcard::from_bytes(&bytes)
        .map_err(|e| std::io::Error::other(format!("the unfinished change is unreadable: {e}")))?;
    if change.tables.len() > M::TABLES.len() {
        return Err(std::io::Error::other(format!(
            "the unfinished change writes {} tables; this machine has {}",
            change.tables.len(),
            M::TABLES.len()
        )));
    }
    let gen = if change.tables.iter().any(|rows| !rows.is_empty()) {
        Some(Generation::open::<M>(
            disk.db(),
            change.gen,
            Order::default(),
        )?)
    } else {
        None
    };
    let tables = gen.as_ref().map_or(&[][..], |g| g.tables.as_slice());
    change.write_keys(tables, sm_meta)?;
    sm_meta.remove(PENDING)?;
    disk.flush_blocking()?;
    tracing::info!(
        generation = change.gen,
        "finished a change to the state that the last run left half made"
    );
    Ok(true)
}

fn gen_tree_name(number: u64, table: &str) -> String {
    format!("{GEN_PREFIX}{number}_{table}")
}

struct Inner<M> {
    machine: Arc<M>,
    disk: Disk,
    /// The data dir's meta record, whose format follows the cluster's (`Meta::raise_format`).
    meta: Meta,
    sm_meta: sled::Tree,
    /// Holds the current snapshot's file (and, briefly, one being written or received).
    snap_dir: PathBuf,
    gen: Arc<RwLock<Arc<Generation>>>,
    snapshot_seq: AtomicU64,
    /// Open captures of snapshots being built, by sequence number (see the module docs).
    captures: Mutex<PreImageSets>,
    /// Held from a capture's opening to the end of its build; an install waits for it, so a
    /// generation is never replaced under a build (and a build never copies a stale one).
    building: Arc<tokio::sync::Mutex<()>>,
    /// Bytes of commands applied since the last snapshot's capture (`Machine::approx_bytes`),
    /// known unless the data dir was written by a version that did not count them.
    applied_bytes: AtomicU64,
    applied_bytes_known: AtomicBool,
    /// The current snapshot file's length (0: none).
    snapshot_bytes: AtomicU64,
    /// Orders reads with the change being made (`make_change`); closed at a stop, after which
    /// no change is made (a stop never leaves one half made).
    order: Order,
}

/// The state machine store; cheap to clone.
pub struct StateMachineStore<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for StateMachineStore<M> {
    fn clone(&self) -> Self {
        StateMachineStore {
            inner: self.inner.clone(),
        }
    }
}

/// Read-only access to the applied state, always through the active generation.
#[derive(Clone)]
pub struct StateView {
    gen: Arc<RwLock<Arc<Generation>>>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl<M: Machine> StateMachineStore<M> {
    pub(super) fn open(
        disk: &Disk,
        snap_dir: PathBuf,
        machine: Arc<M>,
        meta: Meta,
    ) -> Result<StateMachineStore<M>, StorageError> {
        let db = disk.db();
        let sm_meta = db.open_tree("sm_meta").map_err(sm_err)?;
        finish_change::<M>(disk, &sm_meta).map_err(sm_write_err)?;
        // Only now may a release that cannot finish such a change open the data dir again.
        meta.settle().map_err(sm_write_err)?;
        let active = match sm_meta.get(ACTIVE_GEN).map_err(sm_err)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(sm_err)?,
            None => 0u64,
        };
        let order = Order::default();
        let gen = Generation::open::<M>(db, active, order.clone()).map_err(sm_err)?;
        complete::<M>(disk, &gen).map_err(sm_write_err)?;
        // Drop generations left behind by an install that crashed before or after its switch.
        let keep: Vec<String> = M::TABLES.iter().map(|t| gen_tree_name(active, t)).collect();
        for name in db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if name.starts_with(GEN_PREFIX) && !keep.contains(&name) {
                tracing::info!(tree = %name, "dropping state-machine tree of an old generation");
                db.drop_tree(name.as_bytes()).map_err(sm_write_err)?;
            }
        }
        let store = StateMachineStore {
            inner: Arc::new(Inner {
                machine,
                disk: disk.clone(),
                meta,
                sm_meta,
                snap_dir,
                gen: Arc::new(RwLock::new(Arc::new(gen))),
                snapshot_seq: AtomicU64::new(0),
                captures: Mutex::new(HashMap::new()),
                building: Arc::new(tokio::sync::Mutex::new(())),
                applied_bytes: AtomicU64::new(0),
                applied_bytes_known: AtomicBool::new(false),
                snapshot_bytes: AtomicU64::new(0),
                order,
            }),
        };
        store.inner.adopt_legacy_snapshot().map_err(sm_write_err)?;
        store.inner.remove_stray_snapshot_files();
        if let Some(b) = store.inner.sm_meta.get(APPLIED_BYTES).map_err(sm_err)? {
            let b = <[u8; 8]>::try_from(b.as_ref()).map_or(0, u64::from_be_bytes);
            store.inner.applied_bytes.store(b, Ordering::Relaxed);
            store
                .inner
                .applied_bytes_known
                .store(true, Ordering::Relaxed);
        }
        if let Some(name) = store.inner.current_snapshot_file().map_err(sm_err)? {
            store.inner.note_snapshot_file(&name);
        }
        Ok(store)
    }

    /// Captures still open: snapshots being built (a builder never leaves one behind).
    pub(crate) fn open_captures(&self) -> usize {
        self.inner
            .captures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Bytes of commands applied since the last snapshot (`None`: not counted, in a data dir of
    /// an older version, until the next snapshot), and the current snapshot's length: what
    /// `cadence::snapshot_due` weighs.
    pub fn snapshot_progress(&self) -> (Option<u64>, u64) {
        let inner = &self.inner;
        (
            (inner.applied_bytes_known.load(Ordering::Relaxed))
                .then(|| inner.applied_bytes.load(Ordering::Relaxed)),
            inner.snapshot_bytes.load(Ordering::Relaxed),
        )
    }

    /// Saves the count of bytes applied since the last snapshot, for the next start. Not in each
    /// apply's change: that put a second key write on every apply of every node.
    pub fn save_applied_bytes(&self) -> Result<(), sled::Error> {
        if self.inner.applied_bytes_known.load(Ordering::Relaxed) {
            self.inner
                .save_applied_bytes(self.inner.applied_bytes.load(Ordering::Relaxed))?;
        }
        Ok(())
    }

    /// Waits for a change being made to finish and makes no more (a stop then never leaves
    /// one half made, which the previous release could not finish). Blocking.
    pub(super) fn close(&self) {
        self.inner.order.close();
    }

    pub fn view(&self) -> StateView {
        StateView {
            gen: self.inner.gen.clone(),
        }
    }

    fn read_meta<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.inner.sm_meta.get(key).map_err(sm_err)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(sm_err),
        }
    }
}

impl<M: Machine> Inner<M> {
    /// Writes the snapshot file of capture `seq` of `gen`: every table read while applies go
    /// on, then the pre-images of the keys changed meanwhile (closing the capture), which
    /// replayed in order is the state at the capture point. fsynced. Blocking. Returns the
    /// file's name, its length and how many pre-images it overlaid.
    fn write_snapshot(
        &self,
        gen: &Generation,
        seq: u64,
        header: &Header,
    ) -> Result<(String, u64, usize), StorageError> {
        let name = snapshot_file_name(header.meta.last_log_id);
        let path = self.snap_dir.join(&name);
        let tables = || -> std::io::Result<FileWriter> {
            let mut w = Writer::create(&path, header)?;
            for (t, tree) in gen.tables.iter().enumerate() {
                for item in tree.iter() {
                    let (k, v) = item?;
                    w.put(t as u8, &k, &v)?;
                }
            }
            Ok(w)
        };
        let written = tables();
        // Closed whether or not the read succeeded, so applies stop recording for it.
        let mut pre: Vec<_> = self.close_capture(seq).into_iter().collect();
        pre.sort();
        let pre_images = pre.len();
        let written = written.and_then(|mut w| {
            for ((t, key), value) in pre {
                match value {
                    Some(v) => w.put(t as u8, &key, &v)?,
                    None => w.del(t as u8, &key)?,
                }
            }
            w.finish_synced()
        });
        match written {
            Ok(len) => Ok((name, len, pre_images)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(sm_write_err(e))
            }
        }
    }

    /// The current snapshot's file name, if there is one.
    fn current_snapshot_file(&self) -> Result<Option<String>, sled::Error> {
        Ok(self
            .sm_meta
            .get(SNAP_FILE)?
            .map(|n| String::from_utf8_lossy(&n).into_owned()))
    }

    /// Makes the (fsynced) file `name` the current snapshot: its directory entry is synced and
    /// the name recorded and flushed before the previous file goes. Blocking.
    fn set_current_snapshot(&self, name: &str) -> std::io::Result<()> {
        sync_dir(&self.snap_dir)?;
        let previous = self.current_snapshot_file()?;
        self.sm_meta.insert(SNAP_FILE, name.as_bytes())?;
        self.disk.flush_blocking()?;
        if let Some(p) = previous.filter(|p| p != name) {
            let _ = std::fs::remove_file(self.snap_dir.join(p));
        }
        Ok(())
    }

    /// Moves a snapshot schemas 1 and 2 kept in their `snapshot` tree into a file. Blocking;
    /// may run again after a crash before the tree is dropped.
    fn adopt_legacy_snapshot(&self) -> std::io::Result<()> {
        let db = self.disk.db();
        if !db
            .tree_names()
            .iter()
            .any(|n| n == LEGACY_SNAP_TREE.as_bytes())
        {
            return Ok(());
        }
        let tree = db.open_tree(LEGACY_SNAP_TREE)?;
        if let (Some(meta), Some(data), None) = (
            tree.get(LEGACY_SNAP_META)?,
            tree.get(LEGACY_SNAP_DATA)?,
            self.current_snapshot_file()?,
        ) {
            let meta: SnapshotMeta = serde_json::from_slice(&meta)?;
            let name = snapshot_file_name(meta.last_log_id);
            let path = self.snap_dir.join(&name);
            let mut w = Writer::create(&path, &Header::new(meta.clone()))?;
            for frame in legacy_frames::<M>(&data)? {
                if let Frame::Put { table, key, value } = frame {
                    w.put(table, &key, &value)?;
                }
            }
            w.finish_synced()?;
            self.set_current_snapshot(&name)?;
            tracing::info!(snapshot = %meta.snapshot_id, file = %name, "moved the snapshot into a file");
        }
        drop(tree);
        db.drop_tree(LEGACY_SNAP_TREE)?;
        Ok(())
    }

    /// Removes every file of the snapshot dir but the current snapshot's: what a build or an
    /// install left when the process died.
    fn remove_stray_snapshot_files(&self) {
        let current = self.current_snapshot_file().ok().flatten();
        let Ok(dir) = std::fs::read_dir(&self.snap_dir) else {
            return;
        };
        for entry in dir.flatten() {
            if current.as_deref() != entry.file_name().to_str() {
                tracing::info!(file = ?entry.path(), "removing a stray snapshot file");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Replays the snapshot in `file` (format 2, or a format-1 body) into a new generation
    /// and writes it as this node's snapshot file, fsynced; nothing is made current. On any
    /// error (a checksum that does not match included) both are removed again. Blocking.
    fn receive_snapshot(
        &self,
        file: &mut std::fs::File,
        meta: &SnapshotMeta,
    ) -> Result<(Generation, String), std::io::Error> {
        file.seek(SeekFrom::Start(0))?;
        let mut input = BufReader::with_capacity(1 << 16, file);
        let current = self.current();
        let next =
            Generation::open::<M>(self.disk.db(), current.number + 1, current.order.clone())?;
        let name = snapshot_file_name(meta.last_log_id);
        let path = self.snap_dir.join(&name);
        let mut replay = || -> std::io::Result<()> {
            for tree in next.tables.iter() {
                tree.clear()?;
            }
            let mut w = Writer::create(&path, &Header::new(meta.clone()))?;
            let mut apply = |frame: Frame| -> std::io::Result<()> {
                let (table, key) = match &frame {
                    Frame::Put { table, key, .. } | Frame::Del { table, key } => (*table, key),
                };
                let tree = next
                    .tables
                    .get(table as usize)
                    .ok_or_else(|| SnapFileError::Corrupt(format!("unknown table {table}")))?;
                match &frame {
                    Frame::Put { value, .. } => {
                        tree.insert(key.as_slice(), value.as_slice())?;
                        w.put(table, key, value)
                    }
                    Frame::Del { .. } => {
                        tree.remove(key.as_slice())?;
                        w.del(table, key)
                    }
                }
            };
            if input.fill_buf()?.first() == Some(&snapfile::MAGIC[0]) {
                let (header, mut r) = Reader::open(&mut input)?;
                if header.meta.last_log_id != meta.last_log_id {
                    return Err(SnapFileError::Corrupt(format!(
                        "the file holds the state at {:?}, not at {:?}",
                        header.meta.last_log_id, meta.last_log_id
                    ))
                    .into());
                }
                while let Some(frame) = r.next_frame()? {
                    apply(frame)?;
                }
            } else {
                let mut data = Vec::new();
                input.read_to_end(&mut data)?;
                for frame in legacy_frames::<M>(&data)? {
                    apply(frame)?;
                }
            }
            w.finish_synced()?;
            // What the machine derives is completed in the tables, not the file: the file stays
            // the snapshot as it was sent.
            complete::<M>(&self.disk, &next)
        };
        match replay() {
            Ok(()) => Ok((next, name)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                let _ = next.drop_trees::<M>(self.disk.db());
                Err(e)
            }
        }
    }

    /// Applies `entries`, the last of which is `last`, in one change that also records
    /// `last` as applied; returns a result per entry and what changed.
    #[allow(clippy::type_complexity)]
    fn apply_batch(
        &self,
        entries: &[Entry<M>],
        last: LogId,
    ) -> Result<(Vec<M::Output>, M::Touched), StorageError> {
        let bytes: u64 = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(cmd) => M::approx_bytes(cmd) as u64,
                _ => 0,
            })
            .sum();
        let failed = |e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::apply(last, &std::io::Error::other(e.to_string())).into()
        };
        let gen = self.current();
        // The machine reads and writes through the overlay; nothing reaches sled until the
        // whole batch has applied.
        let tx = Tx::new(&gen.tables, &self.captures);
        let mut out = Vec::with_capacity(entries.len());
        let mut touched = M::Touched::default();
        let mut membership = None;
        for entry in entries {
            match &entry.payload {
                EntryPayload::Blank => out.push(M::nothing()),
                EntryPayload::Normal(cmd) => {
                    let at = LogPosition {
                        index: entry.log_id.index,
                        term: entry.log_id.leader_id.term,
                        leader: entry.log_id.leader_id.node_id,
                    };
                    let applied = self.machine.apply(&tx, at, cmd, &mut touched);
                    out.push(applied.map_err(|e| failed(&e))?);
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    out.push(M::nothing());
                }
            }
        }
        // Shown to reads while its keys are written (`Order`).
        let shown = Arc::new(Shown {
            gen: gen.number,
            writes: tx.into_writes(),
        });
        let meta = [
            membership.map(|m| (LAST_MEMBERSHIP, json(&m))),
            Some((LAST_APPLIED, json(&last))),
        ];
        // One change over the tables and `sm_meta`: every write of the batch and
        // `last_applied` are there together after a crash, or none of them.
        let change = Change {
            gen: gen.number,
            tables: shown
                .writes
                .iter()
                .map(|rows| {
                    rows.iter()
                        .map(|(k, v)| (k.as_slice(), v.as_deref()))
                        .collect()
                })
                .collect(),
            meta: meta
                .iter()
                .flatten()
                .map(|(k, v)| (*k, v.as_slice()))
                .collect(),
        };
        self.make_change(&change, &gen.tables, Some(shown.clone()))
            .map_err(|e| failed(&e))?;
        self.applied_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok((out, touched))
    }

    /// Makes `change` to `tables` (its generation's) and `sm_meta`. Blocking. The whole
    /// change is written first as one record, then each of its keys, then the record is
    /// removed; sled recovers a prefix of its writes, so after a crash either none of it is
    /// there, or the record is and `open` finishes it (`finish_change`), or all of it is.
    /// While a release that predates this could open the data dir (its format is not raised
    /// yet), the meta record is held around the change: that release cannot finish one, and
    /// refuses a data dir where one may be half made. Not flushed: see `apply`. Reads see
    /// `shown` (the change's writes to `tables`) meanwhile (`Order`).
    fn make_change(
        &self,
        change: &Change<&[u8], &[u8]>,
        tables: &[sled::Tree],
        shown: Option<Arc<Shown>>,
    ) -> std::io::Result<()> {
        let record = postcard::to_allocvec(change).map_err(std::io::Error::other)?;
        let hold = self.meta.machine_format() <= M::FORMAT_PREVIOUS_RELEASE;
        self.order.change(shown, || {
            if hold {
                self.meta.hold(true)?;
            }
            self.sm_meta.insert(PENDING, record)?;
            change.write_keys(tables, &self.sm_meta)?;
            self.sm_meta.remove(PENDING)?;
            if hold {
                self.meta.hold(false)?;
            }
            Ok(())
        })
    }

    /// Raises the data dir's recorded format once `entries` (just applied, up to `last`)
    /// raised the cluster's, before anything later is applied: from then on a binary that
    /// cannot read the new format refuses this data dir instead of misreading it.
    fn follow_cluster_format(&self, entries: &[Entry<M>], last: LogId) -> Result<(), StorageError> {
        let raised = entries.iter().any(|e| match &e.payload {
            EntryPayload::Normal(cmd) => M::format_set_by(cmd).is_some(),
            _ => false,
        });
        if !raised {
            return Ok(());
        }
        match M::cluster_format(&self.tables()) {
            Some(format) => self
                .meta
                .raise_format(format)
                .map_err(|e| StorageIOError::apply(last, &std::io::Error::other(e)).into()),
            None => Ok(()),
        }
    }

    /// Records `bytes` as the count applied since the snapshot point. Not flushed: a hint; the
    /// next flush makes it durable with whatever follows.
    fn save_applied_bytes(&self, bytes: u64) -> Result<(), sled::Error> {
        self.sm_meta
            .insert(APPLIED_BYTES, &bytes.to_be_bytes())
            .map(drop)
    }

    /// Starts counting the bytes applied since a snapshot point anew (serialized with apply).
    fn reset_applied_bytes(&self) {
        if let Err(e) = self.save_applied_bytes(0) {
            tracing::warn!(error = %e, "cannot record the snapshot point's byte count");
        }
        self.applied_bytes.store(0, Ordering::Relaxed);
        self.applied_bytes_known.store(true, Ordering::Relaxed);
    }

    /// Takes the length of snapshot file `name` as the current snapshot's size.
    fn note_snapshot_file(&self, name: &str) {
        let len = std::fs::metadata(self.snap_dir.join(name)).map_or(0, |m| m.len());
        self.snapshot_bytes.store(len, Ordering::Relaxed);
    }

    fn close_capture(&self, seq: u64) -> PreImages {
        let mut captures = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        captures.remove(&seq).unwrap_or_default()
    }

    /// The applied tables as they stand now (one generation, pinned).
    fn tables(&self) -> AppliedTables {
        self.current().applied()
    }

    fn current(&self) -> Arc<Generation> {
        // A poisoned lock only means a panic elsewhere; the pointer itself is always valid.
        self.gen.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl<M: Machine> RaftStateMachine<Cfg<M>> for StateMachineStore<M> {
    type SnapshotBuilder = SnapshotBuilder<M>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied: Option<LogId> = self.read_meta(LAST_APPLIED)?;
        let membership: Option<StoredMembership> = self.read_meta(LAST_MEMBERSHIP)?;
        Ok((applied, membership.unwrap_or_default()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<M::Output>, StorageError>
    where
        I: IntoIterator<Item = Entry<M>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<M>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        // In a blocking thread: a batch's writes can take tens of milliseconds, and on a
        // worker of Raft's runtime it held up the heartbeats and AppendEntries queued behind it.
        let inner = self.inner.clone();
        let (results, touched) = tokio::task::spawn_blocking(move || {
            let applied = inner.apply_batch(&entries, last)?;
            inner.follow_cluster_format(&entries, last)?;
            Ok::<_, StorageError>(applied)
        })
        .await
        .map_err(|e| StorageIOError::apply(last, &std::io::Error::other(e)))??;
        // Not flushed: the entries are durable in this node's log already (`append` flushes
        // before it returns, and openraft's core awaits it before it handles the replies that
        // commit them), the state goes into sled in one change with `last_applied`, and
        // sled recovers a prefix of its writes. After a crash openraft re-applies from the
        // durable `last_applied`; a leader restored in its old term reads no earlier than the
        // last entry it had (`ReadFloor` in `replica.rs`). Appends, purges and snapshots flush
        // the whole database, so the state is durable before the log is purged past it.
        self.inner.machine.applied(touched);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // This runs on the state-machine worker, serialized with apply: open a capture here,
        // cheaply; `build_snapshot` copies the state later in its own task.
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        // openraft builds one snapshot at a time and spawns the build at once, so this waits for
        // nothing that needs this worker.
        let building = self.inner.building.clone().lock_owned().await;
        let captured = self.applied_state().await.map(|(applied, membership)| {
            let mut captures = self
                .inner
                .captures
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            captures.insert(seq, PreImages::new());
            // Serialized with apply: the count restarts exactly at the captured point.
            self.inner.reset_applied_bytes();
            Captured {
                seq,
                applied,
                membership,
                gen: self.inner.current(),
                _building: building,
            }
        });
        SnapshotBuilder {
            store: self.clone(),
            captured,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        // Unnamed: it goes with its last handle, whatever happens to the transfer.
        let file = tempfile::tempfile_in(&self.inner.snap_dir).map_err(sm_write_err)?;
        Ok(Box::new(SnapshotFile::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let sig = Some(meta.signature());
        let write_err = |e: std::io::Error| -> StorageError {
            StorageIOError::write_snapshot(sig.clone(), &e).into()
        };
        let mut file = snapshot.into_std().await;
        // No build may be reading the generation this install drops.
        let _building = self.inner.building.lock().await;
        let old = self.inner.current();
        let (inner, received) = (self.inner.clone(), meta.clone());
        let (next, name) =
            tokio::task::spawn_blocking(move || inner.receive_snapshot(&mut file, &received))
                .await
                .map_err(|e| write_err(std::io::Error::other(e)))?
                .map_err(write_err)?;
        self.inner
            .disk
            .flush()
            .await
            .map_err(|e| write_err(e.into()))?;
        sync_dir(&self.inner.snap_dir).map_err(write_err)?;

        // The switch: the new generation, the applied point and the new snapshot file, in one
        // change, so after a crash the state and the current snapshot always agree.
        let previous = self.inner.current_snapshot_file().map_err(sm_err)?;
        let applied = json(&meta.last_log_id);
        let membership = json(&meta.last_membership);
        let gen_number = json(&next.number);
        let change = Change {
            gen: next.number,
            tables: Vec::new(),
            meta: vec![
                (ACTIVE_GEN, gen_number.as_slice()),
                (LAST_APPLIED, applied.as_slice()),
                (LAST_MEMBERSHIP, membership.as_slice()),
                (SNAP_FILE, name.as_bytes()),
            ],
        };
        self.inner
            .make_change(&change, &[], None)
            .map_err(write_err)?;
        self.inner
            .disk
            .flush()
            .await
            .map_err(|e| write_err(e.into()))?;

        *self.inner.gen.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.inner.reset_applied_bytes();
        self.inner.note_snapshot_file(&name);
        self.inner.machine.replaced();
        if let Some(format) = M::cluster_format(&self.inner.tables()) {
            self.inner
                .meta
                .raise_format(format)
                .map_err(|e| write_err(e.into()))?;
        }
        old.drop_trees::<M>(self.inner.disk.db())
            .map_err(|e| write_err(e.into()))?;
        if let Some(p) = previous.filter(|p| *p != name) {
            let _ = std::fs::remove_file(self.inner.snap_dir.join(p));
        }
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<M>>, StorageError> {
        let Some(name) = self.inner.current_snapshot_file().map_err(sm_err)? else {
            return Ok(None);
        };
        let mut file = std::fs::File::open(self.inner.snap_dir.join(&name)).map_err(sm_err)?;
        let (header, _) = Reader::open(BufReader::new(&file)).map_err(sm_err)?;
        file.seek(SeekFrom::Start(0)).map_err(sm_err)?;
        Ok(Some(Snapshot {
            meta: header.meta,
            snapshot: Box::new(SnapshotFile::from_std(file)),
        }))
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Our own plain data types always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

/// What `get_snapshot_builder` captured: the applied point and the open capture's number.
struct Captured {
    seq: u64,
    applied: Option<LogId>,
    membership: StoredMembership,
    gen: Arc<Generation>,
    _building: tokio::sync::OwnedMutexGuard<()>,
}

/// Builds a snapshot of the state at the point captured by `get_snapshot_builder`.
pub struct SnapshotBuilder<M: Machine> {
    store: StateMachineStore<M>,
    captured: Result<Captured, StorageError>,
}

/// A builder dropped unused closes its capture, so applies stop recording for it.
impl<M: Machine> Drop for SnapshotBuilder<M> {
    fn drop(&mut self) {
        if let Ok(c) = &self.captured {
            self.store.inner.close_capture(c.seq);
        }
    }
}

impl<M: Machine> RaftSnapshotBuilder<Cfg<M>> for SnapshotBuilder<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<M>, StorageError> {
        let Captured {
            seq,
            applied,
            membership,
            gen,
            _building: building,
        } = std::mem::replace(
            &mut self.captured,
            Err(sm_err(std::io::Error::other("snapshot builder used twice"))),
        )?;
        let started = std::time::Instant::now();
        let store = self.store.clone();
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let header = Header::new(meta.clone());
        // On a thread of its own at a lower CPU priority: copying the whole state must not take
        // the CPU from replication, apply and delivery (all three nodes build at the same log
        // index; at normal priority their builds stalled delivery under load for a second).
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("hookd-snapshot".into())
            .spawn(move || {
                lower_priority();
                let _ = tx.send(store.inner.write_snapshot(&gen, seq, &header));
            })
            .map_err(sm_err)?;
        let (name, bytes, pre_images) = rx
            .await
            .map_err(|_| sm_err(std::io::Error::other("snapshot builder thread ended")))??;
        let written_ms = started.elapsed().as_millis() as u64;
        self.store
            .inner
            .snapshot_bytes
            .store(bytes, Ordering::Relaxed);
        let inner = self.store.inner.clone();
        let current = name.clone();
        tokio::task::spawn_blocking(move || inner.set_current_snapshot(&current))
            .await
            .map_err(sm_write_err)?
            .map_err(sm_write_err)?;
        // Only now: an install in between would have been replaced by this older state.
        drop(building);
        let file = std::fs::File::open(self.store.inner.snap_dir.join(&name)).map_err(sm_err)?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes,
            pre_images,
            written_ms,
            saved_ms = started.elapsed().as_millis() as u64,
            "built snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::from_std(file)),
        })
    }
}

/// Niceness of the snapshot builder thread: it gets about a tenth of a core's share against
/// busy normal-priority threads, and all of an idle core.
const SNAPSHOT_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to `SNAPSHOT_NICE` (Linux: per thread), never
/// raising it (a node started at a higher niceness keeps it). A failure only leaves it as it was.
fn lower_priority() {
    let tid = rustix::thread::gettid();
    let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), SNAPSHOT_NICE.max(current)) {
        tracing::debug!(error = %e, "cannot lower the snapshot builder's priority");
    }
}

impl StateView {
    /// The applied tables as they stand now (one generation, pinned).
    pub fn tables(&self) -> AppliedTables {
        self.gen.read().unwrap_or_else(|p| p.into_inner()).applied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::kv::{Cmd, Kv};

    fn entry(index: u64, cmd: Cmd) -> Entry<Kv> {
        use openraft::{CommittedLeaderId, LogId};
        Entry::<Kv> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    fn put(key: &str, value: &str) -> Cmd {
        Cmd::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A crash after a change's record and its first key, before the rest (what sled may
    /// recover, a prefix of the writes): a release that cannot finish the change refuses the
    /// data dir by its meta record, and this one finishes it at open, then writes the record
    /// as it was.
    #[tokio::test]
    async fn a_change_a_crash_cut_short_is_finished_at_open_and_refused_by_the_previous_release() {
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().unwrap();
        // Reopens after a drop: the tests' `open` waits out sled's file lock.
        let open = || crate::store::tests::open(dir.path()).unwrap();
        {
            let store = open();
            let entries = vec![entry(1, put("a", "1")), entry(2, put("c", "3"))];
            store.state_machine().apply(entries).await.unwrap();
            store.close().await.unwrap();
        }
        let meta_json = |db: &sled::Db| -> serde_json::Value {
            let bytes = db
                .open_tree("meta")
                .unwrap()
                .get(b"record")
                .unwrap()
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        let applied = json(&entry(3, put("-", "-")).log_id);
        let change = Change {
            gen: 0,
            tables: vec![vec![
                (&b"b"[..], Some(&b"2"[..])),
                (&b"a"[..], None),
                (&b"c"[..], Some(&b"4"[..])),
            ]],
            meta: vec![(LAST_APPLIED, applied.as_slice())],
        };
        let before;
        {
            // The crash, as sled recovers it: the held record, the change's record, its first key.
            let db = sled::open(dir.path().join("db")).unwrap();
            before = meta_json(&db);
            let record: super::super::MetaRecord = serde_json::from_value(before.clone()).unwrap();
            let held = serde_json::to_vec(&record.held()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert(b"record", held)
                .unwrap();
            let sm_meta = db.open_tree("sm_meta").unwrap();
            sm_meta
                .insert(PENDING, postcard::to_allocvec(&change).unwrap())
                .unwrap();
            db.open_tree(gen_tree_name(0, "kv"))
                .unwrap()
                .insert(b"b", b"2")
                .unwrap();
            db.flush().unwrap();

            // What a release that predates `held` reads (it ignores the field): versions it
            // refuses.
            let mut old = meta_json(&db);
            old.as_object_mut().unwrap().remove("held");
            let old: super::super::MetaRecord = serde_json::from_value(old).unwrap();
            let refused = super::super::readable(
                old.versions(),
                1..=super::super::STORE_VERSION,
                1..=Kv::FORMAT_PREVIOUS_RELEASE,
            );
            assert_eq!(refused.map_err(|e| e.0), Err("schema"));
        }
        let store = open();
        let t = store.view().tables();
        assert_eq!(t.get(0, b"a").unwrap(), None);
        assert_eq!(t.get(0, b"b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(t.get(0, b"c").unwrap().as_deref(), Some(&b"4"[..]));
        let (last, _) = store.state_machine().applied_state().await.unwrap();
        assert_eq!(last.map(|l| l.index), Some(3));
        drop((t, store));
        let db = sled::open(dir.path().join("db")).unwrap();
        assert_eq!(db.open_tree("sm_meta").unwrap().get(PENDING).unwrap(), None);
        assert_eq!(
            meta_json(&db),
            before,
            "the meta record is written as it was"
        );
    }

    /// A read sees each applied batch whole: a reader that finds a batch's first key written
    /// finds its last written too (the keys are written in order, `a` before `b`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_see_each_applied_batch_whole() {
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), 1, Arc::new(Kv)).unwrap();
        let mut sm = store.state_machine();
        let view = store.view();
        let done = Arc::new(AtomicBool::new(false));
        let reader = std::thread::spawn({
            let done = done.clone();
            move || {
                let number = |v: Option<Vec<u8>>| -> u64 {
                    v.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap())
                };
                let (mut reads, mut torn) = (0u64, 0u64);
                while !done.load(Ordering::Relaxed) {
                    let t = view.tables();
                    let a = number(t.get(0, b"a").unwrap());
                    let b = number(t.get(0, b"b").unwrap());
                    torn += u64::from(b < a);
                    reads += 1;
                }
                (reads, torn)
            }
        });
        for i in 1..=2_000u64 {
            let v = i.to_string();
            sm.apply(vec![
                entry(2 * i - 1, put("a", &v)),
                entry(2 * i, put("b", &v)),
            ])
            .await
            .unwrap();
        }
        done.store(true, Ordering::Relaxed);
        let (reads, torn) = reader.join().unwrap();
        assert!(reads > 100, "the reader read {reads} times");
        assert_eq!(torn, 0, "{torn} of {reads} reads saw a batch half written");
    }

    /// Applying writes the meta record held around each change only while the previous
    /// release could open the data dir, and always leaves it as it stands; a closed store
    /// makes no change.
    #[tokio::test]
    async fn a_change_holds_the_meta_record_only_while_the_previous_release_could_open_the_dir() {
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), 1, Arc::new(Kv)).unwrap();
        let mut sm = store.state_machine();
        let mut watch = store.sm.inner.meta.tree.watch_prefix(b"record");
        let mut records = Vec::new();
        let mut take = |records: &mut Vec<super::super::MetaRecord>| {
            while let Ok(sled::Event::Insert { value, .. }) =
                watch.next_timeout(std::time::Duration::from_millis(100))
            {
                records.push(serde_json::from_slice(&value).unwrap());
            }
        };
        sm.apply(vec![entry(1, put("a", "1"))]).await.unwrap();
        take(&mut records);
        let held: Vec<bool> = records.iter().map(|r| r.held.is_some()).collect();
        assert_eq!(
            held,
            [true, false],
            "held around the change, then as it stands"
        );

        records.clear();
        sm.apply(vec![entry(2, Kv::record_cluster_format(4))])
            .await
            .unwrap();
        take(&mut records);
        records.clear();
        sm.apply(vec![entry(3, put("b", "2"))]).await.unwrap();
        take(&mut records);
        assert!(
            records.is_empty(),
            "not held once the format is raised: {records:?}"
        );

        store.close().await.unwrap();
        assert!(sm.apply(vec![entry(4, put("c", "3"))]).await.is_err());
        assert_eq!(store.view().tables().get(0, b"c").unwrap(), None);
    }

    #[test]
    fn the_snapshot_builder_thread_runs_at_a_lower_priority_than_the_rest() {
        let ours = rustix::process::getpriority_process(None).unwrap();
        let builder = std::thread::spawn(|| {
            lower_priority();
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(builder, SNAPSHOT_NICE.max(ours));
        // Per thread: the thread that spawned it keeps its priority.
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), ours);
    }

    /// A snapshot from a node of the previous version (format 1: a postcard body, JSON job
    /// records) installs and reads; a damaged file or one of a newer format is refused with
    /// an error that says so, and leaves the state and the current snapshot as they were.
    #[tokio::test]
    async fn a_format_1_snapshot_installs_and_a_damaged_or_newer_one_is_refused() {
        use openraft::storage::RaftStateMachine;
        use openraft::{CommittedLeaderId, LogId, StoredMembership};
        use std::io::Write;

        // A table this version dropped is skipped.
        let legacy = postcard::to_stdvec(&LegacyBody {
            format: 1,
            tables: vec![
                ("kv".to_owned(), vec![(b"old".to_vec(), b"value".to_vec())]),
                ("old".to_owned(), vec![(b"gone".to_vec(), b"x".to_vec())]),
            ],
        })
        .unwrap();
        let meta = |index| SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s{index}"),
        };
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), 1, Arc::new(Kv)).unwrap();
        let mut sm = store.state_machine();
        let send = async |bytes: &[u8]| {
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(bytes).unwrap();
            Box::new(SnapshotFile::from_std(file))
        };

        sm.install_snapshot(&meta(7), send(&legacy).await)
            .await
            .unwrap();
        let old = || store.view().tables().get(0, b"old").unwrap();
        assert_eq!(old().as_deref(), Some(&b"value"[..]));
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(7));
        // It is this node's snapshot now, in format 2.
        let current = sm.get_current_snapshot().await.unwrap().expect("snapshot");
        assert_eq!(current.meta, meta(7));
        let mut file = current.snapshot.into_std().await;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        assert_eq!(&bytes[..8], snapfile::MAGIC);

        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(snapfile::FILE_FORMAT + 1).to_le_bytes());
        let mut damaged = bytes.clone();
        let n = damaged.len();
        damaged[n - 40] ^= 1;
        for (bad, says) in [(newer, "newer hookd"), (damaged, "checksum")] {
            let e = sm.install_snapshot(&meta(7), send(&bad).await).await;
            let e = e.unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let e = sm.install_snapshot(&meta(9), send(&bytes).await).await;
        assert!(e.unwrap_err().to_string().contains("not at"), "wrong meta");
        assert_eq!(sm.applied_state().await.unwrap().0, meta(7).last_log_id);
        assert_eq!(
            sm.get_current_snapshot().await.unwrap().unwrap().meta,
            meta(7)
        );
        assert!(old().is_some());
        // Only the current snapshot's file is left in the snapshot dir.
        assert_eq!(
            std::fs::read_dir(dir.path().join("snapshots"))
                .unwrap()
                .count(),
            1
        );
    }
}
