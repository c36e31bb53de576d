//! Backups (SPEC §6): a consistent snapshot file of the whole state taken after a linearizable
//! barrier (`Replica::backup`), what such a file says about itself (`inspect`), and the data
//! dir of a member of a *new* cluster prepared from it, offline (`restore`). The file is the
//! snapshot file the nodes send each other (`store/snapfile.rs`): versioned, checksummed, naming
//! the hookd version, the last applied log id and the membership.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Membership};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::machine::Machine;
use crate::replica::{Replica, ReplicaError};
use crate::store::snapfile::{Frame, Header, Reader, SnapFileError, Writer};
use crate::store::{OpenError, Store};
use crate::typ::{LogId, Node, NodeId, SnapshotMeta, StoredMembership};

/// How long a backup waits for a snapshot that covers its barrier.
pub const BACKUP_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("no snapshot covering the read barrier was built within {0:?}")]
    Timeout(Duration),
    #[error("cannot open the snapshot: {0}")]
    Io(String),
}

impl<M: Machine> Replica<M> {
    /// After a linearizable barrier, the newest snapshot file, built now if the last one is
    /// older than the barrier: everything acknowledged before the call is in it. The open file
    /// stays readable even if a newer snapshot replaces it meanwhile.
    pub async fn backup(&self) -> Result<(SnapshotMeta, tokio::fs::File), BackupError> {
        self.read_barrier().await?;
        let applied = self.metrics().last_applied;
        let deadline = Instant::now() + BACKUP_WITHIN;
        // A build already running may have captured less than the barrier: trigger again.
        while self.metrics().snapshot < applied {
            if Instant::now() >= deadline {
                return Err(BackupError::Timeout(BACKUP_WITHIN));
            }
            self.raft()
                .trigger()
                .snapshot()
                .await
                .map_err(|e| ReplicaError::Fatal(e.to_string()))?;
            let _ = self
                .raft()
                .wait(Some(Duration::from_secs(2)))
                .metrics(|m| m.snapshot >= applied, "a snapshot covering the barrier")
                .await;
        }
        let snapshot = self
            .store()
            .state_machine()
            .get_current_snapshot()
            .await
            .map_err(|e| BackupError::Io(e.to_string()))?
            .ok_or_else(|| BackupError::Io("no snapshot".into()))?;
        Ok((snapshot.meta, *snapshot.snapshot))
    }
}

/// What a snapshot file holds, checked to its end.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub header: Header,
    pub format: u32,
    /// Rows of the table asked for (`inspect`'s `count_table`).
    pub rows: u64,
    pub bytes: u64,
    /// SHA-256 of the file's contents (as stored at its end).
    pub sha256: String,
}

/// Reads the whole file at `path`, checking its format and checksum, and counts the rows the
/// state it holds has in table `count_table`.
pub fn inspect(path: &Path, count_table: usize) -> Result<Inspection, SnapFileError> {
    let file = std::fs::File::open(path)?;
    let bytes = file.metadata()?.len();
    let (header, mut reader) = Reader::open(BufReader::with_capacity(1 << 16, &file))?;
    // Later frames override earlier ones for the same key: the last one counts.
    let mut live: HashMap<Vec<u8>, bool> = HashMap::new();
    while let Some(frame) = reader.next_frame()? {
        match frame {
            Frame::Put { table, key, .. } if table as usize == count_table => {
                live.insert(key, true);
            }
            Frame::Del { table, key } if table as usize == count_table => {
                live.insert(key, false);
            }
            _ => {}
        }
    }
    let rows = live.values().filter(|v| **v).count() as u64;
    Ok(Inspection {
        header,
        format: crate::store::snapfile::FILE_FORMAT,
        rows,
        bytes,
        sha256: hex(&trailing_sum(path)?),
    })
}

/// The SHA-256 a snapshot file ends with.
fn trailing_sum(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::End(-32))?;
    let mut sum = [0u8; 32];
    f.read_exact(&mut sum)?;
    Ok(sum)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where `restore` puts a member of the new cluster.
#[derive(Debug, Clone)]
pub struct RestoreTo {
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    /// Every member of the new cluster, by id, with its peer address.
    pub members: BTreeMap<NodeId, String>,
    /// The new cluster's id; by default derived from the file and the members, so that every
    /// member restored from the same file with the same members gets the same one.
    pub cluster_id: Option<String>,
}

/// What `restore` made.
#[derive(Debug, Clone)]
pub struct Restored {
    pub cluster_id: String,
    pub source: Header,
    pub meta: SnapshotMeta,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    File(#[from] SnapFileError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{0} is not empty; restore prepares a new data dir")]
    NotEmpty(String),
    #[error(
        "the members do not name node {0}; list every member as ID=HOST:PORT, this one included"
    )]
    NotAMember(NodeId),
    #[error("restore failed: {0}")]
    Io(String),
}

