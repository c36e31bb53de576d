//! The state machine on sled (`RaftStateMachine`), its snapshots, and `StateView`, the read side
//! the API uses.
//!
//! The tables of the state machine live in trees of one *generation* (`sm_g{N}_{table}`).
//! `apply` writes a whole batch of entries in one transaction together with `last_applied` and
//! leaves the flush to the next append, purge or snapshot (see `apply`). Installing a snapshot
//! writes generation N+1 from scratch, flushes it, switches `active_gen` in one transaction, and
//! only then drops generation N; a crash at any point leaves either the old or the new state,
//! never a mix, and leftovers are dropped at the next open.
//!
//! Snapshots are built off the apply path. `get_snapshot_builder` (serialized with apply) only
//! opens a *capture*; from then on `apply` records the value every key had before its first
//! change (its pre-image). The builder then reads the live trees in a blocking thread while
//! applies go on, and finally overlays the pre-images, which yields exactly the state at the
//! capture point (every key changed since then is put back as it was, every key not changed was
//! read as it was). Applies are never stalled by the copy.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::broadcast;

use super::Disk;
use crate::command::{CommandResult, Job, Run, RunStatus};
use crate::state::{self, StateFault, Table, Tables, TxResult};
use crate::typ::{
    Entry, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    TypeConfig,
};

const LAST_APPLIED: &[u8] = b"last_applied";
const LAST_MEMBERSHIP: &[u8] = b"last_membership";
const ACTIVE_GEN: &[u8] = b"active_gen";
const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";
const GEN_PREFIX: &str = "sm_g";

/// Version of the snapshot body: its encoding and the record formats in its tables. A body of
/// an older format this code reads (`SNAPSHOT_READABLE_FROM`) installs as it is: its records
/// are read in their older forms. A newer one is refused (a node of a newer hookd sent it).
///
/// - 1: schemas 1 and 2 (JSON job records).
/// - 2: schema 3 (compact job records).
const SNAPSHOT_FORMAT: u32 = 2;
const SNAPSHOT_READABLE_FROM: u32 = 1;

/// A snapshot's payload: every table of the state machine, as raw key-value pairs.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    format: u32,
    tables: Vec<(String, Vec<KeyValue>)>,
}

type KeyValue = (Vec<u8>, Vec<u8>);

/// The trees of one generation, indexed by `Table as usize`.
struct Generation {
    number: u64,
    tables: Vec<sled::Tree>,
}

impl Generation {
    fn open(db: &sled::Db, number: u64) -> Result<Generation, sled::Error> {
        let tables = Table::ALL
            .iter()
            .map(|t| db.open_tree(gen_tree_name(number, *t)))
            .collect::<Result<_, _>>()?;
        Ok(Generation { number, tables })
    }

    fn table(&self, t: Table) -> &sled::Tree {
        &self.tables[t as usize]
    }
}

fn gen_tree_name(number: u64, table: Table) -> String {
    format!("{GEN_PREFIX}{number}_{}", table.name())
}

struct Inner {
    disk: Disk,
    sm_meta: sled::Tree,
    snap: sled::Tree,
    gen: RwLock<Arc<Generation>>,
    snapshot_seq: AtomicU64,
    changes: broadcast::Sender<Change>,
    /// Open captures of snapshots being built, by sequence number (see the module docs).
    captures: Mutex<HashMap<u64, PreImages>>,
    /// Held from a capture's opening to the end of its build; an install waits for it, so a
    /// generation is never replaced under a build (and a build never copies a stale one).
    building: Arc<tokio::sync::Mutex<()>>,
}

/// The value each key had when a capture opened, recorded at its first change since: `None`
/// for a key that did not exist.
type PreImages = HashMap<(usize, Vec<u8>), Option<Vec<u8>>>;

/// One table's rows, in key order.
type Rows = BTreeMap<Vec<u8>, Vec<u8>>;

/// What an applied batch changed, for the dispatcher's in-memory index.
#[derive(Debug, Clone)]
pub enum Change {
    /// Jobs whose definition, cursor or existence changed, and runs opened outside a claim.
    Batch(Arc<state::Touched>),
    /// The whole state was replaced (snapshot installed): rebuild everything.
    All,
}

/// Batches of changes a slow subscriber may fall behind by before it must rebuild.
const CHANGES_CAPACITY: usize = 4096;

/// The state machine store; cheap to clone.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

