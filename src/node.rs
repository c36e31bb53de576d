//! `node::run`: wires the replicated core, the peer server and the public API together, and owns
//! shutdown. Entry points take their listeners and shutdown token, so tests bind port 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hookd_raft::tls::{Reloading, TlsFiles};
use hookd_raft::Secret;
use hookd_raft::{RaftTiming, ReplicaConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::replicated::Replica;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::dispatch::{self, Deliverer, DispatchConfig};
use crate::egress::{EgressPolicy, Resolver};
use crate::limits::{API_BODY_READ, DISPATCH_HORIZON, PEER_BODY_READ, SHUTDOWN_GRACE};
use crate::serve::{raise_open_files_limit, serve, Limits};

/// Worker threads of the runtime that runs Raft (core, replication, storage, peer server).
const RAFT_WORKER_THREADS: usize = 2;

/// Raft's own runtime. Tokio does not preempt tasks, so on one runtime a heartbeat or a vote
/// waits behind every ready delivery, claim and API task; under load that stretched RPCs past
/// openraft's 50 ms timeout and cost the leader its lease. On threads of its own, Raft is
/// scheduled by the kernel, which favours threads that mostly sleep, as Raft's do. Shut down in
/// the background on drop (a runtime may not be dropped inside async code).
struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    fn new() -> anyhow::Result<RaftRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RAFT_WORKER_THREADS)
            .thread_name("hookd-raft")
            .enable_all()
            .build()
            .context("start the raft runtime")?;
        Ok(RaftRuntime(Some(rt)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The node's two listening sockets.
pub struct Listeners {
    pub api: TcpListener,
    pub peer: TcpListener,
}

impl Listeners {
    /// Binds `--listen` and `--peer-listen`, unless the process was started with systemd-style
    /// socket activation (`LISTEN_FDS=2`: fd 3 is the API socket, fd 4 the peer socket).
    pub async fn bind_or_inherit(config: &Config) -> anyhow::Result<Listeners> {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() >= 2 {
            let api = fds
                .take_tcp_listener(0)
                .context("inherited API socket (fd 3)")?;
            let peer = fds
                .take_tcp_listener(1)
                .context("inherited peer socket (fd 4)")?;
            if let (Some(api), Some(peer)) = (api, peer) {
                api.set_nonblocking(true)?;
                peer.set_nonblocking(true)?;
                return Ok(Listeners {
                    api: TcpListener::from_std(api)?,
                    peer: TcpListener::from_std(peer)?,
                });
            }
        }
        let api = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind --listen {}", config.listen))?;
        let peer = TcpListener::bind(config.peer_listen)
            .await
            .with_context(|| format!("bind --peer-listen {}", config.peer_listen))?;
        Ok(Listeners { api, peer })
    }
}

/// Runs a node until `shutdown` is cancelled, then shuts down in reverse order of start-up:
/// dispatch stops (deliveries in flight finish on their own), the public API stops taking
/// requests, Raft stops and flushes, then the peer server.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api_addr = listeners.api.local_addr()?;
    let peer_addr = listeners.peer.local_addr()?;
    crate::config::check_exposure(&config, api_addr, peer_addr)?;
    if let Some(listed) = config.initial_cluster.get(&config.node_id) {
        if *listed != peer_addr.to_string() {
            tracing::warn!(%listed, %peer_addr, "--initial-cluster lists another peer address for this node");
        }
    }
    // TLS files load before anything starts, so a bad one stops the node with its name.
    let load = |files: &Option<TlsFiles>, flags: &str| {
        let loaded = files.clone().map(Reloading::load).transpose();
        loaded.with_context(|| format!("load the {flags}"))
    };
    let api_tls = load(
        &config.api_tls,
        "API TLS files (--tls-cert, --tls-key, --tls-client-ca)",
    )?;
    let peer_tls = load(
        &config.peer_tls,
        "peer TLS files (--peer-tls-cert, --peer-tls-key, --peer-tls-ca)",
    )?;
    let conn_cap = connections_max(raise_open_files_limit());
    let raft_rt = RaftRuntime::new()?;
    let count = crate::shards::shard_count(config.data_dir.path(), config.shards)?;
    let replica_config = ReplicaConfig {
        node_id: config.node_id,
        data_dir: config.data_dir.path().to_path_buf(),
        api_addr: config
            .advertise_api
            .clone()
            .unwrap_or_else(|| api_addr.to_string()),
        initial_members: config.initial_cluster.clone(),
        join: config.join,
        peer_secret: config.peer_secret.clone(),
        peer_tls: peer_tls.clone(),
        cluster_id: config
            .cluster_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        cluster_id_required: config.cluster_id.is_some(),
        timing: RaftTiming::default(),
        snapshot_logs: config.snapshot_logs,
        write_backlog_max: config.write_backlog_max,
        group: 0,
        cluster_id_of: None,
        lead_rank: None,
        groups: count,
    };
    let mut shards: Vec<Arc<Replica>> = Vec::with_capacity(count as usize);
    for k in 0..count {
        // Every shard other than the first records the first one's cluster id.
        let cluster_id_of = shards
            .first()
            .cloned()
            .map(|first| hookd_raft::ClusterIdOf(Arc::new(move || first.cluster_id())));
        let shard_config = ReplicaConfig {
            data_dir: crate::shards::data_dir_of(config.data_dir.path(), k),
            group: k,
            cluster_id_of,
            // With several shards, each prefers another member as its leader.
            lead_rank: (count > 1).then_some(k),
            ..replica_config.clone()
        };
        // Started on the raft runtime, so every task openraft and the replica spawn lives there.
        let replica = raft_rt
            .handle()
            .spawn(Replica::start(
                shard_config,
                Arc::new(crate::replicated::Hookd::of_shard(k)),
            ))
            .await
            .context("raft runtime")?
            .with_context(|| format!("start the replicated core of shard {k}"))?;
        shards.push(replica);
    }
    let shards = Arc::new(shards);
    let replica = shards[0].clone();
    tracing::info!(node_id = config.node_id, %api_addr, %peer_addr, shards = count, data_dir = %config.data_dir.path().display(), "hookd node started");

    crate::metrics::handle();
    let resolver = Resolver::new(Arc::new(EgressPolicy::new(
        config.egress_allow.clone(),
        config.egress_deny.clone(),
    )));
    // This node's own addresses, bound and configured (they differ with socket activation).
    let own: Vec<String> = [api_addr, peer_addr, config.listen, config.peer_listen]
        .iter()
        .map(ToString::to_string)
        .chain(config.advertise_api.clone())
        .collect();
    refresh_members(&resolver, &replica, &own).await;
    let members_stop = CancellationToken::new();
    tokio::spawn({
        let (resolver, replica, stop) = (resolver.clone(), replica.clone(), members_stop.clone());
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(MEMBERS_REFRESH) => {}
                    _ = resolver.policy().refresh_wanted() => {}
                }
                replica.learn_api_addrs().await;
                refresh_members(&resolver, &replica, &own).await;
            }
        }
    });
    let deliverer = Deliverer::new(
        config.signing_secret.as_ref().map(Secret::expose),
        config.node_id,
        resolver.clone(),
    )
    .context("build the delivery client")?;
    let dispatch_stop = CancellationToken::new();
    let (dispatchers, dispatch_handles): (Vec<_>, Vec<_>) = shards
        .iter()
        .enumerate()
        .map(|(k, replica)| {
            dispatch::spawn(
                replica.clone(),
                deliverer.clone(),
                DispatchConfig {
                    horizon: DISPATCH_HORIZON,
                    in_flight_max: config.deliveries_max,
                    host_max: config.host_concurrency,
                    retention: config.run_retention,
                    clock: dispatch::Clock::system(),
                    shards: count,
                    shard: k as u32,
                },
                dispatch_stop.clone(),
            )
        })
        .unzip();

    let peer_stop = CancellationToken::new();
    let api_stop = CancellationToken::new();
    let servers = TaskTracker::new();
    let peer_app = hookd_raft::peer_server::groups_router(
        shards
            .iter()
            .zip(&dispatch_handles)
            .map(|(replica, handle)| {
                hookd_raft::peer_server::peer_router(
                    replica.clone(),
                    api::leader::peer_routes(handle.clone(), replica.clone()),
                )
            })
            .collect(),
    );
    // The peer server (AppendEntries, votes) runs on the raft runtime too.
    let peer_listener = listeners.peer.into_std()?;
    let tls_files: Vec<_> = [("api", api_tls.clone()), ("peer", peer_tls.clone())]
        .into_iter()
        .filter_map(|(name, t)| Some((name, t?)))
        .collect();
    tokio::spawn(crate::serve::follow_tls_files(
        tls_files,
        members_stop.clone(),
    ));
    let peer_server = raft_rt.handle().spawn({
        let stop = peer_stop.clone();
        async move {
            match TcpListener::from_std(peer_listener) {
                Ok(l) => serve("peer", l, peer_app, stop, peer_limits(conn_cap), peer_tls).await,
                Err(e) => tracing::error!(error = %e, "cannot serve the peer socket"),
            }
        }
    });
    servers.spawn(async move {
        let _ = peer_server.await;
    });
    let api_app = api::front::router(
        shards
            .iter()
            .zip(dispatch_handles)
            .map(|(replica, handle)| {
                api::router(Arc::new(ApiState::new(
                    replica.clone(),
                    handle,
                    resolver.policy().clone(),
                    &config,
                    shards.clone(),
                )))
            })
            .collect(),
        shards.clone(),
    );
    let api_server = tokio::spawn(serve(
        "api",
        listeners.api,
        api_app,
        api_stop.clone(),
        api_limits(conn_cap),
        api_tls,
    ));

    let removed = replica.removed();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = removed.cancelled() => {}
    }
    members_stop.cancel();
    let stopped = tokio::time::timeout(SHUTDOWN_GRACE, async {
        dispatch_stop.cancel();
        for dispatcher in dispatchers {
            let _ = dispatcher.await;
        }
        api_stop.cancel();
        let _ = api_server.await;
        futures::future::join_all(shards.iter().map(|r| r.shutdown())).await;
        peer_stop.cancel();
        servers.close();
        servers.wait().await;
    })
    .await;
    if stopped.is_err() {
        tracing::warn!("shutdown did not finish within {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    if removed.is_cancelled() {
        tracing::warn!("hookd node stopped: it was removed from the cluster");
    } else {
        tracing::info!("hookd node stopped");
    }
    Ok(())
}

