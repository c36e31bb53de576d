//! The state machine's data model and the deterministic `apply` of one command.
//!
//! `apply_command` reads nothing but the command, its entry's position and the tables it is
//! given: no clock, no randomness, no I/O besides the tables. The replicated store runs it
//! inside one transaction per batch (`crate::replicated`); tests run it over an in-memory map.

use super::command::MASK;
use super::command::{
    AttemptOutcome, AttemptResult, ClaimItem, ClaimKind, Command, CommandResult, Epoch, Job,
    JobSpec, Run, RunStatus, SkippedRange, UnixMs,
};

/// The tables of the state machine. Each is one sled tree per snapshot generation, named by
/// `name` (the discriminants index in-memory arrays only: dense, never persisted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// job id → `Job` (JSON)
    Jobs = 0,
    /// node id (8 bytes, big-endian) → API address (UTF-8)
    Nodes = 1,
    /// named singletons, e.g. `cluster_id`
    Misc = 2,
    /// run id → `Run` (compact; JSON from schema 1)
    Runs = 3,
    /// job id → `[(due, run id)]` (compact; JSON from schema 1), the job's runs in due order
    /// (bounded by retention)
    JobRuns = 4,
    /// status, 0, due (8 bytes BE), run id → empty: runs by status in due order
    ByStatus = 5,
    /// job id → `Guard` (17 bytes): what a claim reads and moves, so that a claim never
    /// rewrites the job record (schema 2; a job without one is a schema-1 record, whose guard is
    /// in its JSON)
    Guards = 6,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Jobs,
        Table::Nodes,
        Table::Misc,
        Table::Runs,
        Table::JobRuns,
        Table::ByStatus,
        Table::Guards,
    ];

    /// The names of the tables, in the order of their discriminants: persisted (the stored
    /// trees are named by them), so only ever appended to.
    pub const NAMES: &'static [&'static str] = &[
        "jobs",
        "nodes",
        "misc",
        "runs",
        "job_runs",
        "by_status",
        "guards",
    ];

    pub fn name(self) -> &'static str {
        Table::NAMES[self as usize]
    }
}

/// Tables earlier schemas had and this one dropped: schema 1's open runs, now found in the
/// status index.
pub const DROPPED_TABLES: &[&str] = &["open"];

/// The part of a job a claim reads and writes (`Table::Guards`): the job record itself is
/// rewritten only by the commands that change the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    pub incarnation: u64,
    pub paused: bool,
    /// Runs due at or before this instant are claimed (or not owed).
    pub cursor_ms: i64,
}

impl Guard {
    pub const LEN: usize = 17;

    fn of(job: &Job) -> Guard {
        Guard {
            incarnation: job.incarnation,
            paused: job.spec.paused,
            cursor_ms: job.cursor_ms,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::LEN);
        b.extend_from_slice(&self.incarnation.to_be_bytes());
        b.extend_from_slice(&self.cursor_ms.to_be_bytes());
        b.push(u8::from(self.paused));
        b
    }

    pub fn decode(bytes: &[u8]) -> Option<Guard> {
        let b: &[u8; Self::LEN] = bytes.try_into().ok()?;
        let (inc, rest) = b.split_at(8);
        let (cursor, paused) = rest.split_at(8);
        Some(Guard {
            incarnation: u64::from_be_bytes(inc.try_into().ok()?),
            cursor_ms: i64::from_be_bytes(cursor.try_into().ok()?),
            paused: paused[0] != 0,
        })
    }

    /// `job` as it stands: its record with this guard's cursor (a guard of another incarnation,
    /// read beside the record outside a transaction, is not this job's).
    pub fn apply_to(&self, job: &mut Job) {
        if self.incarnation == job.incarnation {
            job.cursor_ms = self.cursor_ms;
        }
    }
}

/// A job's runs as listed in `Table::JobRuns`: (due, run id), ascending.
pub type RunList = Vec<(i64, String)>;

/// Key of a run in `Table::ByStatus`.
pub fn status_key(status: RunStatus, due_ms: i64, run_id: &str) -> Vec<u8> {
    let mut k = status_prefix(status);
    k.extend_from_slice(&due_key(due_ms));
    k.extend_from_slice(run_id.as_bytes());
    k
}

