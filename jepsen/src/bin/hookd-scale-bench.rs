//! hookd-scale-bench: many jobs on a local three-node cluster of the release binary, with nginx
//! (Debian's package) as the target:
//!
//! 1. fill: `--jobs` jobs (every 1 h, first run hours away) created through the leader by
//!    `--clients` clients at once, job `j{k}` labelled `team: t{k % 10}` and `env: prod` or
//!    `dev` (by `k / 10`, so `team=t3,env=prod` holds for 5 %); per `--sample-secs`: jobs
//!    created, the create rate and every node's RSS; non-2xx answers and client timeouts are
//!    counted;
//! 2. size: each node's data dir on disk and RSS once the fill is done;
//!    then the bulk pause (`--bulk-pause`; the filled jobs then fire every 60 s, spread over
//!    the minute, i.e. jobs/60 deliveries per second): once every job had time to fire, a dry
//!    run counts the jobs `BULK_SELECTOR` matches (all the filled ones, no other), then
//!    `--bulk-writers` clients create and replace other jobs through the nodes in turn, and
//!    after `BULK_BASELINE_MS` one `POST /v1/jobs/bulk` pause with that selector goes to a
//!    follower: its duration, matched and changed; the writes refused (any non-2xx, 429 and
//!    5xx apart, and failed requests) and their latency before, during and after it; the
//!    leader's RSS; from nginx's log, the deliveries of matched jobs in the second before the
//!    answer and those that arrived later than `BULK_GRACE_MS` after it, within
//!    `BULK_WATCH_MS` (each one a failure of "no attempt starts after the 200");
//!    then the listing (`--list-pages`, 0 skips it): one request at a time against the leader
//!    and then a follower (linearizable reads), pages of 100 of `GET /v1/jobs?selector=team=t3`
//!    and `selector=team=t3,env=prod`, then, once every `--pause-every`th job is paused, of
//!    `state=paused`: chains of `--list-chain` pages, each from a random `after` (a job id) on
//!    through `next`; the latency (p50/p99/max) and the jobs in each page (100 but at the end);
//! 3. restart: every node SIGTERMed, then all started again: time until all three are ready,
//!    and their RSS then;
//! 4. herd: `--herd` one-shot jobs all due at the same instant T (far enough ahead that their
//!    creation ends before it): how many reached nginx and how late after T (p50/p99/max);
//! 5. operations (`--ops`, SPEC §6): a backup saved with `hookd snapshot save` from a follower
//!    (time, size), a `--join` node added through the API (time until the add answered, i.e.
//!    caught up and a voter) and removed again, the backup restored into a new three-node
//!    cluster with `hookd snapshot restore` (time per member, time until all are ready), and a
//!    rolling restart (each node SIGTERMed, down 2 s, started; followers first) while an
//!    every-second job fires at nginx and a client writes through every node that is up: writes
//!    refused, runs missed, the largest lateness.
//!
//! Every loop is bounded in count and time; every target is on 127.0.0.1.

// A command-line report: printing to stdout is its job.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hookd_jepsen::local::{http, now_ms, rfc3339, rss_kib, work_dir, LocalCluster, LEADER_WITHIN};
use hookd_jepsen::nginx::Nginx;
use hookd_jepsen::rolling;
use hookd_jepsen::stats::{Latencies, Summary};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "target/release/hookd")]
    hookd: PathBuf,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Jobs created in the fill phase.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: usize,
    /// Fill with jobs without labels (to weigh what labels and their index cost); the filtered
    /// listing is then not measured.
    #[arg(long)]
    no_labels: bool,
    /// Fill with cron jobs of this expression (time zone Europe/Berlin) instead of jobs every
    /// 1 h.
    #[arg(long)]
    fill_cron: Option<String>,
    /// Clients creating at once.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The fill phase ends after this long even if not all jobs were created.
    #[arg(long, default_value_t = 1200)]
    fill_max_secs: u64,
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// One-shot jobs due at the same instant (0 skips the herd).
    #[arg(long, default_value_t = 100_000)]
    herd: usize,
    /// How long after the herd's instant to wait for its runs.
    #[arg(long, default_value_t = 180)]
    herd_wait_secs: u64,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the cluster's data dirs, logs and nginx's log here.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Extra flags for every `hookd serve`.
    #[arg(long, allow_hyphen_values = true)]
    hookd_args: Vec<String>,
    /// Also measure the operations of phase 5.
    #[arg(long)]
    ops: bool,
    /// The bulk pause (phase 2b): the filled jobs fire every 60 s (spread over the minute)
    /// instead of every 1 h; once they fire, one `POST /v1/jobs/bulk` to a follower pauses them
    /// all while `--bulk-writers` clients write other jobs.
    #[arg(long)]
    bulk_pause: bool,
    /// Clients writing other jobs during the bulk pause (one request at a time each, through
    /// the nodes in turn).
    #[arg(long, default_value_t = 4)]
    bulk_writers: usize,
    /// Filtered pages of jobs read per filter and node after the fill (0 skips the listing).
    #[arg(long, default_value_t = 200)]
    list_pages: usize,
    /// Pages read from each random `after` on, following `next`.
    #[arg(long, default_value_t = 4)]
    list_chain: usize,
    /// A filter's pages on one node stop after this long even if not all were read.
    #[arg(long, default_value_t = 60)]
    list_max_secs: u64,
    /// After the label filters' pages, pause every job whose number is a multiple of this for
    /// the `state=paused` pages (0: no pauses and no such pages).
    #[arg(long, default_value_t = 100)]
    pause_every: usize,
    /// The console (phase 2d): this many cold loads in headless Chromium (Debian's `chromium`
    /// and `chromium-driver`) of the overview and of the jobs view filtered by `team=t3`, from
    /// the leader and from a follower (0 skips it).
    #[arg(long, default_value_t = 0)]
    ui_loads: usize,
}

