//! Streaming file hashing: SHA-256, BLAKE2b-512 and BLAKE3 over whole files or byte ranges
//! (shards), many at once on rayon's pool. Memory is bounded: one fixed buffer per task.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use blake2::Blake2b512;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Read buffer per hashing task. Bounded memory: at most one per rayon thread is alive.
///
/// Small on purpose: a buffer that stays in the core's L2 cache is filled by `read` and then
/// hashed without a round trip to memory. Measured on a 1 GiB file (SHA-256, one core): 64 KiB
/// reads take 0.95 s wall (0.16 s in the kernel), 1 MiB reads 1.47 s (0.68 s in the kernel).
pub(crate) const BUF_LEN: usize = 64 << 10;

/// A file-hashing algorithm of the OMS algorithm registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// SHA-256 (the default, required by OMS).
    Sha256,
    /// BLAKE2b with 512-bit output.
    Blake2b,
    /// BLAKE3 with 256-bit output.
    Blake3,
}

impl HashAlgorithm {
    /// The identifier used in `hash_type` and `algorithm` fields.
    pub fn id(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Blake2b => "blake2b",
            HashAlgorithm::Blake3 => "blake3",
        }
    }

    /// Parses an identifier (`blake2` is accepted as an alias of `blake2b`).
    pub fn from_id(id: &str) -> Option<Self> {
        match id {
            "sha256" => Some(HashAlgorithm::Sha256),
            "blake2b" | "blake2" => Some(HashAlgorithm::Blake2b),
            "blake3" => Some(HashAlgorithm::Blake3),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 | HashAlgorithm::Blake3 => 32,
            HashAlgorithm::Blake2b => 64,
        }
    }
}

impl std::fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

impl std::str::FromStr for HashAlgorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        HashAlgorithm::from_id(s).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown hash algorithm {s:?} (sha256, blake2b, blake3)"
            ))
        })
    }
}

/// An incremental hasher for one of the [`HashAlgorithm`]s.
#[derive(Debug, Clone)]
pub enum Hasher {
    /// SHA-256.
    Sha256(Sha256),
    /// BLAKE2b-512.
    Blake2b(Blake2b512),
    /// BLAKE3.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algo: HashAlgorithm) -> Self {
        match algo {
            HashAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            HashAlgorithm::Blake2b => Hasher::Blake2b(Blake2b512::new()),
            HashAlgorithm::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Blake2b(h) => h.update(data),
            // One thread per file: files are hashed in parallel with each other, and
            // `update_rayon` over large buffers was 2x slower on a 1 GiB file (memory-bound reads).
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest.
    pub fn finalize(self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Blake2b(h) => h.finalize().to_vec(),
            Hasher::Blake3(h) => h.finalize().as_bytes().to_vec(),
        }
    }
}

/// Hashes `len` bytes of `path` starting at `start`. Fails if the file is shorter than that
/// (it changed while being read).
pub fn hash_range(path: &Path, algo: HashAlgorithm, start: u64, len: u64) -> Result<Vec<u8>> {
    hash_span(path, algo, start, Some(len))
}

/// Hashes `path` from `start` to `start + len`, or to end of file when `len` is `None`.
fn hash_span(path: &Path, algo: HashAlgorithm, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    if start > 0 {
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(path, e))?;
    }
    // A small file gets a buffer of its own size.
    let size_hint = match len {
        Some(l) => l,
        None => f.metadata().map(|m| m.len()).unwrap_or(u64::MAX),
    };
    let cap = usize::try_from(size_hint.min(BUF_LEN as u64))
        .unwrap_or(BUF_LEN)
        .max(1);
    let mut buf = vec![0u8; cap];
    let mut hasher = Hasher::new(algo);
    let mut left = len.unwrap_or(u64::MAX);
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = read_full(&mut f, &mut buf[..want]).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            if len.is_none() {
                break;
            }
            return Err(Error::model(path, "file shrank while it was being hashed"));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.finalize())
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Hashes a whole file (to end of file as it is when read), streaming.
pub fn hash_file(path: &Path, algo: HashAlgorithm) -> Result<Vec<u8>> {
    hash_span(path, algo, 0, None)
}

/// SHA-256 of a byte slice.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            hex::encode(hash_file(&p, HashAlgorithm::Sha256).unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(hash_file(&p, HashAlgorithm::Blake3).unwrap()),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert!(
            hex::encode(hash_file(&p, HashAlgorithm::Blake2b).unwrap())
                .starts_with("ba80a53f981c4d0d")
        );
    }

    #[test]
    fn ranges_match_slices_and_large_blake3_matches_serial() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(20u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        for algo in [
            HashAlgorithm::Sha256,
            HashAlgorithm::Blake2b,
            HashAlgorithm::Blake3,
        ] {
            let mut h = Hasher::new(algo);
            h.update(&data[100..3_000_000]);
            assert_eq!(hash_range(&p, algo, 100, 2_999_900).unwrap(), h.finalize());
        }
        let serial = blake3::hash(&data);
        assert_eq!(
            hash_file(&p, HashAlgorithm::Blake3).unwrap(),
            serial.as_bytes().to_vec()
        );
        assert!(hash_range(&p, HashAlgorithm::Sha256, 0, data.len() as u64 + 1).is_err());
    }
}
