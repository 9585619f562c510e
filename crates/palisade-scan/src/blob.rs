//! Random-access byte sources: a file read with positional reads (never loaded whole), or bytes
//! in memory (a decompressed archive member, an embedded model).

use std::fs::File;
use std::io::{self, Read};

/// Bytes that can be read at any offset.
pub(crate) trait Blob: Send + Sync {
    /// Total length.
    fn len(&self) -> u64;
    /// Reads into `buf` from `offset`; returns how many bytes were read (0 at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// A file, read with positional reads.
pub(crate) struct FileBlob {
    file: File,
    len: u64,
}

impl FileBlob {
    pub(crate) fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(FileBlob { file, len })
    }
}

impl Blob for FileBlob {
    fn len(&self) -> u64 {
        self.len
    }

    #[cfg(unix)]
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }

    #[cfg(windows)]
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_read(&self.file, buf, offset)
    }
}

impl Blob for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(src) = self.get(start..) else {
            return Ok(0);
        };
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
}

impl Blob for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at(offset, buf)
    }
}

/// A window `[start, start + len)` of another blob (a stored archive member).
pub(crate) struct SubBlob<'a> {
    pub(crate) inner: &'a dyn Blob,
    pub(crate) start: u64,
    pub(crate) len: u64,
}

impl Blob for SubBlob<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let max = usize::try_from(self.len - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.inner.read_at(self.start + offset, &mut buf[..max])
    }
}

/// Sequential reading of `[pos, end)` of a blob.
pub(crate) struct BlobReader<'a> {
    blob: &'a dyn Blob,
    pos: u64,
    end: u64,
}

impl<'a> BlobReader<'a> {
    pub(crate) fn new(blob: &'a dyn Blob, start: u64, end: u64) -> Self {
        BlobReader {
            blob,
            pos: start,
            end: end.min(blob.len()),
        }
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.end {
            return Ok(0);
        }
        let max = usize::try_from(self.end - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.blob.read_at(self.pos, &mut buf[..max])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads exactly `len` bytes at `offset`, or fails.
pub(crate) fn read_exact_at(blob: &dyn Blob, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    // A length read from the data is checked against the blob before anything is allocated.
    let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "unexpected end of data");
    if offset.saturating_add(len as u64) > blob.len() {
        return Err(eof());
    }
    let mut v = vec![0u8; len];
    if fill_at(blob, offset, &mut v)? < len {
        return Err(eof());
    }
    Ok(v)
}

/// Reads up to `len` bytes at `offset` (fewer at the end), with one allocation of the size that
/// can be read.
pub(crate) fn read_upto_at(blob: &dyn Blob, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let avail = usize::try_from(blob.len().saturating_sub(offset)).unwrap_or(usize::MAX);
    let mut v = vec![0u8; len.min(avail)];
    let n = fill_at(blob, offset, &mut v)?;
    v.truncate(n);
    Ok(v)
}

/// Fills `buf` from `offset` as far as the blob goes; returns how many bytes were read.
pub(crate) fn fill_at(blob: &dyn Blob, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match blob.read_at(offset + filled as u64, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
