//! The boundary between replication and the application: `Machine`, the deterministic state
//! machine this crate replicates, stores and snapshots without knowing what its commands mean.
//!
//! A machine keeps its state in named key-value tables. `apply` reads and writes them through
//! `Tx`: reads go to the tables as committed, overlaid by the batch's own writes, which are kept
//! in memory and committed at the end of the batch in one write-only sled transaction together
//! with `last_applied`. Readers see the tables through `AppliedTables` (one generation, pinned).
//! Tables, keys and values are opaque here: snapshots copy them byte for byte.

use std::fmt::Debug;
use std::ops::Bound;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::NodeId;

/// The log position of the entry being applied; with the slot in a batch it numbers every
/// command uniquely, and its leader's term and id identify the proposing leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    pub index: u64,
    pub term: u64,
    pub leader: NodeId,
}

/// Why applying a batch stopped: a storage error, or a fault of the machine (a record it cannot
/// read), which fails the apply and so stops the Raft core rather than diverge. Nothing of the
/// batch is committed either way.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("{0}")]
    Machine(String),
}

impl TxError {
    /// A fault of the machine; `apply` fails with `message`.
    pub fn abort(message: impl std::fmt::Display) -> TxError {
        TxError::Machine(message.to_string())
    }
}

/// A failed read of the applied state.
#[derive(Debug, thiserror::Error)]
#[error("storage error: {0}")]
pub struct ReadError(#[from] pub(crate) sled::Error);

/// A replicated, deterministic state machine over named tables.
///
/// `apply` must be a function of the command, its position and the tables alone (no clock, no
/// randomness, no I/O besides the tables): every node applies the same entries to the same
/// state and must end in the same state.
pub trait Machine: Send + Sync + 'static {
    /// The payload of a normal log entry. Persisted in the log (postcard) and sent between nodes
    /// (JSON): its encodings are formats.
    type Command: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static;
    /// What applying a command returns to its proposer.
    type Output: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static;
    /// What an applied batch changed, for `applied`.
    type Touched: Default + Send + 'static;

    /// The tables, in index order. Their names are persisted (tree names, snapshot files): only
    /// ever append.
    const TABLES: &'static [&'static str];
    /// Tables older versions had and this one dropped: skipped in an older snapshot.
    const DROPPED_TABLES: &'static [&'static str];
    /// Version of the machine's own persisted formats: its records (in the tables and
    /// snapshots) and its commands (in the log). A data dir recorded with a newer one is
    /// refused; one from `FORMAT_READABLE_FROM` on is upgraded in place (`DROPPED_TABLES` go).
    const FORMAT_VERSION: u32;
    const FORMAT_READABLE_FROM: u32;
    /// The newest format the previous release writes and reads. Until the cluster's format is
    /// raised (`cluster_format`, by `record_cluster_format`: the operator's finalize, or the
    /// creation of a new cluster) this code writes nothing newer, so any node can go back to
    /// the previous release with its data dir.
    const FORMAT_PREVIOUS_RELEASE: u32;
    /// Most commands one `batch` may hold.
    const BATCH_MAX: usize;

    /// Applies `cmd`, the payload of the entry at `at`.
    fn apply(
        &self,
        tx: &Tx<'_>,
        at: LogPosition,
        cmd: &Self::Command,
        touched: &mut Self::Touched,
    ) -> Result<Self::Output, TxError>;
    /// The output of an entry without a command (blank, membership).
    fn nothing() -> Self::Output;

    /// Group commit's envelope: many proposals in one entry. `unbatch` splits its output into
    /// one per command (`Err` if it is not the output of a batch of `n`).
    fn batch(commands: Vec<Self::Command>) -> Self::Command;
    fn unbatch(output: Self::Output, n: usize) -> Result<Vec<Self::Output>, Self::Output>;
    /// A rough encoded size of `cmd`, to bound a batch.
    fn approx_bytes(cmd: &Self::Command) -> usize;
    /// Whether `cmd` may be refused while the leader's write backlog is over its bound.
    fn sheddable(cmd: &Self::Command) -> bool;
    /// Whether `cmd` may be proposed again when the fate of its first proposal is unknown (a
    /// leader took it, then went away or did not commit it in time): applied twice it leaves
    /// the state as applied once, and the second apply answers as the first did.
    fn repeatable(cmd: &Self::Command) -> bool;
    /// Checks a command another node forwarded to this one (`/forward/write`) before it is
    /// proposed, with the same rules the embedding crate applies to its own clients: nothing a
    /// peer sends may reach the log unchecked. `Err` is the output the forwarding node gets
    /// back instead; nothing is proposed.
    fn check_forwarded(cmd: &Self::Command) -> Result<(), Self::Output>;

    /// The command that records a node's API address, and where the applied state has them.
    fn record_node(node_id: NodeId, api_addr: String) -> Self::Command;
    fn node_api_addrs(tables: &AppliedTables) -> Vec<(NodeId, String)>;
    /// The command that records the cluster id (only its first application counts), and the
    /// recorded one.
    fn record_cluster_id(cluster_id: String) -> Self::Command;
    fn cluster_id(tables: &AppliedTables) -> Option<String>;
    /// The command that raises the cluster's format to `format` (never lowers it), the
    /// recorded format (none: never recorded, a cluster made by a release before there was
    /// one, whose format is `FORMAT_PREVIOUS_RELEASE`), and the format a command records, if
    /// it is (or holds) such a command.
    fn record_cluster_format(format: u32) -> Self::Command;
    fn cluster_format(tables: &AppliedTables) -> Option<u32>;
    fn format_set_by(cmd: &Self::Command) -> Option<u32>;
    /// Restoring a backup into a new cluster: whether the row `key` of table `table` (an index
    /// into `TABLES`) belongs to the old cluster's identity (its nodes' records, its cluster
    /// id) and is left out, and the row that records the new cluster id: (table, key, value).
    fn identity_row(table: usize, key: &[u8]) -> bool;
    fn cluster_id_row(cluster_id: &str) -> (usize, Vec<u8>, Vec<u8>);

    /// Brings what the machine derives from its own tables (indexes) up to date in a state
    /// that may lack it: a data dir or a snapshot written by an older version. Called at open
    /// and for each received snapshot, before either state is read or applied to. Idempotent
    /// (it may run again after a crash); `Err` stops the node.
    fn complete(_tables: &TableWriter) -> Result<(), String> {
        Ok(())
    }

    /// Called after each applied batch has committed, with what it changed.
    fn applied(&self, touched: Self::Touched);
    /// Called after a snapshot replaced the whole state.
    fn replaced(&self);
}

