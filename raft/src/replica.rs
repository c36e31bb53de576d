//! `Replica`: one node's membership in the Raft group. Opens the store, starts openraft, forms the
//! cluster on first start, and offers the rest of hookd three things: `propose` (a write,
//! forwarded to the leader when needed), `read_barrier` (linearizable reads on any node) and the
//! applied state through `view`. No other module touches openraft's API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api_addrs::{Learned, MemberAddrs, ASK_WITHIN};
use crate::forward::{Failed, Forwarder};
use crate::gather::Gather;
use crate::lease::Leadership;
use crate::machine::Machine;
use crate::network::{ForwardError, PeerClient, Removals};
use crate::secret::Secret;
use crate::status::ClusterStatus;
use crate::store::{OpenError, StateView, Store};
use crate::tls::Reloading;
use crate::typ::{CheckIsLeaderError, LogId, Node, NodeId, Raft, RaftMetrics, VoteRequest};

/// How long `propose` and `read_barrier` try before answering "no leader": below the 5 s the API
/// promises, with room for the HTTP round trip.
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(4000);
/// Pause between attempts while leadership is moving.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How often the background announcer checks that this node's API address and the cluster id
/// are recorded.
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a stopping node waits for the writes it has taken to commit.
const DRAIN_WITHIN: Duration = Duration::from_secs(3);
/// How long a removed node goes on (answering the request that removed it) before it stops.
const REMOVED_GRACE: Duration = Duration::from_secs(1);
/// How often the bytes applied since the last snapshot are saved for the next start.
const APPLIED_BYTES_SAVE_EVERY: Duration = Duration::from_secs(1);

/// Raft timing. The leader lease equals `election_timeout_max_ms` in openraft 0.9.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 50,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// This node's public API address, recorded in the replicated state for `/v1/cluster`.
    pub api_addr: String,
    /// Peer addresses of the initial members; used only when the data dir is new.
    pub initial_members: BTreeMap<NodeId, String>,
    /// A new data dir waits to be added to a running cluster (`--join`) instead of forming one.
    pub join: bool,
    pub peer_secret: Option<Secret>,
    /// Peer mutual TLS: this node's certificate, and the CA the other nodes' must chain to.
    pub peer_tls: Option<Arc<Reloading>>,
    /// The cluster id this node proposes when it is the first leader.
    pub cluster_id: String,
    /// When true, `cluster_id` was configured explicitly and a data dir of another cluster is
    /// refused.
    pub cluster_id_required: bool,
    pub timing: RaftTiming,
    /// Build a snapshot once this many entries were applied since the last one and the commands
    /// applied since amount to its size (`cadence.rs`), keep a fifth of this many entries in
    /// the log behind it for followers that lag a little, and purge in batches of a twentieth.
    pub snapshot_logs: u64,
    /// Client writes are refused (`Overloaded`) while the leader's write backlog (proposals
    /// waiting for a batch plus log entries not yet applied) is above this.
    pub write_backlog_max: usize,
    /// The Raft group this replica is (0, or a shard `k` ≥ 1 whose peer requests go under
    /// `/g/{k}`: `network::group_path`).
    pub group: u32,
    /// Where a group other than the first takes the cluster id it records when it is new: the
    /// first group's (none: `cluster_id`).
    pub cluster_id_of: Option<ClusterIdOf>,
    /// When set, the group prefers to be led by the voter of this rank (in id order, modulo the
    /// voters' count): its election timeouts are the earlier half of the range, the others'
    /// the later half, so it wins the elections it takes part in (`election_timeouts`). The
    /// shards of a node rank 0, 1, 2, … so their leaders spread over the members.
    pub lead_rank: Option<u32>,
    /// How many Raft groups this node runs (its shard count). A node being added that runs
    /// another count is refused: its groups could not match the cluster's.
    pub groups: u32,
}

/// The election timeouts (min, max, ms) of node `me` in a group whose voters are `voters`,
/// from `t`: with `lead_rank`, the preferred voter's are the earlier half of `t`'s range and
/// the others' the later half; the upper bound (the leader lease) is never above `t`'s and the
/// lower never below it, so the dispatcher's lease (`max_ack_age`, from `t`) holds for both.
fn election_timeouts(
    t: &RaftTiming,
    lead_rank: Option<u32>,
    voters: &[NodeId],
    me: NodeId,
) -> (u64, u64) {
    let whole = (t.election_timeout_min_ms, t.election_timeout_max_ms);
    let Some(preferred) = preferred_leader(lead_rank, voters) else {
        return whole;
    };
    let mid = whole.0 + (whole.1 - whole.0) / 2;
    if mid <= whole.0 || mid >= whole.1 {
        return whole;
    }
    if preferred == me {
        (whole.0, mid)
    } else {
        (mid, whole.1)
    }
}

/// The voter of rank `lead_rank` (in id order, modulo their count), if any.
fn preferred_leader(lead_rank: Option<u32>, voters: &[NodeId]) -> Option<NodeId> {
    let rank = lead_rank?;
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    sorted.get(rank as usize % sorted.len().max(1)).copied()
}

/// How often a leader checks whether its group's preferred leader should take over, and how
/// long it leads before it does (so a leadership settles, and a returning node catches up).
const BALANCE_EVERY: Duration = Duration::from_secs(1);
const BALANCE_SETTLED: Duration = Duration::from_secs(3);
/// A successor answered within this and holds all but this many entries of the log.
const SUCCESSOR_HEARD_WITHIN: Duration = Duration::from_millis(500);
const SUCCESSOR_LAG_MAX: u64 = 64;
/// The longest a hand-over keeps this node aside, and how long of it the node still takes the
/// outcomes of its attempts in flight.
const HAND_OVER_WITHIN: Duration = Duration::from_secs(4);
const HAND_OVER_SETTLE: Duration = Duration::from_secs(1);

/// How long a new group's other initial members wait for its preferred leader to form it
/// (openraft's `initialize` starts an election at once on the node that calls it) before they
/// form it themselves.
const INITIALIZE_DEFERRED: Duration = Duration::from_secs(2);

/// The cluster id as another group of this node has it (`ReplicaConfig::cluster_id_of`).
#[derive(Clone)]
pub struct ClusterIdOf(pub Arc<dyn Fn() -> Option<String> + Send + Sync>);

impl std::fmt::Debug for ClusterIdOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterIdOf")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(
        "data dir belongs to cluster {found}, but --cluster-id says {expected}; \
         use this cluster's data dir or a new one"
    )]
    ClusterMismatch { found: String, expected: String },
    #[error(
        "data dir holds no cluster yet and --initial-cluster does not name node {0}; \
         list every initial member as ID=HOST:PORT, this node included, \
         or start with --join to be added to a running cluster"
    )]
    NotInInitialCluster(NodeId),
    #[error(
        "node {node_id} was removed from its cluster ({reason}); it no longer serves. \
         To bring this machine back, start it with an empty data dir and --join, then add it \
         with POST /v1/cluster/members"
    )]
    Removed { node_id: NodeId, reason: String },
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("cannot build the peer HTTP client: {0}")]
    Client(String),
}

