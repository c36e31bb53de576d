//! `Idempotency-Key`, black box: a repeat through another node, also after the leader is
//! gone, gets the first answer (the same job, the same run) without acting again; the key with
//! another request is refused.

use reqwest::Method;
use serde_json::{json, Value};

use crate::cluster::ELECTION_WITHIN;
use crate::harness::{job, runs, TestCluster};

/// `method path` with a JSON body (if any) and `Idempotency-Key: key` through node `i`:
/// (status, whether marked replayed, body).
async fn keyed(
    c: &TestCluster,
    i: usize,
    method: Method,
    path: &str,
    body: Option<&Value>,
    key: &str,
) -> (u16, bool, Value) {
    let mut req = c
        .http
        .request(method, c.url(i, path))
        .header("idempotency-key", key);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    (status, replayed, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_repeat_through_any_node_and_after_failover_gets_the_first_answer() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);

    // A create without an id: the repeat through another node gets the same job, not a new one.
    let mut body = job("ignored");
    body.as_object_mut().unwrap().remove("id");
    body["labels"] = json!({"team": "k"});
    let (s, replayed, first) =
        keyed(&c, a, Method::POST, "/v1/jobs", Some(&body), "create-1").await;
    assert_eq!((s, replayed), (201, false), "{first}");
    // The same body written another way (spaces, key order) is the same request.
    let mut pairs: Vec<(String, Value)> = body.as_object().unwrap().clone().into_iter().collect();
    pairs.reverse();
    let spaced = pairs
        .iter()
        .map(|(k, v)| format!("\n  {k:?} : {v}"))
        .collect::<Vec<_>>()
        .join(" ,");
    let resp = c
        .http
        .post(c.url(b, "/v1/jobs"))
        .header("idempotency-key", "create-1")
        .header("content-type", "application/json")
        .body(format!("{{{spaced}\n}}"))
        .send()
        .await
        .expect("repeat");
    let (s, replayed) = (
        resp.status().as_u16(),
        resp.headers().contains_key("idempotent-replayed"),
    );
    let again: Value = resp.json().await.expect("json");
    assert_eq!((s, replayed), (201, true), "{again}");
    assert_eq!(again["id"], first["id"], "{again}");
    let (_, v) = c.get(b, "/v1/jobs?selector=team%3Dk").await.expect("list");
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(1), "{v}");
    let id = first["id"].as_str().expect("id").to_owned();

    // Another request with the key is refused; a bad key is a 400.
    let mut other = body.clone();
    other["labels"] = json!({"team": "other"});
    let (s, _, v) = keyed(&c, a, Method::POST, "/v1/jobs", Some(&other), "create-1").await;
    assert_eq!(
        (s, &v["error"]["code"], &v["error"]["field"]),
        (
            422,
            &json!("idempotency_key_reused"),
            &json!("Idempotency-Key")
        ),
        "{v}"
    );
    let trigger = format!("/v1/jobs/{id}/trigger");
    let (s, _, v) = keyed(&c, a, Method::POST, &trigger, None, "create-1").await;
    assert_eq!(s, 422, "the key on another route: {v}");
    for bad in ["has space", &"k".repeat(256)] {
        let (s, _, v) = keyed(&c, a, Method::POST, &trigger, None, bad).await;
        assert_eq!(
            (s, &v["error"]["field"]),
            (400, &json!("Idempotency-Key")),
            "{v}"
        );
    }

    // A trigger, then the leader is gone: the repeat through the node left gets the same run.
    let (s, _, run) = keyed(&c, a, Method::POST, &trigger, None, "trigger-1").await;
    assert_eq!(s, 202, "{run}");
    c.terminate(leader);
    c.wait_leader(&[a, b], ELECTION_WITHIN).await;
    let (s, replayed, again) = keyed(&c, b, Method::POST, &trigger, None, "trigger-1").await;
    assert_eq!((s, replayed), (202, true), "{again}");
    assert_eq!(again["id"], run["id"], "{again}");
    let manual = runs(&c, b, &id).await;
    assert_eq!(
        manual.iter().filter(|r| r["manual"] == true).count(),
        1,
        "{manual:?}"
    );

    // A bulk request: the repeat gets the first totals, though acting again would change none.
    let bulk = json!({"action": "pause", "selector": "team=k"});
    let (s, replayed, first) =
        keyed(&c, a, Method::POST, "/v1/jobs/bulk", Some(&bulk), "bulk-1").await;
    assert_eq!(
        (s, replayed, &first["changed"]),
        (200, false, &json!(1)),
        "{first}"
    );
    let (s, replayed, again) =
        keyed(&c, b, Method::POST, "/v1/jobs/bulk", Some(&bulk), "bulk-1").await;
    assert_eq!((s, replayed), (200, true), "{again}");
    assert_eq!(again, first);
    let (s, _, v) = keyed(
        &c,
        b,
        Method::POST,
        "/v1/jobs/bulk",
        Some(&json!({"action": "resume", "selector": "team=k"})),
        "bulk-1",
    )
    .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (422, &json!("idempotency_key_reused")),
        "{v}"
    );

    // Within its bound, a repeat changes nothing more: the job stays as the first made it.
    let (_, v) = c.get(b, &format!("/v1/jobs/{id}")).await.expect("job");
    assert_eq!(
        (&v["state"], &v["version"]),
        (&json!("paused"), &json!(2)),
        "{v}"
    );
}
