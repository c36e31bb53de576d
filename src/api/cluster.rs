//! `/v1/cluster`, `/healthz` and `/readyz`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hookd_raft::{AddMember, Machine, MemberError, Release, RemoveMember};

use crate::core::command::Command;
use crate::core::state::FORMAT_NEWEST;
use crate::replicated::{Hookd, Replica};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::model::{host_port, parse_json};
use super::{json_body, query, Api, ApiError};

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Member {
    id: u64,
    peer_addr: String,
    api_addr: Option<String>,
    /// `leader`, `follower`, `candidate` or `learner`.
    #[schema(value_type = String)]
    role: &'static str,
    voter: bool,
    /// As the leader sees it (a follower asks it; null if no leader answers): `ok`, `lagging`
    /// (answering, but more than 1,000 log entries behind) or `unreachable` (no answer for 2 s).
    #[schema(value_type = Option<String>)]
    health: Option<Health>,
    /// As the leader sees it: log entries the member is behind the leader's last one.
    lag: Option<u64>,
    /// The hookd release the member runs, as the leader last heard it (null: not heard, or a
    /// release before 0.2, which does not say).
    version: Option<String>,
}

/// A member answering but further behind than this is `lagging`.
const LAG_MAX: u64 = 1_000;
/// A member silent this long is `unreachable`.
const SILENT_MAX: Duration = Duration::from_secs(2);

/// A member's health, as the leader sees it: how long since it last acknowledged (none: never
/// in this term) and how far behind it is.
fn health(silent_for: Option<Duration>, lag: Option<u64>) -> Health {
    match (silent_for, lag) {
        (None, _) => Health::Unreachable,
        (Some(s), _) if s >= SILENT_MAX => Health::Unreachable,
        (_, Some(l)) if l > LAG_MAX => Health::Lagging,
        _ => Health::Ok,
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ClusterView {
    node_id: u64,
    leader_id: Option<u64>,
    term: u64,
    commit_index: u64,
    cluster_id: Option<String>,
    /// The format of the records and commands the nodes write: the previous release's until
    /// the upgrade is finalized (`POST /v1/cluster/upgrade/finalize`).
    format_version: u32,
    members: Vec<Member>,
    /// Every shard (SPEC §8) as this node sees it: its own leader, term and commit index.
    shards: Vec<ShardView>,
    /// What the caller's token allows: `all`, or `read` (a read token).
    #[schema(value_type = String)]
    access: &'static str,
}

/// One shard's Raft group as this node sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ShardView {
    id: u32,
    leader_id: Option<u64>,
    term: u64,
    commit_index: u64,
}

/// Membership and leadership as this node sees them.
#[utoipa::path(get, operation_id = "getCluster", path = "/cluster", tag = "cluster",
    responses((status = 200, description = "the cluster", body = ClusterView)))]
pub async fn cluster(state: Api, access: axum::http::Extensions) -> Json<impl Serialize> {
    let mut v = view(&state, super::Access::of(&access));
    let leader_elsewhere = v.leader_id.is_some_and(|l| l != v.node_id);
    if leader_elsewhere && v.members.iter().all(|m| m.health.is_none()) {
        // Only the leader knows how the members are doing: ask it, briefly (a leader that
        // just went away must not slow down this answer, which monitors poll).
        let asked = leader_members_health(&state.replica, HEALTH_ASK_WITHIN).await;
        if let Ok(Some(health)) = asked {
            for m in &mut v.members {
                if let Some(h) = health.get(&m.id) {
                    (m.health, m.lag) = (Some(h.health), h.lag);
                    m.version = h.version().or(m.version.take());
                }
            }
        }
    }
    Json(v)
}

/// The leader's peer-port route for a follower's `GET /v1/cluster`: each member's health.
pub const HEALTH_PEER_PATH: &str = "/forward/members";
/// How long a follower waits for the leader's view of the members before answering without it.
const HEALTH_ASK_WITHIN: Duration = Duration::from_millis(200);

/// One member's health, lag and release, as the leader sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberHealth {
    health: Health,
    lag: Option<u64>,
    /// Absent in the answer of a leader of release 0.1.
    #[serde(default)]
    release: Option<Release>,
}

