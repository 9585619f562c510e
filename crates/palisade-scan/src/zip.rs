//! A strict, bounded zip reader written for scanning: it reads the central directory and every
//! local header itself, so that encrypted-flag tricks, duplicate names, CRC mismatches and
//! overlapping members are seen and reported rather than hidden by a library that refuses them.

use std::io::{self, Read};

use crate::blob::{Blob, BlobReader, read_exact_at, read_upto_at};

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// Most entries read from one archive.
const MAX_ENTRIES: u64 = 1_000_000;

/// Why an archive could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ZipError {
    /// No end-of-central-directory record.
    #[error("no end of central directory record")]
    NoEocd,
    /// A structure is out of bounds or inconsistent.
    #[error("{0}")]
    Malformed(String),
    /// Reading failed.
    #[error("read error: {0}")]
    Io(#[from] io::Error),
}

/// One member, as the central directory (or a local header) describes it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) flags: u16,
    pub(crate) method: u16,
    pub(crate) crc: u32,
    pub(crate) compressed_size: u64,
    pub(crate) size: u64,
    pub(crate) local_offset: u64,
    /// Where the member's data starts (after its local header).
    pub(crate) data_offset: u64,
    /// Differences between the central directory and the local header.
    pub(crate) header_mismatch: Option<String>,
    /// Whether `size` and `crc` are known (false for members found by walking local headers
    /// whose sizes follow the data).
    pub(crate) sizes_known: bool,
}

impl Entry {
    /// General-purpose flag bit 0 (traditional encryption), 6 (strong encryption) or 13
    /// (encrypted central directory).
    pub(crate) fn encrypted(&self) -> bool {
        self.flags & (1 | 0x40 | 0x2000) != 0
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.name.ends_with('/')
    }
}