pub fn status_prefix(status: RunStatus) -> Vec<u8> {
    let mut k = status.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// Instants as order-preserving bytes (offset so negative instants sort first).
fn due_key(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// Key of the cluster id in `Table::Misc`.
pub const CLUSTER_ID_KEY: &[u8] = b"cluster_id";

/// A record that cannot be read, or storage that failed under a read.
#[derive(Debug, thiserror::Error)]
pub enum StateFault {
    #[error("storage error: {0}")]
    Storage(String),
    #[error("corrupt record in table {table}: {source}")]
    Decode {
        table: &'static str,
        source: serde_json::Error,
    },
    #[error("corrupt record in table {table}: {source}")]
    DecodeCompact {
        table: &'static str,
        source: postcard::Error,
    },
    #[error(
        "a record in table {table} has format byte {byte:#04x}, which this hookd does not know \
         (a newer hookd wrote it: run that version)"
    )]
    NewerFormat { table: &'static str, byte: u8 },
}

/// Key-value access to the state machine's tables inside one atomic batch. A record that
/// cannot be read fails the batch with the table's own error.
pub trait Tables {
    type Error: From<StateFault>;
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;
    fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), Self::Error>;
    fn del(&self, table: Table, key: &[u8]) -> Result<(), Self::Error>;
}

/// The result of an operation over the tables `T`.
type TxResult<T, V> = Result<V, <T as Tables>::Error>;

/// First byte of a compact record (postcard after it). A JSON record never starts with it.
/// Every other byte below `{` and `[` is kept for newer formats, which `decode` refuses.
const COMPACT: u8 = 0x01;

/// Encodes a record compactly: runs and run lists since schema 2, job records since schema 3.
/// Only for types without serde attributes that postcard cannot honour (no
/// `skip_serializing_if`, no untagged enums). postcard is positional: adding a field to one of
/// these types needs a new format byte (and a decoder kept for this one).
fn compact<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![COMPACT];
    // Our own plain data types always serialize.
    out.extend(postcard::to_allocvec(value).unwrap_or_default());
    out
}

/// Decodes a record of `table`: compact (what schema 3 writes for jobs and runs) or JSON (what
/// schemas 1 and 2 wrote for jobs, schema 1 for runs); any other first byte is a newer format.
fn decode<V: serde::de::DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<V, StateFault> {
    match bytes.split_first() {
        Some((&COMPACT, rest)) => {
            postcard::from_bytes(rest).map_err(|source| StateFault::DecodeCompact {
                table: table.name(),
                source,
            })
        }
        Some((&byte, _)) if byte != b'{' && byte != b'[' => Err(StateFault::NewerFormat {
            table: table.name(),
            byte,
        }),
        _ => serde_json::from_slice(bytes).map_err(|source| StateFault::Decode {
            table: table.name(),
            source,
        }),
    }
}

/// Reads and decodes the record under `key` in `table`.
fn get_record<T: Tables, V: serde::de::DeserializeOwned>(
    t: &T,
    table: Table,
    key: &str,
) -> TxResult<T, Option<V>> {
    match t.get(table, key.as_bytes())? {
        None => Ok(None),
        Some(bytes) => decode(table, &bytes).map(Some).map_err(T::Error::from),
    }
}

/// Decodes a stored job record.
pub fn decode_job(bytes: &[u8]) -> Result<Job, StateFault> {
    decode(Table::Jobs, bytes)
}

/// Decodes a stored run record.
pub fn decode_run(bytes: &[u8]) -> Result<Run, StateFault> {
    decode(Table::Runs, bytes)
}

/// Decodes a job's run list.
pub fn decode_run_list(bytes: &[u8]) -> Result<RunList, StateFault> {
    decode(Table::JobRuns, bytes)
}

/// The job as it stands: its record, with the cursor of its guard.
fn get_job<T: Tables>(t: &T, id: &str) -> TxResult<T, Option<Job>> {
    let Some(mut job) = get_record::<_, Job>(t, Table::Jobs, id)? else {
        return Ok(None);
    };
    if let Some(guard) = get_stored_guard(t, id)? {
        guard.apply_to(&mut job);
    }
    Ok(Some(job))
}

fn get_stored_guard<T: Tables>(t: &T, id: &str) -> TxResult<T, Option<Guard>> {
    Ok(t.get(Table::Guards, id.as_bytes())?
        .and_then(|b| Guard::decode(&b)))
}

/// A job's guard: its own record, or for a job last written by schema 1, from the job record.
fn get_guard<T: Tables>(t: &T, id: &str) -> TxResult<T, Option<Guard>> {
    match get_stored_guard(t, id)? {
        Some(g) => Ok(Some(g)),
        None => Ok(get_record::<_, Job>(t, Table::Jobs, id)?.map(|j| Guard::of(&j))),
    }
}

