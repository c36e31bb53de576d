//! Handlers of runs (`/v1/jobs/{id}/runs`, `/v1/runs`, retry, trigger) and of the schedule
//! preview.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::core::command::{Run, RunStatus, ScheduleSpec};
pub use crate::core::render::RunView;
use crate::core::{Command, CommandResult};
use crate::replicated::ReplicaState;

use super::idempotency::{self, Key, Keyed};
use super::model::{
    format_instant, parse_instant, parse_json, run_filter, validate_id, ScheduleRequest,
};
use super::{json_body, list_limit, now_ms, query, Api, ApiError, Consistency};
use crate::core::query::RunCursor;
use crate::limits::PAGE_SCAN_BUDGET;

use crate::limits::{PREVIEW_COUNT_DEFAULT, PREVIEW_COUNT_MAX};
use crate::schedule::Schedule;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunParams {
    /// [default: 100]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// [default across jobs: `failed`]
    #[param(value_type = Option<String>, pattern = "^(pending|in_flight|retrying|succeeded|failed|skipped)$")]
    status: Option<RunStatus>,
    #[serde(default)]
    consistency: Consistency,
}

/// The filters of `GET /v1/runs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsParams {
    /// [default: 100]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// [default: `failed`, or any status with `job_id`]
    #[param(value_type = Option<String>, pattern = "^(pending|in_flight|retrying|succeeded|failed|skipped)$")]
    status: Option<RunStatus>,
    /// Only this job's runs.
    job_id: Option<String>,
    /// Only runs of jobs this label selector matches.
    job_selector: Option<String>,
    /// Only runs of jobs whose URL delivers to this `host:port`.
    target: Option<String>,
    /// Only runs due at or after this RFC 3339 instant.
    since: Option<String>,
    /// Only runs due at or before this RFC 3339 instant.
    until: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
    #[serde(default)]
    consistency: Consistency,
}

impl RunParams {
    fn limit(&self) -> Result<usize, ApiError> {
        list_limit(self.limit)
    }
}

/// Runs, newest first; `next` is the `after` of the next page of `GET /v1/runs`, null at the
/// end (always null for one job's runs).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunsPage {
    runs: Vec<RunView>,
    next: Option<String>,
}

/// The next fires of a schedule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"fires": ["2026-12-07T08:00:00.000Z", "2026-12-08T08:00:00.000Z"],
                          "description": "At 09:00, Monday through Friday (Europe/Berlin), first 10 runs"}))]
pub struct Fires {
    /// RFC 3339 instants, in order.
    fires: Vec<String>,
    /// The schedule in plain words, bounds included: `at 2026-12-07T09:00:00Z`, `after 5m`,
    /// `every 30s from …`, `At 09:00, Monday through Friday (Europe/Berlin)`, `… until …`,
    /// `…, first 10 runs`; a cron expression without words reads `cron EXPR (TZ)`.
    description: String,
}

fn runs_response(runs: Vec<Run>, next: Option<String>) -> Response {
    let now = now_ms();
    let runs: Vec<RunView> = runs.into_iter().map(|r| RunView::new(r, now)).collect();
    Json(RunsPage { runs, next }).into_response()
}

/// Runs of a job, newest first.
#[utoipa::path(get, operation_id = "listJobRuns", path = "/jobs/{id}/runs", tag = "runs",
    params(("id" = String, Path, description = "job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$"), RunParams),
    responses((status = 200, description = "runs", body = RunsPage)))]
pub async fn job_runs(
    state: Api,
    Path(id): Path<String>,
    params: Result<Query<RunParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    validate_id("id", &id)?;
    let limit = params.limit()?;
    state.read_barrier(params.consistency).await?;
    let view = state.replica.state();
    if view.get_job(&id)?.is_none() {
        return Err(ApiError::not_found(format!("no job {id:?}")));
    }
    Ok(runs_response(
        view.job_runs(&id, params.status, limit)?,
        None,
    ))
}

/// Runs across jobs, newest due first, filtered (default status `failed`: the dead-letter view).
/// A page reads a bounded number of runs and jobs: it may hold fewer than `limit` runs with a
/// `next` to go on from.
#[utoipa::path(get, operation_id = "listRuns", path = "/runs", tag = "runs", params(RunsParams),
    responses((status = 200, description = "runs", body = RunsPage)))]
pub async fn list(
    state: Api,
    params: Result<Query<RunsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let limit = list_limit(params.limit)?;
    let status = match (&params.job_id, params.status) {
        (None, None) => Some(RunStatus::Failed),
        (_, status) => status,
    };
    let filter = run_filter(
        status,
        params.job_id.as_deref(),
        params.job_selector.as_deref(),
        params.target.as_deref(),
        params.since.as_deref(),
        params.until.as_deref(),
    )?;
    let after = params
        .after
        .as_deref()
        .map(|a| {
            RunCursor::parse(a).ok_or_else(|| {
                ApiError::invalid(
                    "after",
                    format!("{a:?} is not a `next` this route returned"),
                )
            })
        })
        .transpose()?;
    state.read_barrier(params.consistency).await?;
    let page = state.replica.state().list_runs_filtered(
        &filter,
        after.as_ref(),
        limit,
        PAGE_SCAN_BUDGET,
    )?;
    Ok(runs_response(page.runs, page.next.map(|c| c.to_string())))
}

/// `409`: run `id` is `status`, not failed.
pub fn not_retryable(id: &str, status: RunStatus) -> ApiError {
    ApiError::conflict(format!(
        "run {id} is {}; only failed runs can be retried",
        status.as_str()
    ))
    .at("run_id")
}

