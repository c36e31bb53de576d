//! One target cannot hurt the others (SPEC §3): hostile targets on loopback (a black hole, an
//! endless body, a flood of headers, a port that refuses connections and later answers) beside
//! healthy ones; per-target caps, bounded reads, circuit breakers, `GET /v1/targets`, and the
//! `429 overloaded` write shedding of the API.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::harness::{
    create, eventually, job, metric, metrics_text, now_ms, rfc3339, runs, single, TestCluster,
};
use crate::sink::Sink;

/// How long any hostile server keeps one connection at most (the tests end well before).
const HOSTILE_CONN_MAX: Duration = Duration::from_secs(60);

/// `GET /v1/targets` on node `i` (first page of up to 1000).
async fn targets(c: &TestCluster, i: usize) -> Option<Vec<Value>> {
    let (s, v) = c.get(i, "/v1/targets?limit=1000").await?;
    assert_eq!(s, 200, "{v}");
    v["targets"].as_array().cloned()
}

/// The entry of `key` in node `i`'s `GET /v1/targets`, if it is listed.
async fn target(c: &TestCluster, i: usize, key: &str) -> Option<Value> {
    targets(c, i)
        .await?
        .into_iter()
        .find(|t| t["target"] == key)
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Nearest-rank percentile of `v` (sorted here).
fn percentile(v: &mut [i64], p: f64) -> i64 {
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A port on 127.0.0.1 that nothing listens on (bound, noted, released).
fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

/// Reads a request head (up to the blank line, at most 64 KiB); false if the peer went away.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head.len() < 64 << 10 {
        match timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                head.extend_from_slice(&buf[..n]);
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    return true;
                }
            }
            _ => return false,
        }
    }
    false
}

