//! The node processes of one run: start (inside the node's namespace with `ip netns exec`, which
//! execs, so the child's pid is hookd's own), SIGKILL, SIGSTOP/SIGCONT, graceful stop, and
//! noticing exits nobody asked for. Only pids this harness spawned are ever signalled.
//!
//! Each node's data dir is, when FUSE is available, a `LazyFs` mount over `data/nodeN.disk`, so
//! the power-loss fault can drop every write the node did not fsync (see `lazyfs.rs`).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The peer secret every node of a harness cluster shares.
const PEER_SECRET: &str = "hookd-jepsen-peer-secret";

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::history::now_us;
use crate::lazyfs::{LazyFs, Loss};
use crate::net::Net;

/// An exit that no fault asked for.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UnexpectedExit {
    pub node: u64,
    pub t: i64,
    pub status: String,
}

struct Proc {
    id: u64,
    child: Option<Child>,
    paused: bool,
    starts: u32,
}

/// The three (or N) hookd processes.
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
    /// The data dirs' power-loss file systems (empty without FUSE); unmounted after the kill
    /// in `drop`, as fields drop after it.
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
        let procs = net
            .nodes
            .iter()
            .map(|n| Proc {
                id: n.id,
                child: None,
                paused: false,
                starts: 0,
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
            disks: Vec::new(),
            storage: String::new(),
        };
        for id in c.ids() {
            std::fs::create_dir_all(c.data_dir(id)).context("create data dir")?;
        }
        c.storage = if !LazyFs::available() {
            "plain directories (no FUSE here: the power-loss fault is skipped)".into()
        } else {
            match c.mount_disks() {
                Ok(()) => {
                    "LazyFs (FUSE) over data/nodeN.disk: power loss drops unsynced writes".into()
                }
                Err(e) => {
                    c.disks.clear();
                    format!("plain directories (LazyFs mount failed: {e:#}; power loss skipped)")
                }
            }
        };
        Ok(c)
    }

    fn mount_disks(&mut self) -> anyhow::Result<()> {
        for id in self.ids() {
            let backing = self.dir.join("data").join(format!("node{id}.disk"));
            std::fs::create_dir_all(&backing).context("create backing dir")?;
            let fs = LazyFs::mount(&backing, &self.data_dir(id))
                .with_context(|| format!("mount LazyFs for node {id}"))?;
            self.disks.push((id, fs));
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
        let (_, fs) = self
            .disks
            .iter()
            .find(|(n, _)| *n == id)
            .context("no LazyFs for this node")?;
        fs.lose_unsynced()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.net.nodes.iter().map(|n| n.id).collect()
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.log"))
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join("data").join(format!("node{id}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        // A poisoned lock only means a panic elsewhere; the process table is still usable.
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts node `id` unless it runs.
    pub fn start(&self, id: u64) -> anyhow::Result<()> {
        self.reap();
        let node = self.net.node(id).context("no such node")?.clone();
        let mut procs = self.lock();
        let p = procs
            .iter_mut()
            .find(|p| p.id == id)
            .context("no such node")?;
        if p.child.is_some() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .context("open node log")?;
        let mut cmd = match &node.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.hookd);
                c
            }
            None => Command::new(&self.hookd),
        };
        cmd.arg("serve")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &node.api.to_string()])
            .args(["--peer-listen", &node.peer_listen.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--initial-cluster", &self.net.initial_cluster()])
            .args(["--log", &self.log_filter])
            .args(&self.extra_args)
            // Peers talk across network namespaces, so hookd requires their traffic to be
            // authenticated (SPEC §1); through the environment, not visible in `ps`.
            .env("HOOKD_PEER_SECRET", PEER_SECRET)
            // The harness's clients use no token; the namespaces are its own test lab.
            .env("HOOKD_INSECURE_API", "true")
            .env_remove("LISTEN_FDS")
            .env_remove("HOOKD_PLANT")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(plant) = &self.plant {
            cmd.env("HOOKD_PLANT", plant);
        }
        if node.netns.is_none() {
            // Proxy mode: the node's API address is an --advertise-api of its own.
            cmd.args(["--advertise-api", &node.api.to_string()]);
        }
        let child = cmd.spawn().context("spawn hookd")?;
        if let Some(proxies) = &self.net.proxies {
            proxies.set_pid(id, child.id());
        }
        p.child = Some(child);
        p.paused = false;
        p.starts += 1;
        Ok(())
    }

    fn signal(&self, id: u64, sig: Signal) -> anyhow::Result<()> {
        let procs = self.lock();
        let p = procs.iter().find(|p| p.id == id).context("no such node")?;
        let child = p.child.as_ref().context("node not running")?;
        kill(Pid::from_raw(child.id() as i32), sig)?;
        Ok(())
    }

    /// SIGKILL (after SIGCONT if paused, so the kill is immediate) and reap.
    pub fn kill(&self, id: u64) -> anyhow::Result<()> {
        let mut procs = self.lock();
        let p = procs
            .iter_mut()
            .find(|p| p.id == id)
            .context("no such node")?;
        let mut child = p.child.take().context("node not running")?;
        let _ = child.kill();
        let _ = child.wait();
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
            .filter(|p| p.child.is_some() && !p.paused)
            .map(|p| p.id)
            .collect()
    }

    pub fn starts(&self) -> u32 {
        self.lock().iter().map(|p| p.starts).sum()
    }

    /// Records exits nobody asked for; the node is then considered down (the nemesis's heal
    /// step restarts it, and the restart is counted).
    pub fn reap(&self) {
        let mut procs = self.lock();
        for p in procs.iter_mut() {
            let exited = match p.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(format!("wait failed: {e}")),
                _ => None,
            };
            if let Some(status) = exited {
                p.child = None;
                if let Ok(mut exits) = self.exits.lock() {
                    exits.push(UnexpectedExit {
                        node: p.id,
                        t: now_us(),
                        status,
                    });
                }
            }
        }
    }

    pub fn unexpected_exits(&self) -> Vec<UnexpectedExit> {
        self.reap();
        self.exits.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// SIGCONT everything paused, start everything down.
    pub fn heal(&self) -> anyhow::Result<()> {
        for id in self.ids() {
            if self.is_paused(id) {
                self.resume(id)?;
            }
        }
        for id in self.ids() {
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
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + within;
        for p in procs.iter_mut() {
            let Some(mut child) = p.child.take() else {
                continue;
            };
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            bad.push((p.id, format!("exit {status} after SIGTERM")));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        bad.push((p.id, format!("no exit within {within:?} of SIGTERM")));
                        break;
                    }
                }
            }
        }
        bad
    }

    fn heal_pauses(&self) -> anyhow::Result<()> {
        for id in self.ids() {
            if self.is_paused(id) {
                self.resume(id)?;
            }
        }
        Ok(())
    }

    /// Kills whatever still runs (the drop path and the error path).
    pub fn kill_all(&self) {
        for id in self.ids() {
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
