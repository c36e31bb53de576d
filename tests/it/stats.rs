//! `GET /v1/stats`, black box: the leader's figures per second land in the seconds they
//! happened (runs due, delivered, failed, client writes, lateness); a follower answers with the
//! leader's figures; a bad window is a `400` naming `window`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{create, eventually, now_ms, rfc3339, single, TestCluster};
use crate::sink::{Reply, Sink};

const SERIES: [&str; 7] = [
    "due",
    "delivered",
    "failed",
    "skipped",
    "lateness_p50_ms",
    "lateness_p99_ms",
    "writes",
];

/// The figures node `i` answers for `window`, once it answers `200`, and the clock around the
/// request.
async fn stats(c: &TestCluster, i: usize, window: &str) -> (Value, i64, i64) {
    eventually(Duration::from_secs(10), "a 200 from /v1/stats", || async {
        let before = now_ms();
        let (s, v) = c.get(i, &format!("/v1/stats?window={window}")).await?;
        (s == 200).then(|| (v, before, now_ms()))
    })
    .await
}

/// Series `name` of `v` as numbers (null as None).
fn series(v: &Value, name: &str) -> Vec<Option<u64>> {
    v["series"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no series {name}: {v}"))
        .iter()
        .map(Value::as_u64)
        .collect()
}

fn counts(v: &Value, name: &str) -> Vec<u64> {
    series(v, name)
        .into_iter()
        .map(|n| n.unwrap_or_else(|| panic!("{name} has a null: {v}")))
        .collect()
}

fn ms(t: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().expect("an instant"))
        .expect("RFC 3339")
        .timestamp_millis()
}

