//! Manifests: the (name, digest) list of a model under a serialization method (`files` or
//! `shards`), computed in parallel over files and shards.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::hashing::{self, HashAlgorithm};
use crate::walk::{self, ModelFile, WalkPolicy};

/// The OMS default shard size (1 GB).
pub const DEFAULT_SHARD_SIZE: u64 = 1_000_000_000;

/// How files map to resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Serialization {
    /// One resource per file.
    Files,
    /// One resource per `shard_size`-byte range of each file, named `path:start:end`.
    Shards {
        /// Shard size in bytes (positive).
        shard_size: u64,
    },
}

/// One signed resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// File name, or `path:start:end` for a shard.
    pub name: String,
    /// Raw digest bytes.
    pub digest: Vec<u8>,
}

/// A unit of hashing work: a whole file or a byte range of it.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Resource name.
    pub name: String,
    /// File to read.
    pub path: PathBuf,
    /// Start offset.
    pub start: u64,
    /// Length, or `None` for "the whole file".
    pub len: Option<u64>,
}

/// The units (resources) a file yields under a serialization; empty files yield no shards.
pub fn units_of(file: &ModelFile, ser: Serialization) -> Result<Vec<Unit>> {
    match ser {
        Serialization::Files => Ok(vec![Unit {
            name: file.name.clone(),
            path: file.path.clone(),
            start: 0,
            len: None,
        }]),
        Serialization::Shards { shard_size } => {
            if shard_size == 0 {
                return Err(Error::InvalidArgument("shard size must be positive".into()));
            }
            let mut out = Vec::new();
            let mut start = 0u64;
            while start < file.len {
                let end = start.saturating_add(shard_size).min(file.len);
                out.push(Unit {
                    name: format!("{}:{start}:{end}", file.name),
                    path: file.path.clone(),
                    start,
                    len: Some(end - start),
                });
                start = end;
            }
            Ok(out)
        }
    }
}

/// Hashes every unit on rayon's pool; results in the order of `units`.
/// `progress` is called with the byte count of each finished unit.
pub fn hash_units(
    units: &[Unit],
    algo: HashAlgorithm,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Vec<Vec<u8>>> {
    units
        .par_iter()
        .map(|u| {
            let d = match u.len {
                None => hashing::hash_file(&u.path, algo)?,
                Some(len) => hashing::hash_range(&u.path, algo, u.start, len)?,
            };
            if let Some(p) = progress {
                p(u.len
                    .unwrap_or_else(|| std::fs::metadata(&u.path).map(|m| m.len()).unwrap_or(0)));
            }
            Ok(d)
        })
        .collect()
}

/// Enumerates and hashes a model; resources sorted by name (code-point order).
pub fn compute(
    root: &Path,
    policy: &WalkPolicy,
    ser: Serialization,
    algo: HashAlgorithm,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Vec<Resource>> {
    let files = walk::enumerate(root, policy)?;
    let mut units = Vec::new();
    for f in &files {
        units.extend(units_of(f, ser)?);
    }
    if units.is_empty() {
        return Err(Error::model(
            root,
            "no file to sign (empty model, or every file is ignored or empty)",
        ));
    }
    let digests = hash_units(&units, algo, progress)?;
    let mut res: Vec<Resource> = units
        .into_iter()
        .zip(digests)
        .map(|(u, digest)| Resource {
            name: u.name,
            digest,
        })
        .collect();
    res.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(res)
}

/// The OMS root digest: SHA-256 over the concatenated raw digests, in the given order.
pub fn root_digest<'a>(digests: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for d in digests {
        h.update(d);
    }
    h.finalize().into()
}

/// Splits a shard resource name `path:start:end` at its last two colons.
pub fn parse_shard_name(name: &str) -> Option<(&str, u64, u64)> {
    let (rest, end) = name.rsplit_once(':')?;
    let (path, start) = rest.rsplit_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if path.is_empty() || !digits(start) || !digits(end) {
        return None;
    }
    let (start, end) = (start.parse().ok()?, end.parse().ok()?);
    (start < end).then_some((path, start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_parse_from_the_right() {
        assert_eq!(parse_shard_name("a:b:0:64"), Some(("a:b", 0, 64)));
        assert_eq!(parse_shard_name("x:64:128"), Some(("x", 64, 128)));
        assert_eq!(parse_shard_name("x:64:64"), None);
        assert_eq!(parse_shard_name("x:-1:3"), None);
        assert_eq!(parse_shard_name(":0:3"), None);
        assert_eq!(parse_shard_name("x:3"), None);
    }

    #[test]
    fn shards_cover_the_file_exactly() {
        let f = ModelFile {
            name: "w".into(),
            path: "w".into(),
            len: 130,
        };
        let u = units_of(&f, Serialization::Shards { shard_size: 64 }).unwrap();
        let names: Vec<_> = u.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["w:0:64", "w:64:128", "w:128:130"]);
        let empty = ModelFile { len: 0, ..f };
        assert!(
            units_of(&empty, Serialization::Shards { shard_size: 64 })
                .unwrap()
                .is_empty()
        );
    }
}
