//! Three-node clusters: formation, replication, failover, crash recovery, minority behaviour.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::harness::{eventually, job, metric, metrics_text, TestCluster};

pub const ELECTION_WITHIN: Duration = Duration::from_secs(10);

pub fn others(leader: usize) -> Vec<usize> {
    (0..3).filter(|i| *i != leader).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_a_job_created_on_a_follower_is_read_everywhere() {
    let c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let follower = others(leader)[0];

    let (status, body) = c
        .post(follower, "/v1/jobs", &job("via-follower"))
        .await
        .expect("create");
    assert_eq!(status, 201, "create through a follower: {body}");
    assert_eq!(body["id"], "via-follower");

    // Linearizable reads on every node see the write at once.
    for i in 0..3 {
        let (status, body) = c.get(i, "/v1/jobs/via-follower").await.expect("read");
        assert_eq!(status, 200, "node {i}: {body}");
        assert_eq!(body["url"], "http://127.0.0.1:9/hook");
        assert_eq!(body["version"], 1);
    }

    // Every node describes the same membership, with API addresses recorded.
    let (_, cluster) = eventually(Duration::from_secs(5), "API addresses recorded", || async {
        let got = c.get(follower, "/v1/cluster").await?;
        let members = got.1["members"].as_array()?.clone();
        members
            .iter()
            .all(|m| m["api_addr"].is_string())
            .then_some(got)
    })
    .await;
    let members = cluster["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for m in members {
        let id = m["id"].as_u64().expect("id") as usize;
        assert_eq!(m["api_addr"], c.nodes[id - 1].api.to_string());
        assert_eq!(m["peer_addr"], c.nodes[id - 1].peer.to_string());
        assert_eq!(m["voter"], true);
    }
    assert_eq!(
        members.iter().filter(|m| m["role"] == "leader").count(),
        1,
        "exactly one leader: {cluster}"
    );
    // The members' health and lag, as the leader sees them, on the follower too (it asks).
    eventually(
        Duration::from_secs(5),
        "every member ok, lag known",
        || async {
            let (_, got) = c.get(follower, "/v1/cluster").await?;
            got["members"]
                .as_array()?
                .iter()
                .all(|m| m["health"] == "ok" && m["lag"].as_u64().is_some_and(|l| l < 100))
                .then_some(())
        },
    )
    .await;
    assert_eq!(cluster["access"], "all", "no token: everything");

    // A cluster this release made is in its format from the start; every member says which
    // release it runs, and finalizing has nothing to do.
    let version = env!("CARGO_PKG_VERSION");
    eventually(Duration::from_secs(5), "every member's version", || async {
        let (_, got) = c.get(follower, "/v1/cluster").await?;
        let all = got["members"]
            .as_array()?
            .iter()
            .all(|m| m["version"] == version);
        (all && got["format_version"] == 5).then_some(())
    })
    .await;
    let (status, body) = c
        .post(
            follower,
            "/v1/cluster/upgrade/finalize",
            &serde_json::json!({}),
        )
        .await
        .expect("finalize");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["format_version"], 5);
}

/// Creates `n` jobs named `{prefix}-{k}` through node `via`, returning the acknowledged ids.
async fn create_jobs(c: &TestCluster, via: usize, prefix: &str, n: usize) -> Vec<String> {
    let mut acked = Vec::new();
    for k in 0..n {
        let id = format!("{prefix}-{k}");
        if let Some((201, _)) = c.post(via, "/v1/jobs", &job(&id)).await {
            acked.push(id);
        }
    }
    acked
}

async fn job_ids(c: &TestCluster, i: usize, stale: bool) -> Option<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/jobs?limit=1000".to_string();
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        if stale {
            path.push_str("&consistency=stale");
        }
        let (status, body) = c.get(i, &path).await?;
        if status != 200 {
            return None;
        }
        for j in body["jobs"].as_array()? {
            ids.insert(j["id"].as_str()?.to_owned());
        }
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Some(ids),
        }
    }
}

/// Writers creating jobs through one node, each one create at a time, until stopped (or 2,000
/// creates each): every create's id and answer (`0` when no answer came).
struct CreatesInFlight {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    writers: Vec<tokio::task::JoinHandle<Vec<(String, u16)>>>,
}

impl CreatesInFlight {
    const WRITERS: usize = 8;

