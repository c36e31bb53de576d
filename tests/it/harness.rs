//! Test harness: real `hookd` processes on loopback, started by the benchmarks' launcher
//! (`hookd_jepsen::local`): listeners bound on port 0 and handed over by socket activation, so no
//! test picks a fixed port. `TestCluster` adds what tests want: panics instead of errors, a
//! temporary dir, an HTTP client, JSON requests, leader agreement and the nodes' logs.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use hookd_jepsen::local::LocalCluster;
pub use hookd_jepsen::local::{now_ms, rfc3339};
use serde_json::Value;
use tempfile::TempDir;
use tokio::time::Instant;

pub const HOOKD: &str = env!("CARGO_BIN_EXE_hookd");

/// A cluster of `hookd` processes that are killed when the value is dropped. Its nodes, their
/// addresses, `kill`, `pid`, `url` and `log_of` are those of the `LocalCluster` it derefs to.
pub struct TestCluster {
    cluster: LocalCluster,
    /// Trusts the cluster's CA when it serves its API over TLS (then `scheme` is `https`).
    pub http: reqwest::Client,
    /// Holds the data dirs and logs; removed on drop, after `cluster` killed the nodes.
    _dir: TempDir,
}

impl Deref for TestCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }
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
        let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut cluster =
            LocalCluster::new(Path::new(HOOKD), dir.path(), n, &extra).expect("place nodes");
        cluster
            .env
            .push(("HOOKD_LOG".into(), "info,openraft=warn,sled=warn".into()));
        TestCluster {
            cluster,
            http: hookd_jepsen::local::http_builder()
                .build()
                .expect("http client"),
            _dir: dir,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request of `http` from now on (and so
    /// of `get`, `send`, `post`, `wait_leader`), for nodes run with `--api-token`.
    pub fn authorize(&mut self, token: &str) {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {token}")
            .parse()
            .expect("a token is a header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
        self.http = hookd_jepsen::local::http_builder()
            .default_headers(headers)
            .build()
            .expect("http client");
    }

    /// Starts (or restarts) node `i` (0-based) on its addresses.
    pub fn spawn(&mut self, i: usize) {
        self.cluster.spawn(i).expect("spawn hookd");
    }

    /// Prepares a node with the next id and an empty data dir that starts with `--join`, and
    /// returns its index (start it with `spawn`).
    pub fn add_joining_node(&mut self) -> usize {
        self.cluster.add_joining().expect("place a node")
    }

    /// Waits up to `within` for node `i` to exit by itself; its status, or `None` if it still
    /// runs.
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
        self.cluster.wait_exit(i, within).expect("wait")
    }

    /// SIGTERMs node `i` and returns its exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        self.cluster
            .terminate(i, Duration::from_secs(15))
            .expect("node exits after SIGTERM")
    }

    /// GET returning (status, JSON body); connection errors are `None`.
    pub async fn get(&self, i: usize, path: &str) -> Option<(u16, Value)> {
        self.send(i, reqwest::Method::GET, path, None).await
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
                leaders.push(self.cluster_state(&self.http, i).await.0);
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

/// Creates a job through node `i`, expecting `201`.
pub async fn create(c: &TestCluster, i: usize, body: Value) -> Value {
    let (s, v) = c.post(i, "/v1/jobs", &body).await.expect("create");
    assert_eq!(s, 201, "{v}");
    v
}

/// Jobs `(id, team)` labelled `team`, each with three runs (one due at once, two triggers)
/// that fail at their one attempt: nothing listens on port 9.
pub async fn three_failing_runs_each(c: &TestCluster, jobs: &[(&str, &str)]) {
    for (id, team) in jobs {
        let mut body = job(id);
        body["schedule"] = serde_json::json!({"after": "0s"});
        body["retry"] = serde_json::json!({"max_attempts": 1});
        body["labels"] = serde_json::json!({"team": team});
        create(c, 0, body).await;
        for _ in 0..2 {
            let (s, v) = c
                .post(0, &format!("/v1/jobs/{id}/trigger"), &serde_json::json!({}))
                .await
                .expect("trigger");
            assert_eq!(s, 202, "{v}");
        }
    }
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
