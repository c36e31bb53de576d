//! The one launcher of `hookd` clusters on 127.0.0.1, for the benchmarks and hookd's own
//! integration tests (`tests/it/harness.rs` is a thin layer over it). Each node's API and peer
//! listeners are bound here on port 0 when the node is placed and handed to its first start by
//! socket activation (fds 3 and 4, `LISTEN_FDS=2`), so no port is released between choosing it
//! and the node listening on it. A restart binds the same addresses again (retrying while the
//! old socket closes).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use command_fds::{CommandFdExt, FdMapping};

use crate::process::{self, Serve};

/// How long the benchmarks wait for a cluster to name a leader.
pub const LEADER_WITHIN: Duration = Duration::from_secs(20);

/// One node process.
pub struct LocalNode {
    pub id: u64,
    pub api: SocketAddr,
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Started with `--join` (added through the API) instead of `--initial-cluster`.
    pub joins: bool,
    child: Option<Child>,
    /// The listeners bound when the node was placed, until its first start takes them.
    sockets: Option<(TcpListener, TcpListener)>,
}

impl LocalNode {
    /// Node `id` under `dir`, its listeners bound on loopback port 0, not started.
    fn new(id: u64, dir: &Path, joins: bool) -> anyhow::Result<LocalNode> {
        let (api, peer) = (loopback_listener()?, loopback_listener()?);
        Ok(LocalNode {
            id,
            api: api.local_addr()?,
            peer: peer.local_addr()?,
            data_dir: dir.join(format!("node{id}")),
            log: dir.join(format!("node{id}.log")),
            joins,
            child: None,
            sockets: Some((api, peer)),
        })
    }
}

/// Three (or N) nodes on loopback. Dropping it kills every node.
pub struct LocalCluster {
    pub hookd: PathBuf,
    /// Where the nodes' data dirs and logs are (`nodeN`, `nodeN.log`).
    pub dir: PathBuf,
    pub nodes: Vec<LocalNode>,
    /// Flags after the launcher's own of every `hookd serve`.
    pub extra_args: Vec<String>,
    /// Environment variables of every node, besides the inherited ones.
    pub env: Vec<(String, String)>,
    /// `http`, or `https` for nodes serving their API over TLS (see `url`).
    pub scheme: &'static str,
    initial: String,
}

