//! The public HTTP API (SPEC §2): an axum router over a `Replica`. Writes are proposed through
//! Raft (forwarded to the leader by the replica); reads are linearizable unless
//! `consistency=stale`.

mod cluster;
mod error;
mod jobs;
pub mod model;
mod runs;
mod targets;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hookd_raft::Replica;
use serde::Deserialize;

pub use error::ApiError;

use crate::config::Config;
use crate::dispatch::DispatchHandle;
use crate::limits::{LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, REQUEST_BODY_BYTES_MAX};

/// Shared state of the API handlers.
pub struct ApiState {
    pub replica: Arc<Replica>,
    dispatch: DispatchHandle,
    /// Asks the leader's API for what only the leader knows (its dispatcher's targets).
    leader_api: reqwest::Client,
    api_token: Option<String>,
    run_retention: u32,
}

impl ApiState {
    pub fn new(replica: Arc<Replica>, dispatch: DispatchHandle, config: &Config) -> ApiState {
        let leader_api = reqwest::Client::builder()
            .timeout(targets::FORWARD_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default();
        ApiState {
            replica,
            dispatch,
            leader_api,
            api_token: config.api_token.clone(),
            run_retention: config.run_retention,
        }
    }

    /// Waits for a linearizable view unless the client asked for a stale read.
    async fn read_barrier(&self, consistency: Consistency) -> Result<(), ApiError> {
        match consistency {
            Consistency::Linearizable => Ok(self.replica.read_barrier().await?),
            Consistency::Stale => Ok(()),
        }
    }
}

type Shared = State<Arc<ApiState>>;

/// The `consistency` query parameter.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

pub fn router(state: Arc<ApiState>) -> Router {
    let v1 = Router::new()
        .route("/jobs", post(jobs::create).get(jobs::list))
        .route(
            "/jobs/{id}",
            get(jobs::get_one).put(jobs::put).delete(jobs::delete),
        )
        .route("/jobs/{id}/pause", post(jobs::pause))
        .route("/jobs/{id}/resume", post(jobs::resume))
        .route("/jobs/{id}/trigger", post(runs::trigger))
        .route("/jobs/{id}/runs", get(runs::job_runs))
        .route("/runs", get(runs::list))
        .route("/runs/{run_id}/retry", post(runs::retry))
        .route("/schedules/preview", post(runs::preview))
        .route("/cluster", get(cluster::cluster))
        .route("/targets", get(targets::list))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(cluster::healthz))
        .route("/readyz", get(cluster::readyz))
        .route("/metrics", get(cluster::metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}

/// With `--api-token`, every /v1 request needs `Authorization: Bearer TOKEN`.
async fn require_token(State(s): Shared, req: Request, next: Next) -> Response {
    if let Some(token) = &s.api_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Compares secrets without an early exit that would leak the matching prefix's length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A list's `limit` parameter: the default when absent, else `1..=LIST_LIMIT_MAX` or a `400`.
fn list_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            format!("limit must be between 1 and {LIST_LIMIT_MAX}"),
        ));
    }
    Ok(limit)
}

/// The query string as `T`, or a `400` naming the problem.
fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|axum::extract::Query(t)| t)
        .map_err(|e| ApiError::bad_request("query", e.body_text()))
}

/// Reads a JSON request body: `415` unless the content type is JSON, `413` above the limit.
fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        });
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(REQUEST_BODY_BYTES_MAX)
        } else {
            ApiError::malformed(format!("cannot read the request body: {e}"))
        }
    })?;
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    Ok(body)
}

/// Milliseconds since the Unix epoch, from this node's clock. Only the proposing node reads the
/// clock; the value travels inside the command.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
