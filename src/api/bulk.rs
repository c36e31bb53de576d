//! The bulk routes: `POST /v1/jobs/bulk` (pause, resume, delete or trigger every job a filter
//! matches) and `POST /v1/runs/retry` (redrive every failed run a filter matches).
//!
//! The node answering reads the matching ids in pages after one read barrier and proposes each
//! page as one `Bulk` command (at most `BULK_PART_IDS_MAX` ids, one log entry), one at a time,
//! so a bulk request adds at most one entry to the leader's backlog and other writes are not
//! refused because of it. Each part is durable when acknowledged; the answer totals them.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hookd_raft::ReplicaError;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::core::command::{BulkAction, RunStatus};
use crate::core::filter::JobFilter;
use crate::core::query::RunCursor;
use crate::core::{Command, CommandResult};
use crate::limits::{BULK_IDS_MAX, BULK_PART_IDS_MAX, PAGE_SCAN_BUDGET};
use crate::replicated::{ReadView, ReplicaState};

use super::idempotency::{self, Key};
use super::model::{job_filter, parse_json, run_filter, validate_id};
use super::{json_body, now_ms, Api, ApiError, ApiState, Consistency};

/// How long a bulk request may take; the API's own request deadline is longer.
const BULK_WITHIN: Duration = Duration::from_secs(60);
/// Pause before proposing a part again after a leader change or while the leader sheds load.
const PART_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Ids a bulk answer shows.
pub(super) const SAMPLE_MAX: usize = 100;

/// What `POST /v1/jobs/bulk` does to each matching job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobsAction {
    Pause,
    Resume,
    Delete,
    Trigger,
}

/// `POST /v1/jobs/bulk`: an action and at least one filter; all given filters must hold.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"action": "pause", "selector": "team=payments,env!=prod"}))]
pub struct JobsBulkRequest {
    action: JobsAction,
    /// Label selector: `team=payments,env!=dev,tier in (gold,silver),canary,!legacy`.
    selector: Option<String>,
    /// `active`, `paused` or `completed`.
    state: Option<String>,
    /// The `host:port` the job's URL delivers to.
    target: Option<String>,
    /// Id prefix.
    prefix: Option<String>,
    /// These jobs only (at most 10,000); ids that name no job are not counted.
    ids: Option<Vec<String>>,
    /// Count and show the matching jobs, change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// What a bulk action on jobs did.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct JobsBulkAnswer {
    /// Jobs the filters matched.
    matched: u64,
    /// Jobs the action changed (a pause of a paused job changes nothing; 0 in a dry run).
    changed: u64,
    /// The first matched ids, in id order (at most 100).
    sample: Vec<String>,
    dry_run: bool,
}

/// `POST /v1/runs/retry`: which failed runs to deliver again; no filter means every one.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"job_selector": "team=payments", "since": "2026-12-01T00:00:00Z"}))]
pub struct RunsRetryRequest {
    /// Only runs of jobs this label selector matches.
    job_selector: Option<String>,
    /// Only this job's runs.
    job_id: Option<String>,
    /// Only runs of jobs whose URL delivers to this `host:port`.
    target: Option<String>,
    /// Only runs due at or after this RFC 3339 instant.
    since: Option<String>,
    /// Only runs due at or before this RFC 3339 instant.
    until: Option<String>,
    /// Count the matching runs, retry nothing.
    #[serde(default)]
    dry_run: bool,
}

/// What a bulk retry did.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct RunsRetryAnswer {
    /// Failed runs the filters matched.
    matched: u64,
    /// Runs opened again (0 in a dry run).
    retried: u64,
    dry_run: bool,
}

/// Act on every job a filter matches.
#[utoipa::path(post, operation_id = "bulkJobs", path = "/jobs/bulk", tag = "jobs", request_body = JobsBulkRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a repeat of this request with the key within 24 h gets the first answer")),
    responses((status = 200, description = "what was matched and changed", body = JobsBulkAnswer)))]