impl LocalCluster {
    /// Prepares `n` nodes under `dir` (not started).
    pub fn new(
        hookd: &Path,
        dir: &Path,
        n: u64,
        extra_args: &[String],
    ) -> anyhow::Result<LocalCluster> {
        let nodes = (1..=n)
            .map(|id| LocalNode::new(id, dir, false))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let initial = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer))
            .collect::<Vec<_>>()
            .join(",");
        Ok(LocalCluster {
            hookd: hookd.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes,
            extra_args: extra_args.to_vec(),
            env: Vec::new(),
            scheme: "http",
            initial,
        })
    }

    /// Starts (or restarts) node `i` (0-based) on its addresses, its listeners as fds 3 and 4.
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            bail!("node {} is already running", node.id);
        }
        let (api, peer) = match node.sockets.take() {
            Some(sockets) => sockets,
            None => (bind_retry(node.api)?, bind_retry(node.peer)?),
        };
        let mut cmd = Command::new(&self.hookd);
        Serve {
            id: node.id,
            listen: node.api,
            peer_listen: node.peer,
            data_dir: &node.data_dir,
            initial_cluster: (!node.joins).then_some(self.initial.as_str()),
        }
        .args(&mut cmd)
        .args(&self.extra_args)
        .envs(self.env.iter().map(|(k, v)| (k, v)))
        .env("LISTEN_FDS", "2")
        .env_remove("LISTEN_PID");
        process::log_to(&mut cmd, &node.log)?;
        cmd.fd_mappings(vec![
            FdMapping {
                parent_fd: OwnedFd::from(api),
                child_fd: 3,
            },
            FdMapping {
                parent_fd: OwnedFd::from(peer),
                child_fd: 4,
            },
        ])?;
        node.child = Some(cmd.spawn().context("spawn hookd")?);
        Ok(())
    }

    /// Prepares a node with the next id that starts with `--join` (and an empty data dir);
    /// its index. Start it with `spawn`.
    pub fn add_joining(&mut self) -> anyhow::Result<usize> {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        self.nodes.push(LocalNode::new(id, &self.dir, true)?);
        Ok(self.nodes.len() - 1)
    }

    /// The `--initial-cluster` value of the first nodes.
    pub fn initial_cluster(&self) -> &str {
        &self.initial
    }

    /// Starts every node.
    pub fn spawn_all(&mut self) -> anyhow::Result<()> {
        (0..self.nodes.len()).try_for_each(|i| self.spawn(i))
    }

    /// The process id of node `i`, while it runs (for `/proc/<pid>/status`).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            process::kill_and_reap(&mut child);
        }
    }

    /// SIGTERMs node `i` and waits up to `within` for it to exit (then SIGKILLs it and fails).
    pub fn terminate(&mut self, i: usize, within: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.nodes[i].child.take().context("node not running")?;
        process::sigterm(&child)?;
        match process::wait_until(&mut child, Instant::now() + within)? {
            Some(status) => Ok(status),
            None => {
                process::kill_and_reap(&mut child);
                bail!(
                    "node {} did not exit within {within:?} of SIGTERM",
                    self.nodes[i].id
                )
            }
        }
    }

    /// Waits up to `within` for node `i` to exit by itself: its status, or `None` if it still
    /// runs (or was not running).
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let Some(child) = self.nodes[i].child.as_mut() else {
            return Ok(None);
        };
        let status = process::wait_until(child, Instant::now() + within)?;
        if status.is_some() {
            self.nodes[i].child = None;
        }
        Ok(status)
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.nodes[i].api)
    }

    /// Node `i`'s log so far (empty if there is none).
    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Node `i`'s view of the leader id and term (none and 0 when it does not answer).
    pub async fn cluster_state(&self, http: &reqwest::Client, i: usize) -> (Option<u64>, u64) {
        let v: serde_json::Value = match http.get(self.url(i, "/v1/cluster")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        (v["leader_id"].as_u64(), v["term"].as_u64().unwrap_or(0))
    }

    /// The index of the leader the first running node that names a running one names.
    pub async fn leader(&self, http: &reqwest::Client) -> Option<usize> {
        for i in (0..self.nodes.len()).filter(|i| self.is_running(*i)) {
            let (Some(id), _) = self.cluster_state(http, i).await else {
                continue;
            };
            let l = self.nodes.iter().position(|n| n.id == id);
            if let Some(l) = l.filter(|l| self.is_running(*l)) {
                return Some(l);
            }
        }
        None
    }

    /// Polls `leader` every 5 ms until it names one, for up to `within`.
    pub async fn await_leader(
        &self,
        http: &reqwest::Client,
        within: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.leader(http).await {
                return Ok(l);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("no leader within {within:?}")
    }

    /// Polls node `i`'s `/readyz` (a read index confirmed with the leader) until it answers 200.
    pub async fn await_ready(
        &self,
        http: &reqwest::Client,
        i: usize,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let ready = http
                .get(self.url(i, "/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if ready.ok() == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {} not ready within {within:?}", self.nodes[i].id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Where a benchmark puts its cluster: `keep` (created if missing) or the temporary dir.
pub fn work_dir(keep: Option<&Path>, temp: &tempfile::TempDir) -> anyhow::Result<PathBuf> {
    let dir = keep.unwrap_or(temp.path()).to_path_buf();
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A listener on 127.0.0.1 and a port the kernel chose.
pub fn loopback_listener() -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")
}

/// Binds an address a node had before, for a restart (std sets SO_REUSEADDR), retrying for 5 s
/// while the old socket closes.
fn bind_retry(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("bind {addr}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The common settings of a client of hookd's API: no proxy, 10 s per request.
pub fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
}

/// A client of hookd's API (`http_builder`) that drops connections idle for 2 s, below hookd's
/// 5 s idle cut, so it never sends on one hookd is closing.
pub fn http() -> reqwest::Client {
    http_builder()
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `ms` as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Resident memory of process `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time process `pid` used so far (user + system, all threads), in ms (0 once it is gone).
pub fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    cpu_ms_of_stat(&stat, USER_HZ)
}

/// The clock ticks `/proc` counts CPU time in: 100 per second on every Linux (its ABI's USER_HZ).
const USER_HZ: u64 = 100;

/// `utime + stime` of a `/proc/<pid>/stat` line in ms: fields 14 and 15, counted after the
/// command name's closing parenthesis (the name itself may hold spaces).
fn cpu_ms_of_stat(stat: &str, ticks_per_s: u64) -> u64 {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    (ticks(11) + ticks(12)) * 1000 / ticks_per_s.max(1)
}

#[cfg(test)]
mod tests {
    use super::cpu_ms_of_stat;

    #[test]
    fn cpu_time_is_user_plus_system_after_the_command_name() {
        let stat = "4242 (hookd (serve) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9";
        assert_eq!(cpu_ms_of_stat(stat, 100), 3_000);
        assert_eq!(cpu_ms_of_stat(stat, 1000), 300);
        assert_eq!(cpu_ms_of_stat("garbage", 100), 0);
    }
}
