//! The JSON of the public API: requests are parsed strictly and validated field by field into
//! the replicated `JobSpec`; jobs are rendered back in the shape the user sent, plus the
//! server-side fields. Durations are normalised to milliseconds, instants to UTC.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::DateTime;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::core::command::{
    Endpoint, Job, JobExt, JobSpec, MisfirePolicy, MisfireSpec, RetrySpec, RunStatus, ScheduleSpec,
    UnixMs,
};
use crate::core::filter::{self, JobFilter, JobState};
use crate::core::overlap::Overlap;
use crate::core::query::RunFilter;
use crate::core::validate::{self, METHODS};
use crate::limits::*;
use crate::schedule::{CronSchedule, EVERY_MIN};

/// A job as sent to `POST /v1/jobs` or `PUT /v1/jobs/{id}`. Unknown fields are rejected so that
/// typos are not silently ignored; the server-side fields of a job as returned are accepted and
/// ignored, so a GET → edit → PUT round trip works.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "id": "invoice-42-reminder",
    "url": "https://example.com/hooks/remind",
    "method": "POST",
    "headers": {"content-type": "application/json", "authorization": "Bearer s3cret"},
    "secret_headers": ["authorization"],
    "body": "{\"invoice\": 42}",
    "schedule": {"cron": "0 9 * * mon-fri", "timezone": "Europe/Berlin"},
    "retry": {"max_attempts": 5, "initial_backoff": "1s", "max_backoff": "1h", "multiplier": 2.0, "jitter": 0.2},
    "timeout": "10s",
    "misfire": {"policy": "fire_once", "grace": "60s", "catchup_window": "24h"},
    "paused": false
}))]
pub struct JobRequest {
    pub id: Option<String>,
    pub url: String,
    pub method: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub secret_headers: Option<Vec<String>>,
    pub body: Option<String>,
    pub schedule: ScheduleRequest,
    pub retry: Option<RetryRequest>,
    pub timeout: Option<String>,
    pub misfire: Option<MisfireRequest>,
    pub paused: Option<bool>,
    /// Up to 32 pairs; keys `[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?`, values up to 256
    /// characters. Selected by `GET /v1/jobs?selector=`.
    pub labels: Option<BTreeMap<String, String>>,
    /// Each run is due up to this long after its scheduled instant (a fixed offset per run,
    /// the same on every node); at most 1h and the schedule's period.
    pub jitter: Option<String>,
    /// What a run falling due does while an earlier one is open: `allow` (default), `skip`,
    /// `buffer_one`, `cancel_previous`.
    pub overlap: Option<String>,
    /// Once a run succeeded, its `run.succeeded` event is delivered here.
    pub on_success: Option<EndpointRequest>,
    /// Once a run failed for good, its `run.failed` event is delivered here.
    pub on_failure: Option<EndpointRequest>,
    /// Accepted and ignored (as returned by a read), like the other server-side fields below.
    #[serde(rename = "created_at")]
    #[schema(value_type = Option<serde_json::Value>)]
    _created_at: Option<IgnoredAny>,
    #[serde(rename = "updated_at")]
    #[schema(value_type = Option<serde_json::Value>)]
    _updated_at: Option<IgnoredAny>,
    #[serde(rename = "next_fire_at")]
    #[schema(value_type = Option<serde_json::Value>)]
    _next_fire_at: Option<IgnoredAny>,
    #[serde(rename = "state")]
    #[schema(value_type = Option<serde_json::Value>)]
    _state: Option<IgnoredAny>,
    #[serde(rename = "version")]
    #[schema(value_type = Option<serde_json::Value>)]
    _version: Option<IgnoredAny>,
}

/// Where events go: a URL (`http` or `https`), headers sent with each delivery, and which of
/// them are secret (shown as `***`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    pub url: String,
    pub headers: Option<BTreeMap<String, String>>,
    pub secret_headers: Option<Vec<String>>,
}

impl EndpointRequest {
    /// Validates it as the stored form; errors name fields under `prefix` (`on_success.`, …).
    pub fn into_endpoint(self, prefix: &str) -> Result<Endpoint, ApiError> {
        let under = |mut e: ApiError| {
            e.field = e.field.map(|f| format!("{prefix}{f}"));
            e
        };
        let url = validate_url(&self.url).map_err(under)?;
        let headers = validate_headers(self.headers.unwrap_or_default()).map_err(under)?;
        let secret_headers =
            validate_secret_headers(self.secret_headers, &headers).map_err(under)?;
        Ok(Endpoint {
            url,
            headers,
            secret_headers,
        })
    }
}

