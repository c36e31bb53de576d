//! hookd-upgrade-test: SPEC §5's "upgrade from the previous release and roll back to it, rolling,
//! under writes and a ticking job" on a local three-node cluster (`scripts/upgrade-test.sh`
//! builds the previous release from its tag and runs this).
//!
//! A cluster of the previous release gets a job firing every second (into the jepsen sink) and
//! a writer creating jobs through every node that is up. Then, each node restarted in turn
//! (followers first, leader last, each down 2 s):
//!
//! 1. upgrade to the current build; with one node upgraded, finalizing is refused (`409`);
//!    once all are, every member shows the current version and the cluster still the
//!    previous release's format;
//! 2. roll back to the previous release, each node on the data dir the current build wrote;
//! 3. upgrade again, then finalize (`200`): the format is raised on every node;
//! 4. a node started with the previous release on its finalized data dir refuses it, naming the
//!    format, and starts again with the current build.
//!
//! Passes with 0 runs of the ticking job missed, 0 writes refused by a node that was up, and
//! every acknowledged job present at the end; exits 1 otherwise, printing what failed.

// A command-line tool: it reports on stdout.
#![allow(clippy::print_stdout)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use hookd_jepsen::local::{http, now_ms, rfc3339, work_dir, LocalCluster, LEADER_WITHIN};
use hookd_jepsen::rolling::{self, Writer};
use hookd_jepsen::sink::Sink;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// The previous release's `hookd`.
    #[arg(long)]
    previous: PathBuf,
    /// Its version, as its `Cargo.toml` says.
    #[arg(long)]
    previous_version: String,
    /// The `hookd` to upgrade to.
    #[arg(long)]
    current: PathBuf,
    /// Keep the cluster's data dirs and logs here.
    #[arg(long)]
    keep: Option<PathBuf>,
}

const TICK: &str = "upgrade-tick";
/// How long each node is down during a roll.
const DOWN: Duration = Duration::from_secs(2);
/// How long a node of the previous release may take to refuse a finalized data dir.
const REFUSE_WITHIN: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let dir = work_dir(args.keep.as_deref(), &temp)?;
    let started = Instant::now();
    let sink = Sink::start(
        "127.0.0.1".parse()?,
        None,
        None,
        1,
        Arc::new(|_| None::<u64>),
    )
    .await?;
    let mut c = LocalCluster::new(&args.previous, &dir, 3, &[])?;
    c.spawn_all()?;
    for i in 0..3 {
        c.await_ready(&http(), i, LEADER_WITHIN).await?;
    }
    let result = run(&mut c, &sink, &args).await;
    if result.is_err() {
        for i in 0..3 {
            let log = c.log_of(i);
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- node {} log, last lines (newest first):", i + 1);
            for l in tail {
                eprintln!("    {l}");
            }
        }
    }
    let summary = result?;
    println!(
        "upgrade-test: passed in {} s: {summary}",
        started.elapsed().as_secs()
    );
    Ok(())
}

