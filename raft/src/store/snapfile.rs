//! The snapshot file (snapshot format 2): what a snapshot is on disk, between nodes, and (later)
//! in a backup. Written and read as a stream, so neither side holds the state in memory.
//!
//! ```text
//! "HOOKDSNP"                  8 bytes, magic
//! format                      u32 LE (2)
//! header length, header       u32 LE, JSON `Header` (hookd version, snapshot meta)
//! frames                      op u8, then
//!                               op < 0x40 (put into table op):  key len u32 LE, key, value len u32 LE, value
//!                               0x40 + table (delete):          key len u32 LE, key
//! 0xFF, frame count           end marker, u64 LE
//! SHA-256                     32 bytes, of everything before it
//! ```
//!
//! Frames are replayed in order, so a later frame for a key overrides an earlier one: a build
//! writes the live tables and then the pre-images of keys changed meanwhile (see `sm.rs`).
//! Nothing read is trusted before the checksum at the end matched: an install writes into a
//! generation that becomes active only after that.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::typ::SnapshotMeta;

pub const MAGIC: &[u8; 8] = b"HOOKDSNP";
/// The snapshot format this file layout is (format 1 was a postcard body, see `sm.rs`).
pub const FILE_FORMAT: u32 = 2;
const DELETE: u8 = 0x40;
const END: u8 = 0xFF;
/// Largest header, key or value a reader accepts (a job record is far below it), so a corrupt
/// length cannot make it allocate without bound before the checksum is reached.
const FIELD_BYTES_MAX: u32 = 64 << 20;
const HEADER_BYTES_MAX: u32 = 1 << 20;

/// What a snapshot file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The hookd version that wrote it.
    pub hookd_version: String,
    pub meta: SnapshotMeta,
}

impl Header {
    pub fn new(meta: SnapshotMeta) -> Header {
        Header {
            hookd_version: env!("CARGO_PKG_VERSION").to_owned(),
            meta,
        }
    }
}

/// One replayed change: `table` is an index into `Machine::TABLES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Put {
        table: u8,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Del {
        table: u8,
        key: Vec<u8>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SnapFileError {
    #[error("not a hookd snapshot file")]
    NotASnapshot,
    #[error(
        "snapshot format {0} is newer than this hookd reads (up to {FILE_FORMAT}): a newer \
         hookd wrote it; upgrade this node"
    )]
    Newer(u32),
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    #[error("corrupt snapshot: the checksum does not match")]
    Checksum,
    #[error("snapshot file: {0}")]
    Io(#[from] io::Error),
}

impl From<SnapFileError> for io::Error {
    fn from(e: SnapFileError) -> io::Error {
        match e {
            SnapFileError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Writes a snapshot file frame by frame.
pub struct Writer<W: Write> {
    out: W,
    hash: Sha256,
    frames: u64,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, header: &Header) -> io::Result<Writer<W>> {
        let mut w = Writer {
            out,
            hash: Sha256::new(),
            frames: 0,
            bytes: 0,
        };
        let header = serde_json::to_vec(header)?;
        w.write(MAGIC)?;
        w.write(&FILE_FORMAT.to_le_bytes())?;
        w.field(&header)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    fn field(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|l| *l <= FIELD_BYTES_MAX)
            .ok_or_else(|| io::Error::other("snapshot field over 64 MiB"))?;
        self.write(&len.to_le_bytes())?;
        self.write(bytes)
    }

    pub fn put(&mut self, table: u8, key: &[u8], value: &[u8]) -> io::Result<()> {
        debug_assert!(table < DELETE);
        self.write(&[table])?;
        self.field(key)?;
        self.field(value)?;
        self.frames += 1;
        Ok(())
    }

    pub fn del(&mut self, table: u8, key: &[u8]) -> io::Result<()> {
        debug_assert!(table < DELETE);
        self.write(&[DELETE + table])?;
        self.field(key)?;
        self.frames += 1;
        Ok(())
    }

    /// Writes the end marker, the frame count and the checksum; returns the output and the
    /// file's length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.write(&[END])?;
        let frames = self.frames;
        self.write(&frames.to_le_bytes())?;
        let sum = self.hash.clone().finalize();
        self.out.write_all(&sum)?;
        self.out.flush()?;
        Ok((self.out, self.bytes + sum.len() as u64))
    }
}

/// Creates (or truncates) `path` readable by its owner only: a snapshot holds secret header
/// values.
pub fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// A snapshot file being written to disk.
pub type FileWriter = Writer<BufWriter<File>>;

impl FileWriter {
    /// Creates (or truncates) the file at `path` and writes the header.
    pub fn create(path: &Path, header: &Header) -> io::Result<FileWriter> {
        Writer::new(
            BufWriter::with_capacity(1 << 16, create_private(path)?),
            header,
        )
    }