/// The value each key had when a capture opened, recorded at its first change since: `None`
/// for a key that did not exist.
pub(crate) type PreImages = std::collections::HashMap<(usize, Vec<u8>), Option<Vec<u8>>>;
/// The pre-images of every open capture (a snapshot being built, `store/sm.rs`), by its
/// sequence number.
pub(crate) type PreImageSets = std::collections::HashMap<u64, PreImages>;

/// A batch's writes not yet committed, one map per table: key → the new value, `None` for a
/// removal.
pub(crate) type Writes = Vec<std::collections::BTreeMap<Vec<u8>, Option<sled::IVec>>>;

/// The tables while one batch applies, in `Machine::TABLES` order: the committed state overlaid
/// by the batch's own writes so far. Only the batch's apply writes to these trees (a snapshot
/// install or a data dir's completion never runs beside it), so a read of a key the batch has
/// not written sees exactly what a transaction would. Each change first records the key's
/// pre-image for the snapshots being built (`store/sm.rs`).
pub struct Tx<'a> {
    pub(crate) trees: &'a [sled::Tree],
    pub(crate) writes: std::cell::RefCell<Writes>,
    pub(crate) captures: &'a std::sync::Mutex<PreImageSets>,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(
        trees: &'a [sled::Tree],
        captures: &'a std::sync::Mutex<PreImageSets>,
    ) -> Self {
        Tx {
            trees,
            writes: std::cell::RefCell::new(vec![Default::default(); trees.len()]),
            captures,
        }
    }

    fn tree(&self, table: usize) -> Result<&sled::Tree, TxError> {
        self.trees
            .get(table)
            .ok_or_else(|| TxError::abort(format!("no table {table}")))
    }

    pub fn get(&self, table: usize, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        if let Some(written) = self.writes.borrow().get(table).and_then(|w| w.get(key)) {
            return Ok(written.as_ref().map(|v| v.to_vec()));
        }
        self.committed(table, key)
    }

    pub fn put(&self, table: usize, key: &[u8], value: Vec<u8>) -> Result<(), TxError> {
        self.change(table, key, Some(value.into()))
    }

    pub fn del(&self, table: usize, key: &[u8]) -> Result<(), TxError> {
        self.change(table, key, None)
    }

    fn committed(&self, table: usize, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        Ok(self.tree(table)?.get(key)?.map(|v| v.to_vec()))
    }

    fn change(&self, table: usize, key: &[u8], value: Option<sled::IVec>) -> Result<(), TxError> {
        self.before_change(table, key)?;
        let mut writes = self.writes.borrow_mut();
        let table = writes
            .get_mut(table)
            .ok_or_else(|| TxError::abort(format!("no table {table}")))?;
        table.insert(key.to_vec(), value);
        Ok(())
    }

    /// Records `key`'s committed value in every open capture that has none for it yet. This
    /// runs before the batch commits, so a build that closes its capture before this call had
    /// read the key before the change, and one that closes it after gets the pre-image.
    fn before_change(&self, table: usize, key: &[u8]) -> Result<(), TxError> {
        let mut captures = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        if captures.is_empty() {
            return Ok(());
        }
        let id = (table, key.to_vec());
        if captures.values().all(|pre| pre.contains_key(&id)) {
            return Ok(());
        }
        let value = self.committed(table, key)?;
        for pre in captures.values_mut() {
            pre.entry(id.clone()).or_insert_with(|| value.clone());
        }
        Ok(())
    }

    /// The batch's writes, to commit.
    pub(crate) fn into_writes(self) -> Writes {
        self.writes.into_inner()
    }
}

