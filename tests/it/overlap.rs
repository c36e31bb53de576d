//! The overlap policy, black box: jobs firing every second at a target that answers `503`, so
//! each run stays open (retrying) while the next ones fall due.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{create, eventually, now_ms, rfc3339, runs, single, TestCluster};
use crate::sink::{Reply, Sink};

/// The runs of `id` with at least one attempt that are still open.
fn open_attempted(runs: &[Value]) -> Vec<String> {
    runs.iter()
        .filter(|r| {
            ["pending", "in_flight", "retrying"].contains(&r["status"].as_str().unwrap_or(""))
                && r["attempts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .map(|r| r["id"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn job_runs_when(
    c: &TestCluster,
    id: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    eventually(Duration::from_secs(20), what, || async {
        let got = runs(c, 0, id).await;
        done(&got).then_some(got)
    })
    .await
}

#[tokio::test]
async fn skip_buffer_one_and_cancel_previous_decide_what_a_run_does_while_another_is_open() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    let start = (now_ms() / 1000 + 2) * 1000;
    for (id, overlap, retry) in [
        (
            "skip",
            "skip",
            json!({"max_attempts": 4, "initial_backoff": "2s"}),
        ),
        (
            "buffer",
            "buffer_one",
            json!({"max_attempts": 2, "initial_backoff": "2s"}),
        ),
        (
            "cancel",
            "cancel_previous",
            json!({"max_attempts": 5, "initial_backoff": "10s"}),
        ),
    ] {
        sink.reply(
            id,
            Reply {
                status: 503,
                retry_after: None,
            },
        );
        let v = create(
            &c,
            0,
            json!({"id": id, "url": sink.url("/o"), "overlap": overlap, "retry": retry,
                   "schedule": {"every": "1s", "start_at": rfc3339(start)}}),
        )
        .await;
        assert_eq!(v["overlap"], overlap, "{v}");
    }

    // skip: while the first run retries, the next ones are recorded skipped (overlap), and
    // never is more than one run open; a trigger follows the policy too.
    let got = job_runs_when(&c, "skip", "runs of skip skipped for overlap", |r| {
        r.iter().filter(|r| r["skip_reason"] == "overlap").count() >= 2
    })
    .await;
    assert!(open_attempted(&got).len() <= 1, "{got:?}");
    let (s, v) = c
        .post(0, "/v1/jobs/skip/trigger", &json!({}))
        .await
        .expect("trigger");
    assert_eq!(s, 202, "{v}");
    let trigger = v["id"].as_str().expect("run id").to_owned();
    job_runs_when(&c, "skip", "the trigger skipped", |r| {
        r.iter()
            .any(|r| r["id"] == trigger.as_str() && r["skip_reason"] == "overlap")
    })
    .await;
    // The first run stays open (four attempts over 14 s): it is the only one sent.
    let sent: Vec<i64> = sink.of("skip").iter().map(|r| r.scheduled_ms()).collect();
    assert!(sent.iter().all(|d| *d == start), "{sent:?}");

    // buffer_one: the second run waits, later ones are skipped; when the first fails for
    // good, the waiting one is attempted.
    let second = start + 1000;
    job_runs_when(
        &c,
        "buffer",
        "the held run attempted after the first failed",
        |r| {
            let by_due = |due: i64| {
                r.iter()
                    .find(|x| x["scheduled_at"] == rfc3339(due).as_str())
                    .cloned()
            };
            let first_failed = by_due(start).is_some_and(|x| x["status"] == "failed");
            let held_ran = by_due(second)
                .is_some_and(|x| x["attempts"].as_array().is_some_and(|a| !a.is_empty()));
            let skipped = r.iter().any(|x| x["skip_reason"] == "overlap");
            first_failed && held_ran && skipped
        },
    )
    .await;
    let first_of = |due: i64| {
        sink.of("buffer")
            .iter()
            .filter(|r| r.scheduled_ms() == due)
            .map(|r| r.wall_ms)
            .min()
    };
    let (last_of_first, first_of_held) = (
        sink.of("buffer")
            .iter()
            .filter(|r| r.scheduled_ms() == start)
            .map(|r| r.wall_ms)
            .max(),
        first_of(second),
    );
    assert!(
        last_of_first < first_of_held,
        "the held run starts after the first ended: {last_of_first:?} {first_of_held:?}"
    );

    // cancel_previous: each new run ends the open one (failed, superseded).
    let got = job_runs_when(&c, "cancel", "superseded runs", |r| {
        r.iter().filter(|x| x["error"] == "superseded").count() >= 2
    })
    .await;
    assert!(open_attempted(&got).len() <= 1, "{got:?}");
    for r in got.iter().filter(|x| x["error"] == "superseded") {
        assert_eq!(r["status"], "failed", "{r}");
    }

    // A bad policy is refused.
    let (s, v) = c
        .post(
            0,
            "/v1/jobs",
            &json!({"url": sink.url("/o"), "schedule": {"every": "1m"}, "overlap": "forbid"}),
        )
        .await
        .expect("create");
    assert_eq!((s, &v["error"]["field"]), (422, &json!("overlap")), "{v}");
}