/// Why a write or a linearizable read could not be served.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// No leader could be reached before the deadline; nothing was written.
    #[error("no leader reachable: {0}")]
    NoLeader(String),
    /// A leader accepted the request but could not confirm it with a quorum in time; a write may
    /// or may not take effect.
    #[error("not confirmed by a quorum in time (the write may still take effect): {0}")]
    Unconfirmed(String),
    /// This node's Raft core has stopped (storage failure or shutdown).
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The leader's write backlog is over its bound; nothing was written.
    #[error("{0}")]
    Overloaded(String),
}

/// Why one attempt of `Replica::propose` got no result: the request failed on its way
/// (`Failed`), or the leader answered with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Miss {
    Failed(Failed),
    Refused(ForwardError),
}

/// What `Replica::propose` does after a `Miss`.
#[derive(Debug, PartialEq, Eq)]
enum Then {
    /// Try again at once: nothing was proposed.
    Again,
    /// Try again after a pause while the deadline allows; when it does not, answer the error
    /// given, or that no leader answered in time.
    Pause(Option<ReplicaError>),
    /// Answer the client.
    Answer(ReplicaError),
}

impl Miss {
    /// Decides, given whether the command may be proposed again when its fate is unknown
    /// (`Machine::repeatable`). Pure. A write the leader may or may not have taken is tried
    /// again only when repeatable: then the doubt (a leader stopping with the write in flight,
    /// say) resolves into the write's own answer instead of reaching the client as a `503`.
    fn then(self, repeatable: bool) -> Then {
        match self {
            // The leader proposed nothing and takes writes one by one (from now on).
            Miss::Failed(Failed::Singly) => Then::Again,
            // Nothing reached a leader: safe to try again once leadership has moved.
            Miss::Failed(Failed::NothingSent(_))
            | Miss::Refused(ForwardError::NotLeader { .. }) => Then::Pause(None),
            // Nothing was proposed; the client may try again later.
            Miss::Failed(Failed::Busy(e)) | Miss::Refused(ForwardError::Overloaded(e)) => {
                Then::Answer(ReplicaError::Overloaded(e))
            }
            Miss::Failed(Failed::Unconfirmed(e)) | Miss::Refused(ForwardError::Unconfirmed(e)) => {
                let doubt = ReplicaError::Unconfirmed(e);
                if repeatable {
                    Then::Pause(Some(doubt))
                } else {
                    Then::Answer(doubt)
                }
            }
            Miss::Refused(ForwardError::Fatal(e)) => Then::Answer(ReplicaError::Fatal(e)),
        }
    }
}

/// One node of the replicated core, replicating machine `M`.
pub struct Replica<M: Machine> {
    id: NodeId,
    raft: Raft<M>,
    store: Store<M>,
    view: StateView,
    peers: PeerClient,
    config: ReplicaConfig,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// Set once this node learns it was removed (see `members.rs`): why.
    removal: Removals,
    /// This node joined an existing cluster (`--join`): the memberships it replays from before
    /// its addition do not name it, so it learns its removal only from the leader (a notice, or
    /// a refused vote), never from an applied membership (`members::removed_by`).
    joined: bool,
    /// Cancelled once the removal is recorded in the data dir: the node should stop.
    removed: CancellationToken,
    /// Proposals and read indexes this node has taken as leader and not yet answered; shutdown
    /// turns new ones away (as a non-leader would, so the nodes that forwarded them retry with
    /// the next leader) and waits for these.
    drain: Drain,
    leadership: Leadership,
    proposals: mpsc::Sender<Proposal<M>>,
    /// Writes forwarded to the leader, gathered into batches (`forward.rs`).
    forwarder: Forwarder<M>,
    read_floor: ReadFloor,
    machine: Arc<M>,
    /// Members' API addresses asked of them (`api_addrs`).
    learned: std::sync::Mutex<Learned>,
}

/// The term this node led when it started (if its saved vote is a committed vote for itself),
/// and the last entry its log held then. openraft restores such a node as leader at once,
/// without a new blank entry, and answers read indexes from its saved commit index, which is
/// not flushed (nor is the state machine per applied batch): after a power loss it can be
/// stale. Every entry acknowledged in that term is in this leader's log (it appended each one
/// and flushed it before it could commit), so a read in that term waits for the last of them.
#[derive(Debug, Clone, Copy)]
struct ReadFloor {
    term: Option<u64>,
    last_log_id: Option<LogId>,
}

impl ReadFloor {
    /// The log id a linearizable read in `term` must wait for, given openraft's read log id.
    fn apply(self, term: u64, read_log_id: Option<LogId>) -> Option<LogId> {
        if self.term == Some(term) {
            std::cmp::max_by_key(read_log_id, self.last_log_id, |l| l.map(|l| l.index))
        } else {
            read_log_id
        }
    }
}

/// A command waiting for the proposer, and where its result goes.
struct Proposal<M: Machine> {
    cmd: M::Command,
    reply: oneshot::Sender<Result<M::Output, ForwardError>>,
}

/// Proposals waiting for a batch; senders wait (with their own deadline) when it is full.
const PROPOSALS_QUEUED_MAX: usize = 8192;
/// Batch entries in flight at once on a node, all its groups together.
const WRITES_IN_FLIGHT_MAX: usize = 4;

/// Batch entries (and requests of forwarded writes, `forward.rs`) one of a node's `groups`
/// groups keeps in flight at once: the node's `WRITES_IN_FLIGHT_MAX` split between them, at
/// least one each. Fewer rounds in flight make each carry more writes; with six shards at
/// four each, the groups' many small rounds made creates about a fifth slower and dispatch
/// later (docs/decisions.md, "Rounds in flight split between a node's groups"). Pure.
pub(crate) fn in_flight_per_group(groups: u32) -> usize {
    (WRITES_IN_FLIGHT_MAX / groups.max(1) as usize).max(1)
}
/// Commands per batch entry, and its rough size bound (a single larger command still forms an
/// entry of its own).
const BATCH_PROPOSALS_MAX: usize = 1024;
const BATCH_BYTES_MAX: usize = 64 << 10;
/// Entries per AppendEntries. openraft times every AppendEntries out after one heartbeat
/// interval (50 ms) and then sends the same range again, so a request must stay small enough to
/// be encoded, sent, decoded and fsynced in well under that, even on a loaded machine: with
/// entries near 64 KiB this is about 1 MiB. (openraft's default of 300 let a backlog of large
/// batches time out forever, and the followers, hearing nothing, elected new leaders.)
const RAFT_PAYLOAD_ENTRIES_MAX: u64 = 16;