/// The applied tables of one generation, for reading. A snapshot installed meanwhile replaces
/// the generation, not what this reads.
#[derive(Clone)]
pub struct AppliedTables {
    pub(crate) trees: std::sync::Arc<Vec<sled::Tree>>,
    /// The generation's number (`Shown::gen`).
    pub(crate) gen: u64,
    pub(crate) order: Order,
}

/// Orders reads of a state machine's applied tables with the changes `store/sm.rs` makes to
/// them, so that a reader that has seen any key of a change sees all of it after:
///
/// - A change is shown before its first key is written and until its last one is
///   (`Order::change`). A read of one key (`AppliedTables::get`) takes the key's new value
///   from the change shown, so it never waits for a change being written. It sees the state
///   before the change only until the change is shown, and the key in sled once it is no
///   longer shown, when every key of the change is written.
/// - The rows of a range are each read under `lock`, which a change holds exclusively while
///   it writes its keys.
///
/// One per state machine: no other shard, nor the log, waits on it.
#[derive(Clone, Default)]
pub(crate) struct Order(std::sync::Arc<OrderState>);

#[derive(Default)]
struct OrderState {
    /// Held exclusively while a change writes its keys; `true` once the store is closed: no
    /// change is made after that.
    lock: std::sync::RwLock<bool>,
    /// The change being written, if it is shown.
    shown: std::sync::RwLock<Option<std::sync::Arc<Shown>>>,
}

/// A change being written, as reads see it: the writes of an applied batch to the tables of
/// generation `gen`.
pub(crate) struct Shown {
    pub(crate) gen: u64,
    pub(crate) writes: Writes,
}