/// An endpoint as returned: secrets masked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// Omitted when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_headers: Vec<String>,
}

impl EndpointView {
    pub fn new(e: &Endpoint) -> EndpointView {
        let masked = e.masked();
        EndpointView {
            url: masked.url,
            headers: masked.headers,
            secret_headers: masked.secret_headers,
        }
    }
}

/// Exactly one of `at`, `after`, `every` (with `start_at`), `cron` (with `timezone`).
#[derive(Debug, Default, Deserialize, Serialize, Clone, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// With `every` or `cron`: no run after this instant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
    /// With `every` or `cron`: the schedule's first N fires (from `start_at`, or the create),
    /// then the job is `completed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000)]
    pub max_runs: Option<u32>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub multiplier: Option<f64>,
    pub jitter: Option<f64>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MisfireRequest {
    pub policy: Option<String>,
    pub grace: Option<String>,
    pub catchup_window: Option<String>,
}

/// Parses a JSON body into `T`, telling malformed JSON (`400`) from well-formed JSON of the wrong
/// shape (`422`, naming the field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !matches!(inner.classify(), serde_json::error::Category::Data) {
            return ApiError::malformed(format!("request body is not valid JSON: {inner}"));
        }
        let message = strip_position(&inner.to_string());
        // "missing field `url`" is reported at the parent; name the missing field itself.
        let field = match message.split('`').nth(1) {
            Some(name) if message.starts_with("missing field") => join_path(&path, name),
            _ => path.trim_start_matches('.').to_owned(),
        };
        let field = if field.is_empty() { "body".to_owned() } else { field };
        let message = match field.strip_prefix("schedule.") {
            Some(kind) if message.starts_with("unknown field") => format!(
                "unknown schedule kind {kind:?}; a schedule has exactly one of at, after, every (with start_at), cron (with timezone)"
            ),
            _ => message,
        };
        ApiError::invalid(&field, message)
    })
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn join_path(parent: &str, name: &str) -> String {
    match parent.trim_start_matches('.') {
        "" => name.to_owned(),
        p => format!("{p}.{name}"),
    }
}

/// Parses a duration like `500ms`, `30s`, `1h30m`.
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        ApiError::invalid(
            field,
            format!("{value:?} is not a duration like 500ms, 30s, 5m or 1h30m: {e}"),
        )
    })
}

fn bounded_duration(
    field: &str,
    value: &Option<String>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<u64, ApiError> {
    let d = match value {
        Some(v) => parse_duration(field, v)?,
        None => default,
    };
    if d < min || d > max {
        return Err(ApiError::invalid(
            field,
            format!(
                "must be between {} and {}",
                format_duration_ms(min.as_millis() as u64),
                format_duration_ms(max.as_millis() as u64)
            ),
        ));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(ApiError::invalid(
            field,
            "durations have millisecond precision",
        ));
    }
    Ok(d.as_millis() as u64)
}

/// Parses an RFC 3339 instant into unix milliseconds.
pub fn parse_instant(field: &str, value: &str) -> Result<UnixMs, ApiError> {
    let t = DateTime::parse_from_rfc3339(value.trim()).map_err(|e| {
        ApiError::invalid(
            field,
            format!("{value:?} is not an RFC 3339 instant like 2026-12-01T09:00:00Z: {e}"),
        )
    })?;
    let ms = t.timestamp_millis();
    if !(0..=253_402_300_799_999).contains(&ms) {
        return Err(ApiError::invalid(field, "must lie between 1970 and 9999"));
    }
    Ok(ms)
}

/// Checks a `HOST:PORT` address named `field` (a member's address, a target filter).
pub fn host_port(field: &str, addr: &str) -> Result<(), ApiError> {
    let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        !host.is_empty()
            && !host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@')
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{addr:?} is not a HOST:PORT address"),
        ))
    }
}

/// The filters of `GET /v1/jobs` and the bulk routes, each checked (`422` naming it).
pub fn job_filter(
    selector: Option<&str>,
    state: Option<&str>,
    target: Option<&str>,
    prefix: Option<&str>,
) -> Result<JobFilter, ApiError> {
    let selector = match selector {
        None => Vec::new(),
        Some(text) => filter::parse_selector(text).map_err(|r| {
            ApiError::invalid("selector", format!("invalid label selector: {}", r.0))
        })?,
    };
    let state = state
        .map(|s| {
            JobState::parse(s).ok_or_else(|| {
                ApiError::invalid("state", format!("{s:?} is not active, paused or completed"))
            })
        })
        .transpose()?;
    let target = target.map(target_key).transpose()?;
    if let Some(p) = prefix {
        validate_id("prefix", p)?;
    }
    Ok(JobFilter {
        selector,
        state,
        target,
        prefix: prefix.map(str::to_owned),
    })
}

