//! The node's sled database and the one way to make its writes durable: `Disk::flush`.
//!
//! sled 0.34's own flush writes its buffers with `pwrite` + `sync_file_range` and waits for
//! them. That survives a crash of the process (the chaos harness's SIGKILL), but not a power
//! loss: `sync_file_range` persists neither the file's size nor the disk's write cache, and
//! blob files (values over ~128 KiB: large log batches, snapshots) are never synced by sled
//! at all; only its background flusher calls `fsync`, every 500 ms. So after sled's flush,
//! `Disk::flush` fsyncs what sled left unsynced: new or grown blob files and their directory,
//! then the main file (`fdatasync`). The harness's power-loss fault (a FUSE file system that
//! drops every write not followed by an fsync) checks that this is enough.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The database plus what its flushes must fsync; cheap to clone.
#[derive(Clone)]
pub struct Disk {
    db: sled::Db,
    files: Arc<Files>,
}

struct Files {
    /// sled's directory (holds `db`, `conf`, `blobs/`).
    dir: PathBuf,
    /// sled's main file, opened once; fsync through any descriptor covers the file.
    main: File,
    /// Blob files already synced, with the size they had then (sled writes a blob before the
    /// log record that points at it, so a blob seen mid-write is synced again once it grew).
    blobs: Mutex<HashMap<OsString, u64>>,
}

/// Makes the entries of directory `dir` durable (files created, renamed or removed in it).
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Disk {
    /// Opens sled in `dir` with `config` and makes its directory entries durable.
    pub fn open(config: sled::Config, dir: &Path) -> Result<Disk, sled::Error> {
        let db = config.path(dir).open()?;
        let main = File::open(dir.join("db"))?;
        for d in [dir, dir.parent().unwrap_or(dir)] {
            sync_dir(d)?;
        }
        if let Ok(conf) = File::open(dir.join("conf")) {
            conf.sync_all()?;
        }
        Ok(Disk {
            db,
            files: Arc::new(Files {
                dir: dir.to_owned(),
                main,
                blobs: Mutex::default(),
            }),
        })
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Returns once everything written to the database so far would survive a power loss.
    pub async fn flush(&self) -> Result<(), sled::Error> {
        // Debug builds only: a test makes storage fail by creating this file in the db dir.
        #[cfg(debug_assertions)]
        if self.files.dir.join(TEST_FAULT_FILE).exists() {
            return Err(sled::Error::Io(io::Error::other(
                "storage fault injected by a test",
            )));
        }
        // sled's `flush_async` would hand the flush to sled's own thread pool, whose every job
        // wakes all of its idle threads (`notify_all`); one blocking hop of ours does both.
        let disk = self.clone();
        tokio::task::spawn_blocking(move || disk.flush_blocking())
            .await
            .map_err(|e| sled::Error::Io(io::Error::other(e)))?
    }

    /// `flush` for code that may not await (opening the store).
    pub fn flush_blocking(&self) -> Result<(), sled::Error> {
        self.db.flush()?;
        self.files.sync()?;
        Ok(())
    }
}

/// In debug builds, its presence in the db dir makes every flush fail (the `/healthz` test).
#[cfg(debug_assertions)]
pub const TEST_FAULT_FILE: &str = "hookd-test-storage-fault";

impl Files {
    fn sync(&self) -> io::Result<()> {
        let mut synced = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
        let blob_dir = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blob_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.main.sync_data(),
            Err(e) => return Err(e),
        };
        let mut now = HashMap::with_capacity(synced.len());
        let mut any_new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            // A blob sled garbage-collects meanwhile is simply gone.
            let Ok(len) = entry.metadata().map(|m| m.len()) else {
                continue;
            };
            if synced.get(&name) != Some(&len) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                any_new = true;
            }
            now.insert(name, len);
        }
        if any_new {
            sync_dir(&blob_dir)?;
        }
        *synced = now;
        self.main.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flush_syncs_blobs_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let disk = Disk::open(sled::Config::new(), &path).unwrap();
        // Over sled's blob threshold, so it lands in blobs/.
        let big = vec![7u8; 300 * 1024];
        disk.db().insert(b"big", big.clone()).unwrap();
        disk.flush().await.unwrap();
        let blobs = disk.files.blobs.lock().unwrap().len();
        assert!(
            blobs >= 1,
            "the big value should have been written as a synced blob"
        );
        drop(disk);
        let disk = Disk::open(sled::Config::new(), &path).unwrap();
        assert_eq!(disk.db().get(b"big").unwrap().as_deref(), Some(&big[..]));
    }
}
