//! The client side of the peer transport: one shared `reqwest::Client` for every peer, with
//! explicit timeouts, used both by openraft (`RaftNetworkFactory`) and by request forwarding.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use openraft::error::{NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::{
    Encoding, ForwardError, Hello, NodeInfo, Proof, ACCEPTS_HEADER, BATCHES_HEADER,
    CLUSTER_ID_HEADER, PATH_APPEND, PATH_FORWARD_READ_INDEX, PATH_FORWARD_WRITE,
    PATH_FORWARD_WRITES, PATH_HELLO, PATH_NODE, PATH_SNAPSHOT, PATH_VOTE, SIGNATURE_HEADER,
    TARGET_NODE_HEADER,
};
use crate::lease::{Acks, LeaderTerm};
use crate::machine::Machine;
use crate::release::{Release, Releases};
use crate::secret::{Secret, Signed};
use crate::tls::Reloading;
use crate::typ::{
    AppendEntriesRequest, AppendEntriesResponse, Cfg, InstallSnapshotError, InstallSnapshotRequest,
    InstallSnapshotResponse, LogId, Node, NodeId, RaftError, RpcError, VoteRequest, VoteResponse,
};

/// Where the client reads the cluster id it sends with every request (none before it is
/// recorded).
pub type ClusterIdSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Connect timeout for peer connections; a peer that does not accept within it is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Requests this node forwards to the leader at once (writes, read indexes, questions); each
/// holds a connection to the leader's peer port until answered, so this bounds what a follower
/// full of API clients opens there. More wait for a slot within their deadline.
pub const FORWARDS_IN_FLIGHT_MAX: usize = 256;

/// How long a peer's proof that it holds the peer secret stands before it is asked again.
const PROOF_FOR: Duration = Duration::from_secs(600);

/// The pause after a peer answered nonsense (refused, undecodable, or no proof) before it is
/// sent anything again: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The pause before the next request to a peer that has answered nonsense `failures` times in
/// a row. Pure.
pub fn backoff(failures: u32) -> Duration {
    crate::pause::doubling(BACKOFF_FIRST, BACKOFF_MAX, failures)
}

/// Peers that answered nonsense, by address: (failures in a row, no request before).
type Backoffs = Arc<Mutex<HashMap<String, (u32, Instant)>>>;

/// Peers that proved they hold the peer secret, by (node id, address): when.
type Proven = Arc<Mutex<HashMap<(NodeId, String), Instant>>>;

/// Shared HTTP client for all peers. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    /// The client and the TLS generation it was built for.
    http: Arc<Mutex<(u64, reqwest::Client)>>,
    tls: Option<Arc<Reloading>>,
    secret: Option<Secret>,
    cluster_id: ClusterIdSource,
    acks: Acks,
    forwards: Arc<Semaphore>,
    /// Set when a peer answers a vote request with "you were removed" (`Removals`).
    removals: Removals,
    proven: Proven,
    backoffs: Backoffs,
    /// What each peer said of its release on its last answer to an AppendEntries.
    pub(crate) releases: Releases,
    /// The Raft group this client carries (`group_path`).
    group: u32,
}

/// Where a node learns it was removed from the cluster: why, once known.
pub type Removals = Arc<tokio::sync::watch::Sender<Option<String>>>;

/// Records that this node was removed, and why, unless that is known already.
pub(crate) fn note_removal(removals: &Removals, why: String) {
    removals.send_if_modified(|r| {
        let first = r.is_none();
        if first {
            *r = Some(why);
        }
        first
    });
}

/// The status a node answers a vote request with when the candidate is no longer a member.
pub(crate) const REMOVED_STATUS: u16 = 410;

fn build_http(tls: Option<&Reloading>) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // Below the peer server's idle cut (10 s), so a pooled connection is never reused
        // just as the server closes it.
        .pool_idle_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(32)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(client) = tls.and_then(|t| t.current().client.clone()) {
        builder = builder.use_preconfigured_tls((*client).clone());
    }
    builder.build()
}