/// Read-only access to the applied state, always through the active generation.
#[derive(Clone)]
pub struct StateView {
    inner: Arc<Inner>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachineStore {
    pub(super) fn open(disk: &Disk) -> Result<StateMachineStore, StorageError> {
        let db = disk.db();
        let sm_meta = db.open_tree("sm_meta").map_err(sm_err)?;
        let snap = db.open_tree("snapshot").map_err(sm_err)?;
        let active = match sm_meta.get(ACTIVE_GEN).map_err(sm_err)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(sm_err)?,
            None => 0u64,
        };
        let gen = Generation::open(db, active).map_err(sm_err)?;
        // Drop generations left behind by an install that crashed before or after its switch.
        let keep: Vec<String> = Table::ALL
            .iter()
            .map(|t| gen_tree_name(active, *t))
            .collect();
        for name in db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if name.starts_with(GEN_PREFIX) && !keep.contains(&name) {
                tracing::info!(tree = %name, "dropping state-machine tree of an old generation");
                db.drop_tree(name.as_bytes()).map_err(sm_write_err)?;
            }
        }
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                disk: disk.clone(),
                sm_meta,
                snap,
                gen: RwLock::new(Arc::new(gen)),
                snapshot_seq: AtomicU64::new(0),
                changes: broadcast::channel(CHANGES_CAPACITY).0,
                captures: Mutex::new(HashMap::new()),
                building: Arc::new(tokio::sync::Mutex::new(())),
            }),
        })
    }

    /// Captures still open (tests: a builder must never leave one behind).
    #[cfg(test)]
    pub(super) fn open_captures(&self) -> usize {
        self.inner
            .captures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn view(&self) -> StateView {
        StateView {
            inner: self.inner.clone(),
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

    /// Reads every table of `gen` while applies go on, then closes capture `seq` and overlays
    /// its pre-images: the state as it was when the capture opened. Blocking.
    fn dump(&self, gen: &Generation, seq: u64) -> Result<SnapshotBody, StorageError> {
        let read = || -> Result<Vec<Rows>, StorageError> {
            let mut tables = Vec::with_capacity(Table::ALL.len());
            for t in Table::ALL {
                let mut pairs = BTreeMap::new();
                for item in gen.table(t).iter() {
                    let (k, v) = item.map_err(sm_err)?;
                    pairs.insert(k.to_vec(), v.to_vec());
                }
                tables.push(pairs);
            }
            Ok(tables)
        };
        let tables = read();
        // Closed whether or not the read succeeded, so applies stop recording for it.
        let pre = self.inner.close_capture(seq);
        let mut tables = tables?;
        for ((t, key), value) in pre {
            match value {
                Some(v) => tables[t].insert(key, v),
                None => tables[t].remove(&key),
            };
        }
        Ok(SnapshotBody {
            format: SNAPSHOT_FORMAT,
            tables: Table::ALL
                .iter()
                .zip(tables)
                .map(|(t, pairs)| (t.name().to_owned(), pairs.into_iter().collect()))
                .collect(),
        })
    }

    async fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let meta_bytes = serde_json::to_vec(meta).map_err(sm_write_err)?;
        let sig = Some(meta.signature());
        self.inner
            .snap
            .transaction(|snap| {
                snap.insert(SNAP_META, meta_bytes.as_slice())?;
                snap.insert(SNAP_DATA, data)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &tx_error(e)))?;
        self.inner
            .disk
            .flush()
            .await
            .map_err(|e| StorageIOError::write_snapshot(sig, &e))?;
        Ok(())
    }
}

impl Inner {
    /// Applies `entries`, the last of which is `last`, in one transaction that also records
    /// `last` as applied; returns a result per entry and what changed.
    fn apply_batch(
        &self,
        entries: &[Entry],
        last: LogId,
    ) -> Result<(Vec<CommandResult>, state::Touched), StorageError> {
        let gen = self.current();
        let mut trees: Vec<&sled::Tree> = vec![&self.sm_meta];
        trees.extend(gen.tables.iter());
        trees
            .as_slice()
            .transaction(|txs| {
                let (meta, trees) =
                    txs.split_first()
                        .ok_or(ConflictableTransactionError::Abort(
                            StateFault::MissingTables,
                        ))?;
                let tables = TxTables {
                    trees,
                    captures: &self.captures,
                };
                let mut out = Vec::with_capacity(entries.len());
                let mut touched = state::Touched::default();
                for entry in entries {
                    match &entry.payload {
                        EntryPayload::Blank => out.push(CommandResult::Done),
                        EntryPayload::Normal(cmd) => out.push(state::apply_command(
                            &tables,
                            &entry.log_id,
                            cmd,
                            &mut touched,
                        )?),
                        EntryPayload::Membership(m) => {
                            let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                            meta.insert(LAST_MEMBERSHIP, json(&stored))?;
                            out.push(CommandResult::Done);
                        }
                    }
                }
                meta.insert(LAST_APPLIED, json(&last))?;
                Ok((out, touched))
            })
            .map_err(|e| StorageIOError::apply(last, &tx_error(e)).into())
    }

    fn close_capture(&self, seq: u64) -> PreImages {
        let mut captures = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        captures.remove(&seq).unwrap_or_default()
    }

    fn current(&self) -> Arc<Generation> {
        // A poisoned lock only means a panic elsewhere; the pointer itself is always valid.
        self.gen.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn tx_error<E: std::fmt::Debug>(e: TransactionError<E>) -> std::io::Error {
    std::io::Error::other(format!("{e:?}"))
}

/// The tables of one transaction: `TransactionalTree`s in `Table` order, and the open
/// snapshot captures, which get the pre-image of every key at its first change.
struct TxTables<'a> {
    trees: &'a [TransactionalTree],
    captures: &'a Mutex<HashMap<u64, PreImages>>,
}

impl TxTables<'_> {
    /// Records `key`'s current value in every open capture that has none for it yet. This runs
    /// before the transaction commits, so a build that closes its capture before this call had
    /// read the key before the change, and one that closes it after gets the pre-image.
    fn before_change(&self, table: Table, key: &[u8]) -> TxResult<()> {
        let mut captures = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        if captures.is_empty() {
            return Ok(());
        }
        let id = (table as usize, key.to_vec());
        if captures.values().all(|pre| pre.contains_key(&id)) {
            return Ok(());
        }
        // Our own earlier write in this transaction would already have recorded the key, so
        // this reads committed state: the pre-image.
        let value = self.get(table, key)?;
        for pre in captures.values_mut() {
            pre.entry(id.clone()).or_insert_with(|| value.clone());
        }
        Ok(())
    }
}

impl Tables for TxTables<'_> {
    fn get(&self, table: Table, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        Ok(self.trees[table as usize].get(key)?.map(|v| v.to_vec()))
    }
    fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> TxResult<()> {
        self.before_change(table, key)?;
        self.trees[table as usize].insert(key, value)?;
        Ok(())
    }
    fn del(&self, table: Table, key: &[u8]) -> TxResult<()> {
        self.before_change(table, key)?;
        self.trees[table as usize].remove(key)?;
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied: Option<LogId> = self.read_meta(LAST_APPLIED)?;
        let membership: Option<StoredMembership> = self.read_meta(LAST_MEMBERSHIP)?;
        Ok((applied, membership.unwrap_or_default()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        // In a blocking thread: a batch's transaction can take tens of milliseconds, and on a
        // worker of Raft's runtime it held up the heartbeats and AppendEntries queued behind it.
        let inner = self.inner.clone();
        let (results, touched) =
            tokio::task::spawn_blocking(move || inner.apply_batch(&entries, last))
                .await
                .map_err(|e| StorageIOError::apply(last, &std::io::Error::other(e)))??;
        // Not flushed: the entries are durable in this node's log already (`append` flushes
        // before it returns, and openraft's core awaits it before it handles the replies that
        // commit them), the state goes into sled in one transaction with `last_applied`, and
        // sled recovers a prefix of its writes. After a crash openraft re-applies from the
        // durable `last_applied`; a leader restored in its old term reads no earlier than the
        // last entry it had (`ReadFloor` in `replica.rs`). Appends, purges and snapshots flush
        // the whole database, so the state is durable before the log is purged past it.
        if !touched.jobs.is_empty() || !touched.runs.is_empty() {
            // No subscriber (a follower) is fine.
            let _ = self.inner.changes.send(Change::Batch(Arc::new(touched)));
        }
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let sig = Some(meta.signature());
        let data = snapshot.into_inner();
        let body: SnapshotBody = postcard::from_bytes(&data)
            .map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        if !(SNAPSHOT_READABLE_FROM..=SNAPSHOT_FORMAT).contains(&body.format) {
            let e = std::io::Error::other(format!(
                "snapshot format {} is not one this hookd reads ({SNAPSHOT_READABLE_FROM} to \
                 {SNAPSHOT_FORMAT}): a node of a newer hookd sent it; upgrade this node",
                body.format
            ));
            return Err(StorageIOError::read_snapshot(sig, &e).into());
        }
        let write_err = |e: sled::Error| -> StorageError {
            StorageIOError::write_snapshot(sig.clone(), &e).into()
        };
        // No build may be reading the generation this install drops.
        let _building = self.inner.building.lock().await;
        let old = self.inner.current();
        let next = Generation::open(self.inner.disk.db(), old.number + 1).map_err(write_err)?;
        for t in Table::ALL {
            let tree = next.table(t);
            tree.clear().map_err(write_err)?;
            let mut batch = sled::Batch::default();
            if let Some((_, pairs)) = body.tables.iter().find(|(name, _)| name == t.name()) {
                for (k, v) in pairs {
                    batch.insert(k.as_slice(), v.as_slice());
                }
            }
            tree.apply_batch(batch).map_err(write_err)?;
        }
        self.inner.disk.flush().await.map_err(write_err)?;

        let meta_bytes = serde_json::to_vec(meta).map_err(sm_write_err)?;
        let applied = json(&meta.last_log_id);
        let membership = json(&meta.last_membership);
        let gen_number = json(&next.number);
        (&self.inner.sm_meta, &self.inner.snap)
            .transaction(|(sm_meta, snap)| {
                sm_meta.insert(ACTIVE_GEN, gen_number.as_slice())?;
                sm_meta.insert(LAST_APPLIED, applied.as_slice())?;
                sm_meta.insert(LAST_MEMBERSHIP, membership.as_slice())?;
                snap.insert(SNAP_META, meta_bytes.as_slice())?;
                snap.insert(SNAP_DATA, data.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &tx_error(e)))?;
        self.inner.disk.flush().await.map_err(write_err)?;

        *self.inner.gen.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        let _ = self.inner.changes.send(Change::All);
        for t in Table::ALL {
            self.inner
                .disk
                .db()
                .drop_tree(gen_tree_name(old.number, t).as_bytes())
                .map_err(write_err)?;
        }
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let (Some(meta), Some(data)) = (
            self.inner.snap.get(SNAP_META).map_err(sm_err)?,
            self.inner.snap.get(SNAP_DATA).map_err(sm_err)?,
        ) else {
            return Ok(None);
        };
        let meta: SnapshotMeta = serde_json::from_slice(&meta).map_err(sm_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
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
pub struct SnapshotBuilder {
    store: StateMachineStore,
    captured: Result<Captured, StorageError>,
}

/// A builder dropped unused closes its capture, so applies stop recording for it.
impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        if let Ok(c) = &self.captured {
            self.store.inner.close_capture(c.seq);
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
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
        // On a thread of its own at a lower CPU priority: copying the whole state must not take
        // the CPU from replication, apply and delivery (all three nodes build at the same log
        // index; at normal priority their builds stalled delivery under load for a second).
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("hookd-snapshot".into())
            .spawn(move || {
                lower_priority();
                let data = store
                    .dump(&gen, seq)
                    .and_then(|body| postcard::to_stdvec(&body).map_err(sm_err));
                let _ = tx.send(data);
            })
            .map_err(sm_err)?;
        let data = rx
            .await
            .map_err(|_| sm_err(std::io::Error::other("snapshot builder thread ended")))??;
        drop(building);
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let copied_ms = started.elapsed().as_millis() as u64;
        self.store.save_snapshot(&meta, &data).await?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = data.len(),
            copied_ms,
            saved_ms = started.elapsed().as_millis() as u64,
            "built snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
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
    fn tree(&self, t: Table) -> sled::Tree {
        self.inner.current().table(t).clone()
    }

    /// A stored job record as the job stands: with the cursor of its guard.
    fn job(&self, guards: &sled::Tree, bytes: &[u8]) -> Result<Job, StateFault> {
        let mut job = state::decode_job(bytes)?;
        let guard = guards
            .get(job.id.as_bytes())
            .map_err(StateFault::Storage)?
            .and_then(|b| state::Guard::decode(&b));
        if let Some(g) = guard {
            g.apply_to(&mut job);
        }
        Ok(job)
    }

    pub fn get_job(&self, id: &str) -> Result<Option<Job>, StateFault> {
        match self.tree(Table::Jobs).get(id.as_bytes()) {
            Ok(Some(bytes)) => self.job(&self.tree(Table::Guards), &bytes).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(StateFault::Storage(e)),
        }
    }

    /// Up to `limit` jobs with ids strictly after `after`, in id order, and whether more follow.
    pub fn list_jobs(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Job>, bool), StateFault> {
        let tree = self.tree(Table::Jobs);
        let guards = self.tree(Table::Guards);
        let iter = match after {
            Some(a) => tree.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => tree.iter(),
        };
        let mut jobs = Vec::with_capacity(limit.min(1024));
        for item in iter {
            let (_, v) = item.map_err(StateFault::Storage)?;
            if jobs.len() == limit {
                return Ok((jobs, true));
            }
            jobs.push(self.job(&guards, &v)?);
        }
        Ok((jobs, false))
    }

    /// Changes applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Every job, in id order (for rebuilding the dispatcher's index).
    pub fn all_jobs(&self) -> impl Iterator<Item = Result<Job, StateFault>> {
        let (view, guards) = (self.clone(), self.tree(Table::Guards));
        self.tree(Table::Jobs).iter().map(move |item| {
            let (_, v) = item.map_err(StateFault::Storage)?;
            view.job(&guards, &v)
        })
    }

    pub fn get_run(&self, id: &str) -> Result<Option<Run>, StateFault> {
        match self.tree(Table::Runs).get(id.as_bytes()) {
            Ok(Some(bytes)) => state::decode_run(&bytes).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(StateFault::Storage(e)),
        }
    }

    /// A job's runs, newest first, optionally only those with `status`.
    pub fn job_runs(
        &self,
        job_id: &str,
        status: Option<RunStatus>,
        limit: usize,
    ) -> Result<Vec<Run>, StateFault> {
        let list = match self.tree(Table::JobRuns).get(job_id.as_bytes()) {
            Ok(Some(bytes)) => state::decode_run_list(&bytes)?,
            Ok(None) => Vec::new(),
            Err(e) => return Err(StateFault::Storage(e)),
        };
        let mut runs = Vec::new();
        for (_, id) in list.iter().rev() {
            if runs.len() == limit {
                break;
            }
            if let Some(run) = self.get_run(id)? {
                if status.is_none_or(|s| run.status == s) {
                    runs.push(run);
                }
            }
        }
        Ok(runs)
    }

    /// Runs across jobs with `status`, newest due first.
    pub fn runs_with_status(
        &self,
        status: RunStatus,
        limit: usize,
    ) -> Result<Vec<Run>, StateFault> {
        let mut runs = Vec::new();
        for item in self
            .tree(Table::ByStatus)
            .scan_prefix(state::status_prefix(status))
            .rev()
        {
            if runs.len() == limit {
                break;
            }
            let (key, _) = item.map_err(StateFault::Storage)?;
            let prefix = state::status_prefix(status).len() + 8;
            let id = String::from_utf8_lossy(&key[prefix.min(key.len())..]).into_owned();
            if let Some(run) = self.get_run(&id)? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// Every run that still needs a delivery attempt (from the status index).
    pub fn open_runs(&self) -> Result<Vec<Run>, StateFault> {
        let mut runs = Vec::new();
        // The open statuses a run is stored with (`InFlight` is only ever shown, not stored).
        for status in [RunStatus::Pending, RunStatus::Retrying] {
            runs.extend(self.runs_with_status(status, usize::MAX)?);
        }
        Ok(runs)
    }

    /// Number of jobs stored.
    pub fn job_count(&self) -> usize {
        self.tree(Table::Jobs).len()
    }

    /// API addresses recorded by `SetNodeInfo`, by node id.
    pub fn node_api_addrs(&self) -> Vec<(NodeId, String)> {
        self.tree(Table::Nodes)
            .iter()
            .filter_map(|item| item.ok())
            .filter_map(|(k, v)| {
                let id = u64::from_be_bytes(k.as_ref().try_into().ok()?);
                Some((id, String::from_utf8_lossy(&v).into_owned()))
            })
            .collect()
    }

    /// The cluster id, once the first leader has recorded it.
    pub fn cluster_id(&self) -> Option<String> {
        self.tree(Table::Misc)
            .get(state::CLUSTER_ID_KEY)
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A snapshot from a node of the previous format (JSON job records) installs and reads; one
    /// of a newer format is refused with an error that says so.
    #[tokio::test]
    async fn a_snapshot_of_the_previous_format_installs_and_a_newer_one_is_refused() {
        use openraft::storage::RaftStateMachine;
        use openraft::{CommittedLeaderId, LogId, StoredMembership};

        let job = state::tests::job_as_schema_2_wrote_it("old");
        let body = |format| SnapshotBody {
            format,
            tables: vec![("jobs".to_owned(), vec![(b"old".to_vec(), job.clone())])],
        };
        let meta = |index| SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s{index}"),
        };
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), 1).unwrap();
        let mut sm = store.state_machine();
        let data = |format| Box::new(Cursor::new(postcard::to_stdvec(&body(format)).unwrap()));

        let e = sm
            .install_snapshot(&meta(5), data(SNAPSHOT_FORMAT + 1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("newer hookd"), "{e}");
        assert!(store.view().get_job("old").unwrap().is_none());

        sm.install_snapshot(&meta(7), data(1)).await.unwrap();
        let read = store.view().get_job("old").unwrap().expect("job");
        assert_eq!(read.id, "old");
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(7));
    }
}