fn put_guard<T: Tables>(t: &T, id: &str, guard: Guard) -> TxResult<T, ()> {
    t.put(Table::Guards, id.as_bytes(), guard.encode())
}

fn get_run<T: Tables>(t: &T, id: &str) -> TxResult<T, Option<Run>> {
    get_record(t, Table::Runs, id)
}

fn get_run_list<T: Tables>(t: &T, job_id: &str) -> TxResult<T, RunList> {
    Ok(get_record(t, Table::JobRuns, job_id)?.unwrap_or_default())
}

/// Writes the job record and its guard.
fn put_job<T: Tables>(t: &T, job: &Job) -> TxResult<T, ()> {
    put_guard(t, &job.id, Guard::of(job))?;
    t.put(Table::Jobs, job.id.as_bytes(), compact(job))
}

/// Writes a run and keeps its index entries in step with its status. `old` is the stored version.
fn put_run<T: Tables>(t: &T, run: &Run, old: Option<&Run>) -> TxResult<T, ()> {
    let indexed = old.is_some_and(|o| o.status == run.status);
    if let Some(old) = old.filter(|_| !indexed) {
        t.del(
            Table::ByStatus,
            &status_key(old.status, old.scheduled_at_ms, &old.id),
        )?;
    }
    if !indexed {
        t.put(
            Table::ByStatus,
            &status_key(run.status, run.scheduled_at_ms, &run.id),
            Vec::new(),
        )?;
    }
    let bytes = compact(run);
    t.put(Table::Runs, run.id.as_bytes(), bytes)
}

/// Removes a run and its index entries (not its entry in the job's run list).
fn delete_run<T: Tables>(t: &T, run: &Run) -> TxResult<T, ()> {
    t.del(Table::Runs, run.id.as_bytes())?;
    t.del(
        Table::ByStatus,
        &status_key(run.status, run.scheduled_at_ms, &run.id),
    )
}

/// Adds a new run to its job's list, dropping the oldest finished runs beyond `retention`.
fn insert_run<T: Tables>(t: &T, run: &Run, retention: u32) -> TxResult<T, ()> {
    let mut list = get_run_list(t, &run.job_id)?;
    let pos = list
        .partition_point(|(due, id)| (*due, id.as_str()) < (run.scheduled_at_ms, run.id.as_str()));
    list.insert(pos, (run.scheduled_at_ms, run.id.clone()));
    put_run(t, run, None)?;
    let mut excess = list.len().saturating_sub(retention.max(1) as usize);
    let mut kept = Vec::with_capacity(list.len());
    for (due, id) in list {
        if excess > 0 {
            if let Some(old) = get_run(t, &id)? {
                if !old.status.is_open() {
                    delete_run(t, &old)?;
                    excess -= 1;
                    continue;
                }
            }
        }
        kept.push((due, id));
    }
    t.put(Table::JobRuns, run.job_id.as_bytes(), compact(&kept))
}

/// On pause: runs claimed ahead of time that fall due after `pause_ms` and have no attempt yet
/// are dropped, not recorded — they fall due while the job is paused.
fn forget_runs_due_after<T: Tables>(t: &T, job_id: &str, pause_ms: i64) -> TxResult<T, ()> {
    let list = get_run_list(t, job_id)?;
    let mut kept = Vec::with_capacity(list.len());
    for (due, id) in list {
        if due > pause_ms {
            if let Some(run) = get_run(t, &id)? {
                if run.status == RunStatus::Pending && run.attempts.is_empty() {
                    delete_run(t, &run)?;
                    continue;
                }
            }
        }
        kept.push((due, id));
    }
    t.put(Table::JobRuns, job_id.as_bytes(), compact(&kept))
}

/// Removes every run of a job.
fn delete_job_runs<T: Tables>(t: &T, job_id: &str) -> TxResult<T, ()> {
    for (_, id) in get_run_list(t, job_id)? {
        if let Some(run) = get_run(t, &id)? {
            delete_run(t, &run)?;
        }
    }
    t.del(Table::JobRuns, job_id.as_bytes())
}

/// What applied commands changed, for the dispatcher.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    /// Jobs whose definition, cursor or existence changed.
    pub jobs: Vec<String>,
    /// Runs opened outside a claim (trigger, retry), which need an attempt.
    pub runs: Vec<String>,
}

