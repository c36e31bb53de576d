//! Per-target policies, black box: a rate limit holds its target to its rate while another
//! target is served at once; nothing over the limit is dropped; removing it lifts it.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{create, eventually, single};
use crate::sink::Sink;

#[tokio::test]
async fn a_rate_limit_spaces_its_target_s_attempts_and_leaves_others_alone() {
    let (limited, free) = (Sink::start().await, Sink::start().await);
    let c = single(&[]).await;
    let target = format!("127.0.0.1:{}", limited.addr.port());
    let path = format!("/v1/targets/{target}/policy");
    let (s, v) = c
        .send(
            0,
            Method::PUT,
            &path,
            Some(&json!({"rate_per_s": 5, "burst": 1})),
        )
        .await
        .expect("put policy");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"target": target, "policy": {"rate_per_s": 5.0, "burst": 1}})
    );

    let job = |id: String, sink: &Sink| json!({"id": id, "url": sink.url("/p"), "schedule": {"after": "0s"}});
    for i in 0..20 {
        create(&c, 0, job(format!("lim-{i:02}"), &limited)).await;
        create(&c, 0, job(format!("free-{i:02}"), &free)).await;
    }
    // The other target gets all its runs at once; the limited one 5 a second, all of them.
    let arrivals = |sink: &Sink| -> Vec<i64> {
        let mut at: Vec<i64> = sink.all().iter().map(|r| r.wall_ms).collect();
        at.sort_unstable();
        at
    };
    eventually(
        Duration::from_secs(10),
        "the free target's 20 runs",
        || async { (free.all().len() >= 20).then_some(()) },
    )
    .await;
    // While its runs wait, the target is listed with its policy.
    let policy = eventually(Duration::from_secs(5), "the target listed", || async {
        let (_, v) = c.get(0, "/v1/targets").await?;
        v["targets"]
            .as_array()?
            .iter()
            .find(|t| t["target"] == target.as_str())
            .map(|t| t["policy"].clone())
    })
    .await;
    assert_eq!(policy, json!({"rate_per_s": 5.0, "burst": 1}));
    eventually(
        Duration::from_secs(20),
        "the limited target's 20 runs",
        || async { (limited.all().len() >= 20).then_some(()) },
    )
    .await;
    let lim = arrivals(&limited);
    assert_eq!(lim.len(), 20, "none dropped, none twice");
    let span = lim[19] - lim[0];
    assert!(span >= 3_600, "20 at 5/s take 3.8 s, took {span} ms");
    for w in lim.windows(7) {
        assert!(w[6] - w[0] >= 1_000, "7 within a second at 5/s: {lim:?}");
    }
    let fr = arrivals(&free);
    assert!(
        fr[19] - fr[0] < 1_500,
        "the other target is not held back: {fr:?}"
    );

    // Removed: the next runs go at once.
    let (s, _) = c
        .send(0, Method::DELETE, &path, None)
        .await
        .expect("delete");
    assert_eq!(s, 204);
    for i in 20..30 {
        create(&c, 0, job(format!("lim-{i:02}"), &limited)).await;
    }
    eventually(Duration::from_secs(10), "ten more runs", || async {
        (limited.all().len() >= 30).then_some(())
    })
    .await;
    let lim = arrivals(&limited);
    assert!(lim[29] - lim[20] < 1_000, "no limit any more: {lim:?}");

    // The checks: 422 naming the field.
    for (target, body, field) in [
        (target.as_str(), json!({}), "policy"),
        (target.as_str(), json!({"rate_per_s": 0}), "rate_per_s"),
        (target.as_str(), json!({"burst": 3}), "burst"),
        (
            target.as_str(),
            json!({"max_concurrency": 0}),
            "max_concurrency",
        ),
        (target.as_str(), json!({"rate": 5}), "rate"),
        ("nohost", json!({"rate_per_s": 5}), "target"),
    ] {
        let (s, v): (u16, Value) = c
            .send(
                0,
                Method::PUT,
                &format!("/v1/targets/{target}/policy"),
                Some(&body),
            )
            .await
            .expect("put");
        assert_eq!(
            (s, &v["error"]["field"]),
            (422, &json!(field)),
            "{body}: {v}"
        );
    }
}
