//! The one gate every command passes before it is proposed. The API runs it on the command it
//! built from a request, and a leader runs it on every command another node forwards to its
//! peer port, so a peer (or anyone holding the peer secret) can put into the log nothing a
//! client could not. Everything a command carries is bounded here: ids, URLs, headers,
//! durations, instants, counts, texts. `apply` and everything after it still saturate their
//! arithmetic, since a log entry can also arrive by replication.
//!
//! Pure: the caller passes its clock.

use std::time::Duration;

use super::command::{
    AttemptOutcome, AttemptResult, BulkAction, ClaimItem, ClaimKind, Command, Endpoint, JobExt,
    JobSpec, RetrySpec, ScheduleSpec, TargetPolicy, UnixMs,
};
use super::events::{Announcement, NotificationSpec};
pub use super::format::format_duration_ms;
use super::records::{FORMAT_NEWEST, FORMAT_PREVIOUS_RELEASE};
use crate::limits::*;
use crate::schedule::{CronSchedule, EVERY_MIN};

/// Why a command is refused: the offending field (a JSON path of the request or command) and a
/// message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

type Checked = Result<(), Invalid>;

/// The methods a job may use.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Headers hookd sets itself on every delivery (and every `hookd-*` name, reserved for hookd);
/// a job may not set them.
pub const RESERVED_HEADERS: [&str; 8] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "user-agent",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// Latest due instant a claim may name: a schedule may run past year 9999 (an `every` started
/// late in it), but not past what a calendar can show.
const DUE_MAX_MS: UnixMs = 8_210_298_412_799_999; // chrono's DateTime::<Utc>::MAX_UTC

