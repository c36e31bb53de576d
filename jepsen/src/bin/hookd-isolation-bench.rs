//! hookd-isolation-bench: workload faults on a local three-node cluster of the release binary,
//! with nginx (Debian's package) as the healthy target, logging `$msec` and the hookd headers:
//!
//! 1. black-hole neighbour: healthy lateness p99 quiet, then beside a target that accepts and
//!    never answers with `--hole-rate` runs/s aimed at it (SPEC §5: ≤ max(10 ms, 2× quiet));
//! 2. endless body: the leader's RSS growth while jobs read a target that streams forever
//!    (SPEC §5: ≤ 64 MiB);
//! 3. sustainable rate: each rate of `--sustainable-rates` in turn for `--overload-seconds` (the
//!    state grows with every run, so a shorter window overstates what a node sustains); the
//!    sustainable rate is the highest at which every run arrived with p99 lateness ≤ 100 ms
//!    (SPEC §5's throughput criterion);
//! 4. overload: 2× the sustainable rate (or `--overload-rate`) for `--overload-seconds`, counted
//!    from when every load job exists (the creates are not part of the load), the first 2 s not
//!    measured: deliveries per second (min, median, and both as a share of the sustainable rate), the
//!    leader's term before and after, and the time until lateness is normal again once the load
//!    is deleted.
//! 5. rate limit (`--rate-limit`): a second nginx (its own port, so its own target) under a
//!    policy of `--limit-per-s` with `--limit-burst`, with `--limited-rate` due runs/s aimed at
//!    it beside the healthy jobs, for `--rate-limit-seconds` after a 3-s warm-up: its deliveries
//!    per second (min, median, max, share within ±10 % of the limit), the healthy target's
//!    lateness, its backlog (`GET /v1/targets`), and whether any of its runs was lost (skipped,
//!    failed, delivered twice, or missing among those due before the latest delivered).
//!    `--rate-limit-only` skips phases 1b and 2 (the healthy jobs and the quiet baseline stay).
//!
//! `--shards` is the cluster's shard count. `--cpu-quota F` holds each node's process to F of a
//! core (a cgroup of its own; needs root); with `--ceiling-only` (phases 1a and 3 alone) the
//! sustainable rate is the dispatch ceiling of SPEC §5.
//!
//! Every loop is bounded in count and time; every target is on 127.0.0.1.

// A command-line report: printing to stdout is its job.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use hookd_jepsen::cgroup::CpuQuota;
use hookd_jepsen::local::{
    cpu_ms, http, now_ms, rfc3339, rss_kib, work_dir, LocalCluster, LEADER_WITHIN,
};
use hookd_jepsen::nginx::Nginx;
use hookd_jepsen::stats::{Latencies, Summary};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "target/release/hookd")]
    hookd: PathBuf,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Healthy due runs per second (jobs every 1 s at nginx).
    #[arg(long, default_value_t = 200)]
    healthy_rate: usize,
    /// Due runs per second aimed at the black hole.
    #[arg(long, default_value_t = 2000)]
    hole_rate: usize,
    /// Seconds measured quiet and beside the black hole (after a warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rates tried, in order, to find the sustainable rate (none: skipped).
    #[arg(long, num_args = 0.., value_delimiter = ',')]
    sustainable_rates: Vec<usize>,
    /// Due runs per second of the overload phase; by default 2× the sustainable rate found (0 and
    /// no sustainable rate: skipped).
    #[arg(long, default_value_t = 0)]
    overload_rate: usize,
    #[arg(long, default_value_t = 30)]
    overload_seconds: u64,
    /// Run the rate-limit phase (5).
    #[arg(long)]
    rate_limit: bool,
    /// Only the quiet baseline and the rate-limit phase: skip the black hole and endless body.
    #[arg(long, requires = "rate_limit")]
    rate_limit_only: bool,
    /// Due runs per second aimed at the rate-limited target.
    #[arg(long, default_value_t = 500)]
    limited_rate: usize,
    /// The limited target's policy: `rate_per_s` and `burst`.
    #[arg(long, default_value_t = 50.0)]
    limit_per_s: f64,
    #[arg(long, default_value_t = 1)]
    limit_burst: u32,
    /// Seconds measured in the rate-limit phase (after a 3-s warm-up).
    #[arg(long, default_value_t = 20)]
    rate_limit_seconds: u64,
    /// The cluster's shard count (`hookd serve --shards`).
    #[arg(long, default_value_t = 6)]
    shards: u32,
    /// Hold each node's process to this share of one core (a cgroup CPU quota; needs root).
    #[arg(long)]
    cpu_quota: Option<f64>,
    /// Only the quiet baseline and the sustainable rate (phases 1a and 3).
    #[arg(long, conflicts_with = "rate_limit")]
    ceiling_only: bool,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the cluster's data dirs, logs and nginx's log here.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// A TCP server that accepts and holds every connection without answering; counts them.
