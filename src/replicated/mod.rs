//! hookd's state machine as the replicated core runs it: `Hookd` implements
//! `hookd_raft::Machine` with the domain core (`crate::core`), and feeds what each applied
//! batch changed to the dispatcher (`feed.rs`).

mod feed;

use std::ops::Bound;

use hookd_raft::{LogPosition, Machine, ReadError, TableWriter, Tx, TxError};

use crate::core::command::{Command, CommandResult, Epoch, NodeId};
use crate::core::state::{
    self, job_index_keys, StateFault, Table, Touched, CLUSTER_ID_KEY, FORMAT_NEWEST,
    FORMAT_PREVIOUS_RELEASE, JOB_INDEX_KEY, JOB_INDEX_VERSION,
};
use crate::core::view::{Read, Row, View};
pub use feed::{Changes, Subscription};

/// A node of the replicated core running hookd's state machine.
pub type Replica = hookd_raft::Replica<Hookd>;
/// The applied state, as it stands at each read.
pub type ReadView = View<hookd_raft::StateView>;

/// hookd's state machine: the domain core's `apply`, and the change feed it publishes to.
#[derive(Default)]
pub struct Hookd {
    feed: feed::Feed,
    /// The shard this machine is the state of (0 for a lone group).
    shard: u32,
}

impl Hookd {
    /// The state machine of shard `shard`.
    pub fn of_shard(shard: u32) -> Hookd {
        Hookd {
            shard,
            ..Hookd::default()
        }
    }

    /// Changes applied from now on (see `feed.rs`).
    pub fn subscribe(&self) -> Subscription {
        self.feed.subscribe()
    }
}

/// The tables of one apply transaction, as the domain core sees them.
struct TxTables<'a, 'b>(&'a Tx<'b>);

impl From<hookd_raft::LeaderTerm> for Epoch {
    fn from(e: hookd_raft::LeaderTerm) -> Epoch {
        Epoch {
            term: e.term,
            node_id: e.node_id,
        }
    }
}

impl From<StateFault> for TxError {
    fn from(e: StateFault) -> TxError {
        TxError::abort(e)
    }
}

impl state::Tables for TxTables<'_, '_> {
    type Error = TxError;
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        self.0.get(table as usize, key)
    }
    fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), TxError> {
        self.0.put(table as usize, key, value)
    }
    fn del(&self, table: Table, key: &[u8]) -> Result<(), TxError> {
        self.0.del(table as usize, key)
    }
}

fn read_fault(e: ReadError) -> StateFault {
    StateFault::Storage(e.to_string())
}

/// One generation of the applied tables, pinned.
impl Read for hookd_raft::AppliedTables {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateFault> {
        hookd_raft::AppliedTables::get(self, table as usize, key).map_err(read_fault)
    }
    fn range(
        &self,
        table: Table,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        reverse: bool,
    ) -> Box<dyn Iterator<Item = Result<Row, StateFault>> + Send> {
        Box::new(
            hookd_raft::AppliedTables::range(self, table as usize, from, to, reverse)
                .map(|r| r.map_err(read_fault)),
        )
    }
    fn len(&self, table: Table) -> usize {
        hookd_raft::AppliedTables::len(self, table as usize)
    }
}

/// The applied tables of whichever generation is current at each call.
impl Read for hookd_raft::StateView {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateFault> {
        Read::get(&self.tables(), table, key)
    }
    fn range(
        &self,
        table: Table,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        reverse: bool,
    ) -> Box<dyn Iterator<Item = Result<Row, StateFault>> + Send> {
        Read::range(&self.tables(), table, from, to, reverse)
    }
    fn len(&self, table: Table) -> usize {
        Read::len(&self.tables(), table)
    }
}

// The hookd crate's node ids are the replication crate's: the same type, named once per crate.
const _: fn(NodeId) -> hookd_raft::NodeId = |id| id;

