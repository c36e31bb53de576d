//! The nemesis: a seeded schedule of faults, one at a time, each installed, held for a bounded
//! duration and then healed by the nemesis itself (Trogdor style). Every step is logged to
//! `nemesis.jsonl` with its outcome (installed | skipped | failed); a fault that could not be
//! installed is recorded as such, never dropped silently. Leader faults measure how long the
//! cluster took to name a new leader.

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

use crate::client::{classify_write, Api, OP_TIMEOUT};
use crate::cluster::Cluster;
use crate::history::now_us;
use crate::history::{Recorder, Type};
use crate::sink::{Sink, SinkFault};

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    KillLeader,
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
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::KillLeader,
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
    ];
    /// Faults a run must have installed to count (CHAOS.md, coverage).
    pub const REQUIRED: [Kind; 3] = [Kind::KillLeader, Kind::PauseLeader, Kind::PartitionLeader];

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
}

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
                });
            }
            ("stop", _) => {
                if let Some(w) = open.take() {
                    out.push(Window {
                        end: e.t,
                        new_leader_after_us: e.new_leader_after_us,
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
}

pub struct Nemesis {
    cfg: Config,
    cluster: Arc<Cluster>,
    api: Api,
    sink: Sink,
    out: Mutex<BufWriter<File>>,
    events: Mutex<Vec<Event>>,
    rec: Recorder,
    bursts: std::sync::atomic::AtomicU64,
}

impl Nemesis {
    pub fn new(
        cfg: Config,
        cluster: Arc<Cluster>,
        api: Api,
        sink: Sink,
        rec: Recorder,
        path: &Path,
    ) -> anyhow::Result<Nemesis> {
        Ok(Nemesis {
            cfg,
            cluster,
            api,
            sink,
            out: Mutex::new(BufWriter::new(File::create(path)?)),
            events: Mutex::default(),
            rec,
            bursts: Default::default(),
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
            .collect();
        // Bounded: at most one fault per second of the run, whatever happens.
        for _ in 0..10_000 {
            let hold =
                Duration::from_millis(rng.random_range(self.cfg.hold_ms.0..=self.cfg.hold_ms.1));
            let gap =
                Duration::from_millis(rng.random_range(self.cfg.gap_ms.0..=self.cfg.gap_ms.1));
            let left = end_us - now_us();
            if left < (hold.as_micros() as i64) + 1_000_000 {
                break;
            }
            let kind = match queue.pop_front() {
                Some(k) => k,
                None => match enabled.choose(&mut rng) {
                    Some(k) => *k,
                    None => break,
                },
            };
            let installed = self.one(kind, hold, &mut rng).await;
            if !installed {
                // A skipped fault (no leader, say) is retried once a second later.
                if Kind::REQUIRED.contains(&kind) {
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
            Kind::KillFollower | Kind::PauseFollower | Kind::PartitionFollower => {
                follower.into_iter().collect()
            }
            Kind::KillTwo | Kind::Bridge => std::iter::once(l).chain(follower).collect(),
            Kind::RestartAll | Kind::PowerLoss => ids.clone(),
            Kind::Sink5xx | Kind::SinkDelay | Kind::SinkDrop => vec![],
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
            Kind::KillLeader | Kind::KillFollower | Kind::KillTwo | Kind::RestartAll => {
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
        });
        true
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

    /// Removes every fault: network cuts, pauses, dead nodes (restarted), sink faults.
    pub fn heal_everything(&self) -> anyhow::Result<()> {
        self.sink.set_fault(SinkFault::None);
        let net = self.cluster.net.heal();
        let procs = self.cluster.heal();
        net.and(procs)
    }
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
        }
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
}
