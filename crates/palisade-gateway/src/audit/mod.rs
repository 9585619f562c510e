//! The tamper-evident audit log: every request and admin action is an entry of an append-only
//! Merkle tree (RFC 6962 hashing), with Ed25519-signed checkpoints, inclusion and consistency
//! proofs, and an offline verifier.
//!
//! [`AuditLog`] is the interface the gateway writes to; [`SqliteAuditLog`] is the embedded
//! implementation (a PostgreSQL one can back several gateways later).

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod checkpoint;
mod journal;
pub mod merkle;
mod sqlite;
mod verify;

pub use checkpoint::{Checkpoint, CheckpointSigner, Disagreement, SignedCheckpoint};
pub(crate) use sqlite::has_checkpoints;
pub use sqlite::{CheckpointPolicy, Durability, SqliteAuditLog};
pub use verify::{VerifyReport, verify_log};

/// Entry points for the cargo-fuzz targets in `fuzz/`. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// The append journal's record reader (`palisade audit verify` reads journals from state
    /// folders it is handed) over one file's bytes: the records it accepts, re-encoded, are the
    /// bytes it consumed.
    pub fn journal(bytes: &[u8]) {
        let (records, torn) = super::journal::decode(bytes);
        let mut again = Vec::new();
        for (index, data) in &records {
            super::journal::encode(&mut again, *index, data);
        }
        assert_eq!(again.len() + torn, bytes.len());
        assert_eq!(again[..], bytes[..again.len()]);
    }
}

/// Support for other crates' tests. Not a stable API.
#[doc(hidden)]
pub mod testing {
    /// Writes `entries` to the journal beside the audit database `db`, from index `first`, as a
    /// gateway with `process` durability does before it copies them into the database.
    pub fn journal(
        db: &std::path::Path,
        first: u64,
        entries: &[&[u8]],
    ) -> Result<(), super::AuditError> {
        super::journal::Journal::create(db, first)?.append(entries.iter().copied())?;
        Ok(())
    }
}

use crate::hexfmt;

/// What can go wrong with the audit log.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The database failed.
    #[error("audit database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file could not be read or written, or the writer thread could not start.
    #[error("audit log I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The writer failed to commit an entry (the entry is not in the log).
    #[error("audit write failed: {0}")]
    Write(String),
    /// The log has been closed.
    #[error("the audit log is closed")]
    Closed,
    /// A requested index or size lies outside the log.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The stored log is inconsistent.
    #[error("audit log corrupt: {0}")]
    Corrupt(String),
    /// The database's schema is not one this build knows: written by a later version, or not an
    /// audit log at all.
    #[error("audit database: {0}")]
    Schema(String),
}

/// Resolves with the entry's index once it is durable.
pub type AppendFuture = Pin<Box<dyn Future<Output = Result<u64, AuditError>> + Send>>;

/// An append-only, verifiable log.
pub trait AuditLog: Send + Sync + 'static {
    /// Appends `entry`; the future resolves only once the entry is durable.
    fn append(&self, entry: Vec<u8>) -> AppendFuture;
    /// Number of committed entries.
    fn size(&self) -> Result<u64, AuditError>;
    /// The bytes of entry `index`.
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, AuditError>;
    /// The most recent signed checkpoint.
    fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, AuditError>;
    /// Proof that entry `index` is in the tree of the first `size` entries.
    fn inclusion(&self, index: u64, size: u64) -> Result<InclusionProof, AuditError>;
    /// Proof that the tree of `first` entries is a prefix of the tree of `second` entries.
    fn consistency(&self, first: u64, second: u64) -> Result<ConsistencyProof, AuditError>;
    /// Makes every entry appended so far survive a power cut, whatever durability the appends
    /// had (for the rare entry that must: one that stands for a change made elsewhere). Blocks.
    fn sync(&self) -> Result<(), AuditError> {
        Ok(())
    }
}