impl Order {
    /// Makes a change with `write`, showing `shown` (what it writes to the tables) to reads
    /// while it does. Waits for the reads of ranges' rows in progress; refused once closed.
    pub(crate) fn change<T>(
        &self,
        shown: Option<std::sync::Arc<Shown>>,
        write: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let closed = self.0.lock.write().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(std::io::Error::other("the state machine is closed"));
        }
        let show = |shown| *self.0.shown.write().unwrap_or_else(|p| p.into_inner()) = shown;
        show(shown);
        let written = write();
        // Also after a failed write: the store fails with it, and what sled holds is then all
        // that is left to read.
        show(None);
        drop(closed);
        written
    }

    /// Waits for a change being made to finish; no change is made after.
    pub(crate) fn close(&self) {
        *self.0.lock.write().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// The value the change shown gives `key` of `table` in generation `gen`, if it writes it:
    /// `Some(None)` for a removal.
    fn shown(&self, gen: u64, table: usize, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let shown = self
            .0
            .shown
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        if shown.gen != gen {
            return None;
        }
        let value = shown.writes.get(table)?.get(key)?;
        Some(value.as_ref().map(|v| v.to_vec()))
    }
}

/// A range's rows, each read under the state machine's `Order`.
struct Ordered<I> {
    order: Order,
    rows: I,
}

impl<I: Iterator> Iterator for Ordered<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let _order = self.order.0.lock.read().unwrap_or_else(|p| p.into_inner());
        self.rows.next()
    }
}

/// A key and its value.
pub type Row = (Vec<u8>, Vec<u8>);

impl AppliedTables {
    fn tree(&self, table: usize) -> Result<&sled::Tree, ReadError> {
        self.trees
            .get(table)
            .ok_or_else(|| ReadError(sled::Error::Unsupported(format!("no table {table}"))))
    }

    pub fn get(&self, table: usize, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        let tree = self.tree(table)?;
        if let Some(value) = self.order.shown(self.gen, table, key) {
            return Ok(value);
        }
        Ok(tree.get(key)?.map(|v| v.to_vec()))
    }

    /// The rows of `table` with keys in `(from, to)`, in key order or (`reverse`) against it.
    pub fn range(
        &self,
        table: usize,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        reverse: bool,
    ) -> Box<dyn Iterator<Item = Result<Row, ReadError>> + Send> {
        let rows = match self.tree(table) {
            Ok(tree) => tree.range::<Vec<u8>, _>((from, to)),
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let row = |item: sled::Result<(sled::IVec, sled::IVec)>| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(ReadError)
        };
        let order = self.order.clone();
        if reverse {
            let rows = rows.rev();
            Box::new(Ordered { order, rows }.map(row))
        } else {
            Box::new(Ordered { order, rows }.map(row))
        }
    }

    /// Rows in `table`.
    pub fn len(&self, table: usize) -> usize {
        self.tree(table).map_or(0, |t| t.len())
    }

    pub fn is_empty(&self, table: usize) -> bool {
        self.len(table) == 0
    }
}

/// Writes to the tables of one generation outside `apply`, for `Machine::complete` only: the
/// state it completes is not yet read or applied to by anyone.
pub struct TableWriter {
    pub(crate) tables: AppliedTables,
    pub(crate) flush: Box<dyn Fn() -> Result<(), sled::Error> + Send + Sync>,
}

impl TableWriter {
    /// The tables as they stand, for reading.
    pub fn tables(&self) -> &AppliedTables {
        &self.tables
    }

    /// Inserts `rows` into `table`, in order (not atomically: `complete` marks what it
    /// finished only once it has flushed it).
    pub fn insert(&self, table: usize, rows: Vec<Row>) -> Result<(), ReadError> {
        let tree = self.tables.tree(table)?;
        for (k, v) in rows {
            tree.insert(k, v)?;
        }
        Ok(())
    }

    /// Removes every row of `table`.
    pub fn clear(&self, table: usize) -> Result<(), ReadError> {
        Ok(self.tables.tree(table)?.clear()?)
    }

