//! `GET /v1/targets`: per target host:port, the leader's attempts in flight, runs waiting, last
//! error and circuit state (SPEC §2, §3). That state lives in the leader's dispatcher, so a
//! follower asks the leader's API for it (once: a forwarded request is never forwarded again).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::model::format_instant;
use super::{list_limit, query, ApiError, Shared};
use crate::dispatch::targets::{Breaker, TargetStatus};

/// How long a follower waits for the leader's answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// Marks a request a follower forwarded to the leader.
const FORWARDED_HEADER: &str = "hookd-forwarded";

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<String>,
}

#[derive(Debug, Serialize)]
struct TargetView {
    target: String,
    in_flight: usize,
    waiting: usize,
    last_error: Option<String>,
    /// `closed`, `open` or `half_open`.
    circuit: &'static str,
    /// While open: when the next probe may go.
    open_until: Option<String>,
    consecutive_failures: u32,
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
        }
    }
}

#[derive(Debug, Serialize)]
struct Page {
    targets: Vec<TargetView>,
    next: Option<String>,
}

pub async fn list(
    state: Shared,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let limit = list_limit(params.limit)?;
    let leading = state.replica.leadership().epochs().borrow().is_some();
    if leading {
        let (targets, next) = state
            .dispatch
            .targets(params.after, limit)
            .await
            .ok_or_else(|| ApiError::no_leader("this node's dispatcher did not answer"))?;
        let targets = targets.into_iter().map(TargetView::from).collect();
        return Ok(Json(Page { targets, next }).into_response());
    }
    if headers.contains_key(FORWARDED_HEADER) {
        return Err(ApiError::no_leader("this node no longer leads; ask again"));
    }
    forward_to_leader(&state, &headers, &params).await
}

/// Asks the leader's API and passes its answer through.
async fn forward_to_leader(
    state: &Shared,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Response, ApiError> {
    let replica = &state.replica;
    let leader = replica
        .metrics()
        .current_leader
        .ok_or_else(|| ApiError::no_leader("no leader is known"))?;
    let addr = replica
        .view()
        .node_api_addrs()
        .into_iter()
        .find_map(|(id, addr)| (id == leader).then_some(addr))
        .ok_or_else(|| ApiError::no_leader("the leader's API address is not known yet"))?;
    let mut req = state
        .leader_api
        .get(format!("http://{addr}/v1/targets"))
        .query(params)
        .header(FORWARDED_HEADER, "1");
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ApiError::no_leader(format!("the leader did not answer: {e}")))?;
    let status =
        StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = resp
        .bytes()
        .await
        .map_err(|e| ApiError::no_leader(format!("the leader's answer broke off: {e}")))?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}