/// Index of the second of `at_ms` in a window from `from_ms`, if inside its `len` seconds.
fn index(from_ms: i64, len: usize, at_ms: i64) -> Option<usize> {
    let i = (at_ms.div_euclid(1000) * 1000 - from_ms) / 1000;
    usize::try_from(i).ok().filter(|i| *i < len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_counts_each_second_what_fell_due_was_delivered_failed_and_written() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    // Before anything: a window of zeros, and no lateness.
    let (v, _, _) = stats(&c, 0, "30s").await;
    assert_eq!(v["step_s"], 1, "{v}");
    assert!(counts(&v, "due").iter().all(|n| *n == 0), "{v}");
    assert!(
        series(&v, "lateness_p50_ms").iter().all(Option::is_none),
        "{v}"
    );
    // Once a first run was delivered, the dispatcher follows what is applied: every write from
    // now on is counted.
    create(
        &c,
        0,
        json!({"id": "first", "url": sink.url("/s"), "schedule": {"after": "0s"}}),
    )
    .await;
    sink.wait_for("first", 1, Duration::from_secs(10)).await;

    // Two jobs delivered every second, one failing every second (its one attempt gets 500),
    // from the next whole second but one; then a trigger.
    sink.reply(
        "bad",
        Reply {
            status: 500,
            retry_after: None,
        },
    );
    let start = (now_ms() / 1000 + 2) * 1000;
    let mut writes_at = Vec::new();
    for id in ["ok-1", "ok-2", "bad"] {
        create(
            &c,
            0,
            json!({"id": id, "url": sink.url("/s"), "retry": {"max_attempts": 1},
                   "schedule": {"every": "1s", "start_at": rfc3339(start)}}),
        )
        .await;
        writes_at.push(now_ms());
    }
    let (s, v) = c
        .post(0, "/v1/jobs/ok-1/trigger", &json!({}))
        .await
        .expect("trigger");
    assert_eq!(s, 202, "{v}");
    writes_at.push(now_ms());

    // Until a few seconds of all of it are in the window.
    let (v, before, after) =
        eventually(Duration::from_secs(30), "figures of every kind", || async {
            let (v, before, after) = stats(&c, 0, "30s").await;
            let sum = |name| counts(&v, name).iter().sum::<u64>();
            let enough = sum("delivered") >= 6
                && sum("failed") >= 3
                && sum("due") >= 9
                && sum("writes") >= 4;
            enough.then_some((v, before, after))
        })
        .await;

    // Thirty seconds, ending with the last complete one.
    for name in SERIES {
        assert_eq!(series(&v, name).len(), 30, "{name}: {v}");
    }
    let from = ms(&v["from"]);
    assert_eq!(from % 1000, 0, "{v}");
    let end = from + 30_000;
    assert!(
        before / 1000 * 1000 <= end && end <= after / 1000 * 1000,
        "the window ends at the request's second: {v}"
    );
    let (due, delivered, failed) = (
        counts(&v, "due"),
        counts(&v, "delivered"),
        counts(&v, "failed"),
    );
    let (skipped, writes) = (counts(&v, "skipped"), counts(&v, "writes"));
    assert!(skipped.iter().all(|n| *n == 0), "nothing was skipped: {v}");

    // Every run the sink got was due in its own second.
    for r in sink.all() {
        if let Some(i) = index(from, 30, r.scheduled_ms()) {
            assert!(
                due[i] >= 1,
                "a run due at {} not counted: {v}",
                r.scheduled_ms()
            );
        }
    }
    // Deliveries and failures came soon after their runs fell due (and a second's due never
    // exceeds the three jobs and the trigger).
    let due_near = |i: usize| (i.saturating_sub(2)..=i).any(|j| due[j] > 0);
    for i in 0..30 {
        assert!(due[i] <= 4, "second {i}: {v}");
        assert!(delivered[i] == 0 || due_near(i), "second {i}: {v}");
        assert!(failed[i] == 0 || due_near(i), "second {i}: {v}");
    }
    // Each write was counted in its second or (seen a moment later) the next.
    for at in writes_at {
        if let Some(i) = index(from, 30, at) {
            let near = writes[i] + writes.get(i + 1).copied().unwrap_or(0);
            assert!(near >= 1, "a write at {at} not counted: {v}");
        }
    }
    // Four, and perhaps the first job's create: not the dispatcher's claims and records.
    assert!(
        writes.iter().sum::<u64>() <= 5,
        "only client writes are counted: {v}"
    );

    // Lateness where first attempts started, small; none where nothing started.
    let (p50, p99) = (series(&v, "lateness_p50_ms"), series(&v, "lateness_p99_ms"));
    let mut seconds_with_lateness = 0;
    for i in 0..30 {
        assert_eq!(p50[i].is_some(), p99[i].is_some(), "second {i}: {v}");
        if let (Some(p50), Some(p99)) = (p50[i], p99[i]) {
            seconds_with_lateness += 1;
            assert!(p50 <= p99 && p99 < 2_000, "second {i}: {v}");
            assert!(due_near(i), "lateness without a run due, second {i}: {v}");
        }
        if delivered[i] + failed[i] > 0 {
            let started_near = p50[i].is_some() || (i > 0 && p50[i - 1].is_some());
            assert!(
                started_near,
                "an attempt ended without a start, second {i}: {v}"
            );
        }
    }
    assert!(seconds_with_lateness >= 3, "{v}");

    // A window is a duration from 1s to 1h; anything else is refused naming it.
    for bad in ["2h", "abc", "0s", "500ms", "3601s"] {
        let (s, v) = c
            .get(0, &format!("/v1/stats?window={bad}"))
            .await
            .expect("stats");
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "invalid_parameter", "{bad}: {v}");
        assert_eq!(v["error"]["field"], "window", "{bad}: {v}");
    }
    let (s, v) = c.get(0, "/v1/stats?windw=1m").await.expect("stats");
    assert_eq!(s, 400, "an unknown parameter: {v}");
    // The default is 15 minutes; an hour is the most.
    let (v, _, _) = stats(&c, 0, "1h").await;
    assert_eq!(counts(&v, "due").len(), 3600);
    let (s, v) = c.get(0, "/v1/stats").await.expect("stats");
    assert_eq!(s, 200, "{v}");
    assert_eq!(counts(&v, "writes").len(), 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_with_the_leader_s_figures() {
    let sink = Sink::start().await;
    let c = TestCluster::start(3);
    let leader = c
        .wait_leader(&[0, 1, 2], crate::cluster::ELECTION_WITHIN)
        .await;
    let follower = (leader + 1) % 3;
    let start = (now_ms() / 1000 + 2) * 1000;
    create(
        &c,
        follower,
        json!({"id": "tick", "url": sink.url("/t"),
               "schedule": {"every": "1s", "start_at": rfc3339(start)}}),
    )
    .await;
    sink.wait_for("tick", 3, Duration::from_secs(15)).await;
    // A write through the follower, once the leader's dispatcher surely follows what is
    // applied (it delivered): the leader counts it, once.
    let writes = |v: &Value| counts(v, "writes").iter().sum::<u64>();
    let (v, _, _) = stats(&c, leader, "1m").await;
    let before = writes(&v);
    let (s, v) = c
        .post(follower, "/v1/jobs/tick/trigger", &json!({}))
        .await
        .expect("trigger");
    assert_eq!(s, 202, "{v}");
    let (from_follower, _, _) = eventually(
        Duration::from_secs(15),
        "the write in the follower's answer",
        || async {
            let (v, b, a) = stats(&c, follower, "1m").await;
            (writes(&v) > before).then_some((v, b, a))
        },
    )
    .await;
    let (from_leader, _, _) = stats(&c, leader, "1m").await;
    for v in [&from_follower, &from_leader] {
        assert_eq!(v["step_s"], 1, "{v}");
        for name in SERIES {
            assert_eq!(series(v, name).len(), 60, "{name}: {v}");
        }
        for name in ["due", "delivered", "writes"] {
            assert!(counts(v, name).iter().sum::<u64>() >= 1, "{name}: {v}");
        }
        assert!(
            series(v, "lateness_p99_ms").iter().any(Option::is_some),
            "{v}"
        );
    }
    assert_eq!(writes(&from_follower), before + 1, "{from_follower}");
    assert_eq!(writes(&from_leader), before + 1, "{from_leader}");
    let (s, v) = c.get(follower, "/v1/stats?window=2h").await.expect("stats");
    assert_eq!((s, &v["error"]["field"]), (400, &json!("window")), "{v}");
}
