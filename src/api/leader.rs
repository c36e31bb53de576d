//! Answers from the dispatching leader's memory (`GET /v1/targets`, `GET /v1/stats`): state
//! that is not replicated, so only the leader has it. A follower asks the leader over the peer
//! port (its TLS and secret, never the API's), at a route of its own per kind of answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, ApiState};
use crate::dispatch::DispatchHandle;
use crate::replicated::Replica;

/// How long a follower waits for the leader's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// The answer of the leader's dispatcher to `query`: `answer` here when this node leads, else
/// what the leader's `answer` gave, asked at `peer_path` (a route of `peer_routes`). None from
/// either (the dispatcher stopped or did not answer in time) and no leader at all are `503
/// no_leader`.
pub(super) async fn ask<Q, F, Fut>(
    state: &ApiState,
    peer_path: &str,
    query: Q,
    answer: F,
) -> Result<Response, ApiError>
where
    Q: Serialize,
    F: FnOnce(DispatchHandle, Q) -> Fut,
    Fut: Future<Output = Option<Value>>,
{
    let leading = state.replica.leadership().epochs().borrow().is_some();
    let answered = if leading {
        answer(state.dispatch.clone(), query).await
    } else {
        state
            .replica
            .ask_leader::<_, Option<Value>>(peer_path, &query, FORWARD_TIMEOUT)
            .await?
    };
    match answered {
        Some(body) => Ok(Json(body).into_response()),
        None => Err(ApiError::no_leader(
            "the leader's dispatcher did not answer (leadership may be changing); ask again",
        )),
    }
}

/// Adds to `router` the peer-port route `path` that answers a follower's `ask` with `answer`
/// on this node's dispatcher (behind the peer port's authentication, so a follower needs no
/// API credentials for it).
fn route<Q, F, Fut>(router: Router, path: &str, dispatch: &DispatchHandle, answer: F) -> Router
where
    Q: DeserializeOwned + Send + 'static,
    F: Fn(DispatchHandle, Q) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<Value>> + Send + 'static,
{
    let dispatch = dispatch.clone();
    router.route(
        path,
        post(move |Json(q): Json<Q>| {
            let (answer, dispatch) = (answer.clone(), dispatch.clone());
            async move { Json(answer(dispatch, q).await) }
        }),
    )
}

/// The peer-port routes answering followers' questions to the leader: its dispatcher's
/// (`GET /v1/targets`, `GET /v1/stats`), and its view of the members' health (`GET
/// /v1/cluster`).
pub fn peer_routes(dispatch: DispatchHandle, replica: Arc<Replica>) -> Router {
    let router = Router::new().route(
        super::cluster::HEALTH_PEER_PATH,
        post(move |Json(()): Json<()>| {
            let replica = replica.clone();
            async move { Json(super::cluster::members_health(&replica)) }
        }),
    );
    let router = route(
        router,
        super::targets::PEER_PATH,
        &dispatch,
        super::targets::page,
    );
    route(
        router,
        super::stats::PEER_PATH,
        &dispatch,
        super::stats::window,
    )
}
