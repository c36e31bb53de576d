//! The node processes of one run: start (inside the node's namespace with `ip netns exec`, which
//! execs, so the child's pid is hookd's own), SIGKILL, SIGSTOP/SIGCONT, graceful stop, and
//! noticing exits nobody asked for. Only pids this harness spawned are ever signalled.
//!
//! Each slot's data dir (`data/slotN`, the data dir of whichever node occupies the slot; see
//! `net.rs`) is, when FUSE is available, a `LazyFs` mount over `data/slotN.disk`, so the
//! power-loss fault can drop every write the node did not fsync (see `lazyfs.rs`). Logs are per
//! node id (`nodeN.log`), kept for every node the run had.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The peer secret every node of a harness cluster shares.
const PEER_SECRET: &str = "hookd-jepsen-peer-secret";

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::history::now_us;
use crate::lazyfs::{LazyFs, Loss};
use crate::net::{Net, INITIAL};
use crate::process::{self, Serve};

/// An exit that no fault asked for.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UnexpectedExit {
    pub node: u64,
    pub t: i64,
    pub status: String,
}

/// The exit of a node that was removed from the cluster (it stops by itself).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Departure {
    pub node: u64,
    pub t: i64,
    pub status: String,
    /// Exit 0, as a removed node must stop.
    pub clean: bool,
}

struct Proc {
    id: u64,
    child: Option<Child>,
    paused: bool,
    starts: u32,
    /// Started with `--join` (added through the API) instead of `--initial-cluster`.
    joins: bool,
    /// In the harness's table of members: heal restarts it, faults aim at it, the final reads
    /// ask it. False once it was removed and its exit seen.
    member: bool,
    /// Being removed: it is to stop by itself, so its exit 0 is no crash.
    leaving: bool,
}

/// The hookd processes: the three members (more while a replacement joins), each in a slot
/// (`net.rs`) with the slot's addresses and disk.
pub struct Cluster {
    hookd: PathBuf,
    dir: PathBuf,
    pub net: Arc<Net>,
    plant: Option<String>,
    log_filter: String,
    /// Extra `hookd serve` flags of every node (the dispatch caps of the profile).
    extra_args: Vec<String>,
    procs: Mutex<Vec<Proc>>,
    exits: Mutex<Vec<UnexpectedExit>>,
    departures: Mutex<Vec<Departure>>,
    /// Removed nodes that had not stopped by themselves when the harness gave up on them.
    lingered: Mutex<Vec<(u64, String)>>,
    /// The slots' power-loss file systems (empty without FUSE); unmounted after the kill in
    /// `drop`, as fields drop after it.
    disks: Vec<(u64, LazyFs)>,
    /// How the data dirs are stored, for the report.
    pub storage: String,
}

impl Cluster {
    pub fn new(
        hookd: &Path,
        dir: &Path,
        net: Arc<Net>,
        plant: Option<String>,
        log_filter: &str,
        extra_args: Vec<String>,
    ) -> anyhow::Result<Cluster> {
        let procs = (1..=INITIAL)
            .map(|id| Proc {
                id,
                child: None,
                paused: false,
                starts: 0,
                joins: false,
                member: true,
                leaving: false,
            })
            .collect();
        let mut c = Cluster {
            hookd: hookd.to_path_buf(),
            dir: dir.to_path_buf(),
            net,
            plant,
            log_filter: log_filter.to_owned(),
            extra_args,
            procs: Mutex::new(procs),
            exits: Mutex::default(),
            departures: Mutex::default(),
            lingered: Mutex::default(),
            disks: Vec::new(),
            storage: String::new(),
        };
        for slot in c.slots() {
            std::fs::create_dir_all(c.slot_dir(slot)).context("create data dir")?;
        }
        c.storage = if !LazyFs::available() {
            "plain directories (no FUSE here: the power-loss fault is skipped)".into()
        } else {
            match c.mount_disks() {
                Ok(()) => {
                    "LazyFs (FUSE) over data/slotN.disk: power loss drops unsynced writes".into()
                }
                Err(e) => {
                    c.disks.clear();
                    format!("plain directories (LazyFs mount failed: {e:#}; power loss skipped)")
                }
            }
        };
        Ok(c)
    }

