//! A versioned model registry on embedded SQLite with content-addressed blob storage, in the
//! manner of MLflow's model registry: models have numbered versions and named aliases
//! (`production`, `staging`, any name); an alias can be moved and rolled back; every change is
//! an event with who and when.
//!
//! Layout under the registry root: `registry.db` (SQLite) and `blobs/sha256/<2 hex>/<64 hex>`
//! (`.age` when sealed). A blob is named by the SHA-256 of its plaintext.
//!
//! **Invariant:** a version enters only with an [`oms::Verified`] (its signature verified against
//! a trusted key) and a [`Clean`] (a clean scan by `palisade-scan`); while storing, every byte is re-hashed and
//! checked against both, so the stored bytes are the bytes that were verified and scanned.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rusqlite::{OptionalExtension, params};
use sha2::Digest;

use crate::atomic::AtomicFile;
use crate::error::{Error, Result};
use crate::gate::Clean;
use crate::hashing::{HashAlgorithm, Hasher};
use crate::manifest::{self, Serialization};
use crate::oms::Verified;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, created_at TEXT NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL REFERENCES models(name), version INTEGER NOT NULL,
    kind TEXT NOT NULL, root_digest TEXT NOT NULL, hash_type TEXT NOT NULL,
    key_hint TEXT NOT NULL, signature BLOB NOT NULL, sealed INTEGER NOT NULL,
    provenance BLOB, created_at TEXT NOT NULL, created_by TEXT NOT NULL,
    PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS version_files (
    model TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (model, version, name),
    FOREIGN KEY (model, version) REFERENCES versions(model, version));
CREATE TABLE IF NOT EXISTS aliases (
    model TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES versions(model, version));
CREATE TABLE IF NOT EXISTS alias_stack (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, alias TEXT NOT NULL,
    version INTEGER NOT NULL, active INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, at TEXT NOT NULL,
    actor TEXT NOT NULL, action TEXT NOT NULL, version INTEGER, detail TEXT NOT NULL);
";

/// Selects a version: a number, an alias, or the latest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef {
    /// Version number.
    Number(u32),
    /// An alias name.
    Alias(String),
    /// The highest version.
    Latest,
}

impl std::str::FromStr for VersionRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "latest" {
            return Ok(VersionRef::Latest);
        }
        if let Ok(n) = s.parse::<u32>() {
            return Ok(VersionRef::Number(n));
        }
        check_name(s, "alias")?;
        Ok(VersionRef::Alias(s.to_string()))
    }
}

/// One stored file of a version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredFile {
    /// Relative name in the model.
    pub name: String,
    /// SHA-256 of its bytes (the blob name).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// A version's record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    /// Model name.
    pub model: String,
    /// Version number (from 1).
    pub version: u32,
    /// `dir` or `file`.
    pub kind: String,
    /// OMS root digest (subject) of the signature.
    pub root_digest: String,
    /// OMS hash type of the signature.
    pub hash_type: String,
    /// Hint of the key whose signature admitted it.
    pub key_hint: String,
    /// Whether its blobs are sealed (age).
    pub sealed: bool,
    /// Whether a verified provenance statement is attached.
    pub has_provenance: bool,
    /// When it was added (RFC 3339, UTC).
    pub created_at: String,
    /// Who added it.
    pub created_by: String,
    /// Aliases pointing at it.
    pub aliases: Vec<String>,
    /// Its files.
    pub files: Vec<StoredFile>,
}

/// A model's summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelSummary {
    /// Name.
    pub name: String,
    /// Number of versions.
    pub versions: u32,
    /// Highest version.
    pub latest: u32,
    /// Alias → version.
    pub aliases: BTreeMap<String, u32>,
}

/// One recorded change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who.
    pub actor: String,
    /// What: `add_version`, `set_alias`, `rollback`, `attach_provenance`, `remove_alias`.
    pub action: String,
    /// Version concerned, if any.
    pub version: Option<u32>,
    /// Details.
    pub detail: String,
}

