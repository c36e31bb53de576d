//! `Command` (the payload of every normal log entry) and `CommandResult` (what `apply` returns
//! for it), plus the job records they carry. These are persisted formats, in two encodings:
//! postcard in the log and the state machine (positional: no serde attribute postcard cannot
//! honour, and a changed field needs a new format byte with a decoder kept for the old one), and
//! JSON between nodes and in the data of schemas 1 and 2 (fields are only ever added there with
//! `#[serde(default)]`). A breaking change bumps `Machine::FORMAT_VERSION` (`crate::replicated`).
//!
//! Every value that depends on the clock or on randomness (times, generated ids) is stamped into
//! the command by the node that proposes it, so `apply` stays deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Node ids are the small integers given with `--node-id`. The hookd crate names only this one;
/// the replication crate's `NodeId` is the same `u64` (checked where the two meet, in
/// `replicated`).
pub type NodeId = u64;

/// Unix time in milliseconds (UTC). The replicated state never stores any other time format.
pub type UnixMs = i64;

pub use crate::schedule::spec::ScheduleSpec;

/// Retry policy of a job's deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct RetrySpec {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
    pub jitter: f64,
}

/// What happens to runs that could not be dispatched within `grace_ms` of their due instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    FireOnce,
    FireAll,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct MisfireSpec {
    pub policy: MisfirePolicy,
    pub grace_ms: u64,
    pub catchup_window_ms: u64,
}

/// A job's definition: everything the user controls. Two creates with equal specs are the same
/// request (safe retry).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
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
    /// Names in `headers` whose values are secrets: sent as given, shown as `MASK` by the API,
    /// never logged (`Debug` masks them too).
    #[serde(default)]
    pub secret_headers: Vec<String>,
    /// Everything format 4 added, kept self-describing inside postcard (see `JobExt`).
    #[serde(default, with = "ext_encoding")]
    pub ext: JobExt,
}

/// The fields of a job's definition added after format 3. In the log and the tables (postcard,
/// positional) they travel as one JSON document, so a field added here later (always with
/// `#[serde(default)]`) changes no stored format; between nodes (JSON) they are a plain object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct JobExt {
    /// Label pairs (`core::labels` has their rules), the keys of the label index.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A cron schedule's `start_at`: no fire before it (an interval's is its anchor, in
    /// `ScheduleSpec::Every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<UnixMs>,
    /// No fire after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at_ms: Option<UnixMs>,
    /// The schedule's first this many fires, then no more (`plan::span`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u32>,
    /// Each run is due up to this long after its nominal instant (`plan::jitter_offset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
    /// What a run falling due does while another is open (none: `allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<super::overlap::Overlap>,
    /// Where a `run.succeeded` event of this job goes (`core::events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Endpoint>,
    /// Where a `run.failed` event of this job goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Endpoint>,
}

impl JobExt {
    pub fn is_empty(&self) -> bool {
        *self == JobExt::default()
    }
}

/// An extension struct (`JobExt`, `RunExt`) as JSON bytes in postcard (none when it is the
/// default), as itself in JSON: fields added to it later change no postcard layout.
mod ext_encoding {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T, S>(ext: &T, s: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + Default + PartialEq,
        S: Serializer,
    {
        if s.is_human_readable() {
            return ext.serialize(s);
        }
        let bytes = if *ext == T::default() {
            Vec::new()
        } else {
            serde_json::to_vec(ext).map_err(serde::ser::Error::custom)?
        };
        bytes.serialize(s)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: DeserializeOwned + Default,
        D: Deserializer<'de>,
    {
        if d.is_human_readable() {
            return T::deserialize(d);
        }
        let bytes = Vec::<u8>::deserialize(d)?;
        if bytes.is_empty() {
            return Ok(T::default());
        }
        serde_json::from_slice(&bytes).map_err(D::Error::custom)
    }
}

/// A job's definition as formats 3 and earlier stored it in postcard (log entries, job records):
/// read, never written.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct JobSpec3 {
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub schedule: ScheduleSpec,
    pub retry: RetrySpec,
    pub timeout_ms: u64,
    pub misfire: MisfireSpec,
    pub paused: bool,
    pub secret_headers: Vec<String>,
}

/// Masks secrets as `JobSpec` does.
impl std::fmt::Debug for JobSpec3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        JobSpec::from(self.clone()).fmt(f)
    }
}

/// The spec without what format 4 added (`ext`).
impl From<JobSpec> for JobSpec3 {
    fn from(s: JobSpec) -> JobSpec3 {
        JobSpec3 {
            url: s.url,
            method: s.method,
            headers: s.headers,
            body: s.body,
            schedule: s.schedule,
            retry: s.retry,
            timeout_ms: s.timeout_ms,
            misfire: s.misfire,
            paused: s.paused,
            secret_headers: s.secret_headers,
        }
    }
}

