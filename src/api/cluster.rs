//! `/v1/cluster`, `/healthz` and `/readyz`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hookd_raft::typ::ServerState;
use serde::Serialize;
use serde_json::json;

use super::Shared;

#[derive(Debug, Serialize)]
struct Member {
    id: u64,
    peer_addr: String,
    api_addr: Option<String>,
    role: &'static str,
    voter: bool,
}

#[derive(Debug, Serialize)]
struct ClusterView {
    node_id: u64,
    leader_id: Option<u64>,
    term: u64,
    commit_index: u64,
    cluster_id: Option<String>,
    members: Vec<Member>,
}

pub async fn cluster(state: Shared) -> Json<impl Serialize> {
    let replica = &state.replica;
    let m = replica.metrics();
    let api: BTreeMap<u64, String> = replica.node_api_addrs().into_iter().collect();
    let membership = m.membership_config.membership();
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let voter = membership.get_joint_config().iter().any(|c| c.contains(id));
            let role = if Some(*id) == m.current_leader {
                "leader"
            } else if *id == replica.id() && m.state == ServerState::Candidate {
                "candidate"
            } else if voter {
                "follower"
            } else {
                "learner"
            };
            Member {
                id: *id,
                peer_addr: node.addr.clone(),
                api_addr: api.get(id).cloned(),
                role,
                voter,
            }
        })
        .collect();
    Json(ClusterView {
        node_id: replica.id(),
        leader_id: m.current_leader,
        term: m.current_term,
        commit_index: replica.committed_index(),
        cluster_id: replica.cluster_id(),
        members,
    })
}

/// Alive, and `503` once the replicated core has stopped on a fatal error (a storage failure):
/// the node can no longer do its part and should be restarted or replaced.
pub async fn healthz(state: Shared) -> Response {
    match &state.replica.metrics().running_state {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        Err(fatal) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": fatal.to_string()})),
        )
            .into_response(),
    }
}

/// How long one `/readyz` answer is reused.
const READY_CACHE: Duration = Duration::from_millis(500);

/// How long `/readyz` waits for the leader to confirm this node is caught up.
const READY_PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// Ready when a leader holding a quorum confirms a read index and this node has applied it: the
/// node can serve linearizable reads now. (openraft 0.9 never demotes a leader cut off from its
/// followers, so the leader's own word is not enough.)
pub async fn readyz(state: Shared) -> Response {
    let replica = &state.replica;
    // Unauthenticated, so a probe costs a Raft round at most once per `READY_CACHE`: callers
    // meanwhile share the last answer (and wait for a probe in progress).
    let probe = {
        let mut last = state.ready.lock().await;
        match &*last {
            Some((at, probe)) if at.elapsed() < READY_CACHE => probe.clone(),
            _ => {
                let probe = replica
                    .read_barrier_within(READY_PROBE_DEADLINE)
                    .await
                    .map_err(|e| e.to_string());
                *last = Some((Instant::now(), probe.clone()));
                probe
            }
        }
    };
    let m = replica.metrics();
    let applied = m.last_applied.map_or(0, |l| l.index);
    let (status, reason) = match &probe {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.clone()),
    };
    let body = json!({"ready": probe.is_ok(), "reason": reason, "leader_id": m.current_leader,
                      "applied_index": applied, "commit_index": replica.committed_index()});
    (status, Json(body)).into_response()
}

/// Prometheus text exposition of this node's metrics.
pub async fn metrics() -> Response {
    let body = crate::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}