/// Checks `cmd`, stamped by its proposer, against every bound, with `now_ms` the checking
/// node's clock.
pub fn command(cmd: &Command, now_ms: UnixMs) -> Checked {
    match cmd {
        Command::CreateJob {
            id,
            spec,
            now_ms: t,
        }
        | Command::PutJob {
            id,
            spec,
            now_ms: t,
        } => {
            job_id("id", id)?;
            job_spec(spec)?;
            stamp(*t, now_ms)
        }
        Command::DeleteJob { id, now_ms: t } | Command::SetPaused { id, now_ms: t, .. } => {
            job_id("id", id)?;
            stamp(*t, now_ms)
        }
        Command::SetNodeInfo { node_id, api_addr } => {
            if *node_id == 0 {
                return Err(Invalid::new("node_id", "node ids start at 1"));
            }
            text("api_addr", api_addr)
        }
        Command::SetClusterId { cluster_id } => text("cluster_id", cluster_id),
        Command::SetFormat { format } => {
            if (FORMAT_PREVIOUS_RELEASE..=FORMAT_NEWEST).contains(format) {
                Ok(())
            } else {
                Err(Invalid::new(
                    "format",
                    format!("formats {FORMAT_PREVIOUS_RELEASE} to {FORMAT_NEWEST} are known"),
                ))
            }
        }
        Command::ClaimRuns {
            now_ms: t,
            items,
            retention,
            ..
        } => {
            stamp(*t, now_ms)?;
            run_retention(*retention)?;
            if items.len() > CLAIM_ITEMS_MAX {
                return Err(Invalid::new(
                    "items",
                    format!("at most {CLAIM_ITEMS_MAX} items per claim"),
                ));
            }
            items.iter().try_for_each(claim_item)
        }
        Command::RecordAttempts { outcomes } => {
            if outcomes.len() > RECORD_ITEMS_MAX {
                return Err(Invalid::new(
                    "outcomes",
                    format!("at most {RECORD_ITEMS_MAX} outcomes per record"),
                ));
            }
            outcomes.iter().try_for_each(outcome)
        }
        Command::RetryRun {
            run_id: id,
            now_ms: t,
        } => {
            run_id("run_id", id)?;
            stamp(*t, now_ms)
        }
        Command::TriggerJob {
            id,
            now_ms: t,
            retention,
        } => {
            job_id("id", id)?;
            run_retention(*retention)?;
            stamp(*t, now_ms)
        }
        // Group commit forms batches on the leader, after this check: none arrives whole.
        Command::Batch { .. } => Err(Invalid::new(
            "command",
            "batches are formed by the leader, never sent to it",
        )),
        Command::CreateJob3 {
            id,
            spec,
            now_ms: t,
        }
        | Command::PutJob3 {
            id,
            spec,
            now_ms: t,
        } => {
            job_id("id", id)?;
            job_spec(&spec.clone().into())?;
            stamp(*t, now_ms)
        }
        Command::Bulk {
            action,
            ids,
            now_ms: t,
        } => {
            stamp(*t, now_ms)?;
            if let BulkAction::Trigger { retention } = action {
                run_retention(*retention)?;
            }
            bulk_ids(*action, ids)
        }
        Command::IfVersion {
            id,
            versions,
            command: inner,
        } => {
            job_id("id", id)?;
            if versions.len() > IF_MATCH_VERSIONS_MAX {
                return Err(Invalid::new(
                    "If-Match",
                    format!("at most {IF_MATCH_VERSIONS_MAX} versions"),
                ));
            }
            let same_job = match &**inner {
                Command::PutJob { id: i, .. }
                | Command::PutJob3 { id: i, .. }
                | Command::DeleteJob { id: i, .. }
                | Command::SetPaused { id: i, .. } => i == id,
                _ => false,
            };
            if !same_job {
                return Err(Invalid::new(
                    "command",
                    "a condition holds a replace, delete, pause or resume of its own job",
                ));
            }
            command(inner, now_ms)
        }
        Command::Idempotent {
            key,
            now_ms: t,
            command: inner,
            ..
        } => {
            idempotency_key(key)?;
            stamp(*t, now_ms)?;
            if !matches!(
                **inner,
                Command::CreateJob { .. }
                    | Command::CreateJob3 { .. }
                    | Command::TriggerJob { .. }
                    | Command::RetryRun { .. }
            ) {
                return Err(Invalid::new(
                    "command",
                    "an idempotency key holds a create, trigger or retry",
                ));
            }
            command(inner, now_ms)
        }
        Command::Remember {
            key,
            now_ms: t,
            status,
            body,
            ..
        } => {
            idempotency_key(key)?;
            stamp(*t, now_ms)?;
            if !(100..=599).contains(status) {
                return Err(Invalid::new("status", "an HTTP status"));
            }
            if body.len() > IDEMPOTENT_ANSWER_BYTES_MAX {
                return Err(Invalid::new(
                    "body",
                    format!("at most {IDEMPOTENT_ANSWER_BYTES_MAX} bytes"),
                ));
            }
            Ok(())
        }
        Command::StartRun { run_id: id } => run_id("run_id", id),
        Command::SetTargetPolicy { target, policy } => {
            target_key("target", target)?;
            policy.as_ref().map_or(Ok(()), target_policy)
        }
        Command::SetNotification {
            id,
            spec,
            now_ms: t,
        } => {
            job_id("id", id)?;
            stamp(*t, now_ms)?;
            spec.as_ref().map_or(Ok(()), notification)
        }
        Command::Announce {
            announcement,
            at_ms,
        } => {
            stamp(*at_ms, now_ms)?;
            match announcement {
                Announcement::CircuitOpened { target } | Announcement::CircuitClosed { target } => {
                    target_key("announcement.target", target)
                }
                Announcement::NodeUnreachable { .. }
                | Announcement::NodeRecovered { .. }
                | Announcement::LeaderChanged { .. } => Ok(()),
            }
        }
    }
}

fn target_key(field: &str, target: &str) -> Checked {
    visible_ascii(field, target, TARGET_BYTES_MAX, || {
        format!("a target is host:port, at most {TARGET_BYTES_MAX} bytes")
    })
}

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub fn idempotency_key(key: &str) -> Checked {
    visible_ascii("Idempotency-Key", key, IDEMPOTENCY_KEY_BYTES_MAX, || {
        format!("1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters")
    })
}

/// A bulk part's ids: 1 to `BULK_PART_IDS_MAX` job ids (run ids to retry), strictly ascending,
/// so that each is acted on once.
fn bulk_ids(action: BulkAction, ids: &[String]) -> Checked {
    if ids.is_empty() || ids.len() > BULK_PART_IDS_MAX {
        return Err(Invalid::new(
            "ids",
            format!("1 to {BULK_PART_IDS_MAX} ids per part"),
        ));
    }
    for id in ids {
        match action {
            BulkAction::Retry => run_id("ids", id)?,
            _ => job_id("ids", id)?,
        }
    }
    if ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Invalid::new("ids", "ids must be strictly ascending"));
    }
    Ok(())
}