/// Commands one batch entry may carry; `seq` numbers them inside the entry.
pub const BATCH_COMMANDS_MAX: usize = (1 << SEQ_SLOT_BITS) - 1;
const SEQ_SLOT_BITS: u32 = 16;

/// Where a command was applied: its entry's log index and the epoch of the leader that
/// proposed the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub index: u64,
    pub epoch: Epoch,
}

/// Applies the command of the entry at `at`. Deterministic: equal inputs give equal outputs
/// and writes. What changed for the dispatcher is added to `touched`.
pub fn apply_command<T: Tables>(
    t: &T,
    at: &Position,
    cmd: &Command,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    // Every command gets a number unique in the whole log: its entry's index, and its slot in
    // a batch. Incarnations and manual run ids are built from it.
    let base = at.index << SEQ_SLOT_BITS;
    match cmd {
        Command::Batch { commands } => {
            let mut results = Vec::with_capacity(commands.len());
            for (slot, c) in commands.iter().enumerate() {
                let result = match c {
                    // Batches do not nest; a nested one is rejected, not applied.
                    Command::Batch { .. } => CommandResult::NotFound,
                    c => apply_one(t, at, base.wrapping_add(slot as u64 + 1), c, touched)?,
                };
                results.push(result);
            }
            Ok(CommandResult::Batch { results })
        }
        c => apply_one(t, at, base, c, touched),
    }
}

fn apply_one<T: Tables>(
    t: &T,
    at: &Position,
    seq: u64,
    cmd: &Command,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    match cmd {
        Command::Batch { .. } => Ok(CommandResult::NotFound),
        Command::CreateJob { id, spec, now_ms } => create_job(t, id, spec, seq, *now_ms, touched),
        Command::PutJob { id, spec, now_ms } => replace_job(t, id, spec, seq, *now_ms, touched),
        Command::DeleteJob { id, now_ms: _ } => delete_job(t, id, touched),
        Command::SetPaused { id, paused, now_ms } => set_paused(t, id, *paused, *now_ms, touched),
        Command::SetNodeInfo { node_id, api_addr } => {
            let key = node_id.to_be_bytes();
            t.put(Table::Nodes, &key, api_addr.as_bytes().to_vec())?;
            Ok(CommandResult::Done)
        }
        Command::SetClusterId { cluster_id } => {
            if t.get(Table::Misc, CLUSTER_ID_KEY)?.is_none() {
                t.put(Table::Misc, CLUSTER_ID_KEY, cluster_id.as_bytes().to_vec())?;
            }
            Ok(CommandResult::Done)
        }
        Command::ClaimRuns {
            epoch,
            now_ms,
            items,
            retention,
        } => claim_runs(t, at, *epoch, *now_ms, items, *retention, touched),
        Command::RecordAttempts { outcomes } => {
            for outcome in outcomes {
                record_attempt(t, outcome)?;
            }
            Ok(CommandResult::Done)
        }
        Command::RetryRun { run_id, now_ms } => retry_run(t, run_id, *now_ms, touched),
        Command::TriggerJob {
            id,
            now_ms,
            retention,
        } => trigger_job(t, id, seq, *now_ms, *retention, touched),
    }
}

/// The stored job `id` and `spec` with its masked secrets (`"***"`) taken from it; or the
/// answer when a masked secret has no stored value to keep.
fn with_stored_secrets<T: Tables>(
    t: &T,
    id: &str,
    spec: &JobSpec,
) -> TxResult<T, Result<(Option<Job>, JobSpec), CommandResult>> {
    let existing = get_job(t, id)?;
    Ok(match spec.unmask(existing.as_ref().map(|j| &j.spec)) {
        Ok(spec) => Ok((existing, spec)),
        Err(name) => Err(masked_without_value(&name)),
    })
}

/// A create: a new job, or the existing one when it is the same (`409` when not).
fn create_job<T: Tables>(
    t: &T,
    id: &str,
    spec: &JobSpec,
    seq: u64,
    now_ms: UnixMs,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let (existing, spec) = match with_stored_secrets(t, id, spec)? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    if let Some(existing) = existing {
        return Ok(if existing.spec == spec {
            unchanged(existing)
        } else {
            CommandResult::Conflict { existing }
        });
    }
    touched.jobs.push(id.to_owned());
    insert_job(t, id, spec, seq, now_ms)
}

/// Stores job `id` as new (its first incarnation, or a new one after a delete).
fn insert_job<T: Tables>(
    t: &T,
    id: &str,
    spec: JobSpec,
    seq: u64,
    now_ms: UnixMs,
) -> TxResult<T, CommandResult> {
    let job = new_job(id, spec, seq, now_ms);
    put_job(t, &job)?;
    Ok(changed(job, true))
}

