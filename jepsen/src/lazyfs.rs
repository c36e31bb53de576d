//! LazyFs: a FUSE passthrough filesystem that can emulate a power loss by losing the file data
//! that was written but not fsynced, like Jepsen's LazyFS.
//!
//! [`LazyFs::mount`] shows the directory tree `backing` at `mountpoint`; a node keeps its data
//! dir under the mountpoint. [`LazyFs::lose_unsynced`] is the power loss: every file's data goes
//! back to what it was at its last fsync. Call it only while no process has the files open for
//! writing (the harness SIGKILLs the node and waits for it to exit first: a killed process's
//! write that already reached this filesystem completes before the process is gone), then
//! restart the node on the same mount.
//!
//! # What survives a power loss
//! - **Metadata** operations (create, mkdir, mknod, symlink, link, unlink, rmdir, rename, chmod,
//!   chown, utimes) take effect at once and are durable, as with LazyFS's default. A file created
//!   since the last sync of its data therefore survives, empty.
//! - **File data and file size** changes since the file's last `fsync`/`fdatasync` are lost:
//!   writes, truncation and extension (`set_len`/`ftruncate`/`truncate`/`O_TRUNC`), `fallocate`.
//!   The file is cut back to its size at that sync and every page overwritten since gets its
//!   contents at that sync back.
//! - `fsync(2)` and `fdatasync(2)` on a file (FUSE_FSYNC, through any descriptor of it) make
//!   that file's current data and size durable. So do writes through a descriptor opened with
//!   `O_SYNC` or `O_DSYNC` (they make the whole file durable, not just the written range).
//! - `sync_file_range(2)`, `syncfs(2)`, `sync(2)`, `O_DIRECT`, closing a file, and writes that
//!   merely reached the kernel are NOT seen by FUSE and so count as unsynced, exactly as after a
//!   real power loss, where only fsync guarantees durability. (sled 0.34's `Db::flush` and
//!   `flush_async` are of these: they only call `sync_file_range`; sled's background flusher,
//!   every `flush_every_ms` (500 ms by default), does fsync.)
//! - A rename keeps the file's unsynced state: writing `tmp` without fsync and renaming it over
//!   `target` leaves `target` empty after a loss (the classic missing-fsync-before-rename bug).
//!
//! # How
//! Writes go through to the backing file at once (reads are plain passthrough), with an undo
//! log per backing inode: the file's size at its last sync and the contents at that sync of
//! every 4 KiB page below that size that was changed since (saved once, before the first change
//! of the page; a truncation saves the pages it removes). The log lives in memory and holds a
//! descriptor of the backing file, so it follows renames; it is dropped when the file's last
//! name goes away. A loss writes the saved pages back, sets the size back, fsyncs the backing
//! file and clears the log; an fsync through the mount fsyncs the backing file and clears the
//! file's log. The data lost is therefore also lost in `backing`, seen without the mount.
//!
//! Files are opened with `FOPEN_DIRECT_IO` and without writeback cache, and entry and attribute
//! timeouts are zero: every read and write reaches this process before the system call returns
//! and no kernel cache can serve data or sizes that a loss reverted.
//!
//! # Mounting
//! Needs root and `/dev/fuse` ([`LazyFs::available`]); no libfuse and no `fusermount`: the
//! mount is made with mount(2) (`allow_other,default_permissions`, `nodev,nosuid`) and served by
//! a few threads of this process through the `fuser` crate. Processes started in another network
//! namespace (`ip netns exec`) see the mount if it exists before they start. Unmounting
//! ([`LazyFs::unmount`], or drop) never hangs: a busy mount is detached (MNT_DETACH) and keeps
//! being served until its last open file is closed (or the FUSE connection is aborted when
//! fusectl is mounted).
//!
//! # Limitations
//! Shared writable `mmap` is refused (direct I/O); no extended attributes (ENOTSUP), no
//! `fallocate` modes other than plain allocation and `FALLOC_FL_KEEP_SIZE`; POSIX and flock
//! locks are handled by the kernel locally (they work between processes of this machine). The
//! backing tree must be one filesystem (inode numbers are passed through) and must not be
//! changed by anyone but this mount while mounted. The undo log is in memory: it is lost with
//! this process (the files then keep their unsynced data).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, Session, SessionACL,
    TimeOrNow, WriteFlags,
};
use nix::libc;

/// Granularity of the saved original contents.
const PAGE: u64 = 4096;
/// Entry and attribute timeout: zero, so that sizes a loss reverted are never served from cache.
const TTL: Duration = Duration::ZERO;
/// Threads serving the mount.
const THREADS: usize = 4;

/// What a power loss reverted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loss {
    /// Files whose data or size was changed since their last sync.
    pub files: usize,
    /// Bytes written back (whole saved pages, so an upper bound of the bytes that differed) plus
    /// bytes cut off past the synced sizes.
    pub bytes: u64,
}