    fn start(c: &TestCluster, via: usize) -> CreatesInFlight {
        let (stop, answered) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let url = c.url(via, "/v1/jobs");
        let writers = (0..Self::WRITERS)
            .map(|w| {
                let (http, url) = (c.http.clone(), url.clone());
                let (stop, answered) = (stop.clone(), answered.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    for k in 0..2000 {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let id = format!("inflight-{w}-{k}");
                        let sent = http.post(&url).json(&job(&id)).send().await;
                        got.push((id, sent.map_or(0, |r| r.status().as_u16())));
                        answered.fetch_add(1, Ordering::AcqRel);
                    }
                    got
                })
            })
            .collect();
        CreatesInFlight {
            stop,
            answered,
            writers,
        }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Acquire)
    }

    async fn stop(self) -> Vec<(String, u16)> {
        self.stop.store(true, Ordering::Release);
        let mut all = Vec::new();
        for w in self.writers {
            all.extend(w.await.expect("a writer panicked"));
        }
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_elects_a_new_leader_loses_nothing_refuses_no_create_and_the_node_catches_up(
) {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let before = create_jobs(&c, others(leader)[0], "before", 20).await;
    assert_eq!(
        before.len(),
        20,
        "all creates succeed with a healthy cluster"
    );

    // Creates keep going through a follower while the leader dies.
    let inflight = CreatesInFlight::start(&c, others(leader)[0]);
    eventually(Duration::from_secs(10), "creates under way", || async {
        (inflight.answered() >= 40).then_some(())
    })
    .await;
    c.kill(leader);
    let killed_at = Instant::now();
    let survivors = others(leader);
    let new_leader = c.wait_leader(&survivors, ELECTION_WITHIN).await;
    assert_ne!(new_leader, leader);
    // A create whose forward was in flight to the dying leader is proposed again to the next
    // (`Command::repeatable`): each gets its own answer, 201, none a 503.
    let answered = inflight.answered();
    eventually(
        Duration::from_secs(10),
        "creates after the election",
        || async { (inflight.answered() >= answered + 40).then_some(()) },
    )
    .await;
    let inflight = inflight.stop().await;
    let refused: Vec<_> = inflight.iter().filter(|(_, s)| *s != 201).collect();
    assert!(
        refused.is_empty(),
        "creates refused around a leader's death: {refused:?}"
    );

    // Writes continue on the survivors.
    let (status, body) = eventually(
        Duration::from_secs(10),
        "a write after failover",
        || async {
            c.post(survivors[1], "/v1/jobs", &job("after-kill"))
                .await
                .filter(|(s, _)| *s == 201)
        },
    )
    .await;
    assert_eq!(status, 201, "{body}");
    eprintln!(
        "leader SIGKILL → first successful write: {:?}",
        killed_at.elapsed()
    );
    let during = create_jobs(&c, survivors[0], "during", 10).await;
    assert_eq!(during.len(), 10);

    for &i in &survivors {
        let ids = job_ids(&c, i, false).await.expect("list on a survivor");
        for id in before
            .iter()
            .chain(&during)
            .chain(inflight.iter().map(|(id, _)| id))
        {
            assert!(ids.contains(id), "node {i} lost acknowledged job {id}");
        }
        assert!(ids.contains("after-kill"));
    }

    // The killed node restarts from its data dir and catches up.
    c.spawn(leader);
    let expected: BTreeSet<String> = before
        .iter()
        .chain(&during)
        .chain(inflight.iter().map(|(id, _)| id))
        .cloned()
        .chain(["after-kill".to_string()])
        .collect();
    eventually(
        Duration::from_secs(20),
        "the restarted node to catch up",
        || async {
            let ids = job_ids(&c, leader, true).await?;
            (ids == expected).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_create_survives_killing_all_nodes_after_a_burst() {
    let c = TestCluster::start(3);
    c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let c = std::sync::Arc::new(c);
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0..15 {
                let id = format!("burst-{t}-{k}");
                if let Some((201, _)) = c.post(t % 3, "/v1/jobs", &job(&id)).await {
                    acked.push(id);
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("client task"));
    }
    assert!(acked.len() >= 200, "most creates succeed: {}", acked.len());
    // Kill every node the instant the last acknowledgement arrived.
    let mut c = std::sync::Arc::into_inner(c).expect("sole owner");
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    for i in 0..3 {
        let ids = eventually(Duration::from_secs(10), "a linearizable list", || {
            job_ids(&c, i, false)
        })
        .await;
        let missing: Vec<&String> = acked.iter().filter(|id| !ids.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "node {i} lost acknowledged jobs: {missing:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_majority_answers_503_no_leader_within_5s() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let (status, _) = c
        .post(leader, "/v1/jobs", &job("seen"))
        .await
        .expect("create");
    assert_eq!(status, 201);
    // The job's shard may be led by another node, which answers once it has applied the create;
    // a linearizable read here waits until this node has applied it too, so the stale read at
    // the end has it in local state.
    let (status, body) = c.get(leader, "/v1/jobs/seen").await.expect("read");
    assert_eq!(status, 200, "{body}");
    // Keep the old leader alone: it still believes it leads for a while, which is the hard case.
    for i in others(leader) {
        c.kill(i);
    }
    let checks: [(Method, &str, Option<Value>); 3] = [
        (Method::POST, "/v1/jobs", Some(job("lonely"))),
        (Method::GET, "/v1/jobs/seen", None),
        (Method::GET, "/v1/jobs", None),
    ];
    for (method, path, body) in checks {
        let started = Instant::now();
        let mut req = c.http.request(method.clone(), c.url(leader, path));
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("the node answers");
        let took = started.elapsed();
        assert_eq!(resp.status().as_u16(), 503, "{method} {path}");
        assert!(
            took < Duration::from_secs(5),
            "{method} {path} took {took:?}"
        );
        assert!(
            resp.headers().contains_key("retry-after"),
            "{method} {path} has Retry-After"
        );
        let body: Value = resp.json().await.expect("JSON error");
        assert_eq!(
            body["error"]["code"], "no_leader",
            "{method} {path}: {body}"
        );
    }
    // A stale read is still served from local state.
    let (status, body) = c
        .get(leader, "/v1/jobs/seen?consistency=stale")
        .await
        .expect("stale read");
    assert_eq!(status, 200, "{body}");
    let (status, _) = c.get(leader, "/readyz").await.expect("readyz");
    assert_eq!(status, 503, "a node without a leader is not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_purged_log_catches_up_by_snapshot() {
    let mut c = TestCluster::start_with(3, &["--snapshot-logs", "20"]);
    catch_up_by_snapshot(&mut c).await;
}

/// Kills a follower, deletes what it holds and writes past the purged log, restarts it, and
/// checks it caught up through a snapshot install. `c` runs with `--snapshot-logs 20`.
pub async fn catch_up_by_snapshot(c: &mut TestCluster) {
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let lagging = others(leader)[0];
    // Jobs the lagging node holds, then deleted while it is down: the snapshot it installs must
    // remove them, not only add what is new.
    let early = create_jobs(c, leader, "early", 10).await;
    eventually(
        Duration::from_secs(10),
        "the early jobs on the lagging node",
        || async {
            let ids = job_ids(c, lagging, true).await?;
            early.iter().all(|id| ids.contains(id)).then_some(())
        },
    )
    .await;
    c.kill(lagging);
    for id in &early {
        let (s, _) = c
            .send(leader, Method::DELETE, &format!("/v1/jobs/{id}"), None)
            .await
            .expect("delete");
        assert_eq!(s, 204);
    }
    let acked = create_jobs(c, leader, "snap", 120).await;
    assert_eq!(acked.len(), 120);
    c.spawn(lagging);
    let expected = job_ids(c, leader, false).await.expect("the leader's jobs");
    assert!(acked.iter().all(|id| expected.contains(id)));
    assert!(!early.iter().any(|id| expected.contains(id)));
    eventually(
        Duration::from_secs(20),
        "the lagging node to catch up",
        || async {
            let ids = job_ids(c, lagging, true).await?;
            (ids == expected).then_some(())
        },
    )
    .await;
    assert!(
        c.log_of(lagging).contains("installed snapshot"),
        "the lagging node caught up through a snapshot:\n{}",
        c.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_traffic_needs_the_secret_and_the_right_target_node() {
    let c = TestCluster::start_with(3, &["--peer-secret", "peer-s3cret"]);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let (s, _) = c
        .post(others(leader)[0], "/v1/jobs", &job("secret-ok"))
        .await
        .expect("create");
    assert_eq!(
        s, 201,
        "a cluster with a peer secret works, forwarding included"
    );

    let peer_url = format!("http://{}/forward/read-index", c.nodes[leader].peer);
    let target = c.nodes[leader].id.to_string();
    let no_secret = c
        .http
        .post(&peer_url)
        .header("hookd-target-node", &target)
        .json(&())
        .send()
        .await;
    assert_eq!(no_secret.expect("answer").status().as_u16(), 401);
    // Forged Raft traffic and raw commands, without the secret or with a wrong one.
    for (path, body) in [
        (
            "/raft/append",
            serde_json::json!({"vote": {}, "entries": []}),
        ),
        ("/raft/snapshot", serde_json::json!({})),
        (
            "/forward/write",
            serde_json::json!({"delete_job": {"id": "secret-ok", "now_ms": 0}}),
        ),
    ] {
        for secret in [None, Some("peer-s3cre"), Some("peer-s3cretX")] {
            let mut req = c
                .http
                .post(format!("http://{}{path}", c.nodes[leader].peer))
                .header("hookd-target-node", &target)
                .json(&body);
            if let Some(s) = secret {
                req = req.bearer_auth(s);
            }
            let status = req.send().await.expect("answer").status().as_u16();
            assert_eq!(status, 401, "{path} with {secret:?}");
        }
    }
    let (s, _) = c.get(leader, "/v1/jobs/secret-ok").await.expect("get");
    assert_eq!(s, 200, "the forged delete was not applied");
    let wrong_target = c
        .http
        .post(&peer_url)
        .bearer_auth("peer-s3cret")
        .header("hookd-target-node", "99")
        .json(&())
        .send()
        .await;
    assert_eq!(wrong_target.expect("answer").status().as_u16(), 421);
    // The first leader records the cluster id shortly after the election.
    eventually(Duration::from_secs(5), "the cluster id", || async {
        let (_, v) = c.get(leader, "/v1/cluster").await?;
        v["cluster_id"].as_str().map(|_| ())
    })
    .await;
    let other_cluster = c
        .http
        .post(&peer_url)
        .bearer_auth("peer-s3cret")
        .header("hookd-target-node", &target)
        .header("hookd-cluster-id", "some-other-cluster")
        .json(&())
        .send()
        .await;
    assert_eq!(other_cluster.expect("answer").status().as_u16(), 409);
    // Raft traffic naming no cluster from a node that is no member (a brand-new cluster's
    // node aimed here by a mistake of addresses) is refused, once this cluster has its id:
    // openraft would take its term and log as this cluster's. A member naming none (one that
    // has not applied the id yet) is heard as ever.
    let vote = |node_id: u64| {
        serde_json::json!({"vote": {"leader_id": {"term": 1, "node_id": node_id}, "committed": false},
                           "last_log_id": null})
    };
    for (candidate, want) in [(9, 409), (others(leader)[0] as u64 + 1, 200)] {
        let answer = c
            .http
            .post(format!("http://{}/raft/vote", c.nodes[leader].peer))
            .bearer_auth("peer-s3cret")
            .header("hookd-target-node", &target)
            .json(&vote(candidate))
            .send()
            .await
            .expect("answer");
        assert_eq!(answer.status().as_u16(), want, "candidate {candidate}");
    }
    let (s, _) = c.get(leader, "/v1/jobs/secret-ok").await.expect("get");
    assert_eq!(s, 200, "the leader still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_writes_through_a_follower_than_it_forwards_at_once_all_succeed() {
    let c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let follower = others(leader)[0];
    // Deletes are never shed: each must be acknowledged, however many arrive at once. More than
    // the follower forwards at once (256) wait for a slot instead of opening a connection each
    // to the leader's peer port.
    const N: usize = 600;
    let ids = create_jobs(&c, leader, "burst", N).await;
    assert_eq!(ids.len(), N);
    let before = forwarded(&c).await;
    let paths: Vec<String> = ids.iter().map(|id| format!("/v1/jobs/{id}")).collect();
    let answers = futures::future::join_all(
        paths
            .iter()
            .map(|p| c.send(follower, Method::DELETE, p, None)),
    )
    .await;
    let mut by_status = std::collections::BTreeMap::new();
    for a in &answers {
        *by_status.entry(a.as_ref().map(|(s, _)| *s)).or_insert(0) += 1;
    }
    assert_eq!(by_status, [(Some(204), N)].into(), "{by_status:?}");
    assert!(
        !c.log_of(leader).contains("connection cap reached"),
        "{}",
        c.logs()
    );
    // The follower sent the writes waiting for the same leader together.
    let after = forwarded(&c).await;
    let (writes, requests) = (after.0 - before.0, after.1 - before.1);
    assert!(writes >= (N / 6) as f64, "forwarded {writes} of {N}");
    assert!(
        requests * 2.0 <= writes,
        "{writes} forwarded writes took {requests} requests"
    );
}

/// Writes forwarded to the nodes of `c` and the peer requests that carried them, summed over
/// the nodes.
async fn forwarded(c: &TestCluster) -> (f64, f64) {
    let mut sum = (0.0, 0.0);
    for i in 0..c.nodes.len() {
        let text = metrics_text(c, i).await.expect("metrics");
        sum.0 += metric(&text, "hookd_forwarded_writes_total").unwrap_or(0.0);
        sum.1 += metric(&text, "hookd_forwarded_write_requests_total").unwrap_or(0.0);
    }
    sum
}
