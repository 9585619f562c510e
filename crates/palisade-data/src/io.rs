//! Bounded file reading with transparent gzip decompression.

use std::io::Read;
use std::path::Path;

use crate::DataError;

/// Largest decompressed file any reader accepts (4 GiB).
pub const MAX_FILE_BYTES: u64 = 4 << 30;

/// Reads `path` whole, decompressing it if it starts with the gzip magic; fails past `limit`
/// bytes (after decompression), so a small bomb cannot exhaust memory.
pub fn read_maybe_gz(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut head = [0u8; 2];
    let n = read_up_to(&mut f, &mut head).map_err(|e| DataError::io(path, e))?;
    let prefix = std::io::Cursor::new(head[..n].to_vec());
    let chained = prefix.chain(f);
    let mut out = Vec::new();
    let result = if n == 2 && head == [0x1f, 0x8b] {
        flate2::read::MultiGzDecoder::new(chained)
            .take(limit + 1)
            .read_to_end(&mut out)
    } else {
        chained.take(limit + 1).read_to_end(&mut out)
    };
    result.map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput
            || e.kind() == std::io::ErrorKind::InvalidData
            || e.kind() == std::io::ErrorKind::UnexpectedEof
        {
            DataError::format(path, format!("corrupt gzip stream: {e}"))
        } else {
            DataError::io(path, e)
        }
    })?;
    if out.len() as u64 > limit {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            message: format!("larger than {limit} bytes"),
        });
    }
    Ok(out)
}

/// Decompresses `bytes` if they start with the gzip magic (else returns them), failing past
/// `limit` bytes; `path` names the source in errors.
pub fn maybe_gunzip(path: &Path, bytes: &[u8], limit: u64) -> Result<Vec<u8>, DataError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        if bytes.len() as u64 > limit {
            return Err(DataError::TooLarge {
                path: path.to_path_buf(),
                message: format!("larger than {limit} bytes"),
            });
        }
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| DataError::format(path, format!("corrupt gzip stream: {e}")))?;
    if out.len() as u64 > limit {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            message: format!("larger than {limit} bytes"),
        });
    }
    Ok(out)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| DataError::io(path, e))
}

/// Hex of the first bytes of `b`, for error messages.
pub(crate) fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}