    fn slots(&self) -> Vec<u64> {
        self.net.slots.iter().map(|n| n.slot).collect()
    }

    fn mount_disks(&mut self) -> anyhow::Result<()> {
        for slot in self.slots() {
            let backing = self.dir.join("data").join(format!("slot{slot}.disk"));
            std::fs::create_dir_all(&backing).context("create backing dir")?;
            let fs = LazyFs::mount(&backing, &self.slot_dir(slot))
                .with_context(|| format!("mount LazyFs for slot {slot}"))?;
            self.disks.push((slot, fs));
        }
        Ok(())
    }

    /// True when the power-loss fault can run (every data dir is on LazyFs).
    pub fn has_disks(&self) -> bool {
        !self.disks.is_empty()
    }

    /// Power loss of node `id`'s disk: every write it did not fsync is gone. The node must be
    /// down (killed and reaped).
    pub fn lose_unsynced(&self, id: u64) -> anyhow::Result<Loss> {
        if self.lock().iter().any(|p| p.id == id && p.child.is_some()) {
            bail!("node {id} still runs; kill it before its power loss");
        }
        let slot = self.net.slot_of(id).context("node in no slot")?;
        let (_, fs) = self
            .disks
            .iter()
            .find(|(n, _)| *n == slot)
            .context("no LazyFs for this slot")?;
        fs.lose_unsynced()
    }