impl From<JobSpec3> for JobSpec {
    fn from(s: JobSpec3) -> JobSpec {
        JobSpec {
            url: s.url,
            method: s.method,
            headers: s.headers,
            body: s.body,
            schedule: s.schedule,
            retry: s.retry,
            timeout_ms: s.timeout_ms,
            misfire: s.misfire,
            paused: s.paused,
            secret_headers: s.secret_headers,
            ext: JobExt::default(),
        }
    }
}

/// What the API shows instead of a secret header's value; sent back in a write, it means "keep
/// the stored value".
pub const MASK: &str = "***";

/// Where a request goes: a URL and headers, some of whose values are secret (`secret_headers`,
/// sent as given, shown as `MASK`, never logged). A job's own (`JobSpec::endpoint`), and an
/// event's destination: a job's `on_success`/`on_failure`, a notification (`core::events`).
/// Stored inside JSON only (`JobExt`, notification and event records), never positionally.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct Endpoint {
    // Positional in postcard (`events::NotificationSpec` in a command): no field skipped.
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub secret_headers: Vec<String>,
}

impl Endpoint {
    /// This endpoint with every secret header sent as `MASK` replaced by the value `stored`
    /// has for it. Err names a masked header with no stored value to keep.
    pub fn unmask(&self, stored: Option<&Endpoint>) -> Result<Endpoint, String> {
        let mut out = self.clone();
        for name in &self.secret_headers {
            if out.headers.get(name).map(String::as_str) != Some(MASK) {
                continue;
            }
            match stored.and_then(|s| s.headers.get(name)) {
                Some(v) if v != MASK => {
                    out.headers.insert(name.clone(), v.clone());
                }
                _ => return Err(name.clone()),
            }
        }
        Ok(out)
    }

    /// Whether the client sent any secret as `MASK` (a secret header or the URL's password).
    pub fn has_masked(&self) -> bool {
        self.secret_headers
            .iter()
            .any(|n| self.headers.get(n).map(String::as_str) == Some(MASK))
            || url::Url::parse(&self.url).is_ok_and(|u| u.password() == Some(MASK))
    }

