//! A cluster of `hookd` processes on 127.0.0.1, each node's sockets bound here and handed over by
//! socket activation, so every port is free by construction and survives restarts.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use command_fds::{CommandFdExt, FdMapping};

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
}

impl LocalNode {
    /// Node `id` under `dir`, on free loopback ports, not started.
    fn new(id: u64, dir: &Path, joins: bool) -> anyhow::Result<LocalNode> {
        Ok(LocalNode {
            id,
            api: free_addr()?,
            peer: free_addr()?,
            data_dir: dir.join(format!("node{id}")),
            log: dir.join(format!("node{id}.log")),
            joins,
            child: None,
        })
    }
}

/// Three (or N) nodes on loopback. Dropping it kills every node.
pub struct LocalCluster {
    pub hookd: PathBuf,
    pub nodes: Vec<LocalNode>,
    pub extra_args: Vec<String>,
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
            nodes,
            extra_args: extra_args.to_vec(),
            initial,
        })
    }

    /// Starts node `i` (0-based), binding its addresses and passing the sockets as fds 3 and 4.
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            bail!("node {} is already running", node.id);
        }
        let api = bind_retry(node.api)?;
        let peer = bind_retry(node.peer)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("open {}", node.log.display()))?;
        let mut cmd = Command::new(&self.hookd);
        cmd.arg("serve")
            .args(["--node-id", &node.id.to_string()])
            .args(["--listen", &node.api.to_string()])
            .args(["--peer-listen", &node.peer.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir);
        if node.joins {
            cmd.arg("--join");
        } else {
            cmd.args(["--initial-cluster", &self.initial]);
        }
        cmd.args(&self.extra_args)
            .env("LISTEN_FDS", "2")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
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

    /// Prepares a node with the next id under `dir` that starts with `--join`; its index.
    pub fn add_joining(&mut self, dir: &Path) -> anyhow::Result<usize> {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        self.nodes.push(LocalNode::new(id, dir, true)?);
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

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `i` and waits up to `within` for it to exit.
    pub fn terminate(
        &mut self,
        i: usize,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.nodes[i].child.take().context("node not running")?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "node {} did not exit within {within:?} of SIGTERM",
                    self.nodes[i].id
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[i].api)
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

/// A loopback address with a port the kernel just handed out.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

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

/// The benchmarks' client for hookd's API: no proxy, 10 s per request.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(2)) // below hookd's 5 s idle cut
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

/// Node `i`'s view of the leader id and term (none and 0 when it does not answer).
pub async fn cluster_state(c: &LocalCluster, i: usize) -> (Option<u64>, u64) {
    let v: serde_json::Value = match http().get(c.url(i, "/v1/cluster")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    (v["leader_id"].as_u64(), v["term"].as_u64().unwrap_or(0))
}

/// The index of the leader node 0 names, within 20 s.
pub async fn await_leader(c: &LocalCluster) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let (Some(id), _) = cluster_state(c, 0).await {
            if let Some(i) = c.nodes.iter().position(|n| n.id == id) {
                return Ok(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no leader within 20 s")
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