/// A replace (or a create when the job does not exist). A new schedule counts from the
/// replace; pausing forgets the runs not yet due, resuming skips what fell due while paused.
fn replace_job<T: Tables>(
    t: &T,
    id: &str,
    spec: &JobSpec,
    seq: u64,
    now_ms: UnixMs,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let (existing, spec) = match with_stored_secrets(t, id, spec)? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    touched.jobs.push(id.to_owned());
    let mut job = match existing {
        None => return insert_job(t, id, spec, seq, now_ms),
        Some(existing) if existing.spec == spec => return Ok(unchanged(existing)),
        Some(job) => job,
    };
    if job.spec.schedule != spec.schedule {
        // Runs the old schedule would have had before the replace are not owed.
        job.schedule_base_ms = now_ms;
        job.cursor_ms = job.cursor_ms.max(now_ms.saturating_sub(1));
    }
    if job.spec.paused && !spec.paused {
        job.cursor_ms = job.cursor_ms.max(now_ms);
    }
    if !job.spec.paused && spec.paused {
        forget_runs_due_after(t, id, now_ms)?;
    }
    job.spec = spec;
    touch(&mut job, now_ms);
    put_job(t, &job)?;
    Ok(changed(job, false))
}

/// A delete: the job, its guard and its runs.
fn delete_job<T: Tables>(t: &T, id: &str, touched: &mut Touched) -> TxResult<T, CommandResult> {
    let Some(job) = get_job(t, id)? else {
        return Ok(CommandResult::NotFound);
    };
    touched.jobs.push(id.to_owned());
    t.del(Table::Jobs, id.as_bytes())?;
    t.del(Table::Guards, id.as_bytes())?;
    delete_job_runs(t, id)?;
    Ok(CommandResult::Deleted { job })
}

/// A pause forgets the runs not yet due; a resume skips the runs that fell due while paused
/// (neither delivered nor recorded).
fn set_paused<T: Tables>(
    t: &T,
    id: &str,
    paused: bool,
    now_ms: UnixMs,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let mut job = match get_job(t, id)? {
        None => return Ok(CommandResult::NotFound),
        Some(job) if job.spec.paused == paused => return Ok(unchanged(job)),
        Some(job) => job,
    };
    touched.jobs.push(id.to_owned());
    job.spec.paused = paused;
    if paused {
        forget_runs_due_after(t, id, now_ms)?;
    } else {
        job.cursor_ms = job.cursor_ms.max(now_ms);
    }
    touch(&mut job, now_ms);
    put_job(t, &job)?;
    Ok(changed(job, false))
}

/// The leader's claims of epoch `epoch`, each accepted or not (`claim`); none from another
/// epoch than the one this entry was appended in.
fn claim_runs<T: Tables>(
    t: &T,
    at: &Position,
    epoch: Epoch,
    now_ms: UnixMs,
    items: &[ClaimItem],
    retention: u32,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    if epoch != at.epoch {
        return Ok(CommandResult::StaleEpoch);
    }
    let mut accepted = Vec::with_capacity(items.len());
    for item in items {
        let ok = claim(t, item, now_ms, retention)?;
        if ok {
            touched.jobs.push(item.job_id.clone());
        }
        accepted.push(ok);
    }
    Ok(CommandResult::Claimed { accepted })
}

/// A failed run of the job's current incarnation goes back to retrying, due now.
fn retry_run<T: Tables>(
    t: &T,
    run_id: &str,
    now_ms: UnixMs,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let old = match get_run(t, run_id)? {
        None => return Ok(CommandResult::NotFound),
        Some(run) if run.status != RunStatus::Failed => {
            return Ok(CommandResult::NotRetryable { run })
        }
        Some(old) => old,
    };
    if get_job(t, &old.job_id)?.is_none_or(|j| j.incarnation != old.incarnation) {
        return Ok(CommandResult::NotFound);
    }
    let mut run = old.clone();
    run.status = RunStatus::Retrying;
    run.next_attempt_at_ms = Some(now_ms);
    put_run(t, &run, Some(&old))?;
    touched.runs.push(run.id.clone());
    Ok(CommandResult::Run { run })
}

