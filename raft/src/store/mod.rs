//! sled-backed storage of one node: the Raft log and vote (`LogStore`), the state machine
//! (`StateMachineStore`), and the `meta` record that ties a data dir to one node.
//!
//! One `sled::Db` per node. Trees:
//! - `meta`: `record` → `MetaRecord` (schema version, node id), checked at open;
//! - `raft_meta`: `vote`, `committed`, `last_purged`;
//! - `raft_log`: index (8 bytes big-endian) → `Entry` (a format byte and postcard, or JSON as
//!   schemas 1 and 2 wrote it);
//! - `sm_meta`: `last_applied`, `last_membership`, `active_gen`, `snapshot_file`,
//!   `applied_bytes`;
//! - `sm_g{N}_{table}`: the state machine's tables of generation N (`Machine::TABLES`);
//! - `snapshot`: where schemas 1 and 2 kept the current snapshot; moved into a file at open.
//!
//! Beside the database, `DATA_DIR/snapshots/` holds the current snapshot's file (`snapfile.rs`),
//! named in `sm_meta`.
//!
//! Durability: every write openraft treats as durable is followed by `Disk::flush` before it is
//! acknowledged (DESIGN.md §2). A flush is database-wide: it covers every tree. sled's own flush
//! survives process crashes but not power loss; `disk.rs` says why and what it adds.

mod disk;
mod log;
mod sm;
pub mod snapfile;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use disk::Disk;
pub use log::LogStore;
pub use sm::{StateMachineStore, StateView};

use crate::machine::Machine;
use crate::typ::{NodeId, StorageError, StorageIOError};

/// Version of what this crate persists itself: the log's entries, the snapshot files, the meta
/// record. The machine's own formats (its records, its commands) have their own version,
/// `Machine::FORMAT_VERSION`. A data dir of a newer version of either is refused; one of an
/// older version this code still reads is upgraded in place.
///
/// - 1: the first.
/// - 2: nothing of this crate's formats changed (the machine's did; both were one number then).
/// - 3: log entries are postcard behind a format byte (format 2, `log.rs`) instead of JSON;
///   snapshots are format 2. Entries in the older form are read as they are and replaced as
///   they are rewritten (a purge).
pub const STORE_VERSION: u32 = 3;
/// The oldest store version this code reads.
pub const STORE_READABLE_FROM: u32 = 1;

/// The version a data dir records for older binaries, which know only this one number (until
/// the machine's format got a version of its own, one number covered both): it grows whenever
/// either version grows, so an older binary refuses a data dir that a newer one changed.
fn data_dir_version(store: u32, machine: u32) -> u32 {
    (store + machine).saturating_sub(STORE_VERSION)
}

/// Whether versions `found` are readable here, given what this code writes (`current`) and
/// the oldest it reads: the versions found (store, machine), or the one refused and its range.
fn readable(
    found: (u32, u32),
    store: std::ops::RangeInclusive<u32>,
    machine: std::ops::RangeInclusive<u32>,
) -> Result<(), (&'static str, u32, std::ops::RangeInclusive<u32>)> {
    if !store.contains(&found.0) {
        return Err(("schema", found.0, store));
    }
    if !machine.contains(&found.1) {
        return Err(("record format", found.1, machine));
    }
    Ok(())
}

