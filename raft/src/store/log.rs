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
use crate::typ::{Entry, LogId, StorageError, StorageIOError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Log storage handle; cheap to clone (openraft's replication tasks read through clones).
#[derive(Clone)]
pub struct LogStore {
    disk: Disk,
    meta: sled::Tree,
    log: sled::Tree,
    /// The last committed index reported by openraft, for `/v1/cluster`.
    committed: Arc<AtomicU64>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    pub(super) fn open(disk: &Disk) -> Result<LogStore, sled::Error> {
        let db = disk.db();
        Ok(LogStore {
            disk: disk.clone(),
            meta: db.open_tree("raft_meta")?,
            log: db.open_tree("raft_log")?,
            committed: Arc::new(AtomicU64::new(0)),
        })
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

    /// Removes every entry whose index lies in `range` in one atomic batch.
    fn remove_range(&self, range: impl RangeBounds<[u8; 8]>) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(range).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.log.range(index_key(start)..) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| {
                StorageIOError::read_logs(&std::io::Error::other("log key is not 8 bytes"))
            })?);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry =
                serde_json::from_slice(&value).map_err(|e| StorageIOError::read_logs(&e))?;
            if entry.log_id.index != index {
                return Err(StorageIOError::read_logs(&std::io::Error::other(format!(
                    "log entry stored under index {index} says {}",
                    entry.log_id.index
                )))
                .into());
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            None => None,
            Some((_, value)) => {
                let entry: Entry =
                    serde_json::from_slice(&value).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
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

    /// Not flushed on purpose: committed is a hint that saves re-applying on restart. The state
    /// machine is durable at every applied batch, so a stale (lower) committed value is safe.
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
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut count = 0usize;
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
            count += 1;
        }
        if count == 0 {
            // Heartbeats append nothing; every earlier append was flushed before its callback.
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let written = match self.log.apply_batch(batch) {
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
        self.remove_range(index_key(log_id.index)..)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purge log up to here");
        // Persist the purge point before deleting: entries at or before it are ignored after a
        // crash, so a half-done deletion is harmless.
        self.put_meta(LAST_PURGED, &log_id)?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.remove_range(..=index_key(log_id.index))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
