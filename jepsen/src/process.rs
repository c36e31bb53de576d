//! What every launcher of `hookd` nodes does with one node process, whatever its network: the
//! `hookd serve` command line, the log file, SIGTERM and SIGKILL, waiting for the exit.
//! `local.rs` (loopback, inherited listeners) and `cluster.rs` (network namespaces, chaos
//! faults) build on it.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The flags of `hookd serve` every launcher passes.
pub struct Serve<'a> {
    pub id: u64,
    /// `--listen`, the API address.
    pub listen: SocketAddr,
    /// `--peer-listen`.
    pub peer_listen: SocketAddr,
    pub data_dir: &'a Path,
    /// `--initial-cluster`, or `None` for `--join` (a node added through the API).
    pub initial_cluster: Option<&'a str>,
}

impl Serve<'_> {
    /// Appends `serve` and the flags to `cmd` (the hookd binary, or a wrapper that execs it).
    pub fn args<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.arg("serve")
            .args(["--node-id", &self.id.to_string()])
            .args(["--listen", &self.listen.to_string()])
            .args(["--peer-listen", &self.peer_listen.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir);
        match self.initial_cluster {
            Some(initial) => cmd.args(["--initial-cluster", initial]),
            None => cmd.arg("--join"),
        }
    }
}

/// Stdin from `/dev/null`, stdout and stderr appended to `log` (kept across restarts).
pub fn log_to(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    Ok(())
}

/// SIGKILL and reap.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM (a graceful stop).
pub fn sigterm(child: &Child) -> anyhow::Result<()> {
    signal(child, Signal::SIGTERM)
}

/// Sends `sig` to `child` (only ever a process the caller spawned).
pub fn signal(child: &Child, sig: Signal) -> anyhow::Result<()> {
    kill(Pid::from_raw(child.id() as i32), sig)?;
    Ok(())
}

/// Polls `child` until it exits or `deadline` passes: its status, or `None` if it still runs.
pub fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