impl Machine for Hookd {
    type Command = Command;
    type Output = CommandResult;
    type Touched = Touched;
    const TABLES: &'static [&'static str] = Table::NAMES;
    const DROPPED_TABLES: &'static [&'static str] = state::DROPPED_TABLES;
    /// The history of hookd's record and command formats (`core::command`, `core::records`):
    ///
    /// - 1: the first.
    /// - 2: a claim moves the job's guard (`Table::Guards`) instead of rewriting the job
    ///   record; a job without a guard is read from its record, as format 1 wrote it. Open runs
    ///   are found in the status index; format 1's `open` tables are dropped by the upgrade.
    /// - 3: job records are postcard behind a format byte instead of JSON. Records in the older
    ///   form are read as they are and replaced as they are rewritten (a change of the job).
    /// - 4: a job's definition carries `JobExt` (labels, and what comes later, self-describing),
    ///   so job records get format byte 2 and job commands new variants (the format-3 ones keep
    ///   their places and are read from old logs); the job index (`Table::JobIndex`) is built
    ///   by `complete` for a state written without it. New commands (`Bulk`, `IfVersion`,
    ///   `Idempotent`, `Remember`, `StartRun`) and claim kinds (`DeliverAt`) are appended to
    ///   their enums, so every earlier one keeps its postcard tag; `Table::Idempotency` starts
    ///   empty. Run records get format byte 2 and `RunExt` (JSON inside, like `JobExt`);
    ///   byte-1 runs are read as format 3 wrote them. Events (`core::events`): commands
    ///   `SetNotification` and `Announce`, tables `Table::Notifications` and `Table::Events`
    ///   (both start empty), a job's callbacks inside `JobExt`. The last format of release
    ///   v0.1.0.
    /// - 5: the cluster's format is recorded (`Command::SetFormat`, in `Table::Misc`), and
    ///   nothing newer than format 4 is written until it says 5: a cluster made by v0.1.0
    ///   stays readable by v0.1.0 until the operator finalizes its upgrade.
    const FORMAT_VERSION: u32 = FORMAT_NEWEST;
    const FORMAT_READABLE_FROM: u32 = 1;
    const FORMAT_PREVIOUS_RELEASE: u32 = FORMAT_PREVIOUS_RELEASE;
    const BATCH_MAX: usize = state::BATCH_COMMANDS_MAX;

    fn apply(
        &self,
        tx: &Tx<'_>,
        at: LogPosition,
        cmd: &Command,
        touched: &mut Touched,
    ) -> Result<CommandResult, TxError> {
        let at = state::Position {
            index: at.index,
            epoch: Epoch {
                term: at.term,
                node_id: at.leader,
            },
            shard: self.shard,
        };
        state::apply_command(&TxTables(tx), &at, cmd, touched)
    }

    fn nothing() -> CommandResult {
        CommandResult::Done
    }

    fn batch(commands: Vec<Command>) -> Command {
        Command::Batch { commands }
    }

    fn unbatch(output: CommandResult, n: usize) -> Result<Vec<CommandResult>, CommandResult> {
        match output {
            CommandResult::Batch { results } if results.len() == n => Ok(results),
            other => Err(other),
        }
    }

    fn approx_bytes(cmd: &Command) -> usize {
        cmd.approx_bytes()
    }

    fn check_forwarded(cmd: &Command) -> Result<(), CommandResult> {
        crate::core::validate::command(cmd, chrono::Utc::now().timestamp_millis()).map_err(|e| {
            CommandResult::Rejected {
                field: e.field,
                message: e.message,
            }
        })
    }

    fn sheddable(cmd: &Command) -> bool {
        cmd.sheddable()
    }

    fn repeatable(cmd: &Command) -> bool {
        cmd.repeatable()
    }

    fn record_node(node_id: NodeId, api_addr: String) -> Command {
        Command::SetNodeInfo { node_id, api_addr }
    }

    fn node_api_addrs(tables: &hookd_raft::AppliedTables) -> Vec<(NodeId, String)> {
        View::new(tables.clone()).node_api_addrs()
    }

    fn record_cluster_id(cluster_id: String) -> Command {
        Command::SetClusterId { cluster_id }
    }

    fn cluster_id(tables: &hookd_raft::AppliedTables) -> Option<String> {
        View::new(tables.clone()).cluster_id()
    }

    fn record_cluster_format(format: u32) -> Command {
        Command::SetFormat { format }
    }

    fn cluster_format(tables: &hookd_raft::AppliedTables) -> Option<u32> {
        View::new(tables.clone()).cluster_format()
    }

    fn format_set_by(cmd: &Command) -> Option<u32> {
        match cmd {
            Command::SetFormat { format } => Some(*format),
            Command::Batch { commands } => commands.iter().filter_map(Self::format_set_by).max(),
            _ => None,
        }
    }

    fn identity_row(table: usize, key: &[u8]) -> bool {
        table == Table::Nodes as usize || (table == Table::Misc as usize && key == CLUSTER_ID_KEY)
    }

    fn cluster_id_row(cluster_id: &str) -> (usize, Vec<u8>, Vec<u8>) {
        (
            Table::Misc as usize,
            CLUSTER_ID_KEY.to_vec(),
            cluster_id.as_bytes().to_vec(),
        )
    }

    /// Builds the job index of a state written before it existed (an upgraded data dir, an old
    /// snapshot or backup): from scratch, then the marker, so a crash between builds it again.
    fn complete(w: &TableWriter) -> Result<(), String> {
        let tables = w.tables();
        let marker = Read::get(tables, Table::Misc, JOB_INDEX_KEY).map_err(|e| e.to_string())?;
        if marker.as_deref() == Some(JOB_INDEX_VERSION) {
            return Ok(());
        }
        let index = Table::JobIndex as usize;
        w.clear(index).map_err(|e| e.to_string())?;
        let (mut rows, mut jobs) = (Vec::new(), 0u64);
        for job in View::new(tables.clone()).all_jobs() {
            let job = job.map_err(|e| e.to_string())?;
            jobs += 1;
            rows.extend(job_index_keys(&job).into_iter().map(|k| (k, Vec::new())));
            if rows.len() >= 10_000 {
                w.insert(index, std::mem::take(&mut rows))
                    .map_err(|e| e.to_string())?;
            }
        }
        w.insert(index, rows).map_err(|e| e.to_string())?;
        w.flush().map_err(|e| e.to_string())?;
        let marker = (JOB_INDEX_KEY.to_vec(), JOB_INDEX_VERSION.to_vec());
        w.insert(Table::Misc as usize, vec![marker])
            .map_err(|e| e.to_string())?;
        tracing::info!(jobs, "built the job index");
        Ok(())
    }

    fn applied(&self, touched: Touched) {
        self.feed.publish(&touched);
    }

    fn replaced(&self) {
        self.feed.publish_all();
    }
}

/// What the rest of hookd reads from its replica.
pub trait ReplicaState {
    /// The applied state.
    fn state(&self) -> ReadView;
    /// Changes applied from now on.
    fn subscribe(&self) -> Subscription;
}

impl ReplicaState for Replica {
    fn state(&self) -> ReadView {
        View::new(self.view().clone())
    }

    fn subscribe(&self) -> Subscription {
        self.machine().subscribe()
    }
}
