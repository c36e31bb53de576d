//! The server side of the peer transport: an axum router for `--peer-listen`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use crate::machine::Machine;
use crate::membership::{AddMember, MemberError, RemoveMember};
use crate::network::{
    Encoding, ForwardError, Hello, NodeInfo, Proof, ACCEPTS_HEADER, BATCHES_HEADER,
    CLUSTER_ID_HEADER, PATH_APPEND, PATH_FORWARD_READ_INDEX, PATH_FORWARD_WRITE,
    PATH_FORWARD_WRITES, PATH_HELLO, PATH_MEMBERS_ADD, PATH_MEMBERS_REMOVE, PATH_NODE,
    PATH_REMOVED, PATH_SNAPSHOT, PATH_VOTE, PEER_BODY_BYTES_MAX, REMOVED_STATUS, SIGNATURE_HEADER,
    TARGET_NODE_HEADER,
};
use crate::release::{FORMAT_HEADER, VERSION_HEADER};
use crate::replica::Replica;
use crate::secret::{Secret, Signed};
use crate::typ::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotError, InstallSnapshotRequest,
    InstallSnapshotResponse, LogId, RaftError, VoteRequest, VoteResponse,
};

/// A forwarded write or read index gets at most this long on the leader; the forwarding node's
/// own deadline is shorter and usually ends the wait first.
const FORWARDED_DEADLINE: Duration = Duration::from_millis(4000);

struct PeerState<M: Machine> {
    replica: Arc<Replica<M>>,
    secret: Option<Secret>,
}

impl<M: Machine> Clone for PeerState<M> {
    fn clone(&self) -> Self {
        PeerState {
            replica: self.replica.clone(),
            secret: self.secret.clone(),
        }
    }
}

/// The router served on `--peer-listen`, with `extra` routes of the embedding crate behind the
/// same guard (`Replica::ask_leader` calls them).
pub fn peer_router<M: Machine>(replica: Arc<Replica<M>>, extra: Router) -> Router {
    let secret = replica.peer_secret().cloned();
    let state = PeerState { replica, secret };
    Router::new()
        .route(PATH_APPEND, post(append::<M>))
        .route(PATH_VOTE, post(vote::<M>))
        .route(PATH_SNAPSHOT, post(snapshot::<M>))
        .route(PATH_FORWARD_WRITE, post(forward_write::<M>))
        .route(PATH_FORWARD_WRITES, post(forward_writes::<M>))
        .route(PATH_FORWARD_READ_INDEX, post(forward_read_index::<M>))
        .route(PATH_MEMBERS_ADD, post(members_add::<M>))
        .route(PATH_MEMBERS_REMOVE, post(members_remove::<M>))
        .route(PATH_REMOVED, post(removed::<M>))
        .route(PATH_HELLO, post(hello::<M>))
        .route(PATH_NODE, post(node_info::<M>))
        .route(crate::network::PATH_CAMPAIGN, post(campaign::<M>))
        .with_state(state.clone())
        .merge(extra)
        .layer(middleware::from_fn_with_state(state, guard::<M>))
        .layer(DefaultBodyLimit::max(PEER_BODY_BYTES_MAX))
}

/// One peer router for the Raft groups of a node, each built by `peer_router`: group 0's at the
/// root, group `k`'s under its prefix (`network::group_path`).
pub fn groups_router(groups: Vec<Router>) -> Router {
    let mut groups = groups.into_iter();
    let mut all = groups.next().unwrap_or_default();
    for (k, group) in (1u32..).zip(groups) {
        all = all.nest(&crate::network::group_prefix(k), group);
    }
    all
}

