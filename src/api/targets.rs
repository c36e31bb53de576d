//! `GET /v1/targets`: per target host:port, the leader's attempts in flight, runs waiting, last
//! error and circuit state (SPEC §2, §3). That state lives in the leader's dispatcher, so a
//! follower asks the leader for it (`leader.rs`).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::model::{format_instant, parse_json, target_key};
use super::{json_body, list_limit, query, Api, ApiError};
use crate::core::command::TargetPolicy;
use crate::core::Command;
use crate::dispatch::targets::{Breaker, TargetStatus};
use crate::dispatch::DispatchHandle;

/// The leader's peer-port route for a follower's query.
pub(super) const PEER_PATH: &str = "/forward/targets";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// [default: 100]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TargetView {
    target: String,
    in_flight: usize,
    waiting: usize,
    last_error: Option<String>,
    /// `closed`, `open` or `half_open`.
    #[schema(value_type = String)]
    circuit: &'static str,
    /// While open: when the next probe may go.
    open_until: Option<String>,
    consecutive_failures: u32,
    /// Its limits (`PUT /v1/targets/{host:port}/policy`), if any.
    policy: Option<PolicyBody>,
}

impl From<TargetStatus> for TargetView {
    fn from(t: TargetStatus) -> TargetView {
        let (open_until, consecutive_failures) = match t.breaker {
            Breaker::Open { until_ms, .. } => (Some(format_instant(until_ms)), 0),
            Breaker::Closed { failures } => (None, failures),
            Breaker::HalfOpen { .. } => (None, 0),
        };
        TargetView {
            target: t.target,
            in_flight: t.in_flight,
            waiting: t.waiting,
            last_error: t.last_error,
            circuit: t.breaker.name(),
            open_until,
            consecutive_failures,
            policy: t.policy.map(PolicyBody::from),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Page {
    targets: Vec<TargetView>,
    next: Option<String>,
}

/// Per target host:port: attempts in flight, runs waiting, last error, circuit.
#[utoipa::path(get, operation_id = "listTargets", path = "/targets", tag = "targets", params(Params),
    responses((status = 200, description = "a page of targets", body = Page)))]
pub async fn list(
    state: Api,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let query = PeerQuery {
        after: params.after,
        limit: list_limit(params.limit)?,
    };
    super::leader::ask(&state, PEER_PATH, query, page).await
}

/// What a follower asks the leader's peer port for.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PeerQuery {
    after: Option<String>,
    limit: usize,
}

/// This node's dispatcher's page as JSON; None when it does not dispatch.
pub(super) async fn page(dispatch: DispatchHandle, q: PeerQuery) -> Option<serde_json::Value> {
    let (targets, next) = dispatch.targets(q.after, q.limit).await?;
    let targets = targets.into_iter().map(TargetView::from).collect();
    serde_json::to_value(Page { targets, next }).ok()
}

/// A target's limits, as sent and shown: any of the three, at least one.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max_concurrency": 4, "rate_per_s": 50, "burst": 10}))]
pub struct PolicyBody {
    /// Attempts in flight at most (replaces `--host-concurrency`), 1 to 10,000.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: Option<u32>,
    /// Attempts started per second at most (a token bucket), 0.001 to 1,000,000.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_per_s: Option<f64>,
    /// Attempts the bucket holds: how many may start at once (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u32>,
}

impl From<TargetPolicy> for PolicyBody {
    fn from(p: TargetPolicy) -> PolicyBody {
        PolicyBody {
            max_concurrency: p.max_concurrency,
            rate_per_s: p.rate_milli_per_s.map(|r| r as f64 / 1000.0),
            burst: p.burst,
        }
    }
}

/// A target's policy as answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PolicyAnswer {
    target: String,
    policy: PolicyBody,
}

/// Set a target's limits, replacing the node defaults (the dispatching leader applies them
/// within a second).
#[utoipa::path(put, operation_id = "putTargetPolicy", path = "/targets/{target}/policy", tag = "targets",
    request_body = PolicyBody,
    params(("target" = String, Path, description = "host:port")),
    responses((status = 200, description = "the target's policy", body = PolicyAnswer)))]
pub async fn put_policy(
    state: Api,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let target = target_key(&target)?;
    let body = json_body(&headers, body)?;
    let asked: PolicyBody = parse_json(&body)?;
    let rate_milli_per_s = match asked.rate_per_s {
        None => None,
        Some(r) if r.is_finite() && (0.001..=1e6).contains(&r) => Some((r * 1000.0).round() as u64),
        Some(_) => {
            return Err(ApiError::invalid(
                "rate_per_s",
                "0.001 to 1,000,000 attempts a second",
            ))
        }
    };
    let policy = TargetPolicy {
        max_concurrency: asked.max_concurrency,
        rate_milli_per_s,
        burst: asked.burst,
    };
    crate::core::validate::target_policy(&policy)?;
    state
        .propose(Command::SetTargetPolicy {
            target: target.clone(),
            policy: Some(policy),
        })
        .await?;
    Ok(Json(PolicyAnswer {
        target,
        policy: policy.into(),
    })
    .into_response())
}

/// Remove a target's limits: the node defaults apply again.
#[utoipa::path(delete, operation_id = "deleteTargetPolicy", path = "/targets/{target}/policy", tag = "targets",
    params(("target" = String, Path, description = "host:port")),
    responses((status = 204, description = "removed (or there was none)")))]
pub async fn delete_policy(state: Api, Path(target): Path<String>) -> Result<Response, ApiError> {
    let target = target_key(&target)?;
    state
        .propose(Command::SetTargetPolicy {
            target,
            policy: None,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