impl MemberHealth {
    fn version(&self) -> Option<String> {
        self.release.as_ref()?.version.clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Health {
    Ok,
    Lagging,
    Unreachable,
}

/// Each member's health and lag when this node leads (none otherwise): how long since it last
/// acknowledged this term's requests, and how far its log is behind.
pub fn members_health(replica: &Replica) -> Option<BTreeMap<u64, MemberHealth>> {
    let epoch = (*replica.leadership().epochs().borrow())?;
    let heard = replica.leadership().heard_from(epoch);
    let releases = replica.member_releases();
    let status = replica.status();
    let now = Instant::now();
    let health_of = |m: &hookd_raft::MemberStatus| {
        let lag = m.matched.map(|i| status.last_log_index.saturating_sub(i));
        let silent_for = if m.id == status.node_id {
            Some(Duration::ZERO)
        } else {
            heard.get(&m.id).map(|t| now.saturating_duration_since(*t))
        };
        MemberHealth {
            health: health(silent_for, lag),
            lag,
            release: releases.get(&m.id).cloned(),
        }
    };
    Some(
        status
            .members
            .iter()
            .map(|m| (m.id, health_of(m)))
            .collect(),
    )
}

/// The members' health as the leader sees it: this node's own view if it leads, else the
/// leader's, asked over the peer port within `within` (none: the asked node no longer leads).
async fn leader_members_health(
    replica: &Replica,
    within: Duration,
) -> Result<Option<BTreeMap<u64, MemberHealth>>, hookd_raft::ReplicaError> {
    if let Some(health) = members_health(replica) {
        return Ok(Some(health));
    }
    replica.ask_leader(HEALTH_PEER_PATH, &(), within).await
}

fn view(state: &Api, access: super::Access) -> ClusterView {
    let replica = &state.replica;
    let status = replica.status();
    let api: BTreeMap<u64, String> = replica.node_api_addrs().into_iter().collect();
    let health = members_health(replica).unwrap_or_default();
    let this = Release::this(Hookd::FORMAT_VERSION).version;
    let members = status
        .members
        .into_iter()
        .map(|m| Member {
            api_addr: api.get(&m.id).cloned(),
            health: health.get(&m.id).map(|h| h.health),
            lag: health.get(&m.id).and_then(|h| h.lag),
            version: match health.get(&m.id) {
                Some(h) => h.version(),
                None => this.clone().filter(|_| m.id == status.node_id),
            },
            id: m.id,
            peer_addr: m.peer_addr,
            role: m.role.as_str(),
            voter: m.voter,
        })
        .collect();
    ClusterView {
        node_id: status.node_id,
        leader_id: status.leader_id,
        term: status.term,
        commit_index: replica.committed_index(),
        cluster_id: replica.cluster_id(),
        format_version: replica.cluster_format(),
        members,
        shards: (0u32..)
            .zip(state.shards.iter())
            .map(|(id, r)| {
                let s = r.status();
                ShardView {
                    id,
                    leader_id: s.leader_id,
                    term: s.term,
                    commit_index: r.committed_index(),
                }
            })
            .collect(),
        access: access.as_str(),
    }
}

/// `POST /v1/cluster/members` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    id: u64,
    peer_addr: String,
    api_addr: Option<String>,
    #[serde(default = "yes")]
    voter: bool,
}

fn yes() -> bool {
    true
}

fn member_error(e: MemberError) -> ApiError {
    let message = e.to_string();
    match e {
        MemberError::IdTaken(_) => ApiError::conflict(message),
        MemberError::ShardCount { .. } => ApiError::conflict(message).at("peer_addr"),
        MemberError::AddrTaken { .. } => ApiError::conflict(message).at("peer_addr"),
        MemberError::InProgress | MemberError::LastVoter(_) => ApiError::conflict(message),
        MemberError::TooFewVoters { .. } => ApiError::conflict(message).at("force"),
        MemberError::NotMember(_) => ApiError::not_found(message),
        MemberError::NotCaughtUp { .. } => ApiError::gateway_timeout("not_caught_up", message),
        MemberError::NoLeader(_) => ApiError::no_leader(message),
        MemberError::Failed(_) => ApiError::unavailable(message),
    }
}

/// The cluster as this node sees it once it has applied everything the leader committed (the
/// change just made included), or as it sees it now if that takes too long.
async fn view_after_change(state: &Api) -> ClusterView {
    let _ = state.replica.read_barrier().await;
    // Only a token that may do everything changes the membership.
    view(state, super::Access::All)
}

#[utoipa::path(post, operation_id = "addMember", path = "/cluster/members", tag = "cluster", request_body = AddRequest,
    responses((status = 201, description = "added", body = ClusterView),
              (status = 504, description = "it did not catch up within 60 s and stays a learner", body = super::openapi::ErrorBody)))]