    /// Makes everything written so far durable (what a power loss would otherwise lose).
    pub fn flush(&self) -> Result<(), ReadError> {
        Ok((self.flush)()?)
    }
}

/// A minimal machine for this crate's own tests and tools: one table of keys and values.
pub mod kv {
    use serde::{Deserialize, Serialize};

    use super::{AppliedTables, LogPosition, Machine, Tx, TxError};
    use crate::NodeId;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Cmd {
        Put { key: String, value: String },
        Del { key: String },
        Batch(Vec<Cmd>),
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Out {
        Done,
        /// The index of the entry that applied the command.
        At(u64),
        Batch(Vec<Out>),
    }

    /// Keys starting with this are node records (`record_node`), `"cluster"` the cluster id,
    /// `"format"` the cluster's format.
    const NODE: &str = "node/";
    const CLUSTER: &str = "cluster";
    const FORMAT: &str = "format";

    #[derive(Default)]
    pub struct Kv;

    impl Machine for Kv {
        type Command = Cmd;
        type Output = Out;
        type Touched = ();
        const TABLES: &'static [&'static str] = &["kv"];
        const DROPPED_TABLES: &'static [&'static str] = &["old"];
        const FORMAT_VERSION: u32 = 4;
        const FORMAT_READABLE_FROM: u32 = 1;
        const FORMAT_PREVIOUS_RELEASE: u32 = 3;
        const BATCH_MAX: usize = 1024;