/// The answer to the one command of a `propose_local_all` or `propose_forwarded`.
fn only_answer<O>(mut answers: Vec<Result<O, ForwardError>>) -> Result<O, ForwardError> {
    answers
        .pop()
        .unwrap_or_else(|| Err(ForwardError::Fatal("no answer to a write".into())))
}

/// How long after sending an AppendEntries that a quorum accepted the dispatcher may still act:
/// a heartbeat interval before the shortest election timeout, the earliest a follower that
/// accepted it could start an election.
fn max_ack_age(t: &RaftTiming) -> Duration {
    Duration::from_millis(t.election_timeout_min_ms.saturating_sub(t.heartbeat_ms))
}

impl<M: Machine> Replica<M> {
    /// Opens the data dir with `machine` as its state machine, starts Raft, and forms the
    /// cluster when the data dir is new.
    pub async fn start(
        config: ReplicaConfig,
        machine: Arc<M>,
    ) -> Result<Arc<Replica<M>>, StartError> {
        let store = Store::open(&config.data_dir, config.node_id, machine.clone())?;
        if let Some(reason) = store.removed() {
            return Err(StartError::Removed {
                node_id: config.node_id,
                reason,
            });
        }
        let view = store.view();
        if config.cluster_id_required {
            if let Some(found) = M::cluster_id(&view.tables()) {
                if found != config.cluster_id {
                    return Err(StartError::ClusterMismatch {
                        found,
                        expected: config.cluster_id.clone(),
                    });
                }
            }
        }
        let t = config.timing;
        let voters: Vec<NodeId> = if store.is_fresh() {
            config.initial_members.keys().copied().collect()
        } else {
            let mut sm = store.state_machine();
            let (_, membership) = openraft::storage::RaftStateMachine::applied_state(&mut sm)
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            membership.membership().voter_ids().collect()
        };
        let (election_min, election_max) =
            election_timeouts(&t, config.lead_rank, &voters, config.node_id);
        let raft_config = openraft::Config {
            cluster_name: "hookd".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: election_min,
            election_timeout_max: election_max,
            install_snapshot_timeout: 10_000,
            // Triggered by `snapshot_cadence` instead, which weighs the state's size too.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.snapshot_logs / 5,
            purge_batch_size: (config.snapshot_logs / 20).max(1),
            snapshot_max_chunk_size: 1 << 20,
            max_payload_entries: RAFT_PAYLOAD_ENTRIES_MAX,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let leadership = Leadership::new(config.node_id, max_ack_age(&config.timing));
        let cluster_id = {
            let view = view.clone();
            Arc::new(move || M::cluster_id(&view.tables()))
        };
        let removal: Removals = Arc::new(watch::Sender::new(None));
        let peers = PeerClient::new(
            config.peer_secret.clone(),
            cluster_id,
            leadership.acks(),
            config.peer_tls.clone(),
            removal.clone(),
            config.group,
        )
        .map_err(|e| StartError::Client(e.to_string()))?;
        let read_floor = {
            let mut log = store.log_store();
            let vote = log
                .read_vote()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            let state = log
                .get_log_state()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            // Only a committed vote for itself makes openraft restore this node as leader.
            let restored = vote
                .filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(config.node_id))
                .map(|v| v.leader_id().term);
            if let Some(term) = restored {
                tracing::info!(
                    term,
                    last_log = ?state.last_log_id,
                    "led this term before the restart: reads in it wait for the last entry held"
                );
            }
            ReadFloor {
                term: restored,
                last_log_id: state.last_log_id,
            }
        };
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            peers.clone(),
            store.log_store(),
            store.state_machine(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let joined = store.joined() || (!initialized && config.join);
        if !initialized && config.join {
            tracing::info!(
                "new data dir and --join: waiting to be added with POST /v1/cluster/members"
            );
            if !store.joined() {
                store
                    .mark_joined()
                    .map_err(|e| StartError::Raft(format!("recording --join: {e}")))?;
            }
        } else if !initialized {
            if !config.initial_members.contains_key(&config.node_id) {
                return Err(StartError::NotInInitialCluster(config.node_id));
            }
            let members: BTreeMap<NodeId, Node> = config
                .initial_members
                .iter()
                .map(|(id, addr)| (*id, Node { addr: addr.clone() }))
                .collect();
            tracing::info!(?members, "new data dir: forming the initial cluster");
            // Every initial member proposes the same membership, so the order in which nodes
            // start does not matter (openraft accepts identical initialization on all nodes).
            // A group with a preferred leader is formed by it, which so leads it from the
            // start; the others form it themselves only if it has not reached them meanwhile.
            let defer =
                preferred_leader(config.lead_rank, &voters).is_some_and(|p| p != config.node_id);
            if defer {
                let raft = raft.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(INITIALIZE_DEFERRED).await;
                    if !raft.is_initialized().await.unwrap_or(true) {
                        if let Err(e) = raft.initialize(members).await {
                            tracing::debug!(error = %e, "forming the group");
                        }
                    }
                });
            } else {
                raft.initialize(members)
                    .await
                    .map_err(|e| StartError::Raft(e.to_string()))?;
            }
        }

        let (proposals, proposals_rx) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let cancel = CancellationToken::new();
        let in_flight = in_flight_per_group(config.groups);
        let (forwarder, forwarding) = Forwarder::new(peers.clone(), in_flight, cancel.clone());
        let replica = Arc::new(Replica {
            proposals,
            forwarder,
            leadership: leadership.clone(),
            read_floor,
            machine,
            id: config.node_id,
            raft: raft.clone(),
            store,
            view,
            peers,
            config,
            tasks: TaskTracker::new(),
            cancel: cancel.clone(),
            removal,
            removed: CancellationToken::new(),
            joined,
            drain: Drain::default(),
            learned: Default::default(),
        });
        replica.tasks.spawn(Self::propose_loop(
            raft.clone(),
            proposals_rx,
            in_flight,
            cancel,
        ));
        replica.tasks.spawn(forwarding);
        let announcer = replica.clone();
        replica
            .tasks
            .spawn(async move { announcer.announce().await });
        let watcher = replica.clone();
        replica
            .tasks
            .spawn(async move { watcher.watch_removal().await });
        let cadence = replica.clone();
        replica
            .tasks
            .spawn(async move { cadence.snapshot_cadence().await });
        if replica.config.lead_rank.is_some() {
            let balancer = replica.clone();
            replica.tasks.spawn(async move { balancer.balance().await });
        }
        // Not tracked: it ends by itself when Raft shuts down.
        tokio::spawn(leadership.watch(raft.metrics()));
        Ok(replica)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's leadership, for acting only as a leader with a fresh lease.
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// The applied state's tables, for the machine's readers.
    pub fn view(&self) -> &StateView {
        &self.view
    }

