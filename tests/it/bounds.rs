//! Schedule bounds and jitter, black box: `max_runs` and `end_at` end a job (`completed`),
//! `start_at` on cron, jittered runs due after their instant by a fixed offset below the
//! jitter, and the checks on all of them.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{create, eventually, now_ms, rfc3339, runs, single};
use crate::sink::Sink;

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

#[tokio::test]
async fn max_runs_and_end_at_complete_a_job_and_jitter_delays_each_run_by_its_offset() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    let s0 = (now_ms() / 1000 + 2) * 1000;
    let every = |id: &str, extra: Value| {
        let mut schedule = json!({"every": "1s", "start_at": rfc3339(s0)});
        for (k, v) in extra.as_object().unwrap() {
            schedule[k] = v.clone();
        }
        json!({"id": id, "url": sink.url("/b"), "schedule": schedule})
    };
    let v = create(&c, 0, every("three", json!({"max_runs": 3}))).await;
    assert_eq!(v["schedule"]["max_runs"], 3, "{v}");
    create(&c, 0, every("ends", json!({"end_at": rfc3339(s0 + 1500)}))).await;
    let mut jittered = every("jittered", json!({}));
    jittered["schedule"]["every"] = json!("2s");
    jittered["jitter"] = json!("1s");
    let v = create(&c, 0, jittered).await;
    assert_eq!(v["jitter"], "1s", "{v}");

    // Three runs, two runs: then completed, with no next fire; nothing more arrives.
    for (id, n) in [("three", 3), ("ends", 2)] {
        let job = eventually(Duration::from_secs(15), "completed", || async {
            let (_, v) = c.get(0, &format!("/v1/jobs/{id}")).await?;
            (v["state"] == "completed").then_some(v)
        })
        .await;
        assert_eq!(job["next_fire_at"], Value::Null, "{job}");
        sink.wait_for(id, n, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dues = |id: &str| -> Vec<i64> { sink.of(id).iter().map(|r| r.scheduled_ms()).collect() };
    assert_eq!(dues("three"), [s0, s0 + 1000, s0 + 2000]);
    assert_eq!(dues("ends"), [s0, s0 + 1000]);

    // Each jittered run: due within the jitter after its instant, sent no earlier than that,
    // with its instant in `hookd-scheduled-at`.
    let got = sink.wait_for("jittered", 3, Duration::from_secs(15)).await;
    let listed = runs(&c, 0, "jittered").await;
    let mut offsets = Vec::new();
    for r in &got[..3] {
        let run = listed
            .iter()
            .find(|l| l["id"] == r.webhook_id())
            .unwrap_or_else(|| panic!("run {} listed", r.webhook_id()));
        let (scheduled, due) = (ms(&run["scheduled_at"]), ms(&run["due_at"]));
        assert_eq!(scheduled, r.scheduled_ms(), "{run}");
        assert!((0..1000).contains(&(due - scheduled)), "{run}");
        assert!(
            r.wall_ms >= due - 5,
            "sent {} ms before due: {run}",
            due - r.wall_ms
        );
        offsets.push(due - scheduled);
    }
    assert!(
        offsets.iter().any(|o| *o != offsets[0]),
        "offsets differ between runs: {offsets:?}"
    );

    // A cron job starts at its start_at; the preview keeps to the bounds.
    let start = (now_ms() / 60_000 + 5) * 60_000;
    let v = create(
        &c,
        0,
        json!({"id": "cron-later", "url": sink.url("/c"),
               "schedule": {"cron": "* * * * *", "start_at": rfc3339(start), "max_runs": 2}}),
    )
    .await;
    assert_eq!(ms(&v["next_fire_at"]), start, "{v}");
    let (s, v) = c
        .post(
            0,
            "/v1/schedules/preview",
            &json!({"schedule": {"every": "1m", "start_at": rfc3339(start), "max_runs": 2},
                    "count": 5}),
        )
        .await
        .expect("preview");
    assert_eq!(s, 200, "{v}");
    let fires: Vec<i64> = v["fires"].as_array().unwrap().iter().map(ms).collect();
    assert_eq!(fires, [start, start + 60_000], "{v}");

    // The checks: 422 naming the field.
    for (patch, field) in [
        (
            json!({"schedule": {"after": "1m", "max_runs": 2}}),
            "schedule.max_runs",
        ),
        (
            json!({"schedule": {"at": rfc3339(start), "end_at": rfc3339(start)}}),
            "schedule.end_at",
        ),
        (
            json!({"schedule": {"every": "1m", "max_runs": 0}}),
            "schedule.max_runs",
        ),
        (
            json!({"schedule": {"every": "1m", "max_runs": 100_001}}),
            "schedule.max_runs",
        ),
        (
            json!({"schedule": {"every": "1m", "start_at": rfc3339(start),
                                "end_at": rfc3339(start - 1)}}),
            "schedule.end_at",
        ),
        (
            json!({"schedule": {"every": "1m"}, "jitter": "61s"}),
            "jitter",
        ),
        (
            json!({"schedule": {"cron": "0 * * * *"}, "jitter": "2h"}),
            "jitter",
        ),
        (
            json!({"schedule": {"every": "1m"}, "jitter": "soon"}),
            "jitter",
        ),
        (
            json!({"schedule": {"after": "1m", "start_at": rfc3339(start)}}),
            "schedule.start_at",
        ),
    ] {
        let mut body = json!({"url": sink.url("/x")});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, v) = c.post(0, "/v1/jobs", &body).await.expect("create");
        assert_eq!(
            (s, &v["error"]["field"]),
            (422, &json!(field)),
            "{body}: {v}"
        );
    }
}