/// A manual run of job `id`, due now, outside its schedule.
fn trigger_job<T: Tables>(
    t: &T,
    id: &str,
    seq: u64,
    now_ms: UnixMs,
    retention: u32,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let Some(job) = get_job(t, id)? else {
        return Ok(CommandResult::NotFound);
    };
    let run = Run {
        id: format!("{}_m{:x}", Run::scheduled_id(job.incarnation, now_ms), seq),
        job_id: job.id.clone(),
        incarnation: job.incarnation,
        scheduled_at_ms: now_ms,
        status: RunStatus::Pending,
        attempts: Vec::new(),
        next_attempt_at_ms: Some(now_ms),
        manual: true,
        skipped: None,
        claimed_at_ms: now_ms,
    };
    insert_run(t, &run, retention)?;
    touched.runs.push(run.id.clone());
    Ok(CommandResult::Run { run })
}

/// Claims one run (or skipped range) if the job is still as the leader saw it. Reads and
/// writes the job's guard only, never its record.
fn claim<T: Tables>(t: &T, item: &ClaimItem, now_ms: i64, retention: u32) -> TxResult<T, bool> {
    let Some(mut guard) = get_guard(t, &item.job_id)? else {
        return Ok(false);
    };
    if guard.incarnation != item.incarnation || guard.paused || item.due_ms <= guard.cursor_ms {
        return Ok(false);
    }
    guard.cursor_ms = item.due_ms;
    put_guard(t, &item.job_id, guard)?;
    let (status, skipped, next) = match &item.kind {
        ClaimKind::Deliver => (RunStatus::Pending, None, Some(item.due_ms)),
        ClaimKind::Skip { count, first_ms } => (
            RunStatus::Skipped,
            Some(SkippedRange {
                count: *count,
                first_ms: *first_ms,
                last_ms: item.due_ms,
            }),
            None,
        ),
    };
    let run = Run {
        id: Run::scheduled_id(guard.incarnation, item.due_ms),
        job_id: item.job_id.clone(),
        incarnation: guard.incarnation,
        scheduled_at_ms: item.due_ms,
        status,
        attempts: Vec::new(),
        next_attempt_at_ms: next,
        manual: false,
        skipped,
        claimed_at_ms: now_ms,
    };
    insert_run(t, &run, retention)?;
    Ok(true)
}

/// Appends an attempt to its run. Finished runs stay finished: a late report from a former
/// leader adds to the history but cannot reopen or fail a run that succeeded.
fn record_attempt<T: Tables>(t: &T, outcome: &AttemptOutcome) -> TxResult<T, ()> {
    let Some(old) = get_run(t, &outcome.run_id)? else {
        return Ok(());
    };
    let mut run = old.clone();
    run.attempts.push(outcome.attempt.clone());
    if run.status.is_open() {
        match outcome.result {
            AttemptResult::Succeeded => {
                run.status = RunStatus::Succeeded;
                run.next_attempt_at_ms = None;
            }
            AttemptResult::RetryAt(at) => {
                run.status = RunStatus::Retrying;
                run.next_attempt_at_ms = Some(at);
            }
            AttemptResult::Failed => {
                run.status = RunStatus::Failed;
                run.next_attempt_at_ms = None;
            }
        }
    } else if outcome.result == AttemptResult::Succeeded && run.status == RunStatus::Failed {
        run.status = RunStatus::Succeeded;
    }
    put_run(t, &run, Some(&old))
}

fn changed(job: Job, created: bool) -> CommandResult {
    CommandResult::Job {
        job,
        created,
        changed: true,
    }
}

fn unchanged(job: Job) -> CommandResult {
    CommandResult::Job {
        job,
        created: false,
        changed: false,
    }
}

fn masked_without_value(name: &str) -> CommandResult {
    CommandResult::Rejected {
        field: format!("headers.{name}"),
        message: format!(
            "secret header {name} is sent as {MASK:?} but no stored value exists to keep; send the value"
        ),
    }
}

fn new_job(id: &str, spec: JobSpec, seq: u64, now_ms: i64) -> Job {
    Job {
        id: id.to_owned(),
        spec,
        incarnation: seq,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        version: 1,
        schedule_base_ms: now_ms,
        // A one-shot `at` in the past is due at creation, so the cursor starts just before it.
        cursor_ms: now_ms.saturating_sub(1),
    }
}

/// Marks a changed job. `updated_at` never moves backwards, even if the proposing leader's clock
/// is behind the previous one's.
fn touch(job: &mut Job, now_ms: i64) {
    job.version = job.version.saturating_add(1);
    job.updated_at_ms = job.updated_at_ms.max(now_ms);
}

#[cfg(test)]
pub(crate) mod tests;
