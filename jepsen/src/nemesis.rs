//! The nemesis: a seeded schedule of faults, one at a time, each installed, held for a bounded
//! duration and then healed by the nemesis itself (Trogdor style). Every step is logged to
//! `nemesis.jsonl` with its outcome (installed | skipped | failed); a fault that could not be
//! installed is recorded as such, never dropped silently. Leader faults measure how long the
//! cluster took to name a new leader.
//!
//! Two faults are workload faults rather than node faults: `black-hole` (a batch of interval jobs
//! aimed at a target that accepts and never answers) and `overload` (a batch of interval jobs at
//! the sink, more due runs than the cluster can deliver). Their window runs from the first create
//! to the last acknowledged delete; they run in the same one-at-a-time schedule, so no node fault
//! overlaps them (`overload` also waits for a settled leader first, so a leader change in its
//! window can only come from the load).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::batch;
use crate::blackhole::BlackHole;
use crate::client::{classify_write, Api, OP_TIMEOUT};
use crate::cluster::Cluster;
use crate::history::{now_us, rfc3339_us};
use crate::history::{Recorder, Type};
use crate::membership;
use crate::sink::{Sink, SinkFault};

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    KillLeader,
    /// The node that leads the most shards (with one shard, the leader), SIGKILLed.
    KillBusiest,
    KillFollower,
    /// Quorum loss: the leader and one follower.
    KillTwo,
    PauseLeader,
    PauseFollower,
    PartitionLeader,
    PartitionFollower,
    /// The leader and one follower cut from each other; the third node sees both.
    Bridge,
    RestartAll,
    /// Every node SIGKILLed right after an acknowledged write, then every write a node did not
    /// fsync is dropped from its disk (LazyFs), then all restart: a power loss.
    PowerLoss,
    #[serde(rename = "sink-5xx")]
    Sink5xx,
    SinkDelay,
    SinkDrop,
    /// A batch of interval jobs aimed at the black-hole target, deleted at the end of the window.
    BlackHole,
    /// A batch of interval jobs at the sink, more due runs than the cluster can deliver,
    /// deleted at the end of the window.
    Overload,
    /// Membership changes (`membership.rs`): a random member replaced by a new node id (started
    /// with `--join` in the spare slot, added, the old one removed: it must exit 0 by itself),
    /// then a random follower removed and re-added with the same id and an empty data dir.
    Membership,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::KillLeader,
        Kind::KillBusiest,
        Kind::KillFollower,
        Kind::KillTwo,
        Kind::PauseLeader,
        Kind::PauseFollower,
        Kind::PartitionLeader,
        Kind::PartitionFollower,
        Kind::Bridge,
        Kind::RestartAll,
        Kind::PowerLoss,
        Kind::Sink5xx,
        Kind::SinkDelay,
        Kind::SinkDrop,
        Kind::BlackHole,
        Kind::Overload,
        Kind::Membership,
    ];
    /// Faults a run must have installed to count (CHAOS.md, coverage).
    pub const REQUIRED: [Kind; 4] = [
        Kind::KillLeader,
        Kind::PauseLeader,
        Kind::PartitionLeader,
        Kind::KillBusiest,
    ];
    /// The workload faults.
    pub const WORKLOAD: [Kind; 2] = [Kind::BlackHole, Kind::Overload];

    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Faults that take the leader away (the clock of "time to the next delivery" starts).
    pub fn hits_leader(self) -> bool {
        matches!(
            self,
            Kind::KillLeader
                | Kind::KillBusiest
                | Kind::KillTwo
                | Kind::PauseLeader
                | Kind::PartitionLeader
                | Kind::RestartAll
                | Kind::PowerLoss
        )
    }

    /// Faults that take every node down at once.
    pub fn stops_all(self) -> bool {
        matches!(self, Kind::RestartAll | Kind::PowerLoss)
    }

    /// Faults aimed at the leader alone, timed to land while it holds claimed, unsent runs.
    pub fn strikes_leader(self) -> bool {
        matches!(
            self,
            Kind::KillLeader | Kind::PauseLeader | Kind::PartitionLeader | Kind::Bridge
        )
    }

    /// Faults that leave no quorum until they are healed.
    pub fn takes_quorum(self) -> bool {
        self == Kind::KillTwo || self.stops_all()
    }

    /// Faults whose spurious duplicates are expected (a leader change or a lost response).
    pub fn is_sink_fault(self) -> bool {
        matches!(self, Kind::Sink5xx | Kind::SinkDelay | Kind::SinkDrop)
    }

    /// Faults made of load rather than of broken nodes, links or sink answers. They excuse
    /// nothing in the other checkers (`check::Input::fault_at` ignores them): a black hole must
    /// not delay the sink at all, and an overload is judged by rules of its own.
    pub fn is_workload(self) -> bool {
        matches!(self, Kind::BlackHole | Kind::Overload)
    }

    /// Faults whose window is as long as what they do takes, not a drawn hold: the nemesis
    /// reserves `Nemesis::need` for them, logs a queued one that no longer fits as skipped (so
    /// coverage sees it), and retries a skipped one.
    pub fn spans_itself(self) -> bool {
        self.is_workload() || self == Kind::Membership
    }
}

/// What a workload fault did, logged with its `stop` event (and carried by its window).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// The target its jobs call (`host:port`).
    pub target: String,
    /// Every job of the batch has an id starting with this.
    pub prefix: String,
    /// Jobs asked for, acknowledged created, acknowledged deleted.
    pub jobs: usize,
    pub created: usize,
    pub deleted: usize,
    pub period_ms: i64,
    pub timeout_ms: i64,
    /// When every create had its answer: full load from here...
    pub loaded_at: Option<i64>,
    /// ...until the deletes began.
    pub unloading_at: Option<i64>,
    /// Answers to the batch's requests: "create 201", "create 429", "delete 204"… → count.
    pub statuses: BTreeMap<String, u64>,
    /// `(leader, term)` all nodes named before the load and after it (overload only).
    pub before: Option<(u64, u64)>,
    pub after: Option<(u64, u64)>,
    /// Every `(leader, term)` a node named in between, polled every 250 ms (overload only).
    #[serde(default)]
    pub seen: Vec<(u64, u64)>,
    /// Polls of a node's `/v1/cluster` that got no answer or no leader (overload only).
    #[serde(default)]
    pub unanswered_polls: u64,
    /// The overload's ramp: (jobs, median lateness in ms of the batch's runs that arrived in
    /// the second before) after each step.
    #[serde(default)]
    pub ramp: Vec<(usize, Option<i64>)>,
}

