//! CPU quotas for the benchmarks' nodes: one cgroup per process, holding it to a fraction of a
//! core over each 100 ms period — `cpu.cfs_quota_us` under cgroup v1 (the `cpu` controller
//! mounted at `/sys/fs/cgroup/cpu`, as on the development machines) or `cpu.max` under v2.
//! Needs root. The group is removed when dropped (once its processes are gone).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The scheduler period the quota is a share of.
const PERIOD_US: u64 = 100_000;

/// Where a CPU quota is written, by cgroup version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    /// cgroup v1: `cpu.cfs_period_us` + `cpu.cfs_quota_us` in the `cpu` controller's tree.
    V1,
    /// cgroup v2: `cpu.max` ("quota period") in the unified tree.
    V2,
}

/// The quota of `cores` (a fraction of one core) over `PERIOD_US`, in µs; at least 1 ms (the
/// kernel refuses less).
pub fn quota_us(cores: f64) -> u64 {
    ((cores * PERIOD_US as f64).round() as u64).max(1_000)
}

/// One cgroup with a CPU quota.
pub struct CpuQuota {
    dir: PathBuf,
}

impl CpuQuota {
    /// Creates the group `name` holding its processes to `cores` of a core.
    pub fn new(name: &str, cores: f64) -> anyhow::Result<CpuQuota> {
        let (root, hierarchy) = find_root()?;
        let dir = root.join(name);
        if !dir.exists() {
            std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let quota = quota_us(cores);
        match hierarchy {
            Hierarchy::V1 => {
                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            Hierarchy::V2 => write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?,
        }
        Ok(CpuQuota { dir })
    }

    /// Moves process `pid` (and the threads it starts from now on) into the group.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    /// Time the group's processes were throttled, as the kernel counts it (`throttled_time` in
    /// ns under v1, `throttled_usec` under v2), in ms.
    pub fn throttled_ms(&self) -> u64 {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        field("throttled_time ")
            .map(|ns| ns / 1_000_000)
            .or_else(|| field("throttled_usec ").map(|us| us / 1_000))
            .unwrap_or(0)
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // A group can only go once its processes have exited; they are being killed alongside.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The directory new groups go under and its hierarchy: v1's `cpu` controller if mounted,
/// else the v2 tree at `/sys/fs/cgroup` if it offers `cpu` to its children.
fn find_root() -> anyhow::Result<(PathBuf, Hierarchy)> {
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Ok((v1.to_path_buf(), Hierarchy::V1));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    let controllers =
        std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        return Ok((v2.to_path_buf(), Hierarchy::V2));
    }
    bail!("no cgroup CPU controller: neither /sys/fs/cgroup/cpu (v1) nor `cpu` in /sys/fs/cgroup/cgroup.subtree_control (v2)")
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("write {value} to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::quota_us;

    #[test]
    fn quota_is_a_share_of_the_period_and_never_below_the_kernels_minimum() {
        for (cores, us) in [
            (0.6, 60_000),
            (1.0, 100_000),
            (2.5, 250_000),
            (0.001, 1_000),
        ] {
            assert_eq!(quota_us(cores), us, "{cores} cores");
        }
    }
}