/// Options for adding a version.
#[derive(Debug, Default)]
pub struct AddOptions {
    /// Who is adding it (recorded).
    pub actor: String,
    /// Seal the blobs to these age recipients.
    pub seal_to: Vec<age::x25519::Recipient>,
}

/// The registry: an SQLite database and a blob directory.
#[derive(Debug)]
pub struct Registry {
    root: PathBuf,
    db: rusqlite::Connection,
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::Registry(e.to_string())
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

/// Model and alias names: 1–128 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
fn check_name(s: &str, what: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(['.', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} {s:?}: use 1-128 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// A stored file name must be a plain relative path (it is joined to an export directory).
fn check_rel_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::Registry(format!(
            "unsafe file name {name:?} in manifest"
        )));
    }
    Ok(())
}

/// What the signature says a file's bytes must hash to.
enum Expect {
    File(String),
    Shards(BTreeMap<u64, (u64, String)>),
}

impl Registry {
    /// Opens (creating if needed) the registry at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(|e| Error::io(root, e))?;
        let db = rusqlite::Connection::open(root.join("registry.db")).map_err(db_err)?;
        db.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;
        db.execute_batch("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;")
            .map_err(db_err)?;
        db.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(Registry {
            root: root.to_path_buf(),
            db,
        })
    }

    fn blob_path(&self, sha: &str, sealed: bool) -> PathBuf {
        blob_path(&self.root, sha, sealed)
    }

    /// Adds a new version of `model` from a verified, scanned model directory (or file).
    pub fn add_version(
        &mut self,
        model: &str,
        verified: &Verified,
        scan: &Clean,
        opts: &AddOptions,
    ) -> Result<VersionInfo> {
        check_name(model, "model name")?;
        let m = verified.manifest();
        let root = verified.model();
        let single = root.is_file();
        // Group the signed resources by file.
        let mut files: BTreeMap<String, Expect> = BTreeMap::new();
        for (name, digest) in &m.resources {
            match m.serialization {
                Serialization::Files => {
                    files.insert(name.clone(), Expect::File(digest.clone()));
                }
                Serialization::Shards { .. } => {
                    let (path, start, end) = manifest::parse_shard_name(name)
                        .ok_or_else(|| Error::Registry(format!("bad shard name {name:?}")))?;
                    let e = files
                        .entry(path.to_string())
                        .or_insert_with(|| Expect::Shards(BTreeMap::new()));
                    if let Expect::Shards(s) = e {
                        s.insert(start, (end, digest.clone()));
                    }
                }
            }
        }
        for name in files.keys() {
            check_rel_name(name)?;
        }
        let sealed = !opts.seal_to.is_empty();
        let blob_root = self.root.clone();
        let stored: Vec<StoredFile> = files
            .par_iter()
            .map(|(name, expect)| {
                let path = if single {
                    root.to_path_buf()
                } else {
                    root.join(name)
                };
                store_blob(&blob_root, &path, name, m.hash, expect, scan, &opts.seal_to)
            })
            .collect::<Result<_>>()?;
        let at = now();
        let tx = self.db.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT OR IGNORE INTO models (name, created_at, created_by) VALUES (?1, ?2, ?3)",
            params![model, at, opts.actor],
        )
        .map_err(db_err)?;
        let version: u32 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE model = ?1",
                params![model],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        tx.execute(
            "INSERT INTO versions (model, version, kind, root_digest, hash_type, key_hint, signature, sealed, created_at, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                model,
                version,
                if single { "file" } else { "dir" },
                m.root_digest,
                m.hash.id(),
                m.key_hint,
                verified.bundle(),
                sealed,
                at,
                opts.actor
            ],
        )
        .map_err(db_err)?;
        for f in &stored {
            tx.execute(
                "INSERT INTO version_files (model, version, name, sha256, size) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![model, version, f.name, f.sha256, i64::try_from(f.size).unwrap_or(i64::MAX)],
            )
            .map_err(db_err)?;
        }
        record(
            &tx,
            model,
            &at,
            &opts.actor,
            "add_version",
            Some(version),
            &format!(
                "{} files, key {}, root {}{}",
                stored.len(),
                m.key_hint,
                m.root_digest,
                if sealed { ", sealed" } else { "" }
            ),
        )?;
        tx.commit().map_err(db_err)?;
        self.show(model, &VersionRef::Number(version))
    }

    fn resolve(&self, model: &str, r: &VersionRef) -> Result<u32> {
        let v: Option<u32> = match r {
            VersionRef::Number(n) => self
                .db
                .query_row(
                    "SELECT version FROM versions WHERE model = ?1 AND version = ?2",
                    params![model, n],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?,
            VersionRef::Alias(a) => self
                .db
                .query_row(
                    "SELECT version FROM aliases WHERE model = ?1 AND alias = ?2",
                    params![model, a],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?,
            VersionRef::Latest => self
                .db
                .query_row(
                    "SELECT MAX(version) FROM versions WHERE model = ?1",
                    params![model],
                    |r| r.get(0),
                )
                .map_err(db_err)?,
        };
        v.ok_or_else(|| {
            Error::Registry(match r {
                VersionRef::Number(n) => format!("{model}: no version {n}"),
                VersionRef::Alias(a) => format!("{model}: no alias {a:?}"),
                VersionRef::Latest => format!("no model {model:?}"),
            })
        })
    }

    /// A version's record.
    pub fn show(&self, model: &str, r: &VersionRef) -> Result<VersionInfo> {
        let version = self.resolve(model, r)?;
        let mut info = self
            .db
            .query_row(
                "SELECT kind, root_digest, hash_type, key_hint, sealed, provenance IS NOT NULL, created_at, created_by
                 FROM versions WHERE model = ?1 AND version = ?2",
                params![model, version],
                |r| {
                    Ok(VersionInfo {
                        model: model.to_string(),
                        version,
                        kind: r.get(0)?,
                        root_digest: r.get(1)?,
                        hash_type: r.get(2)?,
                        key_hint: r.get(3)?,
                        sealed: r.get(4)?,
                        has_provenance: r.get(5)?,
                        created_at: r.get(6)?,
                        created_by: r.get(7)?,
                        aliases: Vec::new(),
                        files: Vec::new(),
                    })
                },
            )
            .map_err(db_err)?;
        let mut st = self
            .db
            .prepare("SELECT alias FROM aliases WHERE model = ?1 AND version = ?2 ORDER BY alias")
            .map_err(db_err)?;
        info.aliases = st
            .query_map(params![model, version], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(db_err)?;
        let mut st = self
            .db
            .prepare("SELECT name, sha256, size FROM version_files WHERE model = ?1 AND version = ?2 ORDER BY name")
            .map_err(db_err)?;
        info.files = st
            .query_map(params![model, version], |r| {
                Ok(StoredFile {
                    name: r.get(0)?,
                    sha256: r.get(1)?,
                    size: {
                        let n: i64 = r.get(2)?;
                        u64::try_from(n)
                            .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(2, n))?
                    },
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(db_err)?;
        Ok(info)
    }

    /// The signature bundle that admitted a version.
    pub fn signature(&self, model: &str, r: &VersionRef) -> Result<Vec<u8>> {
        let v = self.resolve(model, r)?;
        self.db
            .query_row(
                "SELECT signature FROM versions WHERE model = ?1 AND version = ?2",
                params![model, v],
                |r| r.get(0),
            )
            .map_err(db_err)
    }

    /// The provenance bundle attached to a version, if any.
    pub fn provenance(&self, model: &str, r: &VersionRef) -> Result<Option<Vec<u8>>> {
        let v = self.resolve(model, r)?;
        self.db
            .query_row(
                "SELECT provenance FROM versions WHERE model = ?1 AND version = ?2",
                params![model, v],
                |r| r.get(0),
            )
            .map_err(db_err)
    }

    /// Attaches a provenance bundle to a version (the caller has verified it against the version:
    /// see [`crate::provenance::verify_chain`]).
    pub fn attach_provenance(
        &mut self,
        model: &str,
        r: &VersionRef,
        bundle: &[u8],
        actor: &str,
    ) -> Result<u32> {
        let v = self.resolve(model, r)?;
        let at = now();
        let tx = self.db.transaction().map_err(db_err)?;
        tx.execute(
            "UPDATE versions SET provenance = ?3 WHERE model = ?1 AND version = ?2",
            params![model, v, bundle],
        )
        .map_err(db_err)?;
        record(&tx, model, &at, actor, "attach_provenance", Some(v), "")?;
        tx.commit().map_err(db_err)?;
        Ok(v)
    }

    /// All models.
    pub fn list(&self) -> Result<Vec<ModelSummary>> {
        let mut st = self
            .db
            .prepare(
                "SELECT model, COUNT(*), MAX(version) FROM versions GROUP BY model ORDER BY model",
            )
            .map_err(db_err)?;
        let mut out: Vec<ModelSummary> = st
            .query_map([], |r| {
                Ok(ModelSummary {
                    name: r.get(0)?,
                    versions: r.get(1)?,
                    latest: r.get(2)?,
                    aliases: BTreeMap::new(),
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(db_err)?;
        let mut st = self
            .db
            .prepare("SELECT alias, version FROM aliases WHERE model = ?1")
            .map_err(db_err)?;
        for m in &mut out {
            m.aliases = st
                .query_map(params![m.name], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(db_err)?;
        }
        Ok(out)
    }

    /// Points `alias` at `version` (recorded; the previous target is kept for rollback).
    pub fn set_alias(&mut self, model: &str, alias: &str, version: u32, actor: &str) -> Result<()> {
        check_name(alias, "alias")?;
        if alias == "latest" || alias.parse::<u32>().is_ok() {
            return Err(Error::InvalidArgument(format!(
                "{alias:?} cannot be an alias name"
            )));
        }
        self.resolve(model, &VersionRef::Number(version))?;
        let at = now();
        let tx = self.db.transaction().map_err(db_err)?;
        let prev: Option<u32> = tx
            .query_row(
                "SELECT version FROM aliases WHERE model = ?1 AND alias = ?2",
                params![model, alias],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        tx.execute(
            "INSERT INTO alias_stack (model, alias, version, active) VALUES (?1, ?2, ?3, 1)",
            params![model, alias, version],
        )
        .map_err(db_err)?;
        tx.execute(
            "INSERT INTO aliases (model, alias, version) VALUES (?1, ?2, ?3)
             ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version",
            params![model, alias, version],
        )
        .map_err(db_err)?;
        let detail = match prev {
            Some(p) => format!("{alias}: {p} -> {version}"),
            None => format!("{alias}: -> {version}"),
        };
        record(&tx, model, &at, actor, "set_alias", Some(version), &detail)?;
        tx.commit().map_err(db_err)
    }

    /// Moves `alias` back to the version it pointed at before its current one (repeatable: each
    /// rollback steps one further back). Returns (from, to).
    pub fn rollback(&mut self, model: &str, alias: &str, actor: &str) -> Result<(u32, u32)> {
        let at = now();
        let tx = self.db.transaction().map_err(db_err)?;
        let mut st = tx
            .prepare("SELECT id, version FROM alias_stack WHERE model = ?1 AND alias = ?2 AND active = 1 ORDER BY id DESC LIMIT 2")
            .map_err(db_err)?;
        let rows: Vec<(i64, u32)> = st
            .query_map(params![model, alias], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(db_err)?;
        drop(st);
        let (cur_id, from, to) = match rows.as_slice() {
            [(id, from), (_, to)] => (*id, *from, *to),
            [_] => {
                return Err(Error::Registry(format!(
                    "{model}: alias {alias:?} has no earlier version to roll back to"
                )));
            }
            _ => return Err(Error::Registry(format!("{model}: no alias {alias:?}"))),
        };
        tx.execute(
            "UPDATE alias_stack SET active = 0 WHERE id = ?1",
            params![cur_id],
        )
        .map_err(db_err)?;
        tx.execute(
            "UPDATE aliases SET version = ?3 WHERE model = ?1 AND alias = ?2",
            params![model, alias, to],
        )
        .map_err(db_err)?;
        record(
            &tx,
            model,
            &at,
            actor,
            "rollback",
            Some(to),
            &format!("{alias}: {from} -> {to}"),
        )?;
        tx.commit().map_err(db_err)?;
        Ok((from, to))
    }

    /// The model's change history, oldest first.
    pub fn history(&self, model: &str) -> Result<Vec<Event>> {
        let mut st = self
            .db
            .prepare("SELECT at, actor, action, version, detail FROM events WHERE model = ?1 ORDER BY id")
            .map_err(db_err)?;
        let ev: Vec<Event> = st
            .query_map(params![model], |r| {
                Ok(Event {
                    at: r.get(0)?,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    version: r.get(3)?,
                    detail: r.get(4)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(db_err)?;
        if ev.is_empty() {
            return Err(Error::Registry(format!("no model {model:?}")));
        }
        Ok(ev)
    }

    /// Writes a version's files to `dest` (a new directory, or a file for single-file models),
    /// checking every blob's SHA-256 on the way out. Sealed blobs need `identities`.
    /// Atomic: the files appear at `dest` only once all are written and checked.
    pub fn export(
        &self,
        model: &str,
        r: &VersionRef,
        dest: &Path,
        identities: &[age::x25519::Identity],
    ) -> Result<VersionInfo> {
        let info = self.show(model, r)?;
        if dest.exists() {
            return Err(Error::InvalidArgument(format!(
                "{} already exists",
                dest.display()
            )));
        }
        if info.kind == "file" {
            let f = info
                .files
                .first()
                .ok_or_else(|| Error::Registry("version without files".into()))?;
            let mut out = AtomicFile::create(dest)?;
            self.copy_blob_out(f, info.sealed, identities, &mut out)?;
            out.commit()?;
            return Ok(info);
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".palisade-export-")
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        for f in &info.files {
            check_rel_name(&f.name)?;
            let p = tmp.path().join(&f.name);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
            let mut out = AtomicFile::create(&p)?;
            self.copy_blob_out(f, info.sealed, identities, &mut out)?;
            out.commit()?;
        }
        let tmp_path = tmp.keep();
        std::fs::rename(&tmp_path, dest).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp_path);
            Error::io(dest, e)
        })?;
        Ok(info)
    }

    fn copy_blob_out(
        &self,
        f: &StoredFile,
        sealed: bool,
        identities: &[age::x25519::Identity],
        out: &mut AtomicFile,
    ) -> Result<()> {
        let path = self.blob_path(&f.sha256, sealed);
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut reader: Box<dyn Read> = if sealed {
            if identities.is_empty() {
                return Err(Error::Crypto(format!(
                    "{}: the version is sealed: an identity is needed",
                    f.name
                )));
            }
            let dec = age::Decryptor::new_buffered(BufReader::new(file))
                .map_err(|e| Error::Crypto(format!("{}: {e}", path.display())))?;
            Box::new(
                dec.decrypt(identities.iter().map(|i| i as &dyn age::Identity))
                    .map_err(|e| Error::Crypto(format!("{}: {e}", f.name)))?,
            )
        } else {
            Box::new(BufReader::new(file))
        };
        let mut sha = sha2::Sha256::new();
        let mut buf = vec![0u8; crate::hashing::BUF_LEN];
        let mut size = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            sha.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| Error::io(&path, e))?;
            size += n as u64;
        }
        if hex::encode(sha.finalize()) != f.sha256 || size != f.size {
            return Err(Error::Registry(format!(
                "blob of {} is corrupt (digest or size differs from the record)",
                f.name
            )));
        }
        Ok(())
    }
}

/// Streams one file into the blob store, checking its bytes against the signature and the scan.
fn store_blob(
    root: &Path,
    path: &Path,
    name: &str,
    algo: HashAlgorithm,
    expect: &Expect,
    scan: &Clean,
    seal_to: &[age::x25519::Recipient],
) -> Result<StoredFile> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::with_capacity(crate::hashing::BUF_LEN, f);
    let staging = root.join("blobs/sha256");
    let mut tmp = AtomicFile::create(&staging.join("incoming"))?;
    let mut sha = sha2::Sha256::new();
    let mut checker = DigestChecker::new(algo, expect);
    let mut size = 0u64;
    let mut buf = vec![0u8; crate::hashing::BUF_LEN];
    {
        let sink: Box<dyn Write + '_> = if seal_to.is_empty() {
            Box::new(&mut tmp)
        } else {
            let enc =
                age::Encryptor::with_recipients(seal_to.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| Error::Crypto(e.to_string()))?;
            Box::new(AgeSink(Some(
                enc.wrap_output(&mut tmp).map_err(|e| Error::io(path, e))?,
            )))
        };
        let mut sink = sink;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(path, e)),
            };
            sha.update(&buf[..n]);
            checker.update(&buf[..n]);
            sink.write_all(&buf[..n]).map_err(|e| Error::io(path, e))?;
            size += n as u64;
        }
        sink.flush().map_err(|e| Error::io(path, e))?;
    }
    checker.finish(name, size)?;
    let sha_hex = hex::encode(sha.finalize());
    if !scan.covers(path, &sha_hex) {
        return Err(Error::Registry(format!(
            "{}: not covered by the clean scan (not scanned, or changed since)",
            path.display()
        )));
    }
    let dest = blob_path(root, &sha_hex, !seal_to.is_empty());
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if !dest.exists() {
        // Content-addressed: an existing blob already holds these bytes.
        tmp.commit_as(&dest)?;
    }
    Ok(StoredFile {
        name: name.to_string(),
        sha256: sha_hex,
        size,
    })
}

fn blob_path(root: &Path, sha: &str, sealed: bool) -> PathBuf {
    let dir = root.join("blobs/sha256").join(sha.get(..2).unwrap_or("xx"));
    dir.join(if sealed {
        format!("{sha}.age")
    } else {
        sha.to_string()
    })
}

fn record(
    tx: &rusqlite::Transaction<'_>,
    model: &str,
    at: &str,
    actor: &str,
    action: &str,
    version: Option<u32>,
    detail: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO events (model, at, actor, action, version, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![model, at, actor, action, version, detail],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Finishes the age stream when the sink is flushed for the last time.
struct AgeSink<W: Write>(Option<age::stream::StreamWriter<W>>);

impl<W: Write> Write for AgeSink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("age stream already finished")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.take() {
            Some(w) => w.finish().map(drop),
            None => Ok(()),
        }
    }
}

/// Checks streamed bytes against the signed digest(s) of one file.
struct DigestChecker<'a> {
    algo: HashAlgorithm,
    expect: &'a Expect,
    whole: Option<Hasher>,
    shard: Option<(u64, u64, Hasher)>,
    offset: u64,
    shard_mismatch: Option<String>,
}

impl<'a> DigestChecker<'a> {
    fn new(algo: HashAlgorithm, expect: &'a Expect) -> Self {
        DigestChecker {
            algo,
            expect,
            whole: matches!(expect, Expect::File(_)).then(|| Hasher::new(algo)),
            shard: None,
            offset: 0,
            shard_mismatch: None,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        if let Some(h) = &mut self.whole {
            h.update(data);
            return;
        }
        let Expect::Shards(shards) = self.expect else {
            return;
        };
        while !data.is_empty() {
            if self.shard.is_none() {
                match shards.get(&self.offset) {
                    Some((end, _)) => {
                        self.shard = Some((self.offset, *end, Hasher::new(self.algo)))
                    }
                    None => {
                        self.shard_mismatch.get_or_insert_with(|| {
                            format!("no signed shard starts at {}", self.offset)
                        });
                        return;
                    }
                }
            }
            let Some((start, end, h)) = &mut self.shard else {
                return;
            };
            let take =
                usize::try_from((*end - self.offset).min(data.len() as u64)).unwrap_or(data.len());
            h.update(&data[..take]);
            self.offset += take as u64;
            data = &data[take..];
            if self.offset == *end {
                let (start, end) = (*start, *end);
                if let Some((_, _, h)) = self.shard.take() {
                    let got = hex::encode(h.finalize());
                    if shards.get(&start).is_none_or(|(_, d)| *d != got) {
                        self.shard_mismatch
                            .get_or_insert_with(|| format!("shard {start}:{end} digest differs"));
                    }
                }
            }
        }
    }

    fn finish(self, name: &str, size: u64) -> Result<()> {
        let changed = |why: String| {
            Error::Registry(format!(
                "{name}: bytes differ from the verified signature ({why}); the model changed after verification"
            ))
        };
        match self.expect {
            Expect::File(d) => {
                let got = self
                    .whole
                    .map(|h| hex::encode(h.finalize()))
                    .unwrap_or_default();
                if &got != d {
                    return Err(changed("digest".into()));
                }
            }
            Expect::Shards(shards) => {
                if let Some(m) = self.shard_mismatch {
                    return Err(changed(m));
                }
                let last_end = shards.values().map(|(e, _)| *e).max().unwrap_or(0);
                if self.shard.is_some() || size != last_end {
                    return Err(changed("size".into()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Curve, SigningKey};
    use crate::oms::{self, SignOptions, VerifyOptions};

    fn scan_all(root: &Path) -> Clean {
        crate::gate::admit_scan(root).unwrap()
    }

    /// A minimal valid safetensors file (one U8 tensor), which the scanner finds clean.
    fn safetensors(fill: u8, n: usize) -> Vec<u8> {
        let h = format!(r#"{{"w":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#);
        let mut v = (h.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(h.as_bytes());
        v.extend(std::iter::repeat_n(fill, n));
        v
    }

    fn signed(model: &Path, k: &SigningKey, opts: &SignOptions) -> Verified {
        let s = oms::sign_model(model, k, opts, None).unwrap();
        oms::verify_model(
            model,
            &s.bundle,
            &k.public_key(),
            &VerifyOptions::default(),
            None,
        )
        .unwrap()
    }

    fn opts(actor: &str) -> AddOptions {
        AddOptions {
            actor: actor.into(),
            seal_to: Vec::new(),
        }
    }

    #[test]
    fn versions_aliases_rollback_history_export() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("model");
        std::fs::create_dir_all(m.join("sub")).unwrap();
        std::fs::write(m.join("w.safetensors"), safetensors(3, 5000)).unwrap();
        std::fs::write(m.join("sub/c.safetensors"), safetensors(1, 10)).unwrap();
        let k = SigningKey::generate(Curve::P256);
        let mut reg = Registry::open(&d.path().join("reg")).unwrap();
        let v1 = signed(&m, &k, &SignOptions::default());
        let i1 = reg
            .add_version("mnist", &v1, &scan_all(v1.model()), &opts("alice"))
            .unwrap();
        assert_eq!(i1.version, 1);
        assert_eq!(i1.files.len(), 2);
        std::fs::write(m.join("w.safetensors"), safetensors(4, 6000)).unwrap();
        let shards = SignOptions {
            serialization: Serialization::Shards { shard_size: 1024 },
            ..Default::default()
        };
        let v2 = signed(&m, &k, &shards);
        let i2 = reg
            .add_version("mnist", &v2, &scan_all(v2.model()), &opts("bob"))
            .unwrap();
        assert_eq!(i2.version, 2);
        reg.set_alias("mnist", "production", 1, "alice").unwrap();
        reg.set_alias("mnist", "production", 2, "bob").unwrap();
        assert_eq!(
            reg.show("mnist", &"production".parse().unwrap())
                .unwrap()
                .version,
            2
        );
        assert_eq!(
            reg.rollback("mnist", "production", "carol").unwrap(),
            (2, 1)
        );
        assert_eq!(
            reg.show("mnist", &VersionRef::Alias("production".into()))
                .unwrap()
                .version,
            1
        );
        assert!(reg.rollback("mnist", "production", "carol").is_err());
        assert!(reg.set_alias("mnist", "staging", 9, "x").is_err());
        let h = reg.history("mnist").unwrap();
        let actions: Vec<_> = h
            .iter()
            .map(|e| (e.action.as_str(), e.actor.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("add_version", "alice"),
                ("add_version", "bob"),
                ("set_alias", "alice"),
                ("set_alias", "bob"),
                ("rollback", "carol")
            ]
        );
        let list = reg.list().unwrap();
        assert_eq!(list[0].latest, 2);
        assert_eq!(list[0].aliases["production"], 1);
        // Export v1 (the rolled-back production) and check the bytes.
        let out = d.path().join("out");
        reg.export("mnist", &VersionRef::Alias("production".into()), &out, &[])
            .unwrap();
        assert_eq!(
            std::fs::read(out.join("w.safetensors")).unwrap(),
            safetensors(3, 5000)
        );
        assert_eq!(
            std::fs::read(out.join("sub/c.safetensors")).unwrap(),
            safetensors(1, 10)
        );
        assert!(
            reg.export("mnist", &VersionRef::Number(1), &out, &[])
                .is_err(),
            "dest exists"
        );
        // The exported copy still verifies against the stored signature.
        let sig = reg.signature("mnist", &VersionRef::Number(1)).unwrap();
        oms::verify_model(&out, &sig, &k.public_key(), &VerifyOptions::default(), None).unwrap();
        // A corrupt blob is detected on export and nothing is written.
        let blob = reg.blob_path(
            &i1.files
                .iter()
                .find(|f| f.name == "w.safetensors")
                .unwrap()
                .sha256,
            false,
        );
        std::fs::write(&blob, vec![9u8; 5000]).unwrap();
        let out2 = d.path().join("out2");
        let e = reg
            .export("mnist", &VersionRef::Number(1), &out2, &[])
            .unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert!(!out2.exists());
    }

    #[test]
    fn admission_checks_the_bytes_against_signature_and_scan() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("model");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("w.safetensors"), safetensors(1, 7)).unwrap();
        std::fs::write(d.path().join("other.safetensors"), safetensors(2, 7)).unwrap();
        let k = SigningKey::generate(Curve::P384);
        let mut reg = Registry::open(&d.path().join("reg")).unwrap();
        let v = signed(&m, &k, &SignOptions::default());
        let scan = scan_all(v.model());
        // Not covered by the scan.
        let e = reg
            .add_version(
                "m",
                &v,
                &scan_all(&d.path().join("other.safetensors")),
                &opts("a"),
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("not covered by the clean scan"),
            "{e}"
        );
        // Changed after verification (and after the scan).
        std::fs::write(m.join("w.safetensors"), safetensors(6, 7)).unwrap();
        let e = reg.add_version("m", &v, &scan, &opts("a")).unwrap_err();
        assert!(e.to_string().contains("changed after verification"), "{e}");
        assert!(reg.list().unwrap().is_empty());
        assert!(reg.add_version("bad/name", &v, &scan, &opts("a")).is_err());
    }

    #[test]
    fn sealed_versions_need_the_identity() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("model.safetensors");
        std::fs::write(&f, safetensors(0x42, 64)).unwrap();
        let k = SigningKey::generate(Curve::P256);
        let mut reg = Registry::open(&d.path().join("reg")).unwrap();
        let v = signed(&f, &k, &SignOptions::default());
        let id = age::x25519::Identity::generate();
        let o = AddOptions {
            actor: "a".into(),
            seal_to: vec![id.to_public()],
        };
        let info = reg
            .add_version("onnx", &v, &scan_all(v.model()), &o)
            .unwrap();
        assert!(info.sealed);
        let blob = reg.blob_path(&info.files[0].sha256, true);
        assert!(
            !std::fs::read(&blob)
                .unwrap()
                .windows(5)
                .any(|w| w == b"bytes")
        );
        let out = d.path().join("x.onnx");
        assert!(reg.export("onnx", &VersionRef::Latest, &out, &[]).is_err());
        assert!(!out.exists());
        reg.export("onnx", &VersionRef::Latest, &out, &[id])
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), safetensors(0x42, 64));
    }
}