/// Rejects requests not signed with the peer secret, meant for another node, or from another
/// cluster. The body is in memory already (the server reads it before any handler).
async fn guard<M: Machine>(State(s): State<PeerState<M>>, req: Request, next: Next) -> Response {
    let req = match &s.secret {
        Some(secret) => match authenticate(secret, s.replica.id(), req).await {
            Ok(req) => req,
            Err(why) => return (StatusCode::UNAUTHORIZED, why).into_response(),
        },
        None => req,
    };
    let headers = req.headers();
    let me = s.replica.id();
    let target = headers
        .get(TARGET_NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if target != Some(me) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this is node {me}, not node {target:?}; check the peer addresses"),
        )
            .into_response();
    }
    if let (Some(theirs), Some(ours)) = (
        headers.get(CLUSTER_ID_HEADER).and_then(|v| v.to_str().ok()),
        s.replica.cluster_id(),
    ) {
        if theirs != ours {
            tracing::error!(theirs, ours, "rejected a peer of another cluster");
            return (
                StatusCode::CONFLICT,
                format!("this node belongs to cluster {ours}, the sender to {theirs}"),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Why Raft traffic (votes, entries, snapshots) of `sender` is refused before openraft sees
/// it, when it names no cluster id (none: it may pass): this node's cluster has an id, and
/// `sender` is no member of it. That is a brand-new cluster's node whose first entries are not
/// applied yet, aimed at this node by a mistake of addresses; its term and log, taken as this
/// cluster's, would break openraft's invariants (a new cluster's leader of term 1 reaching a
/// node that led term 1 of its own made openraft panic). A member that has not applied the id
/// yet (a young cluster restarted) still passes, or its cluster could not elect a leader.
fn stranger(ours: Option<String>, named: bool, member: bool) -> Option<String> {
    match ours {
        Some(ours) if !named && !member => Some(format!(
            "this node belongs to cluster {ours}, which the sender names not and is no member \
             of: check the peer addresses"
        )),
        _ => None,
    }
}

/// `stranger` for a request whose sender is `sender`, answered as a `409`.
fn refuse_stranger<M: Machine>(
    s: &PeerState<M>,
    headers: &HeaderMap,
    sender: Option<u64>,
) -> Option<Response> {
    let named = headers.contains_key(CLUSTER_ID_HEADER);
    let member = sender.is_some_and(|id| s.replica.is_member(id));
    let refused = stranger(s.replica.cluster_id(), named, member)?;
    tracing::error!(%refused, ?sender, "rejected Raft traffic from outside the cluster");
    Some((StatusCode::CONFLICT, refused).into_response())
}

/// Checks a request's signature (`Secret::verify_request`) against this node's clock. A node
/// of the previous version sent the secret itself as a bearer token: that is still taken, so a
/// rolling upgrade works, but never sent.
async fn authenticate(secret: &Secret, me: u64, req: Request) -> Result<Request, String> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, PEER_BODY_BYTES_MAX)
        .await
        .map_err(|e| format!("unreadable body: {e}"))?;
    let headers = &parts.headers;
    let legacy = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| secret.matches(given));
    if !legacy {
        let signature = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // A group's router is nested under its prefix (`groups_router`): the path signed is
        // the whole one.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or(parts.uri.path(), |o| o.0.path());
        let signed = Signed {
            method: parts.method.as_str(),
            path,
            target: me,
            body: &body,
        };
        secret
            .verify_request(signature, &signed, unix_now_ms())
            .map_err(|e| format!("peer request refused: {e}"))?;
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(body)))
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Answers a challenge: this node's proof that it holds the peer secret (without a secret
/// there is nothing to prove, and the asking node does not ask).
async fn hello<M: Machine>(State(s): State<PeerState<M>>, Json(hello): Json<Hello>) -> Response {
    let me = s.replica.id();
    match &s.secret {
        Some(secret) if hello.nonce.len() <= 256 => Json(Proof {
            node_id: me,
            proof: secret.prove(hello.nonce.as_bytes(), me),
        })
        .into_response(),
        _ => (StatusCode::BAD_REQUEST, "nothing to prove").into_response(),
    }
}

/// Campaigns for the leadership of this group at once (its leader asked, going quiet).
async fn campaign<M: Machine>(State(s): State<PeerState<M>>) -> Json<()> {
    if let Err(e) = s.replica.raft().trigger().elect().await {
        tracing::info!(error = %e, "asked to campaign, could not");
    }
    Json(())
}

/// This node's id and API address.
async fn node_info<M: Machine>(State(s): State<PeerState<M>>) -> Json<NodeInfo> {
    Json(NodeInfo {
        node_id: s.replica.id(),
        api_addr: s.replica.api_addr().to_owned(),
        groups: Some(s.replica.groups()),
    })
}

/// An AppendEntries in JSON or postcard (`Encoding`); the answer, JSON, says this node takes
/// postcard, so the leader sends it that from then on.
async fn append<M: Machine>(
    State(s): State<PeerState<M>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: AppendEntriesRequest<M> = match Encoding::of(&headers).decode(&body) {
        Ok(req) => req,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("undecodable AppendEntries: {e}"),
            )
                .into_response()
        }
    };
    if let Some(refused) = refuse_stranger(&s, &headers, req.vote.leader_id().voted_for()) {
        return refused;
    }
    let answer: Result<AppendEntriesResponse, RaftError> =
        s.replica.raft().append_entries(req).await;
    let release = [
        (ACCEPTS_HEADER, Encoding::POSTCARD_TYPE.to_owned()),
        (VERSION_HEADER, env!("CARGO_PKG_VERSION").to_owned()),
        (FORMAT_HEADER, M::FORMAT_VERSION.to_string()),
    ];
    (release, Json(answer)).into_response()
}