    /// `finish`, then fsync; returns the file's length.
    pub fn finish_synced(self) -> io::Result<u64> {
        let (out, len) = self.finish()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(len)
    }
}

/// Reads a snapshot file frame by frame; `next_frame` returns `None` only once the checksum
/// matched.
pub struct Reader<R: Read> {
    inp: R,
    hash: Sha256,
    frames: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// Reads the magic, the format and the header.
    pub fn open(inp: R) -> Result<(Header, Reader<R>), SnapFileError> {
        let mut r = Reader {
            inp,
            hash: Sha256::new(),
            frames: 0,
            done: false,
        };
        let mut magic = [0u8; 8];
        r.read(&mut magic).map_err(|e| match e {
            SnapFileError::Corrupt(_) => SnapFileError::NotASnapshot,
            e => e,
        })?;
        if &magic != MAGIC {
            return Err(SnapFileError::NotASnapshot);
        }
        let format = r.u32()?;
        if format > FILE_FORMAT {
            return Err(SnapFileError::Newer(format));
        }
        if format < FILE_FORMAT {
            return Err(SnapFileError::Corrupt(format!(
                "unknown file format {format}"
            )));
        }
        let header = r.field(HEADER_BYTES_MAX)?;
        let header: Header = serde_json::from_slice(&header)
            .map_err(|e| SnapFileError::Corrupt(format!("header: {e}")))?;
        Ok((header, r))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), SnapFileError> {
        self.inp.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => SnapFileError::Corrupt("truncated".into()),
            _ => SnapFileError::Io(e),
        })?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, SnapFileError> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn field(&mut self, max: u32) -> Result<Vec<u8>, SnapFileError> {
        let len = self.u32()?;
        if len > max {
            return Err(SnapFileError::Corrupt(format!("a field of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.read(&mut buf)?;
        Ok(buf)
    }

    /// The next frame, or `None` at the end once the frame count and checksum matched.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SnapFileError> {
        if self.done {
            return Ok(None);
        }
        let mut op = [0u8];
        self.read(&mut op)?;
        let frame = match op[0] {
            END => {
                let mut count = [0u8; 8];
                self.read(&mut count)?;
                let expected = self.hash.clone().finalize();
                let mut sum = [0u8; 32];
                self.inp.read_exact(&mut sum).map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => SnapFileError::Corrupt("truncated".into()),
                    _ => SnapFileError::Io(e),
                })?;
                if sum[..] != expected[..] {
                    return Err(SnapFileError::Checksum);
                }
                if u64::from_le_bytes(count) != self.frames {
                    return Err(SnapFileError::Corrupt("frame count".into()));
                }
                let mut rest = [0u8];
                if self.inp.read(&mut rest)? != 0 {
                    return Err(SnapFileError::Corrupt("bytes after the checksum".into()));
                }
                self.done = true;
                return Ok(None);
            }
            op if op < DELETE => Frame::Put {
                table: op,
                key: self.field(FIELD_BYTES_MAX)?,
                value: self.field(FIELD_BYTES_MAX)?,
            },
            op if op < 2 * DELETE => Frame::Del {
                table: op - DELETE,
                key: self.field(FIELD_BYTES_MAX)?,
            },
            op => return Err(SnapFileError::Corrupt(format!("unknown frame {op:#04x}"))),
        };
        self.frames += 1;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    use super::*;

    fn header() -> Header {
        Header::new(SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 42)),
            last_membership: StoredMembership::default(),
            snapshot_id: "T3-N1-42-0".into(),
        })
    }

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Put {
                table: 0,
                key: b"job-a".to_vec(),
                value: vec![1, 2, 3],
            },
            Frame::Put {
                table: 6,
                key: Vec::new(),
                value: vec![7; 70_000],
            },
            Frame::Del {
                table: 3,
                key: b"run".to_vec(),
            },
        ]
    }

    fn write(frames: &[Frame]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        for f in frames {
            match f {
                Frame::Put { table, key, value } => w.put(*table, key, value).unwrap(),
                Frame::Del { table, key } => w.del(*table, key).unwrap(),
            }
        }
        let (bytes, len) = w.finish().unwrap();
        assert_eq!(len, bytes.len() as u64);
        bytes
    }

    fn read_all(bytes: &[u8]) -> Result<(Header, Vec<Frame>), SnapFileError> {
        let (h, mut r) = Reader::open(bytes)?;
        let mut out = Vec::new();
        while let Some(f) = r.next_frame()? {
            out.push(f);
        }
        Ok((h, out))
    }

    #[test]
    fn frames_read_back_as_written_with_the_header() {
        let bytes = write(&frames());
        let (h, f) = read_all(&bytes).unwrap();
        assert_eq!((h, f), (header(), frames()));
        assert_eq!(read_all(&write(&[])).unwrap().1, []);
    }

    /// Any flipped byte, a cut anywhere or a byte added is refused, never read as something
    /// else; a file that is no snapshot or of a newer format says so.
    #[test]
    fn damage_anywhere_is_refused() {
        let bytes = write(&frames());
        for i in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(read_all(&bad).is_err(), "flipped byte {i}");
            assert!(read_all(&bytes[..i]).is_err(), "cut at {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(read_all(&longer), Err(SnapFileError::Corrupt(_))));

        assert!(matches!(
            read_all(b"{\"not\": 1}"),
            Err(SnapFileError::NotASnapshot)
        ));
        assert!(matches!(read_all(b"HOO"), Err(SnapFileError::NotASnapshot)));
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(FILE_FORMAT + 1).to_le_bytes());
        let e = read_all(&newer).unwrap_err();
        assert!(e.to_string().contains("newer hookd"), "{e}");
        // A huge length is refused before anything is allocated for it.
        let mut huge = bytes[..12].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_all(&huge), Err(SnapFileError::Corrupt(_))));
    }
}
