//! Events (SPEC §3a), black box: callbacks and notifications get one event per final outcome,
//! signed and retried like runs under a stable `webhook-id`; notifications are managed at
//! `/v1/notifications`; a leader change and a lost member are told to subscribers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{create, eventually, runs, single, TestCluster};
use crate::sink::{Received, Reply, Sink};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn put(c: &TestCluster, i: usize, path: &str, body: &Value) -> (u16, Value) {
    c.send(i, Method::PUT, path, Some(body))
        .await
        .expect("PUT answered")
}

fn body(r: &Received) -> Value {
    serde_json::from_slice(&r.body).expect("an event body is JSON")
}

/// Events received on `path`, as (webhook-id, body).
fn on(sink: &Sink, path: &str) -> Vec<(String, Value)> {
    sink.all()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| (r.webhook_id().to_owned(), body(r)))
        .collect()
}

#[tokio::test]
async fn notifications_are_created_read_listed_replaced_and_deleted_with_secrets_masked() {
    let c = single(&[]).await;
    let n = json!({"url": "http://127.0.0.1:9/n", "headers": {"Authorization": "Bearer s3cret"},
                   "secret_headers": ["authorization"], "events": ["run.failed", "leader.changed"],
                   "selector": "team=pay"});
    let (s, created) = put(&c, 0, "/v1/notifications/ops", &n).await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["headers"]["authorization"], "***", "{created}");
    assert_eq!(created["events"], json!(["run.failed", "leader.changed"]));
    assert_eq!(created["version"], 1);
    let (s, again) = put(&c, 0, "/v1/notifications/ops", &n).await;
    assert_eq!(
        (s, &again["version"]),
        (200, &json!(1)),
        "the same: unchanged"
    );
    // Sent back as read, the masked secret keeps its value.
    let (s, kept) = put(&c, 0, "/v1/notifications/ops", &created).await;
    assert_eq!((s, &kept["version"]), (200, &json!(1)), "{kept}");
    let mut changed = n.clone();
    changed["events"] = json!(["run.succeeded"]);
    let (s, replaced) = put(&c, 0, "/v1/notifications/ops", &changed).await;
    assert_eq!((s, &replaced["version"]), (200, &json!(2)), "{replaced}");
    let (s, got) = c.get(0, "/v1/notifications/ops").await.unwrap();
    assert_eq!((s, &got["events"]), (200, &json!(["run.succeeded"])));
    let (s, list) = c.get(0, "/v1/notifications?limit=10").await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(list["notifications"][0]["id"], "ops", "{list}");
    assert_eq!(list["next"], Value::Null);

    // Refused with the field named: an unknown type, no type, a bad selector, a denied literal
    // address, an unknown field; and a masked secret with nothing stored.
    for (bad, field) in [
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["run.nope"]}),
            "events",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": []}),
            "events",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["run.failed"], "selector": "a in ("}),
            "selector",
        ),
        (
            json!({"url": "http://169.254.169.254/", "events": ["run.failed"]}),
            "url",
        ),
        (
            json!({"url": "ftp://127.0.0.1/", "events": ["run.failed"]}),
            "url",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["run.failed"], "extra": 1}),
            "extra",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["run.failed"],
                "headers": {"x-k": "***"}, "secret_headers": ["x-k"]}),
            "headers.x-k",
        ),
    ] {
        let (s, e) = put(&c, 0, "/v1/notifications/bad", &bad).await;
        assert_eq!(s, 422, "{bad} → {e}");
        assert!(
            e["error"]["field"].as_str().unwrap_or("").contains(field),
            "{bad} → {e}"
        );
    }
    // A job's callbacks are checked the same way, under their field.
    let mut job = crate::harness::job("cb");
    job["on_failure"] = json!({"url": "http://169.254.169.254/x"});
    let (s, e) = c.post(0, "/v1/jobs", &job).await.unwrap();
    assert_eq!(
        (s, &e["error"]["field"]),
        (422, &json!("on_failure.url")),
        "{e}"
    );
    job["on_failure"] = json!({"url": "http://127.0.0.1:9/x", "body": "no"});
    let (s, _) = c.post(0, "/v1/jobs", &job).await.unwrap();
    assert_eq!(s, 422);

    let (s, _) = c
        .send(0, Method::DELETE, "/v1/notifications/ops", None)
        .await
        .unwrap();
    assert_eq!(s, 204);
    let (s, _) = c.get(0, "/v1/notifications/ops").await.unwrap();
    assert_eq!(s, 404);
    let (s, _) = c
        .send(0, Method::DELETE, "/v1/notifications/ops", None)
        .await
        .unwrap();
    assert_eq!(s, 404);
}

