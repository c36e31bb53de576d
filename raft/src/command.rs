//! `Command` (the payload of every normal log entry) and `CommandResult` (what `apply` returns
//! for it), plus the job records they carry. This is a persisted format: it lives in the Raft log
//! and in snapshots, so fields are only ever added with `#[serde(default)]`; a breaking change
//! bumps `store::SCHEMA_VERSION`.
//!
//! Every value that depends on the clock or on randomness (times, generated ids) is stamped into
//! the command by the node that proposes it, so `apply` stays deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::typ::NodeId;

/// Unix time in milliseconds (UTC). The replicated state never stores any other time format.
pub type UnixMs = i64;

/// A schedule as the user gave it, with durations and instants normalised to milliseconds.
/// Parsing and validation (cron syntax, time zones) happen before proposing; the replicated core
/// treats the schedule as opaque data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleSpec {
    /// Once, at this instant.
    At { at_ms: UnixMs },
    /// Once, this long after the create was accepted.
    After { after_ms: u64 },
    /// Every `every_ms`, starting at `start_at_ms` (or one period after creation).
    Every {
        every_ms: u64,
        start_at_ms: Option<UnixMs>,
    },
    /// A crontab expression evaluated in an IANA time zone.
    Cron { expr: String, timezone: String },
}

/// Retry policy of a job's deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrySpec {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
    pub jitter: f64,
}

/// What happens to runs that could not be dispatched within `grace_ms` of their due instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    FireOnce,
    FireAll,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MisfireSpec {
    pub policy: MisfirePolicy,
    pub grace_ms: u64,
    pub catchup_window_ms: u64,
}

/// A job's definition: everything the user controls. Two creates with equal specs are the same
/// request (safe retry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub schedule: ScheduleSpec,
    pub retry: RetrySpec,
    pub timeout_ms: u64,
    pub misfire: MisfireSpec,
    pub paused: bool,
}

/// A job as stored in the state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub spec: JobSpec,
    /// Log index of the entry that created this job. A job deleted and created again under the
    /// same id gets a new incarnation, and so new run ids.
    pub incarnation: u64,
    pub created_at_ms: UnixMs,
    pub updated_at_ms: UnixMs,
    /// Starts at 1 and increments on every change.
    pub version: u64,
}

/// The payload of a normal log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Create a job; an existing job with an equal spec is returned unchanged, another spec is a
    /// conflict.
    CreateJob {
        id: String,
        spec: JobSpec,
        now_ms: UnixMs,
    },
    /// Create or replace a job.
    PutJob {
        id: String,
        spec: JobSpec,
        now_ms: UnixMs,
    },
    DeleteJob {
        id: String,
        now_ms: UnixMs,
    },
    SetPaused {
        id: String,
        paused: bool,
        now_ms: UnixMs,
    },
    /// Records where a node serves the public API, so any node can describe the cluster.
    SetNodeInfo {
        node_id: NodeId,
        api_addr: String,
    },
    /// Names the cluster once; later proposals with another id are ignored.
    SetClusterId {
        cluster_id: String,
    },
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateJob { .. } => "create_job",
            Command::PutJob { .. } => "put_job",
            Command::DeleteJob { .. } => "delete_job",
            Command::SetPaused { .. } => "set_paused",
            Command::SetNodeInfo { .. } => "set_node_info",
            Command::SetClusterId { .. } => "set_cluster_id",
        }
    }
}

/// What applying one log entry produced. Rejections are values, never errors: `apply` itself
/// cannot fail on a well-formed command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandResult {
    /// Blank and membership entries, and commands with nothing to report.
    Done,
    /// The job after the command. `created` is true when the command created it; `changed` is
    /// false when the command was a no-op (safe retry, pause of a paused job).
    Job {
        job: Job,
        created: bool,
        changed: bool,
    },
    /// The job that was deleted.
    Deleted {
        job: Job,
    },
    NotFound,
    /// A create found a job with this id and another definition.
    Conflict {
        existing: Job,
    },
}
