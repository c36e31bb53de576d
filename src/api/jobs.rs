//! Handlers of `/v1/jobs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::core::{Command, CommandResult, JobSpec};
use crate::replicated::ReplicaState;

use crate::egress::literal_ip;

use super::idempotency::{self, Key, Keyed};
use super::model::{
    job_filter, merge_patch, parse_if_match, parse_json, validate_id, JobRequest, JobView,
};
use super::{json_body, list_limit, now_ms, query, Api, ApiError, ApiState, Consistency};
use crate::limits::PAGE_SCAN_BUDGET;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    #[serde(default)]
    pub(super) consistency: Consistency,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// [default: 100]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// List the jobs after this id.
    after: Option<String>,
    /// Label selector: `team=payments,env!=dev,tier in (gold,silver),canary,!legacy`.
    selector: Option<String>,
    /// `active`, `paused` or `completed`.
    state: Option<String>,
    /// The `host:port` the job's URL delivers to.
    target: Option<String>,
    /// Id prefix.
    prefix: Option<String>,
    #[serde(default)]
    consistency: Consistency,
}

/// A job answer: the job, its version as `ETag`, and `Location` when it was created.
pub(super) fn job_response(status: StatusCode, job: crate::core::Job) -> Response {
    let location = format!("/v1/jobs/{}", job.id);
    let etag = format!("\"{}\"", job.version);
    let view = JobView::new(job);
    let mut resp = (status, Json(view)).into_response();
    if let Ok(v) = etag.parse() {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED {
        if let Ok(v) = location.parse() {
            resp.headers_mut().insert(header::LOCATION, v);
        }
    }
    resp
}

/// The versions the request's `If-Match` allows (empty: any), if it has one.
fn if_match(headers: &HeaderMap) -> Result<Option<Vec<u64>>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("If-Match", "not visible ASCII"))
                .and_then(parse_if_match)
        })
        .transpose()
}

/// `cmd` (a change of job `id`), made conditional on the request's `If-Match`, if it has one.
fn conditional(headers: &HeaderMap, id: &str, cmd: Command) -> Result<Command, ApiError> {
    Ok(match if_match(headers)? {
        None => cmd,
        Some(versions) => Command::IfVersion {
            id: id.to_owned(),
            versions,
            command: Box::new(cmd),
        },
    })
}

/// How long a create waits for the members' API addresses to be asked for, when its URL names
/// the host of a member whose API address this node does not know yet.
const MEMBERS_ASK_WITHIN: Duration = Duration::from_secs(2);

/// `check_egress` for a job's URL and its callbacks'.
async fn check_spec_egress(state: &ApiState, spec: &JobSpec) -> Result<(), ApiError> {
    check_egress(state, "url", &spec.url).await?;
    for (prefix, callback) in spec.callbacks() {
        if let Some(cb) = callback {
            check_egress(state, &format!("{prefix}url"), &cb.url).await?;
        }
    }
    Ok(())
}

/// A URL naming a literal address the egress policy denies is refused at once (a name is
/// checked when it is resolved, at every attempt), as field `field`. On the host of a member
/// whose API address is not known here yet (a cluster that just started), the members are
/// asked first.
pub async fn check_egress(state: &ApiState, field: &str, url: &str) -> Result<(), ApiError> {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Ok(()); // validated before
    };
    if let (Some(ip), Some(port)) = (literal_ip(&parsed), parsed.port_or_known_default()) {
        let addr = SocketAddr::new(ip, port);
        let mut verdict = state.egress.check(addr);
        if verdict.is_ok() && state.egress.unsure_of(ip) {
            state.egress.refresh_now(MEMBERS_ASK_WITHIN).await;
            verdict = state.egress.check(addr);
        }
        if let Err(denied) = verdict {
            return Err(ApiError::invalid(field, denied.to_string()));
        }
    }
    Ok(())
}