async fn black_hole() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                count.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 4096];
                // Read until the client gives up; never answer.
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                count.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Ok((format!("http://{addr}/hole"), open))
}

/// A server that answers 200 and streams a chunked body forever (until the client leaves).
async fn endless_body() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 16384, "x".repeat(16384));
                while s.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    Ok(format!("http://{addr}/endless"))
}

/// Creates `rate` jobs every 1 s (ids `{prefix}-{k}`) with runs spread over each second from
/// `t0`, through node `via`, 16 clients at once; 429s are retried after a pause.
async fn create_jobs(
    c: &LocalCluster,
    via: usize,
    prefix: &str,
    url: &str,
    rate: usize,
    timeout: &str,
    t0: i64,
) -> anyhow::Result<Vec<String>> {
    let http = http();
    let api = c.url(via, "/v1/jobs");
    let ids: Vec<String> = (0..rate).map(|k| format!("{prefix}-{k}")).collect();
    let step = 1000.0 / rate.max(1) as f64;
    let mut tasks = Vec::new();
    for (w, chunk) in ids.chunks(rate.div_ceil(16).max(1)).enumerate() {
        let (http, api, url, timeout) = (
            http.clone(),
            api.clone(),
            url.to_owned(),
            timeout.to_owned(),
        );
        let base = w * rate.div_ceil(16).max(1);
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for (i, id) in chunk.into_iter().enumerate() {
                let start = rfc3339(t0 + ((base + i) as f64 * step) as i64);
                let body = json!({"id": id, "url": url, "timeout": timeout,
                    "schedule": {"every": "1s", "start_at": start}});
                let mut tries = 0;
                loop {
                    tries += 1;
                    let resp = http.post(&api).json(&body).send().await?;
                    match resp.status().as_u16() {
                        200 | 201 => break,
                        429 | 503 if tries < 50 => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        s => bail!("create {id}: {s}"),
                    }
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

/// Creates `rate` jobs (every 1 s at `url`, spread over the second) that start once all of them
/// exist, so a measured window never includes the creates; returns their ids and the first
/// whole second at which all are in place and due. The jobs are created to start a lead time
/// ahead (creates at ≥ 2,000/s assumed); if the creates took longer, the returned second is later.
async fn place_load(
    c: &LocalCluster,
    via: usize,
    prefix: &str,
    url: &str,
    rate: usize,
) -> anyhow::Result<(Vec<String>, i64)> {
    let start = (now_ms() / 1000 + 2 + rate as i64 / 2000) * 1000;
    let ids = create_jobs(c, via, prefix, url, rate, "10s", start).await?;
    let created = now_ms();
    if created > start {
        println!(
            "({prefix}: creates ended {} ms after the load began; measured from then)",
            created - start
        );
    }
    Ok((ids, start.max((created / 1000 + 1) * 1000)))
}

/// Deletes jobs through node `via`, 16 at once; returns how many were acknowledged.
async fn delete_jobs(c: &LocalCluster, via: usize, ids: &[String]) -> usize {
    let http = http();
    let mut tasks = Vec::new();
    for chunk in ids.chunks(ids.len().div_ceil(16).max(1)) {
        let (http, chunk) = (http.clone(), chunk.to_vec());
        let urls: Vec<String> = chunk
            .iter()
            .map(|id| c.url(via, &format!("/v1/jobs/{id}")))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for u in urls {
                if matches!(http.delete(&u).send().await, Ok(r) if r.status().is_success()) {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap_or(0);
    }
    ok
}

/// Node `i`'s claim rate, runs waiting and lease-gate closures, from `/metrics` (0 if absent).
async fn metrics_of(c: &LocalCluster, i: usize) -> [f64; 3] {
    let text = match http().get(c.url(i, "/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    [
        value("hookd_dispatch_claim_rate"),
        value("hookd_runs_waiting"),
        value("hookd_dispatch_lease_gate_closed_total"),
    ]
}

/// Lateness of the first delivery of each run of jobs starting with `prefix`, due in
/// `[from, to)`, and how many runs were expected but never arrived.
fn lateness(
    reqs: &[(i64, String, i64)],
    prefix: &str,
    jobs: usize,
    from: i64,
    to: i64,
) -> (Summary, usize) {
    let mut first: HashMap<(&str, i64), i64> = HashMap::new();
    for (recv, job, due) in reqs {
        if job.starts_with(prefix) && *due >= from && *due < to {
            let e = first.entry((job, *due)).or_insert(*recv);
            *e = (*e).min(*recv);
        }
    }
    let mut lat = Latencies::default();
    for ((_, due), recv) in &first {
        lat.record(Duration::from_millis((recv - due).max(0) as u64));
    }
    let expected = jobs * ((to - from) / 1000) as usize;
    (lat.summary(), expected.saturating_sub(first.len()))
}

#[derive(Debug, Serialize)]
struct Report {
    shards: u32,
    cpu_quota: Option<f64>,
    /// Per node: how long the kernel held it back under its quota, ms (with `--cpu-quota`).
    throttled_ms: Vec<u64>,
    healthy_rate: usize,
    hole_rate: usize,
    quiet: Summary,
    beside_hole: Option<Summary>,
    beside_hole_missed: Option<usize>,
    hole_connections_max: Option<usize>,
    hole_target: Value,
    endless_rss_growth_mib: Option<f64>,
    ladder: Vec<Rung>,
    sustainable_per_s: Option<usize>,
    overload: Option<Overload>,
    rate_limit: Option<RateLimit>,
}

/// One rate of the sustainable-rate ladder.
#[derive(Debug, Serialize)]
struct Rung {
    runs_per_s: usize,
    p99_ms: f64,
    missed: usize,
    /// CPU time each node used per 1,000 runs due in the window (user + system, ms): what a
    /// run costs the node leading its shard and the nodes applying it.
    cpu_ms_per_1000_runs: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Overload {
    offered_per_s: usize,
    delivered_per_s: BTreeMap<i64, usize>,
    min_per_s: usize,
    median_per_s: usize,
    /// The lowest mean over any 5 consecutive seconds (claims go in batches of up to 512
    /// runs, a sixth of a second at full rate, so single seconds are lumpy).
    min_per_5s: usize,
    /// Per second: the leader's `hookd_dispatch_claim_rate`, `hookd_runs_waiting` and
    /// `hookd_dispatch_lease_gate_closed_total`.
    leader_metrics: BTreeMap<i64, [f64; 3]>,
    /// `min_per_s` and `median_per_s` over the sustainable rate (SPEC §5: ≥ 0.9 throughout).
    min_share: Option<f64>,
    median_share: Option<f64>,
    term_before: u64,
    term_after: u64,
    leader_before: Option<u64>,
    leader_after: Option<u64>,
    deletes_acknowledged: usize,
    recovered_after_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
struct RateLimit {
    target: String,
    /// The policy as `PUT /v1/targets/{target}/policy` answered it.
    policy: Value,
    offered_per_s: usize,
    /// Deliveries at the limited target per second of the window (nginx's `$msec`).
    delivered_per_s: BTreeMap<i64, usize>,
    min_per_s: usize,
    median_per_s: usize,
    max_per_s: usize,
    mean_per_s: f64,
    /// Seconds within ±10 % of the limit, over all seconds of the window.
    within_10pct_share: f64,
    /// The healthy target's lateness (first deliveries due in the window), and runs missing.
    other: Summary,
    other_missed: usize,
    /// Per second: the limited target's runs waiting and attempts in flight, and the healthy
    /// target's runs waiting (`GET /v1/targets` on the leader; -1: not listed).
    targets_per_s: BTreeMap<i64, [i64; 3]>,
    /// At the end of the window: runs of the limited jobs due so far, delivered (distinct),
    /// waiting in its queue, in flight, and the rest (not claimed yet: held back).
    due: usize,
    delivered: usize,
    waiting: i64,
    in_flight: i64,
    unclaimed: i64,
    /// Lateness of the last run delivered at the limited target in the window (ms).
    last_lateness_ms: i64,
    /// Lost: delivered more than once, missing among those due before the latest delivered
    /// (less 1 s), and recorded skipped or failed (`GET /v1/runs?target=`: entries, runs).
    duplicates: usize,
    gaps: usize,
    skipped: RunsWith,
    failed: RunsWith,
    deletes_acknowledged: usize,
    policy_deleted: bool,
}

/// The target `host:port` of an nginx URL (`http://127.0.0.1:PORT/hook`).
fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `GET /v1/targets` on node `i`: waiting and in flight by target.
async fn targets_of(c: &LocalCluster, i: usize) -> HashMap<String, (i64, i64)> {
    let page: Value = match http().get(c.url(i, "/v1/targets?limit=1000")).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    page["targets"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    Some((
                        t["target"].as_str()?.to_owned(),
                        (t["waiting"].as_i64()?, t["in_flight"].as_i64()?),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The runs of one status `GET /v1/runs` lists for a target.
#[derive(Debug, Default, Serialize)]
struct RunsWith {
    /// Entries, and the runs they stand for (a skipped entry counts `skipped.count`).
    entries: usize,
    runs: u64,
    /// The earliest and latest `scheduled_at` among them (ms), and how many jobs they are of.
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    jobs: usize,
}

/// The runs of `status` for `target` (at most 50 pages of 1,000).
async fn runs_with_status(c: &LocalCluster, i: usize, target: &str, status: &str) -> RunsWith {
    let ms = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str()?)
            .ok()
            .map(|t| t.timestamp_millis())
    };
    let (mut out, mut after, mut jobs) = (RunsWith::default(), String::new(), HashSet::new());
    for _ in 0..50 {
        let url = c.url(
            i,
            &format!("/v1/runs?status={status}&target={target}&limit=1000{after}"),
        );
        let page: Value = match http().get(url).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        for r in page["runs"].as_array().into_iter().flatten() {
            out.entries += 1;
            out.runs += r["skipped"]["count"].as_u64().unwrap_or(1);
            let first = ms(&r["skipped"]["first_scheduled_at"]).or(ms(&r["scheduled_at"]));
            let last = ms(&r["skipped"]["last_scheduled_at"]).or(ms(&r["scheduled_at"]));
            out.first_ms = match (out.first_ms, first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            out.last_ms = out.last_ms.max(last);
            jobs.insert(r["job_id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    out.jobs = jobs.len();
    out
}

/// `RunsWith` for a line: runs (entries, jobs, scheduled from … to … s after `start`).
fn runs_with(r: &RunsWith, start: i64) -> String {
    let s = |ms: Option<i64>| ms.map_or(f64::NAN, |ms| (ms - start) as f64 / 1000.0);
    if r.entries == 0 {
        return "0".to_owned();
    }
    format!(
        "{} ({} entries, {} jobs, scheduled {:.1}–{:.1} s after the first due)",
        r.runs,
        r.entries,
        r.jobs,
        s(r.first_ms),
        s(r.last_ms)
    )
}

/// Phase 5: a second nginx under a rate policy with `limited_rate` due runs/s, beside the
/// healthy jobs at the first nginx.
async fn rate_limit_phase(
    c: &LocalCluster,
    l: usize,
    args: &Args,
    healthy: &Nginx,
    dir: &std::path::Path,
) -> anyhow::Result<RateLimit> {
    let limited = Nginx::start(&args.nginx, &dir.join("nginx-limited"))?;
    let target = host_port(&limited.url);
    let other = host_port(&healthy.url);
    let policy_url = c.url(l, &format!("/v1/targets/{target}/policy"));
    let resp = http()
        .put(&policy_url)
        .json(&json!({"rate_per_s": args.limit_per_s, "burst": args.limit_burst}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("PUT policy: {} {}", resp.status(), resp.text().await?);
    }
    let policy: Value = resp.json().await?;
    let rate = args.limited_rate;
    // Due from a whole second far enough ahead that every job exists by then.
    let start = (now_ms() / 1000 + 2 + rate as i64 / 2000) * 1000;
    let jobs = create_jobs(c, l, "lim", &limited.url, rate, "10s", start).await?;
    let created = now_ms();
    if created > start {
        println!(
            "(lim: creates ended {} ms after the load began)",
            created - start
        );
    }
    let (from, to) = (
        start.max(created) + 3000,
        start.max(created) + 3000 + args.rate_limit_seconds as i64 * 1000,
    );
    let (from, to) = ((from / 1000 + 1) * 1000, (to / 1000 + 1) * 1000);
    let mut targets_per_s = BTreeMap::new();
    while now_ms() < to {
        let second = now_ms() / 1000;
        let ts = targets_of(c, l).await;
        let (w, f) = ts.get(&target).copied().unwrap_or((-1, -1));
        let ow = ts.get(&other).map_or(-1, |t| t.0);
        targets_per_s.insert(second, [w, f, ow]);
        sleep_until_ms((second + 1) * 1000).await;
    }
    // The backlog at the end of the window, then nginx's logs once flushed (100 ms).
    let at_end = targets_of(c, l).await;
    let (waiting, in_flight) = at_end.get(&target).copied().unwrap_or((0, 0));
    sleep_until_ms(to + 1500).await;
    let skipped = runs_with_status(c, l, &target, "skipped").await;
    let failed = runs_with_status(c, l, &target, "failed").await;

    let reqs: Vec<(i64, String, i64)> = limited
        .requests()
        .into_iter()
        .filter(|(recv, job, _)| *recv < to && job.starts_with("lim-"))
        .collect();
    let mut per_s: BTreeMap<i64, usize> = (from / 1000..to / 1000).map(|s| (s, 0)).collect();
    let mut seen: HashMap<(&str, i64), usize> = HashMap::new();
    let mut last = (i64::MIN, 0);
    for (recv, job, due) in &reqs {
        if let Some(n) = per_s.get_mut(&(recv / 1000)) {
            *n += 1;
        }
        *seen.entry((job.as_str(), *due)).or_insert(0) += 1;
        if *recv > last.0 {
            last = (*recv, recv - due);
        }
    }
    let duplicates = seen.values().map(|n| n - 1).sum();
    // Job k's runs are due at start + k·step + n·1000 (`create_jobs`).
    let step = 1000.0 / rate.max(1) as f64;
    let first_due = |k: usize| start + (k as f64 * step) as i64;
    let due_by = |t: i64| -> usize {
        (0..rate)
            .map(|k| match t - first_due(k) {
                d if d >= 0 => (d / 1000) as usize + 1,
                _ => 0,
            })
            .sum()
    };
    let latest_due = seen.keys().map(|(_, d)| *d).max().unwrap_or(start);
    let before = latest_due - 1000;
    let delivered_before = seen.keys().filter(|(_, d)| *d <= before).count();
    let gaps = due_by(before).saturating_sub(delivered_before);
    let due = due_by(to);
    let delivered = seen.len();
    let unclaimed = due as i64 - delivered as i64 - waiting - in_flight;

    let other_lat = lateness(&healthy.requests(), "ok-", args.healthy_rate, from, to);
    let in_order: Vec<usize> = per_s.values().copied().collect();
    let mut counts = in_order.clone();
    counts.sort_unstable();
    let limit = args.limit_per_s;
    let within = in_order
        .iter()
        .filter(|n| (**n as f64 - limit).abs() <= 0.1 * limit)
        .count();
    let r = RateLimit {
        target: target.clone(),
        policy,
        offered_per_s: rate,
        min_per_s: counts.first().copied().unwrap_or(0),
        median_per_s: counts.get(counts.len() / 2).copied().unwrap_or(0),
        max_per_s: counts.last().copied().unwrap_or(0),
        mean_per_s: in_order.iter().sum::<usize>() as f64 / in_order.len().max(1) as f64,
        within_10pct_share: within as f64 / in_order.len().max(1) as f64,
        delivered_per_s: per_s,
        other: other_lat.0,
        other_missed: other_lat.1,
        targets_per_s,
        due,
        delivered,
        waiting,
        in_flight,
        unclaimed,
        last_lateness_ms: last.1,
        duplicates,
        gaps,
        skipped,
        failed,
        deletes_acknowledged: delete_jobs(c, l, &jobs).await,
        policy_deleted: matches!(http().delete(&policy_url).send().await,
            Ok(r) if r.status().is_success()),
    };
    println!(
        "rate limit {target} {} (burst {}), {rate} due runs/s offered, {} s from {}: delivered/s min {} median {} max {} mean {:.1}, {:.0} % of seconds within ±10 %; per second {:?}",
        limit,
        args.limit_burst,
        args.rate_limit_seconds,
        rfc3339(from),
        r.min_per_s,
        r.median_per_s,
        r.max_per_s,
        r.mean_per_s,
        100.0 * r.within_10pct_share,
        r.delivered_per_s.values().collect::<Vec<_>>(),
    );
    println!(
        "  other target {other} ({} runs/s) beside it: lateness {}, missed {}",
        args.healthy_rate, r.other, r.other_missed
    );
    println!(
        "  limited target at the end: {} due, {} delivered (last {} ms late), {} waiting, {} in flight, {} not claimed yet; lost: {} duplicates, {} gaps, {} skipped, {} failed; {} of {} deletes acknowledged, policy deleted {}",
        r.due,
        r.delivered,
        r.last_lateness_ms,
        r.waiting,
        r.in_flight,
        r.unclaimed,
        r.duplicates,
        r.gaps,
        runs_with(&r.skipped, start),
        runs_with(&r.failed, start),
        r.deletes_acknowledged,
        jobs.len(),
        r.policy_deleted
    );
    println!(
        "  per second [limited waiting, limited in flight, other waiting]: {:?}",
        r.targets_per_s.values().collect::<Vec<_>>()
    );
    Ok(r)
}

/// CPU time each node has used so far, ms.
fn cpu_of(c: &LocalCluster) -> Vec<u64> {
    (0..c.nodes.len())
        .map(|i| c.pid(i).map_or(0, cpu_ms))
        .collect()
}

/// Waits until `deadline_ms` (wall clock), bounded.
async fn sleep_until_ms(deadline_ms: i64) {
    let d = (deadline_ms - now_ms()).clamp(0, 600_000) as u64;
    tokio::time::sleep(Duration::from_millis(d)).await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let hookd = args.hookd.canonicalize().context("hookd binary")?;
    let temp = tempfile::tempdir()?;
    let dir = work_dir(args.keep.as_deref(), &temp)?;
    let nginx = Nginx::start(&args.nginx, &dir.join("nginx"))?;
    // Before the cluster: a group is removed after its node has gone.
    let mut quotas = Vec::new();
    let mut c = LocalCluster::new(
        &hookd,
        &dir,
        3,
        &["--shards".into(), args.shards.to_string()],
    )?;
    c.spawn_all()?;
    if let Some(cores) = args.cpu_quota {
        for i in 0..c.nodes.len() {
            let q = CpuQuota::new(&format!("hookd-bench-{}-{i}", std::process::id()), cores)?;
            q.add(c.pid(i).context("node pid")?)?;
            quotas.push(q);
        }
    }
    let l = c.await_leader(&http(), LEADER_WITHIN).await?;
    let secs = args.seconds as i64;
    let skip_faults = args.rate_limit_only || args.ceiling_only;

    // 1. Quiet, then beside the black hole.
    let t0 = (now_ms() / 1000 + 3) * 1000;
    let healthy = create_jobs(&c, l, "ok", &nginx.url, args.healthy_rate, "10s", t0).await?;
    let (q_from, q_to) = (t0 + 2000, t0 + 2000 + secs * 1000);
    sleep_until_ms(q_to + 1500).await;
    let (quiet, _) = lateness(&nginx.requests(), "ok-", args.healthy_rate, q_from, q_to);
    println!(
        "healthy {} runs/s quiet: lateness {quiet}",
        args.healthy_rate
    );

    let (beside, missed, hole_max, hole_target) = if skip_faults {
        (None, None, None, Value::Null)
    } else {
        let (hole_url, hole_open) = black_hole().await?;
        let t1 = (now_ms() / 1000 + 2) * 1000;
        let hole = create_jobs(&c, l, "hole", &hole_url, args.hole_rate, "10s", t1).await?;
        let (h_from, h_to) = (t1 + 3000, t1 + 3000 + secs * 1000);
        let mut hole_max = 0;
        while now_ms() < h_to + 1500 {
            hole_max = hole_max.max(hole_open.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (beside, missed) = lateness(&nginx.requests(), "ok-", args.healthy_rate, h_from, h_to);
        let targets: Value = http()
            .get(c.url(l, "/v1/targets"))
            .send()
            .await?
            .json()
            .await?;
        let hole_target = targets["targets"]
            .as_array()
            .and_then(|ts| {
                ts.iter()
                    .find(|t| hole_url.contains(t["target"].as_str().unwrap_or("-")))
                    .cloned()
            })
            .unwrap_or(Value::Null);
        println!(
            "healthy beside a black hole ({} runs/s): lateness {beside}, missed {missed}; hole held at most {hole_max} connections; hole target {hole_target}",
            args.hole_rate
        );
        delete_jobs(&c, l, &hole).await;
        (Some(beside), Some(missed), Some(hole_max), hole_target)
    };

    let growth = if skip_faults {
        None
    } else {
        // 2. Endless body: the leader's RSS while 5 jobs a second read a body that never ends.
        let endless_url = endless_body().await?;
        let pid = c.pid(l).context("leader pid")?;
        let before = rss_kib(pid);
        let t2 = (now_ms() / 1000 + 1) * 1000;
        let endless = create_jobs(&c, l, "endless", &endless_url, 5, "6s", t2).await?;
        let mut peak = before;
        while now_ms() < t2 + 12_000 {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let growth = (peak.saturating_sub(before)) as f64 / 1024.0;
        println!("endless body (5 jobs/s, 6 s timeout, 12 s): leader RSS {before} kB → peak {peak} kB, growth {growth:.1} MiB");
        delete_jobs(&c, l, &endless).await;
        Some(growth)
    };

    // 3. The sustainable rate: the highest rate tried with every run delivered and p99 ≤ 100 ms.
    let mut ladder = Vec::new();
    let mut sustainable = None;
    for (k, &rate) in args.sustainable_rates.iter().enumerate() {
        let name = format!("rate{k}");
        let (jobs, t) = place_load(&c, l, &name, &nginx.url, rate).await?;
        // As long as the overload phase: a rate whose lateness grows slowly (the state grows
        // with every run) passes a short window and is not sustainable.
        let rung_secs = args.overload_seconds as i64;
        let (from, to) = (t + 2000, t + rung_secs * 1000);
        sleep_until_ms(from).await;
        let cpu_from = cpu_of(&c);
        sleep_until_ms(to).await;
        let cpu_to = cpu_of(&c);
        sleep_until_ms(to + 2000).await;
        let (s, missed) = lateness(&nginx.requests(), &format!("{name}-"), rate, from, to);
        let runs = ((rate + args.healthy_rate) as f64 * (to - from) as f64 / 1000.0).max(1.0);
        let cpu: Vec<f64> = cpu_from
            .iter()
            .zip(&cpu_to)
            .map(|(a, b)| (b.saturating_sub(*a) as f64 * 1000.0 / runs).round())
            .collect();
        println!(
            "sustainable? {rate} runs/s (+{} healthy): lateness {s}, missed {missed}; CPU ms per 1,000 runs by node {cpu:?}",
            args.healthy_rate
        );
        let _ = delete_jobs(&c, l, &jobs).await;
        ladder.push(Rung {
            runs_per_s: rate,
            p99_ms: s.p99_ms,
            missed,
            cpu_ms_per_1000_runs: cpu,
        });
        if s.p99_ms > 100.0 || missed > 0 {
            break;
        }
        sustainable = Some(rate + args.healthy_rate);
    }
    if let Some(s) = sustainable {
        println!("sustainable rate: {s} runs/s (p99 ≤ 100 ms, none missed, healthy jobs included)");
    }

    // 4. Overload.
    let overload_rate = match (args.overload_rate, sustainable) {
        (0, Some(s)) => 2 * s - args.healthy_rate,
        (r, _) => r,
    };
    let overload = if overload_rate > 0 && !args.ceiling_only {
        let (leader_before, term_before) = c.cluster_state(&http(), l).await;
        let (load, t3) = place_load(&c, l, "load", &nginx.url, overload_rate).await?;
        let end = t3 + args.overload_seconds as i64 * 1000;
        // The leader's view each second: claim rate, runs waiting, lease-gate closures so far.
        let mut leader_metrics = BTreeMap::new();
        while now_ms() < end {
            let second = now_ms() / 1000;
            leader_metrics.insert(second, metrics_of(&c, l).await);
            sleep_until_ms((second + 1) * 1000).await;
        }
        let (leader_after, term_after) = c.cluster_state(&http(), l).await;
        let deleted_at = now_ms();
        let l_now = c.await_leader(&http(), LEADER_WITHIN).await.unwrap_or(l);
        let deletes = delete_jobs(&c, l_now, &load).await;
        let deletes_done = now_ms();
        // Recovered when the healthy jobs' runs are on time again (p99 over one second ≤ 100 ms).
        let mut recovered_after_ms = None;
        let mut probe = (deletes_done / 1000 + 1) * 1000;
        while probe < deletes_done + 60_000 {
            sleep_until_ms(probe + 2000).await;
            let (s, missing) = lateness(
                &nginx.requests(),
                "ok-",
                args.healthy_rate,
                probe,
                probe + 1000,
            );
            if s.p99_ms <= 100.0 && missing == 0 {
                recovered_after_ms = Some(probe - deleted_at);
                break;
            }
            probe += 1000;
        }
        // Every whole second of the window, so one with no delivery at all counts as 0.
        let mut per_s: BTreeMap<i64, usize> =
            ((t3 + 2000) / 1000..end / 1000).map(|s| (s, 0)).collect();
        for (recv, _, _) in nginx.requests() {
            if let Some(n) = per_s.get_mut(&(recv / 1000)) {
                *n += 1;
            }
        }
        let in_order: Vec<usize> = per_s.values().copied().collect();
        let min_per_5s = in_order
            .windows(5)
            .map(|w| w.iter().sum::<usize>() / 5)
            .min()
            .unwrap_or(0);
        let mut counts = in_order;
        counts.sort_unstable();
        let min_per_s = counts.first().copied().unwrap_or(0);
        let median_per_s = counts.get(counts.len() / 2).copied().unwrap_or(0);
        let share = |n: usize| sustainable.map(|s| n as f64 / s as f64);
        let o = Overload {
            offered_per_s: overload_rate + args.healthy_rate,
            min_per_s,
            median_per_s,
            min_share: share(min_per_s),
            median_share: share(median_per_s),
            min_per_5s,
            leader_metrics,
            delivered_per_s: per_s,
            term_before,
            term_after,
            leader_before,
            leader_after,
            deletes_acknowledged: deletes,
            recovered_after_ms,
        };
        println!(
            "overload {} due runs/s offered for {} s: delivered/s min {} median {} (of the sustainable rate: {:.2}, {:.2}), lowest 5-s mean {}; leader {:?}→{:?}, term {}→{}; {} of {} deletes acknowledged in {} ms; normal lateness again {:?} ms after the deletes began",
            o.offered_per_s,
            args.overload_seconds,
            o.min_per_s,
            o.median_per_s,
            o.min_share.unwrap_or(f64::NAN),
            o.median_share.unwrap_or(f64::NAN),
            o.min_per_5s,
            o.leader_before,
            o.leader_after,
            o.term_before,
            o.term_after,
            deletes,
            load.len(),
            deletes_done - deleted_at,
            o.recovered_after_ms
        );
        Some(o)
    } else {
        None
    };
    // 5. A rate-limited target beside the healthy one.
    let rate_limit = if args.rate_limit {
        Some(rate_limit_phase(&c, l, &args, &nginx, &dir).await?)
    } else {
        None
    };
    delete_jobs(&c, l, &healthy).await;
    let throttled_ms: Vec<u64> = quotas.iter().map(CpuQuota::throttled_ms).collect();
    if !quotas.is_empty() {
        println!("time each node was held back by its quota: {throttled_ms:?} ms");
    }
    let report = Report {
        shards: args.shards,
        cpu_quota: args.cpu_quota,
        throttled_ms,
        healthy_rate: args.healthy_rate,
        hole_rate: args.hole_rate,
        quiet,
        beside_hole: beside,
        beside_hole_missed: missed,
        hole_connections_max: hole_max,
        hole_target,
        endless_rss_growth_mib: growth,
        ladder,
        sustainable_per_s: sustainable,
        overload,
        rate_limit,
    };
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