    /// The state machine this node applies to.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The cluster id, once the first leader has recorded it.
    pub fn cluster_id(&self) -> Option<String> {
        M::cluster_id(&self.view.tables())
    }

    /// The API addresses the nodes recorded, by node id.
    pub fn node_api_addrs(&self) -> Vec<(NodeId, String)> {
        M::node_api_addrs(&self.view.tables())
    }

    /// This node's public API address.
    pub fn api_addr(&self) -> &str {
        &self.config.api_addr
    }

    /// How many Raft groups this node runs (`ReplicaConfig::groups`).
    pub fn groups(&self) -> u32 {
        self.config.groups
    }

    /// The peer address of every member (the initial members' until a membership is known).
    pub fn member_peer_addrs(&self) -> Vec<(NodeId, String)> {
        let nodes: Vec<_> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect()
        };
        if nodes.is_empty() {
            let initial = self.config.initial_members.iter();
            initial.map(|(id, a)| (*id, a.clone())).collect()
        } else {
            nodes
        }
    }

    fn learned(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.learned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the members serve, as this node knows it (`api_addrs`), from one reading of the
    /// membership and of the recorded API addresses.
    pub fn member_addrs(&self) -> MemberAddrs {
        let peers = self.member_peer_addrs();
        let recorded = self.node_api_addrs();
        let learned = self.learned();
        let apis = learned.merge(&peers, recorded);
        let api_unknown = learned.unknown(self.id, &peers, &apis);
        MemberAddrs {
            peers,
            apis,
            api_unknown,
        }
    }

    /// Asks the members whose API address is not recorded here yet for it (`api_addrs`), all
    /// at once, each within `ASK_WITHIN`.
    pub async fn learn_api_addrs(&self) {
        let peers = self.member_peer_addrs();
        let recorded = self
            .node_api_addrs()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let ask = self
            .learned()
            .to_ask(self.id, &peers, &recorded, Instant::now());
        let mut asking = tokio::task::JoinSet::new();
        for (id, peer) in ask {
            let client = self.peers.clone();
            asking.spawn(async move {
                let answer = client.api_addr_of(id, &peer, ASK_WITHIN).await;
                (id, peer, answer)
            });
        }
        while let Some(Ok((id, peer, answer))) = asking.join_next().await {
            if let Err(e) = &answer {
                tracing::debug!(node = id, %peer, error = %e, "asking a member for its API address failed");
            }
            self.learned().note(id, peer, answer.ok(), Instant::now());
        }
    }

    pub(crate) fn raft(&self) -> &Raft<M> {
        &self.raft
    }

    pub(crate) fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// Membership, leadership and health as this node sees them.
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus::of(self.id, &self.raft.metrics().borrow())
    }

    /// The commit index as last persisted by this node.
    pub fn committed_index(&self) -> u64 {
        self.store.log_store().committed_index()
    }

    pub fn raft_timing(&self) -> RaftTiming {
        self.config.timing
    }

    /// Proposes `cmd` and waits until it is committed and applied, on this node if it leads or
    /// on the leader otherwise.
    pub async fn propose(&self, cmd: M::Command) -> Result<M::Output, ReplicaError> {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        loop {
            let (leader, addr) = self.leader_within(deadline).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = if leader == self.id {
                self.propose_local(cmd.clone(), remaining)
                    .await
                    .map_err(Miss::Refused)
            } else {
                let dest = (leader, addr);
                let forwarded = if self.forwarder.batches_to(&dest) {
                    self.forwarder.write(dest, cmd.clone(), deadline).await
                } else {
                    let sent = self
                        .peers
                        .forward_write::<M>(leader, &dest.1, &cmd, remaining);
                    match sent.await {
                        Ok((outcome, takes_batches)) => {
                            self.forwarder.note(&dest, takes_batches);
                            Ok(outcome)
                        }
                        Err(e) => Err(Failed::of(&e)),
                    }
                };
                match forwarded {
                    Ok(outcome) => outcome.map_err(Miss::Refused),
                    Err(failed) => Err(Miss::Failed(failed)),
                }
            };
            let miss = match outcome {
                Ok(result) => return Ok(result),
                Err(miss) => miss,
            };
            tracing::debug!(?miss, "a write got no result from the leader");
            match miss.then(M::repeatable(&cmd)) {
                Then::Again => {}
                Then::Pause(or) => {
                    if let Some(doubt) = &or {
                        tracing::info!(%doubt, "proposing a repeatable write of unknown fate again");
                    }
                    if let Err(late) = self.pause_until(deadline).await {
                        return Err(or.unwrap_or(late));
                    }
                }
                Then::Answer(e) => return Err(e),
            }
        }
    }

    /// Asks the leader's peer port for `path`, a route the embedding crate added to
    /// `peer_router`, and decodes its JSON answer. For state only the leader holds in memory.
    pub async fn ask_leader<B, R>(
        &self,
        path: &str,
        body: &B,
        within: Duration,
    ) -> Result<R, ReplicaError>
    where
        B: serde::Serialize,
        R: serde::de::DeserializeOwned,
    {
        let deadline = Instant::now() + within;
        let (leader, addr) = self.leader_within(deadline).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.peers
            .forward(leader, &addr, path, body, remaining)
            .await
            .map_err(|e| ReplicaError::NoLeader(e.to_string()))
    }

    /// Each member's release as this node last heard it (this node's own, and, while it
    /// leads, every member's that answered it: `release.rs`).
    pub fn member_releases(&self) -> std::collections::BTreeMap<NodeId, crate::Release> {
        let mut all = self.peers.releases.all();
        all.insert(self.id, crate::Release::this(M::FORMAT_VERSION));
        all
    }

    /// The cluster's format: what this node writes (`Machine::cluster_format`).
    pub fn cluster_format(&self) -> u32 {
        M::cluster_format(&self.view.tables()).unwrap_or(M::FORMAT_PREVIOUS_RELEASE)
    }

    /// This node's write backlog: proposals waiting for a batch slot plus log entries appended
    /// but not yet applied.
    pub fn write_backlog(&self) -> usize {
        let queued = PROPOSALS_QUEUED_MAX.saturating_sub(self.proposals.capacity());
        let m = self.raft.metrics();
        let m = m.borrow();
        let last_log = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        queued.saturating_add(last_log.saturating_sub(applied) as usize)
    }

    /// Proposes `cmd` on this node, which should be the leader. Used directly by `propose` and
    /// by the peer router for forwarded writes. A sheddable command is refused while the write
    /// backlog is over its bound, so clients get `429` at once instead of a timeout.
    pub async fn propose_local(
        &self,
        cmd: M::Command,
        within: Duration,
    ) -> Result<M::Output, ForwardError> {
        only_answer(self.propose_local_all(vec![cmd], within).await)
    }

    /// `propose_local` for several commands at once: all are queued for the proposer (so they
    /// share batches) before any answer is awaited. One answer per command, in order.
    async fn propose_local_all(
        &self,
        cmds: Vec<M::Command>,
        within: Duration,
    ) -> Vec<Result<M::Output, ForwardError>> {
        let Some(_taken) = self.drain.take() else {
            return cmds.iter().map(|_| Err(Self::stepping_aside())).collect();
        };
        let deadline = Instant::now() + within;
        let late = || ForwardError::Unconfirmed(format!("no commit within {within:?}"));
        let stopped = || ForwardError::Fatal("the proposer has stopped".into());
        let mut waiting = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            if M::sheddable(&cmd) {
                let backlog = self.write_backlog();
                if backlog > self.config.write_backlog_max {
                    waiting.push(Err(ForwardError::Overloaded(format!(
                        "{backlog} writes are waiting on the leader (bound {}); retry later",
                        self.config.write_backlog_max
                    ))));
                    continue;
                }
            }
            let (reply, answer) = oneshot::channel();
            let queued =
                tokio::time::timeout_at(deadline, self.proposals.send(Proposal { cmd, reply }));
            waiting.push(match queued.await {
                Err(_) => Err(late()),
                Ok(Err(_)) => Err(stopped()),
                Ok(Ok(())) => Ok(answer),
            });
        }
        let mut answers = Vec::with_capacity(waiting.len());
        for w in waiting {
            answers.push(match w {
                Ok(answer) => match tokio::time::timeout_at(deadline, answer).await {
                    Err(_) => Err(late()),
                    Ok(Err(_)) => Err(stopped()),
                    Ok(Ok(result)) => result,
                },
                Err(e) => Err(e),
            });
        }
        answers
    }

    /// Writes another node forwarded in one request (`forward.rs`): each checked
    /// (`Machine::check_forwarded`; a refused one gets its refusal and is not proposed), the
    /// others proposed together. One answer per command, in order.
    pub(crate) async fn propose_forwarded(
        &self,
        cmds: Vec<M::Command>,
        within: Duration,
    ) -> Vec<Result<M::Output, ForwardError>> {
        let mut refused = Vec::with_capacity(cmds.len());
        let mut passed = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            match M::check_forwarded(&cmd) {
                Ok(()) => {
                    refused.push(None);
                    passed.push(cmd);
                }
                Err(output) => {
                    tracing::warn!(?output, "refused a forwarded command");
                    refused.push(Some(output));
                }
            }
        }
        let mut proposed = self.propose_local_all(passed, within).await.into_iter();
        refused
            .into_iter()
            .map(|r| match r {
                Some(output) => Ok(output),
                None => proposed
                    .next()
                    .unwrap_or_else(|| Err(ForwardError::Fatal("no answer to a write".into()))),
            })
            .collect()
    }

    /// `propose_forwarded` for the one write of a single forwarded request.
    pub(crate) async fn propose_forwarded_one(
        &self,
        cmd: M::Command,
        within: Duration,
    ) -> Result<M::Output, ForwardError> {
        only_answer(self.propose_forwarded(vec![cmd], within).await)
    }

    /// Leader side of the API: one command, possibly a batch, through `client_write`.
    async fn client_write(
        raft: &Raft<M>,
        cmd: M::Command,
        within: Duration,
    ) -> Result<M::Output, ForwardError> {
        match timeout(within, raft.client_write(cmd)).await {
            Err(_) => Err(ForwardError::Unconfirmed(format!(
                "no commit within {within:?}"
            ))),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ForwardError::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ForwardError::Fatal(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(ForwardError::Fatal(f.to_string())),
        }
    }

    /// Group commit: takes proposals as they come, and while `in_flight` batches (see
    /// `in_flight_per_group`) are in flight, gathers the next ones into one `Batch` entry — one
    /// log append, one fsync round and one apply transaction for many client writes.
    async fn propose_loop(
        raft: Raft<M>,
        rx: mpsc::Receiver<Proposal<M>>,
        in_flight: usize,
        cancel: CancellationToken,
    ) {
        let max = M::BATCH_MAX.min(BATCH_PROPOSALS_MAX);
        let mut gather = Gather::new(rx, in_flight, max, BATCH_BYTES_MAX);
        let size = |p: &Proposal<M>| M::approx_bytes(&p.cmd);
        while let Some((batch, permit)) = gather.next(&cancel, size, |_, _| true).await {
            let raft = raft.clone();
            tokio::spawn(async move {
                let _permit = permit;
                Self::write_batch(&raft, batch).await;
            });
        }
    }

    async fn write_batch(raft: &Raft<M>, mut batch: Vec<Proposal<M>>) {
        if batch.len() == 1 {
            if let Some(p) = batch.pop() {
                let _ = p
                    .reply
                    .send(Self::client_write(raft, p.cmd, REQUEST_DEADLINE).await);
            }
            return;
        }
        let (commands, replies): (Vec<M::Command>, Vec<_>) =
            batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
        let n = commands.len();
        let written = Self::client_write(raft, M::batch(commands), REQUEST_DEADLINE).await;
        match written.map(|output| M::unbatch(output, n)) {
            Ok(Ok(results)) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(Err(other)) => {
                let e = ForwardError::Fatal(format!("unexpected result of a batch: {other:?}"));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Returns once this node's state machine holds every write acknowledged before the call
    /// (a ReadIndex through the leader).
    pub async fn read_barrier(&self) -> Result<(), ReplicaError> {
        self.read_barrier_within(REQUEST_DEADLINE).await
    }

    /// `read_barrier` with a deadline of its own.
    pub async fn read_barrier_within(&self, within: Duration) -> Result<(), ReplicaError> {
        if crate::planted::is(crate::planted::STALE_FOLLOWER_READS) {
            return Ok(());
        }
        let deadline = Instant::now() + within;
        loop {
            let (leader, addr) = self.leader_within(deadline).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = if leader == self.id {
                self.leader_read_index(remaining).await
            } else {
                match self
                    .peers
                    .forward_read_index(leader, &addr, remaining)
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::debug!(error = %e, "read index from leader failed, retrying");
                        self.pause_until(deadline).await?;
                        continue;
                    }
                }
            };
            match outcome {
                Ok(read_log_id) => return self.await_applied(read_log_id, deadline).await,
                Err(ForwardError::NotLeader { .. }) => self.pause_until(deadline).await?,
                Err(ForwardError::Unconfirmed(m)) => return Err(ReplicaError::NoLeader(m)),
                Err(ForwardError::Fatal(m)) => return Err(ReplicaError::Fatal(m)),
                Err(ForwardError::Overloaded(m)) => return Err(ReplicaError::Overloaded(m)),
            }
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the log id every
    /// linearizable read must wait for.
    pub async fn leader_read_index(&self, within: Duration) -> Result<Option<LogId>, ForwardError> {
        let Some(_taken) = self.drain.take() else {
            return Err(Self::stepping_aside());
        };
        // The term before the confirmation: if it is the startup term, leadership was
        // confirmed in it (or a later term, where the floor is merely redundant).
        let term = self.raft.metrics().borrow().current_term;
        match timeout(within, self.raft.ensure_linearizable()).await {
            Err(_) => Err(ForwardError::Unconfirmed(format!(
                "leadership not confirmed within {within:?}"
            ))),
            Ok(Ok(log_id)) => Ok(self.read_floor.apply(term, log_id)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ForwardError::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(ForwardError::Unconfirmed(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(ForwardError::Fatal(f.to_string())),
        }
    }

    async fn await_applied(
        &self,
        log_id: Option<LogId>,
        deadline: Instant,
    ) -> Result<(), ReplicaError> {
        let Some(log_id) = log_id else { return Ok(()) };
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(log_id.index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| ReplicaError::NoLeader(format!("not caught up with the leader: {e}")))
    }

    /// The current leader and its peer address, waiting for one until `deadline`.
    pub(crate) async fn leader_within(
        &self,
        deadline: Instant,
    ) -> Result<(NodeId, String), ReplicaError> {
        loop {
            let found = {
                let m = self.raft.metrics();
                let m = m.borrow();
                m.current_leader.and_then(|id| {
                    let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
                    Some((id, addr))
                })
            };
            if let Some(found) = found {
                return Ok(found);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ReplicaError::NoLeader(
                    "no leader elected; a majority of nodes may be down or unreachable".into(),
                ));
            }
            // Wakes on any metrics change; the loop re-checks.
            let _ = self
                .raft
                .wait(Some(remaining.min(Duration::from_millis(250))))
                .metrics(|m| m.current_leader.is_some(), "leader known")
                .await;
        }
    }

    async fn pause_until(&self, deadline: Instant) -> Result<(), ReplicaError> {
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(ReplicaError::NoLeader(
                "the leader did not answer before the deadline".into(),
            ));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        Ok(())
    }

    /// While this node leads a group with a preferred leader (`ReplicaConfig::lead_rank`) that
    /// is not this node, and that voter is back and caught up, hands the leadership to it: so
    /// leaders spread over the members again after a node returns.
    async fn balance(self: Arc<Self>) {
        let mut leading_since: Option<(u64, Instant)> = None;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(BALANCE_EVERY) => {}
            }
            let status = self.status();
            if status.leader_id != Some(self.id) {
                leading_since = None;
                continue;
            }
            let since = match leading_since {
                Some((term, at)) if term == status.term => at,
                _ => {
                    leading_since = Some((status.term, Instant::now()));
                    continue;
                }
            };
            let voters: Vec<NodeId> = status
                .members
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.id)
                .collect();
            let preferred = preferred_leader(self.config.lead_rank, &voters);
            if since.elapsed() < BALANCE_SETTLED || preferred == Some(self.id) {
                continue;
            }
            if let Some(to) = self.successor(preferred) {
                tracing::info!(
                    group = self.config.group,
                    to,
                    "handing the leadership to the group's preferred leader"
                );
                self.hand_over(to).await;
                leading_since = None;
            }
        }
    }

    /// A voter this node, leading, may hand its leadership to: `only` if given, else any; one
    /// that acknowledged this term's requests lately and holds nearly all of the log.
    fn successor(&self, only: Option<NodeId>) -> Option<NodeId> {
        let epoch = (*self.leadership.epochs().borrow())?;
        if epoch.node_id != self.id {
            return None;
        }
        let heard = self.leadership.heard_from(epoch);
        let status = self.status();
        status
            .members
            .iter()
            .filter(|m| m.voter && m.id != self.id && only.is_none_or(|o| o == m.id))
            .filter(|m| {
                heard
                    .get(&m.id)
                    .is_some_and(|t| t.elapsed() < SUCCESSOR_HEARD_WITHIN)
            })
            .filter(|m| {
                m.matched
                    .is_some_and(|i| i + SUCCESSOR_LAG_MAX >= status.last_log_index)
            })
            .map(|m| m.id)
            .next()
    }

    /// Hands this group's leadership to voter `to`: this node stops taking writes and reads
    /// and acting on its lease, and goes quiet (no heartbeats), so the voters' leases run out;
    /// then `to` is asked to campaign, which it wins holding the whole log. Whatever happens,
    /// this node is back to normal after `HAND_OVER_WITHIN` (leading still if `to` did not
    /// take over). openraft 0.9 has no leadership transfer of its own.
    async fn hand_over(&self, to: NodeId) {
        let Some(addr) = self
            .member_peer_addrs()
            .into_iter()
            .find_map(|(id, a)| (id == to).then_some(a))
        else {
            return;
        };
        // First this node stops acting (no new claim or attempt), while it still takes the
        // outcomes of the attempts in flight: recorded, they are not sent again by the next
        // leader. Then it takes nothing more and goes quiet.
        self.leadership.set_aside(true);
        let started = Instant::now();
        let settled = started + HAND_OVER_SETTLE;
        while self.write_backlog() > 0 || Instant::now() < started + HAND_OVER_SETTLE / 4 {
            if Instant::now() >= settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.drain.aside.store(true, Ordering::SeqCst);
        self.raft.runtime_config().heartbeat(false);
        // Requests already taken finish (their entries replicate), then the leases run out.
        while !self.drain.idle() && started.elapsed() < HAND_OVER_WITHIN / 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lease = Duration::from_millis(self.config.timing.election_timeout_max_ms);
        tokio::time::sleep(lease + Duration::from_millis(self.config.timing.heartbeat_ms)).await;
        if let Err(e) = self.peers.campaign(to, &addr, Duration::from_secs(1)).await {
            tracing::info!(error = %e, to, "could not ask for a campaign");
        }
        while started.elapsed() < HAND_OVER_WITHIN {
            if self.status().leader_id.is_some_and(|l| l != self.id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.raft.runtime_config().heartbeat(true);
        self.leadership.set_aside(false);
        self.drain.aside.store(false, Ordering::SeqCst);
    }

    /// Keeps this node's API address and the cluster id recorded in the replicated state.
    async fn announce(self: Arc<Self>) {
        loop {
            let known = self
                .node_api_addrs()
                .into_iter()
                .any(|(id, addr)| id == self.id && addr == self.config.api_addr);
            if !known {
                let cmd = M::record_node(self.id, self.config.api_addr.clone());
                if let Some(Err(e)) = self.unless_cancelled(self.propose(cmd)).await {
                    tracing::debug!(error = %e, "recording this node's API address failed; will retry");
                }
            }
            let leading = {
                let m = self.raft.metrics();
                let m = m.borrow();
                m.state == ServerState::Leader && m.current_leader == Some(self.id)
            };
            let new_id = match &self.config.cluster_id_of {
                _ if !leading || self.cluster_id().is_some() => None,
                Some(of) => (of.0)(),
                None => Some(self.config.cluster_id.clone()),
            };
            if let Some(id) = new_id {
                // A new cluster: made by this release, so it starts in this release's format
                // (one entry with its id, so it never has the one without the other).
                let cmd = M::batch(vec![
                    M::record_cluster_id(id),
                    M::record_cluster_format(M::FORMAT_VERSION),
                ]);
                if let Some(Err(e)) = self.unless_cancelled(self.propose(cmd)).await {
                    tracing::debug!(error = %e, "recording the cluster id failed; will retry");
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(ANNOUNCE_INTERVAL) => {}
            }
        }
    }

    /// Runs `f` until it finishes or the replica shuts down (then `None`).
    async fn unless_cancelled<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            _ = self.cancel.cancelled() => None,
            v = f => Some(v),
        }
    }

    /// The peer secret, if node-to-node traffic is authenticated by one.
    pub fn peer_secret(&self) -> Option<&Secret> {
        self.config.peer_secret.as_ref()
    }

    pub(crate) fn store(&self) -> &Store<M> {
        &self.store
    }

    pub(crate) fn peers(&self) -> &PeerClient {
        &self.peers
    }

    /// Cancelled once this node has been removed from the cluster and has recorded that in its
    /// data dir: it must stop, and it will refuse to start again from this data dir.
    pub fn removed(&self) -> CancellationToken {
        self.removed.clone()
    }

    /// Whether a vote request comes from a node this one knows was removed: the candidate is
    /// not in this node's applied membership, and that membership is newer than anything in the
    /// candidate's log (so the candidate missed its own removal, rather than this node lagging
    /// behind the candidate's addition). Such a candidate is told so instead of answered.
    /// Whether node `id` is in this node's membership (any configuration, voter or learner).
    pub(crate) fn is_member(&self, id: NodeId) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let found = m
            .membership_config
            .membership()
            .nodes()
            .any(|(n, _)| *n == id);
        found
    }

    pub(crate) fn is_removed_candidate(&self, req: &VoteRequest) -> bool {
        let Some(candidate) = req.vote.leader_id().voted_for() else {
            return false;
        };
        let m = self.raft.metrics();
        let m = m.borrow();
        let stored = &m.membership_config;
        stored.log_id() <= &m.last_applied
            && stored.log_id() > &req.last_log_id
            && crate::membership::removed_by(
                &crate::membership::Members::of(stored.membership()),
                candidate,
            )
    }

    /// Notes that this node was removed (the leader said so), for `watch_removal`.
    pub(crate) fn notice_removed(&self, reason: String) {
        crate::network::note_removal(&self.removal, reason);
    }

    /// Asks openraft for a snapshot when `cadence::snapshot_due` says one is due, checked after
    /// every change of Raft's metrics: once, and not again while it is being built
    /// (`cadence::ask_for_snapshot`). Saves the applied byte count for the next start about
    /// once a second.
    async fn snapshot_cadence(self: Arc<Self>) {
        let sm = self.store.state_machine();
        let mut metrics = self.raft.metrics();
        let mut saved_at = Instant::now();
        // When this node last asked, and the snapshot it had then: a new one resets the wait.
        let mut asked: Option<(Instant, Option<LogId>)> = None;
        loop {
            if saved_at.elapsed() >= APPLIED_BYTES_SAVE_EVERY {
                saved_at = Instant::now();
                if let Err(e) = sm.save_applied_bytes() {
                    tracing::debug!(error = %e, "cannot save the applied byte count");
                }
            }
            let (entries_since, snapshot) = {
                let m = metrics.borrow_and_update();
                let next = |l: Option<LogId>| l.map_or(0, |l| l.index + 1);
                (
                    next(m.last_applied).saturating_sub(next(m.snapshot)),
                    m.snapshot,
                )
            };
            let (bytes_since, snapshot_bytes) = sm.snapshot_progress();
            let due = crate::cadence::snapshot_due(
                self.config.snapshot_logs,
                entries_since,
                bytes_since,
                snapshot_bytes,
            );
            let since_asked = asked
                .filter(|(_, at_snapshot)| *at_snapshot == snapshot)
                .map(|(at, _)| at.elapsed());
            if crate::cadence::ask_for_snapshot(due, sm.open_captures() > 0, since_asked) {
                asked = Some((Instant::now(), snapshot));
                if let Err(e) = self.raft.trigger().snapshot().await {
                    tracing::debug!(error = %e, "cannot ask for a snapshot");
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = metrics.changed() => if r.is_err() { return },
            }
        }
    }

    /// Waits until this node is removed: told by the leader, or seeing an applied membership
    /// that no longer names it. Then it records that in the data dir, gives the answer to the
    /// request that removed it a moment to leave, and cancels `removed`.
    async fn watch_removal(self: Arc<Self>) {
        let mut told = self.removal.subscribe();
        let mut metrics = self.raft.metrics();
        let reason = loop {
            if let Some(reason) = told.borrow_and_update().clone() {
                break reason;
            }
            let applied_without_me = {
                let m = metrics.borrow_and_update();
                let applied = m.membership_config.log_id() <= &m.last_applied;
                applied
                    && !self.joined
                    && crate::membership::removed_by(
                        &crate::membership::Members::of(m.membership_config.membership()),
                        self.id,
                    )
            };
            if applied_without_me {
                break "the applied membership no longer names it".to_string();
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = told.changed() => if r.is_err() { return },
                r = metrics.changed() => if r.is_err() { return },
            }
        };
        tracing::warn!(%reason, "this node was removed from the cluster; stopping");
        if let Err(e) = self.store.mark_removed(&reason).await {
            tracing::error!(error = %e, "cannot record the removal in the data dir");
        }
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = tokio::time::sleep(REMOVED_GRACE) => {}
        }
        self.removed.cancel();
    }

    /// What a stopping node answers a proposal or read index with: "not the leader", which the
    /// forwarding node retries (with the next leader) within its deadline, where a stopped Raft
    /// core would have made it answer `503`.
    fn stepping_aside() -> ForwardError {
        ForwardError::NotLeader {
            leader_id: None,
            leader_addr: None,
        }
    }

    /// Stops background tasks and Raft, then flushes the store. New proposals are turned away
    /// first, and those already taken get up to `DRAIN_WITHIN` to commit, so no write a
    /// follower forwarded here fails because this node went away under it.
    pub async fn shutdown(&self) {
        // A planned stop hands this group's leadership to a caught-up voter first, so it
        // moves at once instead of after an election timeout.
        if let Some(to) = self.successor(None) {
            self.hand_over(to).await;
        }
        self.drain.stop();
        let drained = Instant::now() + DRAIN_WITHIN;
        while !(self.drain.idle() && self.write_backlog() == 0) && Instant::now() < drained {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        if let Err(e) = self.store.close().await {
            tracing::warn!(error = %e, "final flush failed");
        }
    }
}

/// Requests a leader has taken (`take`) and not yet answered, and whether it is stopping. A
/// request either sees the stop and is turned away, or was counted before `stop` returned and
/// is waited for: both sides use sequentially consistent order, so none slips between.
#[derive(Debug, Default)]
struct Drain {
    stopping: AtomicBool,
    /// Set while leadership is handed over: like `stopping`, for a while.
    aside: AtomicBool,
    taken: AtomicUsize,
}

/// One taken request; dropping it (answered, or abandoned) uncounts it.
struct Taken<'a>(&'a Drain);

impl Drain {
    fn take(&self) -> Option<Taken<'_>> {
        self.taken.fetch_add(1, Ordering::SeqCst);
        let taken = Taken(self);
        let refused = self.stopping.load(Ordering::SeqCst) || self.aside.load(Ordering::SeqCst);
        (!refused).then_some(taken)
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn idle(&self) -> bool {
        self.taken.load(Ordering::SeqCst) == 0
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::{
        election_timeouts, in_flight_per_group, Drain, Failed, ForwardError, Miss, RaftTiming,
        ReadFloor, ReplicaError, Then,
    };
    use crate::typ::LogId;
    use openraft::CommittedLeaderId;

    /// A write whose fate is unknown is tried again only when it may be (`Machine::repeatable`);
    /// a write nothing reached is tried again always; a refusal goes to the client.
    #[test]
    fn a_write_is_tried_again_when_nothing_was_taken_or_it_may_be_repeated() {
        let e = || "e".to_owned();
        let unconfirmed = || ReplicaError::Unconfirmed(e());
        let not_leader = ForwardError::NotLeader {
            leader_id: None,
            leader_addr: None,
        };
        for repeatable in [false, true] {
            let doubt = || {
                if repeatable {
                    Then::Pause(Some(unconfirmed()))
                } else {
                    Then::Answer(unconfirmed())
                }
            };
            for (miss, then) in [
                (Miss::Failed(Failed::Singly), Then::Again),
                (Miss::Failed(Failed::NothingSent(e())), Then::Pause(None)),
                (Miss::Refused(not_leader.clone()), Then::Pause(None)),
                (
                    Miss::Failed(Failed::Busy(e())),
                    Then::Answer(ReplicaError::Overloaded(e())),
                ),
                (
                    Miss::Refused(ForwardError::Overloaded(e())),
                    Then::Answer(ReplicaError::Overloaded(e())),
                ),
                (Miss::Failed(Failed::Unconfirmed(e())), doubt()),
                (Miss::Refused(ForwardError::Unconfirmed(e())), doubt()),
                (
                    Miss::Refused(ForwardError::Fatal(e())),
                    Then::Answer(ReplicaError::Fatal(e())),
                ),
            ] {
                assert_eq!(miss.clone().then(repeatable), then, "{miss:?} {repeatable}");
            }
        }
    }

    #[test]
    fn a_node_s_rounds_in_flight_are_split_between_its_groups() {
        // (groups, rounds each group keeps in flight)
        for (groups, each) in [(0, 4), (1, 4), (2, 2), (3, 1), (4, 1), (6, 1), (64, 1)] {
            assert_eq!(in_flight_per_group(groups), each, "{groups} groups");
        }
    }

    fn id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn a_groups_preferred_voter_campaigns_first_and_no_lease_grows() {
        let t = RaftTiming::default();
        let voters = [3, 1, 2];
        let (early, late) = ((200, 300), (300, 400));
        for (rank, me, want) in [
            (None, 1, (200, 400)),
            (Some(0), 1, early),
            (Some(0), 2, late),
            (Some(1), 2, early),
            (Some(2), 3, early),
            (Some(3), 1, early),
            (Some(4), 1, late),
        ] {
            assert_eq!(
                election_timeouts(&t, rank, &voters, me),
                want,
                "{rank:?} {me}"
            );
        }
        assert_eq!(
            election_timeouts(&t, Some(0), &[], 1),
            (200, 400),
            "no voters known"
        );
        for me in 1..=3 {
            let (min, max) = election_timeouts(&t, Some(1), &voters, me);
            assert!(min >= t.election_timeout_min_ms && max <= t.election_timeout_max_ms);
            assert!(min < max);
        }
    }

    #[test]
    fn a_request_taken_before_the_stop_is_waited_for_and_one_after_it_is_turned_away() {
        let d = Drain::default();
        let before = d.take().expect("taken while running");
        d.stop();
        assert!(
            !d.idle(),
            "a request taken before the stop is still counted"
        );
        assert!(d.take().is_none(), "turned away once stopping");
        assert!(
            !d.idle(),
            "a refused request leaves no count behind, the first still holds"
        );
        drop(before);
        assert!(d.idle());
    }

    #[test]
    fn reads_in_the_startup_term_wait_for_the_last_entry_held_at_startup() {
        let floor = ReadFloor {
            term: Some(7),
            last_log_id: id(7, 40),
        };
        // (term of the read, openraft's read log id) -> what the read waits for
        let cases = [
            // restored leader, stale saved commit index: the floor wins
            (7, id(7, 31), id(7, 40)),
            (7, None, id(7, 40)),
            // openraft's id is past the floor already
            (7, id(7, 52), id(7, 52)),
            // a later term got there by election, with a blank entry of its own: no floor
            (8, id(8, 12), id(8, 12)),
            (8, None, None),
        ];
        for (term, read, expect) in cases {
            assert_eq!(
                floor.apply(term, read),
                expect,
                "term {term}, read {read:?}"
            );
        }
        let empty = ReadFloor {
            term: None,
            last_log_id: None,
        };
        assert_eq!(empty.apply(0, id(1, 3)), id(1, 3));
        assert_eq!(empty.apply(0, None), None);
    }
}