/// `start_at` (cron), `end_at` and `max_runs` go with a repeating schedule; `end_at` is not
/// before the start; `jitter` is at most `JITTER_MAX` (the API also keeps it within the
/// schedule's period).
pub fn bounds_and_jitter(schedule: &ScheduleSpec, ext: &JobExt) -> Checked {
    let start = match schedule {
        ScheduleSpec::Cron { .. } => ext.start_at_ms,
        ScheduleSpec::Every { start_at_ms, .. } => {
            if ext.start_at_ms.is_some() {
                return Err(Invalid::new(
                    "schedule.start_at",
                    "an interval's start_at is its anchor",
                ));
            }
            *start_at_ms
        }
        ScheduleSpec::At { .. } | ScheduleSpec::After { .. } => {
            let fields = [
                ("schedule.start_at", ext.start_at_ms.is_some()),
                ("schedule.end_at", ext.end_at_ms.is_some()),
                ("schedule.max_runs", ext.max_runs.is_some()),
            ];
            if let Some((field, _)) = fields.iter().find(|(_, given)| *given) {
                return Err(Invalid::new(
                    field,
                    "goes only with a repeating schedule (every, cron)",
                ));
            }
            None
        }
    };
    if let Some(t) = ext.start_at_ms {
        instant("schedule.start_at", t)?;
    }
    if let Some(end) = ext.end_at_ms {
        instant("schedule.end_at", end)?;
        if start.is_some_and(|s| end < s) {
            return Err(Invalid::new("schedule.end_at", "end_at is before start_at"));
        }
    }
    if ext
        .max_runs
        .is_some_and(|n| !(1..=MAX_RUNS_MAX).contains(&n))
    {
        return Err(Invalid::new(
            "schedule.max_runs",
            format!("max_runs is 1 to {MAX_RUNS_MAX}"),
        ));
    }
    if ext
        .jitter_ms
        .is_some_and(|j| j > JITTER_MAX.as_millis() as u64)
    {
        return Err(Invalid::new("jitter", "jitter is at most 1h"));
    }
    Ok(())
}

/// A target's limits: at least one, each in its range.
pub fn target_policy(p: &TargetPolicy) -> Checked {
    if *p == TargetPolicy::default() {
        return Err(Invalid::new(
            "policy",
            "give max_concurrency, rate_per_s or burst",
        ));
    }
    if p.max_concurrency
        .is_some_and(|n| !(1..=TARGET_CONCURRENCY_MAX).contains(&n))
    {
        return Err(Invalid::new(
            "max_concurrency",
            format!("1 to {TARGET_CONCURRENCY_MAX}"),
        ));
    }
    if p.rate_milli_per_s
        .is_some_and(|r| !(1..=TARGET_RATE_MAX_MILLI).contains(&r))
    {
        return Err(Invalid::new(
            "rate_per_s",
            format!(
                "0.001 to {} attempts a second",
                TARGET_RATE_MAX_MILLI / 1000
            ),
        ));
    }
    if p.burst
        .is_some_and(|b| !(1..=TARGET_BURST_MAX).contains(&b))
    {
        return Err(Invalid::new("burst", format!("1 to {TARGET_BURST_MAX}")));
    }
    if p.burst.is_some() && p.rate_milli_per_s.is_none() {
        return Err(Invalid::new("burst", "burst goes with rate_per_s"));
    }
    Ok(())
}

/// A job id: `[A-Za-z0-9._:-]{1,128}`.
pub fn job_id(field: &str, id: &str) -> Checked {
    let ok = !id.is_empty()
        && id.len() <= JOB_ID_CHARS_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!("job ids are 1 to {JOB_ID_CHARS_MAX} characters of A-Z a-z 0-9 . _ : -"),
        ))
    }
}