/// Why a peer request failed before the peer produced an application-level answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("peer {addr} unreachable: {source}")]
    Unreachable {
        addr: String,
        source: reqwest::Error,
    },
    #[error("request to peer {addr} failed: {source}")]
    Http {
        addr: String,
        source: reqwest::Error,
    },
    /// Nothing was sent: `FORWARDS_IN_FLIGHT_MAX` forwarded requests stayed in flight until the
    /// deadline.
    #[error("{FORWARDS_IN_FLIGHT_MAX} requests to the leader were in flight until the deadline")]
    Busy,
    #[error("peer {addr} rejected the request with {status}: {body}")]
    Rejected {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("cannot encode a request to peer {addr}: {detail}")]
    Encode { addr: String, detail: String },
    /// Nothing was sent: the node at `addr` did not prove it holds the peer secret.
    #[error("peer {addr} did not prove it holds the peer secret: {detail}")]
    Unproven { addr: String, detail: String },
    /// The peer answered, but not with what was asked for.
    #[error("peer {addr} answered nonsense: {detail}")]
    Garbled { addr: String, detail: String },
    /// Nothing was sent: `addr` answered nonsense lately, and its pause is not over.
    #[error("peer {addr} answered nonsense lately; next try in {left:?}")]
    BackingOff { addr: String, left: Duration },
}

impl TransportError {
    /// Whether nothing reached the peer, so the request may be sent again (elsewhere).
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self,
            TransportError::Unreachable { .. }
                | TransportError::Unproven { .. }
                | TransportError::BackingOff { .. }
        )
    }
}

