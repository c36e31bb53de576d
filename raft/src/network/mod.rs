//! Peer transport over HTTP on `--peer-listen`: Raft RPCs (append, vote, snapshot) and the
//! internal forwarding of client writes and read-index requests to the leader.
//!
//! Every request names its target node (`hookd-target-node`) and carries the sender's cluster
//! id when known (`hookd-cluster-id`). With a peer secret, the secret itself never travels:
//! each request is signed (`hookd-peer-signature`: an HMAC over method, path, target node,
//! time and body), and before a node sends anything else to an address, the node there proves
//! it holds the secret by answering a challenge (`/raft/hello`). The receiver rejects a request
//! for another node id, from another cluster, unsigned, stale or signed with another secret.

mod client;

use serde::{Deserialize, Serialize};

pub(crate) use client::{note_removal, REMOVED_STATUS};
pub use client::{PeerClient, Removals, TransportError};

use crate::typ::NodeId;

pub(crate) const TARGET_NODE_HEADER: &str = "hookd-target-node";
pub(crate) const CLUSTER_ID_HEADER: &str = "hookd-cluster-id";
/// On an answer to an AppendEntries: the request encodings this node takes there besides JSON
/// (`Encoding::POSTCARD_TYPE`). A node of the previous version does not send it, so its leader
/// goes on sending it JSON.
pub(crate) const ACCEPTS_HEADER: &str = "hookd-accepts";
/// On an answer to a forwarded write: this node takes forwarded writes in batches
/// (`PATH_FORWARD_WRITES`). A leader of the previous release does not send it, so it is never
/// sent a batch (it would answer `404`, and while it stops, a batch in flight would be lost
/// with its connection where a single write is refused before it is sent).
pub(crate) const BATCHES_HEADER: &str = "hookd-takes-batches";
/// The signature of a peer request (`Secret::sign_request`).
pub(crate) const SIGNATURE_HEADER: &str = "hookd-peer-signature";

pub(crate) const PATH_APPEND: &str = "/raft/append";
pub(crate) const PATH_VOTE: &str = "/raft/vote";
pub(crate) const PATH_SNAPSHOT: &str = "/raft/snapshot";
pub(crate) const PATH_FORWARD_WRITE: &str = "/forward/write";
/// Several forwarded writes in one request (`forward.rs`), sent only to a leader that said it
/// takes them (`BATCHES_HEADER`); one of the previous release answers `404`.
pub(crate) const PATH_FORWARD_WRITES: &str = "/forward/writes";
pub(crate) const PATH_FORWARD_READ_INDEX: &str = "/forward/read-index";
pub(crate) const PATH_MEMBERS_ADD: &str = "/forward/members/add";
pub(crate) const PATH_MEMBERS_REMOVE: &str = "/forward/members/remove";
/// The leader tells a node it has just removed.
pub(crate) const PATH_REMOVED: &str = "/raft/removed";
/// The leader of a group asks a caught-up voter to campaign for it: the leader has gone
/// quiet, so the voters' leases run out and the campaign can win (`Replica::hand_over`).
pub(crate) const PATH_CAMPAIGN: &str = "/raft/campaign";
/// A challenge: the answering node proves it holds the peer secret (`Hello`, `Proof`).
pub(crate) const PATH_HELLO: &str = "/raft/hello";

/// Who a node is and where its public API listens (`NodeInfo`): asked of a member whose API
/// address is not in this node's replicated state yet (the egress policy must know it).
pub(crate) const PATH_NODE: &str = "/raft/node";

/// Where the requests of Raft group `group` go on the peer port: group 0's at the paths above,
/// as a node with one group always sent them; group `k`'s under `/g/{k}`. The whole path is
/// signed, so a request cannot be moved to another group on the way.
pub fn group_path(group: u32, path: &str) -> std::borrow::Cow<'_, str> {
    match group {
        0 => std::borrow::Cow::Borrowed(path),
        k => std::borrow::Cow::Owned(format!("{}{path}", group_prefix(k))),
    }
}

/// The prefix of group `k`'s peer paths (`k` ≥ 1).
pub fn group_prefix(k: u32) -> String {
    format!("/g/{k}")
}

/// The answer of `PATH_NODE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
    pub node_id: NodeId,
    pub api_addr: String,
    /// How many Raft groups the node runs; none from a release before shards (one).
    #[serde(default)]
    pub groups: Option<u32>,
}

/// The challenge of `PATH_HELLO`: a fresh random nonce.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub nonce: String,
}

/// The answer to a `Hello`: who answers, and `Secret::prove` of the nonce for that node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Proof {
    pub node_id: NodeId,
    pub proof: String,
}

/// Largest request the peer router accepts (a snapshot chunk of 1 MiB from a node of the
/// previous version is a JSON array of numbers, ~3.6 MiB).
pub const PEER_BODY_BYTES_MAX: usize = 64 << 20;

/// How a request body is encoded: JSON, except snapshot chunks, which are postcard (their
/// bytes would be an array of numbers in JSON), and AppendEntries to a peer that said it takes
/// postcard (`ACCEPTS_HEADER`; JSON encoding and decoding were ~8 % of a node's CPU under 64
/// writing clients). The receiver goes by `Content-Type`, so it also takes the JSON a node of
/// the previous version sends during a rolling upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Json,
    Postcard,
}

impl Encoding {
    pub(crate) const POSTCARD_TYPE: &'static str = "application/x-hookd-postcard";

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Postcard => Encoding::POSTCARD_TYPE,
        }
    }

    /// The encoding a request with these headers is in (no or another `Content-Type`: JSON).
    pub(crate) fn of(headers: &axum::http::HeaderMap) -> Encoding {
        let postcard = headers
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == Encoding::POSTCARD_TYPE.as_bytes());
        if postcard {
            Encoding::Postcard
        } else {
            Encoding::Json
        }
    }

    /// Decodes a request body in this encoding.
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(self, body: &[u8]) -> Result<T, String> {
        match self {
            Encoding::Json => serde_json::from_slice(body).map_err(|e| e.to_string()),
            Encoding::Postcard => postcard::from_bytes(body).map_err(|e| e.to_string()),
        }
    }
}

/// Why a forwarded request did not produce a result on the node it was sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum ForwardError {
    /// The receiver is not the leader; it names the leader it knows of, if any.
    #[error("node is not the leader (leader: {leader_id:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The receiver is the leader but could not reach a quorum in time; the write may or may
    /// not be applied later.
    #[error("leader could not confirm with a quorum in time: {0}")]
    Unconfirmed(String),
    /// The receiver's Raft core has stopped.
    #[error("raft stopped on the peer: {0}")]
    Fatal(String),
    /// The leader's write backlog is over its bound; nothing was written, try again later.
    #[error("the leader is overloaded: {0}")]
    Overloaded(String),
}