pub async fn jobs(
    state: Api,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let req: JobsBulkRequest = parse_json(&body)?;
    let key = Key::of(&headers, "POST", "/v1/jobs/bulk", &body)?;
    let filter = job_filter(
        req.selector.as_deref(),
        req.state.as_deref(),
        req.target.as_deref(),
        req.prefix.as_deref(),
    )?;
    let named = req.ids.as_deref().map(named_ids).transpose()?;
    if filter.is_empty() && named.as_ref().is_none_or(Vec::is_empty) {
        return Err(ApiError::invalid(
            "selector",
            "a bulk action needs at least one filter: selector, state, target, prefix or ids",
        ));
    }
    let action = match req.action {
        JobsAction::Pause => BulkAction::Pause,
        JobsAction::Resume => BulkAction::Resume,
        JobsAction::Delete => BulkAction::Delete,
        JobsAction::Trigger => BulkAction::Trigger {
            retention: state.run_retention,
        },
    };
    if let Some(earlier) = idempotency::earlier(&state, key.as_ref()).await? {
        return Ok(earlier);
    }
    let deadline = Instant::now() + BULK_WITHIN;
    state.read_barrier(Consistency::Linearizable).await?;
    let mut answer = JobsBulkAnswer {
        dry_run: req.dry_run,
        ..JobsBulkAnswer::default()
    };
    let mut pages = JobPages::new(filter, named);
    while let Some(ids) = pages.next(&state.replica.state())? {
        answer.matched += ids.len() as u64;
        let room = SAMPLE_MAX.saturating_sub(answer.sample.len());
        answer.sample.extend(ids.iter().take(room).cloned());
        if !req.dry_run {
            answer.changed += propose_part(&state, action, ids, deadline)
                .await
                .map_err(|e| partly_done(e, answer.changed))?;
        }
    }
    answered(&state, key.as_ref(), answer).await
}

/// Deliver every failed run a filter matches again.
#[utoipa::path(post, operation_id = "retryRuns", path = "/runs/retry", tag = "runs", request_body = RunsRetryRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a repeat of this request with the key within 24 h gets the first answer")),
    responses((status = 200, description = "what was matched and retried", body = RunsRetryAnswer)))]
