//! Membership changes through the API (SPEC §6): replacing a dead node with a `--join` node,
//! removing a follower and the leader itself, and the refusals.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::cluster::ELECTION_WITHIN;
use crate::harness::{eventually, job, now_ms, ticking_cluster, ticks_missed, TestCluster};
use crate::sink::Sink;

/// How long an add may take here: a learner of a small state catches up at once.
const ADD_WITHIN: Duration = Duration::from_secs(30);

fn add_body(c: &TestCluster, i: usize) -> Value {
    json!({"id": c.nodes[i].id, "peer_addr": c.nodes[i].peer.to_string(),
           "api_addr": c.nodes[i].api.to_string()})
}

/// (voters, learners) by node id in a `/v1/cluster` answer.
fn roles(v: &Value) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut voters = BTreeSet::new();
    let mut learners = BTreeSet::new();
    for m in v["members"].as_array().expect("members") {
        let id = m["id"].as_u64().expect("id");
        if m["voter"].as_bool() == Some(true) {
            voters.insert(id);
        } else {
            learners.insert(id);
        }
    }
    (voters, learners)
}

async fn delete(c: &TestCluster, via: usize, path: &str) -> (u16, Value) {
    c.send(via, Method::DELETE, path, None)
        .await
        .expect("answer")
}