/// Reads and discards until the peer closes (or `HOSTILE_CONN_MAX`): holds the connection.
async fn drain_until_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = timeout(HOSTILE_CONN_MAX, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A target that accepts connections, reads them and never answers.
struct BlackHole {
    addr: SocketAddr,
    /// Connections open now, and the most ever open at once.
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        let (l, addr) = listen().await;
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (o, p) = (open.clone(), peak.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (o, p) = (o.clone(), p.clone());
                tokio::spawn(async move {
                    let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    drain_until_closed(&mut s).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        BlackHole { addr, open, peak }
    }
}

/// A target that answers `200` with a chunked body that never ends.
struct EndlessBody {
    addr: SocketAddr,
    /// Connections answered, and those the client closed while the body was streaming.
    answered: Arc<AtomicUsize>,
    cut_off: Arc<AtomicUsize>,
}

impl EndlessBody {
    async fn start() -> EndlessBody {
        let (l, addr) = listen().await;
        let answered = Arc::new(AtomicUsize::new(0));
        let cut_off = Arc::new(AtomicUsize::new(0));
        let (a, k) = (answered.clone(), cut_off.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (a, k) = (a.clone(), k.clone());
                tokio::spawn(async move {
                    if !read_head(&mut s).await {
                        return;
                    }
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                                transfer-encoding: chunked\r\n\r\n";
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    a.fetch_add(1, Ordering::SeqCst);
                    let mut chunk = format!("{:x}\r\n", 16 << 10).into_bytes();
                    chunk.extend(std::iter::repeat_n(b'x', 16 << 10));
                    chunk.extend_from_slice(b"\r\n");
                    let deadline = Instant::now() + HOSTILE_CONN_MAX;
                    while Instant::now() < deadline {
                        match timeout(Duration::from_secs(5), s.write_all(&chunk)).await {
                            Ok(Ok(())) => {}
                            // The client closed the connection mid-body.
                            Ok(Err(_)) => {
                                k.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            // The client stopped reading but holds the connection.
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        EndlessBody {
            addr,
            answered,
            cut_off,
        }
    }
}

/// A target whose response has 10,000 header lines.
async fn many_headers() -> SocketAddr {
    let (l, addr) = listen().await;
    let mut resp = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..10_000 {
        resp.push_str(&format!("x-h{i:05}: v\r\n"));
    }
    resp.push_str("content-length: 0\r\n\r\n");
    let resp = Arc::new(resp);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let resp = resp.clone();
            tokio::spawn(async move {
                if read_head(&mut s).await && s.write_all(resp.as_bytes()).await.is_ok() {
                    drain_until_closed(&mut s).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_target_holds_only_its_own_slots_and_others_keep_their_cadence() {
    let sink = Sink::start().await;
    let hole = BlackHole::start().await;
    // One shard: with several, each shard's leader enforces its share of the cap, rounded down
    // (`shards.rs`), and this test counts the one cap's attempts.
    let c = single(&[
        "--host-concurrency",
        "4",
        "--deliveries-max",
        "16",
        "--shards",
        "1",
    ])
    .await;
    let hole_key = hole.addr.to_string();
    let start = (now_ms() / 1000 + 3) * 1000;
    // 20 runs per second into the black hole, each held for its whole 10 s timeout.
    for k in 0..20 {
        create(
            &c,
            0,
            json!({"id": format!("hole-{k}"), "url": format!("http://{hole_key}/h"),
                   "schedule": {"every": "1s", "start_at": rfc3339(start)}, "timeout": "10s",
                   "retry": {"max_attempts": 1}}),
        )
        .await;
    }
    let healthy = ["ok-0", "ok-1", "ok-2"];
    for id in healthy {
        create(
            &c,
            0,
            json!({"id": id, "url": sink.url("/ok"),
                   "schedule": {"every": "1s", "start_at": rfc3339(start)}}),
        )
        .await;
    }
    assert!(now_ms() < start, "jobs created before their first run");

    // Each healthy job's runs due in the first seven seconds all arrive, on time. The wait is
    // bounded by the window itself: a run still missing well after it is a failure.
    let window = 7;
    let window_end = start + window as i64 * 1000;
    let in_window = |id: &str| {
        sink.of(id)
            .into_iter()
            .filter(|r| r.scheduled_ms() < window_end)
            .collect::<Vec<_>>()
    };
    eventually(
        Duration::from_secs(20),
        "the healthy window delivered or over",
        || async {
            let all = healthy.iter().all(|id| in_window(id).len() >= window);
            (all || now_ms() > window_end + 2000).then_some(())
        },
    )
    .await;
    let mut lateness = Vec::new();
    for id in healthy {
        let got = in_window(id);
        let due: BTreeSet<i64> = got.iter().map(|r| r.scheduled_ms()).collect();
        for k in 0..window as i64 {
            assert!(
                due.contains(&(start + k * 1000)),
                "{id}: run due at start + {k} s missing beside the black hole: {due:?}"
            );
        }
        lateness.extend(got.iter().map(|r| r.wall_ms - r.scheduled_ms()));
    }
    let p50 = percentile(&mut lateness, 50.0);
    let p99 = percentile(&mut lateness, 99.0);
    eprintln!("healthy lateness beside a black hole: p50 {p50} ms, p99 {p99} ms");
    // With one shared queue the healthy runs would wait for the black hole's 10 s timeouts.
    assert!(
        p99 < 500,
        "healthy runs stay on time: p50 {p50} ms, p99 {p99} ms, all {lateness:?}"
    );
    assert!(
        lateness.iter().all(|l| *l >= 0),
        "nothing early: {lateness:?}"
    );

    // The black hole fills exactly its own cap and queues the rest in its own queue.
    let hole_now = eventually(
        Duration::from_secs(5),
        "the black hole at its cap with runs waiting",
        || async {
            let t = target(&c, 0, &hole_key).await?;
            (t["in_flight"] == 4 && t["waiting"].as_u64()? >= 20).then_some(t)
        },
    )
    .await;
    assert_eq!(hole_now["circuit"], "closed", "{hole_now}");
    // The healthy target (listed only while it has work or an error) is never backed up.
    if let Some(ok) = target(&c, 0, &sink.addr.to_string()).await {
        assert_eq!(ok["last_error"], Value::Null, "{ok}");
        assert!(
            ok["waiting"].as_u64().expect("waiting") <= healthy.len() as u64,
            "the healthy target is not starved: {ok}"
        );
    }
    // Seen from the black hole itself: never more connections than the host cap.
    let peak = hole.peak.load(Ordering::SeqCst);
    assert_eq!(
        peak,
        4,
        "the black hole saw at most 4 connections at once (now {})",
        hole.open.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_response_body_is_cut_off_and_the_node_memory_stays_bounded() {
    let endless = EndlessBody::start().await;
    let c = single(&[]).await;
    let pid = c.pid(0).expect("node running");
    create(
        &c,
        0,
        json!({"id": "endless", "url": format!("http://{}/e", endless.addr),
               "schedule": {"every": "1s"}, "timeout": "2s", "retry": {"max_attempts": 1}}),
    )
    .await;
    let (rss0, hwm0) = (proc_kib(pid, "VmRSS"), proc_kib(pid, "VmHWM"));
    // About 8 s of runs, one endless body each.
    eventually(
        Duration::from_secs(15),
        "8 endless bodies served",
        || async { (endless.answered.load(Ordering::SeqCst) >= 8).then_some(()) },
    )
    .await;
    let (rss1, hwm1) = (proc_kib(pid, "VmRSS"), proc_kib(pid, "VmHWM"));
    eprintln!("endless body: VmRSS {rss0} -> {rss1} KiB, VmHWM {hwm0} -> {hwm1} KiB");
    let bound = 64 << 10;
    assert!(
        rss1.saturating_sub(rss0) < bound,
        "RSS grew {} KiB",
        rss1 - rss0
    );
    assert!(
        hwm1.saturating_sub(hwm0) < bound,
        "peak RSS grew {} KiB",
        hwm1 - hwm0
    );
    // hookd closed each connection mid-body rather than reading on until its timeout.
    eventually(Duration::from_secs(5), "connections cut off", || async {
        (endless.cut_off.load(Ordering::SeqCst) >= 7).then_some(())
    })
    .await;
    // Success is decided by the status: the runs are recorded as delivered.
    let recorded = eventually(Duration::from_secs(5), "runs recorded", || async {
        let r = runs(&c, 0, "endless").await;
        (r.iter().filter(|r| r["status"] == "succeeded").count() >= 6).then_some(r)
    })
    .await;
    for run in recorded.iter().filter(|r| r["status"] == "succeeded") {
        let a = &run["attempts"][0];
        assert_eq!(a["status_code"], 200, "{run}");
        assert_eq!(a["error"], Value::Null, "{run}");
        assert!(
            a["duration_ms"].as_u64().expect("duration") < 1500,
            "the body read stops at its bound, not at the 2 s timeout: {run}"
        );
    }
    assert!(
        recorded.iter().all(|r| r["status"] == "succeeded"
            || r["status"] == "in_flight"
            || r["status"] == "pending"),
        "no run failed: {recorded:?}"
    );
    let (s, _) = c.get(0, "/healthz").await.expect("healthz");
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_target_opens_its_circuit_which_closes_once_the_target_answers() {
    let port = refused_port();
    let key = format!("127.0.0.1:{port}");
    let c = single(&[]).await;
    // Circuit events go to a notification (SPEC §3a).
    let events = Sink::start().await;
    let (s, _) = c
        .send(
            0,
            reqwest::Method::PUT,
            "/v1/notifications/circuits",
            Some(&json!({"url": events.url("/circuits"),
                         "events": ["target.circuit_opened", "target.circuit_closed"]})),
        )
        .await
        .expect("put notification");
    assert_eq!(s, 201);
    let jobs: Vec<String> = (0..25).map(|k| format!("refused-{k}")).collect();
    for id in &jobs {
        create(
            &c,
            0,
            json!({"id": id, "url": format!("http://{key}/r"), "schedule": {"every": "1s"},
                   "retry": {"max_attempts": 30, "initial_backoff": "300ms", "max_backoff": "1s",
                             "jitter": 0.0}}),
        )
        .await;
    }
    let open = eventually(Duration::from_secs(10), "the circuit open", || async {
        let t = target(&c, 0, &key).await?;
        (t["circuit"] == "open").then_some(t)
    })
    .await;
    let err = open["last_error"].as_str().unwrap_or("");
    assert!(err.contains("connect"), "the last error is shown: {open}");
    let until = open["open_until"].as_str().expect("open_until while open");
    chrono::DateTime::parse_from_rfc3339(until).expect("open_until is RFC3339");
    eventually(
        Duration::from_secs(5),
        "open circuit in /metrics",
        || async {
            let text = metrics_text(&c, 0).await?;
            // One circuit per shard that sends to the target (each has its own).
            let open = metric(&text, "hookd_target_circuits{state=\"open\"}")?;
            let opened = metric(&text, "hookd_target_circuit_opened_total")?;
            (open >= 1.0 && opened >= open).then_some(())
        },
    )
    .await;
    let told = |kind: &'static str| {
        let events = events.clone();
        let key = key.clone();
        async move {
            let got = events.all();
            let found: Vec<serde_json::Value> = got
                .iter()
                .filter(|r| r.header("hookd-event-type") == kind)
                .filter_map(|r| serde_json::from_slice(&r.body).ok())
                .filter(|b: &serde_json::Value| b["target"] == key.as_str())
                .collect();
            (!found.is_empty()).then_some(found)
        }
    };
    let opened = eventually(
        Duration::from_secs(10),
        "target.circuit_opened told",
        || told("target.circuit_opened"),
    )
    .await;
    assert_eq!(opened[0]["type"], "target.circuit_opened", "{opened:?}");
    let before = std::time::Instant::now();

    // The target comes back on the same port: a probe closes the circuit, deliveries resume.
    let sink = Sink::start_on(([127, 0, 0, 1], port).into()).await;
    eventually(Duration::from_secs(20), "the circuit closed", || async {
        let t = target(&c, 0, &key).await;
        // An idle target with a closed circuit and no error is no longer listed.
        t.is_none_or(|t| t["circuit"] == "closed").then_some(())
    })
    .await;
    eprintln!(
        "circuit closed {:?} after the target came back",
        before.elapsed()
    );
    eventually(
        Duration::from_secs(10),
        "target.circuit_closed told",
        || told("target.circuit_closed"),
    )
    .await;
    let ids: BTreeSet<String> = events
        .all()
        .iter()
        .map(|r| r.webhook_id().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "one event per change: {ids:?}");
    eventually(
        Duration::from_secs(10),
        "every job delivered again",
        || async {
            let got = sink.all();
            let ids: BTreeSet<&str> = got.iter().map(|r| r.job_id()).collect();
            (jobs.iter().all(|j| ids.contains(j.as_str()))).then_some(())
        },
    )
    .await;
    let retried = sink
        .all()
        .iter()
        .filter(|r| r.header("hookd-attempt") != "1")
        .count();
    assert!(
        retried > 0,
        "runs that waited behind the open circuit are delivered as later attempts"
    );
    eventually(
        Duration::from_secs(5),
        "no open circuit in /metrics",
        || async {
            let text = metrics_text(&c, 0).await?;
            (metric(&text, "hookd_target_circuits{state=\"open\"}")? == 0.0).then_some(())
        },
    )
    .await;
}

/// What one request of the overload burst got.
struct Answer {
    delete: bool,
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_leader_sheds_new_work_with_429_but_never_deletes_or_pauses() {
    let c = single(&["--write-backlog-max", "1"]).await;
    let body =
        |id: String| json!({"id": id, "url": "http://127.0.0.1:9/x", "schedule": {"after": "1h"}});
    // Jobs to delete and pause during the bursts.
    let (rounds, stops) = (3, 10);
    // One at a time; the node's own writes may still be in the backlog right after start.
    for r in 0..rounds {
        for k in 0..stops {
            for id in [format!("del-{r}-{k}"), format!("pau-{r}-{k}")] {
                eventually(Duration::from_secs(5), "a lone create accepted", || async {
                    let (s, v) = c.post(0, "/v1/jobs", &body(id.clone())).await?;
                    assert!(s == 201 || s == 429, "{id}: {s} {v}");
                    (s == 201).then_some(())
                })
                .await;
            }
        }
    }
    let mut created = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for r in 0..rounds {
        let mut set = JoinSet::new();
        let send = |method: Method, path: String, body: Option<Value>| {
            let (http, url) = (c.http.clone(), c.url(0, &path));
            async move {
                let mut req = http.request(method, url);
                if let Some(b) = body {
                    req = req.json(&b);
                }
                let resp = req.send().await.expect("an answer");
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = resp.json().await.unwrap_or(Value::Null);
                (status, retry_after, body)
            }
        };
        for k in 0..300 {
            let id = format!("burst-{r}-{k}");
            let fut = send(Method::POST, "/v1/jobs".into(), Some(body(id.clone())));
            set.spawn(async move {
                let (status, retry_after, body) = fut.await;
                (
                    id,
                    Answer {
                        delete: false,
                        status,
                        retry_after,
                        body,
                    },
                )
            });
            if k % 30 == 15 {
                let n = k / 30;
                for (method, path, delete) in [
                    (Method::DELETE, format!("/v1/jobs/del-{r}-{n}"), true),
                    (Method::POST, format!("/v1/jobs/pau-{r}-{n}/pause"), false),
                ] {
                    let fut = send(method, path.clone(), None);
                    set.spawn(async move {
                        let (status, retry_after, body) = fut.await;
                        let answer = Answer {
                            delete,
                            status,
                            retry_after,
                            body,
                        };
                        (path, answer)
                    });
                }
            }
        }
        while let Some(done) = set.join_next().await {
            let (what, a) = done.expect("request task");
            assert!(
                a.status < 500,
                "{what}: no 5xx under load: {} {}",
                a.status,
                a.body
            );
            if what.starts_with("burst-") {
                match a.status {
                    201 => {
                        created.insert(what);
                    }
                    429 => {
                        assert_eq!(a.body["error"]["code"], "overloaded", "{what}: {}", a.body);
                        let secs: u64 = a
                            .retry_after
                            .as_deref()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or_else(|| panic!("{what}: 429 without Retry-After"));
                        assert!(secs >= 1, "{what}: Retry-After {secs}");
                        refused.insert(what);
                    }
                    s => panic!("{what}: a create answers 201 or 429, got {s} {}", a.body),
                }
            } else {
                let want = if a.delete { 204 } else { 200 };
                assert_eq!(a.status, want, "{what} is never shed: {}", a.body);
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    assert!(
        !refused.is_empty(),
        "a burst over a backlog bound of 1 sheds some creates ({} created)",
        created.len()
    );
    eprintln!(
        "overload burst: {} created, {} refused with 429",
        created.len(),
        refused.len()
    );

    // After the burst the backlog drains and a create goes through.
    eventually(
        Duration::from_secs(5),
        "a create accepted again",
        || async {
            let (s, v) = c.post(0, "/v1/jobs", &body("after-burst".into())).await?;
            assert!(s == 201 || s == 429, "{s} {v}");
            (s == 201).then_some(())
        },
    )
    .await;
    // A refused create left nothing behind; an accepted one is there.
    let mut listed = BTreeSet::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let path = match &after {
            Some(a) => format!("/v1/jobs?limit=1000&after={a}"),
            None => "/v1/jobs?limit=1000".into(),
        };
        let (s, v) = c.get(0, &path).await.expect("list");
        assert_eq!(s, 200, "{v}");
        for j in v["jobs"].as_array().expect("jobs") {
            listed.insert(j["id"].as_str().expect("id").to_owned());
        }
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert!(created.is_subset(&listed), "every 201 job is stored");
    assert!(
        refused.is_disjoint(&listed),
        "no 429 job is stored: {:?}",
        refused.intersection(&listed).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_on_a_follower_are_the_leaders_and_the_limit_is_validated() {
    let c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let mut keys: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", refused_port()))
        .collect();
    keys.sort();
    for (k, key) in keys.iter().enumerate() {
        create(
            &c,
            follower,
            json!({"id": format!("down-{k}"), "url": format!("http://{key}/d"),
                   "schedule": {"after": "0s"},
                   "retry": {"max_attempts": 100, "initial_backoff": "1s", "jitter": 0.0}}),
        )
        .await;
    }
    // A target with an error stays listed while its runs retry.
    eventually(
        Duration::from_secs(10),
        "both targets failing on the leader",
        || async {
            let t = targets(&c, leader).await?;
            keys.iter()
                .all(|k| {
                    t.iter()
                        .any(|x| x["target"] == k.as_str() && x["last_error"].is_string())
                })
                .then_some(())
        },
    )
    .await;
    let fields: BTreeSet<&str> = [
        "target",
        "in_flight",
        "waiting",
        "last_error",
        "circuit",
        "open_until",
        "consecutive_failures",
        "policy",
    ]
    .into();
    let mut names = Vec::new();
    for i in [leader, follower] {
        let (s, v) = c.get(i, "/v1/targets").await.expect("targets");
        assert_eq!(s, 200, "node {i}: {v}");
        let top: BTreeSet<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(top, ["next", "targets"].into(), "node {i}: {v}");
        assert_eq!(v["next"], Value::Null, "node {i}: {v}");
        let list = v["targets"].as_array().expect("targets");
        for t in list {
            let got: BTreeSet<&str> = t
                .as_object()
                .expect("object")
                .keys()
                .map(|k| k.as_str())
                .collect();
            assert_eq!(got, fields, "node {i}: {t}");
            assert!(t["last_error"].is_string(), "node {i}: {t}");
            assert!(
                ["closed", "open", "half_open"].contains(&t["circuit"].as_str().expect("circuit")),
                "node {i}: {t}"
            );
            assert!(
                t["in_flight"].is_u64() && t["waiting"].is_u64(),
                "node {i}: {t}"
            );
        }
        let n: Vec<String> = list
            .iter()
            .map(|t| t["target"].as_str().expect("target").to_owned())
            .collect();
        names.push(n);
    }
    assert_eq!(names[0], keys, "the leader lists both targets in key order");
    assert_eq!(
        names[1], names[0],
        "the follower shows the leader's targets"
    );

    // Paging through the follower.
    let (s, p1) = c.get(follower, "/v1/targets?limit=1").await.expect("page");
    assert_eq!(s, 200, "{p1}");
    assert_eq!(p1["targets"].as_array().map(Vec::len), Some(1), "{p1}");
    assert_eq!(p1["targets"][0]["target"], keys[0].as_str(), "{p1}");
    assert_eq!(p1["next"], keys[0].as_str(), "{p1}");
    let (s, p2) = c
        .get(follower, &format!("/v1/targets?limit=1&after={}", keys[0]))
        .await
        .expect("page");
    assert_eq!(s, 200, "{p2}");
    assert_eq!(p2["targets"][0]["target"], keys[1].as_str(), "{p2}");
    assert_eq!(p2["next"], Value::Null, "{p2}");

    for i in [leader, follower] {
        for bad in ["limit=0", "limit=1001", "limit=x", "color=red"] {
            let (s, v) = c
                .get(i, &format!("/v1/targets?{bad}"))
                .await
                .expect("targets");
            assert_eq!(
                (s, &v["error"]["code"]),
                (400, &json!("invalid_parameter")),
                "node {i}, {bad}: {v}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_ten_thousand_headers_fails_its_attempt_and_the_node_stays_healthy() {
    let sink = Sink::start().await;
    let flood = many_headers().await;
    let c = single(&[]).await;
    create(
        &c,
        0,
        json!({"id": "alive", "url": sink.url("/a"), "schedule": {"every": "1s"}}),
    )
    .await;
    create(
        &c,
        0,
        json!({"id": "flood", "url": format!("http://{flood}/f"), "schedule": {"after": "0s"},
               "timeout": "5s", "retry": {"max_attempts": 1}}),
    )
    .await;
    let failed = eventually(Duration::from_secs(10), "the flood run failed", || async {
        let r = runs(&c, 0, "flood").await;
        r.into_iter().find(|r| r["status"] == "failed")
    })
    .await;
    let a = &failed["attempts"][0];
    assert_eq!(a["status_code"], Value::Null, "{failed}");
    let err = a["error"].as_str().unwrap_or("");
    assert!(!err.is_empty(), "the attempt names its error: {failed}");
    eprintln!("10,000 headers: {err}");
    // The node still serves and delivers.
    let (s, _) = c.get(0, "/healthz").await.expect("healthz");
    assert_eq!(s, 200);
    let before = sink.of("alive").len();
    sink.wait_for("alive", before + 2, Duration::from_secs(10))
        .await;
}

/// SPEC §7 "Supervision": a panicking attempt gives its delivery slot back and is counted
/// (`hookd_task_panics_total{task="attempt"}`); a run whose attempt panics twice is recorded
/// failed with error `internal` instead of blocking its target, whose other jobs go on (one
/// slot per target here). Debug builds panic on purpose in an attempt of a job with
/// `x-hookd-test-panic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_attempt_releases_its_slot_and_its_run_fails_as_internal() {
    let sink = Sink::start().await;
    let c = single(&["--host-concurrency", "1"]).await;
    let mut bad = job("panics");
    bad["url"] = json!(sink.url("/p"));
    bad["headers"] = json!({"x-hookd-test-panic": "1"});
    bad["schedule"] = json!({"after": "0s"});
    create(&c, 0, bad).await;
    create(
        &c,
        0,
        json!({"id": "neighbour", "url": sink.url("/n"), "schedule": {"every": "1s"}}),
    )
    .await;
    let run = eventually(Duration::from_secs(15), "the run failed", || async {
        let runs = runs(&c, 0, "panics").await;
        runs.into_iter().find(|r| r["status"] == "failed")
    })
    .await;
    let attempts = run["attempts"].as_array().expect("attempts");
    assert_eq!(
        attempts.last().map(|a| &a["error"]),
        Some(&json!("internal")),
        "{run}"
    );
    assert!(sink.of("panics").is_empty(), "nothing was sent");
    // The target's one slot is free: its other job keeps firing.
    let before = sink.of("neighbour").len();
    sink.wait_for("neighbour", before + 2, Duration::from_secs(10))
        .await;
    let text = metrics_text(&c, 0).await.expect("metrics");
    assert!(
        metric(&text, "hookd_task_panics_total{task=\"attempt\"}") >= Some(2.0),
        "{text}"
    );
}
