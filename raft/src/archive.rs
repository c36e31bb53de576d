//! The backup of a node with several groups (shards): one snapshot file per group, in group
//! order, in one checksummed file. A node with one group backs up its snapshot file alone, as
//! it always did.
//!
//! ```text
//! "HOOKDBAK"                  8 bytes, magic
//! version                     u32 LE (1)
//! groups                      u32 LE
//! per group                   length u64 LE, then that group's snapshot file (`snapfile.rs`)
//! SHA-256                     32 bytes, of everything before it
//! ```

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::store::snapfile::{create_private, SnapFileError};

pub const MAGIC: &[u8; 8] = b"HOOKDBAK";
const VERSION: u32 = 1;
/// Most groups an archive may name (a node has at most 64).
const GROUPS_MAX: u32 = 1024;

/// Writes the archive of `files` (one per group, in group order, each read from its start)
/// to `out`, owner-only, synced.
pub fn write(files: Vec<File>, out: &Path) -> io::Result<()> {
    let mut w = Hashing {
        inner: BufWriter::with_capacity(1 << 16, create_private(out)?),
        sum: Sha256::new(),
    };
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    let groups = u32::try_from(files.len()).map_err(io::Error::other)?;
    w.write_all(&groups.to_le_bytes())?;
    for mut f in files {
        let len = f.seek(SeekFrom::End(0))?;
        f.seek(SeekFrom::Start(0))?;
        w.write_all(&len.to_le_bytes())?;
        let copied = io::copy(&mut (&mut f).take(len), &mut w)?;
        if copied != len {
            return Err(io::Error::other(
                "a snapshot file changed while it was archived",
            ));
        }
    }
    let sum = w.sum.finalize();
    let mut inner = w.inner;
    inner.write_all(&sum)?;
    inner.flush()?;
    inner.get_ref().sync_all()
}

struct Hashing<W> {
    inner: W,
    sum: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether the file at `path` is an archive (else it may be a lone snapshot file).
pub fn is_archive(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 8];
    let mut f = File::open(path)?;
    Ok(f.read_exact(&mut magic).is_ok() && &magic == MAGIC)
}

/// Checks the archive at `path` against its checksum, then writes each group's snapshot file
/// into `dir` (owner-only), in group order. Nothing read is trusted before the checksum
/// matched; each snapshot file has its own checksum too.
pub fn split(path: &Path, dir: &Path) -> Result<Vec<PathBuf>, SnapFileError> {
    let corrupt = |why: &str| SnapFileError::Corrupt(format!("backup archive: {why}"));
    let total = std::fs::metadata(path)?.len();
    let body = total.checked_sub(32).ok_or_else(|| corrupt("too short"))?;
    let mut f = File::open(path)?;
    let mut sum = Sha256::new();
    io::copy(&mut (&mut f).take(body), &mut HashSink(&mut sum))?;
    let mut stored = [0u8; 32];
    f.read_exact(&mut stored)?;
    if sum.finalize()[..] != stored[..] {
        return Err(corrupt("checksum mismatch"));
    }
    f.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(1 << 16, (&mut f).take(body));
    let mut head = [0u8; 16];
    r.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(SnapFileError::NotASnapshot);
    }
    let u32_at = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if u32_at(8) != VERSION {
        return Err(SnapFileError::Newer(u32_at(8)));
    }
    let groups = u32_at(12);
    if groups == 0 || groups > GROUPS_MAX {
        return Err(corrupt("bad group count"));
    }
    let mut out = Vec::with_capacity(groups as usize);
    let mut left = body - 16;
    for k in 0..groups {
        let mut len = [0u8; 8];
        r.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        left = left
            .checked_sub(8 + len)
            .ok_or_else(|| corrupt("a section runs past the end"))?;
        let file = dir.join(format!("group-{k}.snap"));
        let mut w = BufWriter::new(create_private(&file)?);
        if io::copy(&mut (&mut r).take(len), &mut w)? != len {
            return Err(corrupt("a section is cut short"));
        }
        w.flush()?;
        out.push(file);
    }
    if left != 0 {
        return Err(corrupt("bytes after the last section"));
    }
    Ok(out)
}

/// The SHA-256 an archive ends with, in hex.
pub fn checksum(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(-32))?;
    let mut sum = [0u8; 32];
    f.read_exact(&mut sum)?;
    Ok(sum.iter().map(|b| format!("{b:02x}")).collect())
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_splits_into_its_groups_files_and_any_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<PathBuf> = (0..3)
            .map(|k| {
                let p = dir.path().join(format!("in-{k}"));
                std::fs::write(&p, vec![k as u8; 1000 * (k + 1)]).unwrap();
                p
            })
            .collect();
        let archive = dir.path().join("backup");
        let files = parts.iter().map(|p| File::open(p).unwrap()).collect();
        write(files, &archive).unwrap();
        assert!(is_archive(&archive).unwrap());
        assert!(!is_archive(&parts[0]).unwrap());
        let out = tempfile::tempdir().unwrap();
        let split = split(&archive, out.path()).unwrap();
        assert_eq!(split.len(), 3);
        for (a, b) in parts.iter().zip(&split) {
            assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        }
        let mut bytes = std::fs::read(&archive).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&archive, &bytes).unwrap();
        let e = super::split(&archive, out.path()).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        std::fs::write(&archive, &bytes[..20]).unwrap();
        assert!(super::split(&archive, out.path()).is_err());
    }
}