/// The run filters of `GET /v1/runs` and `POST /v1/runs/retry`, each checked (`422` naming
/// it).
pub fn run_filter(
    status: Option<RunStatus>,
    job_id: Option<&str>,
    job_selector: Option<&str>,
    target: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<RunFilter, ApiError> {
    if let Some(id) = job_id {
        validate_id("job_id", id)?;
    }
    let jobs = job_filter(job_selector, None, target, None)
        .map_err(|e| e.renamed("selector", "job_selector"))?;
    let instant = |field: &str, v: Option<&str>| v.map(|v| parse_instant(field, v)).transpose();
    Ok(RunFilter {
        status,
        job_id: job_id.map(str::to_owned),
        jobs,
        since_ms: instant("since", since)?,
        until_ms: instant("until", until)?,
    })
}

/// A target `host:port` as a filter or a policy route names it: checked (`422`, field
/// `target`) and normalised as delivery normalises it (host in lower case).
pub fn target_key(t: &str) -> Result<String, ApiError> {
    if t.len() > TARGET_BYTES_MAX {
        return Err(ApiError::invalid(
            "target",
            format!("at most {TARGET_BYTES_MAX} bytes"),
        ));
    }
    host_port("target", t)?;
    Ok(t.to_ascii_lowercase())
}

/// Checks a job id against `[A-Za-z0-9._:-]{1,128}`.
pub fn validate_id(field: &str, id: &str) -> Result<(), ApiError> {
    Ok(validate::job_id(field, id)?)
}

impl JobRequest {
    /// Validates every field and builds the replicated definition.
    pub fn into_spec(self) -> Result<(Option<String>, JobSpec), ApiError> {
        if let Some(id) = &self.id {
            validate_id("id", id)?;
        }
        let url = validate_url(&self.url)?;
        let method = match self.method {
            None => "POST".to_owned(),
            Some(m) if METHODS.contains(&m.as_str()) => m,
            Some(m) => {
                return Err(ApiError::invalid(
                    "method",
                    format!("{m:?} is not one of GET, POST, PUT, PATCH, DELETE"),
                ))
            }
        };
        let headers = validate_headers(self.headers.unwrap_or_default())?;
        let secret_headers = validate_secret_headers(self.secret_headers, &headers)?;
        let schedule = validate_schedule(&self.schedule)?;
        let bounds = schedule_bounds(&self.schedule)?;
        let jitter_ms = match &self.jitter {
            None => None,
            Some(j) => Some(validate_jitter(j, &schedule)?),
        };
        let retry = validate_retry(self.retry.unwrap_or_default())?;
        let timeout_ms = bounded_duration(
            "timeout",
            &self.timeout,
            DELIVERY_TIMEOUT_DEFAULT,
            Duration::from_millis(1),
            DELIVERY_TIMEOUT_MAX,
        )?;
        let misfire = validate_misfire(self.misfire.unwrap_or_default())?;
        let spec = JobSpec {
            url,
            method,
            headers,
            body: self.body,
            schedule,
            retry,
            timeout_ms,
            misfire,
            paused: self.paused.unwrap_or(false),
            secret_headers,
            ext: JobExt {
                labels: self.labels.unwrap_or_default(),
                start_at_ms: bounds.start_at_ms,
                end_at_ms: bounds.end_at_ms,
                max_runs: bounds.max_runs,
                jitter_ms,
                overlap: match self.overlap.as_deref() {
                    None => None,
                    Some(o) => Some(Overlap::parse(o).ok_or_else(|| {
                        ApiError::invalid(
                            "overlap",
                            format!("{o:?} is not allow, skip, buffer_one or cancel_previous"),
                        )
                    })?),
                }
                .filter(|o| *o != Overlap::Allow),
                on_success: self
                    .on_success
                    .map(|e| e.into_endpoint("on_success."))
                    .transpose()?,
                on_failure: self
                    .on_failure
                    .map(|e| e.into_endpoint("on_failure."))
                    .transpose()?,
            },
        };
        // The gate a forwarded command passes too: whatever this parsing let through, it
        // holds the stored form to the same rules.
        validate::job_spec(&spec)?;
        Ok((self.id, spec))
    }
}

fn validate_url(url: &str) -> Result<String, ApiError> {
    Ok(validate::normal_url(url)?)
}

fn validate_headers(
    headers: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    if headers.len() > HEADERS_COUNT_MAX {
        return Err(ApiError::invalid(
            "headers",
            format!("at most {HEADERS_COUNT_MAX} headers allowed"),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let field = format!("headers.{name}");
        let lower = name.to_ascii_lowercase();
        validate::header(&lower, &value).map_err(|e| ApiError::invalid(&field, e.message))?;
        if out.insert(lower.clone(), value).is_some() {
            return Err(ApiError::invalid(
                &field,
                format!("header {lower} is given twice"),
            ));
        }
    }
    Ok(out)
}

/// `secret_headers`: names of `headers` (any case), each once; stored lower-case and sorted.
fn validate_secret_headers(
    names: Option<Vec<String>>,
    headers: &BTreeMap<String, String>,
) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for name in names.unwrap_or_default() {
        let lower = name.to_ascii_lowercase();
        if !headers.contains_key(&lower) {
            return Err(ApiError::invalid(
                "secret_headers",
                format!("{name:?} is not one of the job's headers"),
            ));
        }
        if out.contains(&lower) {
            return Err(ApiError::invalid(
                "secret_headers",
                format!("{name:?} is listed twice"),
            ));
        }
        out.push(lower);
    }
    out.sort();
    Ok(out)
}

/// A schedule's bounds beyond its kind: a cron schedule's `start_at`, `end_at`, `max_runs`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub start_at_ms: Option<UnixMs>,
    pub end_at_ms: Option<UnixMs>,
    pub max_runs: Option<u32>,
}

/// The bounds of `s` (its kind checked by `validate_schedule`; `validate::job_spec` checks
/// which kinds take them and how they relate).
pub fn schedule_bounds(s: &ScheduleRequest) -> Result<Bounds, ApiError> {
    let instant =
        |field: &str, v: &Option<String>| v.as_deref().map(|v| parse_instant(field, v)).transpose();
    Ok(Bounds {
        start_at_ms: match s.cron {
            Some(_) => instant("schedule.start_at", &s.start_at)?,
            None => None,
        },
        end_at_ms: instant("schedule.end_at", &s.end_at)?,
        max_runs: s.max_runs,
    })
}

/// A job's `jitter`: a duration of at most 1h and at most the schedule's period (an
/// interval's `every`; a cron schedule's shortest gap between its next fires).
fn validate_jitter(text: &str, schedule: &ScheduleSpec) -> Result<u64, ApiError> {
    let jitter = parse_duration("jitter", text)?;
    if jitter > JITTER_MAX {
        return Err(ApiError::invalid("jitter", "jitter is at most 1h"));
    }
    let jitter_ms = jitter.as_millis() as u64;
    let period_ms = match schedule {
        ScheduleSpec::Every { every_ms, .. } => Some(*every_ms),
        ScheduleSpec::Cron { .. } => crate::schedule::resolve(schedule, 0).and_then(|s| {
            let fires = s.fires_after(chrono::Utc::now(), 32);
            fires
                .windows(2)
                .map(|w| (w[1] - w[0]).num_milliseconds().max(0) as u64)
                .min()
        }),
        ScheduleSpec::At { .. } | ScheduleSpec::After { .. } => None,
    };
    if period_ms.is_some_and(|p| jitter_ms > p) {
        return Err(ApiError::invalid(
            "jitter",
            "jitter is at most the schedule's period",
        ));
    }
    Ok(jitter_ms)
}

pub fn validate_schedule(s: &ScheduleRequest) -> Result<ScheduleSpec, ApiError> {
    let kinds = [
        s.at.is_some(),
        s.after.is_some(),
        s.every.is_some(),
        s.cron.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(ApiError::invalid(
            "schedule",
            "schedule must have exactly one of at, after, every, cron",
        ));
    }
    if s.start_at.is_some() && s.every.is_none() && s.cron.is_none() {
        return Err(ApiError::invalid(
            "schedule.start_at",
            "start_at goes only with every and cron",
        ));
    }
    if s.timezone.is_some() && s.cron.is_none() {
        return Err(ApiError::invalid(
            "schedule.timezone",
            "timezone goes only with cron",
        ));
    }
    if let Some(at) = &s.at {
        return Ok(ScheduleSpec::At {
            at_ms: parse_instant("schedule.at", at)?,
        });
    }
    if let Some(after) = &s.after {
        let d = parse_duration("schedule.after", after)?;
        if d > SCHEDULE_SPAN_MAX {
            return Err(ApiError::invalid(
                "schedule.after",
                "after is at most ten years",
            ));
        }
        return Ok(ScheduleSpec::After {
            after_ms: d.as_millis() as u64,
        });
    }
    if let Some(every) = &s.every {
        let d = parse_duration("schedule.every", every)?;
        if d < EVERY_MIN || d > SCHEDULE_SPAN_MAX {
            return Err(ApiError::invalid(
                "schedule.every",
                "every must be at least 1s and at most ten years",
            ));
        }
        if d.subsec_nanos() % 1_000_000 != 0 {
            return Err(ApiError::invalid(
                "schedule.every",
                "durations have millisecond precision",
            ));
        }
        let start_at_ms = match &s.start_at {
            Some(t) => Some(parse_instant("schedule.start_at", t)?),
            None => None,
        };
        return Ok(ScheduleSpec::Every {
            every_ms: d.as_millis() as u64,
            start_at_ms,
        });
    }
    let expr = s.cron.as_deref().unwrap_or_default();
    if expr.len() > CRON_EXPR_BYTES_MAX {
        return Err(ApiError::invalid(
            "schedule.cron",
            format!("cron expression exceeds {CRON_EXPR_BYTES_MAX} bytes"),
        ));
    }
    let parsed = CronSchedule::parse(expr, s.timezone.as_deref())
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    Ok(ScheduleSpec::Cron {
        expr: parsed.expr().to_owned(),
        timezone: parsed.timezone().name().to_owned(),
    })
}

fn validate_retry(r: RetryRequest) -> Result<RetrySpec, ApiError> {
    let max_attempts = r.max_attempts.unwrap_or(RETRY_ATTEMPTS_DEFAULT);
    if !(1..=RETRY_ATTEMPTS_MAX).contains(&max_attempts) {
        return Err(ApiError::invalid(
            "retry.max_attempts",
            format!("must be between 1 and {RETRY_ATTEMPTS_MAX}"),
        ));
    }
    let initial_backoff_ms = bounded_duration(
        "retry.initial_backoff",
        &r.initial_backoff,
        RETRY_INITIAL_BACKOFF_DEFAULT,
        RETRY_BACKOFF_MIN,
        RETRY_MAX_BACKOFF_MAX,
    )?;
    let max_backoff_ms = bounded_duration(
        "retry.max_backoff",
        &r.max_backoff,
        RETRY_MAX_BACKOFF_DEFAULT.max(Duration::from_millis(initial_backoff_ms)),
        RETRY_BACKOFF_MIN,
        RETRY_MAX_BACKOFF_MAX,
    )?;
    if max_backoff_ms < initial_backoff_ms {
        return Err(ApiError::invalid(
            "retry.max_backoff",
            "max_backoff must not be below initial_backoff",
        ));
    }
    let multiplier = r.multiplier.unwrap_or(RETRY_MULTIPLIER_DEFAULT);
    if !(1.0..=RETRY_MULTIPLIER_MAX).contains(&multiplier) {
        return Err(ApiError::invalid(
            "retry.multiplier",
            format!("must be between 1.0 and {RETRY_MULTIPLIER_MAX}"),
        ));
    }
    let jitter = r.jitter.unwrap_or(RETRY_JITTER_DEFAULT);
    if !(0.0..=1.0).contains(&jitter) {
        return Err(ApiError::invalid(
            "retry.jitter",
            "must be between 0.0 and 1.0",
        ));
    }
    Ok(RetrySpec {
        max_attempts,
        initial_backoff_ms,
        max_backoff_ms,
        multiplier,
        jitter,
    })
}

fn validate_misfire(m: MisfireRequest) -> Result<MisfireSpec, ApiError> {
    let policy = match m.policy.as_deref() {
        None | Some("fire_once") => MisfirePolicy::FireOnce,
        Some("fire_all") => MisfirePolicy::FireAll,
        Some("skip") => MisfirePolicy::Skip,
        Some(other) => {
            return Err(ApiError::invalid(
                "misfire.policy",
                format!("{other:?} is not one of fire_once, fire_all, skip"),
            ))
        }
    };
    let grace_ms = bounded_duration(
        "misfire.grace",
        &m.grace,
        MISFIRE_GRACE_DEFAULT,
        Duration::ZERO,
        MISFIRE_GRACE_MAX,
    )?;
    let catchup_window_ms = bounded_duration(
        "misfire.catchup_window",
        &m.catchup_window,
        MISFIRE_CATCHUP_WINDOW_DEFAULT,
        Duration::ZERO,
        MISFIRE_CATCHUP_WINDOW_MAX,
    )?;
    Ok(MisfireSpec {
        policy,
        grace_ms,
        catchup_window_ms,
    })
}

pub use crate::core::format::{format_duration_ms, format_instant};

/// The schedule in the shape the user sends it.
pub fn render_schedule(spec: &ScheduleSpec, ext: &JobExt) -> ScheduleRequest {
    let mut s = render_kind(spec);
    if ext.start_at_ms.is_some() {
        s.start_at = ext.start_at_ms.map(format_instant);
    }
    s.end_at = ext.end_at_ms.map(format_instant);
    s.max_runs = ext.max_runs;
    s
}

fn render_kind(spec: &ScheduleSpec) -> ScheduleRequest {
    match spec {
        ScheduleSpec::At { at_ms } => ScheduleRequest {
            at: Some(format_instant(*at_ms)),
            ..Default::default()
        },
        ScheduleSpec::After { after_ms } => ScheduleRequest {
            after: Some(format_duration_ms(*after_ms)),
            ..Default::default()
        },
        ScheduleSpec::Every {
            every_ms,
            start_at_ms,
        } => ScheduleRequest {
            every: Some(format_duration_ms(*every_ms)),
            start_at: start_at_ms.map(format_instant),
            ..Default::default()
        },
        ScheduleSpec::Cron { expr, timezone } => ScheduleRequest {
            cron: Some(expr.clone()),
            timezone: Some(timezone.clone()),
            ..Default::default()
        },
    }
}

/// A schedule in words, for people: `at 2026-12-07T09:00:00Z`, `after 5m`, `every 30s from …`,
/// `At 09:00, Monday through Friday (Europe/Berlin)` (`schedule::describe_cron`), with its
/// bounds after it: `from …` (cron), `until …`, `first 10 runs`. `instant` writes each
/// instant as the caller wants it. None for a shape that is no schedule (no kind, two kinds, a
/// time zone or `start_at` where they mean nothing), which the caller shows otherwise. The
/// preview's `description` and `hookd jobs list` say the same.
pub fn describe_schedule(s: &ScheduleRequest, instant: impl Fn(&str) -> String) -> Option<String> {
    if s.timezone.is_some() && s.cron.is_none() {
        return None;
    }
    let kind = match (&s.at, &s.after, &s.every, &s.cron) {
        (Some(at), None, None, None) if s.start_at.is_none() => format!("at {}", instant(at)),
        (None, Some(after), None, None) if s.start_at.is_none() => format!("after {after}"),
        (None, None, Some(every), None) => format!("every {every}"),
        (None, None, None, Some(cron)) => {
            crate::schedule::describe_cron(cron, s.timezone.as_deref())
        }
        _ => return None,
    };
    let mut words = kind;
    if let Some(start) = &s.start_at {
        words += &format!(" from {}", instant(start));
    }
    if let Some(end) = &s.end_at {
        words += &format!(" until {}", instant(end));
    }
    match s.max_runs {
        Some(1) => words += ", first run only",
        Some(n) => words += &format!(", first {n} runs"),
        None => {}
    }
    Some(words)
}

/// An RFC 3339 instant without a fraction of a second when it has none
/// (`2026-12-07T09:00:00Z`), in UTC; anything else as it is.
pub fn plain_instant(t: &str) -> String {
    DateTime::parse_from_rfc3339(t.trim()).map_or_else(
        |_| t.to_owned(),
        |t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        },
    )
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RetryView {
    pub max_attempts: u32,
    pub initial_backoff: String,
    pub max_backoff: String,
    pub multiplier: f64,
    pub jitter: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MisfireView {
    /// `fire_once`, `fire_all` or `skip`.
    #[schema(value_type = String)]
    pub policy: MisfirePolicy,
    pub grace: String,
    pub catchup_window: String,
}

/// A job as returned by the API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    /// Omitted when empty, as a job without secrets was sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_headers: Vec<String>,
    pub body: Option<String>,
    pub schedule: ScheduleRequest,
    pub retry: RetryView,
    pub timeout: String,
    pub misfire: MisfireView,
    pub paused: bool,
    /// Omitted when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Omitted when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    /// `allow`, `skip`, `buffer_one` or `cancel_previous`.
    #[schema(value_type = String)]
    pub overlap: &'static str,
    /// Omitted when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_success: Option<EndpointView>,
    /// Omitted when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<EndpointView>,
    pub created_at: String,
    pub updated_at: String,
    pub next_fire_at: Option<String>,
    /// `active`, `paused` or `completed`.
    #[schema(value_type = String)]
    pub state: &'static str,
    pub version: u64,
}

impl JobView {
    /// Renders `job`.
    pub fn new(job: Job) -> JobView {
        let s = &job.spec;
        let next = crate::core::plan::job_next_due(&job);
        let state = JobState::given(s.paused, next).as_str();
        JobView {
            url: s.masked_url(),
            method: s.method.clone(),
            headers: s.masked_headers(),
            secret_headers: s.secret_headers.clone(),
            body: s.body.clone(),
            schedule: render_schedule(&s.schedule, &s.ext),
            jitter: s.ext.jitter_ms.map(format_duration_ms),
            overlap: s.ext.overlap.unwrap_or_default().as_str(),
            on_success: s.ext.on_success.as_ref().map(EndpointView::new),
            on_failure: s.ext.on_failure.as_ref().map(EndpointView::new),
            retry: RetryView {
                max_attempts: s.retry.max_attempts,
                initial_backoff: format_duration_ms(s.retry.initial_backoff_ms),
                max_backoff: format_duration_ms(s.retry.max_backoff_ms),
                multiplier: s.retry.multiplier,
                jitter: s.retry.jitter,
            },
            timeout: format_duration_ms(s.timeout_ms),
            misfire: MisfireView {
                policy: s.misfire.policy,
                grace: format_duration_ms(s.misfire.grace_ms),
                catchup_window: format_duration_ms(s.misfire.catchup_window_ms),
            },
            paused: s.paused,
            labels: s.ext.labels.clone(),
            created_at: format_instant(job.created_at_ms),
            updated_at: format_instant(job.updated_at_ms),
            next_fire_at: next.map(format_instant),
            state,
            version: job.version,
            id: job.id,
        }
    }
}

/// The versions an `If-Match` header value allows: empty for `*` (any version: the job must
/// exist), else those of its entity tags, `"N"` (a weak `W/"N"` counts as `"N"`: a version
/// names one state exactly). A tag that is not a version is a `400`.
pub fn parse_if_match(value: &str) -> Result<Vec<u64>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "If-Match",
            format!("{value:?} is not * or a list of job versions (\"N\", as ETag gives them)"),
        )
    };
    if value.trim() == "*" {
        return Ok(Vec::new());
    }
    let mut versions = Vec::new();
    for tag in value.split(',') {
        let tag = tag.trim();
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        let quoted = tag
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .ok_or_else(bad)?;
        if quoted.is_empty() || !quoted.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        versions.push(quoted.parse().map_err(|_| bad())?);
    }
    if versions.len() > IF_MATCH_VERSIONS_MAX {
        return Err(ApiError::bad_request(
            "If-Match",
            format!("at most {IF_MATCH_VERSIONS_MAX} versions"),
        ));
    }
    Ok(versions)
}

