//! Shards (SPEC §8): several Raft groups per node, each with its own leader dispatching its own
//! jobs' runs, behind one API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hookd::shards::shard_of;
use serde_json::{json, Value};

use crate::harness::{eventually, TestCluster};
use crate::sink::Sink;

const SHARDS: u32 = 3;
const JOBS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_is_led_and_dispatched_on_its_own_and_the_api_is_one() {
    let sink = Sink::start().await;
    let c = TestCluster::start_with(3, &["--shards", "3"]);
    let leaders = |v: &Value| -> Option<BTreeMap<u32, u64>> {
        let shards = v["shards"].as_array()?;
        let led: BTreeMap<u32, u64> = shards
            .iter()
            .filter_map(|s| Some((s["id"].as_u64()? as u32, s["leader_id"].as_u64()?)))
            .collect();
        (led.len() == SHARDS as usize).then_some(led)
    };
    eventually(Duration::from_secs(30), "every shard led", || async {
        leaders(&c.get(0, "/v1/cluster").await?.1)
    })
    .await;

    // Creates through every node land in their jobs' shards and read back from any node.
    for k in 0..JOBS {
        let job = json!({"id": format!("s{k:02}"), "url": sink.url(&format!("/s{k:02}")),
                         "schedule": {"every": "1s"}});
        let (status, body) = c.post(k % 3, "/v1/jobs", &job).await.expect("create");
        assert_eq!(status, 201, "{body}");
    }
    let (status, made) = c
        .post(
            1,
            "/v1/jobs",
            &json!({"url": sink.url("/anon"), "schedule": {"after": "1h"}}),
        )
        .await
        .expect("create without an id");
    assert_eq!(status, 201, "{made}");
    let anon = made["id"].as_str().expect("an id").to_owned();
    let (status, _) = c.get(2, &format!("/v1/jobs/{anon}")).await.expect("read");
    assert_eq!(status, 200);
    let per: BTreeSet<u32> = (0..JOBS)
        .map(|k| shard_of(&format!("s{k:02}"), SHARDS))
        .collect();
    assert_eq!(per.len(), SHARDS as usize, "the ids cover every shard");

    // A list pages through every shard's jobs in id order, each once.
    let mut listed = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/v1/jobs?limit=5&after={after}");
        let (status, page) = c.get(2, &path).await.expect("list");
        assert_eq!(status, 200, "{page}");
        listed.extend(
            page["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .map(|j| j["id"].as_str().unwrap_or_default().to_owned()),
        );
        match page["next"].as_str() {
            Some(n) => after = n.to_owned(),
            None => break,
        }
    }
    let mut want: Vec<String> = (0..JOBS).map(|k| format!("s{k:02}")).collect();
    want.push(anon.clone());
    want.sort();
    assert_eq!(listed, want);

    // Each job's runs are sent by its shard's leader.
    for k in 0..JOBS {
        sink.wait_for(&format!("s{k:02}"), 2, Duration::from_secs(20))
            .await;
    }
    let led = leaders(&c.get(0, "/v1/cluster").await.expect("cluster").1).expect("led");
    let mut senders = BTreeSet::new();
    for k in 0..JOBS {
        let id = format!("s{k:02}");
        let (_, runs) = c
            .get(0, &format!("/v1/jobs/{id}/runs?limit=2"))
            .await
            .expect("runs");
        for run in runs["runs"].as_array().expect("runs") {
            for a in run["attempts"].as_array().into_iter().flatten() {
                let node = a["node_id"].as_u64().expect("node_id");
                assert_eq!(node, led[&shard_of(&id, SHARDS)], "{id}: {run}");
                senders.insert(node);
            }
        }
    }
    let leading: BTreeSet<u64> = led.values().copied().collect();
    assert_eq!(
        senders, leading,
        "every shard leader sends its shard's runs"
    );

    // Bulk actions cover every shard and report one total.
    let pause = json!({"action": "pause", "prefix": "s", "dry_run": true});
    let (status, dry) = c.post(0, "/v1/jobs/bulk", &pause).await.expect("dry run");
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["matched"], JOBS);
    assert_eq!(dry["sample"][0], "s00");
    let pause = json!({"action": "pause", "prefix": "s"});
    let (status, done) = c
        .post(1, "/v1/jobs/bulk", &pause)
        .await
        .expect("bulk pause");
    assert_eq!(
        (status, done["changed"].as_u64()),
        (200, Some(JOBS as u64)),
        "{done}"
    );
    let (_, paused) = c
        .get(2, "/v1/jobs?state=paused&limit=100")
        .await
        .expect("list");
    assert_eq!(paused["jobs"].as_array().map(Vec::len), Some(JOBS));

    // Cluster-wide settings reach every shard: a policy is read back, and every shard's
    // dispatcher reports the target.
    let target = sink.url("/").replace("http://", "");
    let target = target.trim_end_matches('/');
    let (status, body) = c
        .send(
            0,
            reqwest::Method::PUT,
            &format!("/v1/targets/{target}/policy"),
            Some(&json!({"max_concurrency": 3})),
        )
        .await
        .expect("policy");
    assert_eq!(status, 200, "{body}");
    let (_, targets) = c.get(1, "/v1/targets").await.expect("targets");
    let listed: Vec<&Value> = targets["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .collect();
    assert_eq!(
        listed.len(),
        1,
        "one entry per target across shards: {targets}"
    );
    assert_eq!(listed[0]["policy"]["max_concurrency"], 3);
}

