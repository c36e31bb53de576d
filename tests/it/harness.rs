//! Test harness: real `hookd` processes on loopback, with listeners the test binds on port 0
//! and hands over by socket activation, so no test picks a fixed port.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use serde_json::Value;
use tempfile::TempDir;
use tokio::time::Instant;

pub const HOOKD: &str = env!("CARGO_BIN_EXE_hookd");

/// One node of a test cluster.
pub struct TestNode {
    pub id: u64,
    pub api: SocketAddr,
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Started with `--join` (added later through the API) instead of `--initial-cluster`.
    pub joins: bool,
    child: Option<Child>,
    /// Listeners bound for the first start; handed to the child and closed here.
    sockets: Option<(TcpListener, TcpListener)>,
}

impl TestNode {
    /// Node `id` under `dir`, its listeners bound on loopback port 0, not started.
    fn new(id: u64, dir: &std::path::Path, joins: bool) -> TestNode {
        let (api, peer) = (bind_loopback(), bind_loopback());
        TestNode {
            id,
            api: api.local_addr().expect("addr"),
            peer: peer.local_addr().expect("addr"),
            data_dir: dir.join(format!("node{id}")),
            log: dir.join(format!("node{id}.log")),
            joins,
            child: None,
            sockets: Some((api, peer)),
        }
    }
}

/// A cluster of `hookd` processes that are killed when the value is dropped.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub initial_cluster: String,
    pub extra_args: Vec<String>,
    pub http: reqwest::Client,
    /// `http`, or `https` for a cluster serving its API over TLS (then `http` trusts its CA).
    pub scheme: &'static str,
    /// Holds the data dirs and logs; removed on drop.
    _dir: TempDir,
}

fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

impl TestCluster {
    /// Starts `n` nodes that form one cluster.
    pub fn start(n: u64) -> TestCluster {
        Self::start_with(n, &[])
    }

    pub fn start_with(n: u64, extra_args: &[&str]) -> TestCluster {
        let mut c = Self::new(n, extra_args);
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        c
    }