pub async fn runs(
    state: Api,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let req: RunsRetryRequest = parse_json(&body)?;
    let key = Key::of(&headers, "POST", "/v1/runs/retry", &body)?;
    let filter = run_filter(
        Some(RunStatus::Failed),
        req.job_id.as_deref(),
        req.job_selector.as_deref(),
        req.target.as_deref(),
        req.since.as_deref(),
        req.until.as_deref(),
    )?;
    if let Some(earlier) = idempotency::earlier(&state, key.as_ref()).await? {
        return Ok(earlier);
    }
    let deadline = Instant::now() + BULK_WITHIN;
    state.read_barrier(Consistency::Linearizable).await?;
    let mut answer = RunsRetryAnswer {
        dry_run: req.dry_run,
        ..RunsRetryAnswer::default()
    };
    let mut after: Option<RunCursor> = None;
    loop {
        let page = state.replica.state().list_runs_filtered(
            &filter,
            after.as_ref(),
            BULK_PART_IDS_MAX,
            PAGE_SCAN_BUDGET,
        )?;
        let mut ids: Vec<String> = page.runs.into_iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        answer.matched += ids.len() as u64;
        if !req.dry_run && !ids.is_empty() {
            answer.retried += propose_part(&state, BulkAction::Retry, ids, deadline)
                .await
                .map_err(|e| partly_done(e, answer.retried))?;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    answered(&state, key.as_ref(), answer).await
}

/// The answer of a bulk request; under an idempotency key, remembered first (a repeat that
/// finished before it gets the first answer instead).
async fn answered(
    state: &ApiState,
    key: Option<&Key>,
    answer: impl Serialize,
) -> Result<Response, ApiError> {
    let answer = serde_json::to_value(answer)
        .map_err(|e| ApiError::unavailable(format!("cannot render the answer: {e}")))?;
    match key {
        Some(k) => idempotency::remember(state, k, answer).await,
        None => Ok(Json(answer).into_response()),
    }
}

/// The `ids` of a bulk request: each a job id, at most `BULK_IDS_MAX`; sorted, each once.
fn named_ids(ids: &[String]) -> Result<Vec<String>, ApiError> {
    if ids.len() > BULK_IDS_MAX {
        return Err(ApiError::invalid(
            "ids",
            format!("at most {BULK_IDS_MAX} ids; use a filter for more"),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        validate_id(&format!("ids[{i}]"), id)?;
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The matching job ids, a part at a time, in id order: from the filtered listing, or from
/// the named ids checked against the filter.
struct JobPages {
    filter: JobFilter,
    /// Named ids not looked at yet, in reverse order (popped from the end).
    named: Option<Vec<String>>,
    /// Where the filtered listing goes on from; `None` once it has ended.
    after: Option<Option<String>>,
}

impl JobPages {
    fn new(filter: JobFilter, named: Option<Vec<String>>) -> JobPages {
        JobPages {
            filter,
            named: named.map(|mut ids| {
                ids.reverse();
                ids
            }),
            after: Some(None),
        }
    }

    /// The next non-empty part, or `None` at the end.
    fn next(&mut self, view: &ReadView) -> Result<Option<Vec<String>>, ApiError> {
        let mut ids = Vec::new();
        if let Some(named) = &mut self.named {
            while ids.len() < BULK_PART_IDS_MAX {
                let Some(id) = named.pop() else { break };
                if view.get_job(&id)?.is_some_and(|j| self.filter.matches(&j)) {
                    ids.push(id);
                }
            }
            return Ok((!ids.is_empty()).then_some(ids));
        }
        while ids.is_empty() {
            let Some(after) = self.after.take() else {
                return Ok(None);
            };
            let page = view.list_jobs_filtered(
                &self.filter,
                after.as_deref(),
                BULK_PART_IDS_MAX,
                PAGE_SCAN_BUDGET,
            )?;
            self.after = page.next.map(Some);
            ids = page.jobs.into_iter().map(|j| j.id).collect();
        }
        Ok(Some(ids))
    }
}

/// Proposes one part and returns how many of its ids it changed. A leader change or a leader
/// shedding load is waited out until `deadline` when proposing the part again is harmless:
/// every action but trigger finds what an earlier try did and changes nothing twice.
async fn propose_part(
    state: &ApiState,
    action: BulkAction,
    ids: Vec<String>,
    deadline: Instant,
) -> Result<u64, ApiError> {
    let cmd = Command::Bulk {
        action,
        ids,
        now_ms: now_ms(),
    };
    crate::core::validate::command(&cmd, now_ms())?;
    let repeatable = !matches!(action, BulkAction::Trigger { .. });
    loop {
        let outcome = state.replica.propose(cmd.clone()).await;
        match outcome {
            Ok(CommandResult::Bulk { changed }) => return Ok(u64::from(changed)),
            Ok(CommandResult::Rejected { field, message }) => {
                return Err(ApiError::invalid(&field, message))
            }
            Ok(other) => {
                tracing::error!(?other, "unexpected result of a bulk command");
                return Err(ApiError::unavailable("unexpected result of a bulk command"));
            }
            Err(e)
                if Instant::now() + PART_RETRY_PAUSE < deadline
                    && worth_retrying(&e, repeatable) =>
            {
                tokio::time::sleep(PART_RETRY_PAUSE).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a part that failed with `e` may be proposed again: a part shed or finding no leader
/// was not written; one lost in a leader change may have been, which is harmless only when
/// `repeatable`.
fn worth_retrying(e: &ReplicaError, repeatable: bool) -> bool {
    match e {
        ReplicaError::Overloaded(_) | ReplicaError::NoLeader(_) => true,
        ReplicaError::Unconfirmed(_) => repeatable,
        ReplicaError::Fatal(_) => false,
    }
}

/// An error of a part, saying what the parts before it did.
fn partly_done(mut e: ApiError, changed: u64) -> ApiError {
    e.message = format!(
        "{} (the parts before this one are done: {changed} changed; repeat the request to go on)",
        e.message
    );
    e
}