/// One mounted instance. Unmounts on drop.
pub struct LazyFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    undo: Arc<UndoLog>,
    session: Option<JoinHandle<io::Result<()>>>,
    /// Kernel device number of the mount (for aborting its FUSE connection).
    dev: Option<u64>,
    mounted: bool,
}

impl std::fmt::Debug for LazyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFs")
            .field("backing", &self.backing)
            .field("mountpoint", &self.mountpoint)
            .field("mounted", &self.mounted)
            .finish()
    }
}

impl LazyFs {
    /// True when this process can mount FUSE here (root and /dev/fuse present).
    pub fn available() -> bool {
        nix::unistd::geteuid().is_root()
            && OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")
                .is_ok()
    }

    /// Mounts a passthrough of `backing` (an existing directory) at `mountpoint` (an existing,
    /// empty directory, neither inside the other).
    pub fn mount(backing: &Path, mountpoint: &Path) -> anyhow::Result<LazyFs> {
        let backing = backing
            .canonicalize()
            .with_context(|| format!("backing dir {}", backing.display()))?;
        let mountpoint = mountpoint
            .canonicalize()
            .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
        let root_meta = fs::metadata(&backing)?;
        if !root_meta.is_dir() {
            bail!("backing {} is not a directory", backing.display());
        }
        if !fs::metadata(&mountpoint)?.is_dir() {
            bail!("mountpoint {} is not a directory", mountpoint.display());
        }
        if fs::read_dir(&mountpoint)?.next().is_some() {
            bail!("mountpoint {} is not empty", mountpoint.display());
        }
        if backing.starts_with(&mountpoint) || mountpoint.starts_with(&backing) {
            bail!(
                "backing {} and mountpoint {} must not contain each other",
                backing.display(),
                mountpoint.display()
            );
        }

        let undo = Arc::new(UndoLog::default());
        let fs = PassFs {
            root: backing.clone(),
            root_ino: root_meta.ino(),
            names: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            undo: undo.clone(),
        };

        let dev_fuse = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .context("open /dev/fuse")?;
        let data = format!(
            "fd={},rootmode={:o},user_id={},group_id={},allow_other,default_permissions",
            dev_fuse.as_raw_fd(),
            libc::S_IFDIR,
            nix::unistd::getuid(),
            nix::unistd::getgid()
        );
        nix::mount::mount(
            Some("lazyfs"),
            &mountpoint,
            Some("fuse"),
            nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOSUID,
            Some(data.as_str()),
        )
        .with_context(|| format!("mount(2) FUSE at {}", mountpoint.display()))?;

        let mut config = Config::default();
        config.acl = SessionACL::All;
        config.n_threads = Some(THREADS);
        config.clone_fd = true;
        // Reads the kernel's INIT, which the mount queued, and answers it.
        let session = match Session::from_fd(fs, OwnedFd::from(dev_fuse), SessionACL::All, config) {
            Ok(session) => session,
            Err(e) => {
                let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
                return Err(e).context("FUSE handshake");
            }
        };
        let thread = std::thread::Builder::new()
            .name("lazyfs".into())
            .spawn(move || session.run());
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
                return Err(e).context("spawn the LazyFs thread");
            }
        };
        let dev = mount_dev(&mountpoint);
        Ok(LazyFs {
            backing,
            mountpoint,
            undo,
            session: Some(thread),
            dev,
            mounted: true,
        })
    }

    /// The mounted directory.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory the mount passes through to.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Power loss: every file's data goes back to what it was at its last fsync/fdatasync (size
    /// included); the restored state is fsynced, so a second loss keeps it. Call only while no
    /// process has the files open for writing. Returns how many files and bytes were reverted.
    pub fn lose_unsynced(&self) -> anyhow::Result<Loss> {
        self.undo.lose()
    }

    /// Unmounts; a busy mount is detached instead (it stays served until its last open file is
    /// closed). Never hangs. Also done on drop.
    pub fn unmount(&mut self) -> anyhow::Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        use nix::errno::Errno as E;
        use nix::mount::{umount2, MntFlags};
        let detached = match umount2(&self.mountpoint, MntFlags::empty()) {
            Ok(()) => false,
            // EINVAL: no longer a mount point (someone unmounted it).
            Err(E::EINVAL) => false,
            Err(E::EBUSY) => {
                umount2(&self.mountpoint, MntFlags::MNT_DETACH).with_context(|| {
                    format!("detach the busy mount {}", self.mountpoint.display())
                })?;
                if let Some(dev) = self.dev {
                    // Only present when fusectl is mounted; then open files fail with ENOTCONN.
                    let _ = fs::write(format!("/sys/fs/fuse/connections/{dev}/abort"), "1");
                }
                true
            }
            Err(e) => {
                self.mounted = true;
                return Err(e).with_context(|| format!("unmount {}", self.mountpoint.display()));
            }
        };
        // The serving threads end when the kernel drops the connection; a detached mount (or
        // one still held by another mount namespace) may be served on: do not wait for it.
        let wait = if detached {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        };
        let deadline = Instant::now() + wait;
        if let Some(thread) = self.session.take() {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        Ok(())
    }
}