    /// The URL with its password, if any, replaced by `MASK`.
    pub fn masked_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some(MASK));
                u.to_string()
            }
            _ => self.url.clone(),
        }
    }

    /// The headers with every secret value replaced by `MASK`.
    pub fn masked_headers(&self) -> BTreeMap<String, String> {
        self.headers
            .iter()
            .map(|(k, v)| {
                let v = if self.secret_headers.contains(k) {
                    MASK.to_owned()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// This endpoint with its secrets masked: what the API shows.
    pub fn masked(&self) -> Endpoint {
        Endpoint {
            url: self.masked_url(),
            headers: self.masked_headers(),
            secret_headers: self.secret_headers.clone(),
        }
    }

    /// This endpoint, sent by a client, made ready to store over `stored` (SPEC §7): a URL
    /// password sent as `MASK` becomes the stored one, and a stored secret (a masked header or
    /// the URL's password) is kept only while the URL's origin (scheme, host, port) is
    /// unchanged, so nobody moves a secret to another host without sending it. `Err` names the
    /// field, under `prefix` (`""` for a job's own, `"on_success."`, …).
    pub fn keep_secrets_from(
        &self,
        stored: Option<&Endpoint>,
        prefix: &str,
    ) -> Result<Endpoint, (String, String)> {
        let mut out = self.clone();
        let masked_headers: Vec<&String> = self
            .secret_headers
            .iter()
            .filter(|n| self.headers.get(*n).map(String::as_str) == Some(MASK))
            .collect();
        let parsed = url::Url::parse(&self.url).ok();
        let masked_password = parsed.as_ref().is_some_and(|u| u.password() == Some(MASK));
        if masked_headers.is_empty() && !masked_password {
            return Ok(out);
        }
        let stored_url = stored.and_then(|s| url::Url::parse(&s.url).ok());
        let same_origin = match (&parsed, &stored_url) {
            (Some(a), Some(b)) => a.origin() == b.origin(),
            _ => false,
        };
        let refuse = |field: String, what: &str| {
            Err((
                format!("{prefix}{field}"),
                format!(
                    "{what} is sent as {MASK:?}, which keeps the stored value only while the \
                     URL's scheme, host and port stay the same; send the value"
                ),
            ))
        };
        if let Some(name) = masked_headers.first() {
            if stored.is_some() && !same_origin {
                return refuse(format!("headers.{name}"), &format!("secret header {name}"));
            }
        }
        if masked_password {
            let kept = stored_url
                .as_ref()
                .filter(|_| same_origin)
                .and_then(|u| u.password().map(str::to_owned));
            match (kept, parsed) {
                (Some(password), Some(mut u)) => {
                    let _ = u.set_password(Some(&password));
                    out.url = u.to_string();
                }
                _ => return refuse("url".into(), "the URL's password"),
            }
        }
        Ok(out)
    }
}

/// Masks secrets, as the API does.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.masked_url())
            .field("headers", &self.masked_headers())
            .field("secret_headers", &self.secret_headers)
            .finish()
    }
}

impl JobSpec {
    /// Where the job's requests go.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self.url.clone(),
            headers: self.headers.clone(),
            secret_headers: self.secret_headers.clone(),
        }
    }

    fn set_endpoint(&mut self, e: Endpoint) {
        self.url = e.url;
        self.headers = e.headers;
        self.secret_headers = e.secret_headers;
    }

    /// The job's callbacks, each with its field prefix in the API.
    pub fn callbacks(&self) -> [(&'static str, Option<&Endpoint>); 2] {
        [
            ("on_success.", self.ext.on_success.as_ref()),
            ("on_failure.", self.ext.on_failure.as_ref()),
        ]
    }

    fn callbacks_mut(&mut self) -> [(&'static str, Option<&mut Endpoint>); 2] {
        [
            ("on_success.", self.ext.on_success.as_mut()),
            ("on_failure.", self.ext.on_failure.as_mut()),
        ]
    }

    /// This spec with every secret header sent as `MASK` (its own and its callbacks') replaced
    /// by the value `stored` has for it. Err names the field of a masked header with no stored
    /// value to keep.
    pub fn unmask(&self, stored: Option<&JobSpec>) -> Result<JobSpec, String> {
        let mut spec = self.clone();
        let own = self
            .endpoint()
            .unmask(stored.map(JobSpec::endpoint).as_ref())
            .map_err(|name| format!("headers.{name}"))?;
        spec.set_endpoint(own);
        let stored_callbacks = stored.map(JobSpec::callbacks);
        for (i, (prefix, callback)) in spec.callbacks_mut().into_iter().enumerate() {
            if let Some(cb) = callback {
                let kept = stored_callbacks.and_then(|s| s[i].1);
                *cb = cb
                    .unmask(kept)
                    .map_err(|name| format!("{prefix}headers.{name}"))?;
            }
        }
        Ok(spec)
    }

    /// Whether the client sent any secret as `MASK` (a secret header or a URL's password, its
    /// own or a callback's).
    pub fn has_masked(&self) -> bool {
        self.endpoint().has_masked()
            || self
                .callbacks()
                .into_iter()
                .any(|(_, cb)| cb.is_some_and(Endpoint::has_masked))
    }

    /// The URL with its password, if any, replaced by `MASK`.
    pub fn masked_url(&self) -> String {
        self.endpoint().masked_url()
    }

    /// This spec, sent by a client, made ready to store over `stored` (`Endpoint::
    /// keep_secrets_from`, for its own endpoint and each callback's). `Err` names the field.
    pub fn keep_secrets_from(&self, stored: Option<&JobSpec>) -> Result<JobSpec, (String, String)> {
        let mut spec = self.clone();
        let own = self
            .endpoint()
            .keep_secrets_from(stored.map(JobSpec::endpoint).as_ref(), "")?;
        spec.set_endpoint(own);
        let stored_callbacks = stored.map(JobSpec::callbacks);
        for (i, (prefix, callback)) in spec.callbacks_mut().into_iter().enumerate() {
            if let Some(cb) = callback {
                // A callback added by this write has nothing stored to keep.
                let kept = stored_callbacks.and_then(|s| s[i].1);
                *cb = cb.keep_secrets_from(kept, prefix)?;
            }
        }
        Ok(spec)
    }

    /// The headers with every secret value replaced by `MASK`.
    pub fn masked_headers(&self) -> BTreeMap<String, String> {
        self.endpoint().masked_headers()
    }
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("url", &self.masked_url())
            .field("method", &self.method)
            .field("headers", &self.masked_headers())
            .field("body", &self.body)
            .field("schedule", &self.schedule)
            .field("retry", &self.retry)
            .field("timeout_ms", &self.timeout_ms)
            .field("misfire", &self.misfire)
            .field("paused", &self.paused)
            .field("secret_headers", &self.secret_headers)
            .field("ext", &self.ext)
            .finish()
    }
}

/// A job as stored in the state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub spec: JobSpec,
    /// Number of the command that created this job: its entry's log index × 2^16 plus its slot
    /// in a batch. A job deleted and created again under the same id gets a new incarnation,
    /// and so new run ids.
    pub incarnation: u64,
    pub created_at_ms: UnixMs,
    pub updated_at_ms: UnixMs,
    /// Starts at 1 and increments on every change.
    pub version: u64,
    /// The instant `after` and `every` (without `start_at`) count from: the create, or the last
    /// replace that changed the schedule.
    pub schedule_base_ms: UnixMs,
    /// Runs due at or before this instant are claimed, skipped or were passed over (paused,
    /// replaced); the next run is the schedule's first fire strictly after it. Only moves forward.
    pub cursor_ms: UnixMs,
}