/// One audited event. Serialised as JSON, these bytes are the Merkle leaf.
///
/// The text fields borrow where they can (the gateway builds a record per request from data the
/// request already holds; reading a log borrows from the entry's bytes when nothing is escaped).
///
/// Reading accepts fields this version does not know, so that a log written by a later gateway
/// (which may record more) still verifies here: the leaf hash covers every byte of the entry, so
/// nothing unknown can be slipped in unseen. (Verifiers before this rule, which refused unknown
/// fields, report the `operator` field of key changes made with `palisade keys` as malformed.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord<'a> {
    /// Milliseconds since the Unix epoch, when the request arrived.
    pub ts_ms: u64,
    /// The key's identifying prefix, when one was presented and recognised.
    #[serde(borrow)]
    pub key_id: Option<Cow<'a, str>>,
    /// HTTP method or gRPC call.
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    /// Request path (no query string).
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    /// What was asked: `infer`, `metadata`, `ready`, `admin.keys.create`, `audit.proof`, …
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    /// The model, for model routes and a model's trace settings.
    #[serde(borrow)]
    pub model: Option<Cow<'a, str>>,
    /// The model version that answered, when one did.
    #[serde(borrow)]
    pub version: Option<Cow<'a, str>>,
    /// `allowed`, or the guard that refused: `denied:authenticate`, `denied:authorise`,
    /// `denied:overload`, `denied:rate-limit`, `denied:validate`, `denied:grpc` (a gRPC call
    /// refused before the guards), or `error`; `intent` for the entry written before an admin
    /// action runs (status 0; the request's own entry follows with the outcome).
    #[serde(borrow)]
    pub decision: Cow<'a, str>,
    /// Status code sent (0 in an `intent` entry: nothing was sent yet).
    pub status: u16,
    /// SHA-256 of the (decompressed) request body, when the body was read.
    #[serde(borrow)]
    pub input_sha256: Option<Cow<'a, str>>,
    /// SHA-256 of the response body.
    #[serde(borrow)]
    pub output_sha256: Option<Cow<'a, str>>,
    /// Time from arrival to the response being ready, in microseconds (before the audit write).
    pub latency_us: u64,
    /// Who made a change outside the HTTP API (`palisade keys`, the first admin key): then
    /// `method` is `OPERATOR`, `path` the equivalent command and `status` 0. Absent otherwise.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Cow<'a, str>>,
}

impl AuditRecord<'_> {
    /// The names of the fields, as serialised (all of them, for a record with an `operator`).
    pub const FIELDS: [&'static str; 13] = [
        "ts_ms",
        "key_id",
        "method",
        "path",
        "action",
        "model",
        "version",
        "decision",
        "status",
        "input_sha256",
        "output_sha256",
        "latency_us",
        "operator",
    ];
}

/// An inclusion proof, hex-encoded for JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Leaf index.
    pub index: u64,
    /// Tree size the proof is for.
    pub size: u64,
    /// The leaf hash.
    pub leaf: String,
    /// The root of the tree of `size` entries.
    pub root: String,
    /// The audit path, bottom up.
    pub path: Vec<String>,
}

/// A consistency proof, hex-encoded for JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The older tree size.
    pub first: u64,
    /// The newer tree size.
    pub second: u64,
    /// Root of the older tree.
    pub first_root: String,
    /// Root of the newer tree.
    pub second_root: String,
    /// The proof nodes.
    pub path: Vec<String>,
}

fn decode_path(path: &[String]) -> Option<Vec<merkle::Hash>> {
    path.iter().map(|h| hexfmt::decode_32(h)).collect()
}

impl InclusionProof {
    /// The tree the proof is about: its size and root (`None` if the root is not hex).
    pub fn tree(&self) -> (u64, Option<merkle::Hash>) {
        (self.size, hexfmt::decode_32(&self.root))
    }

    /// Whether the proof is valid for its own leaf and root.
    pub fn verify(&self) -> bool {
        let (Some(leaf), Some(root), Some(path)) = (
            hexfmt::decode_32(&self.leaf),
            hexfmt::decode_32(&self.root),
            decode_path(&self.path),
        ) else {
            return false;
        };
        merkle::verify_inclusion(self.index, self.size, &leaf, &path, &root)
    }
}

impl ConsistencyProof {
    /// The trees the proof is about: their sizes and roots (`None` if a root is not hex).
    pub fn trees(&self) -> [(u64, Option<merkle::Hash>); 2] {
        [
            (self.first, hexfmt::decode_32(&self.first_root)),
            (self.second, hexfmt::decode_32(&self.second_root)),
        ]
    }