/// Bounds of the API server, with its connection cap (`connections_max`). A request may take
/// as long as adding a member does (a learner gets 60 s to catch up); every other handler has a
/// deadline of its own of a few seconds.
fn api_limits(connections_max: usize) -> Limits {
    Limits {
        header_read: Duration::from_secs(5),
        body_read: API_BODY_READ,
        body_max: crate::limits::REQUEST_BODY_BYTES_MAX,
        request: hookd_raft::membership::CHANGE_WITHIN + Duration::from_secs(5),
        connections_max,
    }
}

/// Bounds of the peer server; snapshots take longer. Its connection cap is the API's: each
/// follower holds up to `FORWARDS_IN_FLIGHT_MAX` (256) forwarded requests open here, besides
/// Raft's own, and a cap below that turned forwarded deletes into `503`s under load (the
/// harness's overload fault).
fn peer_limits(connections_max: usize) -> Limits {
    Limits {
        header_read: Duration::from_secs(10),
        body_read: PEER_BODY_READ,
        body_max: hookd_raft::network::PEER_BODY_BYTES_MAX,
        request: hookd_raft::membership::CHANGE_WITHIN + Duration::from_secs(5),
        connections_max,
    }
}

/// Each server's connection cap: well below the open-file limit (a quarter each for the API and
/// the peer server, leaving room for outgoing deliveries and the data files), at least 64, at
/// most 65,536.
fn connections_max(open_files: u64) -> usize {
    (open_files / 4).clamp(64, 65_536) as usize
}