/// How many overload jobs the ramp adds to the `k0` it has: `ov_first` to begin with, then a
/// quarter more (at least `ov_step`), never past `ov_jobs`. Geometric, so the ramp crosses
/// whatever this machine delivers within `RAMP_MAX_S` and overshoots it by at most ~25 %: a
/// linear step of 500 every 1.5 s stopped at 4,500 jobs on a machine that delivered ~4,530
/// runs/s, and every overload window of that soak was no overload.
pub fn ramp_step(k0: usize, lc: &LoadConfig) -> usize {
    let step = if k0 == 0 {
        lc.ov_first
    } else {
        (k0 / 4).max(lc.ov_step)
    };
    step.clamp(1, lc.ov_jobs.saturating_sub(k0).max(1))
}

/// How long the deletes of `jobs` batch jobs may take under the full load: deletes wait behind
/// the leader's claim and outcome entries and got through ~200/s in an overload. Jobs left
/// when it ends outlive the window (the report says so).
fn delete_deadline_s(jobs: usize) -> u64 {
    (jobs as u64 / DELETES_PER_S).clamp(DELETE_DEADLINE_S, DELETE_DEADLINE_MAX_S)
}

/// Sizes of the workload faults.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Prefix of the batch jobs' ids (unique per run).
    pub tag: String,
    /// Black hole: this many jobs every 1 s with this timeout, full load held this long.
    pub bh_jobs: usize,
    pub bh_timeout_s: u64,
    pub bh_hold: Duration,
    /// Overload: `ov_first` jobs every 1 s at the sink, then `ov_step` more at a time until a
    /// backlog shows (at most `ov_jobs`); the full load is then held `ov_hold`.
    pub ov_first: usize,
    pub ov_step: usize,
    pub ov_jobs: usize,
    pub ov_hold: Duration,
    /// Concurrent clients creating or deleting a batch.
    pub clients: usize,
}

impl LoadConfig {
    /// Time a workload fault may take from its first create to its last delete, at most.
    pub fn span(&self, kind: Kind) -> Duration {
        match kind {
            Kind::BlackHole => {
                self.bh_hold
                    + Duration::from_secs(BATCH_DEADLINE_S + delete_deadline_s(self.bh_jobs))
            }
            Kind::Overload => {
                self.ov_hold
                    + Duration::from_secs(
                        RAMP_MAX_S
                            + 3
                            + delete_deadline_s(self.ov_jobs)
                            + LEADER_SETTLED_S
                            + AFTER_LOAD_S,
                    )
            }
            _ => Duration::ZERO,
        }
    }
}

/// A batch of creates gets this long to finish (it is normally far faster)...
const BATCH_DEADLINE_S: u64 = 8;
/// ...and a batch of deletes this long (under the full load of an overload).
const DELETE_DEADLINE_S: u64 = 20;
/// ...or longer for a large batch (`delete_deadline_s`), up to a minute.
const DELETES_PER_S: u64 = 150;
const DELETE_DEADLINE_MAX_S: u64 = 60;
/// The overload's ramp adds no step after this long (s)...
const RAMP_MAX_S: u64 = 20;
/// ...and a step at most this often (ms)...
const RAMP_STEP_MS: i64 = 1_500;
/// ...until the median lateness of the batch's runs in the last second reaches this (µs): far
/// above the few ms of a cluster that keeps up, and reached within a second or two of going
/// ~10-20 % past what it delivers.
const BACKLOG_SEEN: i64 = 250_000;
/// `overload` starts only after every node named the same leader and term for this long.
const LEADER_SETTLED_S: u64 = 2;
/// `overload` reads the leader this long after its last delete.
const AFTER_LOAD_S: u64 = 1;

/// Most of the workload's runs fall due on whole seconds, and hookd claims runs up to 300 ms
/// ahead. A leader fault that lands `lead_ms` (< 300) before a whole second therefore catches
/// the leader holding claimed runs it has not sent yet: the moment a missing lease gate (a
/// deposed leader sends them) or a new leader ignoring open claims (nobody sends them) shows.
async fn strike_while_claims_are_held(rng: &mut StdRng, lead_ms: std::ops::RangeInclusive<i64>) {
    let lead_us = rng.random_range(lead_ms) * 1000;
    let now = now_us();
    let mut at = (now / 1_000_000 + 1) * 1_000_000 - lead_us;
    if at < now {
        at += 1_000_000;
    }
    tokio::time::sleep(Duration::from_micros((at - now) as u64)).await;
}

/// One line of `nemesis.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub fault: Kind,
    /// "start" or "stop".
    pub phase: String,
    /// installed | skipped | failed | healed
    pub outcome: String,
    pub targets: Vec<u64>,
    pub leader: Option<u64>,
    pub t: i64,
    #[serde(default)]
    pub detail: String,
    /// For leader faults: µs from install until the others named a new leader.
    #[serde(default)]
    pub new_leader_after_us: Option<i64>,
    /// For workload faults, on the `stop` event: what the load did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
}

/// A fault as the checkers see it: installed from `start` to `end`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    pub fault: Kind,
    pub targets: Vec<u64>,
    pub leader: Option<u64>,
    pub start: i64,
    pub end: i64,
    pub new_leader_after_us: Option<i64>,
    /// For workload faults: what the load did (from the `stop` event).
    #[serde(default)]
    pub load: Option<Load>,
}

/// Pairs start/stop events into windows of installed faults (an unstopped one ends at `end`).
pub fn windows(events: &[Event], end: i64) -> Vec<Window> {
    let mut out: Vec<Window> = Vec::new();
    let mut open: Option<Window> = None;
    for e in events {
        match (e.phase.as_str(), e.outcome.as_str()) {
            ("start", "installed") => {
                if let Some(w) = open.take() {
                    out.push(Window { end: e.t, ..w });
                }
                open = Some(Window {
                    fault: e.fault,
                    targets: e.targets.clone(),
                    leader: e.leader,
                    start: e.t,
                    end,
                    new_leader_after_us: None,
                    load: None,
                });
            }
            ("stop", _) => {
                if let Some(w) = open.take() {
                    out.push(Window {
                        end: e.t,
                        new_leader_after_us: e.new_leader_after_us,
                        load: e.load.clone(),
                        ..w
                    });
                }
            }
            _ => {}
        }
    }
    out.extend(open);
    out
}

