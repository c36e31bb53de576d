//! Safe edits, black box: `ETag` on every job answer, `If-Match` on PUT, PATCH, DELETE, pause
//! and resume (`412` with the current version), and `PATCH` as a JSON merge patch that keeps
//! secrets, and keeps the schedule's rhythm unless it changes the schedule.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{create, now_ms, rfc3339, single, TestCluster};
use crate::sink::Sink;

/// Sends `method path` with an optional JSON body and `If-Match`: (status, ETag, body).
async fn call(
    c: &TestCluster,
    method: Method,
    path: &str,
    body: Option<&Value>,
    if_match: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = c.http.request(method, c.url(0, path));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/merge-patch+json")
            .body(b.to_string());
    }
    if let Some(m) = if_match {
        req = req.header("if-match", m);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, etag, resp.json().await.unwrap_or(Value::Null))
}

fn assert_412(got: &(u16, Option<String>, Value), current: Option<u64>) {
    let (s, etag, v) = got;
    assert_eq!(*s, 412, "{v}");
    assert_eq!(v["error"]["code"], "precondition_failed", "{v}");
    assert_eq!(v["error"]["current_version"], json!(current), "{v}");
    assert_eq!(etag.clone(), current.map(|c| format!("\"{c}\"")), "{v}");
}

#[tokio::test]
async fn etags_and_if_match_guard_every_change_and_patch_merges() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    let mut body = json!({"id": "e1", "url": sink.url("/e"), "schedule": {"every": "1h"},
                          "headers": {"authorization": "Bearer s3cret", "x-a": "1"},
                          "secret_headers": ["authorization"], "body": "v1"});
    create(&c, 0, body.clone()).await;
    let (s, etag, v) = call(&c, Method::GET, "/v1/jobs/e1", None, None).await;
    assert_eq!(
        (s, etag.as_deref(), &v["version"]),
        (200, Some("\"1\""), &json!(1))
    );

    // PUT: only over the version named.
    body["body"] = json!("v2");
    body["headers"]["authorization"] = json!("***");
    let (s, etag, v) = call(&c, Method::PUT, "/v1/jobs/e1", Some(&body), Some("\"1\"")).await;
    assert_eq!((s, etag.as_deref()), (200, Some("\"2\"")), "{v}");
    let stale = call(&c, Method::PUT, "/v1/jobs/e1", Some(&body), Some("\"1\"")).await;
    assert_412(&stale, Some(2));

    // PATCH: merged into the job as sent; fields not named stay, null removes.
    let patch = json!({"labels": {"team": "x"}, "headers": {"x-a": null, "x-b": "2"}});
    let (s, etag, v) = call(
        &c,
        Method::PATCH,
        "/v1/jobs/e1",
        Some(&patch),
        Some("\"2\""),
    )
    .await;
    assert_eq!((s, etag.as_deref()), (200, Some("\"3\"")), "{v}");
    assert_eq!(v["labels"], json!({"team": "x"}), "{v}");
    assert_eq!(
        v["headers"],
        json!({"authorization": "***", "x-b": "2"}),
        "{v}"
    );
    assert_eq!(
        (&v["body"], &v["schedule"]),
        (&json!("v2"), &json!({"every": "1h"})),
        "{v}"
    );
    // A patch that changes nothing changes no version; a stale one is refused.
    let (s, etag, _) = call(&c, Method::PATCH, "/v1/jobs/e1", Some(&json!({})), None).await;
    assert_eq!((s, etag.as_deref()), (200, Some("\"3\"")));
    assert_412(
        &call(
            &c,
            Method::PATCH,
            "/v1/jobs/e1",
            Some(&json!({"body": "x"})),
            Some("\"2\""),
        )
        .await,
        Some(3),
    );
    // The secret kept through PUT and PATCH is what the target gets.
    let (s, _) = c
        .post(0, "/v1/jobs/e1/trigger", &json!({}))
        .await
        .expect("trigger");
    assert_eq!(s, 202);
    let got = sink.wait_for("e1", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("authorization"), "Bearer s3cret");
    assert_eq!((got[0].header("x-b"), got[0].header("x-a")), ("2", ""));
    assert_eq!(&got[0].body[..], b"v2");

    // Pause, resume and delete: only over the version named, or any with *.
    assert_412(
        &call(&c, Method::POST, "/v1/jobs/e1/pause", None, Some("\"1\"")).await,
        Some(3),
    );
    let (s, etag, _) = call(&c, Method::POST, "/v1/jobs/e1/pause", None, Some("\"3\"")).await;
    assert_eq!((s, etag.as_deref()), (200, Some("\"4\"")));
    let (s, etag, _) = call(&c, Method::POST, "/v1/jobs/e1/resume", None, Some("*")).await;
    assert_eq!((s, etag.as_deref()), (200, Some("\"5\"")));
    assert_412(
        &call(
            &c,
            Method::DELETE,
            "/v1/jobs/e1",
            None,
            Some("\"4\", \"3\""),
        )
        .await,
        Some(5),
    );
    let (s, _, _) = call(&c, Method::GET, "/v1/jobs/e1", None, None).await;
    assert_eq!(s, 200, "a refused delete deletes nothing");
    let (s, _, _) = call(
        &c,
        Method::DELETE,
        "/v1/jobs/e1",
        None,
        Some("W/\"4\", \"5\""),
    )
    .await;
    assert_eq!(s, 204);

    // No job: If-Match fails (and creates nothing); a plain PATCH is a 404.
    assert_412(
        &call(&c, Method::PUT, "/v1/jobs/e1", Some(&body), Some("*")).await,
        None,
    );
    assert_412(
        &call(
            &c,
            Method::PATCH,
            "/v1/jobs/e1",
            Some(&json!({})),
            Some("*"),
        )
        .await,
        None,
    );
    let (s, _, _) = call(&c, Method::GET, "/v1/jobs/e1", None, None).await;
    assert_eq!(s, 404);
    let (s, _, v) = call(&c, Method::PATCH, "/v1/jobs/e1", Some(&json!({})), None).await;
    assert_eq!((s, &v["error"]["code"]), (404, &json!("not_found")), "{v}");

    // Bad patches and headers.
    create(
        &c,
        0,
        json!({"id": "e2", "url": sink.url("/e"), "schedule": {"every": "1h"}}),
    )
    .await;
    for (patch, if_match, status, field) in [
        (
            json!({"schedule": {"every": "0s"}}),
            None,
            422,
            "schedule.every",
        ),
        (json!({"id": "other"}), None, 422, "id"),
        (json!({"url": null}), None, 422, "url"),
        (json!({"nope": 1}), None, 422, "nope"),
        (json!([1]), None, 422, "body"),
        (json!({}), Some("3"), 400, "If-Match"),
        (json!({}), Some("\"x\""), 400, "If-Match"),
    ] {
        let (s, _, v) = call(&c, Method::PATCH, "/v1/jobs/e2", Some(&patch), if_match).await;
        assert_eq!(
            (s, &v["error"]["field"]),
            (status, &json!(field)),
            "{patch}: {v}"
        );
    }
    let (_, etag, _) = call(&c, Method::GET, "/v1/jobs/e2", None, None).await;
    assert_eq!(
        etag.as_deref(),
        Some("\"1\""),
        "refused patches change nothing"
    );
}