async fn wait_healthy(c: &TestCluster, i: usize) {
    eventually(Duration::from_secs(10), "the node to listen", || async {
        c.get(i, "/healthz").await.filter(|(s, _)| *s == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_through_the_api_while_a_job_fires_and_the_new_node_carries_quorum()
{
    let sink = Sink::start().await;
    let (mut c, leader, start) = ticking_cluster(&sink).await;

    // A follower dies for good (its disk is lost).
    let dead = (0..3).find(|i| *i != leader).expect("a follower");
    c.kill(dead);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != dead).collect();

    let new = c.add_joining_node();
    c.spawn(new);
    wait_healthy(&c, new).await;
    let (s, v) = c
        .get(new, "/v1/cluster?consistency=stale")
        .await
        .expect("cluster");
    assert_eq!(s, 200, "{v}");
    assert!(
        v["leader_id"].is_null(),
        "a joining node has no leader yet: {v}"
    );

    // Added through a follower, which forwards to the leader.
    let via = survivors
        .iter()
        .copied()
        .find(|i| *i != leader)
        .expect("follower");
    let added = tokio::time::timeout(
        ADD_WITHIN,
        c.post(via, "/v1/cluster/members", &add_body(&c, new)),
    )
    .await
    .expect("the add answers in time")
    .expect("answer");
    assert_eq!(added.0, 201, "{}\n{}", added.1, c.logs());
    let (voters, _) = roles(&added.1);
    assert!(
        voters.contains(&c.nodes[new].id),
        "the new node votes: {}",
        added.1
    );
    let listed = added.1["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == c.nodes[new].id)
        .cloned()
        .expect("listed");
    assert_eq!(listed["api_addr"], c.nodes[new].api.to_string());

    // Adding it again, or another node at a taken address, is a conflict.
    let again = c
        .post(via, "/v1/cluster/members", &add_body(&c, new))
        .await
        .expect("answer");
    assert_eq!(again.0, 409, "{}", again.1);
    let mut clash = add_body(&c, new);
    clash["id"] = json!(99);
    let clash = c
        .post(via, "/v1/cluster/members", &clash)
        .await
        .expect("answer");
    assert_eq!(clash.0, 409, "{}", clash.1);
    assert_eq!(clash.1["error"]["field"], "peer_addr");

    // The dead node is removed.
    let dead_id = c.nodes[dead].id;
    let (s, v) = delete(&c, leader, &format!("/v1/cluster/members/{dead_id}")).await;
    assert_eq!(s, 200, "{v}");
    let (voters, learners) = roles(&v);
    let want: BTreeSet<u64> = survivors
        .iter()
        .map(|i| c.nodes[*i].id)
        .chain([c.nodes[new].id])
        .collect();
    assert_eq!(voters, want, "{v}");
    assert!(learners.is_empty(), "{v}");
    let (s, v) = delete(&c, leader, &format!("/v1/cluster/members/{dead_id}")).await;
    assert_eq!(s, 404, "removing a non-member: {v}");

    // The new node holds every job, and with it, one old node carries quorum: stop the leader.
    eventually(
        Duration::from_secs(10),
        "the job on the new node",
        || async {
            c.get(new, "/v1/jobs/tick?consistency=stale")
                .await
                .filter(|(s, _)| *s == 200)
        },
    )
    .await;
    c.kill(leader);
    let other = survivors
        .iter()
        .copied()
        .find(|i| *i != leader)
        .expect("other");
    let leader2 = c.wait_leader(&[other, new], ELECTION_WITHIN).await;
    let stopped_at = now_ms();
    let (s, v) = eventually(
        Duration::from_secs(10),
        "a write with the new node",
        || async {
            c.post(new, "/v1/jobs", &job("after-replace"))
                .await
                .filter(|(s, _)| *s == 201)
        },
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = c.get(other, "/v1/jobs/after-replace").await.expect("read");
    assert_eq!(s, 200, "leader now node {}", c.nodes[leader2].id);

    // The job went on firing through all of it: every second from its start, none missed.
    let (missing, _) = ticks_missed(&sink, start, stopped_at + 2000, Duration::from_secs(15)).await;
    assert!(
        missing.is_empty(),
        "runs never delivered: {missing:?}\n{}",
        c.logs()
    );

    // The dead node comes back with its old data dir, still believing it is a member: the first
    // member it asks for a vote tells it it was removed, and it stops without disturbing them.
    c.spawn(dead);
    let status = c.wait_exit(dead, Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "the revived removed node stops: {status:?}\n{}",
        c.log_of(dead)
    );
    assert!(
        c.log_of(dead).contains("was removed from the cluster"),
        "{}",
        c.log_of(dead)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_follower_and_a_removed_leader_stop_by_themselves_and_refuse_to_restart() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let fourth = c.add_joining_node();
    c.spawn(fourth);
    wait_healthy(&c, fourth).await;
    let (s, v) = c
        .post(leader, "/v1/cluster/members", &add_body(&c, fourth))
        .await
        .expect("answer");
    assert_eq!(s, 201, "{v}");
    assert_eq!(roles(&v).0.len(), 4, "{v}");

    // Bad requests are 4xx with the field named.
    let bad = [
        (json!({"id": 0, "peer_addr": "127.0.0.1:1"}), 422, "id"),
        (json!({"id": 7, "peer_addr": "nowhere"}), 422, "peer_addr"),
        (json!({"id": 7}), 422, "peer_addr"),
        (
            json!({"id": 7, "peer_addr": "127.0.0.1:1", "colour": 1}),
            422,
            "colour",
        ),
    ];
    for (body, status, field) in bad {
        let (s, v) = c
            .post(leader, "/v1/cluster/members", &body)
            .await
            .expect("answer");
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (status, Some(field)),
            "{body}: {v}"
        );
    }
    let (s, v) = delete(&c, leader, "/v1/cluster/members/abc").await;
    assert_eq!(s, 400, "{v}");

    // A live follower is removed: the leader tells it, and it stops.
    let follower = (0..3).find(|i| *i != leader).expect("follower");
    let (s, v) = delete(
        &c,
        leader,
        &format!("/v1/cluster/members/{}", c.nodes[follower].id),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let status = c.wait_exit(follower, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the removed follower stops: {status:?}\n{}",
        c.log_of(follower)
    );

    // The leader removes itself, answering first; it steps down and stops, the others elect.
    let (s, v) = delete(
        &c,
        leader,
        &format!("/v1/cluster/members/{}", c.nodes[leader].id),
    )
    .await;
    assert_eq!(s, 200, "{v}\n{}", c.logs());
    let (voters, _) = roles(&v);
    assert!(!voters.contains(&c.nodes[leader].id), "{v}");
    let status = c.wait_exit(leader, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the removed leader stops: {status:?}"
    );
    let rest: Vec<usize> = (0..4).filter(|i| *i != leader && *i != follower).collect();
    c.wait_leader(&rest, ELECTION_WITHIN).await;
    let (s, v) = eventually(
        Duration::from_secs(10),
        "a write after the leader left",
        || async {
            c.post(rest[0], "/v1/jobs", &job("after-leader-left"))
                .await
                .filter(|(s, _)| *s == 201)
        },
    )
    .await;
    assert_eq!(s, 201, "{v}");

    // Two voters are left: removing one more needs force.
    let target = c.nodes[rest[1]].id;
    let (s, v) = delete(&c, rest[0], &format!("/v1/cluster/members/{target}")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );

    // A removed node's data dir refuses to serve again.
    c.spawn(leader);
    let status = c.wait_exit(leader, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a removed node refuses to start: {status:?}"
    );
    assert!(
        c.log_of(leader).contains("was removed from its cluster"),
        "{}",
        c.log_of(leader)
    );
}

/// Writes `jobs` jobs, then adds a new `--join` node: the add may not answer while the learner
/// is not running, answers `201` once it has caught up (every job already on it), and the new
/// node stays. Its index.
async fn add_a_node_after(c: &mut TestCluster, leader: usize, jobs: usize) -> usize {
    for n in 0..jobs {
        let (s, v) = c
            .post(leader, "/v1/jobs", &job(&format!("j{n}")))
            .await
            .expect("create");
        assert_eq!(s, 201, "{v}");
    }
    let new = c.add_joining_node();
    // Asked before the new node runs: the add may not answer while the learner is not there.
    let add = {
        let (http, url, body) = (
            c.http.clone(),
            c.url(leader, "/v1/cluster/members"),
            add_body(c, new),
        );
        tokio::spawn(async move { http.post(url).json(&body).send().await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !add.is_finished(),
        "the add answered before the learner ran"
    );
    c.spawn(new);
    let resp = tokio::time::timeout(ADD_WITHIN, add)
        .await
        .expect("the add answers once the learner caught up")
        .expect("join")
        .expect("answer");
    assert_eq!(resp.status(), 201, "{}", c.logs());
    // Caught up when the add answered: every job is already on the new node.
    let (s, page) = c
        .get(new, "/v1/jobs?limit=1000&consistency=stale")
        .await
        .expect("list");
    assert_eq!(s, 200);
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(jobs), "{page}");
    assert!(
        c.wait_exit(new, Duration::from_secs(3)).is_none(),
        "the new node stopped: {}",
        c.log_of(new)
    );
    new
}

/// SPEC §6: on a cluster whose log was purged, a new node catches up through a snapshot (whose
/// membership predates it) and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_after_the_log_was_purged_catches_up_by_snapshot_and_stays() {
    let mut c = TestCluster::start_with(3, &["--snapshot-logs", "20"]);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let new = add_a_node_after(&mut c, leader, 120).await;
    assert!(
        c.log_of(new).contains("installed snapshot"),
        "caught up through a snapshot:\n{}",
        c.log_of(new)
    );
    assert!(!c.log_of(new).contains("was removed"), "{}", c.log_of(new));
}

/// SPEC §6, a defect an outside trial found: on a young cluster (its log still holds the first
/// membership) a joining node replayed that membership, took it for its removal and stopped,
/// while the add had answered `201` before the learner caught up. Now the add waits for the
/// learner, the new node stays, it carries quorum once the dead node is removed, and a node
/// removed and re-added under its old id with an empty data dir (replaying its own old add
/// and removal) stays too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_replaced_on_a_young_cluster_waits_to_catch_up_and_stays() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    // More entries than one AppendEntries carries: the joiner's first batch holds only the
    // initial membership.
    let new = add_a_node_after(&mut c, leader, 40).await;

    // Replace: a follower dies and is removed; the new node then carries quorum with the
    // leader while the third old node is down too.
    let dead = (0..3).find(|i| *i != leader).expect("a follower");
    let other = (0..3)
        .find(|i| *i != leader && *i != dead)
        .expect("another");
    c.kill(dead);
    let (s, v) = delete(
        &c,
        leader,
        &format!("/v1/cluster/members/{}", c.nodes[dead].id),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    c.kill(other);
    let (s, v) = c
        .post(leader, "/v1/jobs", &job("after-replace"))
        .await
        .expect("create");
    assert_eq!(s, 201, "the new node carries quorum: {v}\n{}", c.logs());
    c.spawn(other);

    // The removed id comes back with an empty data dir and --join, and is added again.
    std::fs::remove_dir_all(&c.nodes[dead].data_dir).expect("empty the data dir");
    c.nodes[dead].joins = true;
    c.spawn(dead);
    wait_healthy(&c, dead).await;
    let (s, v) = c
        .post(leader, "/v1/cluster/members", &add_body(&c, dead))
        .await
        .expect("answer");
    assert_eq!(s, 201, "{v}\n{}", c.logs());
    assert!(
        c.wait_exit(dead, Duration::from_secs(3)).is_none(),
        "the re-added node stopped: {}",
        c.log_of(dead)
    );
    for i in [new, dead] {
        assert!(
            !c.log_of(i).contains("was removed"),
            "node {i}: {}",
            c.log_of(i)
        );
    }
}

/// A leader that had itself joined with `--join` stops once it removed itself (the soak found
/// one that kept running: a joined node believes no applied membership about itself, and no
/// other leader tells it). One initial node, two joined ones; the initial node is removed, so
/// a joined node leads, and that leader is then removed (with force: one voter is left).
#[tokio::test]
async fn a_leader_that_joined_with_join_stops_once_it_removed_itself() {
    let mut c = TestCluster::start(1);
    c.wait_leader(&[0], ELECTION_WITHIN).await;
    for _ in 0..2 {
        let i = c.add_joining_node();
        c.spawn(i);
        wait_healthy(&c, i).await;
        let (s, v) = c
            .post(0, "/v1/cluster/members", &add_body(&c, i))
            .await
            .expect("answer");
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = delete(&c, 0, &format!("/v1/cluster/members/{}", c.nodes[0].id)).await;
    assert_eq!(s, 200, "{v}");
    assert!(c
        .wait_exit(0, Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    let leader = c.wait_leader(&[1, 2], ELECTION_WITHIN).await;
    let path = format!("/v1/cluster/members/{}?force=true", c.nodes[leader].id);
    let (s, v) = delete(&c, leader, &path).await;
    assert_eq!(s, 200, "{v}");
    let status = c.wait_exit(leader, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the removed leader stops: {status:?}\n{}",
        c.log_of(leader)
    );
    let other = 3 - leader;
    c.wait_leader(&[other], ELECTION_WITHIN).await;
}

/// Starts joining node `i` with `--shards shards` and asks node 0 to add it: the answer.
async fn start_and_add_with_shards(c: &mut TestCluster, i: usize, shards: u32) -> (u16, Value) {
    c.extra_args = vec!["--shards".into(), shards.to_string()];
    c.spawn(i);
    wait_healthy(c, i).await;
    c.post(0, "/v1/cluster/members", &add_body(c, i))
        .await
        .expect("answer")
}

#[tokio::test]
async fn a_node_started_with_another_shard_count_is_refused_before_anything_changes() {
    let mut c = TestCluster::start_with(1, &["--shards", "2"]);
    c.wait_leader(&[0], ELECTION_WITHIN).await;
    let i = c.add_joining_node();
    let (s, v) = start_and_add_with_shards(&mut c, i, 3).await;
    assert_eq!(s, 409, "{v}");
    assert!(v.to_string().contains("--shards 2"), "{v}");
    let (_, cluster) = c.get(0, "/v1/cluster").await.expect("answer");
    assert_eq!(
        roles(&cluster),
        (BTreeSet::from([c.nodes[0].id]), BTreeSet::new()),
        "no group took the node in: {cluster}"
    );
    // Started again as the refusal says, it is added.
    c.kill(i);
    std::fs::remove_dir_all(&c.nodes[i].data_dir).expect("empty the data dir");
    let (s, v) = start_and_add_with_shards(&mut c, i, 2).await;
    assert_eq!(s, 201, "{v}");
}