        fn apply(
            &self,
            tx: &Tx<'_>,
            at: LogPosition,
            cmd: &Cmd,
            _: &mut (),
        ) -> Result<Out, TxError> {
            match cmd {
                Cmd::Put { key, value } if key == CLUSTER => {
                    if tx.get(0, key.as_bytes())?.is_none() {
                        tx.put(0, key.as_bytes(), value.as_bytes().to_vec())?;
                    }
                }
                Cmd::Put { key, value } if key == FORMAT => {
                    let now = tx.get(0, key.as_bytes())?.and_then(|v| format_of(&v));
                    if value.parse::<u32>().ok() > now {
                        tx.put(0, key.as_bytes(), value.as_bytes().to_vec())?;
                    }
                }
                Cmd::Put { key, value } => tx.put(0, key.as_bytes(), value.as_bytes().to_vec())?,
                Cmd::Del { key } => tx.del(0, key.as_bytes())?,
                Cmd::Batch(cmds) => {
                    let outs = cmds
                        .iter()
                        .map(|c| self.apply(tx, at, c, &mut ()))
                        .collect::<Result<_, _>>()?;
                    return Ok(Out::Batch(outs));
                }
            }
            Ok(Out::At(at.index))
        }
        fn nothing() -> Out {
            Out::Done
        }
        fn batch(commands: Vec<Cmd>) -> Cmd {
            Cmd::Batch(commands)
        }
        fn unbatch(output: Out, n: usize) -> Result<Vec<Out>, Out> {
            match output {
                Out::Batch(outs) if outs.len() == n => Ok(outs),
                other => Err(other),
            }
        }
        fn approx_bytes(cmd: &Cmd) -> usize {
            match cmd {
                Cmd::Put { key, value } => 16 + key.len() + value.len(),
                Cmd::Del { key } => 16 + key.len(),
                Cmd::Batch(cmds) => cmds.iter().map(Self::approx_bytes).sum(),
            }
        }
        fn sheddable(_: &Cmd) -> bool {
            false
        }
        fn repeatable(_: &Cmd) -> bool {
            // A put answers with its log index, which a repeat would not match.
            false
        }
        fn check_forwarded(_: &Cmd) -> Result<(), Out> {
            Ok(())
        }
        fn record_node(node_id: NodeId, api_addr: String) -> Cmd {
            Cmd::Put {
                key: format!("{NODE}{node_id}"),
                value: api_addr,
            }
        }
        fn node_api_addrs(tables: &AppliedTables) -> Vec<(NodeId, String)> {
            tables
                .range(
                    0,
                    std::ops::Bound::Included(NODE.as_bytes().to_vec()),
                    std::ops::Bound::Unbounded,
                    false,
                )
                .filter_map(Result::ok)
                .map_while(|(k, v)| {
                    let k = String::from_utf8(k).ok()?;
                    let id = k.strip_prefix(NODE)?.parse().ok()?;
                    Some((id, String::from_utf8_lossy(&v).into_owned()))
                })
                .collect()
        }
        fn record_cluster_id(cluster_id: String) -> Cmd {
            Cmd::Put {
                key: CLUSTER.into(),
                value: cluster_id,
            }
        }
        fn cluster_id(tables: &AppliedTables) -> Option<String> {
            let v = tables.get(0, CLUSTER.as_bytes()).ok()??;
            Some(String::from_utf8_lossy(&v).into_owned())
        }
        fn record_cluster_format(format: u32) -> Cmd {
            Cmd::Put {
                key: FORMAT.into(),
                value: format.to_string(),
            }
        }
        fn cluster_format(tables: &AppliedTables) -> Option<u32> {
            format_of(&tables.get(0, FORMAT.as_bytes()).ok()??)
        }
        fn format_set_by(cmd: &Cmd) -> Option<u32> {
            match cmd {
                Cmd::Put { key, value } if key == FORMAT => value.parse().ok(),
                Cmd::Batch(cmds) => cmds.iter().filter_map(Self::format_set_by).max(),
                _ => None,
            }
        }
        fn identity_row(_: usize, key: &[u8]) -> bool {
            key == CLUSTER.as_bytes() || key.starts_with(NODE.as_bytes())
        }
        fn cluster_id_row(cluster_id: &str) -> (usize, Vec<u8>, Vec<u8>) {
            (0, CLUSTER.into(), cluster_id.into())
        }
        fn applied(&self, _: ()) {}
        fn replaced(&self) {}
    }

    fn format_of(value: &[u8]) -> Option<u32> {
        std::str::from_utf8(value).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{AppliedTables, Order, Shown};

    fn value(v: Result<Option<Vec<u8>>, super::ReadError>) -> Option<String> {
        v.unwrap().map(|v| String::from_utf8(v).unwrap())
    }

    /// A read of one key never waits for a change being written: it takes the key's new value
    /// from the change shown (a removal included), and the committed one for a key the change
    /// does not write or for another generation's tables; once the change is done, sled's.
    #[test]
    fn a_read_of_one_key_takes_the_change_being_written_without_waiting_for_it() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for k in ["a", "b", "c"] {
            tree.insert(k, "1").unwrap();
        }
        let order = Order::default();
        let tables = |gen| AppliedTables {
            trees: Arc::new(vec![tree.clone()]),
            gen,
            order: order.clone(),
        };
        let writes = BTreeMap::from([(b"a".to_vec(), Some("2".into())), (b"b".to_vec(), None)]);
        let shown = Arc::new(Shown {
            gen: 7,
            writes: vec![writes],
        });
        let (current, older) = (tables(7), tables(6));
        order
            .change(Some(shown), || {
                let (tx, rx) = std::sync::mpsc::channel();
                let (t, o) = (current.clone(), older.clone());
                std::thread::spawn(move || {
                    let read = |t: &AppliedTables, k: &[u8]| value(t.get(0, k));
                    let _ = tx.send([
                        read(&t, b"a"),
                        read(&t, b"b"),
                        read(&t, b"c"),
                        read(&o, b"a"),
                    ]);
                });
                let seen = rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a read waited for the change being written");
                let one = Some("1".to_owned());
                assert_eq!(seen, [Some("2".to_owned()), None, one.clone(), one]);
                Ok(())
            })
            .unwrap();
        // This change wrote nothing to sled: once it is done, reads see what sled holds.
        assert_eq!(value(current.get(0, b"a")), Some("1".to_owned()));
        order.close();
        assert!(
            order.change(None, || Ok(())).is_err(),
            "a closed order made a change"
        );
    }
}
