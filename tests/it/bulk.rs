//! The bulk routes, black box: `POST /v1/jobs/bulk` and `POST /v1/runs/retry`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{
    create, eventually, job, now_ms, runs, single, three_failing_runs_each, TestCluster,
};
use crate::sink::Sink;

/// Every id `query` lists through node `i`, following `next`.
async fn listed(c: &TestCluster, i: usize, query: &str) -> Vec<String> {
    let (mut ids, mut after) = (Vec::new(), String::new());
    loop {
        let (s, v) = c
            .get(i, &format!("/v1/jobs?limit=1000&{query}{after}"))
            .await
            .expect("list");
        assert_eq!(s, 200, "{query}: {v}");
        ids.extend(
            v["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .map(|j| j["id"].as_str().expect("id").to_owned()),
        );
        match v["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => return ids,
        }
    }
}

async fn bulk(c: &TestCluster, i: usize, body: Value) -> Value {
    let (s, v) = c.post(i, "/v1/jobs/bulk", &body).await.expect("bulk");
    assert_eq!(s, 200, "{body}: {v}");
    v
}

/// 1,200 jobs, so that a bulk action takes several parts (log entries), acted on through a
/// follower: the counts, the sample, dry runs, repeats that change nothing, every action and
/// filter, and that no run of a bulk-paused job starts after the answer.
#[tokio::test]
async fn bulk_actions_match_by_every_filter_act_in_parts_and_total_them() {
    let sink = Sink::start().await;
    let c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    // team=a for even i (600), env=prod for every 10th; ids job-0000..job-1199. Eight of the
    // team=a jobs tick every second at the sink.
    let mut team_a = Vec::new();
    for i in 0..1200 {
        let id = format!("job-{i:04}");
        let mut body = job(&id);
        body["labels"] = json!({
            "team": if i % 2 == 0 { "a" } else { "b" },
            "env": if i % 10 == 0 { "prod" } else { "dev" },
        });
        if i % 150 == 0 {
            body["url"] = json!(sink.url("/tick"));
            body["schedule"] = json!({"every": "1s"});
        }
        create(&c, leader, body).await;
        if i % 2 == 0 {
            team_a.push(id);
        }
    }
    for i in (0..1200).step_by(150) {
        sink.wait_for(&format!("job-{i:04}"), 1, Duration::from_secs(10))
            .await;
    }

    // A dry run counts and shows, and changes nothing.
    let v = bulk(
        &c,
        follower,
        json!({"action": "pause", "selector": "team=a", "dry_run": true}),
    )
    .await;
    assert_eq!(v["matched"], 600, "{v}");
    assert_eq!(v["changed"], 0, "{v}");
    let sample: Vec<&str> = v["sample"]
        .as_array()
        .expect("sample")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(sample, team_a[..100], "the first 100 matched ids, in order");
    assert!(listed(&c, follower, "state=paused").await.is_empty());

    // Pause by selector, through a follower: every team=a job, and no run of one starts after
    // the answer (an attempt already under way may end; the sink sees it within ms).
    let v = bulk(
        &c,
        follower,
        json!({"action": "pause", "selector": "team=a"}),
    )
    .await;
    let answered_ms = now_ms();
    assert_eq!(
        (v["matched"].as_u64(), v["changed"].as_u64()),
        (Some(600), Some(600)),
        "{v}"
    );
    assert_eq!(listed(&c, follower, "state=paused").await, team_a);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late: Vec<String> = sink
        .all()
        .iter()
        .filter(|r| r.wall_ms > answered_ms + 200)
        .map(|r| format!("{} at +{} ms", r.job_id(), r.wall_ms - answered_ms))
        .collect();
    assert!(
        late.is_empty(),
        "runs of paused jobs after the answer: {late:?}"
    );
    // Again: all matched, none changed.
    let v = bulk(&c, leader, json!({"action": "pause", "selector": "team=a"})).await;
    assert_eq!(
        (v["matched"].as_u64(), v["changed"].as_u64()),
        (Some(600), Some(0)),
        "{v}"
    );

    // Named ids, with the other filters: only the existing ones that match count.
    let v = bulk(
        &c,
        follower,
        json!({"action": "resume", "state": "paused",
               "ids": ["job-0002", "job-0001", "job-0002", "job-0004", "no-such-job"]}),
    )
    .await;
    assert_eq!(
        (v["matched"].as_u64(), v["changed"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    assert_eq!(v["sample"], json!(["job-0002", "job-0004"]));

    // Trigger by prefix: a manual run for each.
    let v = bulk(
        &c,
        follower,
        json!({"action": "trigger", "prefix": "job-003"}),
    )
    .await;
    assert_eq!(
        (v["matched"].as_u64(), v["changed"].as_u64()),
        (Some(10), Some(10)),
        "{v}"
    );
    for i in 30..40 {
        let got = runs(&c, follower, &format!("job-{i:04}")).await;
        assert!(
            got.iter().any(|r| r["manual"] == true),
            "job-{i:04}: {got:?}"
        );
    }

    // Delete by selector and state together: every prod job (each 10th, so team=a) is paused.
    let v = bulk(
        &c,
        follower,
        json!({"action": "delete", "selector": "env=prod,team=a", "state": "paused"}),
    )
    .await;
    assert_eq!(
        (v["matched"].as_u64(), v["changed"].as_u64()),
        (Some(120), Some(120)),
        "{v}"
    );
    assert!(listed(&c, follower, "selector=env%3Dprod").await.is_empty());
    assert_eq!(listed(&c, follower, "").await.len(), 1080);

    // A job named `bulk` is still read, replaced and deleted at /v1/jobs/bulk.
    let (s, v) = c
        .send(follower, Method::PUT, "/v1/jobs/bulk", Some(&job("bulk")))
        .await
        .expect("put");
    assert_eq!(s, 201, "{v}");
    let (s, v) = c.get(follower, "/v1/jobs/bulk").await.expect("get");
    assert_eq!((s, v["id"].as_str()), (200, Some("bulk")), "{v}");
    let (s, _) = c
        .send(follower, Method::DELETE, "/v1/jobs/bulk", None)
        .await
        .expect("delete");
    assert_eq!(s, 204);

    // Bad requests: 422 naming the field.
    let too_many: Vec<String> = (0..10_001).map(|i| format!("j{i}")).collect();
    for (body, field) in [
        (json!({"action": "pause"}), "selector"),
        (json!({"action": "pause", "ids": []}), "selector"),
        (json!({"action": "explode", "prefix": "a"}), "action"),
        (json!({"prefix": "a"}), "action"),
        (json!({"action": "pause", "selector": "Team"}), "selector"),
        (json!({"action": "pause", "state": "running"}), "state"),
        (
            json!({"action": "pause", "ids": ["ok", "not ok"]}),
            "ids[1]",
        ),
        (json!({"action": "pause", "ids": too_many}), "ids"),
        (
            json!({"action": "pause", "prefix": "a", "extra": 1}),
            "extra",
        ),
    ] {
        let (s, v) = c
            .post(follower, "/v1/jobs/bulk", &body)
            .await
            .expect("bulk");
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
}

/// Failed runs are retried by filter: only the matching ones open again, a dry run opens
/// none, and the totals say so.
#[tokio::test]
async fn failed_runs_are_retried_by_filter() {
    let c = single(&[]).await;
    three_failing_runs_each(&c, &[("fail-x", "x"), ("fail-y", "y")]).await;
    let attempts = |runs: &[Value]| -> Vec<usize> {
        runs.iter()
            .map(|r| r["attempts"].as_array().map_or(0, Vec::len))
            .collect()
    };
    for id in ["fail-x", "fail-y"] {
        eventually(Duration::from_secs(20), "three failed runs", || async {
            let got = runs(&c, 0, id).await;
            (got.len() == 3 && got.iter().all(|r| r["status"] == "failed")).then_some(())
        })
        .await;
    }

    let (s, v) = c
        .post(
            0,
            "/v1/runs/retry",
            &json!({"job_selector": "team=x", "dry_run": true}),
        )
        .await
        .expect("retry");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["matched"].as_u64(), v["retried"].as_u64()),
        (Some(3), Some(0)),
        "{v}"
    );

    let (s, v) = c
        .post(0, "/v1/runs/retry", &json!({"job_selector": "team=x"}))
        .await
        .expect("retry");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["matched"].as_u64(), v["retried"].as_u64()),
        (Some(3), Some(3)),
        "{v}"
    );
    // Each retried run fails again, with a second attempt; fail-y's keep one.
    let x = eventually(
        Duration::from_secs(20),
        "fail-x's runs failed twice",
        || async {
            let got = runs(&c, 0, "fail-x").await;
            (attempts(&got) == [2, 2, 2] && got.iter().all(|r| r["status"] == "failed"))
                .then_some(got)
        },
    )
    .await;
    assert_eq!(x.len(), 3);
    assert_eq!(attempts(&runs(&c, 0, "fail-y").await), [1, 1, 1]);

    // Bad filters: 422 naming the field.
    for (body, field) in [
        (json!({"job_selector": "Team"}), "job_selector"),
        (json!({"since": "yesterday"}), "since"),
        (json!({"job_id": " "}), "job_id"),
        (json!({"status": "failed"}), "status"),
    ] {
        let (s, v) = c.post(0, "/v1/runs/retry", &body).await.expect("retry");
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
}
