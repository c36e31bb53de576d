//! `GET /v1/targets`: per target host:port, the leader's attempts in flight, runs waiting, last
//! error and circuit state (SPEC §2, §3). That state lives in the leader's dispatcher, so a
//! follower asks the leader for it over the peer port (its TLS and secret, never the API's).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::model::format_instant;
use super::{list_limit, query, Api, ApiError};
use crate::dispatch::targets::{Breaker, TargetStatus};
use crate::dispatch::DispatchHandle;

/// How long a follower waits for the leader's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// The leader's peer-port route for a follower's query.
const PEER_PATH: &str = "/forward/targets";

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
    let leading = state.replica.leadership().epochs().borrow().is_some();
    let page = if leading {
        page(&state.dispatch, query).await
    } else {
        state
            .replica
            .ask_leader::<_, Option<serde_json::Value>>(PEER_PATH, &query, FORWARD_TIMEOUT)
            .await?
    };
    match page {
        Some(page) => Ok(Json(page).into_response()),
        None => Err(ApiError::no_leader(
            "the leader's dispatcher did not answer (leadership may be changing); ask again",
        )),
    }
}

/// What a follower asks the leader's peer port for.
#[derive(Debug, Serialize, Deserialize)]
struct PeerQuery {
    after: Option<String>,
    limit: usize,
}

/// This node's dispatcher's page as JSON; None when it does not dispatch.
async fn page(dispatch: &DispatchHandle, q: PeerQuery) -> Option<serde_json::Value> {
    let (targets, next) = dispatch.targets(q.after, q.limit).await?;
    let targets = targets.into_iter().map(TargetView::from).collect();
    serde_json::to_value(Page { targets, next }).ok()
}

/// The peer-port route that answers a follower's `GET /v1/targets` on the leader (behind the
/// peer port's authentication, so a follower needs no API credentials for it).
pub fn peer_routes(dispatch: DispatchHandle) -> Router {
    Router::new().route(
        PEER_PATH,
        post(|Json(q): Json<PeerQuery>| async move { Json(page(&dispatch, q).await) }),
    )
}