/// A job record as format 3 stored it (postcard): read, never written.
#[derive(Deserialize)]
pub struct Job3 {
    pub id: String,
    pub spec: JobSpec3,
    pub incarnation: u64,
    pub created_at_ms: UnixMs,
    pub updated_at_ms: UnixMs,
    pub version: u64,
    pub schedule_base_ms: UnixMs,
    pub cursor_ms: UnixMs,
}

impl From<Job3> for Job {
    fn from(j: Job3) -> Job {
        Job {
            id: j.id,
            spec: j.spec.into(),
            incarnation: j.incarnation,
            created_at_ms: j.created_at_ms,
            updated_at_ms: j.updated_at_ms,
            version: j.version,
            schedule_base_ms: j.schedule_base_ms,
            cursor_ms: j.cursor_ms,
        }
    }
}

/// A leadership epoch: the term and node id of a leader. Claims name the epoch of the leader
/// that proposes them, and `apply` accepts them only in an entry of that same leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct Epoch {
    pub term: u64,
    pub node_id: NodeId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Claimed, no attempt recorded yet.
    Pending,
    /// Not stored: the API shows an open run whose attempt time has passed as in flight.
    InFlight,
    /// An attempt failed; another is due at `next_attempt_at_ms`.
    Retrying,
    Succeeded,
    /// The last attempt failed.
    Failed,
    /// Misfired and passed over by the misfire policy.
    Skipped,
}

impl RunStatus {
    /// Runs in these states still need a delivery attempt.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            RunStatus::Pending | RunStatus::InFlight | RunStatus::Retrying
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::InFlight => "in_flight",
            RunStatus::Retrying => "retrying",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
        }
    }
}

/// One delivery attempt of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct Attempt {
    pub n: u32,
    pub started_at_ms: UnixMs,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub node_id: NodeId,
}

/// Consecutive misfired runs recorded as one skipped entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRange {
    pub count: u64,
    pub first_ms: UnixMs,
    pub last_ms: UnixMs,
}

/// One scheduled (or manually triggered) occurrence of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Derived from the job's incarnation and the due instant, so every leader names a run alike.
    pub id: String,
    pub job_id: String,
    pub incarnation: u64,
    pub scheduled_at_ms: UnixMs,
    pub status: RunStatus,
    pub attempts: Vec<Attempt>,
    pub next_attempt_at_ms: Option<UnixMs>,
    /// Created by `trigger` rather than the schedule.
    pub manual: bool,
    pub skipped: Option<SkippedRange>,
    pub claimed_at_ms: UnixMs,
    /// Fields added since format 3 (JSON inside postcard).
    #[serde(default, with = "ext_encoding")]
    pub ext: RunExt,
}

/// A run's fields added after format 3; each `#[serde(default)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunExt {
    /// When its first attempt was due, if not at `scheduled_at_ms` (a jittered run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<UnixMs>,
    /// Why it was skipped, when not a misfire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<SkipReason>,
    /// Cleared to start by its job's overlap policy (`Command::StartRun`): open from then on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub started: bool,
    /// Held back by `buffer_one` until the open run before it ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
    /// An open run another waits for (`buffer_one`): its end releases that one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocking: bool,
    /// Why it failed without a last attempt of its own (`superseded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
}

/// Why a run was recorded skipped, when not a misfire (a misfired run has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    Overlap,
}

/// A run record as format 3 stored it (postcard): read, never written.
#[derive(Deserialize)]
pub struct Run3 {
    pub id: String,
    pub job_id: String,
    pub incarnation: u64,
    pub scheduled_at_ms: UnixMs,
    pub status: RunStatus,
    pub attempts: Vec<Attempt>,
    pub next_attempt_at_ms: Option<UnixMs>,
    pub manual: bool,
    pub skipped: Option<SkippedRange>,
    pub claimed_at_ms: UnixMs,
}

impl From<Run3> for Run {
    fn from(r: Run3) -> Run {
        Run {
            id: r.id,
            job_id: r.job_id,
            incarnation: r.incarnation,
            scheduled_at_ms: r.scheduled_at_ms,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at_ms: r.next_attempt_at_ms,
            manual: r.manual,
            skipped: r.skipped,
            claimed_at_ms: r.claimed_at_ms,
            ext: RunExt::default(),
        }
    }
}

impl Run {
    /// The id of the scheduled run of job incarnation `incarnation` due at `due_ms`.
    pub fn scheduled_id(incarnation: u64, due_ms: UnixMs) -> String {
        format!("run_{incarnation:x}_{due_ms:x}")
    }

    /// When its next attempt falls due: its retry's instant, or its own.
    pub fn next_due_ms(&self) -> UnixMs {
        self.next_attempt_at_ms.unwrap_or(self.scheduled_at_ms)
    }
}