/// Why a data dir cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the database in {path}: {source}")]
    Sled { path: String, source: sled::Error },
    #[error(
        "data dir {path} belongs to node {found}, not node {expected}; \
         point --data-dir at this node's own directory"
    )]
    NodeIdMismatch {
        path: String,
        found: NodeId,
        expected: NodeId,
    },
    #[error(
        "data dir {path} has {what} version {found}; this hookd reads versions \
         {oldest} to {expected} (a newer hookd wrote it: run that version)"
    )]
    SchemaMismatch {
        path: String,
        what: &'static str,
        found: u32,
        oldest: u32,
        expected: u32,
    },
    #[error("data dir {path} has an unreadable meta record: {detail}")]
    Corrupt { path: String, detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MetaRecord {
    /// `data_dir_version`: what older binaries check.
    schema_version: u32,
    /// `STORE_VERSION` and `Machine::FORMAT_VERSION` as written; absent in data dirs of
    /// binaries that had one number for both (it is then each of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    machine_format: Option<u32>,
    node_id: NodeId,
    /// Set when this node was removed from its cluster: why. Such a data dir never serves again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    removed: Option<String>,
    /// Set when this node started with `--join` on an empty data dir (it did not form the
    /// cluster): memberships it replays that predate its addition do not name it, so only the
    /// leader's word tells it it was removed. Older versions ignore the field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    joined: bool,
    /// Written while a change to several keys is half made (`Meta::hold`): the (store,
    /// machine format) versions the record really stands for. Both version fields then say
    /// `HELD`, which no release reads, so a release that predates this field (and cannot
    /// finish the change) refuses the data dir; this one finishes the change at open and
    /// writes the record as it was (`Meta::settle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held: Option<(u32, u32)>,
}

/// The versions a held meta record shows to releases that predate `MetaRecord::held`.
const HELD: u32 = u32::MAX;

const META_KEY: &[u8] = b"record";

impl MetaRecord {
    /// The record this code writes with the machine's records in `format`.
    fn current(node_id: NodeId, format: u32) -> MetaRecord {
        MetaRecord {
            schema_version: data_dir_version(STORE_VERSION, format),
            store_version: Some(STORE_VERSION),
            machine_format: Some(format),
            node_id,
            removed: None,
            joined: false,
            held: None,
        }
    }

    /// (store version, machine format version) of the data dir.
    fn versions(&self) -> (u32, u32) {
        self.held.unwrap_or((
            self.store_version.unwrap_or(self.schema_version),
            self.machine_format.unwrap_or(self.schema_version),
        ))
    }

    /// The record as written while a change is half made (`Meta::hold`).
    fn held(&self) -> MetaRecord {
        MetaRecord {
            schema_version: HELD,
            store_version: Some(HELD),
            machine_format: Some(HELD),
            held: Some(self.versions()),
            ..self.clone()
        }
    }

    /// The record as it stands, held or not.
    fn settled(&self) -> MetaRecord {
        match self.held {
            None => self.clone(),
            Some((store, machine)) => MetaRecord {
                schema_version: data_dir_version(store, machine),
                store_version: Some(store),
                machine_format: Some(machine),
                held: None,
                ..self.clone()
            },
        }
    }
}

/// The data dir's meta record, as written last: shared by the store and its state machine,
/// which raises the recorded format once the cluster's is raised (`Machine::cluster_format`),
/// so a binary that cannot read the new format refuses the data dir by its meta record.
#[derive(Clone)]
pub(crate) struct Meta {
    tree: sled::Tree,
    disk: Disk,
    state: Arc<std::sync::Mutex<MetaState>>,
}

/// The record as it stands, and whether it was last written held.
struct MetaState {
    record: MetaRecord,
    held: bool,
}

impl Meta {
    /// The record as `tree` holds it (held or not: `settle` writes it as it stands).
    fn new(tree: sled::Tree, disk: Disk, record: MetaRecord) -> Meta {
        Meta {
            tree,
            disk,
            state: Arc::new(std::sync::Mutex::new(MetaState {
                held: record.held.is_some(),
                record: record.settled(),
            })),
        }
    }

    /// Writes `record`, flushed (blocking), and keeps it as the current one.
    fn write(tree: sled::Tree, disk: Disk, record: MetaRecord) -> Result<Meta, sled::Error> {
        let meta = Meta::new(tree, disk, record.clone());
        meta.put(&record)?;
        meta.disk.flush_blocking()?;
        Ok(meta)
    }

    fn put(&self, record: &MetaRecord) -> Result<(), sled::Error> {
        let bytes = serde_json::to_vec(record).unwrap_or_default();
        self.tree.insert(META_KEY, bytes).map(drop)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MetaState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self) -> MetaRecord {
        self.lock().record.clone()
    }

    /// The machine format the data dir is recorded in.
    pub(crate) fn machine_format(&self) -> u32 {
        self.lock().record.versions().1
    }

    /// Changes the record with `change` and writes it (the caller flushes); a no-op when
    /// `change` leaves it as it is. A held record stays held.
    fn update(&self, change: impl FnOnce(&mut MetaRecord)) -> Result<bool, sled::Error> {
        let mut state = self.lock();
        let mut next = state.record.clone();
        change(&mut next);
        if next == state.record {
            return Ok(false);
        }
        self.put(&if state.held {
            next.held()
        } else {
            next.clone()
        })?;
        state.record = next;
        Ok(true)
    }

    /// Writes the record held (`on`) or as it stands, unless it already is so; not flushed:
    /// sled recovers a prefix of its writes, so a hold written before a change's first key
    /// and released after its last covers it after any crash.
    pub(crate) fn hold(&self, on: bool) -> Result<(), sled::Error> {
        let mut state = self.lock();
        if state.held != on {
            let record = &state.record;
            self.put(&if on { record.held() } else { record.clone() })?;
            state.held = on;
        }
        Ok(())
    }

    /// Writes a record found held at open as it stands, flushed, once the change it covered
    /// is finished. Blocking.
    pub(super) fn settle(&self) -> Result<(), sled::Error> {
        if self.lock().held {
            self.hold(false)?;
            self.disk.flush_blocking()?;
        }
        Ok(())
    }

    /// Records the machine's records as being in `format` from now on, flushed, unless the
    /// record says a newer one already. Blocking.
    pub(crate) fn raise_format(&self, format: u32) -> Result<(), sled::Error> {
        let raised = self.update(|r| {
            let (store, found) = r.versions();
            if format > found {
                r.machine_format = Some(format);
                r.store_version = Some(store);
                r.schema_version = data_dir_version(store, format);
            }
        })?;
        if raised {
            self.disk.flush_blocking()?;
            tracing::info!(
                format,
                "the data dir's record format raised with the cluster's"
            );
        }
        Ok(())
    }
}

/// An opened data dir.
pub struct Store<M> {
    disk: Disk,
    meta: Meta,
    log: LogStore<M>,
    sm: StateMachineStore<M>,
    fresh: bool,
    node_id: NodeId,
    removed: Option<String>,
    /// As recorded at open (`MetaRecord::joined`).
    joined: bool,
}

impl<M> Clone for Store<M> {
    fn clone(&self) -> Self {
        Store {
            disk: self.disk.clone(),
            meta: self.meta.clone(),
            log: self.log.clone(),
            sm: self.sm.clone(),
            fresh: self.fresh,
            node_id: self.node_id,
            removed: self.removed.clone(),
            joined: self.joined,
        }
    }
}

impl<M: Machine> Store<M> {
    /// Opens (or creates) the database under `dir` for `node_id`, with `machine` as its state
    /// machine, refusing a data dir that belongs to another node or another schema version.
    pub fn open(dir: &Path, node_id: NodeId, machine: Arc<M>) -> Result<Store<M>, OpenError> {
        let path = dir.display().to_string();
        let sled_err = |source| OpenError::Sled {
            path: path.clone(),
            source,
        };
        let mut sled_config = sled::Config::new()
            // Claims and reads are point lookups; 64 MiB (it was 128) keeps a node with 1M jobs
            // under 512 MiB while it builds a snapshot (docs/decisions.md#sled-cache).
            .cache_capacity(64 << 20)
            .mode(sled::Mode::LowSpace);
        if crate::planted::is(crate::planted::ACK_BEFORE_FLUSH) {
            // Without the explicit flushes, only sled's background flusher would save the
            // planted bug from being seen; switch it off too.
            sled_config = sled_config.flush_every_ms(None);
        }
        // Created owner-only (SPEC §7): the data holds job headers and bodies. A dir that
        // exists already keeps its mode. Both before `Disk::open`, which syncs the data dir, so
        // their entries in it are durable before anything is written into them.
        let snap_dir = dir.join("snapshots");
        for sub in [dir.join("db"), snap_dir.clone()] {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(sub)
                .map_err(|e| sled_err(sled::Error::Io(e)))?;
        }
        let disk = Disk::open(sled_config, &dir.join("db")).map_err(sled_err)?;
        let db = disk.db();
        let tree = db.open_tree("meta").map_err(sled_err)?;
        let (meta, fresh) = match tree.get(META_KEY).map_err(sled_err)? {
            Some(bytes) => {
                let rec: MetaRecord =
                    serde_json::from_slice(&bytes).map_err(|e| OpenError::Corrupt {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?;
                let found = rec.versions();
                let store = STORE_READABLE_FROM..=STORE_VERSION;
                let machine = M::FORMAT_READABLE_FROM..=M::FORMAT_VERSION;
                if let Err((what, found, range)) = readable(found, store, machine) {
                    return Err(OpenError::SchemaMismatch {
                        path,
                        what,
                        found,
                        oldest: *range.start(),
                        expected: *range.end(),
                    });
                }
                if rec.node_id != node_id {
                    return Err(OpenError::NodeIdMismatch {
                        path,
                        found: rec.node_id,
                        expected: node_id,
                    });
                }
                // Records stay in the form the previous release writes until the cluster's
                // format is raised (`Machine::FORMAT_PREVIOUS_RELEASE`), so that release can
                // still open this dir; an older form is upgraded as far as that release would.
                let to = (STORE_VERSION, found.1.max(M::FORMAT_PREVIOUS_RELEASE));
                if found != to {
                    // Every change since is read from the older form; only the tables the
                    // machine dropped go. Then the new version is recorded, so an older hookd
                    // no longer opens this dir. Both steps may run again after a crash between
                    // them.
                    for name in db.tree_names() {
                        let n = String::from_utf8_lossy(&name);
                        let dropped = M::DROPPED_TABLES
                            .iter()
                            .any(|t| n.strip_suffix(t).is_some_and(|g| g.ends_with('_')));
                        if n.starts_with("sm_g") && dropped {
                            db.drop_tree(&name).map_err(sled_err)?;
                        }
                    }
                    let mut next = MetaRecord::current(node_id, to.1);
                    (next.removed, next.joined) = (rec.removed, rec.joined);
                    let meta = Meta::write(tree, disk.clone(), next).map_err(sled_err)?;
                    tracing::info!(from = ?found, ?to, "data dir schema upgraded");
                    (meta, false)
                } else {
                    (Meta::new(tree, disk.clone(), rec), false)
                }
            }
            None => {
                let rec = MetaRecord::current(node_id, M::FORMAT_PREVIOUS_RELEASE);
                (
                    Meta::write(tree, disk.clone(), rec).map_err(sled_err)?,
                    true,
                )
            }
        };
        let MetaRecord {
            removed, joined, ..
        } = meta.record();
        // What a killed process left written but unsynced becomes durable before this node acts
        // on it (a restored leader reads no earlier than its last entry: `ReadFloor` in
        // `replica.rs`).
        disk.flush_blocking().map_err(sled_err)?;
        let log = LogStore::open(&disk).map_err(sled_err)?;
        let sm = StateMachineStore::open(&disk, snap_dir, machine, meta.clone()).map_err(|e| {
            OpenError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            }
        })?;
        // The cluster's format may have been raised by an entry applied (or a snapshot
        // installed) just before a crash that came before the record followed it.
        if let Some(format) = M::cluster_format(&sm.view().tables()) {
            meta.raise_format(format).map_err(sled_err)?;
        }
        Ok(Store {
            disk,
            meta,
            log,
            sm,
            fresh,
            node_id,
            removed,
            joined,
        })
    }

    /// The (store, machine format) versions the meta record holds now.
    #[cfg(test)]
    fn recorded_versions(&self) -> (u32, u32) {
        self.meta.record().versions()
    }

    /// True when this open created the data dir: the node has never been part of a cluster.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Why this node was removed from its cluster, if it was (`mark_removed`).
    pub fn removed(&self) -> Option<String> {
        self.removed.clone()
    }

    /// Whether this data dir was recorded, when it was opened, as one that joined an existing
    /// cluster (`mark_joined`) rather than forming it.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Records, flushed, that this node starts with `--join` on an empty data dir.
    pub fn mark_joined(&self) -> Result<(), sled::Error> {
        self.meta.update(|r| r.joined = true)?;
        self.disk.flush_blocking()
    }

    /// Records, flushed, that this node was removed from its cluster: the data dir is refused
    /// from then on.
    pub async fn mark_removed(&self, reason: &str) -> Result<(), sled::Error> {
        self.meta.update(|r| r.removed = Some(reason.to_string()))?;
        self.disk.flush().await
    }

    pub fn log_store(&self) -> LogStore<M> {
        self.log.clone()
    }

    pub fn state_machine(&self) -> StateMachineStore<M> {
        self.sm.clone()
    }

    /// Read access to the applied state.
    pub fn view(&self) -> StateView {
        self.sm.view()
    }

    /// Flushes everything to disk (used on shutdown).
    pub async fn flush(&self) -> Result<(), sled::Error> {
        self.disk.flush().await
    }

    /// Lets the change being applied finish, applies nothing more, and flushes: the last step
    /// of a stop, once Raft has shut down.
    pub async fn close(&self) -> Result<(), sled::Error> {
        let sm = self.sm.clone();
        tokio::task::spawn_blocking(move || sm.close())
            .await
            .map_err(|e| sled::Error::Io(std::io::Error::other(e)))?;
        self.flush().await
    }
}

fn io_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read(&e).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write(&e).into()
}

#[cfg(test)]
mod tests;
