//! Dispatch end to end: real nodes deliver to a sink on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{create, eventually, now_ms, rfc3339, runs, single, TestCluster};
use crate::sink::{Reply, Sink};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_run_arrives_with_every_header_and_a_verifiable_signature() {
    let sink = Sink::start().await;
    let c = single(&["--signing-secret", SECRET]).await;
    create(
        &c,
        0,
        json!({
            "id": "once",
            "url": sink.url("/hook?x=1"),
            "method": "PUT",
            "headers": {"content-type": "application/json", "x-custom": "yes"},
            "body": "{\"invoice\": 42}",
            "schedule": {"after": "200ms"},
        }),
    )
    .await;
    let got = sink.wait_for("once", 1, Duration::from_secs(10)).await;
    let r = &got[0];
    assert_eq!(r.method, Method::PUT);
    assert_eq!(r.path, "/hook");
    assert_eq!(&r.body[..], b"{\"invoice\": 42}");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("x-custom"), "yes");
    assert_eq!(r.header("hookd-attempt"), "1");
    assert_eq!(
        r.header("user-agent"),
        concat!("hookd/", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        r.header("hookd-scheduled-at").ends_with('Z')
            && r.header("hookd-scheduled-at").contains('.')
    );
    let ts: i64 = r.header("webhook-timestamp").parse().expect("unix seconds");
    assert!((ts - now_ms() / 1000).abs() < 30);
    // An independent Standard Webhooks implementation verifies the signature.
    let wh = standardwebhooks::Webhook::new(SECRET).expect("secret");
    wh.verify(&r.body, &r.headers).expect("signature verifies");

    // The run is listed with the same id, succeeded, and the one-shot is completed.
    let listed = eventually(Duration::from_secs(5), "the run recorded", || async {
        let runs = runs(&c, 0, "once").await;
        (runs.len() == 1 && runs[0]["status"] == "succeeded").then_some(runs)
    })
    .await;
    assert_eq!(listed[0]["id"], r.webhook_id());
    assert_eq!(listed[0]["attempts"][0]["status_code"], 200);
    assert_eq!(listed[0]["scheduled_at"], r.header("hookd-scheduled-at"));
    let (_, job) = c.get(0, "/v1/jobs/once").await.expect("job");
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["next_fire_at"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_already_past_at_create_is_due_at_creation_and_delivered() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    // A week before now: far past any grace, yet due at creation, not misfired (SPEC §2).
    let at = rfc3339(now_ms() - 7 * 86_400_000);
    let before = now_ms();
    let created = create(
        &c,
        0,
        json!({"id": "late", "url": sink.url("/l"), "schedule": {"at": at},
               "misfire": {"policy": "skip"}}),
    )
    .await;
    let after = now_ms();
    assert_eq!(created["schedule"]["at"], at.as_str());
    let next = created["next_fire_at"].as_str().expect("next_fire_at");
    let next_ms = chrono::DateTime::parse_from_rfc3339(next)
        .expect("instant")
        .timestamp_millis();
    assert!(
        (before..=after).contains(&next_ms),
        "due at creation ({before}..={after}), not at {at}: {created}"
    );
    // Delivered even with `skip`: it was due at creation, so it is on time.
    let got = sink.wait_for("late", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].scheduled_ms(), next_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_second_job_fires_once_per_second() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    let start = (now_ms() / 1000 + 1) * 1000;
    create(
        &c,
        0,
        json!({"id": "tick", "url": sink.url("/t"), "schedule": {"every": "1s", "start_at": rfc3339(start)}}),
    )
    .await;
    let got = sink.wait_for("tick", 4, Duration::from_secs(10)).await;
    let scheduled: Vec<i64> = got.iter().map(|r| r.scheduled_ms()).collect();
    for w in scheduled.windows(2) {
        assert_eq!(w[1] - w[0], 1000, "one run per second: {scheduled:?}");
    }
    assert_eq!((scheduled[0] - start) % 1000, 0, "aligned to start_at");
    let ids: BTreeSet<&str> = got.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(ids.len(), got.len(), "each run has its own webhook-id");
    for r in &got {
        let late = r.wall_ms - r.scheduled_ms();
        assert!(
            (0..1000).contains(&late),
            "delivered on time, not early: {late} ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_deliveries_retry_with_backoff_then_fail_and_a_retry_delivers_again() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    sink.reply(
        "flaky",
        Reply {
            status: 500,
            retry_after: None,
        },
    );
    create(
        &c,
        0,
        json!({
            "id": "flaky", "url": sink.url("/f"), "schedule": {"after": "0s"},
            "retry": {"max_attempts": 3, "initial_backoff": "300ms", "multiplier": 2.0, "jitter": 0.0},
        }),
    )
    .await;
    let got = sink.wait_for("flaky", 3, Duration::from_secs(10)).await;
    let gaps: Vec<u128> = got
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    assert!(
        gaps[0] >= 300 && gaps[1] >= 600,
        "backoff 300 ms then 600 ms: {gaps:?}"
    );
    let attempts: Vec<&str> = got.iter().map(|r| r.header("hookd-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(
        got.iter().all(|r| r.webhook_id() == got[0].webhook_id()),
        "same webhook-id on every attempt"
    );

    // After the last attempt the run is failed and in the dead-letter view.
    let run_id = got[0].webhook_id().to_owned();
    eventually(Duration::from_secs(5), "the failed run listed", || async {
        let (_, v) = c.get(0, "/v1/runs?status=failed").await?;
        v["runs"]
            .as_array()?
            .iter()
            .any(|r| r["id"] == run_id.as_str())
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.of("flaky").len(), 3, "no attempt after the last one");

    // A retry of the failed run delivers it again under the same id.
    sink.reply(
        "flaky",
        Reply {
            status: 200,
            retry_after: None,
        },
    );
    let (s, run) = c
        .send(0, Method::POST, &format!("/v1/runs/{run_id}/retry"), None)
        .await
        .expect("retry");
    assert_eq!(s, 202, "{run}");
    let got = sink.wait_for("flaky", 4, Duration::from_secs(10)).await;
    assert_eq!(got[3].webhook_id(), run_id);
    assert_eq!(got[3].header("hookd-attempt"), "4");
    eventually(Duration::from_secs(5), "the run succeeded", || async {
        let runs = runs(&c, 0, "flaky").await;
        (runs[0]["status"] == "succeeded").then_some(())
    })
    .await;
    let (s, err) = c
        .send(0, Method::POST, &format!("/v1/runs/{run_id}/retry"), None)
        .await
        .expect("retry");
    assert_eq!(
        (s, &err["error"]["code"]),
        (409, &json!("conflict")),
        "only failed runs retry: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    sink.reply(
        "busy",
        Reply {
            status: 503,
            retry_after: Some("2"),
        },
    );
    create(
        &c,
        0,
        json!({"id": "busy", "url": sink.url("/b"), "schedule": {"after": "0s"},
               "retry": {"max_attempts": 2, "initial_backoff": "100ms", "jitter": 0.0}}),
    )
    .await;
    let got = sink.wait_for("busy", 2, Duration::from_secs(10)).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "waited for Retry-After: {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_pause_stop_later_attempts_and_resume_continues_after_the_resume() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    for id in ["del", "pau"] {
        create(
            &c,
            0,
            json!({"id": id, "url": sink.url("/p"), "schedule": {"every": "1s"}}),
        )
        .await;
    }
    // A retrying run of a deleted job gets no further attempt either.
    sink.reply(
        "gone",
        Reply {
            status: 500,
            retry_after: None,
        },
    );
    create(
        &c,
        0,
        json!({"id": "gone", "url": sink.url("/g"), "schedule": {"after": "0s"},
               "retry": {"max_attempts": 10, "initial_backoff": "500ms", "jitter": 0.0}}),
    )
    .await;
    sink.wait_for("del", 1, Duration::from_secs(10)).await;
    sink.wait_for("pau", 1, Duration::from_secs(10)).await;
    sink.wait_for("gone", 1, Duration::from_secs(10)).await;
    for (method, path) in [
        (Method::DELETE, "/v1/jobs/del"),
        (Method::POST, "/v1/jobs/pau/pause"),
        (Method::DELETE, "/v1/jobs/gone"),
    ] {
        let (s, _) = c.send(0, method, path, None).await.expect("stop");
        assert!(s == 200 || s == 204);
    }
    let acked = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for id in ["del", "pau", "gone"] {
        let late: Vec<_> = sink.of(id).into_iter().filter(|r| r.at > acked).collect();
        assert!(
            late.is_empty(),
            "{id}: attempts after the acknowledged stop: {late:?}"
        );
    }
    let resumed_at = now_ms();
    let (s, _) = c
        .send(0, Method::POST, "/v1/jobs/pau/resume", None)
        .await
        .expect("resume");
    assert_eq!(s, 200);
    let before = sink.of("pau").len();
    let got = sink
        .wait_for("pau", before + 2, Duration::from_secs(10))
        .await;
    let after: Vec<i64> = got[before..].iter().map(|r| r.scheduled_ms()).collect();
    assert!(
        after.iter().all(|t| *t > resumed_at),
        "no run due while paused is delivered: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_adds_an_extra_run_now() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    create(
        &c,
        0,
        json!({"id": "manual", "url": sink.url("/m"), "schedule": {"cron": "0 0 1 1 *"}}),
    )
    .await;
    let (s, run) = c
        .send(0, Method::POST, "/v1/jobs/manual/trigger", None)
        .await
        .expect("trigger");
    assert_eq!(s, 202, "{run}");
    assert_eq!(run["manual"], true);
    let got = sink.wait_for("manual", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].webhook_id(), run["id"].as_str().expect("id"));
    let (s, _) = c
        .send(0, Method::POST, "/v1/jobs/nope/trigger", None)
        .await
        .expect("trigger");
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_lists_next_fires_with_dst_rules() {
    let c = single(&[]).await;
    let body = json!({"schedule": {"cron": "30 2 * * *", "timezone": "America/New_York"},
                      "from": "2025-03-08T12:00:00Z", "count": 2});
    let (s, v) = c
        .post(0, "/v1/schedules/preview", &body)
        .await
        .expect("preview");
    assert_eq!(s, 200, "{v}");
    // 02:30 does not exist on 2025-03-09: it fires at the first instant after the gap.
    assert_eq!(
        v["fires"],
        json!(["2025-03-09T07:00:00.000Z", "2025-03-10T06:30:00.000Z"])
    );
    // And the schedule in words, for the console's job view.
    assert_eq!(v["description"], "At 02:30 (America/New_York)", "{v}");
    let bad = json!({"schedule": {"cron": "0 0 30 2 *"}});
    let (s, v) = c
        .post(0, "/v1/schedules/preview", &bad)
        .await
        .expect("preview");
    assert_eq!((s, &v["error"]["code"]), (422, &json!("invalid_schedule")));
}

/// Due instants of `job` between `from` and `to` (exclusive), for an every-`period` job.
fn due_between(start: i64, period: i64, from: i64, to: i64) -> Vec<i64> {
    let first = start + ((from - start).max(0) + period - 1) / period * period;
    (0..)
        .map(|k| first + k * period)
        .take_while(|t| *t < to)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_loses_no_due_run_and_repeats_keep_their_webhook_id() {
    let sink = Sink::start().await;
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], Duration::from_secs(10)).await;
    let start = (now_ms() / 1000 + 2) * 1000;
    // Eight jobs every second, staggered by 125 ms: a run falls due every 125 ms.
    let jobs: Vec<(String, i64)> = (0..8)
        .map(|k| (format!("fo-{k}"), start + k * 125))
        .collect();
    for (id, s) in &jobs {
        create(&c, (leader + 1) % 3, json!({"id": id, "url": sink.url("/fo"), "schedule": {"every": "1s", "start_at": rfc3339(*s)}})).await;
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    c.kill(leader);
    let killed_ms = now_ms();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    c.wait_leader(&survivors, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let end = now_ms() - 1500;

    let mut worst_late = 0;
    for (id, s) in &jobs {
        let got = sink.of(id);
        let mut by_run: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        for r in &got {
            by_run
                .entry(r.scheduled_ms())
                .or_default()
                .insert(r.webhook_id().to_owned());
        }
        for due in due_between(*s, 1000, start, end) {
            let ids = by_run.get(&due).unwrap_or_else(|| {
                panic!(
                    "{id}: run due at {due} (kill at {killed_ms}) never delivered; got {:?}",
                    by_run.keys()
                )
            });
            assert_eq!(
                ids.len(),
                1,
                "{id}: repeats of one run share its webhook-id: {ids:?}"
            );
            let first = got
                .iter()
                .filter(|r| r.scheduled_ms() == due)
                .map(|r| r.wall_ms)
                .min()
                .unwrap_or(due);
            worst_late = worst_late.max(first - due);
        }
        let skipped = runs(&c, survivors[0], id)
            .await
            .into_iter()
            .filter(|r| r["status"] == "skipped")
            .count();
        assert_eq!(
            skipped, 0,
            "{id}: nothing is skipped across a failover within grace"
        );
    }
    assert!(
        worst_late < 4000,
        "runs due during the election arrive within a few seconds: {worst_late} ms"
    );
    eprintln!("worst lateness across the failover: {worst_late} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_whole_cluster_was_down_misfired_runs_follow_the_policy() {
    let sink = Sink::start().await;
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], Duration::from_secs(10)).await;
    for policy in ["fire_once", "fire_all", "skip"] {
        create(
            &c,
            leader,
            json!({"id": policy, "url": sink.url("/mf"), "schedule": {"every": "1s"},
                   "misfire": {"policy": policy, "grace": "1s", "catchup_window": "3s"}}),
        )
        .await;
    }
    for p in ["fire_once", "fire_all", "skip"] {
        sink.wait_for(p, 1, Duration::from_secs(10)).await;
    }
    for i in 0..3 {
        c.kill(i);
    }
    let down_from = now_ms();
    tokio::time::sleep(Duration::from_millis(7000)).await;
    let up_at = now_ms();
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_leader(&[0, 1, 2], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Every run due while the cluster was down (past what the old leader may have claimed) is
    // either delivered or inside a recorded skipped range, never both, never neither.
    let grace_ms = 1000;
    for policy in ["fire_once", "fire_all", "skip"] {
        let runs = runs(&c, 0, policy).await;
        let ranges: Vec<(i64, i64, u64)> = runs
            .iter()
            .filter(|r| r["status"] == "skipped")
            .map(|r| {
                let t = |k: &str| {
                    chrono::DateTime::parse_from_rfc3339(r["skipped"][k].as_str().expect("t"))
                        .expect("t")
                        .timestamp_millis()
                };
                let count = r["skipped"]["count"].as_u64().expect("count");
                (t("first_scheduled_at"), t("last_scheduled_at"), count)
            })
            .collect();
        assert_eq!(
            ranges.len(),
            1,
            "{policy}: misfired runs are recorded as one skipped entry: {ranges:?}"
        );
        let (first, last, count) = ranges[0];
        assert_eq!(
            count as i64,
            (last - first) / 1000 + 1,
            "{policy}: the count matches the range"
        );
        let delivered: BTreeMap<i64, i64> = sink
            .of(policy)
            .iter()
            .map(|r| (r.scheduled_ms(), r.wall_ms))
            .collect();
        let anchor = *delivered
            .keys()
            .next()
            .expect("a delivery before the outage");
        for t in due_between(anchor, 1000, down_from + 1000, up_at) {
            let (d, s) = (delivered.contains_key(&t), first <= t && t <= last);
            assert!(
                d != s,
                "{policy}: run due at {t}: delivered={d} skipped={s} range={ranges:?}"
            );
        }
        let lateness = |t: i64| delivered.get(&t).map(|w| w - t);
        match policy {
            "fire_once" => {
                assert!(
                    count >= 3,
                    "fire_once skips all but one misfired run: {count}"
                );
                let latest = lateness(last + 1000).expect("the latest misfired run is delivered");
                assert!(latest > grace_ms, "and it was misfired: {latest} ms late");
            }
            "fire_all" => {
                // The catch-up window (3 s) keeps the two or three newest misfired runs.
                for t in [last + 1000, last + 2000] {
                    let l = lateness(t).expect("misfired runs inside the window are delivered");
                    assert!(
                        l > grace_ms,
                        "fire_all: run due at {t} was misfired: {l} ms late"
                    );
                }
                assert!(
                    up_at - last > 3000 - 1000,
                    "only runs older than the window are skipped"
                );
            }
            _ => {
                assert!(count >= 4, "skip records every misfired run: {count}");
                let late: Vec<i64> = delivered
                    .iter()
                    .filter(|(t, _)| **t > down_from + 1000)
                    .map(|(t, w)| w - t)
                    .filter(|l| *l > grace_ms + 200)
                    .collect();
                assert!(late.is_empty(), "skip delivers no misfired run: {late:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_history_is_bounded_by_the_retention_and_metrics_count_deliveries() {
    let sink = Sink::start().await;
    let c = single(&["--run-retention", "3"]).await;
    create(
        &c,
        0,
        json!({"id": "kept", "url": sink.url("/k"), "schedule": {"every": "1s"}}),
    )
    .await;
    sink.wait_for("kept", 6, Duration::from_secs(15)).await;
    let listed = eventually(Duration::from_secs(5), "runs trimmed", || async {
        let r = runs(&c, 0, "kept").await;
        (r.len() == 3).then_some(r)
    })
    .await;
    let newest = sink
        .of("kept")
        .last()
        .map(|r| r.scheduled_ms())
        .expect("a delivery");
    let listed_newest =
        chrono::DateTime::parse_from_rfc3339(listed[0]["scheduled_at"].as_str().expect("t"))
            .expect("t")
            .timestamp_millis();
    assert!(
        listed_newest >= newest - 1000,
        "the newest runs are kept, newest first"
    );
    let text = c
        .http
        .get(c.url(0, "/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("hookd_attempts_total{outcome=\"success\"}"),
        "{text}"
    );
    assert!(text.contains("hookd_runs_delivered_total"), "{text}");
    assert!(
        text.contains("hookd_delivery_lateness_seconds_bucket"),
        "{text}"
    );
    let (s, err) = c.get(0, "/v1/runs?status=lost").await.expect("runs");
    assert_eq!(
        (s, &err["error"]["code"]),
        (400, &json!("invalid_parameter"))
    );
}

/// Regression (chaos smoke): a run claimed ahead of its due instant, which then fell due while
/// the job was paused, was delivered after the resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_claimed_ahead_but_due_after_a_pause_is_never_delivered() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    let start = (now_ms() / 1000 + 2) * 1000;
    create(&c, 0, json!({"id": "ahead", "url": sink.url("/a"), "schedule": {"every": "1s", "start_at": rfc3339(start)}})).await;
    sink.wait_for("ahead", 1, Duration::from_secs(10)).await;
    // Pause 100 ms before a due instant: the dispatcher has claimed that run already.
    let next_due = (now_ms() / 1000 + 1) * 1000;
    tokio::time::sleep(Duration::from_millis(
        (next_due - 100 - now_ms()).max(0) as u64
    ))
    .await;
    let (s, _) = c
        .send(0, Method::POST, "/v1/jobs/ahead/pause", None)
        .await
        .expect("pause");
    assert_eq!(s, 200);
    let paused_at = now_ms();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s, _) = c
        .send(0, Method::POST, "/v1/jobs/ahead/resume", None)
        .await
        .expect("resume");
    assert_eq!(s, 200);
    let resumed_at = now_ms();
    let before = sink.of("ahead").len();
    sink.wait_for("ahead", before + 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during: Vec<i64> = sink
        .of("ahead")
        .iter()
        .map(|r| r.scheduled_ms())
        .filter(|t| *t > paused_at && *t <= resumed_at)
        .collect();
    assert!(
        during.is_empty(),
        "runs due while paused were delivered: {during:?} (pause {paused_at}, resume {resumed_at})"
    );
    let listed: Vec<Value> = runs(&c, 0, "ahead").await;
    assert!(
        listed.iter().all(|r| {
            let t = chrono::DateTime::parse_from_rfc3339(r["scheduled_at"].as_str().unwrap_or(""))
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            !(t > paused_at && t <= resumed_at)
        }),
        "nor recorded: {listed:?}"
    );
}