/// What a claim asks for one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// Deliver the run due at `due_ms`.
    Deliver,
    /// Record `count` misfired runs from `first_ms` to `due_ms` as skipped.
    Skip { count: u64, first_ms: UnixMs },
    /// Deliver the run of nominal instant `due_ms` at `at_ms`, its jittered due instant.
    DeliverAt { at_ms: UnixMs },
}

impl ClaimKind {
    /// When the first attempt of the run claimed with `due_ms` is due; none for a skip.
    pub fn attempt_at(&self, due_ms: UnixMs) -> Option<UnixMs> {
        match self {
            ClaimKind::Deliver => Some(due_ms),
            ClaimKind::DeliverAt { at_ms } => Some(*at_ms),
            ClaimKind::Skip { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct ClaimItem {
    pub job_id: String,
    pub incarnation: u64,
    pub due_ms: UnixMs,
    pub kind: ClaimKind,
}

/// How an attempt ended, as the leader decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum AttemptResult {
    Succeeded,
    RetryAt(UnixMs),
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct AttemptOutcome {
    pub run_id: String,
    pub attempt: Attempt,
    pub result: AttemptResult,
}

/// The payload of a normal log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// `CreateJob` as format 3 wrote it (postcard is positional: this variant keeps its place,
    /// and its spec the layout of then). Still proposed for a spec that uses nothing format 4
    /// added (`Command::create_job`), so nodes of the previous version read it during a rolling
    /// upgrade.
    CreateJob3 {
        id: String,
        spec: JobSpec3,
        now_ms: UnixMs,
    },
    /// `PutJob` as format 3 wrote it; proposed as `CreateJob3` is (`Command::put_job`).
    PutJob3 {
        id: String,
        spec: JobSpec3,
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
    /// Claims due runs for delivery (or records misfired ones as skipped), advancing each job's
    /// cursor. Accepted only in an entry proposed by `epoch`, and per item only for the job's
    /// current incarnation, while not paused, and past its cursor.
    ClaimRuns {
        epoch: Epoch,
        now_ms: UnixMs,
        items: Vec<ClaimItem>,
        /// Runs kept per job; older finished runs are dropped.
        retention: u32,
    },
    /// Records finished attempts.
    RecordAttempts {
        outcomes: Vec<AttemptOutcome>,
    },
    /// Schedules another delivery of a failed run.
    RetryRun {
        run_id: String,
        now_ms: UnixMs,
    },
    /// Creates an extra run of a job, due now.
    TriggerJob {
        id: String,
        now_ms: UnixMs,
        retention: u32,
    },
    /// Several commands proposed together in one entry (group commit), applied in order.
    Batch {
        commands: Vec<Command>,
    },
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
    /// One action on each of `ids` (job ids, or run ids for `Retry`), in strictly ascending
    /// order: one bounded part of a bulk request (`POST /v1/jobs/bulk`, `POST /v1/runs/retry`).
    /// Each id is applied as its single-job command would be.
    Bulk {
        action: BulkAction,
        ids: Vec<String>,
        now_ms: UnixMs,
    },
    /// `command` (a replace, delete, pause or resume of job `id`) applied only while the job
    /// exists and has one of `versions` (any version when empty: `If-Match: *`).
    IfVersion {
        id: String,
        versions: Vec<u64>,
        command: Box<Command>,
    },
    /// `command` (a create, trigger or retry) under an `Idempotency-Key`: applied and
    /// remembered the first time; a repeat of the same request (`fingerprint`) within 24 h
    /// gets what the first got, another request with the key is refused.
    Idempotent {
        key: String,
        fingerprint: [u8; 32],
        now_ms: UnixMs,
        command: Box<Command>,
    },
    /// Remembers the whole answer (`status`, JSON `body`) a request with `key` got, for a
    /// request that took many commands (a bulk request); the first answer stays.
    Remember {
        key: String,
        fingerprint: [u8; 32],
        now_ms: UnixMs,
        status: u16,
        body: String,
    },
    /// Asks, before the first attempt of a run of a job with an overlap policy, whether it may
    /// start; `apply` decides by the policy and the job's open runs (`core::overlap`).
    StartRun {
        run_id: String,
    },
    /// Sets (or with none, removes) the limits of target `target` (`host:port`).
    SetTargetPolicy {
        target: String,
        policy: Option<TargetPolicy>,
    },
    /// Creates or replaces (or with none, deletes) notification `id` (`core::events`).
    SetNotification {
        id: String,
        spec: Option<super::events::NotificationSpec>,
        now_ms: UnixMs,
    },
    /// A cluster event the leader saw at `at_ms` (`core::events`).
    Announce {
        announcement: super::events::Announcement,
        at_ms: UnixMs,
    },
    /// Raises the cluster's format to `format` (never lowers it): from then on nodes write
    /// it (format 5; `records::FORMAT_NEWEST`). Proposed when a cluster is made, and by
    /// `POST /v1/cluster/upgrade/finalize` once every member runs a release that reads it.
    SetFormat {
        format: u32,
    },
}

/// A target's limits (`PUT /v1/targets/{host:port}/policy`), replacing the node's defaults:
/// `max_concurrency` attempts in flight, and at most `rate_per_s` attempts started a second,
/// `burst` at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct TargetPolicy {
    // Positional in postcard (log entries): no field may be skipped.
    pub max_concurrency: Option<u32>,
    /// `rate_per_s` in thousandths: an integer, so every node computes the same limit.
    pub rate_milli_per_s: Option<u64>,
    pub burst: Option<u32>,
}

/// What a `Bulk` command does to each of its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    Pause,
    Resume,
    Delete,
    /// A manual run of each job; `retention` as `TriggerJob`'s.
    Trigger {
        retention: u32,
    },
    /// Deliver each failed run again; the ids are run ids.
    Retry,
}

impl BulkAction {
    /// The single-id command this action applies to `id`.
    pub fn command(self, id: &str, now_ms: UnixMs) -> Command {
        let id = id.to_owned();
        match self {
            BulkAction::Pause | BulkAction::Resume => Command::SetPaused {
                id,
                paused: self == BulkAction::Pause,
                now_ms,
            },
            BulkAction::Delete => Command::DeleteJob { id, now_ms },
            BulkAction::Trigger { retention } => Command::TriggerJob {
                id,
                now_ms,
                retention,
            },
            BulkAction::Retry => Command::RetryRun { run_id: id, now_ms },
        }
    }

    /// Whether the action adds work (`Command::sheddable`).
    fn sheddable(self) -> bool {
        !matches!(self, BulkAction::Pause | BulkAction::Delete)
    }
}

/// A rough size in bytes of a job command carrying these fields.
fn job_command_bytes(
    url: &str,
    body: Option<&String>,
    headers: &BTreeMap<String, String>,
) -> usize {
    256 + url.len()
        + body.map_or(0, String::len)
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
}

impl Command {
    /// A create as the log carries it: in format 3's variant while the spec uses nothing format
    /// 4 added, so that nodes of the previous version still read it during a rolling upgrade.
    pub fn create_job(id: String, spec: JobSpec, now_ms: UnixMs) -> Command {
        if spec.ext.is_empty() {
            Command::CreateJob3 {
                id,
                spec: spec.into(),
                now_ms,
            }
        } else {
            Command::CreateJob { id, spec, now_ms }
        }
    }

    /// A replace, as `create_job` chooses its variant.
    pub fn put_job(id: String, spec: JobSpec, now_ms: UnixMs) -> Command {
        if spec.ext.is_empty() {
            Command::PutJob3 {
                id,
                spec: spec.into(),
                now_ms,
            }
        } else {
            Command::PutJob { id, spec, now_ms }
        }
    }

    /// A rough size in bytes, to keep batches bounded.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Command::CreateJob { spec, .. } | Command::PutJob { spec, .. } => {
                job_command_bytes(&spec.url, spec.body.as_ref(), &spec.headers)
                    + spec
                        .ext
                        .labels
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 8)
                        .sum::<usize>()
            }
            Command::CreateJob3 { spec, .. } | Command::PutJob3 { spec, .. } => {
                job_command_bytes(&spec.url, spec.body.as_ref(), &spec.headers)
            }
            Command::ClaimRuns { items, .. } => 64 + items.len() * 96,
            Command::RecordAttempts { outcomes } => 64 + outcomes.len() * 256,
            Command::Batch { commands } => commands.iter().map(Command::approx_bytes).sum(),
            Command::Bulk { ids, .. } => 64 + ids.iter().map(|id| id.len() + 8).sum::<usize>(),
            Command::IfVersion { command, .. } | Command::Idempotent { command, .. } => {
                128 + command.approx_bytes()
            }
            Command::Remember { body, .. } => 384 + body.len(),
            Command::SetNotification { spec: Some(n), .. } => {
                256 + n.to.url.len()
                    + n.to
                        .headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            }
            _ => 128,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateJob { .. } | Command::CreateJob3 { .. } => "create_job",
            Command::PutJob { .. } | Command::PutJob3 { .. } => "put_job",
            Command::DeleteJob { .. } => "delete_job",
            Command::SetPaused { .. } => "set_paused",
            Command::SetNodeInfo { .. } => "set_node_info",
            Command::SetClusterId { .. } => "set_cluster_id",
            Command::ClaimRuns { .. } => "claim_runs",
            Command::RecordAttempts { .. } => "record_attempts",
            Command::RetryRun { .. } => "retry_run",
            Command::TriggerJob { .. } => "trigger_job",
            Command::Batch { .. } => "batch",
            Command::Bulk { .. } => "bulk",
            Command::IfVersion { command, .. } | Command::Idempotent { command, .. } => {
                command.kind()
            }
            Command::Remember { .. } => "remember",
            Command::StartRun { .. } => "start_run",
            Command::SetTargetPolicy { .. } => "set_target_policy",
            Command::SetNotification { .. } => "set_notification",
            Command::Announce { .. } => "announce",
            Command::SetFormat { .. } => "set_format",
        }
    }

    /// Whether this command may be proposed again when the fate of its first proposal is
    /// unknown (the leader took it, then went away or timed out): applied twice, it leaves the
    /// state as applied once and answers as the first apply did. A create or replace finds
    /// its own job (`state::same_job`); a request under an `Idempotency-Key` gets what
    /// the first got. Not a conditional or a delete: their repeat answers otherwise.
    pub fn repeatable(&self) -> bool {
        matches!(
            self,
            Command::CreateJob { .. }
                | Command::PutJob { .. }
                | Command::CreateJob3 { .. }
                | Command::PutJob3 { .. }
                | Command::Idempotent { .. }
                | Command::Remember { .. }
        )
    }

    /// Whether a leader over its write backlog refuses this command (`429`) rather than queue
    /// it: client writes that add work. Deletes and pauses shed load and always go through, as
    /// do the dispatcher's claims and records and the nodes' own bookkeeping.
    pub fn sheddable(&self) -> bool {
        match self {
            Command::CreateJob { .. }
            | Command::PutJob { .. }
            | Command::CreateJob3 { .. }
            | Command::PutJob3 { .. }
            | Command::RetryRun { .. }
            | Command::TriggerJob { .. } => true,
            Command::SetPaused { paused, .. } => !paused,
            Command::DeleteJob { .. }
            | Command::SetNodeInfo { .. }
            | Command::SetClusterId { .. }
            | Command::ClaimRuns { .. }
            | Command::RecordAttempts { .. } => false,
            Command::Batch { commands } => commands.iter().any(Command::sheddable),
            Command::Bulk { action, .. } => action.sheddable(),
            Command::IfVersion { command, .. } | Command::Idempotent { command, .. } => {
                command.sheddable()
            }
            Command::Remember { .. }
            | Command::StartRun { .. }
            | Command::SetTargetPolicy { .. }
            | Command::SetNotification { .. }
            | Command::Announce { .. }
            | Command::SetFormat { .. } => false,
        }
    }
}