/// `202` with `run`.
pub fn accepted_run(run: Run) -> Response {
    (StatusCode::ACCEPTED, Json(RunView::new(run, now_ms()))).into_response()
}

fn run_accepted(result: CommandResult, what: &str) -> Result<Response, ApiError> {
    match result {
        CommandResult::Run { run } => Ok(accepted_run(run)),
        CommandResult::NotFound => Err(ApiError::not_found(format!("no {what}"))),
        CommandResult::Rejected { field, message } => Err(ApiError::invalid(&field, message)),
        CommandResult::NotRetryable { run } => Err(not_retryable(&run.id, run.status)),
        other => {
            tracing::error!(?other, "unexpected result of a run command");
            Err(ApiError::unavailable("unexpected result of a run command"))
        }
    }
}

/// Deliver a failed run again.
#[utoipa::path(post, operation_id = "retryRun", path = "/runs/{run_id}/retry", tag = "runs",
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a repeat of this request with the key within 24 h gets the first answer"), ("run_id" = String, Path, description = "run id")),
    responses((status = 202, description = "the run, open again", body = RunView)))]
pub async fn retry(
    state: Api,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if run_id.is_empty() || run_id.len() > 512 {
        return Err(ApiError::not_found("no such run"));
    }
    let key = Key::of(&headers, "POST", &format!("/v1/runs/{run_id}/retry"), b"")?;
    let cmd = Command::RetryRun {
        run_id: run_id.clone(),
        now_ms: now_ms(),
    };
    match idempotency::propose(&state, key.as_ref(), cmd).await? {
        Keyed::Answer(answer) => Ok(answer),
        Keyed::Result(result) => run_accepted(*result, &format!("run {run_id:?}")),
    }
}

/// Fire a job once now (an extra run).
#[utoipa::path(post, operation_id = "triggerJob", path = "/jobs/{id}/trigger", tag = "jobs",
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a repeat of this request with the key within 24 h gets the first answer"), ("id" = String, Path, description = "job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    responses((status = 202, description = "the new run", body = RunView)))]
pub async fn trigger(
    state: Api,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = Key::of(&headers, "POST", &format!("/v1/jobs/{id}/trigger"), b"")?;
    let cmd = Command::TriggerJob {
        id: id.clone(),
        now_ms: now_ms(),
        retention: state.run_retention,
    };
    match idempotency::propose(&state, key.as_ref(), cmd).await? {
        Keyed::Answer(answer) => Ok(answer),
        Keyed::Result(result) => run_accepted(*result, &format!("job {id:?}")),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"schedule": {"cron": "30 2 * * *", "timezone": "America/New_York"},
                          "from": "2025-03-08T00:00:00Z", "count": 3}))]
pub struct PreviewRequest {
    schedule: ScheduleRequest,
    from: Option<String>,
    count: Option<usize>,
}

/// The next fires of a schedule strictly after `from`, without creating anything.
#[utoipa::path(post, operation_id = "previewSchedule", path = "/schedules/preview", tag = "schedules", request_body = PreviewRequest,
    responses((status = 200, description = "the fires", body = Fires)))]
pub async fn preview(
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let req: PreviewRequest = parse_json(&body)?;
    let from = match &req.from {
        Some(t) => parse_instant("from", t)?,
        None => now_ms(),
    };
    let count = req.count.unwrap_or(PREVIEW_COUNT_DEFAULT);
    if !(1..=PREVIEW_COUNT_MAX).contains(&count) {
        return Err(ApiError::invalid(
            "count",
            format!("count must be between 1 and {PREVIEW_COUNT_MAX}"),
        ));
    }
    let spec = super::model::validate_schedule(&req.schedule)?;
    let instant = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .ok_or_else(|| ApiError::invalid("from", "out of range"))
    };
    // `after` and `every` without start_at count from `from`, as if the job were created then;
    // an `at` fires at its instant if that is after `from`.
    let schedule = match &spec {
        ScheduleSpec::At { at_ms } => Some(Schedule::at(instant(*at_ms)?)),
        _ => crate::schedule::resolve(&spec, from),
    }
    .ok_or_else(|| ApiError::invalid("schedule", "schedule cannot be evaluated"))?;
    // Within the bounds (`start_at` of cron, `end_at`, `max_runs` counted from `from`), as the
    // planner keeps a job within them.
    let bounds = super::model::schedule_bounds(&req.schedule)?;
    let ext = crate::core::command::JobExt {
        start_at_ms: bounds.start_at_ms,
        end_at_ms: bounds.end_at_ms,
        max_runs: bounds.max_runs,
        ..Default::default()
    };
    crate::core::validate::bounds_and_jitter(&spec, &ext)?;
    let span = crate::core::plan::Span::of(&ext, from, &schedule);
    let fires: Vec<String> = schedule
        .fires_after(instant(from.max(span.floor_ms))?, count)
        .into_iter()
        .map(|t| t.timestamp_millis())
        .take_while(|t| *t <= span.end_ms)
        .map(format_instant)
        .collect();
    // Said from the schedule as it was understood (durations and instants as the API writes
    // them, the time zone named), not as it was typed.
    let understood = super::model::render_schedule(&spec, &ext);
    let description = super::model::describe_schedule(&understood, super::model::plain_instant)
        .unwrap_or_else(|| serde_json::to_string(&req.schedule).unwrap_or_default());
    Ok(Json(Fires { fires, description }).into_response())
}
