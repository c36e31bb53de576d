//! hookd-shards-bench: how the work spreads over a local three-node cluster of the release
//! binary (SPEC §5, "load spread"), for each `--shards` count asked: `--jobs` jobs firing every
//! second into the chaos harness's sink, `--seconds` of runs, then the share of the runs each
//! node sent (the `node_id` of their attempts), then the node leading the most shards SIGKILLed:
//! how long until the runs of its shards that fell due meanwhile were delivered by the others
//! (the gap after each due instant), and whether any run was missed. Every loop is bounded.

// A command-line report: printing to stdout is its job.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hookd_jepsen::check::shard_of;
use hookd_jepsen::local::{http, now_ms, rfc3339, work_dir, LocalCluster, LEADER_WITHIN};
use hookd_jepsen::sink::Sink;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "target/release/hookd")]
    hookd: PathBuf,
    /// Shard counts to measure, one cluster each.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 6])]
    shards: Vec<u32>,
    /// Jobs, each firing every second.
    #[arg(long, default_value_t = 120)]
    jobs: usize,
    /// Seconds of runs counted for the spread.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    keep: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Spread {
    shards: u32,
    /// Shards each node led when the count began.
    led: BTreeMap<u64, usize>,
    /// Runs each node sent (first attempts), and its share.
    sent: BTreeMap<u64, usize>,
    share: BTreeMap<u64, f64>,
    killed: u64,
    /// Runs of the killed node's shards that fell due after the kill, and the longest gap from
    /// a due instant to its delivery by another node, ms.
    runs_after_kill: usize,
    max_gap_after_kill_ms: i64,
    missed_after_kill: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut all = Vec::new();
    for &shards in &args.shards {
        let s = measure(&args, shards).await?;
        println!(
            "shards {shards}: led {:?}; runs sent per node {:?} (shares {:?}); node {} killed: {} runs of its shards due after, max gap {} ms, {} missed",
            s.led, s.sent, s.share, s.killed, s.runs_after_kill, s.max_gap_after_kill_ms, s.missed_after_kill
        );
        all.push(s);
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&all)?)?;
    }
    Ok(())
}

async fn cluster_view(c: &LocalCluster, i: usize) -> Option<Value> {
    let r = http().get(c.url(i, "/v1/cluster")).send().await.ok()?;
    r.json().await.ok()
}

/// Shard → leader, once every shard has one and each node leads its share (or `within`).
async fn settled_leaders(c: &LocalCluster, shards: u32, within: Duration) -> BTreeMap<u32, u64> {
    let deadline = Instant::now() + within;
    let mut led = BTreeMap::new();
    while Instant::now() < deadline {
        if let Some(v) = cluster_view(c, 0).await {
            led = v["shards"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| Some((s["id"].as_u64()? as u32, s["leader_id"].as_u64()?)))
                .collect();
            let mut per: BTreeMap<u64, usize> = BTreeMap::new();
            for n in led.values() {
                *per.entry(*n).or_default() += 1;
            }
            let even = per.values().all(|n| *n <= (shards as usize).div_ceil(3))
                && (shards < 3 || per.len() == 3);
            if led.len() == shards as usize && even {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    led
}

async fn measure(args: &Args, shards: u32) -> anyhow::Result<Spread> {
    let temp = tempfile::tempdir()?;
    let dir = work_dir(args.keep.as_deref(), &temp)?.join(format!("shards-{shards}"));
    std::fs::create_dir_all(&dir)?;
    let sink = Sink::start("127.0.0.1".parse()?, None, None, 1, Arc::new(|_| None)).await?;
    let mut c = LocalCluster::new(
        &args.hookd,
        &dir,
        3,
        &["--shards".to_owned(), shards.to_string()],
    )?;
    c.spawn_all()?;
    let l = c.await_leader(&http(), LEADER_WITHIN).await?;
    let led = settled_leaders(&c, shards, Duration::from_secs(20)).await;
    let start = (now_ms() / 1000 + 3) * 1000;
    let ids: Vec<String> = (0..args.jobs).map(|k| format!("sb{k:04}")).collect();
    for id in &ids {
        let job = json!({"id": id, "url": sink.url(id), "schedule": {"every": "1s", "start_at": rfc3339(start)}});
        let r = http().post(c.url(l, "/v1/jobs")).json(&job).send().await?;
        anyhow::ensure!(r.status() == 201, "create {id}: {}", r.status());
    }
    tokio::time::sleep(Duration::from_millis(
        (start - now_ms()).max(0) as u64 + args.seconds * 1000,
    ))
    .await;

    // Who sent the runs due in the window: the node of each run's first attempt.
    let mut sent: BTreeMap<u64, usize> = BTreeMap::new();
    for id in &ids {
        let url = c.url(l, &format!("/v1/jobs/{id}/runs?limit=100"));
        let runs: Value = http().get(url).send().await?.json().await?;
        for run in runs["runs"].as_array().into_iter().flatten() {
            if let Some(n) = run["attempts"][0]["node_id"].as_u64() {
                *sent.entry(n).or_default() += 1;
            }
        }
    }
    let total: usize = sent.values().sum();
    let share = sent
        .iter()
        .map(|(n, k)| (*n, *k as f64 / total.max(1) as f64))
        .collect();

    // The node leading the most shards dies.
    let mut per: BTreeMap<u64, usize> = BTreeMap::new();
    for n in led.values() {
        *per.entry(*n).or_default() += 1;
    }
    let killed = per
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| *id)
        .context("no shard leader")?;
    let its_shards: Vec<u32> = led
        .iter()
        .filter_map(|(s, n)| (*n == killed).then_some(*s))
        .collect();
    c.kill((killed - 1) as usize);
    let killed_at = now_ms();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after: Vec<&String> = ids
        .iter()
        .filter(|id| its_shards.contains(&shard_of(id, shards)))
        .collect();
    let (mut runs_after, mut missed, mut max_gap) = (0, 0, 0i64);
    let last_due = now_ms() - 3000;
    for id in after {
        let got = sink.of(id);
        let mut due = (killed_at / 1000 + 1) * 1000;
        while due <= last_due {
            runs_after += 1;
            match got
                .iter()
                .filter(|d| d.scheduled_at / 1000 == due)
                .map(|d| d.recv / 1000)
                .min()
            {
                Some(recv) => max_gap = max_gap.max(recv - due),
                None => missed += 1,
            }
            due += 1000;
        }
    }
    Ok(Spread {
        shards,
        led: per,
        sent,
        share,
        killed,
        runs_after_kill: runs_after,
        max_gap_after_kill_ms: max_gap,
        missed_after_kill: missed,
    })
}