    /// Prepares `n` nodes without starting them.
    pub fn new(n: u64, extra_args: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<TestNode> = (1..=n)
            .map(|id| TestNode::new(id, dir.path(), false))
            .collect();
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer))
            .collect::<Vec<_>>()
            .join(",");
        TestCluster {
            nodes,
            initial_cluster,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .expect("http client"),
            scheme: "http",
            _dir: dir,
        }
    }

    /// Starts (or restarts) node `i` (0-based) on its addresses.
    pub fn spawn(&mut self, i: usize) {
        let extra = self.extra_args.clone();
        let initial = self.initial_cluster.clone();
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {} already running", node.id);
        let (api, peer) = node
            .sockets
            .take()
            .unwrap_or_else(|| (rebind(node.api), rebind(node.peer)));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let mut cmd = Command::new(HOOKD);
        cmd.arg("serve")
            .args(["--node-id", &node.id.to_string()])
            .args(["--listen", &node.api.to_string()])
            .args(["--peer-listen", &node.peer.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir);
        if node.joins {
            cmd.arg("--join");
        } else {
            cmd.args(["--initial-cluster", &initial]);
        }
        cmd.args(&extra)
            .env("LISTEN_FDS", "2")
            .env_remove("LISTEN_PID")
            .env("HOOKD_LOG", "info,openraft=warn,sled=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
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
        ])
        .expect("fd mappings");
        node.child = Some(cmd.spawn().expect("spawn hookd"));
    }

    /// Prepares a node with the next id and an empty data dir that starts with `--join`, and
    /// returns its index (start it with `spawn`).
    pub fn add_joining_node(&mut self) -> usize {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        self.nodes.push(TestNode::new(id, self._dir.path(), true));
        self.nodes.len() - 1
    }

    /// Waits up to `within` for node `i` to exit by itself; its status, or `None` if it still
    /// runs.
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let child = self.nodes[i].child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait") {
                self.nodes[i].child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `i` and returns its exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let mut child = self.nodes[i].child.take().expect("node running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of node `i` while it runs (for reading `/proc/<pid>/status`).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.nodes[i].api)
    }

    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// GET returning (status, JSON body); connection errors are `None`.
    pub async fn get(&self, i: usize, path: &str) -> Option<(u16, Value)> {
        let resp = self.http.get(self.url(i, path)).send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Sends `method` with a JSON body, returning (status, JSON body).
    pub async fn send(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Option<(u16, Value)> {
        let mut req = self.http.request(method, self.url(i, path));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    pub async fn post(&self, i: usize, path: &str, body: &Value) -> Option<(u16, Value)> {
        self.send(i, reqwest::Method::POST, path, Some(body)).await
    }

    /// Waits until every node in `among` reports the same leader, which is one of `among`.
    pub async fn wait_leader(&self, among: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for &i in among {
                let leader = self
                    .get(i, "/v1/cluster")
                    .await
                    .and_then(|(_, v)| v["leader_id"].as_u64());
                leaders.push(leader);
            }
            if let Some(Some(l)) = leaders.first() {
                let idx = self.nodes.iter().position(|n| n.id == *l);
                if leaders.iter().all(|x| *x == Some(*l)) {
                    if let Some(idx) = idx.filter(|i| among.contains(i)) {
                        return idx;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {within:?}: {leaders:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// All node logs, for assertion messages.
    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                format!(
                    "--- node {} log ---\n{}",
                    self.nodes[i].id,
                    tail(&self.log_of(i), 40)
                )
            })
            .collect()
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Binds the address a node had before, for a restart (SO_REUSEADDR is set by std).
fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("rebind {addr}: {e}"),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal valid job body.
pub fn job(id: &str) -> Value {
    serde_json::json!({
        "id": id,
        "url": "http://127.0.0.1:9/hook",
        "schedule": {"after": "1h"},
    })
}

/// A one-node cluster with a leader.
pub async fn single(extra: &[&str]) -> TestCluster {
    let c = TestCluster::start_with(1, extra);
    c.wait_leader(&[0], Duration::from_secs(10)).await;
    c
}

/// Wall-clock unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("instant")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Creates a job through node `i`, expecting `201`.
pub async fn create(c: &TestCluster, i: usize, body: Value) -> Value {
    let (s, v) = c.post(i, "/v1/jobs", &body).await.expect("create");
    assert_eq!(s, 201, "{v}");
    v
}

/// Every run of `job` through node `i`, newest first.
pub async fn runs(c: &TestCluster, i: usize, job: &str) -> Vec<Value> {
    let (s, v) = c
        .get(i, &format!("/v1/jobs/{job}/runs?limit=1000"))
        .await
        .expect("runs");
    assert_eq!(s, 200, "{v}");
    v["runs"].as_array().expect("runs").clone()
}

/// Node `i`'s `/metrics` text.
pub async fn metrics_text(c: &TestCluster, i: usize) -> Option<String> {
    c.http
        .get(c.url(i, "/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The value of the sample `series` (name plus labels, exactly as exported) in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

/// Three nodes and a job `tick` firing every second at `sink` from the second after next, once
/// its first two runs arrived: the cluster, its leader and the first run's due instant.
pub async fn ticking_cluster(sink: &crate::sink::Sink) -> (TestCluster, usize, i64) {
    let c = TestCluster::start(3);
    let leader = c
        .wait_leader(&[0, 1, 2], crate::cluster::ELECTION_WITHIN)
        .await;
    let start = (now_ms() / 1000 + 2) * 1000;
    create(
        &c,
        leader,
        serde_json::json!({"id": "tick", "url": sink.url("/t"),
                           "schedule": {"every": "1s", "start_at": rfc3339(start)}}),
    )
    .await;
    sink.wait_for("tick", 2, Duration::from_secs(10)).await;
    (c, leader, start)
}

/// Once a run of `tick` due after `after_ms` arrived (waiting up to `within`): the instants
/// every second from `start` to the latest run that arrived at which none did, and that latest.
pub async fn ticks_missed(
    sink: &crate::sink::Sink,
    start: i64,
    after_ms: i64,
    within: Duration,
) -> (Vec<String>, i64) {
    let last = eventually(within, "deliveries of tick after the faults", || async {
        sink.of("tick")
            .iter()
            .map(|r| r.scheduled_ms())
            .filter(|d| *d > after_ms)
            .max()
    })
    .await;
    let due: std::collections::BTreeSet<i64> =
        sink.of("tick").iter().map(|r| r.scheduled_ms()).collect();
    let missing = (0..)
        .map(|k| start + k * 1000)
        .take_while(|d| *d <= last)
        .filter(|d| !due.contains(d))
        .map(rfc3339)
        .collect();
    (missing, last)
}
