//! Atomic file writes: write to a temporary file in the destination's directory, fsync, rename.
//! A reader sees the old file or the new one, never half of one; a failure leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file being written; it appears at its destination only on [`AtomicFile::commit`].
/// Dropping it without committing removes the temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl AtomicFile {
    /// Starts writing `dest` (created next to it, so the final rename stays on one file system).
    pub fn create(dest: &Path) -> Result<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".palisade-tmp-")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// Restricts the file to its owner (for private keys). No-op on non-Unix systems.
    pub fn owner_only(&self) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(self.tmp.path(), e))?;
        }
        Ok(())
    }

    /// Like [`AtomicFile::commit`], to another destination on the same file system (used when
    /// the name depends on the content, as in a content-addressed store).
    pub fn commit_as(mut self, dest: &Path) -> Result<()> {
        self.dest = dest.to_path_buf();
        self.commit()
    }

    /// Flushes, fsyncs and renames into place; then fsyncs the directory.
    pub fn commit(mut self) -> Result<()> {
        self.tmp.flush().map_err(|e| Error::io(&self.dest, e))?;
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(&self.dest, e))?;
        let dest = self.dest.clone();
        self.tmp
            .persist(&dest)
            .map_err(|e| Error::io(&dest, e.error))?;
        #[cfg(unix)]
        if let Some(dir) = dest.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

/// Writes `bytes` to `dest` atomically.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes).map_err(|e| Error::io(dest, e))?;
    f.commit()
}

/// Writes a secret (private key) to `dest` atomically, readable by its owner only.
pub fn write_secret_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.owner_only()?;
    f.write_all(bytes).map_err(|e| Error::io(dest, e))?;
    f.commit()
}
