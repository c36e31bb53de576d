//! hookd-dispatch-bench: measures dispatch on a local three-node cluster of the release binary —
//! fire lateness (delivery received − due) at a steady 100 and 1,000 due runs per second, and the
//! gap between a leader SIGKILL and the first delivery by the new leader. Deliveries go to a sink
//! on 127.0.0.1. Every loop is bounded in count and time.

// A command-line report: printing to stdout is its job.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::http::HeaderMap;
use clap::Parser;
use hookd_jepsen::local::{http, now_ms, rfc3339, work_dir, LocalCluster, LEADER_WITHIN};
use hookd_jepsen::stats::{Latencies, Summary};
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Path of the hookd binary to measure.
    #[arg(long, default_value = "target/release/hookd")]
    hookd: PathBuf,
    /// Due-run rates to measure, runs per second.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000])]
    rates: Vec<usize>,
    /// Seconds measured per rate (after a warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Leader-kill trials (run at 100 runs/s).
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Write the JSON summary here as well.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the cluster's data dirs and logs here instead of a temporary dir.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Extra flags for every `hookd serve` (e.g. `--shards 1`).
    #[arg(long, allow_hyphen_values = true)]
    hookd_args: Vec<String>,
}

/// One delivery as the sink saw it.
#[derive(Debug, Clone)]
struct Delivery {
    job_id: String,
    received_ms: i64,
    scheduled_ms: i64,
}

type Deliveries = Arc<Mutex<Vec<Delivery>>>;

async fn start_sink() -> anyhow::Result<(String, Deliveries)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let got: Deliveries = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let store = store.clone();
        async move {
            let received_ms = now_ms();
            let scheduled_ms = headers
                .get("hookd-scheduled-at")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
                .map_or(i64::MIN, |t| t.timestamp_millis());
            let job_id = headers
                .get("hookd-job-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if let Ok(mut v) = store.lock() {
                v.push(Delivery {
                    job_id,
                    received_ms,
                    scheduled_ms,
                });
            }
            ""
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/hook"), got))
}

/// Creates `rate` jobs every 1 s whose runs are spread evenly over each second from `t0`.
async fn create_jobs(
    c: &LocalCluster,
    leader: usize,
    sink: &str,
    rate: usize,
    t0: i64,
) -> anyhow::Result<Vec<String>> {
    let http = http();
    let url = c.url(leader, "/v1/jobs");
    let ids: Vec<String> = (0..rate).map(|k| format!("r{rate}-{k}")).collect();
    let step = 1000.0 / rate as f64;
    let mut tasks = Vec::new();
    for chunk in ids.chunks(rate.div_ceil(16)) {
        let (http, url, sink) = (http.clone(), url.clone(), sink.to_owned());
        let chunk: Vec<(usize, String)> = chunk
            .iter()
            .map(|id| {
                (
                    id.rsplit('-')
                        .next()
                        .and_then(|k| k.parse().ok())
                        .unwrap_or(0),
                    id.clone(),
                )
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            for (k, id) in chunk {
                let start = t0 + (k as f64 * step) as i64;
                let start = rfc3339(start);
                let body =
                    json!({"id": id, "url": sink, "schedule": {"every": "1s", "start_at": start}});
                let resp = http.post(&url).json(&body).send().await?;
                if !resp.status().is_success() {
                    bail!("create {id}: {}", resp.status());
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(ids)
}

async fn delete_jobs(c: &LocalCluster, leader: usize, ids: &[String]) {
    let http = http();
    for id in ids {
        let _ = http
            .delete(c.url(leader, &format!("/v1/jobs/{id}")))
            .send()
            .await;
    }
}

#[derive(Debug, Serialize)]
struct RateResult {
    runs_per_s: usize,
    expected: usize,
    delivered: usize,
    lateness: Summary,
}

/// Lateness of the first delivery of each run (job, due instant) due in `[from, to)`.
fn lateness_between(got: &Deliveries, from: i64, to: i64) -> (usize, Latencies) {
    let got = got.lock().map(|v| v.clone()).unwrap_or_default();
    let mut first: std::collections::HashMap<(String, i64), i64> = Default::default();
    for d in got
        .iter()
        .filter(|d| d.scheduled_ms >= from && d.scheduled_ms < to)
    {
        let e = first
            .entry((d.job_id.clone(), d.scheduled_ms))
            .or_insert(d.received_ms);
        *e = (*e).min(d.received_ms);
    }
    let mut lat = Latencies::default();
    for ((_, due), received) in &first {
        lat.record(Duration::from_millis((received - due).max(0) as u64));
    }
    (first.len(), lat)
}

#[derive(Debug, Serialize)]
struct Report {
    rates: Vec<RateResult>,
    failover_first_delivery_ms: Vec<f64>,
    failover: Summary,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let hookd = args
        .hookd
        .canonicalize()
        .with_context(|| format!("hookd binary {}", args.hookd.display()))?;
    let (sink, got) = start_sink().await?;
    let temp = tempfile::tempdir()?;
    let dir = work_dir(args.keep.as_deref(), &temp)?;
    let mut c = LocalCluster::new(&hookd, &dir, 3, &args.hookd_args)?;
    c.spawn_all()?;
    let http = http();
    let mut l = c.await_leader(&http, LEADER_WITHIN).await?;
    let mut rates = Vec::new();
    let mut failover_gaps = Vec::new();
    for &rate in &args.rates {
        let t0 = (now_ms() / 1000 + 4) * 1000;
        let ids = create_jobs(&c, l, &sink, rate, t0).await?;
        let (from, to) = (t0 + 3000, t0 + 3000 + args.seconds as i64 * 1000);
        tokio::time::sleep(Duration::from_millis((to - now_ms() + 2000).max(0) as u64)).await;
        let (delivered, lat) = lateness_between(&got, from, to);
        let r = RateResult {
            runs_per_s: rate,
            expected: rate * args.seconds as usize,
            delivered,
            lateness: lat.summary(),
        };
        println!(
            "{:>5} due runs/s: {} of {} runs delivered, lateness {}",
            r.runs_per_s, r.delivered, r.expected, r.lateness
        );
        rates.push(r);
        if rate == args.rates[0] {
            // Failover trials under this load.
            for trial in 0..args.trials {
                l = c.await_leader(&http, LEADER_WITHIN).await?;
                c.kill(l);
                let killed = now_ms();
                let deadline = Instant::now() + Duration::from_secs(20);
                let first = loop {
                    let after = got
                        .lock()
                        .map(|v| {
                            v.iter()
                                .filter(|d| d.received_ms > killed)
                                .map(|d| d.received_ms)
                                .min()
                        })
                        .unwrap_or(None);
                    if let Some(t) = after {
                        break t;
                    }
                    if Instant::now() > deadline {
                        bail!("no delivery within 20 s of the leader kill");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                };
                let gap = (first - killed) as f64;
                println!("failover trial {trial}: leader SIGKILL → first delivery by the new leader {gap:.0} ms");
                failover_gaps.push(gap);
                c.spawn(l)?;
                c.await_ready(&http, l, Duration::from_secs(20)).await?;
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
        l = c.await_leader(&http, LEADER_WITHIN).await?;
        delete_jobs(&c, l, &ids).await;
    }
    let mut fo = Latencies::default();
    for g in &failover_gaps {
        fo.record(Duration::from_millis(*g as u64));
    }
    let report = Report {
        rates,
        failover_first_delivery_ms: failover_gaps,
        failover: fo.summary(),
    };
    println!("failover: {}", report.failover);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