impl PeerClient {
    /// `acks` records each AppendEntries a peer accepts (the leader lease, `crate::lease`);
    /// with `tls`, every request is HTTPS with this node's certificate, to peers whose
    /// certificates the peer CA signed.
    pub fn new(
        secret: Option<Secret>,
        cluster_id: ClusterIdSource,
        acks: Acks,
        tls: Option<Arc<Reloading>>,
        removals: Removals,
        group: u32,
    ) -> Result<PeerClient, reqwest::Error> {
        let generation = tls.as_ref().map_or(0, |t| t.generation());
        let http = build_http(tls.as_deref())?;
        Ok(PeerClient {
            http: Arc::new(Mutex::new((generation, http))),
            tls,
            secret,
            cluster_id,
            acks,
            forwards: Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT_MAX)),
            removals,
            proven: Arc::default(),
            backoffs: Arc::default(),
            releases: Releases::default(),
            group,
        })
    }

    /// The client for the TLS material in force: rebuilt after the files changed (connections
    /// already open go on with the old certificate until the pool retires them).
    fn http(&self) -> reqwest::Client {
        let mut cached = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tls) = &self.tls {
            let generation = tls.generation();
            if cached.0 != generation {
                match build_http(Some(tls)) {
                    Ok(http) => *cached = (generation, http),
                    Err(e) => tracing::error!(error = %e, "cannot rebuild the peer client"),
                }
            }
        }
        cached.1.clone()
    }

    /// POSTs `body` to `path` on the peer `target` at `addr`, as JSON or (`Encoding::Postcard`)
    /// postcard, and decodes the JSON answer.
    pub(crate) async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: &B,
        encoding: Encoding,
        timeout: Duration,
    ) -> Result<R, TransportError> {
        let answer = self.post_answer(target, addr, path, body, encoding, timeout);
        answer.await.map(|(r, _)| r)
    }

    /// `post`, with the answer's headers.
    async fn post_answer<B: Serialize, R: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: &B,
        encoding: Encoding,
        timeout: Duration,
    ) -> Result<(R, reqwest::header::HeaderMap), TransportError> {
        let resp = self
            .send(target, addr, path, body, encoding, timeout, false)
            .await?;
        let headers = resp.headers().clone();
        let answer = json_of(resp, addr).await;
        if answer.is_err() {
            self.note_nonsense(addr);
        }
        Ok((answer?, headers))
    }

    /// Records that `addr` answered nonsense: it is paused (`backoff`).
    fn note_nonsense(&self, addr: &str) {
        let mut all = self.backoffs.lock().unwrap_or_else(|p| p.into_inner());
        let entry = all.entry(addr.to_owned()).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now() + backoff(entry.0);
    }

    /// Err while `addr` is paused after nonsense.
    fn check_backoff(&self, addr: &str) -> Result<(), TransportError> {
        let all = self.backoffs.lock().unwrap_or_else(|p| p.into_inner());
        match all.get(addr) {
            Some((_, until)) if *until > Instant::now() => Err(TransportError::BackingOff {
                addr: addr.to_owned(),
                left: until.saturating_duration_since(Instant::now()),
            }),
            _ => Ok(()),
        }
    }

    /// With a peer secret and no peer TLS (whose certificates prove as much), makes sure the
    /// node at `addr` proved lately that it holds the secret, asking it if not: nothing else
    /// is sent to an address that has not.
    async fn ensure_proven(
        &self,
        target: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let Some(secret) = self.secret.as_ref().filter(|_| self.tls.is_none()) else {
            return Ok(());
        };
        let key = (target, addr.to_owned());
        let fresh = |proven: &Proven| {
            proven
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .is_some_and(|at| at.elapsed() < PROOF_FOR)
        };
        if fresh(&self.proven) {
            return Ok(());
        }
        let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let hello = Hello {
            nonce: nonce.clone(),
        };
        let unproven = |detail: String| TransportError::Unproven {
            addr: addr.to_owned(),
            detail,
        };
        let resp = self
            .send_signed(target, addr, PATH_HELLO, &hello, Encoding::Json, timeout)
            .await
            .map_err(|e| match e {
                e if e.nothing_sent() => e,
                e => unproven(e.to_string()),
            })?;
        let answer: Proof = json_of(resp, addr)
            .await
            .map_err(|e| unproven(e.to_string()))?;
        if answer.node_id != target || !secret.check_proof(nonce.as_bytes(), target, &answer.proof)
        {
            return Err(unproven(format!(
                "answered as node {} with a proof that does not hold",
                answer.node_id
            )));
        }
        self.proven
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Instant::now());
        Ok(())
    }

    /// `post` up to a successful answer, left undecoded (its headers may matter): not while
    /// the peer is paused after nonsense, and only once it proved it holds the peer secret.
    /// With `new_path`, a `404` is not counted as nonsense: the path is one a node of the
    /// previous release does not know, and its Raft traffic must not pause for that.
    #[allow(clippy::too_many_arguments)]
    async fn send<B: Serialize>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: &B,
        encoding: Encoding,
        timeout: Duration,
        new_path: bool,
    ) -> Result<reqwest::Response, TransportError> {
        self.check_backoff(addr)?;
        let sent = match self.ensure_proven(target, addr, timeout).await {
            Ok(()) => {
                self.send_signed(target, addr, path, body, encoding, timeout)
                    .await
            }
            Err(e) => Err(e),
        };
        match &sent {
            Err(TransportError::Rejected { status: 404, .. }) if new_path => {}
            Err(TransportError::Unproven { .. } | TransportError::Rejected { .. }) => {
                self.note_nonsense(addr)
            }
            Ok(_) => {
                self.backoffs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(addr);
            }
            Err(_) => {}
        }
        sent
    }

    /// One signed request (`SIGNATURE_HEADER`), up to a successful answer.
    async fn send_signed<B: Serialize>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: &B,
        encoding: Encoding,
        timeout: Duration,
    ) -> Result<reqwest::Response, TransportError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let path = &*super::group_path(self.group, path);
        let encoded = match encoding {
            Encoding::Json => serde_json::to_vec(body).map_err(|e| e.to_string()),
            Encoding::Postcard => postcard::to_stdvec(body).map_err(|e| e.to_string()),
        };
        let encoded = encoded.map_err(|detail| TransportError::Encode {
            addr: addr.to_owned(),
            detail,
        })?;
        let signature = self.secret.as_ref().map(|secret| {
            let signed = Signed {
                method: "POST",
                path: path.split('?').next().unwrap_or(path),
                target,
                body: &encoded,
            };
            secret.sign_request(&signed, unix_now_ms())
        });
        let mut req = self
            .http()
            .post(format!("{scheme}://{addr}{path}"))
            .timeout(timeout)
            .header(TARGET_NODE_HEADER, target.to_string())
            .header(reqwest::header::CONTENT_TYPE, encoding.content_type())
            .body(encoded);
        if let Some(signature) = signature {
            req = req.header(SIGNATURE_HEADER, signature);
        }
        if let Some(id) = (self.cluster_id)() {
            req = req.header(CLUSTER_ID_HEADER, id);
        }
        let resp = req.send().await.map_err(|source| {
            if source.is_connect() {
                TransportError::Unreachable {
                    addr: addr.to_owned(),
                    source,
                }
            } else {
                TransportError::Http {
                    addr: addr.to_owned(),
                    source,
                }
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(TransportError::Rejected {
                addr: addr.to_owned(),
                status: status.as_u16(),
                body,
            });
        }
        Ok(resp)
    }

    /// `post` for a request forwarded to the leader: waits (within `timeout`) for one of the
    /// `FORWARDS_IN_FLIGHT_MAX` slots first.
    pub(crate) async fn forward<B: Serialize, R: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, TransportError> {
        let answer = self.forward_answer(target, addr, path, body, timeout);
        answer.await.map(|(r, _)| r)
    }

    /// `forward`, with the answer's headers.
    async fn forward_answer<B: Serialize, R: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<(R, reqwest::header::HeaderMap), TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let _slot = self.forward_slot(deadline).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.post_answer(target, addr, path, body, Encoding::Json, left)
            .await
    }

    /// One of the `FORWARDS_IN_FLIGHT_MAX` slots, waited for until `deadline`.
    async fn forward_slot(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, TransportError> {
        tokio::time::timeout_at(deadline, self.forwards.acquire())
            .await
            .map_err(|_| TransportError::Busy)?
            .map_err(|_| TransportError::Busy)
    }

    /// Asks the node at `addr` (believed leader) to propose each of `cmds` in one request
    /// (`PATH_FORWARD_WRITES`) holding one forwarding slot: one answer per command, in order.
    /// `Ok(None)`: the node does not know the path (a release before it); nothing was proposed.
    pub(crate) async fn forward_writes<M: Machine>(
        &self,
        target: NodeId,
        addr: &str,
        cmds: &[M::Command],
        timeout: Duration,
    ) -> Result<Option<Vec<Result<M::Output, ForwardError>>>, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let _slot = self.forward_slot(deadline).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let path = PATH_FORWARD_WRITES;
        let resp = match self
            .send(target, addr, path, &cmds, Encoding::Json, left, true)
            .await
        {
            Err(TransportError::Rejected { status: 404, .. }) => return Ok(None),
            sent => sent?,
        };
        let answers: Result<Vec<Result<M::Output, ForwardError>>, _> = json_of(resp, addr).await;
        let wrong = match answers {
            Ok(answers) if answers.len() == cmds.len() => return Ok(Some(answers)),
            Ok(answers) => TransportError::Garbled {
                addr: addr.to_owned(),
                detail: format!("{} answers to {} writes", answers.len(), cmds.len()),
            },
            Err(e) => e,
        };
        self.note_nonsense(addr);
        Err(wrong)
    }

    /// Asks the node at `addr` (believed leader) to propose `cmd`: its answer, and whether it
    /// said it takes forwarded writes in batches (`BATCHES_HEADER`).
    pub async fn forward_write<M: Machine>(
        &self,
        target: NodeId,
        addr: &str,
        cmd: &M::Command,
        timeout: Duration,
    ) -> Result<(Result<M::Output, ForwardError>, bool), TransportError> {
        let answer = self.forward_answer(target, addr, PATH_FORWARD_WRITE, cmd, timeout);
        let (answer, headers) = answer.await?;
        Ok((answer, headers.contains_key(BATCHES_HEADER)))
    }

    /// Asks node `target` at `addr` for its API address (`PATH_NODE`): once it proved it holds
    /// the peer secret, and without counting a refusal as nonsense (a node of the previous
    /// version does not know the path, and its Raft traffic must not pause for that).
    pub async fn api_addr_of(
        &self,
        target: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<String, TransportError> {
        Ok(self.node_info(target, addr, timeout).await?.api_addr)
    }

    /// Asks node `target` at `addr` what it is (`PATH_NODE`), as `api_addr_of`.
    pub(crate) async fn node_info(
        &self,
        target: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<NodeInfo, TransportError> {
        self.check_backoff(addr)?;
        self.ensure_proven(target, addr, timeout).await?;
        let resp = self
            .send_signed(target, addr, PATH_NODE, &(), Encoding::Json, timeout)
            .await?;
        let info: NodeInfo = json_of(resp, addr).await?;
        let wrong = if info.node_id != target {
            format!("answered as node {}", info.node_id)
        } else if info.api_addr.len() > API_ADDR_MAX {
            format!("named an API address of {} bytes", info.api_addr.len())
        } else {
            return Ok(info);
        };
        Err(TransportError::Unproven {
            addr: addr.to_owned(),
            detail: format!("asked for node {target}'s API address, {wrong}"),
        })
    }

    /// Asks node `target` at `addr` to campaign for the leadership of this client's group.
    pub async fn campaign(
        &self,
        target: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        self.post(
            target,
            addr,
            super::PATH_CAMPAIGN,
            &(),
            Encoding::Json,
            timeout,
        )
        .await
    }

    /// Asks the node at `addr` (believed leader) for a linearizable read index.
    pub async fn forward_read_index(
        &self,
        target: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<Result<Option<LogId>, ForwardError>, TransportError> {
        self.forward(target, addr, PATH_FORWARD_READ_INDEX, &(), timeout)
            .await
    }
}

impl<M: Machine> RaftNetworkFactory<Cfg<M>> for PeerClient {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection {
            client: self.clone(),
            target,
            node: node.clone(),
            postcard: false,
        }
    }
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Longest API address a peer may name for itself (a host name and a port).
const API_ADDR_MAX: usize = 300;

/// Decodes a peer's JSON answer.
async fn json_of<R: DeserializeOwned>(
    resp: reqwest::Response,
    addr: &str,
) -> Result<R, TransportError> {
    resp.json().await.map_err(|source| TransportError::Http {
        addr: addr.to_owned(),
        source,
    })
}

/// openraft's handle to one peer; holds no connection of its own (the shared pool does).
pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    node: Node,
    /// The peer's last answer to an AppendEntries said it takes postcard (`ACCEPTS_HEADER`).
    postcard: bool,
}

impl PeerConnection {
    async fn rpc<B, R, E>(
        &self,
        path: &str,
        body: &B,
        encoding: Encoding,
        option: &RPCOption,
    ) -> Result<R, RpcError<E>>
    where
        B: Serialize,
        R: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer = self
            .client
            .post(
                self.target,
                &self.node.addr,
                path,
                body,
                encoding,
                option.hard_ttl(),
            )
            .await;
        self.answer(answer)
    }

    /// openraft's form of a peer's answer: a transport failure, a remote Raft error, or the
    /// response.
    fn answer<R, E>(
        &self,
        answer: Result<Result<R, RaftError<E>>, TransportError>,
    ) -> Result<R, RpcError<E>>
    where
        E: std::error::Error,
    {
        let answer = answer.map_err(|e| match e {
            TransportError::Unreachable { .. }
            | TransportError::Unproven { .. }
            | TransportError::BackingOff { .. } => RpcError::Unreachable(Unreachable::new(&e)),
            _ => RpcError::Network(NetworkError::new(&e)),
        })?;
        answer.map_err(|e| {
            RpcError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

/// Whether a peer takes AppendEntries in postcard, going by its answer to one sent in
/// `encoding`: it says so on every answer; a refusal of postcard (a node of the previous
/// version: 415, or 400) means no; a transport failure tells nothing new.
fn takes_postcard(encoding: Encoding, answer: &Result<reqwest::Response, TransportError>) -> bool {
    match answer {
        Ok(resp) => resp
            .headers()
            .get(ACCEPTS_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == Encoding::POSTCARD_TYPE)),
        Err(TransportError::Rejected {
            status: 400 | 415, ..
        }) => false,
        Err(_) => encoding == Encoding::Postcard,
    }
}

impl<M: Machine> RaftNetwork<Cfg<M>> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<M>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RpcError> {
        // The lease counts from before the request left, never from when the answer came.
        let sent = Instant::now();
        let encoding = if self.postcard {
            Encoding::Postcard
        } else {
            Encoding::Json
        };
        let addr = &self.node.addr;
        let answer = self
            .client
            .send(
                self.target,
                addr,
                PATH_APPEND,
                &rpc,
                encoding,
                option.hard_ttl(),
                false,
            )
            .await;
        self.postcard = takes_postcard(encoding, &answer);
        let release = answer
            .as_ref()
            .ok()
            .map(|r| Release::of_answer(r.headers()));
        let answer = match answer {
            Ok(resp) => json_of(resp, addr).await,
            Err(e) => Err(e),
        };
        let resp: AppendEntriesResponse = self.answer(answer)?;
        if let Some(release) = release {
            self.client.releases.record(self.target, release);
        }
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            // Success, partial success or a log conflict: the peer accepted this leader.
            let leader = rpc.vote.leader_id();
            let epoch = LeaderTerm {
                term: leader.term,
                node_id: leader.node_id,
            };
            self.client.acks.record(self.target, epoch, sent);
        }
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<M>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse, RpcError<InstallSnapshotError>> {
        // postcard: in JSON a chunk's bytes are an array of numbers, about 3.6 times as long.
        self.rpc(PATH_SNAPSHOT, &rpc, Encoding::Postcard, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        let answer = self
            .client
            .post(
                self.target,
                &self.node.addr,
                PATH_VOTE,
                &rpc,
                Encoding::Json,
                option.hard_ttl(),
            )
            .await;
        if let Err(TransportError::Rejected {
            status: REMOVED_STATUS,
            body,
            ..
        }) = &answer
        {
            let why = format!("node {} says: {body}", self.target);
            note_removal(&self.client.removals, why);
        }
        self.answer(answer)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::header::CONTENT_TYPE;
    use axum::http::{HeaderMap, HeaderValue};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

    use super::*;
    use crate::machine::kv::{Cmd, Kv};
    use crate::typ::Entry;

    #[test]
    fn a_peer_answering_nonsense_is_paused_ever_longer_up_to_a_bound() {
        let cases = [
            (1, 100),
            (2, 200),
            (3, 400),
            (6, 3_200),
            (7, 5_000),
            (1_000, 5_000),
        ];
        for (failures, ms) in cases {
            assert_eq!(backoff(failures), Duration::from_millis(ms), "{failures}");
        }
        assert_eq!(backoff(0), BACKOFF_FIRST);
    }

    fn answer(accepts: Option<&str>) -> Result<reqwest::Response, TransportError> {
        let mut resp = axum::http::Response::builder().status(200);
        if let Some(a) = accepts {
            resp = resp.header(ACCEPTS_HEADER, a);
        }
        Ok(reqwest::Response::from(resp.body("{}").expect("response")))
    }

    fn refused(status: u16) -> Result<reqwest::Response, TransportError> {
        Err(TransportError::Rejected {
            addr: "peer".into(),
            status,
            body: String::new(),
        })
    }

    #[test]
    fn a_peer_gets_postcard_appends_only_after_it_said_it_takes_them() {
        use Encoding::{Json, Postcard};
        let pc = Some(Encoding::POSTCARD_TYPE);
        let listed = Some("application/x-other, application/x-hookd-postcard");
        let busy = || Err(TransportError::Busy);
        // (encoding sent, the answer) -> postcard next time
        let cases: [(Encoding, Result<reqwest::Response, TransportError>, bool); 10] = [
            (Json, answer(pc), true),
            (Json, answer(listed), true),
            // a node of the previous version says nothing and takes JSON only
            (Json, answer(None), false),
            (Postcard, answer(None), false),
            (Json, answer(Some("application/json")), false),
            (Postcard, refused(415), false),
            (Postcard, refused(400), false),
            // a failure that is not about the encoding changes nothing
            (Postcard, refused(503), true),
            (Postcard, busy(), true),
            (Json, busy(), false),
        ];
        for (i, (sent, got, expect)) in cases.into_iter().enumerate() {
            assert_eq!(takes_postcard(sent, &got), expect, "case {i}");
        }
    }

    #[test]
    fn an_append_decodes_alike_from_json_and_postcard() {
        let leader = CommittedLeaderId::new(3, 1);
        let entry = |index, cmd| Entry::<Kv> {
            log_id: LogId::new(leader, index),
            payload: EntryPayload::Normal(cmd),
        };
        let req = AppendEntriesRequest::<Kv> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(leader, 6)),
            entries: vec![
                entry(
                    7,
                    Cmd::Put {
                        key: "k\"é".into(),
                        value: "v".repeat(300),
                    },
                ),
                entry(8, Cmd::Batch(vec![Cmd::Del { key: "k".into() }])),
            ],
            leader_commit: Some(LogId::new(leader, 5)),
        };
        let expect = serde_json::to_value(&req).expect("json");
        for (encoding, body) in [
            (Encoding::Json, serde_json::to_vec(&req).expect("json")),
            (
                Encoding::Postcard,
                postcard::to_stdvec(&req).expect("postcard"),
            ),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(encoding.content_type()),
            );
            assert_eq!(Encoding::of(&headers), encoding);
            let got: AppendEntriesRequest<Kv> =
                Encoding::of(&headers).decode(&body).expect("decodes");
            assert_eq!(
                serde_json::to_value(&got).expect("json"),
                expect,
                "{encoding:?}"
            );
        }
        // Without a content type (or another one) a body is taken as JSON, as before.
        assert_eq!(Encoding::of(&HeaderMap::new()), Encoding::Json);
        let garbage: Result<AppendEntriesRequest<Kv>, String> = Encoding::Postcard.decode(b"{}");
        assert!(garbage.is_err());
    }
}
