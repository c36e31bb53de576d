//! How the state machine's data is laid out: its tables, keys and record encodings, and the
//! reads and writes of single records that `apply` (`state.rs`) and the views (`view.rs`) build
//! on. Persisted formats: see `command.rs` for the rules of change.

use super::command::{Job, Job3, Run, Run3, RunStatus};

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
    /// The job index (format 4): label, target and paused entries → empty, each ending in the
    /// job id (`job_index_keys`), so each kind lists its jobs in id order
    JobIndex = 7,
    /// Idempotency keys: `k` + key → what its request got, `q` + number → key, in the order
    /// they were remembered, `h`/`n` → queue front and next number (`core::idempotency`)
    Idempotency = 8,
    /// target `host:port` → its `TargetPolicy` (JSON)
    TargetPolicies = 9,
    /// notification id → `events::Notification` (JSON)
    Notifications = 10,
    /// `{event id}.{n}` → `events::Delivery` (JSON): events not yet delivered or failed
    Events = 11,
}

impl Table {
    pub const ALL: [Table; 12] = [
        Table::Jobs,
        Table::Nodes,
        Table::Misc,
        Table::Runs,
        Table::JobRuns,
        Table::ByStatus,
        Table::Guards,
        Table::JobIndex,
        Table::Idempotency,
        Table::TargetPolicies,
        Table::Notifications,
        Table::Events,
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
        "job_index",
        "idempotency",
        "target_policies",
        "notifications",
        "events",
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

/// The due instant and run id a `Table::ByStatus` key names (the inverse of `status_key`; the
/// status name before them ends at the first 0 byte).
pub fn status_key_parts(key: &[u8]) -> (i64, String) {
    let at = key
        .iter()
        .position(|b| *b == 0)
        .map_or(key.len(), |p| p + 1);
    let due = key
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, |b| (u64::from_be_bytes(b) ^ (1 << 63)) as i64);
    let id = String::from_utf8_lossy(key.get(at + 8..).unwrap_or_default()).into_owned();
    (due, id)
}

pub fn status_prefix(status: RunStatus) -> Vec<u8> {
    let mut k = status.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// Instants as order-preserving bytes (offset so negative instants sort first).
pub(super) fn due_key(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// Key of the cluster id in `Table::Misc`.
pub const CLUSTER_ID_KEY: &[u8] = b"cluster_id";
/// Key of the cluster's format in `Table::Misc` (`u32` big-endian; absent: the cluster was
/// made by a release without it and is in `FORMAT_PREVIOUS_RELEASE`).
pub const CLUSTER_FORMAT_KEY: &[u8] = b"cluster_format";

/// The newest record and command format this code writes (its history: `FORMAT_VERSION` of
/// `replicated::Hookd`), and the newest the previous release (v0.1.0) writes and reads: this
/// code writes nothing newer until the cluster's format is raised (`Command::SetFormat`).
pub const FORMAT_NEWEST: u32 = 5;
pub const FORMAT_PREVIOUS_RELEASE: u32 = 4;

/// The cluster format a `CLUSTER_FORMAT_KEY` record holds.
pub fn cluster_format_of(bytes: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(bytes).ok().map(u32::from_be_bytes)
}

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
pub(super) type TxResult<T, V> = Result<V, <T as Tables>::Error>;

/// First byte of a compact record (postcard after it). A JSON record never starts with it.
/// Every other byte below `{` and `[` is kept for newer formats, which `decode` refuses.
pub(super) const COMPACT: u8 = 0x01;

/// Encodes a record compactly: runs and run lists since schema 2, job records since schema 3.
/// Only for types without serde attributes that postcard cannot honour (no
/// `skip_serializing_if`, no untagged enums). postcard is positional: adding a field to one of
/// these types needs a new format byte (and a decoder kept for this one).
pub(super) fn compact<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![COMPACT];
    // Our own plain data types always serialize.
    out.extend(postcard::to_allocvec(value).unwrap_or_default());
    out
}

/// Decodes a record of `table`: compact (what schema 3 writes for jobs and runs) or JSON (what
/// schemas 1 and 2 wrote for jobs, schema 1 for runs); any other first byte is a newer format.
pub(super) fn decode<V: serde::de::DeserializeOwned>(
    table: Table,
    bytes: &[u8],
) -> Result<V, StateFault> {
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

/// Writes `value` under `key` in `table` as JSON (the form `get_record` reads back, for the
/// tables whose records are JSON).
pub(super) fn put_json<T: Tables, V: serde::Serialize + ?Sized>(
    t: &T,
    table: Table,
    key: &[u8],
    value: &V,
) -> TxResult<T, ()> {
    // Our own plain data always serializes.
    t.put(table, key, serde_json::to_vec(value).unwrap_or_default())
}

/// Reads and decodes the record under `key` in `table`.
pub(super) fn get_record<T: Tables, V: serde::de::DeserializeOwned>(
    t: &T,
    table: Table,
    key: &str,
) -> TxResult<T, Option<V>> {
    match t.get(table, key.as_bytes())? {
        None => Ok(None),
        Some(bytes) => decode(table, &bytes).map(Some).map_err(T::Error::from),
    }
}

/// First byte of a job or run record in format 4 (postcard of `Job` with its `JobExt`, of `Run`
/// with its `RunExt`); `COMPACT` records are format 3's layout (`Job3`, `Run3`).
const FORMAT_4: u8 = 0x02;

/// A job or run record in format 4.
fn encode_4<V: serde::Serialize>(value: &V) -> Vec<u8> {
    let mut out = vec![FORMAT_4];
    // Our own plain data types always serialize.
    out.extend(postcard::to_allocvec(value).unwrap_or_default());
    out
}

/// Decodes a job or run record of `table`: format 4, format 3 (`COMPACT`, read as `Old`), or
/// JSON (what schemas 1 and 2 wrote).
fn decode_4<V, Old>(table: Table, bytes: &[u8]) -> Result<V, StateFault>
where
    V: serde::de::DeserializeOwned,
    Old: serde::de::DeserializeOwned + Into<V>,
{
    let compact_fault = |source| StateFault::DecodeCompact {
        table: table.name(),
        source,
    };
    match bytes.split_first() {
        Some((&FORMAT_4, rest)) => postcard::from_bytes(rest).map_err(compact_fault),
        Some((&COMPACT, rest)) => postcard::from_bytes::<Old>(rest)
            .map(Old::into)
            .map_err(compact_fault),
        _ => decode(table, bytes),
    }
}

/// Decodes a stored job record: format 4, format 3, or JSON (formats 1 and 2).
pub fn decode_job(bytes: &[u8]) -> Result<Job, StateFault> {
    decode_4::<Job, Job3>(Table::Jobs, bytes)
}

/// Key of the marker saying the job index is complete (in `Table::Misc`); a state without it
/// (written before format 4) has its index built at open (`Machine::complete`).
pub const JOB_INDEX_KEY: &[u8] = b"job_index";
pub const JOB_INDEX_VERSION: &[u8] = b"1";

/// Index key prefixes: a label with one value (or any value), a target, paused jobs.
pub fn label_prefix(key: &str, value: Option<&str>) -> Vec<u8> {
    let mut k = vec![b'l'];
    k.push(u8::try_from(key.len()).unwrap_or(u8::MAX));
    k.extend_from_slice(key.as_bytes());
    if let Some(v) = value {
        k.extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_be_bytes());
        k.extend_from_slice(v.as_bytes());
    }
    k
}

pub fn target_prefix(target: &str) -> Vec<u8> {
    let mut k = vec![b't'];
    k.extend_from_slice(
        &u16::try_from(target.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    k.extend_from_slice(target.as_bytes());
    k
}

pub const PAUSED_PREFIX: &[u8] = b"p";

/// The job index entries of `job`: its labels, its target, and whether it is paused.
pub fn job_index_keys(job: &Job) -> Vec<Vec<u8>> {
    let id = job.id.as_bytes();
    let with_id = |mut k: Vec<u8>| {
        k.extend_from_slice(id);
        k
    };
    let mut keys: Vec<Vec<u8>> = job
        .spec
        .ext
        .labels
        .iter()
        .map(|(k, v)| with_id(label_prefix(k, Some(v))))
        .collect();
    if let Some(t) = super::filter::target_of(&job.spec.url) {
        keys.push(with_id(target_prefix(&t)));
    }
    if job.spec.paused {
        keys.push(with_id(PAUSED_PREFIX.to_vec()));
    }
    keys
}

/// Decodes a stored run: format 4, format 3 (without `RunExt`), or JSON (schema 1).
pub fn decode_run(bytes: &[u8]) -> Result<Run, StateFault> {
    decode_4::<Run, Run3>(Table::Runs, bytes)
}

/// Decodes a job's run list.
pub fn decode_run_list(bytes: &[u8]) -> Result<RunList, StateFault> {
    decode(Table::JobRuns, bytes)
}

/// The stored job record, as it is (without its guard's cursor).
fn get_job_record<T: Tables>(t: &T, id: &str) -> TxResult<T, Option<Job>> {
    match t.get(Table::Jobs, id.as_bytes())? {
        None => Ok(None),
        Some(bytes) => decode_job(&bytes).map(Some).map_err(T::Error::from),
    }
}

/// The job as it stands: its record, with the cursor of its guard.
pub(super) fn get_job<T: Tables>(t: &T, id: &str) -> TxResult<T, Option<Job>> {
    let Some(mut job) = get_job_record(t, id)? else {
        return Ok(None);
    };
    if let Some(guard) = get_stored_guard(t, id)? {
        guard.apply_to(&mut job);
    }
    Ok(Some(job))
}

pub(super) fn get_stored_guard<T: Tables>(t: &T, id: &str) -> TxResult<T, Option<Guard>> {
    Ok(t.get(Table::Guards, id.as_bytes())?
        .and_then(|b| Guard::decode(&b)))
}

/// A job's guard: its own record, or for a job last written by schema 1, from the job record.
pub(super) fn get_guard<T: Tables>(t: &T, id: &str) -> TxResult<T, Option<Guard>> {
    match get_stored_guard(t, id)? {
        Some(g) => Ok(Some(g)),
        None => Ok(get_job_record(t, id)?.map(|j| Guard::of(&j))),
    }
}

pub(super) fn put_guard<T: Tables>(t: &T, id: &str, guard: Guard) -> TxResult<T, ()> {
    t.put(Table::Guards, id.as_bytes(), guard.encode())
}

pub(super) fn get_run<T: Tables>(t: &T, id: &str) -> TxResult<T, Option<Run>> {
    match t.get(Table::Runs, id.as_bytes())? {
        None => Ok(None),
        Some(bytes) => decode_run(&bytes).map(Some).map_err(T::Error::from),
    }
}

pub(super) fn get_run_list<T: Tables>(t: &T, job_id: &str) -> TxResult<T, RunList> {
    Ok(get_record(t, Table::JobRuns, job_id)?.unwrap_or_default())
}

/// Writes the job record, its guard and its index entries; `old` is the record it replaces.
pub(super) fn put_job<T: Tables>(t: &T, job: &Job, old: Option<&Job>) -> TxResult<T, ()> {
    put_guard(t, &job.id, Guard::of(job))?;
    let new_keys = job_index_keys(job);
    let old_keys = old.map(job_index_keys).unwrap_or_default();
    for k in old_keys.iter().filter(|k| !new_keys.contains(k)) {
        t.del(Table::JobIndex, k)?;
    }
    for k in new_keys.into_iter().filter(|k| !old_keys.contains(k)) {
        t.put(Table::JobIndex, &k, Vec::new())?;
    }
    t.put(Table::Jobs, job.id.as_bytes(), encode_4(job))
}

/// Removes the job record, its guard and its index entries (not its runs).
pub(super) fn delete_job_record<T: Tables>(t: &T, job: &Job) -> TxResult<T, ()> {
    for k in job_index_keys(job) {
        t.del(Table::JobIndex, &k)?;
    }
    t.del(Table::Jobs, job.id.as_bytes())?;
    t.del(Table::Guards, job.id.as_bytes())
}

/// Writes a run and keeps its index entries in step with its status. `old` is the stored version.
pub(super) fn put_run<T: Tables>(t: &T, run: &Run, old: Option<&Run>) -> TxResult<T, ()> {
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
    t.put(Table::Runs, run.id.as_bytes(), encode_4(run))
}

/// Removes a run and its index entries (not its entry in the job's run list).
pub(super) fn delete_run<T: Tables>(t: &T, run: &Run) -> TxResult<T, ()> {
    t.del(Table::Runs, run.id.as_bytes())?;
    t.del(
        Table::ByStatus,
        &status_key(run.status, run.scheduled_at_ms, &run.id),
    )
}

/// Adds a new run to its job's list, dropping the oldest finished runs beyond `retention`.
pub(super) fn insert_run<T: Tables>(t: &T, run: &Run, retention: u32) -> TxResult<T, ()> {
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

/// On pause (or a schedule change): runs claimed ahead of time that fall due after `pause_ms`
/// and have no attempt yet are dropped, not recorded — they fall due while the job is paused
/// (or belong to the schedule replaced). Returns the latest due instant after `pause_ms` of a
/// run kept.
pub(super) fn forget_runs_due_after<T: Tables>(
    t: &T,
    job_id: &str,
    pause_ms: i64,
) -> TxResult<T, Option<i64>> {
    let list = get_run_list(t, job_id)?;
    let mut kept = Vec::with_capacity(list.len());
    let mut latest_kept = None;
    for (due, id) in list {
        if due > pause_ms {
            if let Some(run) = get_run(t, &id)? {
                if run.status == RunStatus::Pending && run.attempts.is_empty() {
                    delete_run(t, &run)?;
                    continue;
                }
            }
            latest_kept = latest_kept.max(Some(due));
        }
        kept.push((due, id));
    }
    t.put(Table::JobRuns, job_id.as_bytes(), compact(&kept))?;
    Ok(latest_kept)
}

/// Removes every run of a job.
pub(super) fn delete_job_runs<T: Tables>(t: &T, job_id: &str) -> TxResult<T, ()> {
    for (_, id) in get_run_list(t, job_id)? {
        if let Some(run) = get_run(t, &id)? {
            delete_run(t, &run)?;
        }
    }
    t.del(Table::JobRuns, job_id.as_bytes())
}