/// A job definition as stored: every field in range and in its normal form (lower-case header
/// names, sorted secret names, a URL as the URL parser writes it).
pub fn job_spec(spec: &JobSpec) -> Checked {
    endpoint("", &spec.endpoint())?;
    for (prefix, callback) in spec.callbacks() {
        callback.map_or(Ok(()), |cb| endpoint(prefix, cb))?;
    }
    super::filter::labels(&spec.ext.labels).map_err(|r| Invalid::new("labels", r.0))?;
    bounds_and_jitter(&spec.schedule, &spec.ext)?;
    if !METHODS.contains(&spec.method.as_str()) {
        return Err(Invalid::new(
            "method",
            format!(
                "{:?} is not one of GET, POST, PUT, PATCH, DELETE",
                spec.method
            ),
        ));
    }
    if let Some(body) = &spec.body {
        if body.len() > JOB_BODY_BYTES_MAX {
            return Err(Invalid::new(
                "body",
                format!(
                    "body is {} bytes; at most {JOB_BODY_BYTES_MAX} allowed",
                    body.len()
                ),
            ));
        }
    }
    schedule(&spec.schedule)?;
    retry(&spec.retry)?;
    duration_ms(
        "timeout",
        spec.timeout_ms,
        Duration::from_millis(1),
        DELIVERY_TIMEOUT_MAX,
    )?;
    duration_ms(
        "misfire.grace",
        spec.misfire.grace_ms,
        Duration::ZERO,
        MISFIRE_GRACE_MAX,
    )?;
    duration_ms(
        "misfire.catchup_window",
        spec.misfire.catchup_window_ms,
        Duration::ZERO,
        MISFIRE_CATCHUP_WINDOW_MAX,
    )
}

/// Where requests go, as stored: a URL in its normal form, at most `HEADERS_COUNT_MAX` valid
/// headers, and its secret headers among them, each named once, in order. Fields are named
/// under `prefix` (`""`, `"on_success."`, …).
pub fn endpoint(prefix: &str, e: &Endpoint) -> Checked {
    let under = |mut i: Invalid| {
        i.field = format!("{prefix}{}", i.field);
        i
    };
    url(&e.url).map_err(under)?;
    if e.headers.len() > HEADERS_COUNT_MAX {
        return Err(under(Invalid::new(
            "headers",
            format!("at most {HEADERS_COUNT_MAX} headers allowed"),
        )));
    }
    for (name, value) in &e.headers {
        header(name, value).map_err(under)?;
    }
    let sorted = e.secret_headers.windows(2).all(|w| w[0] < w[1]);
    if !sorted {
        return Err(under(Invalid::new(
            "secret_headers",
            "names are listed once each, in order",
        )));
    }
    if let Some(name) = e
        .secret_headers
        .iter()
        .find(|n| !e.headers.contains_key(*n))
    {
        return Err(under(Invalid::new(
            "secret_headers",
            format!("{name:?} is not one of the headers"),
        )));
    }
    Ok(())
}

/// A notification as stored: its endpoint, at least one kind of event, each once and in order,
/// and a selector that parses.
pub fn notification(n: &NotificationSpec) -> Checked {
    endpoint("", &n.to)?;
    if n.events.is_empty() || !n.events.windows(2).all(|w| w[0] < w[1]) {
        return Err(Invalid::new(
            "events",
            "at least one event type, each listed once, in order",
        ));
    }
    if let Some(selector) = &n.selector {
        super::filter::parse_selector(selector).map_err(|r| Invalid::new("selector", r.0))?;
    }
    Ok(())
}

/// An `http`/`https` URL with a host, at most `URL_BYTES_MAX` long. Returns it as the URL
/// parser writes it (the form a stored job holds).
pub fn normal_url(raw: &str) -> Result<String, Invalid> {
    if raw.len() > URL_BYTES_MAX {
        return Err(Invalid::new(
            "url",
            format!("url exceeds {URL_BYTES_MAX} bytes"),
        ));
    }
    let parsed = url::Url::parse(raw)
        .map_err(|e| Invalid::new("url", format!("{raw:?} is not a URL: {e}")))?;
    deliverable(&parsed)?;
    Ok(parsed.to_string())
}

/// A URL hookd may send to: `http` or `https`, with a host. The message never repeats the URL
/// (it may carry credentials).
pub fn deliverable(parsed: &url::Url) -> Checked {
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Invalid::new(
            "url",
            format!(
                "scheme {:?} is not allowed; use http or https",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Invalid::new("url", "url has no host"));
    }
    Ok(())
}

fn url(raw: &str) -> Checked {
    if normal_url(raw)? != raw {
        return Err(Invalid::new("url", "url is not in its normal form"));
    }
    Ok(())
}