/// Adds a node started with `--join`: a learner first, a voter once caught up (SPEC §2, §6).
pub async fn add_member(
    state: Api,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let req: AddRequest = parse_json(&body)?;
    if req.id == 0 {
        return Err(ApiError::invalid("id", "node ids start at 1"));
    }
    host_port("peer_addr", &req.peer_addr)?;
    if let Some(api) = &req.api_addr {
        host_port("api_addr", api)?;
    }
    // A member's addresses are sent to like a target's: the egress policy applies (a node
    // proves it holds the peer secret before it is sent anything, but a denied range is not
    // even asked).
    for (field, addr) in [
        ("peer_addr", Some(&req.peer_addr)),
        ("api_addr", req.api_addr.as_ref()),
    ] {
        if let Some(Ok(addr)) = addr.map(|a| a.parse::<std::net::SocketAddr>()) {
            state
                .egress
                .check_ip(addr.ip())
                .map_err(|denied| ApiError::invalid(field, denied.to_string()))?;
        }
    }
    if !state.peer_authenticated && !crate::config::is_loopback(&req.peer_addr) {
        return Err(ApiError::invalid(
            "peer_addr",
            format!(
                "peer address {} is not on loopback, and node-to-node traffic is not \
                 authenticated: restart the nodes with --peer-secret or peer TLS first",
                req.peer_addr
            ),
        ));
    }
    state
        .replica
        .add_member(AddMember {
            id: req.id,
            peer_addr: req.peer_addr,
            api_addr: req.api_addr,
            voter: req.voter,
        })
        .await
        .map_err(member_error)?;
    Ok((StatusCode::CREATED, Json(view_after_change(&state).await)).into_response())
}

/// How long finalizing waits for the leader's view of the members' releases.
const RELEASES_ASK_WITHIN: Duration = Duration::from_secs(2);

/// Why the cluster cannot move to format `format` yet: for each member (`members`, the ids of
/// the membership) that was not heard from lately or runs a release that does not read it,
/// one sentence. None: every member reads it.
fn finalize_blockers(
    members: &[u64],
    health: &BTreeMap<u64, MemberHealth>,
    format: u32,
) -> Vec<String> {
    members
        .iter()
        .filter_map(|id| {
            let Some(h) = health.get(id) else {
                return Some(format!("member {id}: the leader has no word of it"));
            };
            if h.health == Health::Unreachable {
                return Some(format!(
                    "member {id} is unreachable: its release is not known"
                ));
            }
            let release = h.release.clone().unwrap_or_default();
            (!release.reads(format)).then(|| match (release.version, release.format) {
                (Some(v), Some(f)) => {
                    format!("member {id} runs hookd {v}, which reads formats up to {f}")
                }
                _ => format!("member {id} runs a hookd release before 0.2"),
            })
        })
        .collect()
}

#[utoipa::path(post, operation_id = "finalizeUpgrade", path = "/cluster/upgrade/finalize", tag = "cluster",
    responses((status = 200, description = "the cluster writes this release's format from now on (or did already)", body = ClusterView),
              (status = 409, description = "a member runs an older release or cannot be reached", body = super::openapi::ErrorBody)))]
/// Ends a rolling upgrade (SPEC §6): once every member runs this release, the cluster's format
/// is raised to this release's, and no node can go back to the previous release from then on.
pub async fn finalize_upgrade(state: Api) -> Result<Response, ApiError> {
    let replica = &state.replica;
    if replica.cluster_format() < FORMAT_NEWEST {
        let health = leader_members_health(replica, RELEASES_ASK_WITHIN)
            .await
            .map_err(|e| ApiError::no_leader(e.to_string()))?
            .ok_or_else(|| ApiError::no_leader("the leader changed; try again"))?;
        let members: Vec<u64> = replica.status().members.iter().map(|m| m.id).collect();
        let blockers = finalize_blockers(&members, &health, FORMAT_NEWEST);
        if !blockers.is_empty() {
            return Err(ApiError::conflict(format!(
                "cannot finalize the upgrade while a member may run an older release: {}",
                blockers.join("; ")
            )));
        }
        state
            .propose(Command::SetFormat {
                format: FORMAT_NEWEST,
            })
            .await?;
    }
    Ok(Json(view_after_change(&state).await).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, operation_id = "removeMember", path = "/cluster/members/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "node id"), RemoveQuery),
    responses((status = 200, description = "removed", body = ClusterView)))]