/// Secrets sent back as `***` (a secret header, the URL's password), resolved against the
/// stored job `id` (`JobSpec::keep_secrets_from`): kept only for the same origin. Read after a
/// barrier; `apply` keeps a masked header's value as stored when it runs.
async fn keep_secrets(state: &ApiState, id: &str, spec: JobSpec) -> Result<JobSpec, ApiError> {
    if !spec.has_masked() {
        return Ok(spec);
    }
    state.read_barrier(Consistency::Linearizable).await?;
    let stored = state.replica.state().get_job(id)?;
    spec.keep_secrets_from(stored.as_ref().map(|j| &j.spec))
        .map_err(|(field, message)| ApiError::invalid(&field, message))
}

/// Maps the result of a job-changing command to a response.
fn respond(id: &str, result: CommandResult) -> Result<Response, ApiError> {
    match result {
        CommandResult::Job { job, created, .. } => Ok(job_response(
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            job,
        )),
        CommandResult::Deleted { .. } => Ok(StatusCode::NO_CONTENT.into_response()),
        CommandResult::Rejected { field, message } => Err(ApiError::invalid(&field, message)),
        CommandResult::NotFound => Err(ApiError::not_found(format!("no job {id:?}"))),
        CommandResult::Conflict { .. } => Err(ApiError::conflict(format!(
            "job {id:?} exists with another definition; PUT /v1/jobs/{id} replaces it"
        ))),
        CommandResult::PreconditionFailed { current } => {
            Err(ApiError::precondition_failed(id, current))
        }
        other => {
            tracing::error!(?other, "unexpected result of a job command");
            Err(ApiError::unavailable("unexpected result of a job command"))
        }
    }
}

/// A page of jobs, ordered by id; `next` is the `after` of the next page.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobsPage {
    jobs: Vec<JobView>,
    next: Option<String>,
}

/// Create a job.
#[utoipa::path(post, operation_id = "createJob", path = "/jobs", tag = "jobs", request_body = JobRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a repeat of this request with the key within 24 h gets the first answer")),
    responses(
        (status = 201, description = "created", body = JobView),
        (status = 200, description = "a job with this id and the same definition exists", body = JobView),
    ))]
pub async fn create(
    state: Api,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let (id, spec) = parse_json::<JobRequest>(&body)?.into_spec()?;
    check_spec_egress(&state, &spec).await?;
    let key = Key::of(&headers, "POST", "/v1/jobs", &body)?;
    let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let spec = keep_secrets(&state, &id, spec).await?;
    let cmd = Command::create_job(id.clone(), spec, now_ms());
    match idempotency::propose(&state, key.as_ref(), cmd).await? {
        Keyed::Answer(answer) => Ok(answer),
        Keyed::Result(result) => respond(&id, *result),
    }
}

/// Create or replace the job `id`.
#[utoipa::path(put, operation_id = "putJob", path = "/jobs/{id}", tag = "jobs", request_body = JobRequest,
    params(("id" = String, Path, description = "job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "`*` or the job versions (`\"3\"`, as `ETag` gives them) the change may apply to")),
    responses((status = 412, description = "If-Match names another version, or there is no job", body = super::openapi::ErrorBody),
        (status = 201, description = "created", body = JobView),
        (status = 200, description = "replaced (or unchanged)", body = JobView),
    ))]
pub async fn put(
    state: Api,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    validate_id("id", &id)?;
    let body = json_body(&headers, body)?;
    let (body_id, spec) = parse_json::<JobRequest>(&body)?.into_spec()?;
    check_spec_egress(&state, &spec).await?;
    if body_id.as_ref().is_some_and(|b| *b != id) {
        return Err(ApiError::invalid(
            "id",
            "the id in the body differs from the one in the path",
        ));
    }
    let spec = keep_secrets(&state, &id, spec).await?;
    let cmd = conditional(&headers, &id, Command::put_job(id.clone(), spec, now_ms()))?;
    respond(&id, state.propose(cmd).await?)
}