/// A patch that keeps the schedule keeps its rhythm: no run is missed or doubled across it. One
/// that changes the schedule drops the old schedule's runs not yet due: none is delivered after
/// the answer, and the new schedule counts from the change.
#[tokio::test]
async fn a_patch_keeps_the_schedule_running_unless_it_changes_it() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    let start = (now_ms() / 1000 + 2) * 1000;
    create(
        &c,
        0,
        json!({"id": "tick", "url": sink.url("/t"),
               "schedule": {"every": "1s", "start_at": rfc3339(start)}}),
    )
    .await;
    sink.wait_for("tick", 2, Duration::from_secs(10)).await;
    let (s, _, v) = call(
        &c,
        Method::PATCH,
        "/v1/jobs/tick",
        Some(&json!({"body": "b"})),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let patched_ms = now_ms();
    let got = sink.wait_for("tick", 5, Duration::from_secs(10)).await;
    let dues: Vec<i64> = got.iter().map(|r| r.scheduled_ms()).collect();
    let want: Vec<i64> = (0..dues.len() as i64).map(|k| start + k * 1000).collect();
    assert_eq!(dues, want, "every second once, across the patch");
    assert!(
        got.iter()
            .any(|r| r.scheduled_ms() > patched_ms && &r.body[..] == b"b"),
        "runs after the patch carry its body"
    );

    let (s, _, v) = call(
        &c,
        Method::PATCH,
        "/v1/jobs/tick",
        Some(&json!({"schedule": {"every": "1h", "start_at": null}})),
        None,
    )
    .await;
    let changed_ms = now_ms();
    assert_eq!(s, 200, "{v}");
    let next = chrono::DateTime::parse_from_rfc3339(v["next_fire_at"].as_str().expect("next"))
        .expect("instant")
        .timestamp_millis();
    assert!(
        (changed_ms + 3_590_000..=changed_ms + 3_600_000).contains(&next),
        "the new schedule counts from the change: {v}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late: Vec<i64> = sink
        .of("tick")
        .iter()
        .filter(|r| r.wall_ms > changed_ms + 200)
        .map(|r| r.scheduled_ms() - changed_ms)
        .collect();
    assert!(
        late.is_empty(),
        "old schedule's runs after the change: {late:?}"
    );
}