/// An archive's layout.
#[derive(Debug)]
pub(crate) struct Archive {
    pub(crate) entries: Vec<Entry>,
    /// Offset of the first byte that belongs to the archive (non-zero: something is prepended).
    pub(crate) prefix: u64,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    b.get(i..i + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// Finds the end-of-central-directory record whose comment ends exactly at the end of the blob
/// (what a zip appended to another file has).
pub(crate) fn find_exact_eocd(blob: &dyn Blob) -> Option<u64> {
    let at = find_eocd(blob).ok()?;
    let rec = read_exact_at(blob, at, 22).ok()?;
    (at + 22 + u64::from(u16_at(&rec, 20)) == blob.len()).then_some(at)
}

/// Finds the end-of-central-directory record: its offset.
pub(crate) fn find_eocd(blob: &dyn Blob) -> Result<u64, ZipError> {
    let len = blob.len();
    if len < 22 {
        return Err(ZipError::NoEocd);
    }
    let window = (22 + 65_535u64).min(len);
    let start = len - window;
    let tail = read_exact_at(blob, start, window as usize)?;
    // The last record whose comment runs exactly to the end of the file wins; failing that, the
    // last signature at all (a comment that lies about its length is reported by the caller).
    let mut fallback = None;
    for i in memchr::memmem::rfind_iter(&tail, &EOCD_SIG.to_le_bytes()) {
        if i + 22 > tail.len() {
            continue;
        }
        let comment = u64::from(u16_at(&tail, i + 20));
        if i as u64 + 22 + comment == window {
            return Ok(start + i as u64);
        }
        fallback.get_or_insert(start + i as u64);
    }
    fallback.ok_or(ZipError::NoEocd)
}

/// Reads the central directory and every local header.
pub(crate) fn read_archive(blob: &dyn Blob) -> Result<Archive, ZipError> {
    let eocd_at = find_eocd(blob)?;
    let eocd = read_exact_at(blob, eocd_at, 22)?;
    let mut count = u64::from(u16_at(&eocd, 10));
    let mut cd_size = u64::from(u32_at(&eocd, 12));
    let mut cd_offset = u64::from(u32_at(&eocd, 16));
    let mut cd_end = eocd_at;
    // A ZIP64 end record sits just before the classic one whenever a locator says so, saturated
    // fields or not (PyTorch writes one for every archive); the central directory ends before it.
    if eocd_at >= 20 {
        let loc = read_exact_at(blob, eocd_at - 20, 20)?;
        if u32_at(&loc, 0) == ZIP64_LOCATOR_SIG {
            // The locator's offset is relative to the archive start; the record itself sits
            // right before the locator, which also gives the prefix.
            let mut z_at = eocd_at.checked_sub(20 + 56).unwrap_or(u64::MAX);
            let mut z = read_exact_at(blob, z_at, 56).unwrap_or_default();
            if u32_at(&z, 0) != ZIP64_EOCD_SIG {
                // A record with extensible data: trust the locator's offset.
                z_at = u64_at(&loc, 8);
                z = read_exact_at(blob, z_at, 56)
                    .map_err(|_| ZipError::Malformed("zip64 record out of bounds".into()))?;
                if u32_at(&z, 0) != ZIP64_EOCD_SIG {
                    return Err(ZipError::Malformed(
                        "bad zip64 end of central directory".into(),
                    ));
                }
            }
            if count == 0xffff || u64_at(&z, 32) == count {
                count = u64_at(&z, 32);
            }
            cd_size = u64_at(&z, 40);
            cd_offset = u64_at(&z, 48);
            cd_end = z_at;
        }
    }
    if count > MAX_ENTRIES {
        return Err(ZipError::Malformed(format!(
            "{count} entries is more than the limit"
        )));
    }
    // The archive may be preceded by other data (a self-extractor, a polyglot): offsets are then
    // relative to where the archive starts.
    let cd_start = cd_end
        .checked_sub(cd_size)
        .ok_or_else(|| ZipError::Malformed("central directory larger than the file".into()))?;
    let prefix = cd_start.checked_sub(cd_offset).ok_or_else(|| {
        ZipError::Malformed("central directory offset beyond its position".into())
    })?;
    let cd_len = usize::try_from(cd_size)
        .map_err(|_| ZipError::Malformed("central directory too large".into()))?;
    if cd_size > blob.len() {
        return Err(ZipError::Malformed(
            "central directory larger than the file".into(),
        ));
    }
    let cd = read_exact_at(blob, cd_start, cd_len)?;
    let mut entries = Vec::with_capacity(count.min(65_536) as usize);
    let mut p = 0usize;
    for i in 0..count {
        if u32_at(&cd, p) != CENTRAL_SIG || p + 46 > cd.len() {
            return Err(ZipError::Malformed(format!(
                "central directory entry {i} is malformed"
            )));
        }
        let flags = u16_at(&cd, p + 8);
        let method = u16_at(&cd, p + 10);
        let crc = u32_at(&cd, p + 16);
        let mut csize = u64::from(u32_at(&cd, p + 20));
        let mut size = u64::from(u32_at(&cd, p + 24));
        let n = usize::from(u16_at(&cd, p + 28));
        let e = usize::from(u16_at(&cd, p + 30));
        let c = usize::from(u16_at(&cd, p + 32));
        let mut local = u64::from(u32_at(&cd, p + 42));
        let name_b = cd
            .get(p + 46..p + 46 + n)
            .ok_or_else(|| ZipError::Malformed("entry name out of bounds".into()))?;
        let extra = cd
            .get(p + 46 + n..p + 46 + n + e)
            .ok_or_else(|| ZipError::Malformed("entry extra out of bounds".into()))?;
        // ZIP64 extended information: the fields that were saturated, in order.
        let mut q = 0;
        while q + 4 <= extra.len() {
            let id = u16_at(extra, q);
            let len = usize::from(u16_at(extra, q + 2));
            let body = extra.get(q + 4..q + 4 + len).unwrap_or(&[]);
            if id == 1 {
                let mut r = 0;
                if size == 0xffff_ffff && body.len() >= r + 8 {
                    size = u64_at(body, r);
                    r += 8;
                }
                if csize == 0xffff_ffff && body.len() >= r + 8 {
                    csize = u64_at(body, r);
                    r += 8;
                }
                if local == 0xffff_ffff && body.len() >= r + 8 {
                    local = u64_at(body, r);
                }
            }
            q += 4 + len;
        }
        let name = String::from_utf8_lossy(name_b).into_owned();
        let local_offset = prefix
            .checked_add(local)
            .ok_or_else(|| ZipError::Malformed(format!("{name}: local header offset overflows")))?;
        let (data_offset, header_mismatch) =
            local_header(blob, local_offset, name_b, method, csize)?;
        entries.push(Entry {
            name,
            flags,
            method,
            crc,
            compressed_size: csize,
            size,
            local_offset,
            data_offset,
            header_mismatch,
            sizes_known: true,
        });
        p += 46 + n + e + c;
    }
    Ok(Archive { entries, prefix })
}

fn local_header(
    blob: &dyn Blob,
    at: u64,
    name: &[u8],
    method: u16,
    csize: u64,
) -> Result<(u64, Option<String>), ZipError> {
    let h = read_exact_at(blob, at, 30)
        .map_err(|_| ZipError::Malformed("local header out of bounds".into()))?;
    if u32_at(&h, 0) != LOCAL_SIG {
        return Err(ZipError::Malformed(format!(
            "no local header at offset {at}"
        )));
    }
    let n = u64::from(u16_at(&h, 26));
    let e = u64::from(u16_at(&h, 28));
    let lname = read_upto_at(blob, at + 30, n as usize)?;
    let mut mismatch = Vec::new();
    if lname != name {
        mismatch.push(format!("local name {:?}", String::from_utf8_lossy(&lname)));
    }
    if u16_at(&h, 8) != method {
        mismatch.push(format!("local compression method {}", u16_at(&h, 8)));
    }
    let lflags = u16_at(&h, 6);
    let lcsize = u64::from(u32_at(&h, 18));
    if lflags & 8 == 0 && lcsize != csize && lcsize != 0xffff_ffff {
        mismatch.push(format!("local compressed size {lcsize}"));
    }
    let data = at + 30 + n + e;
    if data.checked_add(csize).is_none_or(|end| end > blob.len()) {
        return Err(ZipError::Malformed(format!(
            "member {:?} data runs past the end of the file",
            String::from_utf8_lossy(name)
        )));
    }
    Ok((data, (!mismatch.is_empty()).then(|| mismatch.join(", "))))
}

/// Walks local headers from the start of the file, for archives whose central directory is
/// missing or broken. Stops at the first header it cannot follow.
pub(crate) fn walk_local_headers(blob: &dyn Blob) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut at = 0u64;
    while out.len() < 100_000 {
        let Ok(h) = read_exact_at(blob, at, 30) else {
            break;
        };
        if u32_at(&h, 0) != LOCAL_SIG {
            break;
        }
        let flags = u16_at(&h, 6);
        let method = u16_at(&h, 8);
        let crc = u32_at(&h, 14);
        let csize = u64::from(u32_at(&h, 18));
        let size = u64::from(u32_at(&h, 22));
        let n = u64::from(u16_at(&h, 26));
        let e = u64::from(u16_at(&h, 28));
        let Ok(name) = read_exact_at(blob, at + 30, n as usize) else {
            break;
        };
        let data_offset = at + 30 + n + e;
        if flags & 8 != 0
            || data_offset
                .checked_add(csize)
                .is_none_or(|end| end > blob.len())
        {
            // Sizes in a trailing data descriptor: the end of the data is unknown.
            out.push(Entry {
                name: String::from_utf8_lossy(&name).into_owned(),
                flags,
                method,
                crc,
                compressed_size: blob.len().saturating_sub(data_offset),
                size,
                local_offset: at,
                data_offset,
                header_mismatch: None,
                sizes_known: false,
            });
            break;
        }
        out.push(Entry {
            name: String::from_utf8_lossy(&name).into_owned(),
            flags,
            method,
            crc,
            compressed_size: csize,
            size,
            local_offset: at,
            data_offset,
            header_mismatch: None,
            sizes_known: true,
        });
        at = data_offset + csize;
    }
    out
}

/// A reader over a member's uncompressed bytes that counts them and computes their CRC-32.
pub(crate) struct MemberReader<'a> {
    inner: Box<dyn Read + 'a>,
    hasher: crc32fast::Hasher,
    pub(crate) read: u64,
    limit: u64,
}

impl MemberReader<'_> {
    /// The CRC-32 of what has been read so far.
    pub(crate) fn crc(&self) -> u32 {
        self.hasher.clone().finalize()
    }
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(
                "member decompresses beyond the size limit",
            ));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Opens a member for reading, ignoring the encryption flag (the data is read as stored; the
/// caller decides what an encrypted entry means). `limit` bounds the decompressed size.
pub(crate) fn open<'a>(
    blob: &'a dyn Blob,
    e: &Entry,
    limit: u64,
) -> Result<MemberReader<'a>, ZipError> {
    let raw = BlobReader::new(
        blob,
        e.data_offset,
        e.data_offset.saturating_add(e.compressed_size),
    );
    let inner: Box<dyn Read + 'a> = match e.method {
        0 => Box::new(raw),
        8 => Box::new(flate2::read::DeflateDecoder::new(raw)),
        m => {
            return Err(ZipError::Malformed(format!(
                "member {:?}: unsupported compression method {m}",
                e.name
            )));
        }
    };
    Ok(MemberReader {
        inner,
        hasher: crc32fast::Hasher::new(),
        read: 0,
        limit,
    })
}