/// A vote request, unless the candidate was removed from the cluster: then it is told so (it
/// stops, `Replica::watch_removal`), and its ever higher terms never disturb the members.
async fn vote<M: Machine>(
    State(s): State<PeerState<M>>,
    headers: HeaderMap,
    Json(req): Json<VoteRequest>,
) -> Response {
    if let Some(refused) = refuse_stranger(&s, &headers, req.vote.leader_id().voted_for()) {
        return refused;
    }
    if s.replica.is_removed_candidate(&req) {
        let status = StatusCode::from_u16(REMOVED_STATUS).unwrap_or(StatusCode::GONE);
        return (status, "the candidate was removed from the cluster").into_response();
    }
    let answer: Result<VoteResponse, RaftError> = s.replica.raft().vote(req).await;
    Json(answer).into_response()
}

/// A snapshot chunk: postcard, or JSON from a node of the previous version (`Encoding`).
async fn snapshot<M: Machine>(
    State(s): State<PeerState<M>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: Result<InstallSnapshotRequest<M>, String> = Encoding::of(&headers).decode(&body);
    match req {
        Ok(req) => {
            if let Some(refused) = refuse_stranger(&s, &headers, req.vote.leader_id().voted_for()) {
                return refused;
            }
            let answer: Result<InstallSnapshotResponse, RaftError<InstallSnapshotError>> =
                s.replica.raft().install_snapshot(req).await;
            Json(answer).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("undecodable snapshot chunk: {e}"),
        )
            .into_response(),
    }
}

async fn forward_write<M: Machine>(
    State(s): State<PeerState<M>>,
    Json(cmd): Json<M::Command>,
) -> Response {
    count_forwarded(1);
    let answer = s
        .replica
        .propose_forwarded_one(cmd, FORWARDED_DEADLINE)
        .await;
    ([(BATCHES_HEADER, "1")], Json(answer)).into_response()
}

/// Counts a request of forwarded writes and the writes it carried (their ratio is the batching).
fn count_forwarded(writes: usize) {
    metrics::counter!("hookd_forwarded_write_requests_total").increment(1);
    metrics::counter!("hookd_forwarded_writes_total").increment(writes as u64);
}

/// Several forwarded writes in one request (`forward.rs`): one answer per write, in order.
async fn forward_writes<M: Machine>(
    State(s): State<PeerState<M>>,
    Json(cmds): Json<Vec<M::Command>>,
) -> Response {
    if cmds.len() > crate::forward::BATCH_MAX {
        let why = format!(
            "{} writes in one request; at most {}",
            cmds.len(),
            crate::forward::BATCH_MAX
        );
        return (StatusCode::PAYLOAD_TOO_LARGE, why).into_response();
    }
    count_forwarded(cmds.len());
    Json(s.replica.propose_forwarded(cmds, FORWARDED_DEADLINE).await).into_response()
}

async fn forward_read_index<M: Machine>(
    State(s): State<PeerState<M>>,
) -> Json<Result<Option<LogId>, ForwardError>> {
    Json(s.replica.leader_read_index(FORWARDED_DEADLINE).await)
}

async fn members_add<M: Machine>(
    State(s): State<PeerState<M>>,
    Json(add): Json<AddMember>,
) -> Json<Result<(), MemberError>> {
    Json(s.replica.add_member_local(add).await)
}

async fn members_remove<M: Machine>(
    State(s): State<PeerState<M>>,
    Json(remove): Json<RemoveMember>,
) -> Json<Result<(), MemberError>> {
    Json(s.replica.remove_member_local(remove).await)
}

/// The leader has removed this node from the cluster (the guard checked the peer secret, that
/// the request is meant for this node id, and the cluster id).
async fn removed<M: Machine>(State(s): State<PeerState<M>>) -> Json<()> {
    s.replica
        .notice_removed("the leader removed it from the cluster".into());
    Json(())
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    #[test]
    fn nameless_raft_traffic_is_refused_only_from_outside_a_cluster_with_an_id() {
        let ours = || Some("a".to_owned());
        // (this cluster's id, the sender names one, the sender is a member) → refused
        let cases = [
            ((ours(), false, false), true),
            // A member that has not applied the id yet (a young cluster restarted).
            ((ours(), false, true), false),
            // Named: the guard compares the ids.
            ((ours(), true, false), false),
            // This node's cluster has no id yet (a new cluster): nothing to tell.
            ((None, false, false), false),
        ];
        for ((ours, named, member), refused) in cases {
            assert_eq!(
                stranger(ours.clone(), named, member).is_some(),
                refused,
                "{ours:?} {named} {member}"
            );
        }
    }
}