    /// The members, as the harness keeps them (ascending ids).
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .lock()
            .iter()
            .filter(|p| p.member)
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every node id this run has had, members or not (their logs are all kept).
    pub fn all_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.lock().iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.log"))
    }

    fn slot_dir(&self, slot: u64) -> PathBuf {
        self.dir.join("data").join(format!("slot{slot}"))
    }

    /// The data dir of the slot node `id` occupies.
    pub fn data_dir(&self, id: u64) -> Option<PathBuf> {
        self.net.slot_of(id).map(|s| self.slot_dir(s))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        // A poisoned lock only means a panic elsewhere; the process table is still usable.
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts node `id` unless it runs: `--initial-cluster` for the initial members, `--join`
    /// for a node added through the API (its restarts too: hookd ignores `--join` once its data
    /// dir holds a cluster).
    pub fn start(&self, id: u64) -> anyhow::Result<()> {
        self.reap();
        let node = self.net.node(id).context("node in no slot")?;
        let data_dir = self.slot_dir(node.slot);
        let mut procs = self.lock();
        let p = procs
            .iter_mut()
            .find(|p| p.id == id)
            .context("no such node")?;
        if p.child.is_some() {
            return Ok(());
        }
        let mut cmd = match &node.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.hookd);
                c
            }
            None => Command::new(&self.hookd),
        };
        let initial = self.net.initial_cluster();
        Serve {
            id,
            listen: node.api,
            peer_listen: node.peer_listen,
            data_dir: &data_dir,
            initial_cluster: (!p.joins).then_some(initial.as_str()),
        }
        .args(&mut cmd)
        .args(["--log", &self.log_filter])
        .args(&self.extra_args)
        // Peers talk across network namespaces, so hookd requires their traffic to be
        // authenticated (SPEC §1); through the environment, not visible in `ps`.
        .env("HOOKD_PEER_SECRET", PEER_SECRET)
        // The harness's clients use no token; the namespaces are its own test lab.
        .env("HOOKD_INSECURE_API", "true")
        .env_remove("LISTEN_FDS")
        .env_remove("HOOKD_PLANT");
        process::log_to(&mut cmd, &self.log_path(id))?;
        if let Some(plant) = &self.plant {
            cmd.env("HOOKD_PLANT", plant);
        }
        if node.netns.is_none() {
            // Proxy mode: the node's API address is an --advertise-api of its own.
            cmd.args(["--advertise-api", &node.api.to_string()]);
        }
        let child = cmd.spawn().context("spawn hookd")?;
        if let Some(proxies) = &self.net.proxies {
            proxies.set_pid(node.slot, child.id());
        }
        p.child = Some(child);
        p.paused = false;
        p.starts += 1;
        Ok(())
    }

    /// Places a new node `id` that will start with `--join` in the free `slot`, whose data dir
    /// is emptied first (a re-added id gets a fresh one too). Not started.
    pub fn place_joiner(&self, id: u64, slot: u64) -> anyhow::Result<()> {
        if self.lock().iter().any(|p| p.id == id && p.child.is_some()) {
            bail!("node {id} still runs");
        }
        self.net.occupy(slot, id)?;
        if let Err(e) = self.wipe(slot) {
            self.net.vacate(id);
            return Err(e);
        }
        let mut procs = self.lock();
        match procs.iter_mut().find(|p| p.id == id) {
            Some(p) => {
                p.joins = true;
                p.member = true;
                p.leaving = false;
                p.paused = false;
            }
            None => procs.push(Proc {
                id,
                child: None,
                paused: false,
                starts: 0,
                joins: true,
                member: true,
                leaving: false,
            }),
        }
        Ok(())
    }

    /// Empties a slot's data dir (through its LazyFs mount, where removals are durable at
    /// once). Only while no process uses it.
    fn wipe(&self, slot: u64) -> anyhow::Result<()> {
        let dir = self.slot_dir(slot);
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            let r = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            r.with_context(|| format!("wipe {}", path.display()))?;
        }
        Ok(())
    }

    /// Node `id` is being removed: its own exit is expected from now on (see `departure`).
    pub fn expect_exit(&self, id: u64, yes: bool) {
        if let Some(p) = self.lock().iter_mut().find(|p| p.id == id) {
            p.leaving = yes;
        }
    }

    /// The exit of removed node `id` seen at or after `since`, if any.
    pub fn departure(&self, id: u64, since: i64) -> Option<Departure> {
        self.reap();
        self.departures
            .lock()
            .ok()?
            .iter()
            .rev()
            .find(|d| d.node == id && d.t >= since)
            .cloned()
    }

    pub fn departures(&self) -> Vec<Departure> {
        self.departures
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Takes node `id` out of the table and frees its slot. If it still runs it is SIGKILLed,
    /// and with a `why` (a removed node that did not stop by itself) that is recorded as a
    /// failure; without one it is the harness giving up on a node it could not add.
    pub fn retire(&self, id: u64, why: Option<String>) {
        let still = {
            let mut procs = self.lock();
            let Some(p) = procs.iter_mut().find(|p| p.id == id) else {
                return;
            };
            p.member = false;
            p.leaving = false;
            p.paused = false;
            p.child.take()
        };
        if let Some(mut child) = still {
            process::kill_and_reap(&mut child);
            if let (Some(why), Ok(mut l)) = (why, self.lingered.lock()) {
                l.push((id, why));
            }
        }
        self.net.vacate(id);
    }

    /// Removed nodes that did not stop by themselves (SIGKILLed by `retire`).
    pub fn lingered(&self) -> Vec<(u64, String)> {
        self.lingered.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn signal(&self, id: u64, sig: Signal) -> anyhow::Result<()> {
        let procs = self.lock();
        let p = procs.iter().find(|p| p.id == id).context("no such node")?;
        let child = p.child.as_ref().context("node not running")?;
        process::signal(child, sig)
    }

    /// SIGKILL (after SIGCONT if paused, so the kill is immediate) and reap.
    pub fn kill(&self, id: u64) -> anyhow::Result<()> {
        let mut procs = self.lock();
        let p = procs
            .iter_mut()
            .find(|p| p.id == id)
            .context("no such node")?;
        let mut child = p.child.take().context("node not running")?;
        process::kill_and_reap(&mut child);
        p.paused = false;
        Ok(())
    }

    pub fn pause(&self, id: u64) -> anyhow::Result<()> {
        self.signal(id, Signal::SIGSTOP)?;
        if let Some(p) = self.lock().iter_mut().find(|p| p.id == id) {
            p.paused = true;
        }
        Ok(())
    }

    pub fn resume(&self, id: u64) -> anyhow::Result<()> {
        let r = self.signal(id, Signal::SIGCONT);
        if let Some(p) = self.lock().iter_mut().find(|p| p.id == id) {
            p.paused = false;
        }
        r
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.reap();
        self.lock().iter().any(|p| p.id == id && p.child.is_some())
    }

    pub fn is_paused(&self, id: u64) -> bool {
        self.lock().iter().any(|p| p.id == id && p.paused)
    }

    /// Nodes that are up and not paused: the ones worth asking.
    pub fn live(&self) -> Vec<u64> {
        self.reap();
        self.lock()
            .iter()
            .filter(|p| p.member && p.child.is_some() && !p.paused)
            .map(|p| p.id)
            .collect()
    }

    pub fn starts(&self) -> u32 {
        self.lock().iter().map(|p| p.starts).sum()
    }

    /// Records exits nobody asked for; the node is then considered down (the nemesis's heal
    /// step restarts it, and the restart is counted). A node being removed is to exit by
    /// itself: its exit is a departure, and a crash as well unless it exited 0.
    pub fn reap(&self) {
        let mut procs = self.lock();
        for p in procs.iter_mut() {
            let exited = match p.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some((status.to_string(), status.success())),
                Some(Err(e)) => Some((format!("wait failed: {e}"), false)),
                _ => None,
            };
            let Some((status, success)) = exited else {
                continue;
            };
            p.child = None;
            let t = now_us();
            if p.leaving {
                if let Ok(mut d) = self.departures.lock() {
                    d.push(Departure {
                        node: p.id,
                        t,
                        status: status.clone(),
                        clean: success,
                    });
                }
                if success {
                    continue;
                }
            }
            if let Ok(mut exits) = self.exits.lock() {
                exits.push(UnexpectedExit {
                    node: p.id,
                    t,
                    status: if p.leaving {
                        format!("{status} (after its removal: a removed node must exit 0)")
                    } else {
                        status
                    },
                });
            }
        }
    }

    /// The last exit of node `id` nobody asked for, if any.
    pub fn last_unexpected_exit(&self, id: u64) -> Option<UnexpectedExit> {
        self.unexpected_exits()
            .into_iter()
            .rev()
            .find(|e| e.node == id)
    }

    pub fn unexpected_exits(&self) -> Vec<UnexpectedExit> {
        self.reap();
        self.exits.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// SIGCONT everything paused, start every member that is down.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.heal_pauses()?;
        // Not a node being removed: it must stop, and a removed node refuses to start.
        let down: Vec<u64> = self
            .lock()
            .iter()
            .filter(|p| p.member && !p.leaving)
            .map(|p| p.id)
            .collect();
        for id in down {
            self.start(id)?;
        }
        Ok(())
    }

    /// Graceful stop of every node (SIGTERM, SIGKILL after `within`). Returns the nodes that
    /// did not exit cleanly in time.
    pub fn stop_all(&self, within: Duration) -> Vec<(u64, String)> {
        let _ = self.heal_pauses();
        self.reap();
        let mut bad = Vec::new();
        let mut procs = self.lock();
        for p in procs.iter() {
            if let Some(c) = &p.child {
                let _ = process::sigterm(c);
            }
        }
        let deadline = Instant::now() + within;
        for p in procs.iter_mut() {
            let Some(mut child) = p.child.take() else {
                continue;
            };
            match process::wait_until(&mut child, deadline) {
                Ok(Some(status)) => {
                    if !status.success() {
                        bad.push((p.id, format!("exit {status} after SIGTERM")));
                    }
                }
                _ => {
                    process::kill_and_reap(&mut child);
                    bad.push((p.id, format!("no exit within {within:?} of SIGTERM")));
                }
            }
        }
        bad
    }

    fn heal_pauses(&self) -> anyhow::Result<()> {
        for id in self.all_ids() {
            if self.is_paused(id) {
                self.resume(id)?;
            }
        }
        Ok(())
    }

    /// Kills whatever still runs (the drop path and the error path).
    pub fn kill_all(&self) {
        for id in self.all_ids() {
            if self.is_paused(id) {
                let _ = self.resume(id);
            }
            let _ = self.kill(id);
        }
    }

    pub fn ensure_binary(&self) -> anyhow::Result<()> {
        if !self.hookd.is_file() {
            bail!("hookd binary not found at {}", self.hookd.display());
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