#[derive(Debug, Clone, Serialize)]
struct Sample {
    secs: f64,
    created: usize,
    per_s: f64,
    rss_mib: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
struct Fill {
    created: usize,
    non_2xx: usize,
    timeouts: usize,
    secs: f64,
    samples: Vec<Sample>,
}

#[derive(Debug, Serialize)]
struct Herd {
    jobs: usize,
    created: usize,
    /// Milliseconds from the last create's answer to the herd's instant (negative: too late).
    created_ahead_ms: i64,
    delivered: usize,
    /// Delivery time after the herd's instant.
    lateness: Summary,
    /// Deliveries per second from the herd's first to its last.
    delivered_per_s: f64,
    /// Runs whose claim committed only after they were due (the leader's
    /// `hookd_runs_claimed_late_total` over the herd).
    claimed_late: f64,
}

/// Filtered pages of `GET /v1/jobs` read from one node.
#[derive(Debug, Serialize)]
struct ListSeries {
    /// The filter, e.g. `selector=team=t3`.
    filter: String,
    /// `leader` or `follower`.
    node: &'static str,
    pages: usize,
    /// Every page that answered 200.
    latency: Summary,
    /// The first page of each chain (from a random `after`), and the pages that followed `next`.
    random_after: Summary,
    following: Summary,
    /// Pages with `LIST_LIMIT` jobs and a `next`.
    full_pages: usize,
    /// Pages with fewer jobs and a `next`: short mid-way.
    short_pages: usize,
    /// Pages whose `next` is null: the end (any number of jobs).
    last_pages: usize,
    /// The jobs in each page that was not full (the first 20).
    short_sizes: Vec<usize>,
    /// Answers other than 200 and failed requests, and the first of them.
    errors: usize,
    first_error: Option<String>,
    /// Jobs listed that do not match the filter, or not in id order after `after`.
    wrong: usize,
    secs: f64,
}

#[derive(Debug, Serialize)]
struct Listing {
    limit: usize,
    /// Jobs paused before the listing, and how long that took.
    paused: usize,
    pause_secs: f64,
    series: Vec<ListSeries>,
}

#[derive(Debug, Serialize)]
struct Report {
    jobs: usize,
    fill: Fill,
    data_dir_mib: Vec<f64>,
    rss_after_fill_mib: Vec<f64>,
    listing: Option<Listing>,
    restart_ready_ms: Option<u128>,
    rss_after_restart_mib: Vec<f64>,
    /// 10 s after all were ready (the leader has indexed every job by then).
    rss_settled_mib: Vec<f64>,
    bulk_pause: Option<BulkPause>,
    herd: Option<Herd>,
    ops: Option<Ops>,
    console: Option<Vec<ConsoleLoads>>,
}

/// Cold loads of one console view from one node: until every request of its first drawing
/// had ended, from the start of the navigation (the browser's own timings), and for the jobs
/// view the server time of its `GET /v1/jobs` (request sent to first byte back).
#[derive(Debug, Serialize)]
struct ConsoleLoads {
    view: &'static str,
    node: &'static str,
    loads: usize,
    requests: u64,
    load: Summary,
    jobs_request: Option<Summary>,
}

#[derive(Debug, Default, Serialize)]
struct Ops {
    snapshot_save_ms: u128,
    snapshot_bytes: u64,
    snapshot_jobs: u64,
    /// `POST /v1/cluster/members` until it answered (the learner caught up and votes), and its
    /// status.
    add_node_ms: u128,
    add_node_status: u16,
    remove_node_ms: u128,
    restore_ms: Vec<u128>,
    /// From starting the restored members until all were ready.
    restored_ready_ms: Option<u128>,
    restored_has_jobs: bool,
    rolling: Rolling,
}

#[derive(Debug, Default, Serialize)]
struct Rolling {
    writes: usize,
    /// Writes to a node that was up that did not get 201.
    refused: usize,
    runs: usize,
    missed: usize,
    max_lateness_ms: i64,
}

/// Runs `hookd ARGS`; its stdout as JSON, or the failure.
async fn hookd_cli(hookd: &Path, args: Vec<String>) -> anyhow::Result<Value> {
    let hookd = hookd.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(hookd)
            .arg("-o")
            .arg("json")
            .args(&args)
            .output()
    })
    .await??;
    if !out.status.success() {
        anyhow::bail!("hookd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The bulk pause's selector: `env` is `prod` or `dev` on every filled job; the writers' jobs
/// have `env: writer`.
const BULK_SELECTOR: &str = "env in (prod,dev)";
/// The filled jobs' period with `--bulk-pause`.
const BULK_EVERY_MS: i64 = 60_000;
/// A prime: job k's place in the minute is k·BULK_SPREAD mod jobs (every place once when
/// jobs is not a multiple of it).
const BULK_SPREAD: i64 = 7_919;
/// The writers' time alone before the bulk request.
const BULK_BASELINE_MS: u64 = 5_000;
/// After the answer, how late an attempt already in flight may still arrive at nginx.
const BULK_GRACE_MS: i64 = 200;
/// How long after the answer nginx's log is watched (the writers go on meanwhile).
const BULK_WATCH_MS: i64 = 5_000;

/// The writers' requests that started in one window.
#[derive(Debug, Serialize)]
struct Writes {
    count: usize,
    /// Answers other than 2xx, failed requests (timeouts, resets) included.
    refused: usize,
    status_429: usize,
    status_5xx: usize,
    /// No answer: a timeout or a connection error.
    failed: usize,
    /// The first refusals: `node status body`.
    first_refusals: Vec<String>,
    latency: Summary,
}

/// What phase 2b measured (see the module doc).
#[derive(Debug, Serialize)]
struct BulkPause {
    selector: &'static str,
    /// Filled jobs delivered at least once before the request.
    jobs_fired: usize,
    /// Deliveries per second of the filled jobs over the 10 s before the request, and how late
    /// after their due instant they arrived.
    deliveries_per_s_before: f64,
    lateness_before: Summary,
    dry_run_matched: u64,
    dry_run_ms: u128,
    /// Which node took the request (0-based) and which led.
    node: usize,
    leader: usize,
    status: u16,
    matched: u64,
    changed: u64,
    /// From sending the request until its answer was read, and both instants (Unix ms).
    request_ms: u128,
    sent_ms: i64,
    answered_ms: i64,
    /// Deliveries of the filled jobs per second, from 5 s before the request to
    /// `BULK_WATCH_MS` after the answer (second 0 starts at `sent_ms`).
    timeline: Vec<(i64, usize)>,
    /// How long before the answer the last delivery of a matched job arrived (ms).
    last_delivery_before_answer_ms: Option<i64>,
    /// Replication errors in the leader's log (`error replication to target`) during the
    /// request, and in as long a time before it.
    leader_replication_errors_during: usize,
    leader_replication_errors_before: usize,
    /// Deliveries of matched jobs that arrived in the second before the answer, and during
    /// the request.
    delivered_last_second: usize,
    delivered_during: usize,
    /// Deliveries of matched jobs up to `BULK_GRACE_MS` after the answer (attempts in flight)
    /// and later, within `BULK_WATCH_MS`: the latter must be none.
    delivered_in_grace: usize,
    delivered_late: usize,
    /// The first late ones: `job arrived +ms after the answer, due +ms after it`.
    first_late: Vec<String>,
    writes_before: Writes,
    writes_during: Writes,
    writes_after: Writes,
    /// The leader's RSS just before the request, at most during it (sampled every 100 ms), and
    /// after the watch.
    leader_rss_before_mib: f64,
    leader_rss_max_mib: f64,
    leader_rss_after_mib: f64,
}

/// One writer's request: when it started (Unix ms), how long it took, the node, the status (0
/// when it failed) and, when refused, the start of the body.
type Write = (i64, Duration, usize, u16, String);

fn writes_in(all: &[Write], from: i64, to: i64) -> Writes {
    let mut lat = Latencies::default();
    let mut w = Writes {
        count: 0,
        refused: 0,
        status_429: 0,
        status_5xx: 0,
        failed: 0,
        first_refusals: Vec::new(),
        latency: lat.summary(),
    };
    for (_, took, node, status, body) in all.iter().filter(|w| (from..to).contains(&w.0)) {
        w.count += 1;
        lat.record(*took);
        if (200..300).contains(status) {
            continue;
        }
        w.refused += 1;
        match *status {
            0 => w.failed += 1,
            429 => w.status_429 += 1,
            500..=599 => w.status_5xx += 1,
            _ => {}
        }
        if w.first_refusals.len() < 5 {
            w.first_refusals
                .push(format!("node {node}: {status} {body}"));
        }
    }
    w.latency = lat.summary();
    w
}

/// The number of a filled job (`j{k}`, k below `jobs`).
fn filled(job: &str, jobs: usize) -> bool {
    job.strip_prefix('j')
        .and_then(|k| k.parse::<usize>().ok())
        .is_some_and(|k| k < jobs)
}

/// Phase 2b (see the module doc).
async fn bulk_pause(
    c: &LocalCluster,
    nginx: &Nginx,
    args: &Args,
    fill: &Fill,
) -> anyhow::Result<BulkPause> {
    let l = c.await_leader(&http(), LEADER_WITHIN).await?;
    let f = (0..3).find(|i| *i != l).unwrap_or(0);
    let slow = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?;
    // Every job fires within a period of its create: wait a period after the fill's end.
    println!(
        "bulk: {} jobs filled; waiting {} s for every one to fire",
        fill.created,
        BULK_EVERY_MS / 1000 + 5
    );
    tokio::time::sleep(Duration::from_millis(BULK_EVERY_MS as u64 + 5_000)).await;

    // The dry run: how many the selector matches.
    let t = Instant::now();
    let dry = slow
        .post(c.url(f, "/v1/jobs/bulk"))
        .json(&json!({"action": "pause", "selector": BULK_SELECTOR, "dry_run": true}))
        .send()
        .await?;
    let dry_status = dry.status();
    let dry: Value = dry.json().await.unwrap_or_default();
    let dry_run_ms = t.elapsed().as_millis();
    let dry_run_matched = dry["matched"].as_u64().unwrap_or(0);
    println!("bulk: dry run {dry_status} in {dry_run_ms} ms: {dry_run_matched} matched");
    anyhow::ensure!(dry_status.is_success(), "the dry run failed: {dry}");

    // The writers.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls: Arc<Vec<String>> = Arc::new((0..3).map(|i| c.url(i, "/v1/jobs")).collect());
    let writers: Vec<_> = (0..args.bulk_writers)
        .map(|w| {
            let (stop, urls) = (stop.clone(), urls.clone());
            tokio::spawn(async move {
                let http = http();
                let mut done: Vec<Write> = Vec::new();
                let mut n = 0u64;
                // Bounded: the phase stops the writers; the count bounds them if it does not.
                while !stop.load(Ordering::Acquire) && n < 1_000_000 {
                    let node = (w + n as usize) % urls.len();
                    // Even: create a job; odd: replace the one just created.
                    let id = format!("bw{w}-{}", n & !1);
                    let body = json!({"url": "http://127.0.0.1:9/h", "schedule": {"after": "24h"},
                                      "labels": {"env": "writer"}, "body": format!("{n}")});
                    let req = if n % 2 == 0 {
                        let mut body = body;
                        body["id"] = json!(id);
                        http.post(&urls[node]).json(&body)
                    } else {
                        http.put(format!("{}/{id}", urls[node])).json(&body)
                    };
                    let start = now_ms();
                    let t = Instant::now();
                    let (status, text) = match req.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let text = if r.status().is_success() {
                                String::new()
                            } else {
                                r.text()
                                    .await
                                    .unwrap_or_default()
                                    .chars()
                                    .take(200)
                                    .collect()
                            };
                            (status, text)
                        }
                        Err(e) => (0, e.to_string()),
                    };
                    done.push((start, t.elapsed(), node, status, text));
                    n += 1;
                }
                done
            })
        })
        .collect();
    let writers_from = now_ms();
    tokio::time::sleep(Duration::from_millis(BULK_BASELINE_MS)).await;

    // The leader's RSS while the request runs.
    let leader_pid = c.pid(l).unwrap_or(0);
    let leader_rss_before_mib = rss_kib(leader_pid) as f64 / 1024.0;
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut max = 0u64;
            while sampling.load(Ordering::Acquire) {
                max = max.max(rss_kib(leader_pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max.max(rss_kib(leader_pid)) as f64 / 1024.0
        }
    });

    // The request, to a follower.
    let sent = now_ms();
    let t = Instant::now();
    let answer = slow
        .post(c.url(f, "/v1/jobs/bulk"))
        .json(&json!({"action": "pause", "selector": BULK_SELECTOR}))
        .send()
        .await;
    let (status, body) = match answer {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
        Err(e) => (0, json!({"error": e.to_string()})),
    };
    let answered = now_ms();
    let request_ms = t.elapsed().as_millis();
    sampling.store(false, Ordering::Release);
    let leader_rss_max_mib = sampler.await?;
    let (matched, changed) = (
        body["matched"].as_u64().unwrap_or(0),
        body["changed"].as_u64().unwrap_or(0),
    );
    println!(
        "bulk: pause through node {f} (leader {l}): {status} in {request_ms} ms, \
         {matched} matched, {changed} changed{}",
        if status == 200 {
            String::new()
        } else {
            format!(": {body}")
        }
    );

    // The watch: the writers go on; then nginx's log (flushed every 100 ms).
    let watch_end = answered + BULK_WATCH_MS;
    tokio::time::sleep(Duration::from_millis(
        (watch_end - now_ms()).max(0) as u64 + 500,
    ))
    .await;
    stop.store(true, Ordering::Release);
    let mut writes = Vec::new();
    for w in writers {
        writes.extend(w.await?);
    }
    let writers_to = now_ms();
    let leader_rss_after_mib = rss_kib(leader_pid) as f64 / 1024.0;

    let jobs = args.jobs;
    let reqs: Vec<(i64, String, i64)> = nginx
        .requests()
        .into_iter()
        .filter(|(_, job, _)| filled(job, jobs))
        .collect();
    let jobs_fired = reqs
        .iter()
        .filter(|(recv, _, _)| *recv < sent)
        .map(|(_, job, _)| job.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut lateness = Latencies::default();
    let mut before = 0usize;
    for (recv, _, due) in reqs.iter().filter(|r| (sent - 10_000..sent).contains(&r.0)) {
        before += 1;
        lateness.record(Duration::from_millis((recv - due).max(0) as u64));
    }
    let count = |from: i64, to: i64| reqs.iter().filter(|r| (from..to).contains(&r.0)).count();
    let timeline = (-5..=((answered - sent + BULK_WATCH_MS) / 1_000))
        .map(|i| (i, count(sent + i * 1_000, sent + (i + 1) * 1_000)))
        .collect();
    let last_delivery_before_answer_ms = reqs
        .iter()
        .filter(|r| r.0 <= answered)
        .map(|r| answered - r.0)
        .min();
    let log = c.log_of(l);
    let replication_errors = |from: i64, to: i64| {
        log.lines()
            .filter(|line| line.contains("error replication to target"))
            .filter_map(|line| chrono::DateTime::parse_from_rfc3339(line.split(' ').next()?).ok())
            .filter(|t| (from..to).contains(&t.timestamp_millis()))
            .count()
    };
    let mut late: Vec<&(i64, String, i64)> = reqs
        .iter()
        .filter(|r| r.0 > answered + BULK_GRACE_MS && r.0 <= watch_end)
        .collect();
    late.sort();
    let report = BulkPause {
        selector: BULK_SELECTOR,
        jobs_fired,
        deliveries_per_s_before: before as f64 / 10.0,
        lateness_before: lateness.summary(),
        dry_run_matched,
        dry_run_ms,
        node: f,
        leader: l,
        status,
        matched,
        changed,
        request_ms,
        sent_ms: sent,
        answered_ms: answered,
        timeline,
        last_delivery_before_answer_ms,
        leader_replication_errors_during: replication_errors(sent, answered + 1),
        leader_replication_errors_before: replication_errors(2 * sent - answered - 1, sent),
        delivered_last_second: count(answered - 1_000, answered + 1),
        delivered_during: count(sent, answered + 1),
        delivered_in_grace: count(answered + 1, answered + BULK_GRACE_MS + 1),
        delivered_late: late.len(),
        first_late: late
            .iter()
            .take(10)
            .map(|(recv, job, due)| {
                format!(
                    "{job} arrived +{} ms, due {:+} ms",
                    recv - answered,
                    due - answered
                )
            })
            .collect(),
        writes_before: writes_in(&writes, writers_from, sent),
        writes_during: writes_in(&writes, sent, answered + 1),
        writes_after: writes_in(&writes, answered + 1, writers_to + 1),
        leader_rss_before_mib,
        leader_rss_max_mib,
        leader_rss_after_mib,
    };
    println!(
        "bulk: before it {} of {jobs} jobs had fired, {:.0} deliveries/s (lateness {}); \
         deliveries of matched jobs: {} in the last second before the answer, {} during the \
         request, {} within {BULK_GRACE_MS} ms after it, {} later (within {BULK_WATCH_MS} ms) {:?}",
        report.jobs_fired,
        report.deliveries_per_s_before,
        report.lateness_before,
        report.delivered_last_second,
        report.delivered_during,
        report.delivered_in_grace,
        report.delivered_late,
        report.first_late
    );
    for (name, w) in [
        ("before", &report.writes_before),
        ("during", &report.writes_during),
        ("after", &report.writes_after),
    ] {
        println!(
            "bulk: writes {name:<6} {} ({} refused: {} 429, {} 5xx, {} failed) {} {:?}",
            w.count, w.refused, w.status_429, w.status_5xx, w.failed, w.latency, w.first_refusals
        );
    }
    println!(
        "bulk: deliveries per second from the request on: {:?}; the last one {:?} ms before \
         the answer; replication errors in the leader's log: {} during the request, {} in as \
         long before",
        report.timeline,
        report.last_delivery_before_answer_ms,
        report.leader_replication_errors_during,
        report.leader_replication_errors_before
    );
    println!(
        "bulk: leader RSS MiB {leader_rss_before_mib:.0} before, {leader_rss_max_mib:.0} at most \
         during, {leader_rss_after_mib:.0} after"
    );
    Ok(report)
}

/// Phase 5 (see the module doc).
async fn ops(c: &mut LocalCluster, nginx: &Nginx, dir: &Path) -> anyhow::Result<Ops> {
    let hookd = c.hookd.clone();
    let slow = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut o = Ops::default();
    let l = c.await_leader(&http(), LEADER_WITHIN).await?;
    let follower = (0..3).find(|i| *i != l).unwrap_or(0);

    // Backup.
    let file = dir.join("backup.snap");
    let t = Instant::now();
    let saved = hookd_cli(
        &hookd,
        vec![
            "--addr".into(),
            c.nodes[follower].api.to_string(),
            "snapshot".into(),
            "save".into(),
            file.display().to_string(),
        ],
    )
    .await?;
    o.snapshot_save_ms = t.elapsed().as_millis();
    o.snapshot_bytes = saved["bytes"].as_u64().unwrap_or(0);
    o.snapshot_jobs = saved["jobs"].as_u64().unwrap_or(0);
    println!(
        "ops: snapshot save {} ms, {} bytes, {} jobs",
        o.snapshot_save_ms, o.snapshot_bytes, o.snapshot_jobs
    );

    // A fourth node joins, then leaves.
    let j = c.add_joining()?;
    c.spawn(j)?;
    let body = json!({"id": c.nodes[j].id, "peer_addr": c.nodes[j].peer.to_string(),
                      "api_addr": c.nodes[j].api.to_string()});
    let t = Instant::now();
    let added = slow
        .post(c.url(l, "/v1/cluster/members"))
        .json(&body)
        .send()
        .await?;
    o.add_node_ms = t.elapsed().as_millis();
    o.add_node_status = added.status().as_u16();
    let t = Instant::now();
    let removed = slow
        .delete(c.url(l, &format!("/v1/cluster/members/{}", c.nodes[j].id)))
        .send()
        .await?;
    o.remove_node_ms = t.elapsed().as_millis();
    println!(
        "ops: add a node {} ms ({}), remove it {} ms ({})",
        o.add_node_ms,
        o.add_node_status,
        o.remove_node_ms,
        removed.status()
    );
    c.kill(j);

    // Restore into a new cluster.
    let rdir = dir.join("restored");
    std::fs::create_dir_all(&rdir)?;
    let mut r = LocalCluster::new(&hookd, &rdir, 3, &c.extra_args)?;
    for i in 0..3 {
        let t = Instant::now();
        hookd_cli(
            &hookd,
            vec![
                "snapshot".into(),
                "restore".into(),
                file.display().to_string(),
                "--data-dir".into(),
                r.nodes[i].data_dir.display().to_string(),
                "--node-id".into(),
                r.nodes[i].id.to_string(),
                "--initial-cluster".into(),
                r.initial_cluster().to_string(),
            ],
        )
        .await?;
        o.restore_ms.push(t.elapsed().as_millis());
    }
    let t = Instant::now();
    r.spawn_all()?;
    let mut ready = true;
    for i in 0..3 {
        ready &= r
            .await_ready(&http(), i, Duration::from_secs(120))
            .await
            .is_ok();
    }
    o.restored_ready_ms = ready.then(|| t.elapsed().as_millis());
    o.restored_has_jobs = http()
        .get(r.url(0, "/v1/jobs/j0"))
        .send()
        .await
        .is_ok_and(|resp| resp.status().as_u16() == 200);
    println!(
        "ops: restore {:?} ms per member, restored cluster ready after {:?} ms, jobs there: {}",
        o.restore_ms, o.restored_ready_ms, o.restored_has_jobs
    );
    drop(r);

    o.rolling = rolling_restart(c, nginx).await?;
    Ok(o)
}

/// The rolling restart of phase 5.
async fn rolling_restart(c: &mut LocalCluster, nginx: &Nginx) -> anyhow::Result<Rolling> {
    let l = c.await_leader(&http(), LEADER_WITHIN).await?;
    let start = (now_ms() / 1000 + 2) * 1000;
    let tick = json!({"id": "rolling-tick", "url": nginx.url,
                      "schedule": {"every": "1s", "start_at": rfc3339(start)}});
    let made = http().post(c.url(l, "/v1/jobs")).json(&tick).send().await?;
    anyhow::ensure!(
        made.status().is_success(),
        "create the ticking job: {}",
        made.status()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let writer = rolling::Writer::start(c, "rw");
    rolling::roll(c, &writer, None, Duration::from_secs(2)).await?;
    let end = now_ms();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = writer.stop().await?;
    let first = rolling::first_by_due(
        nginx
            .requests()
            .into_iter()
            .filter(|(_, job, _)| job == "rolling-tick")
            .map(|(recv, _, due)| (recv, due)),
    );
    let ticks = rolling::ticks(&first, start, 1000, end);
    let rolling = Rolling {
        writes: writes.writes,
        refused: writes.refused,
        runs: ticks.runs,
        missed: ticks.missed,
        max_lateness_ms: ticks.max_lateness_ms,
    };
    println!(
        "ops: rolling restart: {} writes, {} refused; {} runs, {} missed; max lateness {} ms",
        rolling.writes, rolling.refused, rolling.runs, rolling.missed, rolling.max_lateness_ms
    );
    Ok(rolling)
}

/// Jobs per filtered page.
const LIST_LIMIT: usize = 100;

/// A filter of `GET /v1/jobs` the listing measures: its query parameter, and whether a job as
/// the API shows it matches.
struct ListFilter {
    param: &'static str,
    value: &'static str,
    matches: fn(&Value) -> bool,
}

/// 10 % of the fill, 5 %, and the paused jobs (`--pause-every`).
const LIST_FILTERS: [ListFilter; 3] = [
    ListFilter {
        param: "selector",
        value: "team=t3",
        matches: |j| j["labels"]["team"] == "t3",
    },
    ListFilter {
        param: "selector",
        value: "team=t3,env=prod",
        matches: |j| j["labels"]["team"] == "t3" && j["labels"]["env"] == "prod",
    },
    ListFilter {
        param: "state",
        value: "paused",
        matches: |j| j["paused"] == true,
    },
];

/// The listing phase (see the module doc).
/// The console's views, each with what says it is drawn (a script returning true then).
const CONSOLE_VIEWS: [(&str, &str, &str); 2] = [
    (
        "overview",
        "#/",
        "return document.querySelectorAll('main svg.plot').length === 3 \
         && document.querySelectorAll('main section:first-of-type tbody tr').length === 3",
    ),
    (
        "jobs team=t3",
        "#/jobs?selector=team%3Dt3",
        "return document.querySelectorAll('main tbody tr').length === 100",
    ),
];

/// What the page's timings say once it is drawn: the end of its last request (navigation,
/// files, API calls) from the start of the navigation, how many requests, and each `GET
/// /v1/jobs`'s time from request to first byte.
const CONSOLE_TIMINGS: &str = "const n = performance.getEntriesByType('navigation')[0]; \
    const r = performance.getEntriesByType('resource'); \
    return {end: Math.max(n.responseEnd, ...r.map((e) => e.responseEnd)), \
            requests: 1 + r.length, \
            jobs: r.filter((e) => e.name.includes('/v1/jobs?')) \
                   .map((e) => e.responseStart - e.requestStart)};";

/// Phase 2d: `loads` cold loads of each console view from the leader and a follower, each in
/// a new browser (fresh profile, empty cache).
async fn console_loads(
    c: &LocalCluster,
    dir: &Path,
    loads: usize,
) -> anyhow::Result<Vec<ConsoleLoads>> {
    let driver = hookd_jepsen::webdriver::Driver::start(&dir.join("chromedriver.log")).await?;
    let l = c.await_leader(&http(), LEADER_WITHIN).await?;
    let follower = (0..3).find(|i| *i != l).unwrap_or(0);
    let ms = |v: &Value| Duration::from_micros((v.as_f64().unwrap_or(0.0) * 1000.0) as u64);
    let mut out = Vec::new();
    for (node, i) in [("leader", l), ("follower", follower)] {
        for (view, fragment, drawn) in CONSOLE_VIEWS {
            let (mut load, mut jobs, mut requests) = (Latencies::default(), None, 0);
            for _ in 0..loads {
                let s = driver.session(1280, 1000).await?;
                s.navigate(&c.url(i, &format!("/ui{fragment}"))).await?;
                s.wait_for(drawn, Duration::from_secs(30)).await?;
                let t = s.execute(CONSOLE_TIMINGS).await?;
                s.quit().await?;
                load.record(ms(&t["end"]));
                requests = t["requests"].as_u64().unwrap_or(0);
                for j in t["jobs"].as_array().into_iter().flatten() {
                    jobs.get_or_insert_with(Latencies::default).record(ms(j));
                }
            }
            let one = ConsoleLoads {
                view,
                node,
                loads,
                requests,
                load: load.summary(),
                jobs_request: jobs.map(|j| j.summary()),
            };
            println!(
                "console: {view} from the {node}: {requests} requests, all done {}{}",
                one.load,
                one.jobs_request
                    .as_ref()
                    .map(|j| format!("; GET /v1/jobs {j}"))
                    .unwrap_or_default()
            );
            out.push(one);
        }
    }
    Ok(out)
}

async fn listing(c: &LocalCluster, args: &Args) -> anyhow::Result<Listing> {
    let l = c.await_leader(&http(), LEADER_WITHIN).await?;
    let follower = (0..3).find(|i| *i != l).unwrap_or(0);
    let (mut paused, mut pause_secs) = (0, 0.0);
    let http = http();
    let mut series = Vec::new();
    for (f, filter) in LIST_FILTERS.iter().enumerate() {
        // The pauses come after the label filters, so that pauses that fail spoil only these.
        if filter.param == "state" {
            if args.pause_every == 0 {
                continue;
            }
            let every = args.pause_every;
            let made = create_all(
                Creates {
                    api: c.url(l, ""),
                    count: args.jobs.div_ceil(every),
                    clients: args.clients,
                    deadline: Instant::now() + Duration::from_secs(120),
                },
                move |k| (format!("/v1/jobs/j{}/pause", k * every), json!({})),
                |_| {},
            )
            .await;
            (paused, pause_secs) = (made.created, made.secs);
            println!(
                "list: paused {paused} jobs in {pause_secs:.1} s ({} non-2xx, {} timeouts)",
                made.non_2xx, made.timeouts
            );
            if made.non_2xx + made.timeouts > 0 {
                println!("list: not all pauses succeeded: no state=paused pages");
                continue;
            }
        }
        for (node, i) in [("leader", l), ("follower", follower)] {
            // The same random starts on both nodes.
            let rng = rand::rngs::StdRng::seed_from_u64(f as u64);
            let s = list_series(&http, (node, &c.url(i, "/v1/jobs")), filter, args, rng).await?;
            println!(
                "list: {node:<8} {}={:<16} {} pages in {:.1} s: {}; random after p99 {:.2} ms, \
                 next p99 {:.2} ms; {} full, {} short mid-way, {} last, short sizes {:?}; \
                 {} errors (first: {}), {} wrong",
                filter.param,
                filter.value,
                s.pages,
                s.secs,
                s.latency,
                s.random_after.p99_ms,
                s.following.p99_ms,
                s.full_pages,
                s.short_pages,
                s.last_pages,
                s.short_sizes,
                s.errors,
                s.first_error.as_deref().unwrap_or("none"),
                s.wrong
            );
            series.push(s);
        }
    }
    Ok(Listing {
        limit: LIST_LIMIT,
        paused,
        pause_secs,
        series,
    })
}

/// Up to `--list-pages` pages of `filter` from `node`'s `api` (`…/v1/jobs`), one request at a
/// time, in chains of `--list-chain` from a random `after` on through `next`, for
/// `--list-max-secs` at most.
async fn list_series(
    http: &reqwest::Client,
    (node, api): (&'static str, &str),
    filter: &ListFilter,
    args: &Args,
    mut rng: rand::rngs::StdRng,
) -> anyhow::Result<ListSeries> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.list_max_secs);
    let (mut all, mut random_after, mut following) = (
        Latencies::default(),
        Latencies::default(),
        Latencies::default(),
    );
    let mut s = ListSeries {
        filter: format!("{}={}", filter.param, filter.value),
        node,
        pages: 0,
        latency: all.summary(),
        random_after: all.summary(),
        following: all.summary(),
        full_pages: 0,
        short_pages: 0,
        last_pages: 0,
        short_sizes: Vec::new(),
        errors: 0,
        first_error: None,
        wrong: 0,
        secs: 0.0,
    };
    let limit = LIST_LIMIT.to_string();
    'chains: while s.pages < args.list_pages {
        let mut after = format!("j{}", rng.random_range(0..args.jobs.max(1)));
        for step in 0..args.list_chain.max(1) {
            if s.pages >= args.list_pages || Instant::now() > deadline {
                break 'chains;
            }
            let url = reqwest::Url::parse_with_params(
                api,
                [
                    (filter.param, filter.value),
                    ("limit", &limit),
                    ("after", &after),
                ],
            )?;
            s.pages += 1;
            let t = Instant::now();
            let answer = match http.get(url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    r.bytes().await.map(|b| (status, b))
                }
                Err(e) => Err(e),
            };
            let took = t.elapsed();
            let page = match &answer {
                Ok((200, body)) => serde_json::from_slice::<Value>(body).ok(),
                _ => None,
            };
            let Some(page) = page else {
                s.errors += 1;
                s.first_error.get_or_insert_with(|| match answer {
                    Ok((status, body)) => {
                        let body = String::from_utf8_lossy(&body);
                        format!("{status} {}", body.chars().take(300).collect::<String>())
                    }
                    Err(e) => e.to_string(),
                });
                continue 'chains;
            };
            all.record(took);
            if step == 0 {
                random_after.record(took);
            } else {
                following.record(took);
            }
            let jobs = page["jobs"].as_array().map_or(&[][..], Vec::as_slice);
            s.wrong += wrong_jobs(&after, jobs, filter.matches);
            let next = page["next"].as_str();
            match next {
                None => s.last_pages += 1,
                Some(_) if jobs.len() == LIST_LIMIT => s.full_pages += 1,
                Some(_) => s.short_pages += 1,
            }
            if jobs.len() < LIST_LIMIT && s.short_sizes.len() < 20 {
                s.short_sizes.push(jobs.len());
            }
            match next {
                Some(n) => after = n.to_owned(),
                None => continue 'chains,
            }
        }
    }
    s.secs = started.elapsed().as_secs_f64();
    s.latency = all.summary();
    s.random_after = random_after.summary();
    s.following = following.summary();
    Ok(s)
}