/// How often the egress policy re-reads the members' addresses (membership can change).
const MEMBERS_REFRESH: Duration = Duration::from_secs(2);

/// Gives the egress policy every address a cluster member serves on, as far as this node
/// knows (the members' peer and API addresses, and this node's own), and the hosts of the
/// members whose API address it does not know yet.
async fn refresh_members(resolver: &Resolver, replica: &Replica, own: &[String]) {
    let known = replica.member_addrs();
    let served = known.peers.into_iter().chain(known.apis).map(|(_, a)| a);
    let addrs = served.chain(own.iter().cloned());
    resolver.refresh_members(addrs, known.api_unknown).await;
}

/// `hookd serve`: the node in a runtime of its own, until SIGTERM or SIGINT. Lives in the library,
/// not the binary, so the binary crate compiles in a second instead of re-instantiating the
/// whole node (docs/decisions.md#entry-in-the-library).
pub fn serve_until_signal(args: crate::config::ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    init_tracing(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hookd")
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind_or_inherit(&config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        run(config, listeners, shutdown).await
    })
}

fn init_tracing(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log reader that went away must not stop the node: tracing-subscriber would report
        // the failed write with `eprintln!`, which panics on a closed stderr (in whichever task
        // logged, the signal handler's included).
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

/// Cancels `token` on the first SIGTERM or SIGINT.
async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    token.cancel();
    tracing::info!("{name}: shutting down");
}