/// Times a `PATCH` without `If-Match` is tried again when the job changed between its read and
/// its write.
const PATCH_TRIES: usize = 3;

/// Change some fields of a job: a JSON merge patch (RFC 7396) of the job as sent.
#[utoipa::path(patch, operation_id = "patchJob", path = "/jobs/{id}", tag = "jobs",
    request_body(content = serde_json::Value, content_type = "application/merge-patch+json",
        description = "a JSON merge patch of the job as sent: fields given replace, null removes"),
    params(("id" = String, Path, description = "job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "`*` or the job versions (`\"3\"`, as `ETag` gives them) the change may apply to")),
    responses((status = 412, description = "If-Match names another version, or there is no job", body = super::openapi::ErrorBody),
        (status = 200, description = "the changed job", body = JobView)))]
pub async fn patch(
    state: Api,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    validate_id("id", &id)?;
    let body = json_body(&headers, body)?;
    let patch: serde_json::Value = parse_json(&body)?;
    if !patch.is_object() {
        return Err(ApiError::invalid(
            "body",
            "a merge patch of a job is a JSON object",
        ));
    }
    let asked = if_match(&headers)?;
    for _ in 0..PATCH_TRIES {
        state.read_barrier(Consistency::Linearizable).await?;
        let Some(job) = state.replica.state().get_job(&id)? else {
            return Err(match asked {
                Some(_) => ApiError::precondition_failed(&id, None),
                None => ApiError::not_found(format!("no job {id:?}")),
            });
        };
        let version = job.version;
        if asked
            .as_ref()
            .is_some_and(|a| !a.is_empty() && !a.contains(&version))
        {
            return Err(ApiError::precondition_failed(&id, Some(version)));
        }
        let as_sent = serde_json::to_value(JobView::new(job))
            .map_err(|e| ApiError::unavailable(format!("cannot render job {id:?}: {e}")))?;
        let patched = merge_patch(as_sent, &patch);
        let patched = serde_json::to_vec(&patched)
            .map_err(|e| ApiError::unavailable(format!("cannot render job {id:?}: {e}")))?;
        let (body_id, spec) = parse_json::<JobRequest>(&patched)?.into_spec()?;
        if body_id.as_deref() != Some(id.as_str()) {
            return Err(ApiError::invalid("id", "a patch cannot change a job's id"));
        }
        check_spec_egress(&state, &spec).await?;
        let spec = keep_secrets(&state, &id, spec).await?;
        // Written only over the version the patch was applied to.
        let cmd = Command::IfVersion {
            id: id.clone(),
            versions: vec![version],
            command: Box::new(Command::put_job(id.clone(), spec, now_ms())),
        };
        match state.propose(cmd).await? {
            CommandResult::PreconditionFailed { current } if asked.is_some() => {
                return Err(ApiError::precondition_failed(&id, current))
            }
            // Changed meanwhile: apply the patch to what it is now.
            CommandResult::PreconditionFailed { .. } => continue,
            result => return respond(&id, result),
        }
    }
    Err(ApiError::conflict(format!(
        "job {id:?} kept changing while this patch was applied; try again"
    )))
}

/// Read one job.
#[utoipa::path(get, operation_id = "getJob", path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$"), ReadParams),
    responses((status = 200, description = "the job", body = JobView)))]
pub async fn get_one(
    state: Api,
    Path(id): Path<String>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    validate_id("id", &id)?;
    state.read_barrier(params.consistency).await?;
    match state.replica.state().get_job(&id)? {
        Some(job) => Ok(job_response(StatusCode::OK, job)),
        None => Err(ApiError::not_found(format!("no job {id:?}"))),
    }
}

