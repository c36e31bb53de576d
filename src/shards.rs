//! Shards (SPEC §8): the jobs are spread over `S` Raft groups, fixed when the cluster is made.
//! Each shard is a `Replica` of its own (its own log, state, snapshots and leader) over the
//! same members; only a shard's leader dispatches its runs. Pure placement rules here; the
//! node starts the groups (`node.rs`) and the API routes to them (`api/front.rs`).

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Shards of a cluster made without `--shards`.
pub const SHARDS_DEFAULT: u32 = 6;
pub const SHARDS_MAX: u32 = 64;

/// The file in a data dir that records its cluster's shard count (decimal, one line).
const COUNT_FILE: &str = "shard-count";

/// The shard of job `id` among `count`: FNV-1a (64-bit) of the id's UTF-8 bytes, modulo
/// `count`. Stable across releases and platforms: it decides where a job's data lives.
pub fn shard_of(id: &str, count: u32) -> u32 {
    let mut h = fnv::FnvHasher::default();
    h.write(id.as_bytes());
    (h.finish() % u64::from(count.max(1))) as u32
}

/// Where shard `k`'s data lives under the node's data dir: shard 0 in the data dir itself (as
/// a node with one group always kept it), shard `k` in `shards/{k}`.
pub fn data_dir_of(base: &Path, k: u32) -> PathBuf {
    match k {
        0 => base.to_path_buf(),
        k => base.join("shards").join(k.to_string()),
    }
}

/// The shard count of the node whose data dir is `dir`: the one it recorded; else 1 for a data
/// dir that holds a cluster already (made by a release before shards); else, for a new data
/// dir, `wanted`, recorded (and synced) before any shard opens.
pub fn shard_count(dir: &Path, wanted: u32) -> anyhow::Result<u32> {
    let file = dir.join(COUNT_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let count: u32 = text
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=SHARDS_MAX).contains(n))
                .with_context(|| format!("{} does not hold a shard count", file.display()))?;
            if count != wanted {
                tracing::info!(
                    count,
                    wanted,
                    "this data dir's cluster has its own shard count; --shards counts only when a cluster is made"
                );
            }
            Ok(count)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join("db").exists() {
                return Ok(1);
            }
            record(dir, &file, wanted)?;
            Ok(wanted)
        }
        Err(e) => bail!("read {}: {e}", file.display()),
    }
}

/// Records `count` as the shard count of the data dir `dir` (a restored one), durably.
pub fn record_count(dir: &Path, count: u32) -> anyhow::Result<()> {
    record(dir, &dir.join(COUNT_FILE), count)
}

/// Writes `count` into `file` durably: a synced temporary file renamed over it, the directory
/// synced.
fn record(dir: &Path, file: &Path, count: u32) -> anyhow::Result<()> {
    use std::io::Write;
    {
        // Owner-only, as every data dir (SPEC §7).
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = dir.join(format!("{COUNT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("write {}", tmp.display()))?;
    writeln!(f, "{count}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_shard_is_fnv1a_of_its_id_and_spreads_evenly() {
        // FNV-1a 64 of "" is its offset basis, of "a" a published test vector.
        assert_eq!(
            shard_of("", 1_000_000_007),
            (0xcbf2_9ce4_8422_2325u64 % 1_000_000_007) as u32
        );
        assert_eq!(
            shard_of("a", 1_000_000_007),
            (0xaf63_dc4c_8601_ec8cu64 % 1_000_000_007) as u32
        );
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_of("anything", 0), 0, "no shard count divides by zero");
        let mut per = [0usize; 6];
        for k in 0..60_000 {
            per[shard_of(&format!("job-{k}"), 6) as usize] += 1;
        }
        assert!(per.iter().all(|n| (9_000..11_000).contains(n)), "{per:?}");
    }

    #[test]
    fn the_shard_count_is_fixed_when_a_data_dir_is_new_and_one_for_a_cluster_made_before() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        assert_eq!(shard_count(&new, 6).unwrap(), 6);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&new).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "a data dir is owner-only");
        assert_eq!(shard_count(&new, 3).unwrap(), 6, "recorded at creation");
        let old = dir.path().join("old");
        std::fs::create_dir_all(old.join("db")).unwrap();
        assert_eq!(
            shard_count(&old, 6).unwrap(),
            1,
            "a cluster made before shards"
        );
        std::fs::write(new.join(COUNT_FILE), "65\n").unwrap();
        assert!(shard_count(&new, 6).is_err());
        assert_eq!(data_dir_of(&new, 0), new);
        assert_eq!(data_dir_of(&new, 2), new.join("shards/2"));
    }
}