/// Nemesis settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub enabled: Vec<Kind>,
    /// Faults to run first, in this order (shuffled by the seed), before random draws.
    pub first: Vec<Kind>,
    pub hold_ms: (u64, u64),
    pub gap_ms: (u64, u64),
    /// Whether random draws (after `first`) may pick the workload faults.
    pub draw_workload: bool,
    pub load: LoadConfig,
}

pub struct Nemesis {
    cfg: Config,
    cluster: Arc<Cluster>,
    api: Api,
    sink: Sink,
    blackhole: Option<BlackHole>,
    out: Mutex<BufWriter<File>>,
    events: Mutex<Vec<Event>>,
    rec: Recorder,
    bursts: std::sync::atomic::AtomicU64,
    /// Workload faults so far (their jobs' ids) and `batch::run` calls (their process ids).
    workloads: std::sync::atomic::AtomicU64,
    batches: std::sync::atomic::AtomicU64,
}

impl Nemesis {
    pub fn new(
        cfg: Config,
        cluster: Arc<Cluster>,
        api: Api,
        sink: Sink,
        blackhole: Option<BlackHole>,
        rec: Recorder,
        path: &Path,
    ) -> anyhow::Result<Nemesis> {
        Ok(Nemesis {
            cfg,
            cluster,
            api,
            sink,
            blackhole,
            out: Mutex::new(BufWriter::new(File::create(path)?)),
            events: Mutex::default(),
            rec,
            bursts: Default::default(),
            workloads: Default::default(),
            batches: Default::default(),
        })
    }