/// List jobs, ordered by id.
#[utoipa::path(get, operation_id = "listJobs", path = "/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, description = "a page of jobs", body = JobsPage)))]
pub async fn list(
    state: Api,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let limit = list_limit(params.limit)?;
    let filter = job_filter(
        params.selector.as_deref(),
        params.state.as_deref(),
        params.target.as_deref(),
        params.prefix.as_deref(),
    )?;
    state.read_barrier(params.consistency).await?;
    let view = state.replica.state();
    let after = params.after.as_deref();
    let (jobs, next) = if filter.is_empty() {
        let (jobs, more) = view.list_jobs(after, limit)?;
        let next = jobs.last().map(|j| j.id.clone()).filter(|_| more);
        (jobs, next)
    } else {
        let page = view.list_jobs_filtered(&filter, after, limit, PAGE_SCAN_BUDGET)?;
        (page.jobs, page.next)
    };
    let jobs: Vec<JobView> = jobs.into_iter().map(JobView::new).collect();
    Ok(Json(JobsPage { jobs, next }).into_response())
}

async fn simple_command(
    state: &Arc<ApiState>,
    id: &str,
    cmd: Command,
) -> Result<Response, ApiError> {
    let result = state.propose(cmd).await?;
    respond(id, result)
}

async fn set_paused(
    state: &Arc<ApiState>,
    id: String,
    headers: &HeaderMap,
    paused: bool,
) -> Result<Response, ApiError> {
    let cmd = Command::SetPaused {
        id: id.clone(),
        paused,
        now_ms: now_ms(),
    };
    simple_command(state, &id, conditional(headers, &id, cmd)?).await
}

/// Delete a job; pending retries are cancelled.
#[utoipa::path(delete, operation_id = "deleteJob", path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "`*` or the job versions (`\"3\"`, as `ETag` gives them) the change may apply to")),
    responses((status = 412, description = "If-Match names another version, or there is no job", body = super::openapi::ErrorBody),
        (status = 204, description = "deleted")))]
pub async fn delete(
    state: Api,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cmd = Command::DeleteJob {
        id: id.clone(),
        now_ms: now_ms(),
    };
    simple_command(&state, &id, conditional(&headers, &id, cmd)?).await
}

/// Stop firing a job.
#[utoipa::path(post, operation_id = "pauseJob", path = "/jobs/{id}/pause", tag = "jobs",
    params(("id" = String, Path, description = "job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "`*` or the job versions (`\"3\"`, as `ETag` gives them) the change may apply to")),
    responses((status = 412, description = "If-Match names another version, or there is no job", body = super::openapi::ErrorBody),
        (status = 200, description = "the paused job", body = JobView)))]
pub async fn pause(
    state: Api,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    set_paused(&state, id, &headers, true).await
}

/// Fire a paused job again, from the first run due after the resume.
#[utoipa::path(post, operation_id = "resumeJob", path = "/jobs/{id}/resume", tag = "jobs",
    params(("id" = String, Path, description = "job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "`*` or the job versions (`\"3\"`, as `ETag` gives them) the change may apply to")),
    responses((status = 412, description = "If-Match names another version, or there is no job", body = super::openapi::ErrorBody),
        (status = 200, description = "the resumed job", body = JobView)))]
pub async fn resume(
    state: Api,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    set_paused(&state, id, &headers, false).await
}

/// `POST /v1/jobs/bulk` is the bulk route; a job whose id is `bulk` is still read, replaced,
/// patched and deleted at that path.
pub fn job_named_bulk() -> axum::routing::MethodRouter<Arc<ApiState>> {
    const ID: &str = "bulk";
    axum::routing::get(|s: Api, p: Result<Query<ReadParams>, QueryRejection>| {
        get_one(s, Path(ID.into()), p)
    })
    .put(|s: Api, h: HeaderMap, b: Result<Bytes, BytesRejection>| put(s, Path(ID.into()), h, b))
    .patch(|s: Api, h: HeaderMap, b: Result<Bytes, BytesRejection>| patch(s, Path(ID.into()), h, b))
    .delete(|s: Api, h: HeaderMap| delete(s, Path(ID.into()), h))
}
