//! The public HTTP API (SPEC §2): an axum router over a `Replica`. Writes are proposed through
//! Raft (forwarded to the leader by the replica); reads are linearizable unless
//! `consistency=stale`.

mod bulk;
mod cluster;
mod error;
pub mod front;
mod idempotency;
mod jobs;
pub mod leader;
pub mod model;
mod notifications;
pub mod openapi;
pub(crate) mod runs;
pub mod snapshot;
mod stats;
pub mod targets;
mod ui;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hookd_raft::Secret;
use serde::Deserialize;

use crate::core::{Command, CommandResult};
use crate::replicated::Replica;

pub use error::ApiError;

use crate::config::Config;
use crate::dispatch::DispatchHandle;
use crate::egress::EgressPolicy;
use crate::limits::{LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, REQUEST_BODY_BYTES_MAX};

/// The state every API handler is given.
pub struct ApiState {
    pub replica: Arc<Replica>,
    dispatch: DispatchHandle,
    api_tokens: Vec<Secret>,
    read_tokens: Vec<Secret>,
    run_retention: u32,
    /// Refuses jobs aimed at a denied literal address.
    egress: Arc<EgressPolicy>,
    /// Node-to-node traffic is authenticated (or `--insecure-peer`): members off loopback may
    /// be added.
    peer_authenticated: bool,
    /// The last `/readyz` probe: when, and its outcome.
    ready: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
    /// Every shard of this node (`replica` is one of them), for `GET /v1/cluster`.
    shards: Arc<Vec<Arc<Replica>>>,
}

impl ApiState {
    /// Whether `/v1` requests need a token (`--api-token` or `--read-token` given).
    pub fn needs_token(&self) -> bool {
        !(self.api_tokens.is_empty() && self.read_tokens.is_empty())
    }

    pub fn new(
        replica: Arc<Replica>,
        dispatch: DispatchHandle,
        egress: Arc<EgressPolicy>,
        config: &Config,
        shards: Arc<Vec<Arc<Replica>>>,
    ) -> ApiState {
        ApiState {
            replica,
            dispatch,
            api_tokens: config.api_tokens.clone(),
            read_tokens: config.read_tokens.clone(),
            run_retention: config.run_retention,
            egress,
            peer_authenticated: config.peer_secret.is_some()
                || config.peer_tls.is_some()
                || config.insecure_peer,
            ready: tokio::sync::Mutex::new(None),
            shards,
        }
    }

    /// Checks `cmd` with the one validation a forwarded command also passes, then proposes it.
    async fn propose(&self, cmd: Command) -> Result<CommandResult, ApiError> {
        crate::core::validate::command(&cmd, now_ms())?;
        Ok(self.replica.propose(cmd).await?)
    }

    /// Waits for a linearizable view unless the client asked for a stale read.
    async fn read_barrier(&self, consistency: Consistency) -> Result<(), ApiError> {
        match consistency {
            Consistency::Linearizable => Ok(self.replica.read_barrier().await?),
            Consistency::Stale => Ok(()),
        }
    }
}

type Api = State<Arc<ApiState>>;

/// The `consistency` query parameter: `linearizable` (default) or `stale` (this node's own state).
#[derive(Debug, Default, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

pub fn router(state: Arc<ApiState>) -> Router {
    use utoipa_axum::{router::OpenApiRouter, routes};
    let v1 = OpenApiRouter::new()
        .routes(routes!(jobs::create, jobs::list))
        .routes(routes!(bulk::jobs))
        .route("/jobs/bulk", jobs::job_named_bulk())
        .routes(routes!(jobs::get_one, jobs::put, jobs::patch, jobs::delete))
        .routes(routes!(jobs::pause))
        .routes(routes!(jobs::resume))
        .routes(routes!(runs::trigger))
        .routes(routes!(runs::job_runs))
        .routes(routes!(runs::list))
        .routes(routes!(runs::retry))
        .routes(routes!(bulk::runs))
        .routes(routes!(runs::preview))
        .routes(routes!(cluster::cluster))
        .routes(routes!(cluster::add_member))
        .routes(routes!(cluster::remove_member))
        .routes(routes!(cluster::finalize_upgrade))
        .routes(routes!(targets::list))
        .routes(routes!(targets::put_policy, targets::delete_policy))
        .routes(routes!(stats::stats))
        .routes(routes!(notifications::list))
        .routes(routes!(
            notifications::put,
            notifications::get_one,
            notifications::delete
        ))
        .routes(routes!(snapshot::snapshot))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    let (app, mut api) =
        OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
            .nest("/v1", v1)
            .routes(routes!(cluster::healthz))
            .routes(routes!(cluster::readyz))
            .routes(routes!(cluster::metrics))
            .routes(routes!(openapi::openapi_json))
            .routes(routes!(openapi::docs))
            .routes(routes!(ui::page))
            .split_for_parts();
    utoipa::Modify::modify(&openapi::CommonErrors, &mut api);
    openapi::publish(&api);
    app.route(openapi::REDOC_PATH, axum::routing::get(openapi::redoc_js))
        .route("/ui/", axum::routing::get(ui::page))
        .route("/ui/{name}", axum::routing::get(ui::asset))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}

/// The token of an `Authorization: Bearer TOKEN` header; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

/// With any `--api-token` or `--read-token`, every /v1 request needs `Authorization: Bearer
/// TOKEN`: an api token may do everything, a read token only reads (`403` otherwise).
async fn require_token(State(s): Api, req: Request, next: Next) -> Response {
    if !s.needs_token() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    let Some(given) = given else {
        return ApiError::unauthorized().into_response();
    };
    if Secret::any_matches(&s.api_tokens, given) {
        return next.run(req).await;
    }
    if !Secret::any_matches(&s.read_tokens, given) {
        return ApiError::unauthorized().into_response();
    }
    if !is_read(req.method(), req.uri().path()) {
        return ApiError::forbidden("a read token may only read").into_response();
    }
    let mut req = req;
    req.extensions_mut().insert(Access::Read);
    next.run(req).await
}

/// What the request's credentials allow: everything (an api token, or none needed), or only
/// reads (a read token; `require_token` marks such requests). `GET /v1/cluster` says which,
/// so the console shows no action a read token could not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    All,
    Read,
}

impl Access {
    pub fn of(req: &axum::http::Extensions) -> Access {
        req.get::<Access>().copied().unwrap_or(Access::All)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::All => "all",
            Access::Read => "read",
        }
    }
}

/// What a read token may do: `GET` (and `HEAD`), and previewing a schedule, which changes
/// nothing; but not a backup, which holds the secret headers' values. `path` is relative to
/// `/v1`.
fn is_read(method: &Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    if path.ends_with("/snapshot") {
        return false;
    }
    method == Method::GET
        || method == Method::HEAD
        || (method == Method::POST && path.ends_with("/schedules/preview"))
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
