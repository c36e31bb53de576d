//! A planned rolling restart (SPEC §5, #11): each node in turn stopped with SIGTERM, down 2 s,
//! started again, while an every-second job fires and a client writes through every node that
//! is up. No run may be missed and no write to a node that is up refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, now_ms, ticking_cluster, ticks_missed};
use crate::sink::Sink;

/// One write of the client: the node it went to, its status (`None`: no answer), and for a
/// refusal the answer's body and the node that was down then (to tell the cause apart).
type Outcome = (usize, Option<u16>, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_misses_no_run_and_refuses_no_write_to_a_node_that_is_up() {
    let sink = Sink::start().await;
    let (mut c, leader, start) = ticking_cluster(&sink).await;

    // The client: creates through each node that is up, in turn.
    let up: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(true)).collect());
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = (0..3).map(|i| c.url(i, "/v1/jobs")).collect();
    let writer = tokio::spawn({
        let (up, outcomes, stop, http) =
            (up.clone(), outcomes.clone(), stop.clone(), c.http.clone());
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                for (i, url) in urls.iter().enumerate() {
                    if !up[i].load(Ordering::Acquire) {
                        continue;
                    }
                    n += 1;
                    let body = json!({"id": format!("w{n}"), "url": "http://127.0.0.1:9/h",
                                      "schedule": {"after": "1h"}});
                    let sent = now_ms();
                    let outcome = match http.post(url).json(&body).send().await {
                        Ok(r) if r.status() == 201 => (i, Some(201), String::new()),
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let text = r.text().await.unwrap_or_default();
                            (i, Some(status), format!("{text} (sent at {sent})"))
                        }
                        Err(e) => (i, None, format!("{e} (sent at {sent})")),
                    };
                    outcomes.lock().expect("lock").push(outcome);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // Followers first, the leader last, as an operator would.
    let mut order: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    order.push(leader);
    for i in order {
        up[i].store(false, Ordering::Release);
        eprintln!("rolling restart: stopping node {i} at {}", now_ms());
        let status = c.terminate(i);
        assert!(status.success(), "node {i} stops cleanly: {status:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.spawn(i);
        eventually(
            Duration::from_secs(15),
            "the restarted node to be ready",
            || async { c.get(i, "/readyz").await.filter(|(s, _)| *s == 200) },
        )
        .await;
        up[i].store(true, Ordering::Release);
        eprintln!("rolling restart: node {i} ready at {}", now_ms());
    }
    let restarted_at = now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    writer.await.expect("writer");

    let outcomes = outcomes.lock().expect("lock").clone();
    let refused: Vec<&Outcome> = outcomes
        .iter()
        .filter(|(_, s, _)| *s != Some(201))
        .collect();
    assert!(
        outcomes.len() > 100,
        "the client kept writing: {}",
        outcomes.len()
    );
    assert!(
        refused.is_empty(),
        "{} of {} writes to a node that was up were not 201: {:?}\n{}",
        refused.len(),
        outcomes.len(),
        &refused[..refused.len().min(10)],
        c.logs()
    );

    // Every run from the start until after the restart was delivered.
    let (missing, last) = ticks_missed(&sink, start, restarted_at, Duration::from_secs(10)).await;
    let received = sink.of("tick");
    assert!(missing.is_empty(), "runs missed: {missing:?}\n{}", c.logs());
    let lateness_ms = (0..)
        .map(|k| start + k * 1000)
        .take_while(|d| *d <= last)
        .filter_map(|d| {
            received
                .iter()
                .filter(|r| r.scheduled_ms() == d)
                .map(|r| r.wall_ms - d)
                .min()
        })
        .max();
    eprintln!(
        "rolling restart: {} writes, 0 refused; {} runs, 0 missed; max lateness {lateness_ms:?} ms",
        outcomes.len(),
        (last - start) / 1000 + 1
    );
}