#[tokio::test]
async fn each_final_outcome_is_one_event_delivered_to_its_callback_and_matching_notifications() {
    let targets = Sink::start().await;
    let events = Sink::start().await;
    let c = single(&["--signing-secret", SECRET]).await;
    let (s, _) = put(
        &c,
        0,
        "/v1/notifications/pay",
        &json!({"url": events.url("/n"), "headers": {"authorization": "Bearer n"},
                "secret_headers": ["authorization"], "events": ["run.succeeded", "run.failed"],
                "selector": "team=pay"}),
    )
    .await;
    assert_eq!(s, 201);
    let fail = Reply {
        status: 500,
        retry_after: None,
    };
    targets.reply("bad", fail.clone());
    targets.reply("other", fail);
    // The first two attempts of the bad job's failure event get 503: retried, same id.
    events.reply(
        "bad",
        Reply {
            status: 503,
            retry_after: None,
        },
    );
    let retry = json!({"max_attempts": 2, "initial_backoff": "100ms"});
    let ok = create(
        &c,
        0,
        json!({"id": "ok", "url": targets.url("/t"), "schedule": {"after": "1ms"},
               "labels": {"team": "pay"}, "on_success": {"url": events.url("/cb-ok")},
               "on_failure": {"url": events.url("/never")}}),
    )
    .await;
    assert_eq!(ok["on_success"]["url"], events.url("/cb-ok"), "{ok}");
    let bad = create(
        &c,
        0,
        json!({"id": "bad", "url": targets.url("/t"), "schedule": {"after": "1ms"}, "retry": retry,
               "labels": {"team": "pay"},
               "on_failure": {"url": events.url("/cb-bad"), "headers": {"x-token": "t0ken"},
                              "secret_headers": ["x-token"]}}),
    )
    .await;
    assert_eq!(bad["on_failure"]["headers"]["x-token"], "***", "{bad}");
    create(
        &c,
        0,
        json!({"id": "other", "url": targets.url("/t"), "schedule": {"after": "1ms"},
               "retry": retry, "labels": {"team": "ops"}}),
    )
    .await;

    let failed = eventually(Duration::from_secs(20), "bad's event retried", || async {
        let got: Vec<Received> = events
            .all()
            .into_iter()
            .filter(|r| r.path == "/cb-bad")
            .collect();
        (got.len() >= 2).then_some(got)
    })
    .await;
    assert_eq!(
        failed[0].webhook_id(),
        failed[1].webhook_id(),
        "one id on every attempt"
    );
    assert_eq!(
        (
            failed[0].header("hookd-attempt"),
            failed[1].header("hookd-attempt")
        ),
        ("1", "2")
    );
    events.reply(
        "bad",
        Reply {
            status: 204,
            retry_after: None,
        },
    );
    eventually(Duration::from_secs(20), "every event delivered", || async {
        let done = ["/cb-ok", "/n"].iter().all(|p| !on(&events, p).is_empty())
            && events.of("bad").iter().any(|r| {
                r.path == "/cb-bad" && r.header("hookd-attempt").parse::<u32>().unwrap_or(0) >= 3
            })
            && on(&events, "/n").len() >= 2;
        done.then_some(())
    })
    .await;
    // Quiet for a moment: nothing more may come.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = events.all();

    // Every event: the type in its header and body, its id as webhook-id, signed, JSON.
    for r in &all {
        let b = body(r);
        assert_eq!(r.header("hookd-event-type"), b["type"], "{b}");
        assert_eq!(r.webhook_id(), b["id"], "{b}");
        assert!(r.webhook_id().starts_with("evt_"), "{b}");
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.header("webhook-signature").starts_with("v1,"), "signed");
        assert_ne!(r.path, "/never", "no success event to on_failure");
        assert_ne!(
            b["job"]["id"], "other",
            "other is neither called back nor selected"
        );
    }
    let ok_run = runs(&c, 0, "ok").await[0]["id"].clone();
    let bad_run = runs(&c, 0, "bad").await[0]["id"].clone();
    let cb_ok = on(&events, "/cb-ok");
    assert_eq!(cb_ok.len(), 1, "{cb_ok:?}");
    assert_eq!(cb_ok[0].1["type"], "run.succeeded");
    assert_eq!(cb_ok[0].1["run"]["id"], ok_run);
    assert_eq!(cb_ok[0].1["run"]["status"], "succeeded");
    assert_eq!(cb_ok[0].1["job"]["labels"]["team"], "pay");
    let cb_bad: BTreeSet<&str> = all
        .iter()
        .filter(|r| r.path == "/cb-bad")
        .map(|r| r.webhook_id())
        .collect();
    assert_eq!(cb_bad.len(), 1, "one event id however often sent");
    let bad_event = body(all.iter().find(|r| r.path == "/cb-bad").unwrap());
    assert_eq!(bad_event["run"]["id"], bad_run);
    assert_eq!(bad_event["run"]["status"], "failed");
    assert_eq!(
        bad_event["run"]["attempts"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(all
        .iter()
        .filter(|r| r.path == "/cb-bad")
        .all(|r| r.header("x-token") == "t0ken"));
    // The notification got both events, under the same ids as the callbacks.
    let n: BTreeMap<String, Value> = on(&events, "/n").into_iter().collect();
    assert_eq!(n.len(), 2, "{n:?}");
    assert!(n.contains_key(&cb_ok[0].0) && n.contains_key(*cb_bad.first().unwrap()));
    assert!(all
        .iter()
        .filter(|r| r.path == "/n")
        .all(|r| r.header("authorization") == "Bearer n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_and_a_lost_then_recovered_member_are_told_once_each() {
    let events = Sink::start().await;
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let (s, _) = put(
        &c,
        leader,
        "/v1/notifications/cluster",
        &json!({"url": events.url("/c"),
                "events": ["leader.changed", "node.unreachable", "node.recovered"]}),
    )
    .await;
    assert_eq!(s, 201);
    let old_id = leader as u64 + 1;
    c.terminate(leader);
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new = c.wait_leader(&rest, Duration::from_secs(15)).await;
    let told = |kind: &'static str| {
        let events = events.clone();
        async move {
            let got: Vec<Value> = on(&events, "/c")
                .into_iter()
                .map(|(_, b)| b)
                .filter(|b| b["type"] == kind)
                .collect();
            (!got.is_empty()).then_some(got)
        }
    };
    let changed = eventually(Duration::from_secs(10), "leader.changed", || {
        told("leader.changed")
    })
    .await;
    assert_eq!(changed[0]["leader"]["id"], new as u64 + 1, "{changed:?}");
    let lost = eventually(Duration::from_secs(20), "node.unreachable", || {
        told("node.unreachable")
    })
    .await;
    assert_eq!(lost[0]["node"]["id"], old_id, "{lost:?}");
    c.spawn(leader);
    let back = eventually(Duration::from_secs(20), "node.recovered", || {
        told("node.recovered")
    })
    .await;
    assert_eq!(back[0]["node"]["id"], old_id, "{back:?}");
    // Each change told once: the loss, the return, and each change of shard 0's leader, which
    // may move back to the returned node (its preferred leader) once it is caught up.
    let told: Vec<(String, Value)> = on(&events, "/c");
    let kinds = |kind: &str| {
        let ids: BTreeSet<&String> = told
            .iter()
            .filter(|(_, b)| b["type"] == kind)
            .map(|(id, _)| id)
            .collect();
        ids.len()
    };
    assert_eq!(
        (kinds("node.unreachable"), kinds("node.recovered")),
        (1, 1),
        "each change told once: {told:?}"
    );
    assert!((1..=2).contains(&kinds("leader.changed")), "{told:?}");
}