    fn log(&self, e: Event) {
        if let Ok(mut out) = self.out.lock() {
            if let Ok(line) = serde_json::to_string(&e) {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
        if let Ok(mut ev) = self.events.lock() {
            ev.push(e);
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Runs faults until `end_us`; every fault is healed before this returns.
    pub async fn run(&self, end_us: i64) {
        let mut rng = StdRng::seed_from_u64(self.cfg.seed ^ 0x6e656d65);
        let mut first = self.cfg.first.clone();
        // The required leader faults keep their lead, in a seeded order.
        let req = first
            .iter()
            .filter(|k| Kind::REQUIRED.contains(k))
            .count()
            .min(first.len());
        first[..req].shuffle(&mut rng);
        let mut queue: std::collections::VecDeque<Kind> = first.into();
        // Without LazyFs a power loss cannot be emulated: the first one is logged as skipped,
        // none is drawn later.
        let enabled: Vec<Kind> = (self.cfg.enabled.iter().copied())
            .filter(|k| *k != Kind::PowerLoss || self.cluster.has_disks())
            .filter(|k| self.cfg.draw_workload || !k.is_workload())
            .collect();
        // Bounded: at most one fault per second of the run, whatever happens.
        for _ in 0..10_000 {
            let hold =
                Duration::from_millis(rng.random_range(self.cfg.hold_ms.0..=self.cfg.hold_ms.1));
            let gap =
                Duration::from_millis(rng.random_range(self.cfg.gap_ms.0..=self.cfg.gap_ms.1));
            let left = end_us - now_us();
            let (kind, queued) = match queue.front() {
                Some(k) => (*k, true),
                None => match enabled.choose(&mut rng) {
                    Some(k) => (*k, false),
                    None => break,
                },
            };
            let need = match kind {
                Kind::Membership => crate::membership::NEED,
                k if k.is_workload() => self.cfg.load.span(kind),
                _ => hold,
            };
            if left < (need.as_micros() as i64) + 1_000_000 {
                if queued && kind.spans_itself() && left >= (hold.as_micros() as i64) + 1_000_000 {
                    // Logged, so coverage sees a required workload fault that never ran.
                    queue.pop_front();
                    self.skipped(kind, "not enough time left in the run");
                    continue;
                }
                break;
            }
            if queued {
                queue.pop_front();
            }
            let installed = if kind == Kind::Membership {
                self.membership(&mut rng).await
            } else if kind.is_workload() {
                self.workload(kind).await
            } else {
                self.one(kind, hold, &mut rng).await
            };
            if !installed {
                // A skipped fault (no leader, say) is retried once a second later.
                if Kind::REQUIRED.contains(&kind) || kind.spans_itself() {
                    queue.push_front(kind);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let left = end_us - now_us();
            tokio::time::sleep(gap.min(Duration::from_micros(left.max(0) as u64))).await;
        }
    }

    /// The current leader among live nodes, waiting briefly for one.
    async fn leader(&self) -> Option<u64> {
        let live = self.cluster.live();
        self.api
            .await_leader(&live, Duration::from_secs(3))
            .await
            .map(|(l, _)| l)
    }

    /// The member that leads the most shards, as the first of `ids` that answers sees them.
    async fn busiest(&self, ids: &[u64]) -> Option<u64> {
        for &id in ids {
            let Some(v) = self.api.cluster(id).await else {
                continue;
            };
            let mut led: BTreeMap<u64, usize> = BTreeMap::new();
            for s in v["shards"].as_array().into_iter().flatten() {
                if let Some(l) = s["leader_id"].as_u64() {
                    *led.entry(l).or_default() += 1;
                }
            }
            return led.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l);
        }
        None
    }

    /// Logs `kind` as skipped; returns false (not installed).
    fn skipped(&self, kind: Kind, why: &str) -> bool {
        self.log(Event {
            fault: kind,
            phase: "start".into(),
            outcome: "skipped".into(),
            targets: vec![],
            leader: None,
            t: now_us(),
            detail: why.to_owned(),
            new_leader_after_us: None,
            load: None,
        });
        false
    }

    /// Installs `kind`, holds it, heals it. Returns whether it was installed.
    async fn one(&self, kind: Kind, hold: Duration, rng: &mut StdRng) -> bool {
        if kind == Kind::PowerLoss && !self.cluster.has_disks() {
            return self.skipped(kind, &self.cluster.storage);
        }
        let ids = self.cluster.ids();
        let leader = self.leader().await;
        let needs_leader = !kind.is_sink_fault();
        let Some(l) = leader.or(if needs_leader { None } else { Some(0) }) else {
            return self.skipped(kind, "no leader to aim at");
        };
        let followers: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
        let follower = followers.choose(rng).copied();
        let targets: Vec<u64> = match kind {
            Kind::KillLeader | Kind::PauseLeader | Kind::PartitionLeader => vec![l],
            Kind::KillBusiest => vec![self.busiest(&ids).await.unwrap_or(l)],
            Kind::KillFollower | Kind::PauseFollower | Kind::PartitionFollower => {
                follower.into_iter().collect()
            }
            Kind::KillTwo | Kind::Bridge => std::iter::once(l).chain(follower).collect(),
            Kind::RestartAll | Kind::PowerLoss => ids.clone(),
            Kind::Sink5xx | Kind::SinkDelay | Kind::SinkDrop => vec![],
            Kind::BlackHole | Kind::Overload | Kind::Membership => {
                return self.skipped(kind, "a fault of its own kind")
            }
        };
        if kind.strikes_leader() {
            // An isolated leader's lease runs out ~100 ms after its last ack (the checker
            // allows 250 ms), so runs due later than that must be among the claimed ones.
            let lead_ms = if kind == Kind::PauseLeader || kind == Kind::KillLeader {
                60..=240
            } else {
                260..=290
            };
            strike_while_claims_are_held(rng, lead_ms).await;
        }
        // Kill-all right after a write is acknowledged: whatever hookd acknowledged without
        // flushing is then lost on every node at once (the ack-before-flush bug class).
        let burst = if kind.stops_all() {
            self.write_burst(l, rng).await
        } else {
            String::new()
        };
        let res: anyhow::Result<String> = (|| match kind {
            Kind::KillLeader
            | Kind::KillBusiest
            | Kind::KillFollower
            | Kind::KillTwo
            | Kind::RestartAll => {
                for t in &targets {
                    self.cluster.kill(*t)?;
                }
                Ok(format!("SIGKILL {targets:?}{burst}"))
            }
            Kind::PowerLoss => {
                for t in &targets {
                    self.cluster.kill(*t)?;
                }
                let (mut files, mut bytes) = (0, 0);
                for t in &targets {
                    let lost = self.cluster.lose_unsynced(*t)?;
                    files += lost.files;
                    bytes += lost.bytes;
                }
                Ok(format!(
                    "SIGKILL {targets:?}{burst}, then every unsynced write dropped \
                     ({files} files, {bytes} bytes reverted)"
                ))
            }
            Kind::PauseLeader | Kind::PauseFollower => {
                for t in &targets {
                    self.cluster.pause(*t)?;
                }
                Ok(format!("SIGSTOP {targets:?}"))
            }
            Kind::PartitionLeader | Kind::PartitionFollower => {
                let iso = *targets
                    .first()
                    .ok_or_else(|| anyhow::anyhow!("no target"))?;
                for other in ids.iter().filter(|i| **i != iso) {
                    self.cluster.net.cut(iso, *other)?;
                }
                Ok(format!(
                    "isolated {iso} from its peers (sink still reachable)"
                ))
            }
            Kind::Bridge => {
                let (a, b) = match targets.as_slice() {
                    [a, b] => (*a, *b),
                    _ => anyhow::bail!("bridge needs two nodes"),
                };
                self.cluster.net.cut(a, b)?;
                Ok(format!("cut {a}-{b}; the third node bridges"))
            }
            Kind::Sink5xx => {
                self.sink.set_fault(SinkFault::Error5xx { fraction: 0.3 });
                Ok("503 for 30% of attempts 1-2".into())
            }
            Kind::SinkDelay => {
                self.sink.set_fault(SinkFault::Delay {
                    fraction: 0.3,
                    ms: 2500,
                });
                Ok("2.5 s delay (> 2 s job timeout) for 30% of attempts 1-2".into())
            }
            Kind::SinkDrop => {
                self.sink
                    .set_fault(SinkFault::DropAfterRead { fraction: 0.3 });
                Ok("drop the connection after reading, 30% of attempts 1-2".into())
            }
            Kind::BlackHole | Kind::Overload | Kind::Membership => {
                anyhow::bail!("a fault of its own kind")
            }
        })();
        let start = now_us();
        let leader_field = leader;
        match res {
            Ok(detail) => self.log(Event {
                fault: kind,
                phase: "start".into(),
                outcome: "installed".into(),
                targets: targets.clone(),
                leader: leader_field,
                t: start,
                detail,
                new_leader_after_us: None,
                load: None,
            }),
            Err(e) => {
                self.log(Event {
                    fault: kind,
                    phase: "start".into(),
                    outcome: "failed".into(),
                    targets: targets.clone(),
                    leader: leader_field,
                    t: start,
                    detail: format!("{e:#}"),
                    new_leader_after_us: None,
                    load: None,
                });
                let _ = self.heal_everything();
                return false;
            }
        }
        // Hold, watching for a new leader among the others when the leader was hit.
        let deadline = tokio::time::Instant::now() + hold;
        let mut new_leader_after_us = None;
        if kind.hits_leader() && !kind.takes_quorum() {
            let others: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
            while tokio::time::Instant::now() < deadline {
                if let Some((nl, _)) = self.api.leader(&others).await {
                    if nl != l {
                        new_leader_after_us = Some(now_us() - start);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep_until(deadline).await;
        // RestartAll and KillTwo hold the nodes down for a shorter, fixed slice of the hold.
        let detail = match self.heal_everything() {
            Ok(()) => "healed".to_owned(),
            Err(e) => format!("heal error: {e:#}"),
        };
        self.log(Event {
            fault: kind,
            phase: "stop".into(),
            outcome: "healed".into(),
            targets,
            leader: leader_field,
            t: now_us(),
            detail,
            new_leader_after_us,
            load: None,
        });
        true
    }

    /// A workload fault: creates a batch of interval jobs, holds the full load, deletes them.
    /// The overload's batch grows in steps until a backlog shows (see `ramp_overload`). Returns
    /// whether it was installed.
    async fn workload(&self, kind: Kind) -> bool {
        let lc = self.cfg.load.clone();
        let ids = self.cluster.ids();
        let (target, timeout_s, hold) = match kind {
            Kind::BlackHole => match &self.blackhole {
                Some(bh) => (bh.addr.to_string(), lc.bh_timeout_s, lc.bh_hold),
                None => return self.skipped(kind, "no black-hole listener"),
            },
            _ => (self.sink.addr.to_string(), 2, lc.ov_hold),
        };
        // Overload: only from a settled leader, so that a leader change in the window can only
        // come from the load.
        let before = if kind == Kind::Overload {
            match self.settled_leader(&ids).await {
                Some(l) => Some(l),
                None => return self.skipped(kind, "no settled leader to load"),
            }
        } else {
            None
        };
        let n = self
            .workloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let short = if kind == Kind::BlackHole { "bh" } else { "ov" };
        let prefix = format!("{}-{short}{n}-", lc.tag);
        let leader = self.api.leader(&self.cluster.live()).await.map(|(l, _)| l);
        let start = now_us();
        self.log(Event {
            fault: kind,
            phase: "start".into(),
            outcome: "installed".into(),
            targets: vec![],
            leader,
            t: start,
            detail: if kind == Kind::BlackHole {
                format!(
                    "{} jobs every 1 s (timeout {timeout_s} s) at {target} (accepts, never \
                     answers), held {} s",
                    lc.bh_jobs,
                    hold.as_secs()
                )
            } else {
                format!(
                    "{} jobs every 1 s at the sink {target}, a quarter more (at least {}) every \
                     {} ms (up to {}) until a backlog shows, then held {} s",
                    lc.ov_first,
                    lc.ov_step,
                    RAMP_STEP_MS,
                    lc.ov_jobs,
                    hold.as_secs()
                )
            },
            new_leader_after_us: None,
            load: None,
        });
        // Overload: watch the leader the whole time.
        let stop_watch = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watch = (kind == Kind::Overload).then(|| {
            let (api, ids, stop) = (self.api.clone(), ids.clone(), stop_watch.clone());
            tokio::spawn(async move { watch_leader(api, ids, stop).await })
        });
        let mut load = Load {
            target,
            prefix: prefix.clone(),
            period_ms: 1_000,
            timeout_ms: timeout_s as i64 * 1_000,
            before,
            ..Load::default()
        };
        let mut created: Vec<String> = Vec::new();
        if kind == Kind::BlackHole {
            // All due together, every second from a whole second ~2 s ahead: they all take a
            // slot at once.
            let first = (now_us() / 1_000_000 + 3) * 1_000_000;
            let url = |id: &str| {
                self.blackhole
                    .as_ref()
                    .map(|b| b.url(id))
                    .unwrap_or_default()
            };
            let bodies = (0..lc.bh_jobs)
                .map(|k| {
                    let id = format!("{prefix}{k}");
                    let body = batch_job(
                        &id,
                        &url(&id),
                        first,
                        timeout_s,
                        json!({"max_attempts": 3, "initial_backoff": "1s", "max_backoff": "2s"}),
                    );
                    (id, body)
                })
                .collect();
            self.create_batch(bodies, lc.clients, &mut load, &mut created)
                .await;
            load.jobs = lc.bh_jobs;
            let now = now_us();
            if now < first {
                tokio::time::sleep(Duration::from_micros((first - now) as u64)).await;
            }
        } else {
            self.ramp_overload(&lc, &prefix, &mut load, &mut created)
                .await;
        }
        // Full load from here for `hold`.
        load.loaded_at = Some(now_us());
        load.created = created.len();
        tokio::time::sleep(hold).await;
        load.unloading_at = Some(now_us());
        let deadline = now_us() + delete_deadline_s(created.len()) as i64 * 1_000_000;
        let dels: Vec<(String, serde_json::Value)> = created
            .iter()
            .map(|id| (id.clone(), serde_json::Value::Null))
            .collect();
        // Deletes meet the full load (each waits behind the leader's claim and outcome entries:
        // ~0.3-0.5 s each on this machine), so they get many more clients, whose writes the
        // leader batches into few entries.
        let b = self
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deleted = batch::run(
            &self.api,
            &self.rec,
            b,
            "delete",
            dels,
            8 * lc.clients,
            deadline,
        )
        .await;
        load.deleted = deleted.done.len();
        for (k, v) in deleted.statuses {
            *load.statuses.entry(k).or_default() += v;
        }
        let stopped = now_us();
        if let Some(w) = watch {
            tokio::time::sleep(Duration::from_secs(AFTER_LOAD_S)).await;
            load.after = self.api.leader(&ids).await;
            stop_watch.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Ok((seen, unanswered)) = w.await {
                load.seen = seen;
                load.unanswered_polls = unanswered;
            }
        }
        let detail = format!(
            "created {} of {}, deleted {}{}",
            load.created,
            load.jobs,
            load.deleted,
            if load.deleted < load.created {
                " (some jobs outlive the window)"
            } else {
                ""
            }
        );
        self.log(Event {
            fault: kind,
            phase: "stop".into(),
            outcome: "healed".into(),
            targets: vec![],
            leader,
            t: stopped,
            detail,
            new_leader_after_us: None,
            load: Some(load),
        });
        true
    }

    /// Creates `bodies` (one `batch::run`), adding what it got to `load` and `created`.
    async fn create_batch(
        &self,
        bodies: Vec<(String, serde_json::Value)>,
        clients: usize,
        load: &mut Load,
        created: &mut Vec<String>,
    ) {
        let b = self
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deadline = now_us() + BATCH_DEADLINE_S as i64 * 1_000_000;
        let out = batch::run(&self.api, &self.rec, b, "create", bodies, clients, deadline).await;
        created.extend(out.done);
        for (k, v) in out.statuses {
            *load.statuses.entry(k).or_default() += v;
        }
    }

    /// Overload jobs at the sink, `ov_first` and then `ramp_step` more every `RAMP_STEP_MS`, each
    /// step's runs spread evenly over the second (an offered rate, not one burst a second),
    /// until the batch's runs arriving in the last second are `BACKLOG_SEEN` late at the median
    /// (more runs fall due than the cluster delivers: a backlog grows), `ov_jobs` exist or
    /// `RAMP_MAX_S` passed (the checker then says whether it was an overload at all). So
    /// the load is just past what this machine delivers, whatever the machine: a fixed size is
    /// either no overload on a fast machine or, far past capacity, a different experiment.
    async fn ramp_overload(
        &self,
        lc: &LoadConfig,
        prefix: &str,
        load: &mut Load,
        created: &mut Vec<String>,
    ) {
        let mut k0 = 0usize;
        let until = now_us() + RAMP_MAX_S as i64 * 1_000_000;
        // Bounded by `ov_jobs` (every step adds at least one job) and by `RAMP_MAX_S`.
        while k0 < lc.ov_jobs && now_us() < until {
            let step = ramp_step(k0, lc);
            // From the next whole second at least 0.5 s ahead (the creates take ~0.2 s).
            let first = ((now_us() + 500_000) / 1_000_000 + 1) * 1_000_000;
            let bodies = (k0..k0 + step)
                .map(|k| {
                    let id = format!("{prefix}{k}");
                    let offset_us = ((k - k0) as i64 * 1_000 / step as i64) * 1_000;
                    let body = batch_job(
                        &id,
                        &self.sink.url(&id),
                        first + offset_us,
                        2,
                        json!({"max_attempts": 5, "initial_backoff": "500ms", "max_backoff": "2s"}),
                    );
                    (id, body)
                })
                .collect();
            self.create_batch(bodies, lc.clients, load, created).await;
            k0 += step;
            load.jobs = k0;
            // Look once this step's runs have been due for a while.
            let look = (first + 1_200_000).max(now_us() + RAMP_STEP_MS * 1_000);
            tokio::time::sleep(Duration::from_micros((look - now_us()).max(0) as u64)).await;
            let mut late = self.sink.lateness_since(prefix, now_us() - 1_000_000);
            late.sort_unstable();
            let p50 = late.get(late.len() / 2).copied();
            load.ramp.push((created.len(), p50.map(|x| x / 1000)));
            if p50.is_some_and(|x| x >= BACKLOG_SEEN) {
                break;
            }
        }
    }

    /// The leader and term every node names, once they have named the same ones for
    /// `LEADER_SETTLED_S` (at most ~10 s of waiting).
    async fn settled_leader(&self, ids: &[u64]) -> Option<(u64, u64)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut since: Option<((u64, u64), tokio::time::Instant)> = None;
        while tokio::time::Instant::now() < deadline {
            let mut views = BTreeSet::new();
            for &id in ids {
                let v = self.api.cluster(id).await;
                let lt = v.and_then(|v| Some((v["leader_id"].as_u64()?, v["term"].as_u64()?)));
                views.insert(lt);
            }
            let agreed = match views.iter().collect::<Vec<_>>().as_slice() {
                [Some(lt)] => Some(*lt),
                _ => None,
            };
            since = match (agreed, since) {
                (Some(lt), Some((s, at))) if s == lt => {
                    if at.elapsed() >= Duration::from_secs(LEADER_SETTLED_S) {
                        return Some(lt);
                    }
                    Some((s, at))
                }
                (Some(lt), _) => Some((lt, tokio::time::Instant::now())),
                (None, _) => None,
            };
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Sends a few creates to the leader at once and returns as soon as the first is
    /// acknowledged (or after 3 s). The creates are part of the history like any other.
    async fn write_burst(&self, leader: u64, rng: &mut StdRng) -> String {
        let n = self
            .bursts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(8);
        for k in 0..4u64 {
            let id = format!("nem{}-{n}-{k}", self.cfg.seed % 10_000);
            let body = crate::workload::job_body(rng, &id, &self.sink.url(&id), now_us());
            let (api, rec, tx) = (self.api.clone(), self.rec.clone(), tx.clone());
            tokio::spawn(async move {
                let p = rec.invoke(
                    50_000 + n * 10 + k,
                    "create",
                    Some(&id),
                    leader,
                    body.clone(),
                );
                let reply = api
                    .call(
                        leader,
                        reqwest::Method::POST,
                        "/v1/jobs",
                        Some(&body),
                        OP_TIMEOUT,
                    )
                    .await;
                let typ = classify_write(&reply);
                rec.complete(p, typ, json!({"status": reply.status()}));
                let _ = tx.send(typ == Type::Ok).await;
            });
        }
        drop(tx);
        let acked = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(ok) = rx.recv().await {
                if ok {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if acked {
            " right after a create was acknowledged".into()
        } else {
            " (the write burst got no acknowledgement)".into()
        }
    }

    /// The membership fault (`membership.rs`): a random member replaced by a new node id, then
    /// a random follower removed and added back. One window; its `stop` event says what
    /// happened (old and new ids, timings, the members after), with outcome `failed` when a step
    /// did not go through in time (after undoing what it could). Returns whether it started.
    async fn membership(&self, rng: &mut StdRng) -> bool {
        let kind = Kind::Membership;
        let Some(leader) = self.leader().await else {
            return self.skipped(kind, "no leader");
        };
        let members = self.cluster.ids();
        let pick = rng.random_range(0..members.len().max(1));
        let Some(old) = membership::replace_target(&members, pick) else {
            return self.skipped(kind, "no members");
        };
        let Some(slot) = self.cluster.net.free_slot() else {
            return self.skipped(kind, "no free slot for a new node");
        };
        let new = membership::next_id(&self.cluster.all_ids());
        let pick = rng.random_range(0..64usize);
        let start = now_us();
        let deadline = start + membership::WITHIN.as_micros() as i64;
        self.log(Event {
            fault: kind,
            phase: "start".into(),
            outcome: "installed".into(),
            targets: vec![old],
            leader: Some(leader),
            t: start,
            detail: format!(
                "replace {old} ({}, slot {}) by new node {new} (--join, empty data dir, slot \
                 {slot}); then remove a follower and re-add it",
                if old == leader {
                    "the leader"
                } else {
                    "a follower"
                },
                self.cluster.net.slot_of(old).unwrap_or(0),
            ),
            new_leader_after_us: None,
            load: None,
        });
        let mut targets = vec![old];
        let mut done = Vec::new();
        let res = match self.replace(old, new, slot, deadline).await {
            Ok(d) => {
                done.push(d);
                // A follower of whoever leads now (a removed leader hands over first).
                let leader = self
                    .api
                    .await_leader(&self.cluster.live(), Duration::from_secs(10))
                    .await
                    .map(|(l, _)| l);
                match membership::readd_target(&self.cluster.ids(), leader, pick) {
                    Some(z) => {
                        targets.push(z);
                        self.readd(z, deadline).await.map(|d| done.push(d))
                    }
                    None => Err(format!(
                        "no leader among the members {:?} within 10 s of the replacement",
                        self.cluster.ids()
                    )),
                }
            }
            Err(e) => Err(e),
        };
        let heal = self.heal_everything().err();
        let (outcome, mut detail) = match &res {
            Ok(()) => ("healed", done.join("; ")),
            Err(e) => {
                done.push(format!("FAILED: {e}"));
                ("failed", done.join("; "))
            }
        };
        if let Some(e) = heal {
            detail.push_str(&format!("; heal error: {e:#}"));
        }
        detail.push_str(&format!("; members now {:?}", self.cluster.ids()));
        self.log(Event {
            fault: kind,
            phase: "stop".into(),
            outcome: outcome.into(),
            targets,
            leader: Some(leader),
            t: now_us(),
            detail,
            new_leader_after_us: None,
            load: None,
        });
        true
    }

    /// Replaces member `old` by new node `new` in the free `slot`: start it with `--join`, add
    /// it, give it `old`'s place among the clients, remove `old` (which must exit 0 by itself).
    async fn replace(
        &self,
        old: u64,
        new: u64,
        slot: u64,
        deadline: i64,
    ) -> Result<String, String> {
        self.cluster
            .place_joiner(new, slot)
            .map_err(|e| format!("place node {new} in slot {slot}: {e:#}"))?;
        let node = self
            .cluster
            .net
            .node(new)
            .ok_or_else(|| format!("node {new} in no slot"))?;
        self.api.register(new, node.api);
        if let Err(e) = self.cluster.start(new) {
            self.cluster.retire(new, None);
            return Err(format!("start node {new}: {e:#}"));
        }
        self.await_up(new).await;
        let took = match self.add_member(new, deadline).await {
            Ok(took) => took,
            Err(e) => {
                // Undo: whatever it became is removed again; the process stops either way.
                let undo = self.undo_add(new).await;
                return Err(format!("{e}; undone: {undo}"));
            }
        };
        self.api.replace(old, new);
        let removed = self.remove_member(old, deadline).await?;
        Ok(format!(
            "{old} replaced by {new} (slot {slot}): {new} added in {took:.1} s; {removed}"
        ))
    }

    /// Removes follower `id`, waits for it to exit by itself, and adds it back with the same
    /// id, an empty data dir and `--join`, in the same slot.
    async fn readd(&self, id: u64, deadline: i64) -> Result<String, String> {
        let slot = self
            .cluster
            .net
            .slot_of(id)
            .ok_or_else(|| format!("node {id} in no slot"))?;
        let removed = self.remove_member(id, deadline).await?;
        self.cluster
            .place_joiner(id, slot)
            .map_err(|e| format!("{removed}; place node {id} again: {e:#}"))?;
        self.cluster
            .start(id)
            .map_err(|e| format!("{removed}; start node {id} again: {e:#}"))?;
        self.await_up(id).await;
        let took = self
            .add_member(id, deadline)
            .await
            .map_err(|e| format!("{removed}; {e}"))?;
        Ok(format!(
            "{removed}; {id} re-added with an empty data dir (slot {slot}) in {took:.1} s"
        ))
    }

    /// Polls node `id`'s `GET /v1/cluster` until it answers (at most `membership::UP_WITHIN`).
    async fn await_up(&self, id: u64) {
        let until = tokio::time::Instant::now() + membership::UP_WITHIN;
        while tokio::time::Instant::now() < until {
            if self.api.cluster(id).await.is_some() || !self.cluster.is_running(id) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The members and voters as the leader (or another live node not in `avoid`) sees them.
    async fn member_view(&self, avoid: &[u64]) -> Option<(BTreeSet<u64>, BTreeSet<u64>)> {
        let live = self.cluster.live();
        let leader = self.api.leader(&live).await.map(|(l, _)| l);
        let node = membership::via(&live, leader, avoid)?;
        membership::members_of(&self.api.cluster(node).await?)
    }

    /// Adds node `id` (running with `--join`) as a voter through any other member, asking again
    /// until `deadline` (a repeated add of a learner resumes it). Ok: seconds it took.
    async fn add_member(&self, id: u64, deadline: i64) -> Result<f64, String> {
        let node = self
            .cluster
            .net
            .node(id)
            .ok_or_else(|| format!("node {id} in no slot"))?;
        let body = json!({
            "id": id,
            "peer_addr": node.peer_advertised.to_string(),
            "api_addr": node.api.to_string(),
            "voter": true,
        });
        let t0 = now_us();
        let secs = || (now_us() - t0) as f64 / 1e6;
        let mut last = String::from("none");
        // Bounded by the deadline, and by a count far above what it allows.
        for _ in 0..1_000 {
            if !self.cluster.is_running(id) {
                let status = self
                    .cluster
                    .last_unexpected_exit(id)
                    .map_or("?".into(), |e| e.status);
                return Err(format!(
                    "node {id} exited ({status}) while being added, {:.1} s in (see node{id}.log)",
                    secs()
                ));
            }
            let left = deadline - now_us();
            if left <= 0 {
                break;
            }
            let post = reqwest::Method::POST;
            let asked = self
                .ask_about(id, post, "/v1/cluster/members", Some(&body), left, 80)
                .await;
            let Some((via, reply)) = asked else {
                last = "no member to ask".into();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            match membership::answer(&reply, 201) {
                membership::Answer::Done => return Ok(secs()),
                membership::Answer::NotMember | membership::Answer::Retry(_)
                    if self
                        .member_view(&[id])
                        .await
                        .is_some_and(|(_, voters)| voters.contains(&id)) =>
                {
                    return Ok(secs());
                }
                membership::Answer::NotMember => last = format!("404 (via {via})"),
                membership::Answer::Retry(why) => last = format!("{why} (via {via})"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(format!(
            "node {id} not a voter {:.1} s after its add began; last answer: {last}",
            secs()
        ))
    }

    /// One membership request about node `id`, sent through another live member (the leader
    /// when one is known), waiting what is `left` of the deadline (µs) but at most `cap_s`: the
    /// member asked and its reply, or None when no member can be asked.
    async fn ask_about(
        &self,
        id: u64,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        left: i64,
        cap_s: i64,
    ) -> Option<(u64, crate::client::Reply)> {
        let live = self.cluster.live();
        let leader = self.api.leader(&live).await.map(|(l, _)| l);
        let via = membership::via(&live, leader, &[id])?;
        let wait = Duration::from_micros(left.clamp(1, cap_s * 1_000_000) as u64);
        Some((via, self.api.call(via, method, path, body, wait).await))
    }

    /// Takes a node that could not be added away again: removed if it became a member (it then
    /// stops by itself), stopped and out of the table either way.
    async fn undo_add(&self, id: u64) -> String {
        let member = self
            .member_view(&[id])
            .await
            .map(|(all, _)| all.contains(&id));
        if member != Some(false) {
            let deadline = now_us() + 30_000_000;
            match self.remove_member(id, deadline).await {
                Ok(d) => return d,
                Err(e) => {
                    self.cluster.retire(id, None);
                    return format!("{e}; stopped");
                }
            }
        }
        self.cluster.retire(id, None);
        format!("{id} was no member; stopped")
    }

    /// Removes member `id` through another member (asking again until `deadline`), waits up to
    /// `membership::EXIT_WITHIN` for it to exit by itself (exit 0; anything else is a crash,
    /// and a node still running is SIGKILLed and recorded), then takes it out of the table and
    /// frees its slot. Err when it could not be removed (it then stays a member).
    async fn remove_member(&self, id: u64, deadline: i64) -> Result<String, String> {
        let was_running = self.cluster.is_running(id);
        self.cluster.expect_exit(id, true);
        let t0 = now_us();
        let mut removed_at = None;
        let mut last = String::from("none");
        for _ in 0..1_000 {
            let left = deadline - now_us();
            if left <= 0 {
                break;
            }
            let path = format!("/v1/cluster/members/{id}");
            let asked = self
                .ask_about(id, reqwest::Method::DELETE, &path, None, left, 30)
                .await;
            let Some((via, reply)) = asked else {
                last = "no member to ask".into();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            match membership::answer(&reply, 200) {
                membership::Answer::Done | membership::Answer::NotMember => {
                    removed_at = Some(now_us());
                    break;
                }
                membership::Answer::Retry(why) => {
                    last = format!("{why} (via {via})");
                    if self
                        .member_view(&[id])
                        .await
                        .is_some_and(|(all, _)| !all.contains(&id))
                    {
                        removed_at = Some(now_us());
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let Some(removed_at) = removed_at else {
            self.cluster.expect_exit(id, false);
            return Err(format!(
                "node {id} still a member {:.1} s after its removal began; last answer: {last}",
                (now_us() - t0) as f64 / 1e6
            ));
        };
        let head = format!("{id} removed in {:.1} s", (removed_at - t0) as f64 / 1e6);
        if !was_running {
            self.cluster.retire(id, None);
            return Ok(format!("{head} (it was not running)"));
        }
        let until = removed_at + membership::EXIT_WITHIN.as_micros() as i64;
        let departure = loop {
            if let Some(d) = self.cluster.departure(id, t0) {
                break Some(d);
            }
            if now_us() >= until {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let judged = membership::judge_exit(departure.as_ref(), removed_at);
        self.cluster.retire(id, judged.as_ref().err().cloned());
        Ok(match judged {
            Ok(exit) => format!("{head}, {exit}"),
            Err(e) => format!("{head}, but it {e}"),
        })
    }

    /// Removes every fault: network cuts, pauses, dead nodes (restarted), sink faults.
    pub fn heal_everything(&self) -> anyhow::Result<()> {
        self.sink.set_fault(SinkFault::None);
        let net = self.cluster.net.heal();
        let procs = self.cluster.heal();
        net.and(procs)
    }
}

/// The body of a batch job: every 1 s from `start_us`, at `url`.
fn batch_job(
    id: &str,
    url: &str,
    start_us: i64,
    timeout_s: u64,
    retry: serde_json::Value,
) -> serde_json::Value {
    json!({
        "id": id,
        "url": url,
        "method": "POST",
        "body": "{}",
        "schedule": {"every": "1s", "start_at": rfc3339_us(start_us)},
        "timeout": format!("{timeout_s}s"),
        "retry": retry,
    })
}

/// Polls every node's `GET /v1/cluster` every 250 ms until `stop`; returns every distinct
/// `(leader, term)` named and how many polls got no answer or named no leader.
async fn watch_leader(
    api: Api,
    ids: Vec<u64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<(u64, u64)>, u64) {
    let mut seen = BTreeSet::new();
    let mut unanswered = 0u64;
    // Bounded: the overload window is far shorter than 10,000 polls.
    for _ in 0..10_000 {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        for &id in &ids {
            match api
                .cluster(id)
                .await
                .and_then(|v| Some((v["leader_id"].as_u64()?, v["term"].as_u64()?)))
            {
                Some(lt) => {
                    seen.insert(lt);
                }
                None => unanswered += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (seen.into_iter().collect(), unanswered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(fault: Kind, phase: &str, outcome: &str, t: i64) -> Event {
        Event {
            fault,
            phase: phase.into(),
            outcome: outcome.into(),
            targets: vec![1],
            leader: Some(1),
            t,
            detail: String::new(),
            new_leader_after_us: None,
            load: None,
        }
    }

    #[test]
    fn the_overload_ramp_grows_by_a_quarter_from_its_first_step_to_its_bound() {
        let lc = crate::run::profile("soak").expect("soak").load;
        let mut k = 0;
        let mut sizes = Vec::new();
        while k < lc.ov_jobs {
            k += ramp_step(k, &lc);
            sizes.push(k);
        }
        assert_eq!(
            sizes,
            [2000, 2500, 3125, 3906, 4882, 6102, 7627, 9533, 11916, 14895, 16000]
        );
        // Past the bound a step adds one job at most (the loop stops there anyway).
        assert_eq!(ramp_step(lc.ov_jobs, &lc), 1);
        // A small first step still grows by `ov_step` at least.
        let small = LoadConfig {
            ov_first: 100,
            ..lc.clone()
        };
        assert_eq!(ramp_step(100, &small), lc.ov_step);
        // The deletes of the largest batch get more than the fixed deadline.
        assert_eq!(delete_deadline_s(40), DELETE_DEADLINE_S);
        assert_eq!(delete_deadline_s(6000), 40);
        assert_eq!(delete_deadline_s(lc.ov_jobs), DELETE_DEADLINE_MAX_S);
    }

    #[test]
    fn windows_pair_installed_starts_with_stops_and_skip_the_rest() {
        let events = vec![
            ev(Kind::KillLeader, "start", "installed", 10),
            ev(Kind::KillLeader, "stop", "healed", 20),
            ev(Kind::PauseLeader, "start", "skipped", 25),
            ev(Kind::PartitionLeader, "start", "installed", 30),
        ];
        let w = windows(&events, 100);
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].fault, w[0].start, w[0].end),
            (Kind::KillLeader, 10, 20)
        );
        assert_eq!(
            (w[1].fault, w[1].start, w[1].end),
            (Kind::PartitionLeader, 30, 100)
        );
        assert_eq!(Kind::PauseLeader.name(), "pause-leader");
    }

    #[test]
    fn a_workload_window_carries_what_its_load_did() {
        let mut stop = ev(Kind::Overload, "stop", "healed", 20);
        stop.load = Some(Load {
            prefix: "j-ov0-".into(),
            created: 7,
            ..Load::default()
        });
        let events = vec![ev(Kind::Overload, "start", "installed", 10), stop];
        let w = windows(&events, 100);
        assert_eq!((w[0].start, w[0].end), (10, 20));
        assert_eq!(w[0].load.as_ref().map(|l| l.created), Some(7));
        assert!(Kind::Overload.is_workload() && Kind::BlackHole.is_workload());
        assert!(!Kind::Overload.hits_leader() && !Kind::BlackHole.is_sink_fault());
        assert_eq!(Kind::BlackHole.name(), "black-hole");
        // A stop line round-trips through nemesis.jsonl.
        let line = serde_json::to_string(&events[1]).unwrap();
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back.load, events[1].load);
    }
}
