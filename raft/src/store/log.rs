//! The Raft log and vote on sled (`RaftLogStorage`). Every write that openraft treats as durable
//! is flushed before it is acknowledged.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{io_read, io_write, Disk};
use crate::machine::Machine;
use crate::typ::{Cfg, Entry, LogId, StorageError, StorageIOError, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Log storage handle; cheap to clone (openraft's replication tasks read through clones).
pub struct LogStore<M> {
    disk: Disk,
    meta: sled::Tree,
    log: sled::Tree,
    /// The last committed index reported by openraft, for `/v1/cluster`.
    committed: Arc<AtomicU64>,
    /// The first index after the purge point: entries before it may still be on disk until
    /// the background removal gets to them, but are never read.
    unpurged_from: Arc<AtomicU64>,
    machine: std::marker::PhantomData<fn() -> M>,
}

impl<M> Clone for LogStore<M> {
    fn clone(&self) -> Self {
        LogStore {
            disk: self.disk.clone(),
            meta: self.meta.clone(),
            log: self.log.clone(),
            committed: self.committed.clone(),
            unpurged_from: self.unpurged_from.clone(),
            machine: std::marker::PhantomData,
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// First byte of a log entry in format 2 (schema 3 on): postcard after it. Format 1 (schemas 1
/// and 2) is JSON, whose first byte is always `{`. Any other first byte is a newer format.
const ENTRY_FORMAT_2: u8 = 0x02;

/// Why a stored log entry cannot be read.
#[derive(Debug, thiserror::Error)]
enum EntryFormatError {
    #[error(
        "log entry {index} has format byte {byte:#04x}, which this hookd does not know \
         (a newer hookd wrote it: run that version)"
    )]
    Newer { index: u64, byte: u8 },
    #[error("log entry {index} is corrupt: {detail}")]
    Corrupt { index: u64, detail: String },
}

/// Encodes an entry as format 2.
fn encode_entry<M: Machine>(entry: &Entry<M>) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(entry, vec![ENTRY_FORMAT_2])
}

/// Decodes an entry stored under `index` in format 2 or 1, and checks it says that index.
fn decode_entry<M: Machine>(index: u64, bytes: &[u8]) -> Result<Entry<M>, EntryFormatError> {
    let corrupt = |detail: String| EntryFormatError::Corrupt { index, detail };
    let entry: Entry<M> = match bytes.split_first() {
        Some((&ENTRY_FORMAT_2, rest)) => {
            postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string()))?
        }
        Some((b'{', _)) => serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?,
        Some((&byte, _)) => return Err(EntryFormatError::Newer { index, byte }),
        None => return Err(corrupt("empty".into())),
    };
    if entry.log_id.index != index {
        return Err(corrupt(format!("it says index {}", entry.log_id.index)));
    }
    Ok(entry)
}

/// The index a log key stands for.
fn key_index(key: &[u8]) -> Result<u64, StorageError> {
    key.try_into().map(u64::from_be_bytes).map_err(|_| {
        StorageIOError::read_logs(&std::io::Error::other("log key is not 8 bytes")).into()
    })
}

impl<M: Machine> LogStore<M> {
    pub(super) fn open(disk: &Disk) -> Result<LogStore<M>, sled::Error> {
        let db = disk.db();
        let store = LogStore {
            disk: disk.clone(),
            meta: db.open_tree("raft_meta")?,
            log: db.open_tree("raft_log")?,
            committed: Arc::new(AtomicU64::new(0)),
            unpurged_from: Arc::new(AtomicU64::new(0)),
            machine: std::marker::PhantomData,
        };
        let purged: Option<LogId> = store
            .get_meta(LAST_PURGED)
            .map_err(|e| sled::Error::Io(std::io::Error::other(e.to_string())))?;
        if let Some(p) = purged {
            store.unpurged_from.store(p.index + 1, Ordering::Relaxed);
        }
        Ok(store)
    }

    /// The commit index as last reported to this store (0 before the first commit).
    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(io_read)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io_read),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(io_write)?;
        self.meta.insert(key, bytes).map_err(io_write)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), sled::Error> {
        self.disk.flush().await
    }

    /// Removes every entry from `from` on, the last first: sled recovers a prefix of its
    /// writes, so a crash part way leaves the log whole up to where the removal got (no
    /// `sled::Batch`, whose process-wide lock is kept off: `sm.rs`, `Change`).
    fn remove_from(&self, from: u64) -> Result<(), sled::Error> {
        for key in self.log.range(index_key(from)..).keys().rev() {
            self.log.remove(key?)?;
        }
        Ok(())
    }
}

impl<M: Machine> RaftLogReader<Cfg<M>> for LogStore<M> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<M>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let start = start.max(self.unpurged_from.load(Ordering::Relaxed));
        let mut entries = Vec::new();
        for item in self.log.range(index_key(start)..) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            entries.push(decode_entry(index, &value).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(entries)
    }
}