/// The schedule kinds; a job's schedule has exactly one.
const SCHEDULE_KINDS: [&str; 4] = ["at", "after", "every", "cron"];

/// `job` (a job as returned) with the JSON merge patch `patch` (RFC 7396) applied, with one
/// addition: a patch whose `schedule` names another kind than the job's replaces the schedule
/// whole (`{"schedule": {"every": "5m"}}` on a cron job), where the plain merge would leave two
/// kinds and be refused.
pub fn merge_patch(mut job: serde_json::Value, patch: &serde_json::Value) -> serde_json::Value {
    let kind_of = |s: &serde_json::Value| {
        SCHEDULE_KINDS
            .into_iter()
            .find(|k| s.get(*k).is_some_and(|v| !v.is_null()))
    };
    let new_kind = patch.get("schedule").and_then(kind_of);
    let replaces = new_kind.is_some() && new_kind != job.get("schedule").and_then(kind_of);
    json_patch::merge(&mut job, patch);
    if replaces {
        if let Some(serde_json::Value::Object(s)) = patch.get("schedule") {
            let given = s
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()));
            job["schedule"] = serde_json::Value::Object(given.collect());
        }
    }
    job
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_schedule_reads_as_words_with_its_bounds() {
        let cases = [
            (
                json!({"at": "2026-12-07T09:00:00.000Z"}),
                Some("at 2026-12-07T09:00:00Z"),
            ),
            (
                json!({"at": "2026-12-07T10:00:00.250+01:00"}),
                Some("at 2026-12-07T09:00:00.250Z"),
            ),
            (json!({"after": "5m"}), Some("after 5m")),
            (json!({"every": "30s"}), Some("every 30s")),
            (
                json!({"every": "30s", "start_at": "2026-12-07T09:00:00Z",
                       "end_at": "2026-12-08T09:00:00Z"}),
                Some("every 30s from 2026-12-07T09:00:00Z until 2026-12-08T09:00:00Z"),
            ),
            (
                json!({"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin", "max_runs": 10}),
                Some("At 09:00, Monday through Friday (Europe/Berlin), first 10 runs"),
            ),
            (
                json!({"cron": "0 0 9 * * *", "start_at": "2026-12-07T00:00:00Z", "max_runs": 1}),
                Some("At 09:00 (UTC) from 2026-12-07T00:00:00Z, first run only"),
            ),
            (json!({"cron": "nonsense"}), Some("cron nonsense (UTC)")),
            // Not one schedule: the caller shows it otherwise.
            (json!({}), None),
            (json!({"every": "5m", "cron": "* * * * *"}), None),
            (json!({"every": "5m", "timezone": "UTC"}), None),
            (
                json!({"at": "2026-12-07T09:00:00Z", "start_at": "2026-12-07T09:00:00Z"}),
                None,
            ),
        ];
        for (schedule, want) in cases {
            let s: ScheduleRequest = serde_json::from_value(schedule.clone()).expect("shape");
            assert_eq!(
                describe_schedule(&s, plain_instant).as_deref(),
                want,
                "{schedule}"
            );
        }
        assert_eq!(plain_instant("soon"), "soon");
    }

    #[test]
    fn if_match_takes_star_or_quoted_versions_and_refuses_anything_else() {
        for (value, want) in [
            ("*", Some(vec![])),
            (" * ", Some(vec![])),
            ("\"3\"", Some(vec![3])),
            ("\"3\", W/\"5\"", Some(vec![3, 5])),
            ("3", None),
            ("\"\"", None),
            ("\"x\"", None),
            ("\"-1\"", None),
            ("\"99999999999999999999999\"", None),
            ("\"1\",", None),
            ("", None),
        ] {
            let got = parse_if_match(value).ok();
            assert_eq!(got, want, "{value:?}");
        }
        let many = vec!["\"1\""; IF_MATCH_VERSIONS_MAX + 1].join(",");
        assert!(parse_if_match(&many).is_err());
    }

    #[test]
    fn a_merge_patch_merges_removes_with_null_and_replaces_a_schedule_of_another_kind() {
        let job = json!({
            "id": "a", "url": "http://x/", "headers": {"a": "1", "b": "2"},
            "schedule": {"cron": "0 * * * *", "timezone": "Europe/Paris"},
            "labels": {"team": "x"}, "version": 4,
        });
        for (patch, want) in [
            (
                json!({"headers": {"a": null, "c": "3"}, "labels": {"env": "prod"}}),
                json!({"id": "a", "url": "http://x/", "headers": {"b": "2", "c": "3"},
                       "schedule": {"cron": "0 * * * *", "timezone": "Europe/Paris"},
                       "labels": {"team": "x", "env": "prod"}, "version": 4}),
            ),
            (
                json!({"schedule": {"timezone": "UTC"}}),
                json!({"id": "a", "url": "http://x/", "headers": {"a": "1", "b": "2"},
                       "schedule": {"cron": "0 * * * *", "timezone": "UTC"},
                       "labels": {"team": "x"}, "version": 4}),
            ),
            (
                json!({"schedule": {"every": "5m", "cron": null}, "labels": null}),
                json!({"id": "a", "url": "http://x/", "headers": {"a": "1", "b": "2"},
                       "schedule": {"every": "5m"}, "version": 4}),
            ),
            (
                json!({"schedule": {"every": "5m"}}),
                json!({"id": "a", "url": "http://x/", "headers": {"a": "1", "b": "2"},
                       "schedule": {"every": "5m"}, "labels": {"team": "x"}, "version": 4}),
            ),
            (json!({}), job.clone()),
        ] {
            assert_eq!(merge_patch(job.clone(), &patch), want, "{patch}");
        }
    }
}