/// How many of a page's `jobs` do not match, or are not in id order after `after`.
fn wrong_jobs(after: &str, jobs: &[Value], matches: fn(&Value) -> bool) -> usize {
    let mut last = after;
    let mut wrong = 0;
    for j in jobs {
        let id = j["id"].as_str().unwrap_or_default();
        if id <= last || !matches(j) {
            wrong += 1;
        }
        last = id.max(last);
    }
    wrong
}

/// The leader's `hookd_runs_claimed_late_total` (0 when absent).
async fn claimed_late(c: &LocalCluster, leader: usize) -> f64 {
    let text = match http().get(c.url(leader, "/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find_map(|l| {
            l.strip_prefix("hookd_runs_claimed_late_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn rss_mib(c: &LocalCluster) -> Vec<f64> {
    (0..c.nodes.len())
        .map(|i| c.pid(i).map_or(0.0, |p| rss_kib(p) as f64 / 1024.0))
        .collect()
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// The create rate between consecutive samples of (seconds, jobs created so far).
fn rates(points: &[(f64, usize)]) -> Vec<f64> {
    points
        .windows(2)
        .map(|w| {
            let dt = w[1].0 - w[0].0;
            if dt > 0.0 {
                (w[1].1 - w[0].1) as f64 / dt
            } else {
                0.0
            }
        })
        .collect()
}

/// Lateness after `due_ms` of the first request of each job whose id starts with `prefix`,
/// from nginx's log lines (received ms, job id, scheduled ms), and the rate at which they came
/// from the first to the last.
fn herd_lateness(reqs: &[(i64, String, i64)], prefix: &str, due_ms: i64) -> (usize, Summary, f64) {
    let mut first: HashMap<&str, i64> = HashMap::new();
    for (recv, job, _) in reqs {
        if job.starts_with(prefix) {
            let e = first.entry(job).or_insert(*recv);
            *e = (*e).min(*recv);
        }
    }
    let mut lat = Latencies::default();
    for recv in first.values() {
        lat.record(Duration::from_millis((recv - due_ms).max(0) as u64));
    }
    let span = match (first.values().min(), first.values().max()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
        _ => 0.0,
    };
    let rate = if span > 0.0 {
        first.len() as f64 / span
    } else {
        0.0
    };
    (first.len(), lat.summary(), rate)
}

/// How many requests to send to which node (its URL without a path), with how many clients,
/// until when.
struct Creates {
    api: String,
    count: usize,
    clients: usize,
    deadline: Instant,
}

/// Sends `POST {api}{path}` with `body` for `(path, body) = request(k)`, k in `0..count` (jobs
/// to create, or pauses); a 429 is retried after its `Retry-After`. Calls `tick` with the
/// requests that succeeded so far every 200 ms.
async fn create_all(
    Creates {
        api,
        count,
        clients,
        deadline,
    }: Creates,
    request: impl Fn(usize) -> (String, Value) + Send + Sync + 'static,
    mut tick: impl FnMut(usize),
) -> Fill {
    let http = http();
    let next = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let non_2xx = Arc::new(AtomicUsize::new(0));
    let timeouts = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, api, request) = (http.clone(), api.clone(), request.clone());
        let (next, created, non_2xx, timeouts) = (
            next.clone(),
            created.clone(),
            non_2xx.clone(),
            timeouts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= count {
                    return;
                }
                let (path, body) = request(k);
                let url = format!("{api}{path}");
                for _ in 0..100 {
                    if Instant::now() > deadline {
                        return;
                    }
                    match http.post(&url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => {
                            created.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) if r.status().as_u16() == 429 => {
                            let wait = r
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                                .unwrap_or(1);
                            tokio::time::sleep(Duration::from_millis(200 * wait.min(5))).await;
                            continue;
                        }
                        Ok(_) => {
                            non_2xx.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    break;
                }
            }
        }));
    }
    let mut handles = tasks;
    loop {
        let done = handles.iter().all(|t| t.is_finished());
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        tick(created.load(Ordering::Relaxed));
    }
    for t in handles.drain(..) {
        let _ = t.await;
    }
    Fill {
        created: created.load(Ordering::Relaxed),
        non_2xx: non_2xx.load(Ordering::Relaxed),
        timeouts: timeouts.load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
        samples: Vec::new(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let hookd = args.hookd.canonicalize().context("hookd binary")?;
    let temp = tempfile::tempdir()?;
    let dir = work_dir(args.keep.as_deref(), &temp)?;
    let nginx = Nginx::start(&args.nginx, &dir.join("nginx"))?;
    let mut c = LocalCluster::new(&hookd, &dir, 3, &args.hookd_args)?;
    c.spawn_all()?;
    let l = c.await_leader(&http(), LEADER_WITHIN).await?;

    // 1. fill
    anyhow::ensure!(
        !args.bulk_pause || (!args.no_labels && args.fill_cron.is_none()),
        "--bulk-pause selects the filled jobs by label and makes them fire every 60 s: \
         not with --no-labels or --fill-cron"
    );
    let schedule = match &args.fill_cron {
        Some(expr) => json!({"cron": expr, "timezone": "Europe/Berlin"}),
        None => json!({"every": "1h", "start_at": rfc3339(now_ms() + 6 * 3600 * 1000)}),
    };
    // --bulk-pause: job k every 60 s from `rhythm + (k·BULK_SPREAD mod jobs)/jobs` of a minute
    // (a start in the past only sets the rhythm), so the jobs fire at jobs/60 per second once
    // created, in an order unrelated to their ids' (the order the bulk request pauses them in).
    let rhythm = args.bulk_pause.then(|| now_ms() - 60_000);
    let jobs = args.jobs.max(1) as i64;
    let url = nginx.url.clone();
    let no_labels = args.no_labels;
    let started = Instant::now();
    let every = Duration::from_secs(args.sample_secs.max(1));
    let mut points = vec![(0.0, 0usize)];
    let mut rss = Vec::new();
    let mut last_sample = Instant::now();
    println!("fill: {} jobs, {} clients", args.jobs, args.clients);
    let mut fill = create_all(
        Creates {
            api: c.url(l, ""),
            count: args.jobs,
            clients: args.clients,
            deadline: Instant::now() + Duration::from_secs(args.fill_max_secs),
        },
        move |k| {
            let env = if (k / 10) % 2 == 0 { "prod" } else { "dev" };
            let mut job = json!({"id": format!("j{k}"), "url": url,
                "headers": {"content-type": "application/json"},
                "body": format!("{{\"invoice\":{k}}}"),
                "labels": {"team": format!("t{}", k % 10), "env": env},
                "schedule": schedule});
            if let Some(rhythm) = rhythm {
                let slot = (k as i64).wrapping_mul(BULK_SPREAD) % jobs;
                let start = rhythm + slot * BULK_EVERY_MS / jobs;
                job["schedule"] = json!({"every": "60s", "start_at": rfc3339(start)});
            }
            if no_labels {
                job.as_object_mut().map(|o| o.remove("labels"));
            }
            ("/v1/jobs".to_owned(), job)
        },
        |created| {
            if last_sample.elapsed() >= every {
                last_sample = Instant::now();
                points.push((started.elapsed().as_secs_f64(), created));
                let r = rss_mib(&c);
                println!(
                    "  {:>6.0} s {:>8} jobs {:>7.0}/s  rss MiB {:?}",
                    started.elapsed().as_secs_f64(),
                    created,
                    rates(&points).last().copied().unwrap_or(0.0),
                    r.iter().map(|m| m.round()).collect::<Vec<_>>()
                );
                rss.push(r);
            }
        },
    )
    .await;
    points.push((fill.secs, fill.created));
    rss.push(rss_mib(&c));
    fill.samples = rates(&points)
        .into_iter()
        .zip(points.iter().skip(1))
        .zip(rss)
        .map(|((per_s, (secs, created)), rss_mib)| Sample {
            secs: *secs,
            created: *created,
            per_s,
            rss_mib,
        })
        .collect();
    println!(
        "fill: {} created in {:.0} s ({:.0}/s), {} non-2xx, {} client timeouts",
        fill.created,
        fill.secs,
        fill.created as f64 / fill.secs.max(0.001),
        fill.non_2xx,
        fill.timeouts
    );

    // 2. size
    let data_dir_mib: Vec<f64> = c
        .nodes
        .iter()
        .map(|n| dir_bytes(&n.data_dir) as f64 / (1 << 20) as f64)
        .collect();
    let rss_after_fill_mib = rss_mib(&c);
    println!("size: data dirs MiB {data_dir_mib:.0?}, rss MiB {rss_after_fill_mib:.0?}");

    let bulk_pause = if args.bulk_pause {
        Some(bulk_pause(&c, &nginx, &args, &fill).await?)
    } else {
        None
    };

    let listing = if args.list_pages > 0 && !args.no_labels {
        Some(listing(&c, &args).await?)
    } else {
        None
    };

    let console = if args.ui_loads > 0 {
        Some(console_loads(&c, &dir, args.ui_loads).await?)
    } else {
        None
    };

    // 3. restart
    for i in 0..3 {
        c.terminate(i, Duration::from_secs(60))?;
    }
    let restarted = Instant::now();
    c.spawn_all()?;
    let mut ready = true;
    for i in 0..3 {
        ready &= c
            .await_ready(&http(), i, Duration::from_secs(300))
            .await
            .is_ok();
    }
    let restart_ready_ms = ready.then(|| restarted.elapsed().as_millis());
    let rss_after_restart_mib = rss_mib(&c);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss_settled_mib = rss_mib(&c);
    println!(
        "restart: all ready after {restart_ready_ms:?} ms, rss MiB {rss_after_restart_mib:.0?}, \
         10 s later {rss_settled_mib:.0?}"
    );

    // 4. herd
    let herd = if args.herd > 0 {
        let l = c.await_leader(&http(), LEADER_WITHIN).await?;
        let rate = fill.samples.last().map_or(100.0, |s| s.per_s).max(100.0);
        let due = now_ms() + (args.herd as f64 / rate * 1500.0) as i64 + 20_000;
        let at = rfc3339(due);
        let url = nginx.url.clone();
        println!("herd: {} jobs due at {at}", args.herd);
        let late_before = claimed_late(&c, l).await;
        let made = create_all(
            Creates {
                api: c.url(l, ""),
                count: args.herd,
                clients: args.clients,
                deadline: Instant::now()
                    + Duration::from_millis((due - now_ms()).max(0) as u64 + 60_000),
            },
            move |k| {
                let job = json!({"id": format!("h{k}"), "url": url, "schedule": {"at": at}});
                ("/v1/jobs".to_owned(), job)
            },
            |_| {},
        )
        .await;
        let created_ahead_ms = due - now_ms();
        let wait_until = Instant::now()
            + Duration::from_millis(created_ahead_ms.max(0) as u64)
            + Duration::from_secs(args.herd_wait_secs);
        let (mut delivered, mut lateness, mut delivered_per_s) =
            (0, Latencies::default().summary(), 0.0);
        while Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (delivered, lateness, delivered_per_s) = herd_lateness(&nginx.requests(), "h", due);
            if delivered >= made.created && now_ms() > due {
                break;
            }
        }
        let claimed_late = claimed_late(&c, l).await - late_before;
        println!(
            "herd: {} created ({} ms ahead), {delivered} delivered at {delivered_per_s:.0}/s, \
             lateness {lateness}, {claimed_late} claimed after they were due",
            made.created, created_ahead_ms
        );
        Some(Herd {
            jobs: args.herd,
            created: made.created,
            created_ahead_ms,
            delivered,
            lateness,
            delivered_per_s,
            claimed_late,
        })
    } else {
        None
    };

    let ops = if args.ops {
        Some(ops(&mut c, &nginx, &dir).await?)
    } else {
        None
    };

    let report = Report {
        jobs: args.jobs,
        fill,
        data_dir_mib,
        rss_after_fill_mib,
        listing,
        restart_ready_ms,
        rss_after_restart_mib,
        rss_settled_mib,
        bulk_pause,
        herd,
        ops,
        console,
    };
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_interval() {
        let r = rates(&[(0.0, 0), (10.0, 5000), (20.0, 8000), (20.0, 8000)]);
        assert_eq!(r, [500.0, 300.0, 0.0]);
    }

    #[test]
    fn wrong_jobs_are_those_out_of_filter_or_order() {
        let job = |id: &str, team: &str| json!({"id": id, "labels": {"team": team}});
        let matches = LIST_FILTERS[0].matches;
        let page = [
            job("j13", "t3"),
            job("j23", "t3"),
            job("j24", "t4"),
            job("j21", "t3"),
        ];
        // j24 is another team's, j21 comes after j23.
        assert_eq!(wrong_jobs("j1", &page, matches), 2);
        // Not after `after`.
        assert_eq!(wrong_jobs("j2", &page[..1], matches), 1);
        assert_eq!(wrong_jobs("j2", &[], matches), 0);
        assert!((LIST_FILTERS[2].matches)(&json!({"paused": true})));
        assert!(!(LIST_FILTERS[1].matches)(
            &json!({"labels": {"team": "t3", "env": "dev"}})
        ));
    }

    #[test]
    fn bulk_writes_are_counted_in_their_window_and_refusals_by_kind() {
        let ms = Duration::from_millis;
        let w = |start, status| (start, ms(2), 1, status, String::new());
        let all = vec![
            w(5, 201),
            w(10, 200),
            w(11, 429),
            w(12, 503),
            w(13, 0),
            w(20, 409),
        ];
        let during = writes_in(&all, 10, 20);
        assert_eq!(during.count, 4);
        assert_eq!(during.refused, 3);
        assert_eq!(
            (during.status_429, during.status_5xx, during.failed),
            (1, 1, 1)
        );
        assert_eq!(writes_in(&all, 0, 10).refused, 0);
        assert_eq!(writes_in(&all, 20, 21).refused, 1);
        assert!(filled("j0", 10) && filled("j9", 10));
        assert!(!filled("j10", 10) && !filled("bw1-2", 10) && !filled("jx", 10));
    }

    #[test]
    fn herd_lateness_counts_each_job_once_from_its_first_request() {
        let reqs = vec![
            (1_010, "h1".to_owned(), 1_000),
            (1_500, "h1".to_owned(), 1_000), // a retry: not counted again
            (1_200, "h2".to_owned(), 1_000),
            (900, "h3".to_owned(), 1_000),   // early counts as 0
            (5_000, "j7".to_owned(), 1_000), // not the herd
        ];
        let (n, s, rate) = herd_lateness(&reqs, "h", 1_000);
        assert_eq!(n, 3);
        assert_eq!(s.count, 3);
        assert!((s.max_ms - 200.0).abs() < 1.0, "{s}");
        assert!((rate - 3.0 / 0.3).abs() < 0.01, "{rate}"); // 3 jobs from 900 to 1,200 ms
    }
}