/// One stored header: a lower-case valid name hookd does not set itself, and a visible-ASCII
/// value of at most `HEADER_BYTES_MAX` bytes.
pub fn header(name: &str, value: &str) -> Checked {
    let field = format!("headers.{name}");
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name != name.to_ascii_lowercase() {
        return Err(Invalid::new(
            &field,
            format!("{name:?} is not a valid header name"),
        ));
    }
    if RESERVED_HEADERS.contains(&name) || name.starts_with("hookd-") {
        return Err(Invalid::new(
            &field,
            format!("header {name} is set by hookd and cannot be overridden"),
        ));
    }
    if value.len() > HEADER_BYTES_MAX || http::HeaderValue::from_str(value).is_err() {
        return Err(Invalid::new(
            &field,
            format!("header value must be visible ASCII text of at most {HEADER_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// A schedule as stored (instants and durations already in milliseconds).
pub fn schedule(s: &ScheduleSpec) -> Checked {
    match s {
        ScheduleSpec::At { at_ms } => instant("schedule.at", *at_ms),
        ScheduleSpec::After { after_ms } => duration_ms(
            "schedule.after",
            *after_ms,
            Duration::ZERO,
            SCHEDULE_SPAN_MAX,
        ),
        ScheduleSpec::Every {
            every_ms,
            start_at_ms,
        } => {
            duration_ms("schedule.every", *every_ms, EVERY_MIN, SCHEDULE_SPAN_MAX)?;
            start_at_ms.map_or(Ok(()), |t| instant("schedule.start_at", t))
        }
        ScheduleSpec::Cron { expr, timezone } => {
            if expr.len() > CRON_EXPR_BYTES_MAX {
                return Err(Invalid::new(
                    "schedule.cron",
                    format!("cron expression exceeds {CRON_EXPR_BYTES_MAX} bytes"),
                ));
            }
            CronSchedule::parse(expr, Some(timezone))
                .map(|_| ())
                .map_err(|e| Invalid::new(e.field, e.message))
        }
    }
}

fn retry(r: &RetrySpec) -> Checked {
    if !(1..=RETRY_ATTEMPTS_MAX).contains(&r.max_attempts) {
        return Err(Invalid::new(
            "retry.max_attempts",
            format!("must be between 1 and {RETRY_ATTEMPTS_MAX}"),
        ));
    }
    duration_ms(
        "retry.initial_backoff",
        r.initial_backoff_ms,
        RETRY_BACKOFF_MIN,
        RETRY_MAX_BACKOFF_MAX,
    )?;
    duration_ms(
        "retry.max_backoff",
        r.max_backoff_ms,
        RETRY_BACKOFF_MIN,
        RETRY_MAX_BACKOFF_MAX,
    )?;
    if r.max_backoff_ms < r.initial_backoff_ms {
        return Err(Invalid::new(
            "retry.max_backoff",
            "max_backoff must not be below initial_backoff",
        ));
    }
    // `contains` is false for NaN.
    if !(1.0..=RETRY_MULTIPLIER_MAX).contains(&r.multiplier) {
        return Err(Invalid::new(
            "retry.multiplier",
            format!("must be between 1.0 and {RETRY_MULTIPLIER_MAX}"),
        ));
    }
    if !(0.0..=1.0).contains(&r.jitter) {
        return Err(Invalid::new("retry.jitter", "must be between 0.0 and 1.0"));
    }
    Ok(())
}

/// A duration in milliseconds within `[min, max]`.
pub fn duration_ms(field: &str, ms: u64, min: Duration, max: Duration) -> Checked {
    let (lo, hi) = (min.as_millis() as u64, max.as_millis() as u64);
    if (lo..=hi).contains(&ms) {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "must be between {} and {}",
                format_duration_ms(lo),
                format_duration_ms(hi)
            ),
        ))
    }
}

/// An instant a user may give: 1970 to 9999.
pub fn instant(field: &str, ms: UnixMs) -> Checked {
    if (0..=INSTANT_MAX_MS).contains(&ms) {
        Ok(())
    } else {
        Err(Invalid::new(field, "must lie between 1970 and 9999"))
    }
}

/// The proposer's clock, as stamped into a command: a real instant, near the checker's clock.
fn stamp(t: UnixMs, now_ms: UnixMs) -> Checked {
    instant("now_ms", t)?;
    let skew = COMMAND_CLOCK_SKEW_MAX.as_millis() as u64;
    if t.abs_diff(now_ms) > skew {
        return Err(Invalid::new(
            "now_ms",
            format!(
                "the command's clock is {} ms from this node's; at most {skew} allowed",
                t.abs_diff(now_ms)
            ),
        ));
    }
    Ok(())
}

fn run_retention(n: u32) -> Checked {
    if (1..=RUN_RETENTION_MAX).contains(&n) {
        Ok(())
    } else {
        Err(Invalid::new(
            "retention",
            format!("must be between 1 and {RUN_RETENTION_MAX}"),
        ))
    }
}

/// 1 to `max` visible ASCII characters, else `message`.
fn visible_ascii(field: &str, s: &str, max: usize, message: impl FnOnce() -> String) -> Checked {
    if !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Invalid::new(field, message()))
    }
}