/// Detaches every LazyFs mount left behind by a harness that died (its serving threads died
/// with it, so the mount only answers ENOTCONN). Returns the mountpoints detached.
pub fn detach_stale() -> Vec<PathBuf> {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    let mut detached = Vec::new();
    for line in mounts.lines() {
        let mut cols = line.split(' ');
        let (Some("lazyfs"), Some(at), Some("fuse")) = (cols.next(), cols.next(), cols.next())
        else {
            continue;
        };
        // /proc/mounts escapes spaces and the like as octal.
        let at = PathBuf::from(at.replace("\\040", " "));
        if nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH).is_ok() {
            detached.push(at);
        }
    }
    detached
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// The kernel device number of the filesystem mounted at `mountpoint`, from mountinfo (without
/// touching the mount itself).
fn mount_dev(mountpoint: &Path) -> Option<u64> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_str()?;
    let line = info.lines().rfind(|l| l.split(' ').nth(4) == Some(want))?;
    let (major, minor) = line.split(' ').nth(2)?.split_once(':')?;
    Some((major.parse::<u64>().ok()? << 20) | minor.parse::<u64>().ok()?)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full_at(f: &File, buf: &mut [u8], mut off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                off += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The undo state of one backing file since its last sync.
struct Undo {
    /// The backing file, open for reading and writing.
    file: File,
    /// Size at the last sync.
    orig_size: u64,
    /// Page index → contents at the last sync (`min(PAGE, orig_size - start)` bytes).
    pages: BTreeMap<u64, Vec<u8>>,
    /// Synced or lost: no longer in the log; a writer that raced must look again.
    retired: bool,
}

impl Undo {
    /// Saves the contents at the last sync of every not yet saved page that overlaps
    /// `[from, to)` below the size at the last sync. Must run before the change.
    fn save(&mut self, from: u64, to: u64) -> io::Result<()> {
        let to = to.min(self.orig_size);
        if from >= to {
            return Ok(());
        }
        for page in from / PAGE..=(to - 1) / PAGE {
            if self.pages.contains_key(&page) {
                continue;
            }
            let start = page * PAGE;
            let mut buf = vec![0; PAGE.min(self.orig_size - start) as usize];
            // A page past the current size was saved when a truncation removed it.
            let n = read_full_at(&self.file, &mut buf, start)?;
            buf.truncate(n);
            self.pages.insert(page, buf);
        }
        Ok(())
    }

    /// Puts the file back as it was at the last sync; returns the bytes reverted, `None` when
    /// nothing had changed.
    fn restore(&mut self) -> io::Result<Option<u64>> {
        let size = self.file.metadata()?.len();
        if self.pages.is_empty() && size == self.orig_size {
            return Ok(None);
        }
        let mut bytes = size.saturating_sub(self.orig_size);
        for (page, data) in &self.pages {
            self.file.write_all_at(data, page * PAGE)?;
            bytes += data.len() as u64;
        }
        self.file.set_len(self.orig_size)?;
        self.file.sync_all()?;
        self.pages.clear();
        Ok(Some(bytes))
    }
}

/// Undo state of every file changed since its last sync, by backing inode number.
#[derive(Default)]
struct UndoLog {
    files: Mutex<HashMap<u64, Arc<Mutex<Undo>>>>,
}

impl UndoLog {
    /// Runs the change `f` on `file` (open for writing) with the file's undo state locked, so
    /// that `f` can save what it is about to change. `None` for a file with no name left.
    fn modify<R>(
        &self,
        file: &File,
        f: impl FnOnce(Option<&mut Undo>) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            let entry = {
                let mut files = lock(&self.files);
                let meta = file.metadata()?;
                if meta.nlink() == 0 {
                    drop(files);
                    return f(None);
                }
                match files.get(&meta.ino()) {
                    Some(entry) => entry.clone(),
                    None => {
                        let entry = Arc::new(Mutex::new(Undo {
                            file: file.try_clone()?,
                            orig_size: meta.len(),
                            pages: BTreeMap::new(),
                            retired: false,
                        }));
                        files.insert(meta.ino(), entry.clone());
                        entry
                    }
                }
            };
            let mut undo = lock(&entry);
            if undo.retired {
                continue;
            }
            return f(Some(&mut undo));
        }
    }

    /// fsync: the file's current data and size become durable.
    fn sync(&self, file: &File, datasync: bool) -> io::Result<()> {
        let ino = file.metadata()?.ino();
        let entry = lock(&self.files).get(&ino).cloned();
        let mut undo = entry.as_ref().map(|e| lock(e));
        if datasync {
            file.sync_data()?;
        } else {
            file.sync_all()?;
        }
        if let (Some(entry), Some(undo)) = (&entry, &mut undo) {
            self.retire(ino, entry, undo);
        }
        Ok(())
    }

    fn retire(&self, ino: u64, entry: &Arc<Mutex<Undo>>, undo: &mut Undo) {
        if !undo.retired {
            undo.retired = true;
            let mut files = lock(&self.files);
            if files.get(&ino).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                files.remove(&ino);
            }
        }
    }

    /// Drops the undo state of a backing inode whose last name went away.
    fn forget_if_unlinked(&self, ino: u64) {
        let entry = lock(&self.files).get(&ino).cloned();
        if let Some(entry) = entry {
            let mut undo = lock(&entry);
            if undo.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true) {
                self.retire(ino, &entry, &mut undo);
            }
        }
    }

    fn lose(&self) -> anyhow::Result<Loss> {
        let entries: Vec<_> = lock(&self.files).drain().collect();
        let mut loss = Loss::default();
        let mut failed = Vec::new();
        for (ino, entry) in entries {
            let mut undo = lock(&entry);
            undo.retired = true;
            match undo.file.metadata() {
                Ok(meta) if meta.nlink() == 0 => continue,
                Ok(_) => {}
                Err(e) => {
                    failed.push(format!("inode {ino}: {e}"));
                    continue;
                }
            }
            match undo.restore() {
                Ok(Some(bytes)) => {
                    loss.files += 1;
                    loss.bytes += bytes;
                }
                Ok(None) => {}
                Err(e) => failed.push(format!("inode {ino}: {e}")),
            }
        }
        if !failed.is_empty() {
            bail!(
                "power loss: could not revert {} file(s): {}",
                failed.len(),
                failed.join("; ")
            );
        }
        Ok(loss)
    }
}