/// Removes a node; a leader being removed leads until the change is committed, then steps down.
pub async fn remove_member(
    state: Api,
    Path(id): Path<String>,
    q: Result<Query<RemoveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("id", format!("{id:?} is not a node id")))?;
    state
        .replica
        .remove_member(RemoveMember { id, force: q.force })
        .await
        .map_err(member_error)?;
    // A node that removed itself is sent nothing more to apply: its view is as it stands.
    let view = if id == state.replica.id() {
        view(&state, super::Access::All)
    } else {
        view_after_change(&state).await
    };
    Ok((StatusCode::OK, Json(view)).into_response())
}

#[utoipa::path(get, operation_id = "getHealth", path = "/healthz", tag = "node",
    responses((status = 200, description = "alive", body = serde_json::Value),
              (status = 503, description = "this node's storage has failed", body = serde_json::Value)))]
/// Alive, and `503` once the replicated core has stopped on a fatal error (a storage failure):
/// the node can no longer do its part and should be restarted or replaced.
pub async fn healthz(state: Api) -> Response {
    match state.replica.status().failed {
        None => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        Some(fatal) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": fatal})),
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
#[utoipa::path(get, operation_id = "getReadiness", path = "/readyz", tag = "node",
    responses((status = 200, description = "has a leader and is caught up", body = serde_json::Value),
              (status = 503, description = "not ready", body = serde_json::Value)))]
pub async fn readyz(state: Api) -> Response {
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
    let now = replica.status();
    let (status, reason) = match &probe {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.clone()),
    };
    let body = json!({"ready": probe.is_ok(), "reason": reason, "leader_id": now.leader_id,
                      "applied_index": now.applied_index, "commit_index": replica.committed_index()});
    (status, Json(body)).into_response()
}

/// Prometheus text exposition of this node's metrics.
#[utoipa::path(get, operation_id = "getMetrics", path = "/metrics", tag = "node",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_is_finalized_only_when_every_member_was_heard_running_a_release_that_reads_it() {
        let member = |health, version: Option<&str>, format| MemberHealth {
            health,
            lag: Some(0),
            release: Some(Release {
                version: version.map(str::to_owned),
                format,
            }),
        };
        let new = || member(Health::Ok, Some("0.2.0"), Some(5));
        type Case = (Vec<(u64, MemberHealth)>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (vec![(1, new()), (2, new()), (3, new())], vec![]),
            (
                vec![(1, new()), (2, member(Health::Ok, None, None)), (3, new())],
                vec!["member 2 runs a hookd release before 0.2"],
            ),
            (
                vec![
                    (1, new()),
                    (2, new()),
                    (3, member(Health::Ok, Some("0.2.0"), Some(4))),
                ],
                vec!["member 3 runs hookd 0.2.0, which reads formats up to 4"],
            ),
            (
                vec![
                    (1, new()),
                    (2, member(Health::Unreachable, Some("0.2.0"), Some(5))),
                ],
                vec![
                    "member 2 is unreachable: its release is not known",
                    "member 3: the leader has no word of it",
                ],
            ),
            // A lagging member that runs the release is no reason to wait.
            (
                vec![
                    (1, new()),
                    (2, member(Health::Lagging, Some("0.3.0"), Some(6))),
                    (3, new()),
                ],
                vec![],
            ),
            // A leader of release 0.1 says nothing of releases.
            (
                vec![
                    (
                        1,
                        MemberHealth {
                            health: Health::Ok,
                            lag: None,
                            release: None,
                        },
                    ),
                    (2, new()),
                    (3, new()),
                ],
                vec!["member 1 runs a hookd release before 0.2"],
            ),
        ];
        for (health, want) in cases {
            let health: BTreeMap<u64, MemberHealth> = health.into_iter().collect();
            assert_eq!(
                finalize_blockers(&[1, 2, 3], &health, 5),
                want,
                "{health:?}"
            );
        }
    }

    #[test]
    fn a_member_is_unreachable_when_silent_lagging_when_far_behind_else_ok() {
        let s = Duration::from_millis;
        let cases = [
            ((Some(s(40)), Some(0)), Health::Ok),
            ((Some(s(40)), Some(LAG_MAX)), Health::Ok),
            ((Some(s(40)), Some(LAG_MAX + 1)), Health::Lagging),
            ((Some(s(40)), None), Health::Ok),
            ((Some(SILENT_MAX), Some(0)), Health::Unreachable),
            ((None, Some(0)), Health::Unreachable),
            (
                (Some(SILENT_MAX * 10), Some(LAG_MAX * 10)),
                Health::Unreachable,
            ),
        ];
        for ((silent, lag), want) in cases {
            assert_eq!(health(silent, lag), want, "{silent:?} {lag:?}");
        }
    }
}