impl<M: Machine> RaftLogStorage<Cfg<M>> for LogStore<M> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Cfg<M>>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            None => None,
            Some((key, value)) => {
                let entry = decode_entry::<M>(key_index(&key)?, &value)
                    .map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
        };
        // Entries at or before the purge point may linger until their background removal.
        let last = match (last, last_purged) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (l, p) => l.or(p),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)?;
        if crate::planted::is(crate::planted::ACK_BEFORE_FLUSH) {
            return Ok(());
        }
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
    }

    /// Not flushed on purpose: committed is a hint that saves re-applying on restart. A stale
    /// (lower) value after a power loss is safe: the log holds every committed entry, and a
    /// leader restored in its old term never answers a read index below the last entry it
    /// had (`ReadFloor` in `replica.rs`).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self.get_meta(COMMITTED)?;
        let committed = committed.flatten();
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Cfg<M>>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<M>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Plain inserts, not a `sled::Batch`: a batch first seals sled's current write buffer
        // (one more job for sled's thread pool, which wakes all its idle threads), and sled
        // recovers a prefix of its writes anyway, which is all a log append needs (an entry
        // never survives without the ones before it).
        let mut written = Ok(());
        let mut count = 0usize;
        for entry in entries {
            let bytes = encode_entry(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            if let Err(e) = self.log.insert(index_key(entry.log_id.index), bytes) {
                written = Err(e);
                break;
            }
            count += 1;
        }
        if count == 0 && written.is_ok() {
            // Heartbeats append nothing; every earlier append was flushed before its callback.
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let written = match written {
            Ok(()) if crate::planted::is(crate::planted::ACK_BEFORE_FLUSH) => Ok(()),
            Ok(()) => self.flush().await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncate log from here on");
        self.remove_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Persist the purge point; that is the purge as far as openraft is concerned: it never
        // reads at or before it again, and neither does `get_log_state`. The entries themselves
        // are removed in the background, one key at a time: openraft awaits this call in its
        // core, and removing thousands of entries in one atomic batch held up appends and
        // heartbeats on every node at once (all nodes purge at the same index). A crash before
        // they are gone leaves entries that the next purge removes.
        self.put_meta(LAST_PURGED, &log_id)?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.unpurged_from
            .fetch_max(log_id.index + 1, Ordering::Relaxed);
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut removed = 0u64;
            for key in log.range(..=index_key(log_id.index)).keys() {
                match key.and_then(|k| log.remove(k)) {
                    Ok(_) => removed += 1,
                    Err(e) => {
                        tracing::warn!(%log_id, error = %e, "removing purged log entries failed; the next purge retries");
                        return;
                    }
                }
            }
            tracing::debug!(%log_id, removed, ms = started.elapsed().as_millis() as u64, "purged log entries removed");
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::machine::kv::{Cmd, Kv};
    use crate::store::Store;

    type Entry = crate::typ::Entry<Kv>;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// Writes entries straight into the tree, as an append would, or as entries a purge has
    /// not removed yet.
    fn put(store: &LogStore<Kv>, indexes: impl IntoIterator<Item = u64>) {
        for i in indexes {
            let entry = Entry {
                log_id: log_id(i),
                payload: EntryPayload::Blank,
            };
            let bytes = encode_entry(&entry).unwrap();
            store.log.insert(index_key(i), bytes).unwrap();
        }
    }

    /// Format 2 (postcard) holds the entries, format 1 (JSON, schemas 1 and 2) still reads,
    /// and a newer format or a misplaced entry is refused, not misread. (That every hookd
    /// command round-trips is `core::command`'s test.)
    #[test]
    fn entries_of_both_formats_decode_and_others_are_refused() {
        let membership = openraft::Membership::new(
            vec![[1, 2, 3].into()],
            [(1, "a:1"), (2, "b:2"), (3, "c:3")]
                .map(|(id, addr)| (id, openraft::BasicNode::new(addr)))
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        );
        let job = Cmd::Put {
            key: "a key of some length".into(),
            value: "a value of some more length, as most are".into(),
        };
        for (i, payload) in [
            EntryPayload::Blank,
            EntryPayload::Membership(membership),
            EntryPayload::Normal(job),
        ]
        .into_iter()
        .enumerate()
        {
            let entry = Entry {
                log_id: log_id(i as u64),
                payload,
            };
            let v2 = encode_entry(&entry).unwrap();
            let v1 = serde_json::to_vec(&entry).unwrap();
            assert_eq!(decode_entry::<Kv>(i as u64, &v2).unwrap(), entry);
            assert_eq!(
                decode_entry::<Kv>(i as u64, &v1).unwrap(),
                entry,
                "format 1"
            );
            assert!(v2.len() < v1.len() / 2, "{} vs {}", v2.len(), v1.len());

            let mut newer = v2.clone();
            newer[0] = ENTRY_FORMAT_2 + 1;
            let e = decode_entry::<Kv>(i as u64, &newer).unwrap_err();
            assert!(matches!(e, EntryFormatError::Newer { byte: 3, .. }), "{e}");
            assert!(e.to_string().contains("newer hookd"), "{e}");
            let e = decode_entry::<Kv>(i as u64 + 1, &v2).unwrap_err();
            assert!(matches!(e, EntryFormatError::Corrupt { .. }), "{e}");
            assert!(
                decode_entry::<Kv>(i as u64, &v2[..v2.len() - 1]).is_err(),
                "truncated"
            );
        }
    }

    #[tokio::test]
    async fn entries_left_behind_a_purge_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Store::open(dir.path(), 1, Arc::new(Kv))
            .unwrap()
            .log_store();
        put(&log, 1..=10);
        log.purge(log_id(7)).await.unwrap();
        // As if the background removal had not run yet (or a crash came first).
        put(&log, [3, 5, 7]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(7)));
        assert_eq!(state.last_log_id, Some(log_id(10)));
        let read: Vec<u64> = log
            .try_get_log_entries(0..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(read, [8, 9, 10]);

        // Purged past the last entry (a snapshot installed ahead of the log): the purge point
        // is the last log id, whatever still lingers.
        log.purge(log_id(12)).await.unwrap();
        put(&log, [9, 10]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(12)));
        assert!(log.try_get_log_entries(0..20).await.unwrap().is_empty());

        // After a reopen too (once the background removal has let go of the database).
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(dir.path(), 1, Arc::new(Kv)) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let mut log = store.log_store();
        assert!(log.try_get_log_entries(0..20).await.unwrap().is_empty());
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(12))
        );
    }
}