/// An open file.
struct Handle {
    /// The backing file: read-write when the file was opened for writing.
    file: File,
    /// Opened with O_SYNC or O_DSYNC: every write is followed by a sync.
    sync_writes: bool,
}

/// The FUSE filesystem: a passthrough of `root` with the undo log.
struct PassFs {
    root: PathBuf,
    /// Backing inode number of `root`; it and inode number 1 (FUSE's root) swap places.
    root_ino: u64,
    /// FUSE inode → (parent FUSE inode, name): the last name it was seen under.
    names: Mutex<HashMap<u64, (u64, OsString)>>,
    files: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirList>>>,
    next_fh: AtomicU64,
    undo: Arc<UndoLog>,
}

type Res<T> = Result<T, Errno>;

/// An open directory's entries: (FUSE inode, kind, name), `.` and `..` first.
type DirList = Vec<(u64, FileType, OsString)>;

fn nix_err(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = Duration::from_nanos(nsecs.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nsecs
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nsecs
    }
}

fn time_or_now(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn kind(ft: fs::FileType) -> FileType {
    FileType::from_std(ft).unwrap_or(FileType::RegularFile)
}

impl PassFs {
    /// Backing inode number ↔ FUSE inode number (an involution).
    fn ino(&self, ino: u64) -> u64 {
        if ino == self.root_ino {
            1
        } else if ino == 1 {
            self.root_ino
        } else {
            ino
        }
    }

    fn attr(&self, m: &fs::Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.ino(m.ino())),
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(m.file_type()),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    fn path(&self, ino: INodeNo) -> Res<PathBuf> {
        let names = lock(&self.names);
        let mut parts = Vec::new();
        let mut cur = ino.0;
        while cur != 1 {
            let (parent, name) = names.get(&cur).ok_or(Errno::ENOENT)?;
            parts.push(name);
            cur = *parent;
            if parts.len() > 4096 {
                return Err(Errno::ELOOP);
            }
        }
        let mut path = self.root.clone();
        path.extend(parts.iter().rev());
        Ok(path)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Res<PathBuf> {
        Ok(self.path(parent)?.join(name))
    }

    /// Records that `m` (just looked up or created) is `parent`/`name`; returns its attributes.
    fn entry(&self, parent: INodeNo, name: &OsStr, m: &fs::Metadata) -> FileAttr {
        let attr = self.attr(m);
        if attr.ino.0 != 1 {
            lock(&self.names).insert(attr.ino.0, (parent.0, name.to_owned()));
        }
        attr
    }

    /// Forgets the name `parent`/`name` of FUSE inode `ino` (it was removed or replaced).
    fn forget_name(&self, ino: u64, parent: INodeNo, name: &OsStr) {
        let mut names = lock(&self.names);
        if names
            .get(&ino)
            .is_some_and(|(p, n)| *p == parent.0 && n == name)
        {
            names.remove(&ino);
        }
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn handle(&self, fh: FileHandle) -> Res<Arc<Handle>> {
        lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_handle(&self, file: File, flags: i32) -> u64 {
        let fh = self.new_fh();
        let handle = Handle {
            file,
            sync_writes: flags & libc::O_DSYNC != 0,
        };
        lock(&self.files).insert(fh, Arc::new(handle));
        fh
    }

    /// Sets the size of `file` (open for writing), saving what a shrink removes.
    fn truncate(&self, file: &File, size: u64) -> io::Result<()> {
        self.undo.modify(file, |undo| {
            if let Some(undo) = undo {
                let cur = file.metadata()?.len();
                if size < cur {
                    undo.save(size, cur)?;
                }
            }
            file.set_len(size)
        })
    }

    /// chown to the caller, as a kernel filesystem creates files (we run as root).
    fn own(&self, req: &Request, path: &Path) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(req.uid()), Some(req.gid()))
    }

    #[allow(clippy::too_many_arguments)] // The FUSE request's fields, as the trait has them.
    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Res<FileAttr> {
        let handle = fh.and_then(|fh| lock(&self.files).get(&fh.0).cloned());
        let path = match handle {
            Some(_) => None,
            None => Some(self.path(ino)?),
        };
        let (handle, path) = (handle.as_deref(), path.as_deref());
        if let Some(mode) = mode {
            let perm = fs::Permissions::from_mode(mode & 0o7777);
            match (handle, path) {
                (Some(h), _) => h.file.set_permissions(perm)?,
                (None, Some(p)) => fs::set_permissions(p, perm)?,
                (None, None) => unreachable!(),
            }
        }
        if uid.is_some() || gid.is_some() {
            match (handle, path) {
                (Some(h), _) => std::os::unix::fs::fchown(&h.file, uid, gid)?,
                (None, Some(p)) => std::os::unix::fs::lchown(p, uid, gid)?,
                (None, None) => unreachable!(),
            }
        }
        if let Some(size) = size {
            match (handle, path) {
                (Some(h), _) => self.truncate(&h.file, size)?,
                (None, Some(p)) => {
                    let file = OpenOptions::new().read(true).write(true).open(p)?;
                    self.truncate(&file, size)?
                }
                (None, None) => unreachable!(),
            }
        }
        if atime.is_some() || mtime.is_some() {
            let mut times = fs::FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(time_or_now(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(time_or_now(t));
            }
            match (handle, path) {
                (Some(h), _) => h.file.set_times(times)?,
                (None, Some(p)) => File::open(p)?.set_times(times)?,
                (None, None) => unreachable!(),
            }
        }
        let meta = match (handle, path) {
            (Some(h), _) => h.file.metadata()?,
            (None, Some(p)) => fs::symlink_metadata(p)?,
            (None, None) => unreachable!(),
        };
        Ok(self.attr(&meta))
    }

    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Res<(FileAttr, u64)> {
        let path = self.child(parent, name)?;
        let existed = fs::symlink_metadata(&path).is_ok();
        let perm = mode & !umask & 0o7777;
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).mode(perm);
        if flags & libc::O_EXCL != 0 {
            opts.create_new(true);
        } else {
            opts.create(true);
        }
        let file = opts.open(&path)?;
        if existed {
            if flags & libc::O_TRUNC != 0 {
                self.truncate(&file, 0)?;
            }
        } else {
            file.set_permissions(fs::Permissions::from_mode(perm))?;
            std::os::unix::fs::fchown(&file, Some(req.uid()), Some(req.gid()))?;
        }
        let attr = self.entry(parent, name, &file.metadata()?);
        Ok((attr, self.add_handle(file, flags)))
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let moved = fs::symlink_metadata(&from)?.ino();
        let replaced = fs::symlink_metadata(&to).ok().map(|m| m.ino());
        if flags.is_empty() {
            fs::rename(&from, &to)?;
        } else {
            let nix_flags =
                nix::fcntl::RenameFlags::from_bits(flags.bits()).ok_or(Errno::EINVAL)?;
            let cwd = nix::fcntl::AT_FDCWD;
            nix::fcntl::renameat2(cwd, &from, cwd, &to, nix_flags).map_err(nix_err)?;
        }
        if replaced == Some(moved) {
            return Ok(());
        }
        let mut names = lock(&self.names);
        if let Some(replaced) = replaced {
            let fuse_replaced = self.ino(replaced);
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                names.insert(fuse_replaced, (parent.0, name.to_owned()));
            } else if names
                .get(&fuse_replaced)
                .is_some_and(|(p, n)| *p == newparent.0 && n == newname)
            {
                names.remove(&fuse_replaced);
            }
        }
        names.insert(self.ino(moved), (newparent.0, newname.to_owned()));
        drop(names);
        if let Some(replaced) = replaced {
            if !flags.contains(RenameFlags::RENAME_EXCHANGE) {
                self.undo.forget_if_unlinked(replaced);
            }
        }
        Ok(())
    }

    fn do_opendir(&self, ino: INodeNo) -> Res<u64> {
        let path = self.path(ino)?;
        let parent = lock(&self.names).get(&ino.0).map_or(1, |(p, _)| *p);
        let mut list = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let kind = entry.file_type().map(kind).unwrap_or(FileType::RegularFile);
            use std::os::unix::fs::DirEntryExt;
            list.push((self.ino(entry.ino()), kind, entry.file_name()));
        }
        let fh = self.new_fh();
        lock(&self.dirs).insert(fh, Arc::new(list));
        Ok(fh)
    }
}

