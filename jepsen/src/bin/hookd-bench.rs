//! hookd-bench: measures a local three-node cluster of the release binary — leader election on a
//! fresh cluster, create latency with 1, 32 and 64 clients, and the gap from a leader SIGKILL to
//! the first successful write. Every loop is bounded in count and time.

// A command-line report: printing to stdout is its job.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hookd_jepsen::etcd::EtcdCluster;
use hookd_jepsen::local::{http_builder, work_dir, LocalCluster, LEADER_WITHIN};
use hookd_jepsen::stats::{Latencies, Summary};
use hookd_jepsen::wrk::{self, Totals};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    /// Path of the hookd binary to measure.
    #[arg(long, default_value = "target/release/hookd")]
    hookd: PathBuf,
    /// Creates per load step.
    #[arg(long, default_value_t = 4000)]
    creates: usize,
    /// Leader-kill trials.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Write the JSON summary here as well.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the measured cluster's data dirs and logs here instead of a temporary dir.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Seconds per wrk run of the side-by-side with etcd (0 skips it).
    #[arg(long, default_value_t = 10)]
    versus_etcd_secs: u64,
    /// Extra flags for every `hookd serve`.
    #[arg(long, allow_hyphen_values = true)]
    hookd_args: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LoadResult {
    clients: usize,
    target: &'static str,
    ok: usize,
    errors: usize,
    creates_per_s: f64,
    latency: Summary,
}

/// One concurrency of the side-by-side: the same wrk, connections and value against both.
#[derive(Debug, Serialize)]
struct Versus {
    clients: usize,
    hookd: Totals,
    etcd: Totals,
    /// hookd's successful creates per second over etcd's puts per second.
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    fresh_election_ms: Vec<f64>,
    loads: Vec<LoadResult>,
    versus_etcd: Vec<Versus>,
    failover_first_write_ms: Vec<f64>,
    failover: Summary,
}

fn http() -> reqwest::Client {
    http_builder()
        .pool_max_idle_per_host(128)
        .build()
        .expect("http client")
}

fn job(id: &str) -> Value {
    json!({"id": id, "url": "http://127.0.0.1:9/bench", "schedule": {"after": "24h"}})
}

async fn create(http: &reqwest::Client, url: &str, id: &str) -> bool {
    match http.post(url).json(&job(id)).send().await {
        Ok(r) => r.status().as_u16() == 201,
        Err(_) => false,
    }
}

/// `clients` concurrent clients create `total` jobs, against the leader or round-robin.
async fn load(
    c: &LocalCluster,
    leader: usize,
    clients: usize,
    total: usize,
    spread: bool,
    tag: &str,
) -> LoadResult {
    let urls: Vec<String> = (0..c.nodes.len()).map(|i| c.url(i, "/v1/jobs")).collect();
    let http = http();
    let per_client = total / clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let url = if spread {
            urls[k % urls.len()].clone()
        } else {
            urls[leader].clone()
        };
        let http = http.clone();
        let tag = format!("{tag}-{k}");
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let (mut ok, mut err) = (0, 0);
            for n in 0..per_client {
                let t = Instant::now();
                if create(&http, &url, &format!("{tag}-{n}")).await {
                    ok += 1;
                    lat.record(t.elapsed());
                } else {
                    err += 1;
                }
            }
            (lat, ok, err)
        }));
    }
    let mut all = Latencies::default();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (lat, o, e) = t.await.expect("client task");
        all.merge(&lat);
        ok += o;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    LoadResult {
        clients,
        target: if spread { "all nodes" } else { "leader" },
        ok,
        errors,
        creates_per_s: ok as f64 / secs,
        latency: all.summary(),
    }
}