fn run_id(field: &str, id: &str) -> Checked {
    visible_ascii(field, id, RUN_ID_BYTES_MAX, || {
        format!("run ids are 1 to {RUN_ID_BYTES_MAX} visible ASCII characters")
    })
}

/// Node addresses and the cluster id: visible ASCII, bounded.
fn text(field: &str, s: &str) -> Checked {
    visible_ascii(field, s, NODE_TEXT_BYTES_MAX, || {
        format!("1 to {NODE_TEXT_BYTES_MAX} visible ASCII characters")
    })
}

fn due(field: &str, ms: UnixMs) -> Checked {
    if (0..=DUE_MAX_MS).contains(&ms) {
        Ok(())
    } else {
        Err(Invalid::new(field, "not an instant a schedule can reach"))
    }
}

fn claim_item(item: &ClaimItem) -> Checked {
    job_id("items.job_id", &item.job_id)?;
    due("items.due_ms", item.due_ms)?;
    match item.kind {
        ClaimKind::Deliver => Ok(()),
        ClaimKind::DeliverAt { at_ms } => {
            let most = item.due_ms.saturating_add(JITTER_MAX.as_millis() as i64);
            if (item.due_ms..=most).contains(&at_ms) {
                Ok(())
            } else {
                Err(Invalid::new(
                    "items.kind.at_ms",
                    "a run is due at most the longest jitter after its instant",
                ))
            }
        }
        ClaimKind::Skip { count, first_ms } => {
            if count == 0 {
                return Err(Invalid::new("items.kind.count", "skips at least one run"));
            }
            due("items.kind.first_ms", first_ms)?;
            if first_ms > item.due_ms {
                return Err(Invalid::new(
                    "items.kind.first_ms",
                    "the first skipped run comes before the last",
                ));
            }
            Ok(())
        }
    }
}