fn reply_entry(reply: ReplyEntry, r: Res<FileAttr>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Res<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PassFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let meta = fs::symlink_metadata(self.child(parent, name)?)?;
            Ok(self.entry(parent, name, &meta))
        })();
        reply_entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = (|| {
            let handle = fh.and_then(|fh| lock(&self.files).get(&fh.0).cloned());
            let meta = match handle {
                Some(h) => h.file.metadata()?,
                None => fs::symlink_metadata(self.path(ino)?)?,
            };
            Ok(self.attr(&meta))
        })();
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, uid, gid, size, atime, mtime, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        use std::os::unix::ffi::OsStrExt;
        match self
            .path(ino)
            .and_then(|p| fs::read_link(p).map_err(Errno::from))
        {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            use nix::sys::stat::{Mode, SFlag};
            let path = self.child(parent, name)?;
            let perm = mode & !umask & 0o7777;
            nix::sys::stat::mknod(
                &path,
                SFlag::from_bits_truncate(mode & libc::S_IFMT),
                Mode::from_bits_truncate(perm),
                rdev.into(),
            )
            .map_err(nix_err)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(perm))?;
            self.own(req, &path)?;
            Ok(self.entry(parent, name, &fs::symlink_metadata(&path)?))
        })();
        reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let path = self.child(parent, name)?;
            fs::create_dir(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & !umask & 0o7777))?;
            self.own(req, &path)?;
            Ok(self.entry(parent, name, &fs::symlink_metadata(&path)?))
        })();
        reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            let path = self.child(parent, name)?;
            let ino = fs::symlink_metadata(&path)?.ino();
            fs::remove_file(&path)?;
            self.forget_name(self.ino(ino), parent, name);
            self.undo.forget_if_unlinked(ino);
            Ok(())
        })();
        reply_empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            let path = self.child(parent, name)?;
            let ino = fs::symlink_metadata(&path)?.ino();
            fs::remove_dir(&path)?;
            self.forget_name(self.ino(ino), parent, name);
            Ok(())
        })();
        reply_empty(reply, r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let path = self.child(parent, link_name)?;
            std::os::unix::fs::symlink(target, &path)?;
            self.own(req, &path)?;
            Ok(self.entry(parent, link_name, &fs::symlink_metadata(&path)?))
        })();
        reply_entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.do_rename(parent, name, newparent, newname, flags),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let to = self.child(newparent, newname)?;
            fs::hard_link(self.path(ino)?, &to)?;
            Ok(self.attr(&fs::symlink_metadata(&to)?))
        })();
        reply_entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let acc = flags.0 & libc::O_ACCMODE;
            let write = acc == libc::O_WRONLY || acc == libc::O_RDWR;
            // Read access too when writing: the undo log reads what a write replaces.
            let file = OpenOptions::new()
                .read(true)
                .write(write)
                .open(self.path(ino)?)?;
            Ok(self.add_handle(file, flags.0))
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = (|| {
            let h = self.handle(fh)?;
            let mut buf = vec![0; size as usize];
            let n = read_full_at(&h.file, &mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        })();
        match r {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = (|| {
            let h = self.handle(fh)?;
            if !data.is_empty() {
                self.undo.modify(&h.file, |undo| {
                    if let Some(undo) = undo {
                        undo.save(offset, offset + data.len() as u64)?;
                    }
                    h.file.write_all_at(data, offset)
                })?;
            }
            if h.sync_writes {
                self.undo.sync(&h.file, true)?;
            }
            Ok(data.len() as u32)
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let h = self.handle(fh)?;
            Ok(self.undo.sync(&h.file, datasync)?)
        })();
        reply_empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(list) = lock(&self.dirs).get(&fh.0).cloned() else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata is durable at once already; sync the backing directory all the same.
        let r = (|| Ok(File::open(self.path(ino)?)?.sync_all()?))();
        reply_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(nix_err(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(req, parent, name, mode, umask, flags) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            use nix::fcntl::{fallocate, FallocateFlags};
            if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
                // Punching holes or zeroing ranges would change data: not emulated.
                return Err(Errno::EOPNOTSUPP);
            }
            let h = self.handle(fh)?;
            let (offset, length) = (
                i64::try_from(offset).map_err(|_| Errno::EINVAL)?,
                i64::try_from(length).map_err(|_| Errno::EINVAL)?,
            );
            let flags = FallocateFlags::from_bits_truncate(mode);
            // May grow the file: a size change like any other.
            self.undo.modify(&h.file, |_| {
                fallocate(&h.file, flags, offset, length).map_err(io::Error::from)
            })?;
            Ok(())
        })();
        reply_empty(reply, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::mpsc;

    /// Runs `f` on another thread and fails the test if it does not finish in time (a hung FUSE
    /// request must not hang the test run).
    fn within<T: Send + 'static>(
        what: &str,
        secs: u64,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(v) => v,
            Err(_) => panic!("{what}: not done within {secs} s"),
        }
    }

    struct Setup {
        // Field order: the mount goes before the directories.
        fs: LazyFs,
        mnt: tempfile::TempDir,
        backing: tempfile::TempDir,
    }

    fn setup() -> Option<Setup> {
        if !LazyFs::available() {
            eprintln!("FUSE is unavailable here (needs root and /dev/fuse): LazyFs test skipped");
            return None;
        }
        let backing = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let fs = LazyFs::mount(backing.path(), mnt.path()).expect("mount LazyFs");
        Some(Setup { fs, mnt, backing })
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
            .collect()
    }

    fn read(path: &Path) -> Vec<u8> {
        let mut buf = Vec::new();
        File::open(path).unwrap().read_to_end(&mut buf).unwrap();
        buf
    }

    fn write_synced(path: &Path, data: &[u8]) {
        let mut f = File::create(path).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }

    fn is_mounted(path: &Path) -> bool {
        mount_dev(&path.canonicalize().unwrap()).is_some()
    }

    #[test]
    fn lazyfs_loses_unsynced_data_only() {
        let Some(s) = setup() else { return };
        let m = s.mnt.path().to_path_buf();
        let fs = s.fs;
        let (a, b, d) = (m.join("A"), m.join("B"), m.join("C").join("D"));
        let a_synced = pattern(6000, 1);
        let d_data = pattern(3000, 2);
        let (a2, b2, d2) = (a.clone(), b.clone(), d.clone());
        let (a_synced2, d_data2) = (a_synced.clone(), d_data.clone());
        within("writes through the mount", 60, move || {
            write_synced(&a2, &a_synced2);
            let f = OpenOptions::new().write(true).open(&a2).unwrap();
            f.write_all_at(&[b'X'; 100], 100).unwrap();
            f.write_all_at(&[b'Y'; 3000], 6000).unwrap();
            drop(f);
            File::create(&b2).unwrap().write_all(&[b'B'; 500]).unwrap();
            fs::create_dir(d2.parent().unwrap()).unwrap();
            write_synced(&d2, &d_data2);
            // Reads through the mount see the unsynced data before the loss.
            assert_eq!(read(&a2).len(), 9000);
            assert_eq!(&read(&a2)[100..200], &[b'X'; 100]);
        });

        let loss = fs.lose_unsynced().unwrap();
        // A: page 0 written back (4096) + 3000 bytes cut; B: 500 bytes cut.
        assert_eq!(
            loss,
            Loss {
                files: 2,
                bytes: 4096 + 3000 + 500
            }
        );

        let backing = s.backing.path().to_path_buf();
        let (a_synced2, d_data2) = (a_synced.clone(), d_data.clone());
        within("reads after the loss", 60, move || {
            // Through the mount: no stale cache.
            assert_eq!(fs::metadata(&a).unwrap().len(), 6000);
            assert_eq!(read(&a), a_synced2);
            assert_eq!(fs::metadata(&b).unwrap().len(), 0);
            assert_eq!(read(&b), b"");
            assert_eq!(read(&d), d_data2);
            // And in the backing dir.
            assert_eq!(read(&backing.join("A")), a_synced2);
            assert_eq!(fs::metadata(backing.join("B")).unwrap().len(), 0);
            assert_eq!(read(&backing.join("C").join("D")), d_data2);
        });
        // A second loss keeps the restored state.
        assert_eq!(fs.lose_unsynced().unwrap(), Loss::default());
        assert_eq!(read(&s.backing.path().join("A")), a_synced);
        // The kernel's idea of A's size is the reverted one: an append lands at 6000.
        let a = m.join("A");
        let appended = within("append after the loss", 60, move || {
            OpenOptions::new()
                .append(true)
                .open(&a)
                .unwrap()
                .write_all(b"Z")
                .unwrap();
            read(&a)
        });
        assert_eq!(appended.len(), 6001);
        assert_eq!(&appended[..6000], &a_synced[..]);
        assert_eq!(appended[6000], b'Z');
        drop(fs);
    }

    #[test]
    fn lazyfs_restores_a_truncated_file() {
        let Some(s) = setup() else { return };
        let f_path = s.mnt.path().join("t");
        let u_path = s.mnt.path().join("u");
        let data = pattern(10 * 1024, 3);
        let (p, u, d) = (f_path.clone(), u_path.clone(), data.clone());
        within("truncate through the mount", 60, move || {
            // O_TRUNC (File::create of an existing file) is a truncation too.
            write_synced(&u, &d[..5000]);
            File::create(&u).unwrap().write_all(b"short").unwrap();
            assert_eq!(read(&u), b"short");
            write_synced(&p, &d);
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(1024).unwrap();
            // A write past the new size, below the synced size, is lost too.
            f.write_all_at(b"zzzz", 5000).unwrap();
            drop(f);
            assert_eq!(fs::metadata(&p).unwrap().len(), 5004);
        });
        let loss = s.fs.lose_unsynced().unwrap();
        assert_eq!(loss.files, 2);
        let (p, u) = (f_path.clone(), u_path.clone());
        let (got, got_u) = within("read after the loss", 60, move || (read(&p), read(&u)));
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the truncated file was not restored");
        assert!(got_u == data[..5000], "the O_TRUNC file was not restored");
    }

    #[test]
    fn lazyfs_rename_over_keeps_unsynced_state() {
        let Some(s) = setup() else { return };
        let m = s.mnt.path().to_path_buf();
        let (target, tmp) = (m.join("target"), m.join("tmp"));
        let (t, tm) = (target.clone(), tmp.clone());
        within("write, rename", 60, move || {
            write_synced(&t, b"old, synced");
            File::create(&tm)
                .unwrap()
                .write_all(b"new, never synced")
                .unwrap();
            fs::rename(&tm, &t).unwrap();
            assert_eq!(read(&t), b"new, never synced");
        });
        let loss = s.fs.lose_unsynced().unwrap();
        assert_eq!(loss.files, 1);
        let t = target.clone();
        let (len, tmp_exists) = within("stat after the loss", 60, move || {
            (fs::metadata(&t).unwrap().len(), tmp.exists())
        });
        // The rename is durable, the data written before it is not.
        assert_eq!(len, 0);
        assert!(!tmp_exists);
    }

    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let dest = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &dest);
            } else {
                fs::copy(entry.path(), dest).unwrap();
            }
        }
    }

    /// Opens a copy of the sled db in `backing_db` (the state a restart after the power loss
    /// would see) and reads `key`.
    fn read_copy(backing_db: &Path, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(backing_db, copy.path());
        let db = sled::Config::new()
            .path(copy.path())
            .flush_every_ms(None)
            .open()
            .map_err(|e| e.to_string())?;
        let got = db.get(key).map_err(|e| e.to_string())?;
        Ok(got.map(|v| v.to_vec()))
    }

    #[test]
    fn lazyfs_runs_sled() {
        let Some(s) = setup() else { return };
        let dir = s.mnt.path().join("sled");
        let d = dir.clone();
        within("sled open, write, flush, reopen", 120, move || {
            let db = sled::open(&d).unwrap();
            for i in 0u32..500 {
                db.insert(i.to_be_bytes(), format!("value {i}").as_bytes())
                    .unwrap();
            }
            db.flush().unwrap();
            drop(db);
            let db = sled::open(&d).unwrap();
            for i in 0u32..500 {
                let v = db.get(i.to_be_bytes()).unwrap().expect("key read back");
                assert_eq!(&*v, format!("value {i}").as_bytes());
            }
        });

        // One write of X to a fresh sled db on the mount, then `flush()`, then (or not) an
        // fsync of the db file; then a power loss, and what a restart would read.
        // (flush_every_ms(None): no background flusher, which would fsync on its own.)
        let write_then_lose = |name: &str, fsync: bool| {
            let dir = s.mnt.path().join(name);
            let d = dir.clone();
            let db = within("sled write + flush", 120, move || {
                let db = sled::Config::new()
                    .path(&d)
                    .flush_every_ms(None)
                    .open()
                    .unwrap();
                db.insert(b"X", b"value").unwrap();
                db.flush().unwrap();
                if fsync {
                    File::open(d.join("db")).unwrap().sync_all().unwrap();
                }
                db
            });
            s.fs.lose_unsynced().unwrap();
            let got = read_copy(&s.backing.path().join(name), b"X");
            within("drop the db", 60, move || drop(db));
            got
        };
        assert_eq!(
            write_then_lose("synced", true),
            Ok(Some(b"value".to_vec())),
            "an fsynced sled write was lost"
        );
        // sled 0.34's flush only calls sync_file_range: the write is gone after a power loss.
        // This is why hookd's store fsyncs after every sled flush (raft/src/store/disk.rs).
        assert_eq!(
            write_then_lose("flushed", false),
            Ok(None),
            "sled's flush alone now survives a power loss: revisit raft/src/store/disk.rs"
        );
    }

    #[test]
    fn lazyfs_unmounts_on_drop() {
        let Some(s) = setup() else { return };
        let mnt = s.mnt.path().to_path_buf();
        assert!(is_mounted(&mnt));
        let m = mnt.clone();
        within("write", 30, move || write_synced(&m.join("f"), b"data"));
        let fs = s.fs;
        within("drop (idle mount)", 30, move || drop(fs));
        assert!(!is_mounted(&mnt), "still mounted after drop");
        assert_eq!(
            fs::read_dir(&mnt).unwrap().count(),
            0,
            "mountpoint not empty"
        );
        assert_eq!(read(&s.backing.path().join("f")), b"data");

        // A busy mount (a file open on it) is detached instead, without hanging.
        let backing2 = tempfile::tempdir().unwrap();
        let mnt2 = tempfile::tempdir().unwrap();
        let fs = LazyFs::mount(backing2.path(), mnt2.path()).unwrap();
        let p = mnt2.path().join("open");
        let open = within("open a file", 30, move || {
            let mut f = File::create(&p).unwrap();
            f.write_all(b"x").unwrap();
            f
        });
        within("drop (busy mount)", 30, move || drop(fs));
        assert!(!is_mounted(mnt2.path()), "busy mount not detached");
        assert_eq!(fs::read_dir(mnt2.path()).unwrap().count(), 0);
        within("close the file", 30, move || drop(open));
    }
}