impl Command {
    /// How many client write commands this is: one for each command the API proposes for a
    /// client's request (a bulk part counts once, a `Batch` its members), none for the
    /// dispatcher's claims, records, start requests and announcements or a node's own
    /// bookkeeping. What `GET /v1/stats` plots as writes.
    pub fn client_writes(&self) -> u64 {
        match self {
            Command::CreateJob3 { .. }
            | Command::PutJob3 { .. }
            | Command::CreateJob { .. }
            | Command::PutJob { .. }
            | Command::DeleteJob { .. }
            | Command::SetPaused { .. }
            | Command::RetryRun { .. }
            | Command::TriggerJob { .. }
            | Command::Bulk { .. }
            | Command::IfVersion { .. }
            | Command::Idempotent { .. }
            | Command::Remember { .. }
            | Command::SetTargetPolicy { .. }
            | Command::SetNotification { .. } => 1,
            Command::Batch { commands } => commands
                .iter()
                .map(|c| match c {
                    Command::Batch { .. } => 0, // batches do not nest: not applied
                    c => c.client_writes(),
                })
                .sum(),
            Command::SetNodeInfo { .. }
            | Command::SetClusterId { .. }
            | Command::ClaimRuns { .. }
            | Command::RecordAttempts { .. }
            | Command::StartRun { .. }
            | Command::Announce { .. }
            | Command::SetFormat { .. } => 0,
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
    /// Per claim item, whether it was accepted.
    Claimed {
        accepted: Vec<bool>,
    },
    /// The run a trigger or retry created or re-opened.
    Run {
        run: Run,
    },
    /// A retry of a run that is not failed.
    NotRetryable {
        run: Run,
    },
    /// A claim from an epoch other than the entry's own leader.
    StaleEpoch,
    /// The command is invalid against the stored state (e.g. a masked secret header with no
    /// stored value to keep); `field` names the offending field.
    Rejected {
        field: String,
        message: String,
    },
    /// One result per command of a `Batch`, in order.
    Batch {
        results: Vec<CommandResult>,
    },
    /// How many ids of a `Bulk` command it changed (a job paused that was not, a run opened).
    Bulk {
        changed: u32,
    },
    /// An `IfVersion` whose job does not exist (`current` none) or has another version.
    PreconditionFailed {
        current: Option<u64>,
    },
    /// A repeat of a request under an idempotency key: what the first one got.
    Recalled {
        recall: super::idempotency::Recall,
    },
    /// An idempotency key used for another request within its 24 hours.
    KeyReused,
    /// Whether a `StartRun`'s run may be attempted now.
    Start {
        go: bool,
    },
    /// A notification after a `SetNotification` (the deleted one after a delete); `created`
    /// when it is new.
    Notification {
        notification: super::events::Notification,
        created: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job command that uses nothing format 4 added goes in format 3's variant, whose
    /// postcard a node of the previous version reads (variant 0 or 1 and the old spec layout);
    /// one with labels needs the new variant.
    #[test]
    fn job_commands_stay_readable_by_the_previous_version_unless_they_use_new_fields() {
        let spec = crate::core::state::tests::spec("http://x/");
        let plain = Command::create_job("a".into(), spec.clone(), 5);
        assert!(matches!(plain, Command::CreateJob3 { .. }), "{plain:?}");
        assert_eq!(
            postcard::to_stdvec(&plain).unwrap()[0],
            0,
            "format 3's CreateJob"
        );
        let put = Command::put_job("a".into(), spec.clone(), 5);
        assert_eq!(
            postcard::to_stdvec(&put).unwrap()[0],
            1,
            "format 3's PutJob"
        );
        let mut labelled = spec;
        labelled.ext.labels.insert("team".into(), "ops".into());
        let new = Command::create_job("a".into(), labelled.clone(), 5);
        assert_eq!(
            new,
            Command::CreateJob {
                id: "a".into(),
                spec: labelled,
                now_ms: 5
            }
        );
    }

    #[test]
    fn writes_are_the_commands_clients_send_counted_once_inside_a_batch() {
        let spec = crate::core::state::tests::spec("http://x/");
        let create = Command::create_job("a".into(), spec, 5);
        let delete = Command::DeleteJob {
            id: "a".into(),
            now_ms: 5,
        };
        let claim = Command::ClaimRuns {
            epoch: Epoch {
                term: 1,
                node_id: 1,
            },
            now_ms: 5,
            items: Vec::new(),
            retention: 10,
        };
        let record = Command::RecordAttempts {
            outcomes: Vec::new(),
        };
        let cases = [
            (create.clone(), 1),
            (delete.clone(), 1),
            (
                Command::Bulk {
                    action: BulkAction::Pause,
                    ids: vec!["a".into(), "b".into()],
                    now_ms: 5,
                },
                1,
            ),
            (
                Command::IfVersion {
                    id: "a".into(),
                    versions: vec![1],
                    command: Box::new(delete.clone()),
                },
                1,
            ),
            (
                Command::SetTargetPolicy {
                    target: "x:80".into(),
                    policy: None,
                },
                1,
            ),
            (claim.clone(), 0),
            (record.clone(), 0),
            (Command::StartRun { run_id: "r".into() }, 0),
            (
                Command::SetNodeInfo {
                    node_id: 1,
                    api_addr: "a:1".into(),
                },
                0,
            ),
            (
                Command::Batch {
                    commands: vec![create, claim, delete, record],
                },
                2,
            ),
            (
                Command::Batch {
                    commands: vec![Command::Batch {
                        commands: vec![Command::DeleteJob {
                            id: "a".into(),
                            now_ms: 5,
                        }],
                    }],
                },
                0,
            ),
        ];
        for (cmd, want) in cases {
            assert_eq!(cmd.client_writes(), want, "{cmd:?}");
        }
    }

    /// Commands are persisted in the log as postcard and sent between nodes as JSON: every
    /// command value survives both. (Compared as bytes: an arbitrary f64 may be NaN.) Found
    /// here: serde_json's default float parser may miss the last bit, so a follower could store
    /// another retry multiplier than its leader; `float_roundtrip` is on for that.
    #[test]
    fn every_command_round_trips_in_postcard_and_json() {
        use arbitrary::{Arbitrary, Unstructured};
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xf0_2a7);
        let (mut checked, mut sent_checked) = (0, 0);
        for _ in 0..2000 {
            let bytes = crate::core::state::tests::edgy_bytes(&mut rng, 512);
            let Ok(cmd) = Command::arbitrary(&mut Unstructured::new(&bytes)) else {
                continue;
            };
            let stored = postcard::to_stdvec(&cmd).unwrap();
            let read: Command = postcard::from_bytes(&stored).unwrap();
            assert_eq!(postcard::to_stdvec(&read).unwrap(), stored);
            // JSON has no NaN or infinity (the API accepts neither); every other value must
            // arrive exactly, or a follower would apply another command than its leader.
            let sent = serde_json::to_vec(&cmd).unwrap();
            if let Ok(got) = serde_json::from_slice::<Command>(&sent) {
                assert_eq!(postcard::to_stdvec(&got).unwrap(), stored);
                sent_checked += 1;
            }
            checked += 1;
        }
        assert!(
            checked > 1000 && sent_checked > 500,
            "{checked} {sent_checked}"
        );
    }
}