    /// Whether the proof is valid for its own roots.
    pub fn verify(&self) -> bool {
        let (Some(a), Some(b), Some(path)) = (
            hexfmt::decode_32(&self.first_root),
            hexfmt::decode_32(&self.second_root),
            decode_path(&self.path),
        ) else {
            return false;
        };
        merkle::verify_consistency(self.first, self.second, &a, &b, &path)
    }
}

/// Opens the audit database at `path` for proofs and inspection (`palisade audit checkpoint`,
/// `inclusion`, `consistency`), changing nothing in it: neither its tables nor its journal mode,
/// nor by copying its WAL into it. It reads what the database holds; entries that a killed
/// gateway left only in its journal are in the log once the gateway has opened it again
/// (`palisade audit verify` reads the journal too).
pub fn open_offline(path: &Path) -> Result<OfflineLog, AuditError> {
    if !path.is_file() {
        return Err(AuditError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not a file", path.display()),
        )));
    }
    Ok(OfflineLog {
        conn: std::sync::Mutex::new(sqlite::open_for_proofs(path)?),
        path: path.to_path_buf(),
    })
}

/// A log opened without a writer, for proofs and inspection.
#[derive(Debug)]
pub struct OfflineLog {
    conn: std::sync::Mutex<rusqlite::Connection>,
    path: std::path::PathBuf,
}

impl OfflineLog {
    fn with<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let c = self.conn.lock().map_err(|_| AuditError::Closed)?;
        f(&c)
    }

    /// Number of entries.
    pub fn size(&self) -> Result<u64, AuditError> {
        self.with(sqlite::stored_size)
    }

    /// How many acknowledged entries past the database's first `size` are only in the journal
    /// beside it: a gateway with `process` durability stopped (killed) before it copied them
    /// into the database, which its next start does. Proofs cannot cover them until then. 0 if
    /// the journal cannot be read (`palisade audit verify` says why).
    pub fn journaled_beyond(&self, size: u64) -> u64 {
        journal::read(&self.path).map_or(0, |j| {
            j.entries.iter().filter(|(index, _)| *index >= size).count() as u64
        })
    }

    /// Inclusion proof of entry `index` in the tree of `size` entries.
    pub fn inclusion(&self, index: u64, size: u64) -> Result<InclusionProof, AuditError> {
        self.with(|c| sqlite::inclusion_from(c, index, size))
    }

    /// Consistency proof between the trees of `first` and `second` entries.
    pub fn consistency(&self, first: u64, second: u64) -> Result<ConsistencyProof, AuditError> {
        self.with(|c| sqlite::consistency_from(c, first, second))
    }

    /// The most recent stored checkpoint.
    pub fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        self.with(sqlite::latest_checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::AuditRecord;

    #[test]
    fn records_with_fields_this_version_does_not_know_are_read_and_incomplete_ones_are_not() {
        let known = r#"{"ts_ms":1,"key_id":null,"method":"POST","path":"/p","action":"infer","model":null,"version":null,"decision":"allowed","status":200,"input_sha256":null,"output_sha256":null,"latency_us":3"#;
        let (now, later) = (
            format!("{known}}}"),
            format!(r#"{known},"tenant":"t1","shadow":{{"a":1}}}}"#),
        );
        let r: AuditRecord = serde_json::from_str(&now).unwrap();
        assert_eq!((r.ts_ms, r.status, r.operator.clone()), (1, 200, None));
        let l: AuditRecord = serde_json::from_str(&later).unwrap();
        assert_eq!(l, r);
        assert!(serde_json::from_str::<AuditRecord>(r#"{"ts_ms":1,"tenant":"t1"}"#).is_err());
    }

    #[test]
    fn fields_lists_every_field_a_record_is_written_with() {
        let r = AuditRecord {
            ts_ms: 1,
            key_id: Some("k".into()),
            method: "POST".into(),
            path: "/p".into(),
            action: "a".into(),
            model: Some("m".into()),
            version: Some("1".into()),
            decision: "allowed".into(),
            status: 200,
            input_sha256: Some("i".into()),
            output_sha256: Some("o".into()),
            latency_us: 2,
            operator: Some("ops".into()),
        };
        let v = serde_json::to_value(&r).unwrap();
        let mut written: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut listed = AuditRecord::FIELDS.to_vec();
        written.sort_unstable();
        listed.sort_unstable();
        assert_eq!(written, listed);
    }
}