async fn run(c: &mut LocalCluster, sink: &Sink, args: &Args) -> anyhow::Result<String> {
    let l = c.await_leader(&http(), LEADER_WITHIN).await?;
    let start = (now_ms() / 1000 + 2) * 1000;
    let tick = json!({"id": TICK, "url": sink.url(TICK),
                      "schedule": {"every": "1s", "start_at": rfc3339(start)}});
    let made = http().post(c.url(l, "/v1/jobs")).json(&tick).send().await?;
    ensure!(
        made.status() == 201,
        "create the ticking job: {}",
        made.status()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writer = Writer::start(c, "uw");

    // 1. Upgrade, followers first; finalizing is refused while a member runs the previous
    //    release.
    let leader = c.await_leader(&http(), LEADER_WITHIN).await?;
    let mut order: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    order.push(leader);
    for (k, &i) in order.iter().enumerate() {
        rolling::restart(c, &writer, i, Some(&args.current), DOWN).await?;
        if k == 0 {
            let (status, body) = finalize(c, i).await?;
            ensure!(
                status == 409 && body.to_string().contains("before 0.2"),
                "finalize with two members on {}: {status} {body}",
                args.previous_version
            );
            println!("upgrade-test: one node upgraded; finalize refused: {status}");
        }
    }
    let version = cluster(c, order[0]).await?["members"][0]["version"].clone();
    ensure!(
        version.is_string() && version != json!(args.previous_version),
        "the current build's version: {version}"
    );
    let format = eventually(c, "every member on the current version", |v| {
        let all = v["members"]
            .as_array()
            .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["version"] == version));
        all.then(|| v["format_version"].as_u64()).flatten()
    })
    .await?;
    println!("upgrade-test: upgraded to {version}; format still {format}");

    // 2. Roll back, each node to the previous release on the data dir the current one wrote.
    rolling::roll(c, &writer, Some(&args.previous), DOWN).await?;
    println!("upgrade-test: rolled back to {}", args.previous_version);

    // 3. Upgrade again, and finalize.
    rolling::roll(c, &writer, Some(&args.current), DOWN).await?;
    let follower = {
        let l = c.await_leader(&http(), LEADER_WITHIN).await?;
        (l + 1) % 3
    };
    let (status, body) = finalize(c, follower).await?;
    ensure!(
        status == 200,
        "finalize once all are upgraded: {status} {body}"
    );
    let raised = body["format_version"].as_u64().unwrap_or(0);
    ensure!(
        raised > format,
        "finalize raised the format: {format} → {body}"
    );
    for i in 0..3 {
        let (_, v) = get(c, i, "/v1/cluster").await?;
        ensure!(
            v["format_version"].as_u64() == Some(raised),
            "node {}: {v}",
            i + 1
        );
    }
    println!("upgrade-test: finalized: format {format} → {raised}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = now_ms();
    let writes = writer.stop().await?;

    // 4. The previous release now refuses a data dir, naming its format.
    let other = (follower + 1) % 3;
    c.terminate(other, Duration::from_secs(30))?;
    c.hookd = args.previous.clone();
    c.spawn(other)?;
    let exit = c.wait_exit(other, REFUSE_WITHIN)?;
    let log = c.log_of(other);
    ensure!(
        exit.is_some_and(|s| !s.success()) && log.contains(&format!("version {raised}")),
        "the previous release on a finalized data dir: exit {exit:?}, log ends {:?}",
        log.lines().last()
    );
    c.hookd = args.current.clone();
    c.spawn(other)?;
    c.await_ready(&http(), other, LEADER_WITHIN).await?;
    println!("upgrade-test: the previous release refuses a finalized data dir");

    // Nothing lost, nothing missed, nothing refused.
    let listed = job_ids(c, follower, "uw").await?;
    let lost: Vec<&String> = writes
        .acknowledged
        .iter()
        .filter(|id| !listed.contains(*id))
        .collect();
    let first = rolling::first_by_due(
        sink.of(TICK)
            .into_iter()
            .map(|d| (d.recv / 1000, d.scheduled_at / 1000)),
    );
    let ticks = rolling::ticks(&first, start, 1000, end);
    let summary = format!(
        "{} writes, {} refused, {} acknowledged, {} lost; {} runs, {} missed, max lateness {} ms",
        writes.writes,
        writes.refused,
        writes.acknowledged.len(),
        lost.len(),
        ticks.runs,
        ticks.missed,
        ticks.max_lateness_ms
    );
    ensure!(
        writes.refused == 0 && lost.is_empty() && ticks.missed == 0 && ticks.runs > 0,
        "{summary}; lost {:?}; refusals {:?}",
        lost.iter().take(10).collect::<Vec<_>>(),
        writes.refusals
    );
    Ok(summary)
}

async fn get(c: &LocalCluster, i: usize, path: &str) -> anyhow::Result<(u16, Value)> {
    let r = http().get(c.url(i, path)).send().await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or_default()))
}

async fn cluster(c: &LocalCluster, i: usize) -> anyhow::Result<Value> {
    Ok(get(c, i, "/v1/cluster").await?.1)
}

async fn finalize(c: &LocalCluster, i: usize) -> anyhow::Result<(u16, Value)> {
    let r = http()
        .post(c.url(i, "/v1/cluster/upgrade/finalize"))
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or_default()))
}

/// Polls every node's `GET /v1/cluster` for up to 10 s until `done` says what it waits for on
/// each; the first node's answer.
async fn eventually<T>(
    c: &LocalCluster,
    what: &str,
    done: impl Fn(&Value) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = Vec::new();
        for i in 0..c.nodes.len() {
            all.push(done(&cluster(c, i).await?));
        }
        if all.iter().all(Option::is_some) {
            return all.into_iter().next().flatten().context(what.to_owned());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every job id starting with `prefix`, listed through node `i` in pages.
async fn job_ids(c: &LocalCluster, i: usize, prefix: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/jobs?prefix={prefix}&limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (status, page) = get(c, i, &path).await?;
        ensure!(status == 200, "list {path}: {status} {page}");
        for j in page["jobs"].as_array().into_iter().flatten() {
            ids.insert(j["id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return Ok(ids),
        }
    }
}