/// The id a restored cluster gets unless one is given: from the file's checksum and the
/// members, the same on every member restored alike, different from the old cluster's.
pub fn derived_cluster_id(file_sha256: &str, members: &BTreeMap<NodeId, String>) -> String {
    let mut h = Sha256::new();
    h.update(b"hookd restore\0");
    h.update(file_sha256.as_bytes());
    for (id, addr) in members {
        h.update(format!("\0{id}={addr}").as_bytes());
    }
    let x = hex(&h.finalize()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// Prepares `to.data_dir` as a member of a new cluster holding the state in the snapshot file
/// `src`: the state without the old cluster's identity (`Machine::identity_row`), the new
/// cluster id, and a membership of `to.members`, installed as this node's snapshot at the same
/// log index with term 0, so the new cluster's first leader (term 1 or later) is newer than
/// anything in it. The file is read through (checksum) before anything is written to the data
/// dir.
pub async fn restore<M: Machine>(
    src: &Path,
    to: &RestoreTo,
    machine: Arc<M>,
) -> Result<Restored, RestoreError> {
    if !to.members.contains_key(&to.node_id) {
        return Err(RestoreError::NotAMember(to.node_id));
    }
    let dir = &to.data_dir;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| RestoreError::Io(e.to_string()))?
            .next()
            .is_some()
    {
        return Err(RestoreError::NotEmpty(dir.display().to_string()));
    }
    // Staged outside the data dir, so a bad file leaves nothing behind there.
    let staged = std::env::temp_dir().join(format!(
        "hookd-restore-{}-{}.snap",
        std::process::id(),
        to.node_id
    ));
    let staging = {
        let (src, staged, to) = (src.to_path_buf(), staged.clone(), to.clone());
        tokio::task::spawn_blocking(move || stage::<M>(&src, &staged, &to))
            .await
            .map_err(|e| RestoreError::Io(e.to_string()))?
    };
    let (source, meta, cluster_id) = match staging {
        Ok(staged) => staged,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
    };
    let installed = install(dir, to.node_id, machine, &staged, &meta).await;
    let _ = std::fs::remove_file(&staged);
    installed?;
    Ok(Restored {
        cluster_id,
        source,
        meta,
    })
}

/// Opens the new data dir and installs the staged snapshot file as its state.
async fn install<M: Machine>(
    dir: &Path,
    node_id: NodeId,
    machine: Arc<M>,
    staged: &Path,
    meta: &SnapshotMeta,
) -> Result<(), RestoreError> {
    let store = Store::open(dir, node_id, machine)?;
    let file = tokio::fs::File::open(staged)
        .await
        .map_err(|e| RestoreError::Io(e.to_string()))?;
    store
        .state_machine()
        .install_snapshot(meta, Box::new(file))
        .await
        .map_err(|e| RestoreError::Io(e.to_string()))?;
    store
        .flush()
        .await
        .map_err(|e| RestoreError::Io(e.to_string()))
}

/// In one pass over `src` (its checksum checked at the end): the new cluster's id and snapshot
/// meta (the backup's index with term 0, a membership of `to.members`), and a copy of its frames
/// at `staged` under that meta, leaving out the old cluster's identity rows and adding the new
/// cluster id. Returns the backup's own header, the new meta and the new cluster id.
fn stage<M: Machine>(
    src: &Path,
    staged: &Path,
    to: &RestoreTo,
) -> Result<(Header, SnapshotMeta, String), RestoreError> {
    let file = std::fs::File::open(src).map_err(SnapFileError::Io)?;
    let (source, mut reader) = Reader::open(BufReader::with_capacity(1 << 16, file))?;
    let cluster_id = match &to.cluster_id {
        Some(id) => id.clone(),
        None => derived_cluster_id(
            &hex(&trailing_sum(src).map_err(SnapFileError::Io)?),
            &to.members,
        ),
    };
    let index = source.meta.last_log_id.map_or(0, |l| l.index);
    let at: LogId = LogId::new(CommittedLeaderId::new(0, 0), index);
    let nodes: BTreeMap<NodeId, Node> = to
        .members
        .iter()
        .map(|(id, addr)| (*id, Node { addr: addr.clone() }))
        .collect();
    let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
    let meta = SnapshotMeta {
        last_log_id: Some(at),
        last_membership: StoredMembership::new(Some(at), Membership::new(vec![voters], nodes)),
        snapshot_id: format!("restored-{index}"),
    };
    let mut w = Writer::create(staged, &Header::new(meta.clone())).map_err(SnapFileError::Io)?;
    while let Some(frame) = reader.next_frame()? {
        let written = match &frame {
            Frame::Put { table, key, .. } | Frame::Del { table, key }
                if M::identity_row(*table as usize, key) =>
            {
                Ok(())
            }
            Frame::Put { table, key, value } => w.put(*table, key, value),
            Frame::Del { table, key } => w.del(*table, key),
        };
        written.map_err(SnapFileError::Io)?;
    }
    let (table, key, value) = M::cluster_id_row(&cluster_id);
    w.put(table as u8, &key, &value)
        .map_err(SnapFileError::Io)?;
    w.finish_synced().map_err(SnapFileError::Io)?;
    Ok((source, meta, cluster_id))
}
