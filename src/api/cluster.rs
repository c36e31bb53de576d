//! `/v1/cluster`, `/healthz` and `/readyz`.

use std::collections::BTreeMap;

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
    let api: BTreeMap<u64, String> = replica.view().node_api_addrs().into_iter().collect();
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
        cluster_id: replica.view().cluster_id(),
        members,
    })
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when a leader is known and this node has applied everything it knows to be committed.
pub async fn readyz(state: Shared) -> Response {
    let replica = &state.replica;
    let m = replica.metrics();
    let applied = m.last_applied.map_or(0, |l| l.index);
    let committed = replica.committed_index();
    // openraft 0.9 never demotes a leader cut off from its followers, so a leader is ready only
    // while a quorum has acknowledged it within the lease.
    let lease_ms = replica.raft_timing().election_timeout_max_ms;
    let (ready, reason) = match m.current_leader {
        None => (false, "no leader"),
        Some(l)
            if l == replica.id() && m.millis_since_quorum_ack.is_none_or(|ms| ms > lease_ms) =>
        {
            (false, "leader without a quorum")
        }
        Some(_) if applied < committed => (false, "catching up"),
        Some(_) => (true, "ok"),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"ready": ready, "reason": reason, "leader_id": m.current_leader,
                      "applied_index": applied, "commit_index": committed});
    (status, Json(body)).into_response()
}