/// The shards' leaders as node `i` sees them: shard → leader, once every shard has one.
async fn shard_leaders(c: &TestCluster, i: usize) -> Option<BTreeMap<u32, u64>> {
    let (_, v) = c.get(i, "/v1/cluster").await?;
    let led: BTreeMap<u32, u64> = v["shards"]
        .as_array()?
        .iter()
        .filter_map(|s| Some((s["id"].as_u64()? as u32, s["leader_id"].as_u64()?)))
        .collect();
    (led.len() == v["shards"].as_array()?.len()).then_some(led)
}

/// The shards' leaders as node `i` sees them, once `ok` says they are as awaited (30 s at most).
async fn led_so(
    c: &TestCluster,
    i: usize,
    what: &str,
    ok: impl Fn(&BTreeMap<u32, u64>) -> bool,
) -> BTreeMap<u32, u64> {
    eventually(Duration::from_secs(30), what, || async {
        shard_leaders(c, i).await.filter(|l| ok(l))
    })
    .await
}

/// How many shards each node leads.
fn per_node(led: &BTreeMap<u32, u64>) -> BTreeMap<u64, usize> {
    let mut per = BTreeMap::new();
    for node in led.values() {
        *per.entry(*node).or_default() += 1;
    }
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_move_off_a_lost_node_come_back_to_it_and_leave_before_a_planned_stop() {
    let mut c = TestCluster::start_with(3, &["--shards", "6"]);
    let even = |led: &BTreeMap<u32, u64>| {
        per_node(led).values().all(|n| *n == 2) && per_node(led).len() == 3 && led.len() == 6
    };
    led_so(&c, 0, "two shards led by each node", even).await;

    // Node 2 is lost: its shards get other leaders.
    c.kill(1);
    led_so(&c, 0, "every shard led by nodes 1 and 3", |l| {
        l.values().all(|n| *n != 2)
    })
    .await;

    // It comes back: once caught up, it leads its two again.
    c.spawn(1);
    led_so(&c, 2, "two shards led by each node again", even).await;

    // A planned stop hands node 1's shards over before it exits.
    c.terminate(0);
    let led = shard_leaders(&c, 1).await.expect("shard leaders");
    let left: Vec<u32> = led
        .iter()
        .filter_map(|(s, n)| (*n == 1).then_some(*s))
        .collect();
    assert!(
        left.is_empty(),
        "shards {left:?} still led by the stopped node: {led:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_several_shards_needs_an_api_token_like_one_of_one_shard() {
    let c = TestCluster::start_with(
        1,
        &[
            "--shards",
            "2",
            "--api-token",
            "all-secret-1",
            "--read-token",
            "read-secret-1",
        ],
    );
    let url = c.url(0, "/v1/snapshot");
    let http = reqwest::Client::new();
    let status = |token: Option<&'static str>| {
        let mut req = http.get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.map(|r| r.status().as_u16()).ok() }
    };
    eventually(Duration::from_secs(10), "a backup", || async {
        (status(Some("all-secret-1")).await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(status(None).await, Some(401));
    assert_eq!(status(Some("read-secret-1")).await, Some(403));
    let body = http
        .get(&url)
        .bearer_auth("all-secret-1")
        .send()
        .await
        .expect("backup");
    assert_eq!(body.status(), 200);
    let bytes = body.bytes().await.expect("body");
    assert_eq!(
        &bytes[..8],
        hookd_raft::archive::MAGIC,
        "one file of every shard"
    );
}