fn outcome(o: &AttemptOutcome) -> Checked {
    run_id("outcomes.run_id", &o.run_id)?;
    let a = &o.attempt;
    if a.n == 0 {
        return Err(Invalid::new("outcomes.attempt.n", "attempts count from 1"));
    }
    instant("outcomes.attempt.started_at_ms", a.started_at_ms)?;
    if a.error
        .as_ref()
        .is_some_and(|e| e.len() > ATTEMPT_ERROR_BYTES_MAX)
    {
        return Err(Invalid::new(
            "outcomes.attempt.error",
            format!("at most {ATTEMPT_ERROR_BYTES_MAX} bytes"),
        ));
    }
    match o.result {
        AttemptResult::RetryAt(at) => due("outcomes.result.retry_at", at),
        AttemptResult::Succeeded | AttemptResult::Failed => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::command::{Attempt, Epoch};

    const NOW: UnixMs = 1_800_000_000_000;

    fn spec() -> JobSpec {
        let mut spec = crate::core::state::tests::spec("http://example.com/h");
        spec.schedule = ScheduleSpec::Every {
            every_ms: 1000,
            start_at_ms: None,
        };
        spec.headers = BTreeMap::from([("authorization".into(), "Bearer x".into())]);
        spec.secret_headers = vec!["authorization".into()];
        spec
    }

    fn create(f: impl FnOnce(&mut String, &mut JobSpec, &mut UnixMs)) -> Command {
        let (mut id, mut spec, mut now) = ("job-1".to_owned(), spec(), NOW);
        f(&mut id, &mut spec, &mut now);
        Command::CreateJob {
            id,
            spec,
            now_ms: now,
        }
    }

    fn outcome(f: impl FnOnce(&mut AttemptOutcome)) -> Command {
        let mut o = AttemptOutcome {
            run_id: "run_1_2".into(),
            attempt: Attempt {
                n: 1,
                started_at_ms: NOW,
                duration_ms: 3,
                status_code: Some(200),
                error: None,
                node_id: 1,
            },
            result: AttemptResult::Succeeded,
        };
        f(&mut o);
        Command::RecordAttempts { outcomes: vec![o] }
    }

    fn bulk(action: BulkAction, ids: &[&str]) -> Command {
        Command::Bulk {
            action,
            ids: ids.iter().map(|s| s.to_string()).collect(),
            now_ms: NOW,
        }
    }

    fn claim(item: ClaimItem, retention: u32) -> Command {
        Command::ClaimRuns {
            epoch: Epoch {
                term: 1,
                node_id: 1,
            },
            now_ms: NOW,
            items: vec![item],
            retention,
        }
    }

    fn item(due_ms: UnixMs, kind: ClaimKind) -> ClaimItem {
        ClaimItem {
            job_id: "job-1".into(),
            incarnation: 7,
            due_ms,
            kind,
        }
    }

    /// Every command a client or a peer could send, with the field it is refused for (None:
    /// accepted). The first rows are what an outside trial sent to a peer port.
    #[test]
    fn every_bound_is_checked_and_names_its_field() {
        let cases: Vec<(&str, Command, Option<&str>)> = vec![
            (
                "trigger stamped i64::MIN",
                Command::TriggerJob {
                    id: "poison".into(),
                    now_ms: i64::MIN,
                    retention: 100,
                },
                Some("now_ms"),
            ),
            (
                "id with /..",
                create(|id, _, _| *id = "a/..".into()),
                Some("id"),
            ),
            (
                "5,000-character id",
                create(|id, _, _| *id = "a".repeat(5000)),
                Some("id"),
            ),
            (
                "file: url",
                create(|_, s, _| s.url = "file:///etc/passwd".into()),
                Some("url"),
            ),
            (
                "timeout u64::MAX",
                create(|_, s, _| s.timeout_ms = u64::MAX),
                Some("timeout"),
            ),
            ("a valid create", create(|_, _, _| {}), None),
            (
                "a valid bulk part",
                bulk(BulkAction::Pause, &["a", "b"]),
                None,
            ),
            (
                "an empty bulk part",
                bulk(BulkAction::Pause, &[]),
                Some("ids"),
            ),
            (
                "a bulk part out of order",
                bulk(BulkAction::Delete, &["b", "a"]),
                Some("ids"),
            ),
            (
                "a bulk part naming a job twice",
                bulk(BulkAction::Trigger { retention: 5 }, &["a", "a"]),
                Some("ids"),
            ),
            (
                "a bulk trigger keeping no run",
                bulk(BulkAction::Trigger { retention: 0 }, &["a"]),
                Some("retention"),
            ),
            (
                "a bulk part with a bad job id",
                bulk(BulkAction::Resume, &["a/.."]),
                Some("ids"),
            ),
            (
                "a bulk retry names runs",
                bulk(BulkAction::Retry, &["run_1_2", "run_1_3"]),
                None,
            ),
            (
                "a bulk part over its bound",
                Command::Bulk {
                    action: BulkAction::Pause,
                    ids: (0..=BULK_PART_IDS_MAX).map(|i| format!("{i:06}")).collect(),
                    now_ms: NOW,
                },
                Some("ids"),
            ),
            (
                "url not in normal form",
                create(|_, s, _| s.url = "HTTP://Example.com/h".into()),
                Some("url"),
            ),
            (
                "upper-case header",
                create(|_, s, _| {
                    s.headers = BTreeMap::from([("X-A".into(), "v".into())]);
                    s.secret_headers.clear();
                }),
                Some("headers.X-A"),
            ),
            (
                "reserved header",
                create(|_, s, _| {
                    s.headers.insert("hookd-attempt".into(), "1".into());
                }),
                Some("headers.hookd-attempt"),
            ),
            (
                "secret not a header",
                create(|_, s, _| s.secret_headers = vec!["x".into()]),
                Some("secret_headers"),
            ),
            (
                "NaN multiplier",
                create(|_, s, _| s.retry.multiplier = f64::NAN),
                Some("retry.multiplier"),
            ),
            (
                "jitter over 1",
                create(|_, s, _| s.retry.jitter = 3.0),
                Some("retry.jitter"),
            ),
            (
                "no attempts",
                create(|_, s, _| s.retry.max_attempts = 0),
                Some("retry.max_attempts"),
            ),
            (
                "backoff u64::MAX",
                create(|_, s, _| s.retry.max_backoff_ms = u64::MAX),
                Some("retry.max_backoff"),
            ),
            (
                "grace u64::MAX",
                create(|_, s, _| s.misfire.grace_ms = u64::MAX),
                Some("misfire.grace"),
            ),
            (
                "huge catch-up window",
                create(|_, s, _| s.misfire.catchup_window_ms = u64::MAX),
                Some("misfire.catchup_window"),
            ),
            (
                "every 1 ms",
                create(|_, s, _| {
                    s.schedule = ScheduleSpec::Every {
                        every_ms: 1,
                        start_at_ms: None,
                    }
                }),
                Some("schedule.every"),
            ),
            (
                "at before 1970",
                create(|_, s, _| s.schedule = ScheduleSpec::At { at_ms: -1 }),
                Some("schedule.at"),
            ),
            (
                "bad time zone",
                create(|_, s, _| {
                    s.schedule = ScheduleSpec::Cron {
                        expr: "* * * * *".into(),
                        timezone: "Mars/Olympus".into(),
                    }
                }),
                Some("schedule.timezone"),
            ),
            (
                "stamp a year off",
                create(|_, _, t| *t = NOW - 366 * 86_400_000),
                Some("now_ms"),
            ),
            (
                "stamp a minute off",
                create(|_, _, t| *t = NOW - 60_000),
                None,
            ),
            (
                "delete with a bad id",
                Command::DeleteJob {
                    id: String::new(),
                    now_ms: NOW,
                },
                Some("id"),
            ),
            (
                "retry of an empty run id",
                Command::RetryRun {
                    run_id: String::new(),
                    now_ms: NOW,
                },
                Some("run_id"),
            ),
            (
                "retention 0",
                Command::TriggerJob {
                    id: "a".into(),
                    now_ms: NOW,
                    retention: 0,
                },
                Some("retention"),
            ),
            (
                "claim due at i64::MIN",
                claim(item(i64::MIN, ClaimKind::Deliver), 100),
                Some("items.due_ms"),
            ),
            (
                "skip of none",
                claim(
                    item(
                        NOW,
                        ClaimKind::Skip {
                            count: 0,
                            first_ms: NOW,
                        },
                    ),
                    100,
                ),
                Some("items.kind.count"),
            ),
            (
                "skip ending before it starts",
                claim(
                    item(
                        NOW,
                        ClaimKind::Skip {
                            count: 2,
                            first_ms: NOW + 1,
                        },
                    ),
                    100,
                ),
                Some("items.kind.first_ms"),
            ),
            (
                "a valid claim",
                claim(
                    item(
                        NOW,
                        ClaimKind::Skip {
                            count: 2,
                            first_ms: NOW - 1000,
                        },
                    ),
                    100,
                ),
                None,
            ),
            (
                "attempt 0",
                outcome(|o| o.attempt.n = 0),
                Some("outcomes.attempt.n"),
            ),
            (
                "attempt started at i64::MIN",
                outcome(|o| o.attempt.started_at_ms = i64::MIN),
                Some("outcomes.attempt.started_at_ms"),
            ),
            (
                "retry at i64::MIN",
                outcome(|o| o.result = AttemptResult::RetryAt(i64::MIN)),
                Some("outcomes.result.retry_at"),
            ),
            (
                "a huge error",
                outcome(|o| o.attempt.error = Some("e".repeat(ATTEMPT_ERROR_BYTES_MAX + 1))),
                Some("outcomes.attempt.error"),
            ),
            ("a valid record", outcome(|_| {}), None),
            (
                "node 0",
                Command::SetNodeInfo {
                    node_id: 0,
                    api_addr: "127.0.0.1:1".into(),
                },
                Some("node_id"),
            ),
            (
                "cluster id with a newline",
                Command::SetClusterId {
                    cluster_id: "a\nb".into(),
                },
                Some("cluster_id"),
            ),
            (
                "a forwarded batch",
                Command::Batch { commands: vec![] },
                Some("command"),
            ),
        ];
        for (what, cmd, field) in cases {
            let got = command(&cmd, NOW);
            assert_eq!(
                got.as_ref().err().map(|e| e.field.as_str()),
                field,
                "{what}: {got:?}"
            );
        }
    }
}