/// Kills the leader while a client writes through a survivor; returns kill → first 201.
async fn failover_trial(c: &mut LocalCluster, trial: usize) -> anyhow::Result<Duration> {
    let http = http();
    let leader = c.await_leader(&http, Duration::from_secs(10)).await?;
    let survivor = (0..c.nodes.len())
        .find(|i| *i != leader)
        .context("a survivor")?;
    let url = c.url(survivor, "/v1/jobs");
    // Warm the connection, and make sure writes work before the fault.
    if !create(&http, &url, &format!("fo-{trial}-warm")).await {
        bail!("write before the fault failed");
    }
    c.kill(leader);
    let killed = Instant::now();
    // Watch a survivor's view of leadership, to tell election time from write-path time.
    let watch_url = c.url(survivor, "/v1/cluster");
    let old_leader_id = c.nodes[leader].id;
    let watcher = tokio::spawn(async move {
        let http = http_builder()
            .timeout(Duration::from_millis(500))
            .build()
            .ok()?;
        while killed.elapsed() < Duration::from_secs(30) {
            if let Ok(r) = http.get(&watch_url).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["leader_id"].as_u64().is_some_and(|l| l != old_leader_id) {
                        return Some(killed.elapsed());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    });
    let short = http_builder().timeout(Duration::from_millis(500)).build()?;
    let mut n = 0;
    let gap = loop {
        n += 1;
        if create(&short, &url, &format!("fo-{trial}-{n}")).await {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("no successful write within 30 s of the leader kill");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    if let Ok(Some(elected)) = watcher.await {
        println!(
            "  trial {trial}: survivor saw a new leader after {:.0} ms",
            elected.as_secs_f64() * 1000.0
        );
    }
    c.spawn(leader)?;
    // Let the restarted node catch up fully (its log too, not only its state machine) before
    // the next trial; /readyz confirms a read index with the leader.
    c.await_ready(&http, leader, Duration::from_secs(20))
        .await?;
    await_same_commit(&http, c).await?;
    Ok(gap)
}

/// Waits until every node reports the same commit index, i.e. replication is idle.
async fn await_same_commit(http: &reqwest::Client, c: &LocalCluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut commits = Vec::new();
        for i in 0..c.nodes.len() {
            let v: Option<Value> = match http.get(c.url(i, "/v1/cluster")).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            commits.push(v.and_then(|v| v["commit_index"].as_u64()));
        }
        if commits.iter().all(|x| x.is_some() && *x == commits[0]) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("nodes did not converge on one commit index within 20 s")
}

/// Creates through hookd's leader against puts to a three-member etcd 3.4 started beside it,
/// both driven by wrk with the same connections, duration and value (the job JSON), one after
/// the other at each concurrency.
async fn versus_etcd(c: &LocalCluster, dir: &Path, each: Duration) -> anyhow::Result<Vec<Versus>> {
    let http = http();
    let etcd_dir = dir.join("etcd");
    std::fs::create_dir_all(&etcd_dir)?;
    let etcd = EtcdCluster::start(&etcd_dir, &http).await?;
    let mut out = Vec::new();
    for clients in [1, 64] {
        let hookd_url = c.url(
            c.await_leader(&http, Duration::from_secs(10)).await?,
            "/v1/jobs",
        );
        let etcd_leader = etcd.leader(&http).await.context("etcd has no leader")?;
        let etcd_url = format!("{}/v3/kv/put", etcd.client_urls[etcd_leader]);
        let tag = format!("wrk{clients}");
        let e = wrk::run(&etcd_dir, &etcd_url, wrk::Target::Etcd, &tag, clients, each)?;
        let h = wrk::run(
            &etcd_dir,
            &hookd_url,
            wrk::Target::Hookd,
            &tag,
            clients,
            each,
        )?;
        let stored = etcd.count(&http, &format!("job/{tag}-")).await?;
        if e.failures() > 0 || stored < e.requests - e.failures() {
            bail!("etcd refused writes or lost them: {e:?}, {stored} keys stored");
        }
        let ratio = h.ok_per_s() / e.ok_per_s().max(1e-9);
        println!(
            "creates via wrk, {clients:>2} clients: hookd {:>6.0}/s p50 {:.2} ms p99 {:.2} ms \
             ({} failed) | etcd 3.4 {:>6.0}/s p50 {:.2} ms p99 {:.2} ms | hookd/etcd {ratio:.2}×",
            h.ok_per_s(),
            h.p50_ms(),
            h.p99_ms(),
            h.failures(),
            e.ok_per_s(),
            e.p50_ms(),
            e.p99_ms(),
        );
        out.push(Versus {
            clients,
            hookd: h,
            etcd: e,
            ratio,
        });
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let hookd = args
        .hookd
        .canonicalize()
        .with_context(|| format!("hookd binary {}", args.hookd.display()))?;
    let http = http();

    // Fresh-cluster elections: three fresh clusters, start all nodes, time to an agreed leader.
    let mut fresh = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir()?;
        let mut c = LocalCluster::new(&hookd, dir.path(), 3, &[])?;
        let t = Instant::now();
        c.spawn_all()?;
        c.await_leader(&http, LEADER_WITHIN).await?;
        fresh.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("fresh cluster: start → leader elected: {fresh:.0?} ms");

    let temp = tempfile::tempdir()?;
    let dir = work_dir(args.keep.as_deref(), &temp)?;
    let mut c = LocalCluster::new(&hookd, &dir, 3, &args.hookd_args)?;
    c.spawn_all()?;
    let leader = c.await_leader(&http, LEADER_WITHIN).await?;
    let mut loads = Vec::new();
    for (clients, spread, total) in [
        (1, false, args.creates / 4),
        (32, false, args.creates),
        (32, true, args.creates),
        (64, false, args.creates * 2),
    ] {
        let r = load(
            &c,
            leader,
            clients,
            total,
            spread,
            &format!("load{clients}{spread}"),
        )
        .await;
        println!(
            "creates, {:>2} clients → {:<9}: {:>7.0}/s, {} errors, {}",
            r.clients, r.target, r.creates_per_s, r.errors, r.latency
        );
        loads.push(r);
    }

    let versus_etcd = if args.versus_etcd_secs > 0 {
        versus_etcd(&c, &dir, Duration::from_secs(args.versus_etcd_secs)).await?
    } else {
        Vec::new()
    };

    let c = Arc::new(tokio::sync::Mutex::new(c));
    let mut gaps = Vec::new();
    let mut failover = Latencies::default();
    for trial in 0..args.trials {
        let gap = failover_trial(&mut *c.lock().await, trial).await?;
        println!(
            "failover trial {trial}: leader SIGKILL → first successful write {:.0} ms",
            gap.as_secs_f64() * 1000.0
        );
        failover.record(gap);
        gaps.push(gap.as_secs_f64() * 1000.0);
    }
    let report = Report {
        fresh_election_ms: fresh,
        loads,
        versus_etcd,
        failover_first_write_ms: gaps,
        failover: failover.summary(),
    };
    println!("failover: {}", report.failover);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
