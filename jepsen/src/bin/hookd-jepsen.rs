//! hookd-jepsen: the chaos harness (CHAOS.md). `run` starts a three-node cluster of the release
//! `hookd` binary in network namespaces, drives a workload and a nemesis, checks the history and
//! writes a run folder under the store; `check DIR` re-runs the checkers on a stored run;
//! `cleanup` removes namespaces left by a crashed run. The last line of `run` and `check` is
//! `N passed, N failed` (one per checker); the exit code is non-zero when any checker is invalid
//! (or, for the smoke profile, unknown).

// A command-line tool whose report is its output: printing to stdout is its job.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookd_jepsen::check::{Validity, Verdict};
use hookd_jepsen::nemesis::Kind;
use hookd_jepsen::run::{self, Options};

#[derive(Debug, Parser)]
#[command(about = "Chaos harness for hookd: faults, a workload, and checkers over the history")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One run of a profile.
    Run {
        /// smoke (95 s of node faults plus a black hole and a membership change), soak (30 min,
        /// every fault, the overload included), quick (25 s, for trying the harness), workload
        /// (the black hole and the overload first) or membership (membership changes first; with
        /// `--faults membership`, nothing else).
        #[arg(long, default_value = "smoke")]
        profile: String,
        #[arg(long, default_value = "target/release/hookd")]
        hookd: PathBuf,
        /// Run folders go here.
        #[arg(long, default_value = "jepsen/store")]
        store: PathBuf,
        /// Seeds every random choice (workload, nemesis, sink faults). Default: from the clock.
        #[arg(long)]
        seed: Option<u64>,
        /// Planted bug to switch on in every node (HOOKD_PLANT; needs a `--features planted`
        /// build of hookd).
        #[arg(long)]
        plant: Option<String>,
        /// `auto` (namespaces when root, else the loopback proxy) or `proxy`.
        #[arg(long, default_value = "auto")]
        net: String,
        /// Comma-separated fault kinds to draw from after the required ones (default: all).
        #[arg(long, value_delimiter = ',')]
        faults: Vec<String>,
        /// hookd's --log filter.
        #[arg(long, default_value = "info,openraft=warn")]
        log: String,
        /// The cluster's --shards: Raft groups, each with its own leader dispatching its jobs.
        #[arg(long, default_value_t = 6)]
        shards: u32,
    },
    /// Re-runs the checkers on a stored run folder.
    Check { dir: PathBuf },
    /// Removes namespaces, veths, the bridge and LazyFs mounts of a crashed run (never run it
    /// while a run is under way).
    Cleanup,
}

fn print_verdicts(verdicts: &[Verdict]) -> (usize, usize, usize) {
    let (mut passed, mut failed, mut unknown) = (0, 0, 0);
    for v in verdicts {
        let mark = match v.valid {
            Validity::Valid => {
                passed += 1;
                "valid  "
            }
            Validity::Invalid => {
                failed += 1;
                "INVALID"
            }
            Validity::Unknown => {
                unknown += 1;
                "unknown"
            }
        };
        println!("  {mark} {:<17} {}", v.name, v.summary);
    }
    (passed, failed, unknown)
}

fn parse_faults(names: &[String]) -> anyhow::Result<Vec<Kind>> {
    if names.is_empty() {
        return Ok(Kind::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            Kind::ALL
                .iter()
                .copied()
                .find(|k| k.name() == *n)
                .with_context(|| format!("unknown fault {n:?}"))
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Cleanup => {
            hookd_jepsen::net::cleanup_stale(hookd_jepsen::net::SLOTS);
            let mounts = hookd_jepsen::lazyfs::detach_stale();
            println!(
                "removed stale hookd-jepsen namespaces, veths and bridge (if any); \
                 detached {} stale LazyFs mounts",
                mounts.len()
            );
            Ok(())
        }
        Cmd::Check { dir } => {
            let verdicts = run::recheck(&dir)?;
            println!("{}", dir.display());
            let (passed, failed, unknown) = print_verdicts(&verdicts);
            println!("{passed} passed, {} failed", failed + unknown);
            if failed + unknown > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Run {
            profile,
            hookd,
            store,
            seed,
            plant,
            net,
            faults,
            log,
            shards,
        } => {
            let seed =
                seed.unwrap_or_else(|| chrono::Utc::now().timestamp_micros() as u64 % 1_000_000);
            let strict_unknown = profile != "soak";
            let opts = Options {
                hookd,
                store,
                profile: run::profile(&profile)?,
                seed,
                plant: plant.filter(|p| !p.is_empty()),
                force_proxy: match net.as_str() {
                    "auto" => false,
                    "proxy" => true,
                    other => anyhow::bail!("--net {other:?}: auto or proxy"),
                },
                log_filter: log,
                faults: parse_faults(&faults)?,
                shards,
            };
            println!(
                "hookd-jepsen: profile {profile}, seed {seed}, plant {}, shards {shards}",
                opts.plant.as_deref().unwrap_or("none")
            );
            let outcome = tokio::select! {
                r = run::run(opts) => r?,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the topology was torn down"),
            };
            println!("{}", outcome.dir.display());
            let (passed, failed, unknown) = print_verdicts(&outcome.verdicts);
            let bad = failed + if strict_unknown { unknown } else { 0 };
            println!("{passed} passed, {} failed", failed + unknown);
            if bad > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
