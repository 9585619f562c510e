//! API keys and roles.
//!
//! A key reads `pal_<id>_<secret>`: `id` is 12 hex digits that identify the key (they appear in
//! logs and the audit log), `secret` is 32 random bytes (base64url). Only SHA-256 of the whole key
//! is stored: the key carries 256 bits of entropy, so a fast hash is enough and a stolen database
//! gives no usable key. A key shows once, when it is created.
//!
//! Rotation creates a new key with the same roles and lets the old one live for an overlap
//! window; revocation is a row update that the next request sees. Requests are checked against
//! records cached in memory. The cache is dropped when SQLite says the database changed
//! (`PRAGMA data_version`, which sees commits by any other connection or process, such as
//! `palisade keys revoke`) and on the store's own writes. Asking costs a read transaction, which
//! takes and drops a lock on the `-shm` file (two `fcntl` calls) on the request's path, so an
//! answer vouches for the cache for [`RECHECK_AFTER`] (10 ms): under load almost every request
//! skips the question. In exchange a write that takes validity away (revoke, rotate) waits
//! [`SETTLE`] (20 ms, longer than that window) after its commit before it returns, so once
//! `palisade keys revoke` (or the admin API) has answered, no gateway on the same database
//! accepts the key, whichever process wrote it.
//! Writes (changes, TOTP checks) go through a second connection with a lock of its own, so
//! that their fsync does not hold up the authentication of the requests meanwhile.
//!
//! Keys with the `admin` or `deploy` role also get a TOTP secret (RFC 6238, SHA-1, 6 digits,
//! 30 s): admin actions must carry a current code, and a code is accepted once per key.
//! The TOTP secret must be stored in clear to compute codes; it lives in the key database.
//! Three codes pass at any moment (the current step and one either side), so a stolen key could
//! find a code by trying about 333 000 of them; after [`TOTP_MAX_FAILS`] refused codes, each
//! within [`TOTP_LOCKOUT`] of the one before, the key's TOTP checks are refused, even with a right
//! code, until [`TOTP_LOCKOUT`] after the last of them. The count lives in the key database next
//! to the rest of the TOTP state, so that a restart does not clear it and every gateway on the
//! database shares it.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore as _;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Errors of the key store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The database failed.
    #[error("key database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file could not be made.
    #[error("cannot create the key database {path}: {source}")]
    Create {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A role string that is not one of the roles.
    #[error(
        "unknown role '{0}' (roles: query:<model>, query:*, ingest, train, deploy, audit, admin)"
    )]
    Role(String),
    /// No key with this id.
    #[error("no key with id '{0}'")]
    NotFound(String),
    /// Bad arguments (empty roles, bad name).
    #[error("{0}")]
    Invalid(String),
    /// The TOTP library refused the secret.
    #[error("totp: {0}")]
    Totp(String),
    /// Too many refused TOTP codes for this key: every TOTP check is refused until `until_ms`.
    #[error(
        "too many wrong TOTP codes for key {id}: TOTP checks are refused until {until_ms} ms since the epoch"
    )]
    TotpLocked {
        /// The key.
        id: String,
        /// End of the lockout, ms since the epoch.
        until_ms: u64,
    },
}

/// A least-privilege role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// Query (metadata, configuration, statistics, ready, infer) one model, or every model
    /// (`*`).
    Query(String),
    /// Send data to ingest endpoints.
    Ingest,
    /// Start training jobs.
    Train,
    /// Load, swap and roll back models.
    Deploy,
    /// Read the audit log and its proofs.
    Audit,
    /// Manage keys.
    Admin,
}

impl Role {
    /// Whether this role lets its holder query `model`.
    pub fn allows_query(&self, model: &str) -> bool {
        matches!(self, Role::Query(m) if m == "*" || m == model)
    }

    /// Roles that need a second factor (TOTP).
    pub fn needs_mfa(&self) -> bool {
        matches!(self, Role::Admin | Role::Deploy)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Query(m) => write!(f, "query:{m}"),
            Role::Ingest => f.write_str("ingest"),
            Role::Train => f.write_str("train"),
            Role::Deploy => f.write_str("deploy"),
            Role::Audit => f.write_str("audit"),
            Role::Admin => f.write_str("admin"),
        }
    }
}

impl FromStr for Role {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Ok(match s {
            "ingest" => Role::Ingest,
            "train" => Role::Train,
            "deploy" => Role::Deploy,
            "audit" => Role::Audit,
            "admin" => Role::Admin,
            _ => match s.strip_prefix("query:") {
                Some(m) if m == "*" || crate::model::valid_name(m) => Role::Query(m.to_string()),
                _ => return Err(KeyError::Role(s.to_string())),
            },
        })
    }
}

/// Serde for a type as its `Display` text, read back with its `FromStr`.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(Role);

pub use crate::identity::{
    ClientBinding, ClientCertificate, ClientIdentity, NameKind, SubjectName,
};

serde_as_text!(ClientCertificate);
impl Serialize for SubjectName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read as the key database reads it: a name that does not parse, or is not in canonical form,
/// is [`NameKind::Unreadable`] (it matches no certificate), so that a record with one still
/// reads back (second review).
impl<'de> Deserialize<'de> for SubjectName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SubjectName::stored(&String::deserialize(d)?))
    }
}

/// What the store knows about a key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The identifying prefix (12 hex digits).
    pub id: String,
    /// A label for people.
    pub name: String,
    /// What the key may do.
    pub roles: Vec<Role>,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// End of validity (set by rotation or at creation), ms since the epoch.
    pub expires_ms: Option<u64>,
    /// When it was revoked.
    pub revoked_ms: Option<u64>,
    /// Whether admin actions with this key need (and can give) a TOTP code.
    pub mfa: bool,
    /// The key whose rate limits and daily budgets this one spends: itself, or for a successor
    /// made by rotation the first key of its line, so that rotating a key neither refills its
    /// budget nor, during the overlap, doubles its rate.
    pub lineage: String,
    /// The client certificate the key is bound to, if any: the key is then valid only on a
    /// mutual TLS connection that presented that certificate (RFC 8705's certificate-bound
    /// tokens), so that a key copied from a log or a config file is of no use without the
    /// certificate's private key.
    #[serde(
        default,
        rename = "client_cert_sha256",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_cert: Option<ClientCertificate>,
    /// The subject alternative name the key is bound to, if any: the key is then valid only on
    /// a mutual TLS connection whose certificate (vouched for by the client CA) carries that
    /// name, whichever certificate it is (see [`crate::identity`]). A key is bound to a
    /// certificate or to a name, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_san: Option<SubjectName>,
}

impl KeyRecord {
    /// Whether the key holds `role`.
    pub fn has(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }

    /// Whether one of the key's roles lets it query `model`.
    pub fn may_query(&self, model: &str) -> bool {
        self.roles.iter().any(|r| r.allows_query(model))
    }

    /// Whether the key may query some model (any `query` role).
    pub fn may_query_some(&self) -> bool {
        self.roles.iter().any(|r| matches!(r, Role::Query(_)))
    }

    /// Whether the key is neither revoked nor expired at `now_ms` (what `authenticate` asks
    /// before it answers `Valid`).
    pub fn in_force(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| now_ms < e)
    }

    /// What the key is bound to, if anything.
    pub fn binding(&self) -> Option<ClientBinding> {
        match (&self.client_cert, &self.client_san) {
            (Some(c), _) => Some(ClientBinding::Certificate(*c)),
            (None, Some(n)) => Some(ClientBinding::Name(n.clone())),
            (None, None) => None,
        }
    }

    /// Whether the key may be used on a connection that presented `client` (`None`: no client
    /// certificate): any connection for an unbound key, only one whose certificate is the one
    /// it is bound to, or carries the name it is bound to, for a bound one.
    pub fn admits(&self, client: Option<&ClientIdentity>) -> bool {
        // Each binding the record holds must hold (insert writes one at most).
        let cert = self
            .client_cert
            .is_none_or(|c| client.is_some_and(|id| id.is(&c)));
        let name = self
            .client_san
            .as_ref()
            .is_none_or(|n| client.is_some_and(|id| id.carries(n)));
        cert && name
    }
}

/// A freshly made key: shown once.
#[derive(Debug, Clone, Serialize)]
pub struct NewKey {
    /// The full key, `pal_<id>_<secret>`.
    pub key: String,
    /// Its record.
    pub record: KeyRecord,
    /// The TOTP secret (base32), for keys that need MFA.
    pub totp_secret: Option<String>,
    /// `otpauth://` URI for authenticator apps.
    pub totp_uri: Option<String>,
}

/// The outcome of presenting a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authn {
    /// A valid key.
    Valid(Arc<KeyRecord>),
    /// Not of the `pal_<id>_<secret>` form.
    Malformed,
    /// No key with this id, or the secret does not match (a forgery).
    Unknown(Option<String>),
    /// Revoked.
    Revoked(String),
    /// Past its expiry (e.g. the old half of a rotation).
    Expired(String),
    /// Valid, but bound to a client certificate (or a name) the request's connection did not
    /// present.
    WrongClient(String),
}

/// Where keys live. The SQLite store is the embedded default; PostgreSQL can implement this to
/// share keys between gateways.
pub trait KeyStore: Send + Sync + 'static {
    /// Checks a presented key.
    fn authenticate(&self, presented: &str, now_ms: u64) -> Result<Authn, KeyError>;
    /// Checks a key presented on a connection whose client presented `client` (`None`: no
    /// certificate): [`KeyStore::authenticate`], and a key bound to another certificate or
    /// name, or to one where none was presented, is [`Authn::WrongClient`].
    fn authenticate_from(
        &self,
        presented: &str,
        client: Option<&ClientIdentity>,
        now_ms: u64,
    ) -> Result<Authn, KeyError> {
        Ok(match self.authenticate(presented, now_ms)? {
            Authn::Valid(r) if !r.admits(client) => Authn::WrongClient(r.id.clone()),
            other => other,
        })
    }
    /// Creates a key.
    fn create(
        &self,
        name: &str,
        roles: &[Role],
        expires_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<NewKey, KeyError> {
        self.create_bound(name, roles, expires_ms, None, now_ms)
    }
    /// Creates a key, bound as `binding` says if given (see [`KeyRecord::client_cert`] and
    /// [`KeyRecord::client_san`]).
    fn create_bound(
        &self,
        name: &str,
        roles: &[Role],
        expires_ms: Option<u64>,
        binding: Option<ClientBinding>,
        now_ms: u64,
    ) -> Result<NewKey, KeyError>;
    /// Revokes a key at once: when this returns, no gateway on the same store accepts it.
    /// Returns false if it was already revoked. May block for a few milliseconds.
    fn revoke(&self, id: &str, now_ms: u64) -> Result<bool, KeyError>;
    /// Makes a successor with the same roles and the expiry the old key was made with; the old
    /// key stays valid for `overlap`, or until its own expiry if sooner (a zero overlap revokes
    /// it). A revoked or expired key, or an overlap that does not fit the store's clock, is
    /// refused. May block for a few milliseconds (as
    /// `revoke`).
    fn rotate(&self, id: &str, overlap: Duration, now_ms: u64) -> Result<NewKey, KeyError> {
        self.rotate_rebinding(id, overlap, None, now_ms)
    }
    /// [`KeyStore::rotate`], the successor bound as `binding` says if given and otherwise as
    /// the old key was, if it was: a client whose certificate is renewed rotates its key to the
    /// new certificate, and uses the old key with the old certificate for the overlap (a key
    /// bound to a name needs no such rotation; one can be rebound from a certificate to a name
    /// this way).
    fn rotate_rebinding(
        &self,
        id: &str,
        overlap: Duration,
        binding: Option<ClientBinding>,
        now_ms: u64,
    ) -> Result<NewKey, KeyError>;
    /// All keys.
    fn list(&self) -> Result<Vec<KeyRecord>, KeyError>;
    /// The key `id`, revoked or expired ones too (`None`: no such key).
    fn find(&self, id: &str) -> Result<Option<KeyRecord>, KeyError>;
    /// Checks a TOTP code for key `id` and consumes it (a code works once). After
    /// [`TOTP_MAX_FAILS`] refused codes, each within [`TOTP_LOCKOUT`] of the one before, answers
    /// [`KeyError::TotpLocked`] for every code until [`TOTP_LOCKOUT`] after the last of them.
    fn check_totp(&self, id: &str, code: &str, now_ms: u64) -> Result<bool, KeyError>;
    /// Gives back a code that [`KeyStore::check_totp`] accepted a moment ago for an action that
    /// then did not run (the audit log could not take its intent): the code works once more
    /// while it is current, and the refusal count is as before it was accepted. Nothing changes
    /// if another code was accepted since, the code is no longer current, or it was given back
    /// once already; returns whether it was given back.
    fn release_totp(&self, id: &str, code: &str, now_ms: u64) -> Result<bool, KeyError>;
}

/// Keys in an SQLite file.
pub struct SqliteKeyStore {
    /// The connection and the records cached from it, under one lock: every use of the cache
    /// also uses the connection.
    store: Mutex<Store>,
    /// The connection that writes (changes, TOTP checks, the audit queue), apart from the one
    /// that authenticates, so that a write's fsync does not hold up the authentication of every
    /// request meanwhile; `None` for an in-memory store, whose writes use the one connection.
    writer: Option<Mutex<Connection>>,
    /// Who acts through this store when it is not a gateway (`palisade keys`): its changes are
    /// then queued for the audit log (see [`SqliteKeyStore::for_operator`]).
    operator: Option<String>,
}

struct Store {
    conn: Connection,
    cache: KeyCache,
}

/// A locked connection to write with: the store's writer, or (in memory) its one connection.
enum Writer<'a> {
    Own(std::sync::MutexGuard<'a, Connection>),
    Shared(std::sync::MutexGuard<'a, Store>),
}

impl std::ops::Deref for Writer<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            Writer::Own(c) => c,
            Writer::Shared(s) => &s.conn,
        }
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        match self {
            Writer::Own(c) => c,
            Writer::Shared(s) => &mut s.conn,
        }
    }
}

/// Whether `code` looks like a TOTP code (six digits).
fn totp_shaped(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

/// An audit entry queued by an operator ([`SqliteKeyStore::for_operator`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its place in the queue.
    pub seq: i64,
    /// The entry's bytes, as the audit log is to hold them.
    pub entry: Vec<u8>,
    /// The audit log's size when a drain last set out to append it
    /// ([`SqliteKeyStore::outbox_trying`]): if it got there, it is at that index or later.
    pub tried_at: Option<u64>,
}

/// Refused TOTP codes (each within [`TOTP_LOCKOUT`] of the one before) that lock a key's TOTP.
pub const TOTP_MAX_FAILS: u32 = 5;

/// How close together refused TOTP codes must be to add up, and how long a lockout lasts after
/// the last of them.
pub const TOTP_LOCKOUT: Duration = Duration::from_secs(15 * 60);

/// Most keys held in the cache; past it the cache starts over.
const MAX_CACHED: usize = 4096;

/// How long an answer to "did the database change?" vouches for the cached records.
pub const RECHECK_AFTER: Duration = Duration::from_millis(10);

/// How long a write that takes a key's validity away waits after its commit before it returns:
/// longer than [`RECHECK_AFTER`], so that by then every store on the database has asked again.
pub const SETTLE: Duration = RECHECK_AFTER.saturating_mul(2);

/// Records read since the database last changed (see the module documentation).
#[derive(Default)]
struct KeyCache {
    /// `PRAGMA data_version` when the records were read; `None` after a write of our own, which
    /// that pragma does not count.
    version: Option<i64>,
    /// When the pragma was last asked (the instant before asking, so that the window never
    /// outlasts a commit the answer missed by more than [`RECHECK_AFTER`]).
    asked: Option<Instant>,
    /// Key id → record and stored hash.
    keys: HashMap<String, (Arc<KeyRecord>, Vec<u8>)>,
}

impl KeyCache {
    /// Forgets the cached records (after a write through the store's connection).
    fn invalidate(&mut self) {
        self.version = None;
        self.asked = None;
        self.keys.clear();
    }
}

impl fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteKeyStore").finish_non_exhaustive()
    }
}

/// The `method` of an audit entry for a change made outside the gateway's HTTP API.
pub const OPERATOR_METHOD: &str = "OPERATOR";

const PREFIX: &str = "pal_";
const ID_HEX: usize = 12;
const MAX_KEY_LEN: usize = 128;

/// What is stored of a key: SHA-256 of the key and, for a bound key, of what it is bound to
/// with it (the certificate's thumbprint, or the name). A gateway that knows no bindings, or
/// not this kind (an older release still running on a shared database), compares the stored
/// value with SHA-256 of the key alone, finds no match and refuses a bound key, rather than
/// accept it without its certificate (review).
fn hash_key(key: &str, binding: Option<&ClientBinding>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    match binding {
        Some(ClientBinding::Certificate(c)) => {
            h.update(b"\0client-cert-sha256\0");
            h.update(c.0);
        }
        Some(ClientBinding::Name(n)) => {
            h.update(b"\0client-san\0");
            h.update(n.to_string().as_bytes());
        }
        None => {}
    }
    h.finalize().into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The id part of a well-formed key.
pub fn key_id(presented: &str) -> Option<&str> {
    if presented.len() > MAX_KEY_LEN {
        return None;
    }
    let rest = presented.strip_prefix(PREFIX)?;
    let id = rest.get(..ID_HEX)?;
    let secret = rest.get(ID_HEX..)?.strip_prefix('_')?;
    let ok_id = id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let ok_secret = !secret.is_empty()
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (ok_id && ok_secret).then_some(id)
}

fn totp_for(secret: Vec<u8>) -> Result<totp_rs::Totp, KeyError> {
    totp_rs::Builder::new()
        .with_secret(secret)
        .build()
        .map_err(|e| KeyError::Totp(e.to_string()))
}

impl SqliteKeyStore {
    /// Opens (or creates) the key database at `path`.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        // Made owner-only before SQLite makes it (with the umask's mode, 0644 as a rule): the
        // database holds the TOTP secrets of admin and deploy keys, and SQLite gives its -wal and
        // -shm files the database's mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(KeyError::Create {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        }
        let mut store = Self::from_conn(Connection::open(path)?)?;
        let writer = Connection::open(path)?;
        writer.busy_timeout(Duration::from_secs(10))?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        store.writer = Some(Mutex::new(writer));
        Ok(store)
    }

    /// An in-memory store (tests, ephemeral servers).
    pub fn in_memory() -> Result<Self, KeyError> {
        Self::from_conn(Connection::open_in_memory()?)
    }

    fn from_conn(mut conn: Connection) -> Result<Self, KeyError> {
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // One write transaction, so that two processes opening the database at once do not both
        // add the same column.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS keys (
                 id             TEXT PRIMARY KEY,
                 name           TEXT NOT NULL,
                 hash           BLOB NOT NULL,
                 roles          TEXT NOT NULL,
                 created_ms     INTEGER NOT NULL,
                 expires_ms     INTEGER,
                 revoked_ms     INTEGER,
                 totp_secret    BLOB,
                 totp_last      INTEGER,
                 totp_fails     INTEGER NOT NULL DEFAULT 0,
                 totp_failed_ms INTEGER,
                 lineage        TEXT,
                 totp_released  INTEGER,
                 totp_fails_before     INTEGER NOT NULL DEFAULT 0,
                 totp_failed_ms_before INTEGER,
                 made_expires_ms       INTEGER,
                 client_cert_sha256    BLOB,
                 client_san            TEXT);
             CREATE TABLE IF NOT EXISTS outbox (
                 seq      INTEGER PRIMARY KEY AUTOINCREMENT,
                 entry    BLOB NOT NULL,
                 tried_at INTEGER);",
        )?;
        // Databases made before the TOTP failure count, the rotation lines and the drain's
        // attempts lack their columns.
        for (table, column, decl) in [
            ("keys", "totp_fails", "INTEGER NOT NULL DEFAULT 0"),
            ("keys", "totp_failed_ms", "INTEGER"),
            ("keys", "lineage", "TEXT"),
            ("keys", "totp_released", "INTEGER"),
            ("keys", "totp_fails_before", "INTEGER NOT NULL DEFAULT 0"),
            ("keys", "totp_failed_ms_before", "INTEGER"),
            ("keys", "made_expires_ms", "INTEGER"),
            ("keys", "client_cert_sha256", "BLOB"),
            ("keys", "client_san", "TEXT"),
            ("outbox", "tried_at", "INTEGER"),
        ] {
            let has: i64 = tx.query_row(
                "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
                params![table, column],
                |r| r.get(0),
            )?;
            if has == 0 {
                tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
                // What a key was made with is, for a key made before it was recorded, the
                // expiry it has now (a rotation that cut it short is not known any more).
                if column == "made_expires_ms" {
                    tx.execute_batch("UPDATE keys SET made_expires_ms = expires_ms")?;
                }
            }
        }
        // A later schema is refused; an older one is brought to 1, and further only when a key
        // is first bound (`insert`: 2 for a certificate, 3 for a name), so that until then the
        // releases before those bindings can open it.
        if crate::schema::readable(&tx, crate::schema::KEYS)? < crate::schema::KEYS_UNBOUND {
            tx.pragma_update(None, "user_version", crate::schema::KEYS_UNBOUND)?;
        }
        tx.commit()?;
        Ok(SqliteKeyStore {
            store: Mutex::new(Store {
                conn,
                cache: KeyCache::default(),
            }),
            writer: None,
            operator: None,
        })
    }

    /// This store as used by `operator` rather than by a gateway (`palisade keys`, say): each
    /// change it makes (create, revoke, rotate) also queues an audit entry naming `operator`, in
    /// the change's own transaction, so that a change is never made without its entry queued.
    /// The gateway that owns the state folder moves queued entries into its audit log
    /// ([`crate::server::LocalState::drain_key_outbox`]). Changes through the admin API need
    /// none: their requests are audited.
    pub fn for_operator(mut self, operator: impl Into<String>) -> Self {
        self.operator = Some(operator.into());
        self
    }

    /// Queues, in `tx`, the audit entry of a change by the operator (if this store has one):
    /// `command` says what was done, in words close to `palisade keys`'s, `action` is the admin
    /// API's action name for the same change.
    fn queue(
        operator: Option<&str>,
        tx: &Connection,
        action: &str,
        command: &str,
        now_ms: u64,
    ) -> Result<(), KeyError> {
        let Some(operator) = operator else {
            return Ok(());
        };
        use std::borrow::Cow;
        let record = crate::audit::AuditRecord {
            ts_ms: now_ms,
            key_id: None,
            method: Cow::Borrowed(OPERATOR_METHOD),
            path: Cow::Borrowed(command),
            action: Cow::Borrowed(action),
            model: None,
            version: None,
            decision: Cow::Borrowed("allowed"),
            status: 0,
            input_sha256: None,
            output_sha256: None,
            latency_us: 0,
            operator: Some(Cow::Borrowed(operator)),
        };
        let entry = serde_json::to_vec(&record)
            .map_err(|e| KeyError::Invalid(format!("cannot encode an audit entry: {e}")))?;
        tx.execute("INSERT INTO outbox (entry) VALUES (?1)", params![entry])?;
        Ok(())
    }

    /// The oldest audit entries queued by operators (at most `max`), oldest first.
    pub fn outbox(&self, max: usize) -> Result<Vec<Queued>, KeyError> {
        let guard = self.lock();
        let mut stmt = guard
            .conn
            .prepare_cached("SELECT seq, entry, tried_at FROM outbox ORDER BY seq LIMIT ?1")?;
        let rows = stmt.query_map(params![max as i64], |r| {
            Ok(Queued {
                seq: r.get(0)?,
                entry: r.get(1)?,
                tried_at: r.get::<_, Option<i64>>(2)?.map(|n| n.max(0) as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes, before the queued entry `seq` is appended to the audit log, the log's size then:
    /// if the gateway dies before [`SqliteKeyStore::outbox_done`], the next drain looks for the
    /// entry from there on instead of appending it a second time.
    pub fn outbox_trying(&self, seq: i64, log_size: u64) -> Result<(), KeyError> {
        self.write().execute(
            "UPDATE outbox SET tried_at = ?2 WHERE seq = ?1",
            params![seq, log_size as i64],
        )?;
        Ok(())
    }

    /// How many audit entries are queued in the key database at `path`, read without writing
    /// (0 when it has no queue yet): for `palisade audit verify`, which only reads.
    pub fn queued(path: &Path) -> Result<u64, KeyError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let has: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
            [],
            |r| r.get(0),
        )?;
        if has == 0 {
            return Ok(0);
        }
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Removes the queued entry `seq` (once the audit log holds it).
    pub fn outbox_done(&self, seq: i64) -> Result<(), KeyError> {
        self.write()
            .execute("DELETE FROM outbox WHERE seq = ?1", params![seq])?;
        Ok(())
    }

    /// Makes a key as `operator` would through [`SqliteKeyStore::for_operator`], on a store
    /// used by a gateway (its first admin key).
    pub fn create_by(
        &self,
        operator: &str,
        name: &str,
        roles: &[Role],
        expires_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<NewKey, KeyError> {
        self.create_as(Some(operator), name, roles, expires_ms, None, now_ms)
    }

    fn create_as(
        &self,
        operator: Option<&str>,
        name: &str,
        roles: &[Role],
        expires_ms: Option<u64>,
        binding: Option<ClientBinding>,
        now_ms: u64,
    ) -> Result<NewKey, KeyError> {
        // A new id changes no cached record: the cache holds only keys that were found.
        let w = self.write();
        let tx = w.unchecked_transaction()?;
        let k = Self::insert(&tx, name, roles, expires_ms, None, binding.as_ref(), now_ms)?;
        let roles: Vec<String> = roles.iter().map(|r| format!(" --role {r}")).collect();
        let expiry = expires_ms.map_or(String::new(), |e| format!(" (expires at {e} ms)"));
        let bound = binding.map_or(String::new(), |b| format!(" {b}"));
        let command = format!(
            "create key --name {name:?}{}{bound}: {}{expiry}",
            roles.concat(),
            k.record.id
        );
        Self::queue(operator, &tx, "admin.keys", &command, now_ms)?;
        tx.commit()?;
        Ok(k)
    }

    /// After a write: releases the writer, drops the cache, then, if the write took a key's
    /// validity away, waits [`SETTLE`] so that every other store on the database has seen it by
    /// the time the write returns.
    fn written(&self, w: Writer<'_>, took_validity_away: bool) {
        drop(w);
        self.lock().cache.invalidate();
        if took_validity_away {
            std::thread::sleep(SETTLE);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back) nor the cache wrong (it is only ever dropped or filled from the database), so a
        // poisoned lock is still usable.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection to write with (see [`SqliteKeyStore::writer`]).
    fn write(&self) -> Writer<'_> {
        match &self.writer {
            Some(w) => Writer::Own(w.lock().unwrap_or_else(|p| p.into_inner())),
            None => Writer::Shared(self.lock()),
        }
    }

    /// Whether the store holds no key at all (first start).
    pub fn is_empty(&self) -> Result<bool, KeyError> {
        let n: i64 = self
            .lock()
            .conn
            .query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))?;
        Ok(n == 0)
    }

    fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(KeyRecord, Vec<u8>)> {
        let roles: String = row.get(3)?;
        let roles = roles
            .split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        let totp: Option<Vec<u8>> = row.get(7)?;
        let id: String = row.get(0)?;
        // NULL: the key heads its own line (and keys made before lines were recorded do).
        let lineage = row
            .get::<_, Option<String>>(8)?
            .unwrap_or_else(|| id.clone());
        // A thumbprint that is not 32 bytes cannot have been written by this store: read as
        // bound to a certificate nobody has (the key refused) rather than as unbound.
        let client_cert = row
            .get::<_, Option<Vec<u8>>>(9)?
            .map(|b| ClientCertificate(<[u8; 32]>::try_from(b.as_slice()).unwrap_or([0xff; 32])));
        // Nor is a name that does not parse, or is not in the canonical form this release
        // writes (the stored hash covers the text as stored, so a name read into another form
        // would fail the key as a forgery; second review): read as bound to a name no
        // certificate presents (the key refused), not as unbound, and not as an error, which
        // would keep the key from being listed or revoked, and every other key from being
        // listed (review).
        let client_san = row
            .get::<_, Option<String>>(10)?
            .map(|text| SubjectName::stored(&text));
        Ok((
            KeyRecord {
                id,
                name: row.get(1)?,
                roles,
                created_ms: row.get::<_, i64>(4)?.max(0) as u64,
                expires_ms: row.get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
                revoked_ms: row.get::<_, Option<i64>>(6)?.map(|v| v.max(0) as u64),
                mfa: totp.is_some(),
                lineage,
                client_cert,
                client_san,
            },
            row.get(2)?,
        ))
    }

    fn get(&self, conn: &Connection, id: &str) -> Result<Option<(KeyRecord, Vec<u8>)>, KeyError> {
        Ok(conn
            .prepare_cached(
                "SELECT id, name, hash, roles, created_ms, expires_ms, revoked_ms, totp_secret, lineage,
                        client_cert_sha256, client_san
                 FROM keys WHERE id = ?1",
            )?
            .query_row(params![id], Self::record)
            .optional()?)
    }

    fn insert(
        conn: &Connection,
        name: &str,
        roles: &[Role],
        expires_ms: Option<u64>,
        lineage: Option<&str>,
        binding: Option<&ClientBinding>,
        now_ms: u64,
    ) -> Result<NewKey, KeyError> {
        if roles.is_empty() {
            return Err(KeyError::Invalid("a key needs at least one role".into()));
        }
        // No new key is bound to a name no certificate can present: a rotation that would keep
        // such a binding says so instead (second review).
        if let Some(ClientBinding::Name(n)) = binding
            && n.kind() == NameKind::Unreadable
        {
            return Err(KeyError::Invalid(format!(
                "the key is bound to a name this release cannot read ({:?}): give the \
                 successor a binding (--client-san or --client-cert), or revoke the key",
                n.value()
            )));
        }
        if name.is_empty() || name.chars().count() > 64 || name.contains(char::is_control) {
            return Err(KeyError::Invalid(
                "a key name is 1 to 64 printable characters".into(),
            ));
        }
        // A key dead at birth, or one whose expiry the database cannot hold (read back as
        // already past), is a mistake of its maker: refused, not made.
        if let Some(e) = expires_ms {
            if e <= now_ms {
                return Err(KeyError::Invalid(
                    "a key must expire after it is made".into(),
                ));
            }
            if i64::try_from(e).is_err() {
                return Err(KeyError::Invalid(format!(
                    "a key's expiry is at most {} ms after 1970 (leave it out for a key that \
                     does not expire)",
                    i64::MAX
                )));
            }
        }
        let mut rng = rand::rng();
        let mut idb = [0u8; ID_HEX / 2];
        rng.fill_bytes(&mut idb);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let id = crate::hexfmt::encode(&idb);
        let key = format!(
            "{PREFIX}{id}_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let mfa = roles.iter().any(Role::needs_mfa);
        let totp_secret = mfa.then(|| {
            let mut s = vec![0u8; 20];
            rng.fill_bytes(&mut s);
            s
        });
        let roles_s: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let (client_cert, client_san) = match binding {
            Some(ClientBinding::Certificate(c)) => (Some(*c), None),
            Some(ClientBinding::Name(n)) => (None, Some(n.clone())),
            None => (None, None),
        };
        conn.execute(
            "INSERT INTO keys (id, name, hash, roles, created_ms, expires_ms, revoked_ms, totp_secret, lineage,
                               made_expires_ms, client_cert_sha256, client_san)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8, ?6, ?9, ?10)",
            params![
                id,
                name,
                &hash_key(&key, binding)[..],
                roles_s.join(","),
                now_ms as i64,
                expires_ms.map(|v| v as i64),
                totp_secret,
                lineage,
                client_cert.as_ref().map(|c| &c.0[..]),
                client_san.as_ref().map(|n| n.to_string())
            ],
        )?;
        // No key is written into a file a later release has taken over since this store opened
        // it: a successor would lack what that release's schema constrains the old key with
        // (review). The first bound key takes the file to the schema of bindings. Both in the
        // key's own transaction, its write lock held: no other writer moves the version
        // meanwhile.
        let schema = crate::schema::readable(conn, crate::schema::KEYS)?;
        let needs = match binding {
            Some(ClientBinding::Certificate(_)) => crate::schema::KEYS_CERT_BOUND,
            Some(ClientBinding::Name(_)) => crate::schema::KEYS,
            None => crate::schema::KEYS_UNBOUND,
        };
        if schema < needs {
            conn.pragma_update(None, "user_version", needs)?;
        }
        let (totp_b32, totp_uri) = match totp_secret {
            Some(s) => {
                let b32 = totp_for(s)?.secret().to_base32();
                let uri = format!(
                    "otpauth://totp/Palisade:{id}?secret={b32}&issuer=Palisade&algorithm=SHA1&digits=6&period=30"
                );
                (Some(b32), Some(uri))
            }
            None => (None, None),
        };
        let lineage = lineage.map_or_else(|| id.clone(), str::to_string);
        Ok(NewKey {
            key,
            record: KeyRecord {
                id,
                name: name.to_string(),
                roles: roles.to_vec(),
                created_ms: now_ms,
                expires_ms,
                revoked_ms: None,
                mfa,
                lineage,
                client_cert,
                client_san,
            },
            totp_secret: totp_b32,
            totp_uri,
        })
    }
}

impl KeyStore for SqliteKeyStore {
    fn authenticate(&self, presented: &str, now_ms: u64) -> Result<Authn, KeyError> {
        let Some(id) = key_id(presented) else {
            return Ok(Authn::Malformed);
        };
        let mut guard = self.lock();
        let Store { conn, cache } = &mut *guard;
        if cache.asked.is_none_or(|t| t.elapsed() >= RECHECK_AFTER) {
            let asked = Instant::now();
            let version: i64 = conn
                .prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get(0))?;
            if cache.version != Some(version) {
                cache.keys.clear();
                // A file that another process has since brought to a later schema is read no
                // more: its keys may carry what this build does not check (a gateway started
                // before an upgrade on a shared database; review). The check at open alone
                // would not see it.
                crate::schema::readable(conn, crate::schema::KEYS)?;
                cache.version = Some(version);
            }
            cache.asked = Some(asked);
        }
        if !cache.keys.contains_key(id) {
            let Some((rec, hash)) = self.get(conn, id)? else {
                return Ok(Authn::Unknown(None));
            };
            if cache.keys.len() >= MAX_CACHED {
                cache.keys.clear();
            }
            cache.keys.insert(id.to_string(), (Arc::new(rec), hash));
        }
        let (rec, hash) = &cache.keys[id];
        if !ct_eq(hash, &hash_key(presented, rec.binding().as_ref())) {
            return Ok(Authn::Unknown(Some(rec.id.clone())));
        }
        // Said only to the key's holder (the secret matched): a forger who knows the id would
        // otherwise write a warning per request (second review).
        if let Some(n) = rec
            .client_san
            .as_ref()
            .filter(|n| n.kind() == NameKind::Unreadable)
        {
            tracing::warn!(
                key = %rec.id,
                client_san = ?n.value(),
                "a key bound to a name this release cannot read is refused (revoke it, rebind \
                 it with `keys rotate --client-san`, or run the release that wrote it)"
            );
        }
        if rec.revoked_ms.is_some() {
            return Ok(Authn::Revoked(rec.id.clone()));
        }
        if rec.expires_ms.is_some_and(|e| now_ms >= e) {
            return Ok(Authn::Expired(rec.id.clone()));
        }
        Ok(Authn::Valid(rec.clone()))
    }

    fn create_bound(
        &self,
        name: &str,
        roles: &[Role],
        expires_ms: Option<u64>,
        binding: Option<ClientBinding>,
        now_ms: u64,
    ) -> Result<NewKey, KeyError> {
        self.create_as(
            self.operator.as_deref(),
            name,
            roles,
            expires_ms,
            binding,
            now_ms,
        )
    }

    fn revoke(&self, id: &str, now_ms: u64) -> Result<bool, KeyError> {
        let w = self.write();
        if self.get(&w, id)?.is_none() {
            return Err(KeyError::NotFound(id.to_string()));
        }
        let done = (|| {
            let tx = w.unchecked_transaction()?;
            let n = tx.execute(
                "UPDATE keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms as i64],
            )?;
            let command = format!(
                "revoke key {id}{}",
                if n == 1 { "" } else { " (already revoked)" }
            );
            Self::queue(
                self.operator.as_deref(),
                &tx,
                "admin.keys.revoke",
                &command,
                now_ms,
            )?;
            tx.commit()?;
            Ok::<_, KeyError>(n == 1)
        })();
        // Settled also when it was revoked already: the revocation that found it so may have
        // raced one committed a moment before, by another process, that other gateways on the
        // database have not yet seen (review).
        self.written(w, done.is_ok());
        done
    }

    fn rotate_rebinding(
        &self,
        id: &str,
        overlap: Duration,
        binding: Option<ClientBinding>,
        now_ms: u64,
    ) -> Result<NewKey, KeyError> {
        // The end of the overlap is stored as an i64: refuse one past it rather than wrap to a
        // negative time, which would end the old key at once.
        let end = u64::try_from(overlap.as_millis())
            .ok()
            .and_then(|o| now_ms.checked_add(o))
            .filter(|&e| i64::try_from(e).is_ok())
            .ok_or_else(|| {
                KeyError::Invalid(format!("an overlap of {} s is too long", overlap.as_secs()))
            })?;
        let mut w = self.write();
        // Read the old key in the write transaction (taken at once, not on the first write), so
        // that a revocation by another process cannot land between the checks and the insert.
        let tx = w.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (old, _) = self
            .get(&tx, id)?
            .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
        if old.revoked_ms.is_some() {
            return Err(KeyError::Invalid(format!("key {id} is revoked")));
        }
        if old.expires_ms.is_some_and(|e| now_ms >= e) {
            return Err(KeyError::Invalid(format!("key {id} has expired")));
        }
        // The successor lives no longer than the key it replaces was meant to: the expiry that
        // key was made with, not the end of an overlap that an earlier rotation of it set (the
        // key rotated again in its overlap, its first successor lost; review).
        let made_expires: Option<i64> = tx
            .prepare_cached("SELECT made_expires_ms FROM keys WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))?;
        let end = old.expires_ms.map_or(end, |e| e.min(end));
        // With no overlap the key ends at once, as a revocation does: not by an expiry of now,
        // which a clock that steps back would undo (review).
        let ended = (end <= now_ms).then_some(now_ms as i64);
        tx.execute(
            "UPDATE keys SET expires_ms = ?2, revoked_ms = COALESCE(revoked_ms, ?3) WHERE id = ?1",
            params![id, end as i64, ended],
        )?;
        let new = Self::insert(
            &tx,
            &old.name,
            &old.roles,
            made_expires.map(|e| e.max(0) as u64),
            Some(&old.lineage),
            binding.clone().or_else(|| old.binding()).as_ref(),
            now_ms,
        )?;
        let rebound = binding.map_or(String::new(), |b| format!(" {b}"));
        let command = format!(
            "rotate key {id} --overlap {}s{rebound}: {} (the old key ends at {end} ms)",
            overlap.as_secs(),
            new.record.id
        );
        Self::queue(
            self.operator.as_deref(),
            &tx,
            "admin.keys.rotate",
            &command,
            now_ms,
        )?;
        let committed = tx.commit();
        self.written(w, committed.is_ok());
        committed?;
        Ok(new)
    }

    fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let guard = self.lock();
        let conn = &guard.conn;
        let mut stmt = conn.prepare(
            "SELECT id, name, hash, roles, created_ms, expires_ms, revoked_ms, totp_secret, lineage,
                    client_cert_sha256, client_san
             FROM keys ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map([], Self::record)?;
        Ok(rows.map(|r| r.map(|(k, _)| k)).collect::<Result<_, _>>()?)
    }

    fn find(&self, id: &str) -> Result<Option<KeyRecord>, KeyError> {
        let guard = self.lock();
        Ok(self.get(&guard.conn, id)?.map(|(k, _)| k))
    }

    fn release_totp(&self, id: &str, code: &str, now_ms: u64) -> Result<bool, KeyError> {
        if !totp_shaped(code) {
            return Ok(false);
        }
        let w = self.write();
        let secret: Option<Option<Vec<u8>>> = w
            .query_row(
                "SELECT totp_secret FROM keys WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(Some(secret)) = secret else {
            return Ok(false);
        };
        let Some(step) = totp_for(secret)?.check(code, now_ms / 1000) else {
            return Ok(false);
        };
        // Back to just before the code's step, only if it is still the last one used (codes of
        // earlier steps stay used) and only once per step: a code given back and accepted again
        // is not given back again, so one code cannot be cycled through refused actions. The
        // refusal count the acceptance cleared comes back with it, added to the refusals since
        // (which it overwrote before: wrong codes tried between the acceptance and the give-back
        // were forgotten; 2026-12-06 review), so that wrong codes tried around it still add up to
        // a lockout; the last refusal's time is the latest of them.
        let n = w.execute(
            "UPDATE keys SET totp_last = ?2, totp_released = ?3,
                 totp_fails = totp_fails_before + totp_fails,
                 totp_failed_ms = COALESCE(totp_failed_ms, totp_failed_ms_before)
             WHERE id = ?1 AND totp_last = ?3 AND totp_released IS NOT ?3",
            params![id, step as i64 - 1, step as i64],
        )?;
        Ok(n == 1)
    }

    fn check_totp(&self, id: &str, code: &str, now_ms: u64) -> Result<bool, KeyError> {
        if !totp_shaped(code) {
            return Ok(false);
        }
        let mut w = self.write();
        // A write transaction from the start: the failure count is read and updated in one step
        // for every gateway on the database.
        let tx = w.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(Option<Vec<u8>>, i64, Option<i64>)> = tx
            .query_row(
                "SELECT totp_secret, totp_fails, totp_failed_ms FROM keys WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((Some(secret), fails, failed_ms)) = row else {
            return Ok(false);
        };
        let window = u64::try_from(TOTP_LOCKOUT.as_millis()).unwrap_or(u64::MAX);
        // The last refusal, if it is recent enough for the next one to add to the count.
        let recent = failed_ms
            .map(|t| t.max(0) as u64)
            .filter(|&t| now_ms < t.saturating_add(window));
        let fails = if recent.is_some() {
            u32::try_from(fails.max(0)).unwrap_or(u32::MAX)
        } else {
            0
        };
        if let Some(last) = recent
            && fails >= TOTP_MAX_FAILS
        {
            return Err(KeyError::TotpLocked {
                id: id.to_string(),
                until_ms: last.saturating_add(window),
            });
        }
        // Consume the step: a code is accepted once (RFC 6238 §5.2). A success clears the count.
        let accepted = match totp_for(secret)?.check(code, now_ms / 1000) {
            Some(step) => {
                tx.execute(
                    "UPDATE keys SET totp_last = ?2, totp_fails = 0, totp_failed_ms = NULL,
                         totp_fails_before = ?3, totp_failed_ms_before = ?4
                     WHERE id = ?1 AND (totp_last IS NULL OR totp_last < ?2)",
                    params![id, step as i64, fails, recent.map(|t| t as i64)],
                )? == 1
            }
            None => false,
        };
        if !accepted {
            // A replayed code counts too: the count is of refusals, whatever their cause.
            tx.execute(
                "UPDATE keys SET totp_fails = ?2, totp_failed_ms = ?3 WHERE id = ?1",
                params![
                    id,
                    fails.saturating_add(1),
                    now_ms.max(recent.unwrap_or(0)) as i64
                ],
            )?;
        }
        tx.commit()?;
        Ok(accepted)
    }
}

/// The current TOTP code of a base32 secret at `now_ms` (for tests and the CLI).
pub fn totp_code(secret_base32: &str, now_ms: u64) -> Result<String, KeyError> {
    let secret = totp_rs::Secret::try_from_base32(secret_base32)
        .map_err(|e| KeyError::Totp(format!("{e:?}")))?;
    Ok(totp_for(secret.as_bytes().to_vec())?
        .generate(now_ms / 1000)
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;

    const T0: u64 = 1_700_000_000_000;

    /// Requests are authenticated while a write (a revocation's fsync, a TOTP check) holds the
    /// writer: the two use different connections and locks.
    #[test]
    fn authentication_does_not_wait_for_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteKeyStore::open(&dir.path().join("keys.db")).unwrap();
        let k = s.create("q", &[Role::Query("m".into())], None, T0).unwrap();
        let writing = s.write();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| tx.send(s.authenticate(&k.key, T0)).unwrap());
            let got = rx.recv_timeout(Duration::from_secs(10));
            drop(writing);
            assert!(matches!(got, Ok(Ok(Authn::Valid(_)))), "{got:?}");
        });
    }

    /// A store used by an operator queues an audit entry with each change it makes, in the
    /// change's transaction (another connection sees both); a gateway's store and refused
    /// changes queue none.
    #[test]
    fn an_operators_changes_queue_their_audit_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let plain = SqliteKeyStore::open(&path).unwrap();
        let op = SqliteKeyStore::open(&path)
            .unwrap()
            .for_operator("ops@host");
        let k = plain
            .create("svc", &[Role::Query("m".into())], None, T0)
            .unwrap();
        assert!(plain.outbox(10).unwrap().is_empty());
        let a = op.create("adm", &[Role::Admin], Some(T0 + 9), T0).unwrap();
        let r = op
            .rotate(&k.record.id, Duration::from_secs(60), T0 + 1)
            .unwrap();
        assert!(op.revoke(&k.record.id, T0 + 2).unwrap());
        assert!(!op.revoke(&k.record.id, T0 + 3).unwrap());
        assert!(op.revoke("ffffffffffff", T0 + 4).is_err());
        assert!(op.create("", &[Role::Admin], None, T0 + 5).is_err());
        assert!(
            op.rotate(&k.record.id, Duration::from_secs(1), T0 + 6)
                .is_err()
        );

        let queued = plain.outbox(10).unwrap();
        let seqs: Vec<i64> = queued.iter().map(|q| q.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let entries: Vec<serde_json::Value> = queued
            .iter()
            .map(|q| serde_json::from_slice(&q.entry).unwrap())
            .collect();
        let actions: Vec<&str> = entries
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            [
                "admin.keys",
                "admin.keys.rotate",
                "admin.keys.revoke",
                "admin.keys.revoke"
            ]
        );
        for e in &entries {
            assert_eq!(e["operator"], "ops@host", "{e}");
            assert_eq!(e["method"], OPERATOR_METHOD, "{e}");
            assert_eq!(e["status"], 0, "{e}");
            assert!(e["key_id"].is_null(), "{e}");
        }
        let path_of = |i: usize| entries[i]["path"].as_str().unwrap().to_string();
        assert!(path_of(0).contains(&a.record.id), "{}", path_of(0));
        assert!(path_of(0).contains("--role admin"), "{}", path_of(0));
        assert!(path_of(0).contains(&format!("expires at {}", T0 + 9)));
        assert!(path_of(1).contains(&r.record.id), "{}", path_of(1));
        assert!(!path_of(2).contains("already"), "{}", path_of(2));
        assert!(path_of(3).contains("already revoked"), "{}", path_of(3));
        assert_eq!(entries[2]["ts_ms"], T0 + 2);

        assert_eq!(op.outbox(2).unwrap(), queued[..2]);
        assert!(queued.iter().all(|q| q.tried_at.is_none()));
        op.outbox_trying(queued[1].seq, 41).unwrap();
        assert_eq!(plain.outbox(2).unwrap()[1].tried_at, Some(41));
        op.outbox_done(queued[0].seq).unwrap();
        let mut tried = queued[1..].to_vec();
        tried[0].tried_at = Some(41);
        assert_eq!(plain.outbox(10).unwrap(), tried);
        assert_eq!(SqliteKeyStore::queued(&path).unwrap(), 3);

        // The entry is in the change's transaction: when it cannot be queued, nothing changes.
        plain
            .lock()
            .conn
            .execute_batch(
                "CREATE TRIGGER full BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'full'); END",
            )
            .unwrap();
        let fresh = plain.create("f", &[Role::Audit], None, T0).unwrap();
        assert!(op.revoke(&fresh.record.id, T0 + 10).is_err());
        assert!(
            op.rotate(&fresh.record.id, Duration::from_secs(60), T0 + 10)
                .is_err()
        );
        assert!(op.create("g", &[Role::Audit], None, T0 + 10).is_err());
        let now = plain.list().unwrap();
        assert_eq!(now.len(), 4, "{now:?}");
        let f = now.iter().find(|k| k.id == fresh.record.id).unwrap();
        assert!(f.revoked_ms.is_none() && f.expires_ms.is_none(), "{f:?}");
        assert_eq!(SqliteKeyStore::queued(&path).unwrap(), 3);
    }

    #[test]
    fn create_authenticate_forge_revoke() {
        let s = SqliteKeyStore::in_memory().unwrap();
        assert!(s.is_empty().unwrap());
        let k = s
            .create("alice", &[Role::Query("mnist".into())], None, T0)
            .unwrap();
        assert!(k.key.starts_with(&format!("pal_{}_", k.record.id)));
        assert!(k.totp_secret.is_none());
        assert!(
            matches!(s.authenticate(&k.key, T0).unwrap(), Authn::Valid(r) if r.id == k.record.id)
        );
        // Same id, another secret: a forgery.
        let forged = format!("pal_{}_{}", k.record.id, "A".repeat(43));
        assert_eq!(
            s.authenticate(&forged, T0).unwrap(),
            Authn::Unknown(Some(k.record.id.clone()))
        );
        assert_eq!(s.authenticate("nonsense", T0).unwrap(), Authn::Malformed);
        assert_eq!(
            s.authenticate("pal_0123456789ab_xyz", T0).unwrap(),
            Authn::Unknown(None)
        );
        assert!(s.revoke(&k.record.id, T0 + 1).unwrap());
        assert!(!s.revoke(&k.record.id, T0 + 2).unwrap());
        assert_eq!(
            s.authenticate(&k.key, T0 + 3).unwrap(),
            Authn::Revoked(k.record.id.clone())
        );
        assert!(matches!(
            s.revoke("000000000000", T0),
            Err(KeyError::NotFound(_))
        ));
        // The hash, not the key, is stored.
        let stored: Vec<u8> = s
            .lock()
            .conn
            .query_row("SELECT hash FROM keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, hash_key(&k.key, None));
    }

    #[test]
    fn a_change_by_another_connection_is_seen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let gateway = SqliteKeyStore::open(&path).unwrap();
        let cli = SqliteKeyStore::open(&path).unwrap();
        let valid = |key: &NewKey, now: u64| {
            matches!(gateway.authenticate(&key.key, now).unwrap(),
                Authn::Valid(r) if r.id == key.record.id)
        };
        let cached = |key: &NewKey| gateway.lock().cache.keys.contains_key(&key.record.id);
        let k = gateway
            .create("svc", &[Role::Query("*".into())], None, T0)
            .unwrap();
        // The first check reads the record and caches it; the second is answered from it.
        assert!(!cached(&k));
        assert!(valid(&k, T0));
        assert!(cached(&k));
        assert!(valid(&k, T0));
        // `palisade keys revoke` from another process: the next request is refused.
        assert!(cli.revoke(&k.record.id, T0 + 1).unwrap());
        assert_eq!(
            gateway.authenticate(&k.key, T0 + 2).unwrap(),
            Authn::Revoked(k.record.id.clone())
        );
        // A rotation elsewhere shortens the old key's life; seen at once too.
        let k2 = gateway.create("svc2", &[Role::Audit], None, T0).unwrap();
        assert!(valid(&k2, T0));
        cli.rotate(&k2.record.id, Duration::ZERO, T0 + 5).unwrap();
        assert_eq!(
            gateway.authenticate(&k2.key, T0 + 5).unwrap(),
            Authn::Revoked(k2.record.id.clone())
        );
        // Our own revocation drops our cache (data_version does not count own writes).
        let k3 = gateway.create("svc3", &[Role::Audit], None, T0).unwrap();
        assert!(valid(&k3, T0));
        assert!(gateway.revoke(&k3.record.id, T0 + 1).unwrap());
        assert_eq!(
            gateway.authenticate(&k3.key, T0 + 2).unwrap(),
            Authn::Revoked(k3.record.id.clone())
        );
        // A forgery of a cached key's id is still refused.
        assert!(cached(&k3));
        let forged = format!("pal_{}_{}", k3.record.id, "B".repeat(43));
        assert_eq!(
            gateway.authenticate(&forged, T0).unwrap(),
            Authn::Unknown(Some(k3.record.id.clone()))
        );
    }

    #[test]
    fn a_write_that_skips_the_settle_is_seen_once_the_recheck_window_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let gateway = SqliteKeyStore::open(&path).unwrap();
        let k = gateway
            .create("svc", &[Role::Query("*".into())], None, T0)
            .unwrap();
        assert!(matches!(
            gateway.authenticate(&k.key, T0).unwrap(),
            Authn::Valid(_)
        ));
        // A writer that does not wait (an older palisade, a hand-made SQL update).
        let raw = Connection::open(&path).unwrap();
        raw.execute(
            "UPDATE keys SET revoked_ms = ?2 WHERE id = ?1",
            params![k.record.id, T0 as i64],
        )
        .unwrap();
        std::thread::sleep(RECHECK_AFTER);
        assert_eq!(
            gateway.authenticate(&k.key, T0 + 1).unwrap(),
            Authn::Revoked(k.record.id.clone())
        );
        assert!(SETTLE > RECHECK_AFTER);
    }

    #[cfg(unix)]
    #[test]
    fn the_key_database_is_made_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let s = SqliteKeyStore::open(&path).unwrap();
        s.create("a", &[Role::Admin], None, T0).unwrap();
        for f in ["keys.db", "keys.db-wal"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}: {mode:o}");
        }
    }

    #[test]
    fn a_revocation_that_finds_the_key_revoked_still_waits_out_the_caches() {
        // Another process's revocation may have committed a moment before, and the other
        // gateways on the database not seen it yet: the second revocation returns only once
        // they must have.
        let s = SqliteKeyStore::in_memory().unwrap();
        let k = s.create("svc", &[Role::Audit], None, T0).unwrap();
        assert!(s.revoke(&k.record.id, T0).unwrap());
        let t = std::time::Instant::now();
        assert!(!s.revoke(&k.record.id, T0 + 1).unwrap());
        assert!(t.elapsed() >= SETTLE, "{:?}", t.elapsed());
    }

    #[test]
    fn rotation_keeps_old_key_for_the_overlap_only() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let old = s.create("svc", &[Role::Audit], None, T0).unwrap();
        let new = s
            .rotate(&old.record.id, Duration::from_secs(60), T0)
            .unwrap();
        assert_eq!(new.record.roles, vec![Role::Audit]);
        assert!(matches!(
            s.authenticate(&old.key, T0 + 59_000).unwrap(),
            Authn::Valid(_)
        ));
        assert!(matches!(
            s.authenticate(&old.key, T0 + 60_000).unwrap(),
            Authn::Expired(_)
        ));
        assert!(matches!(
            s.authenticate(&new.key, T0 + 60_000).unwrap(),
            Authn::Valid(_)
        ));
        assert_eq!(s.list().unwrap().len(), 2);
    }

    #[test]
    fn totp_codes_work_once() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let k = s.create("root", &[Role::Admin], None, T0).unwrap();
        let secret = k.totp_secret.clone().unwrap();
        let code = totp_code(&secret, T0).unwrap();
        assert!(!s.check_totp(&k.record.id, "000000x", T0).unwrap());
        assert!(s.check_totp(&k.record.id, &code, T0).unwrap());
        assert!(!s.check_totp(&k.record.id, &code, T0).unwrap(), "replay");
        let later = totp_code(&secret, T0 + 30_000).unwrap();
        assert!(s.check_totp(&k.record.id, &later, T0 + 30_000).unwrap());
        let stale = totp_code(&secret, T0 - 600_000).unwrap();
        assert!(!s.check_totp(&k.record.id, &stale, T0 + 60_000).unwrap());
    }

    /// Wrong codes around a code that is accepted and then given back still add up to a lockout:
    /// a code cycled through refused actions does not clear the count.
    #[test]
    fn a_code_given_back_restores_the_refusal_count_it_cleared() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let k = s.create("root", &[Role::Admin], None, T0).unwrap();
        let id = &k.record.id;
        let code = totp_code(k.totp_secret.as_deref().unwrap(), T0).unwrap();
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 0..TOTP_MAX_FAILS - 1 {
            assert!(!s.check_totp(id, wrong, T0).unwrap());
        }
        assert!(s.check_totp(id, &code, T0).unwrap());
        assert!(s.release_totp(id, &code, T0).unwrap());
        assert!(!s.check_totp(id, wrong, T0).unwrap());
        assert!(matches!(
            s.check_totp(id, &code, T0),
            Err(KeyError::TotpLocked { .. })
        ));
    }

    #[test]
    fn a_totp_code_given_back_works_once_more_and_only_while_it_is_the_last_used() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let k = s.create("root", &[Role::Admin], None, T0).unwrap();
        let secret = k.totp_secret.clone().unwrap();
        let id = &k.record.id;
        let code = totp_code(&secret, T0).unwrap();
        // Nothing to give back before the code is used.
        assert!(!s.release_totp(id, &code, T0).unwrap());
        assert!(s.check_totp(id, &code, T0).unwrap());
        assert!(s.release_totp(id, &code, T0).unwrap());
        assert!(s.check_totp(id, &code, T0).unwrap());
        // Given back once per step: accepted again, it stays used.
        assert!(!s.release_totp(id, &code, T0).unwrap());
        assert!(!s.check_totp(id, &code, T0).unwrap(), "replay");
        // Once a later code is used, the earlier one stays used.
        let later = totp_code(&secret, T0 + 30_000).unwrap();
        assert!(s.check_totp(id, &later, T0 + 30_000).unwrap());
        assert!(!s.release_totp(id, &code, T0 + 30_000).unwrap());
        assert!(!s.check_totp(id, &code, T0 + 30_000).unwrap());
        // A code no longer current, a malformed one and an unknown key give nothing back.
        assert!(!s.release_totp(id, &later, T0 + 600_000).unwrap());
        assert!(!s.release_totp(id, "12345x", T0 + 30_000).unwrap());
        assert!(!s.release_totp("ffffffffffff", &later, T0 + 30_000).unwrap());
        assert!(!s.check_totp(id, &later, T0 + 30_000).unwrap());
    }

    #[test]
    fn a_rotated_key_keeps_the_line_of_the_first() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let first = s.create("svc", &[Role::Audit], None, T0).unwrap();
        assert_eq!(first.record.lineage, first.record.id);
        let second = s
            .rotate(&first.record.id, Duration::from_secs(60), T0)
            .unwrap();
        let third = s
            .rotate(&second.record.id, Duration::from_secs(60), T0 + 1)
            .unwrap();
        for k in [&second, &third] {
            assert_eq!(k.record.lineage, first.record.id);
        }
        // As stored, and as a gateway reads it.
        let Authn::Valid(r) = s.authenticate(&third.key, T0 + 2).unwrap() else {
            panic!("the newest key is valid");
        };
        assert_eq!(r.lineage, first.record.id);
        let listed = s.list().unwrap();
        assert!(listed.iter().all(|r| r.lineage == first.record.id));
        // Found by id as listed, a revoked key too; an unknown id is no key.
        assert!(s.revoke(&second.record.id, T0 + 3).unwrap());
        for k in [&first, &second, &third] {
            let found = s.find(&k.record.id).unwrap().expect("a stored key");
            let as_listed = listed.iter().find(|r| r.id == k.record.id).unwrap();
            assert_eq!(
                (
                    found.lineage.as_str(),
                    found.name.as_str(),
                    found.created_ms
                ),
                (
                    as_listed.lineage.as_str(),
                    as_listed.name.as_str(),
                    as_listed.created_ms
                )
            );
        }
        assert!(
            s.find(&second.record.id)
                .unwrap()
                .unwrap()
                .revoked_ms
                .is_some()
        );
        assert!(s.find("000000000000").unwrap().is_none());
    }

    #[test]
    fn a_key_dead_at_birth_or_past_what_the_database_holds_is_refused() {
        let s = SqliteKeyStore::in_memory().unwrap();
        for expires in [T0 - 1, T0, u64::MAX, i64::MAX as u64 + 1] {
            let e = s
                .create("svc", &[Role::Audit], Some(expires), T0)
                .unwrap_err();
            assert!(matches!(e, KeyError::Invalid(_)), "{expires}: {e}");
        }
        assert!(s.list().unwrap().is_empty());
        let far = s
            .create("svc", &[Role::Audit], Some(i64::MAX as u64), T0)
            .unwrap();
        assert!(matches!(
            s.authenticate(&far.key, T0 + 1).unwrap(),
            Authn::Valid(_)
        ));
    }

    #[test]
    fn rotation_keeps_the_original_expiry() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let old = s
            .create("svc", &[Role::Audit], Some(T0 + 100_000), T0)
            .unwrap();
        let new = s
            .rotate(&old.record.id, Duration::from_secs(60), T0)
            .unwrap();
        assert_eq!(new.record.expires_ms, Some(T0 + 100_000));
        let listed = s.list().unwrap();
        let stored = listed.iter().find(|r| r.id == new.record.id).unwrap();
        assert_eq!(stored.expires_ms, Some(T0 + 100_000));
        assert!(matches!(
            s.authenticate(&new.key, T0 + 99_999).unwrap(),
            Authn::Valid(_)
        ));
        assert_eq!(
            s.authenticate(&new.key, T0 + 100_000).unwrap(),
            Authn::Expired(new.record.id.clone())
        );
        // The old key ends with the overlap, which is shorter than its own life here.
        assert_eq!(
            s.authenticate(&old.key, T0 + 60_000).unwrap(),
            Authn::Expired(old.record.id.clone())
        );
    }

    /// Rotating a key a second time while it is in its overlap (the first successor lost:
    /// `palisade keys rotate` could not show it and revoked it, or the admin API's answer never
    /// reached the client) gives the successor the expiry the key was made with, not the end of
    /// the first overlap (review).
    #[test]
    fn a_second_rotation_in_the_overlap_gives_the_successor_the_original_expiry() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let old = s.create("svc", &[Role::Audit], None, T0).unwrap();
        let lost = s
            .rotate(&old.record.id, Duration::from_secs(3600), T0)
            .unwrap();
        assert_eq!(lost.record.expires_ms, None);
        // The first successor was never seen: taken back, as `palisade keys` does.
        assert!(s.revoke(&lost.record.id, T0 + 1).unwrap());
        // The old key is still in its overlap: rotate it again.
        let again = s
            .rotate(&old.record.id, Duration::from_secs(3600), T0 + 1000)
            .unwrap();
        assert_eq!(
            again.record.expires_ms, None,
            "the second successor inherits the old key's overlap end"
        );
        let t = T0 + 3_600_000 + 1;
        assert!(
            matches!(s.authenticate(&again.key, t).unwrap(), Authn::Valid(_)),
            "the successor of a key that never expired has expired: {:?}",
            s.authenticate(&again.key, t).unwrap()
        );
    }

    /// A rotation with no overlap ends the old key at once whatever the clock does after: an
    /// expiry of "now" would be undone by a clock that steps back (an NTP correction of a clock
    /// that ran ahead; review).
    #[test]
    fn a_key_rotated_away_with_no_overlap_stays_refused_when_the_clock_steps_back() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let old = s.create("svc", &[Role::Audit], None, T0).unwrap();
        s.rotate(&old.record.id, Duration::ZERO, T0 + 60_000)
            .unwrap();
        assert_eq!(
            s.authenticate(&old.key, T0 + 60_000).unwrap(),
            Authn::Revoked(old.record.id.clone())
        );
        // The clock is corrected by one second.
        assert_eq!(
            s.authenticate(&old.key, T0 + 59_000).unwrap(),
            Authn::Revoked(old.record.id.clone()),
            "a key rotated away with no overlap is accepted again after the clock stepped back"
        );
    }

    /// A key name is up to 64 characters, as its refusal says, not 64 bytes: 64 characters of a
    /// non-Latin script (192 bytes) are a name, 65 are not (review).
    #[test]
    fn a_key_name_is_counted_in_characters() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let name = "鍵".repeat(64);
        let made = s.create(&name, &[Role::Audit], None, T0);
        assert!(made.is_ok(), "a 64-character name: {}", made.unwrap_err());
        let e = s
            .create(&"鍵".repeat(65), &[Role::Audit], None, T0)
            .unwrap_err();
        assert!(
            e.to_string().contains("1 to 64 printable characters"),
            "{e}"
        );
    }

    #[test]
    fn rotating_an_expired_or_revoked_key_is_refused() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let expired = s.create("old", &[Role::Audit], Some(T0 + 10), T0).unwrap();
        let e = s
            .rotate(&expired.record.id, Duration::from_secs(60), T0 + 10)
            .unwrap_err();
        assert!(
            matches!(&e, KeyError::Invalid(m) if m.contains("expired")),
            "{e}"
        );
        let revoked = s.create("gone", &[Role::Audit], None, T0).unwrap();
        assert!(s.revoke(&revoked.record.id, T0 + 1).unwrap());
        let e = s
            .rotate(&revoked.record.id, Duration::from_secs(60), T0 + 2)
            .unwrap_err();
        assert!(
            matches!(&e, KeyError::Invalid(m) if m.contains("revoked")),
            "{e}"
        );
        // Neither refusal left a successor behind.
        assert_eq!(s.list().unwrap().len(), 2);
    }

    #[test]
    fn rotation_refuses_an_overlap_that_overflows() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let k = s.create("svc", &[Role::Audit], None, T0).unwrap();
        for overlap in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            // Fits a u64 but not the i64 column.
            Duration::from_millis(i64::MAX as u64 - T0 + 1),
        ] {
            let e = s.rotate(&k.record.id, overlap, T0).unwrap_err();
            assert!(
                matches!(&e, KeyError::Invalid(m) if m.contains("too long")),
                "{e}"
            );
        }
        // Nothing changed: the key lives on, with no successor.
        assert_eq!(s.list().unwrap().len(), 1);
        assert!(matches!(
            s.authenticate(&k.key, T0 + 1).unwrap(),
            Authn::Valid(_)
        ));
        // The longest overlap that fits is accepted.
        let new = s
            .rotate(
                &k.record.id,
                Duration::from_millis(i64::MAX as u64 - T0),
                T0,
            )
            .unwrap();
        assert_eq!(new.record.expires_ms, None);
        assert!(matches!(
            s.authenticate(&k.key, T0 + 1).unwrap(),
            Authn::Valid(_)
        ));
    }

    #[test]
    fn a_revocation_that_lands_while_rotate_waits_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let s = SqliteKeyStore::open(&path).unwrap();
        let k = s.create("svc", &[Role::Audit], None, T0).unwrap();
        // Another process holds the write lock and is about to revoke the key.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::scope(|scope| {
            let rotation = scope.spawn(|| s.rotate(&k.record.id, Duration::from_secs(60), T0 + 2));
            std::thread::sleep(Duration::from_millis(100));
            other
                .execute(
                    "UPDATE keys SET revoked_ms = ?2 WHERE id = ?1",
                    params![k.record.id, (T0 + 1) as i64],
                )
                .unwrap();
            other.execute_batch("COMMIT").unwrap();
            let e = rotation.join().unwrap().unwrap_err();
            assert!(
                matches!(&e, KeyError::Invalid(m) if m.contains("revoked")),
                "{e}"
            );
        });
        assert_eq!(s.list().unwrap().len(), 1);
    }

    /// A well-formed code that no step near `now_ms` accepts.
    fn wrong_code(secret: &str, now_ms: u64) -> String {
        let near: Vec<String> = [now_ms - 30_000, now_ms, now_ms + 30_000]
            .iter()
            .map(|&t| totp_code(secret, t).unwrap())
            .collect();
        (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|c| !near.contains(c))
            .unwrap()
    }

    #[test]
    fn five_wrong_totp_codes_lock_the_key_until_the_lockout_ends() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let k = s.create("root", &[Role::Admin], None, T0).unwrap();
        let id = &k.record.id;
        let secret = k.totp_secret.clone().unwrap();
        let window = TOTP_LOCKOUT.as_millis() as u64;
        for i in 0..u64::from(TOTP_MAX_FAILS) {
            let t = T0 + i * 1000;
            assert!(!s.check_totp(id, &wrong_code(&secret, t), t).unwrap());
        }
        let last = T0 + (u64::from(TOTP_MAX_FAILS) - 1) * 1000;
        // Even the right code is refused, with the end of the lockout.
        let t = last + 1000;
        let e = s
            .check_totp(id, &totp_code(&secret, t).unwrap(), t)
            .unwrap_err();
        assert!(
            matches!(&e, KeyError::TotpLocked { id: i, until_ms } if i == id && *until_ms == last + window),
            "{e}"
        );
        // Refusals during the lockout do not lengthen it.
        let t = last + window - 1;
        assert!(matches!(
            s.check_totp(id, &wrong_code(&secret, t), t),
            Err(KeyError::TotpLocked { until_ms, .. }) if until_ms == last + window
        ));
        assert!(matches!(
            s.check_totp(id, &totp_code(&secret, t).unwrap(), t),
            Err(KeyError::TotpLocked { .. })
        ));
        // Once it has ended, the right code passes.
        let t = last + window;
        assert!(
            s.check_totp(id, &totp_code(&secret, t).unwrap(), t)
                .unwrap()
        );
    }

    #[test]
    fn a_right_totp_code_resets_the_failure_count() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let k = s.create("root", &[Role::Admin], None, T0).unwrap();
        let id = &k.record.id;
        let secret = k.totp_secret.clone().unwrap();
        let mut t = T0;
        for round in 0..3 {
            for _ in 1..TOTP_MAX_FAILS {
                assert!(!s.check_totp(id, &wrong_code(&secret, t), t).unwrap());
                t += 1000;
            }
            // A fresh step each round: a code works once.
            t = T0 + round * 30_000 + 29_000;
            assert!(
                s.check_totp(id, &totp_code(&secret, t).unwrap(), t)
                    .unwrap(),
                "round {round}"
            );
            t += 1000;
        }
        // Failures far apart do not add up either.
        let window = TOTP_LOCKOUT.as_millis() as u64;
        for _ in 0..2 * TOTP_MAX_FAILS {
            t += window;
            assert!(!s.check_totp(id, &wrong_code(&secret, t), t).unwrap());
        }
        t += 1000;
        assert!(
            s.check_totp(id, &totp_code(&secret, t).unwrap(), t)
                .unwrap()
        );
    }

    #[test]
    fn a_totp_lockout_is_shared_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let a = SqliteKeyStore::open(&path).unwrap();
        let k = a.create("root", &[Role::Admin], None, T0).unwrap();
        let id = &k.record.id;
        let secret = k.totp_secret.clone().unwrap();
        for _ in 0..TOTP_MAX_FAILS {
            assert!(!a.check_totp(id, &wrong_code(&secret, T0), T0).unwrap());
        }
        let b = SqliteKeyStore::open(&path).unwrap();
        drop(a);
        let code = totp_code(&secret, T0 + 1000).unwrap();
        assert!(matches!(
            b.check_totp(id, &code, T0 + 1000),
            Err(KeyError::TotpLocked { .. })
        ));
    }

    #[test]
    fn a_database_without_the_failure_count_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        // The schema before the TOTP failure count.
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE keys (
                     id TEXT PRIMARY KEY, name TEXT NOT NULL, hash BLOB NOT NULL,
                     roles TEXT NOT NULL, created_ms INTEGER NOT NULL, expires_ms INTEGER,
                     revoked_ms INTEGER, totp_secret BLOB, totp_last INTEGER);",
            )
            .unwrap();
        let s = SqliteKeyStore::open(&path).unwrap();
        let k = s.create("root", &[Role::Admin], None, T0).unwrap();
        let secret = k.totp_secret.clone().unwrap();
        assert!(
            !s.check_totp(&k.record.id, &wrong_code(&secret, T0), T0)
                .unwrap()
        );
        assert!(
            s.check_totp(&k.record.id, &totp_code(&secret, T0).unwrap(), T0)
                .unwrap()
        );
        // Opening it again finds the columns there.
        drop(s);
        SqliteKeyStore::open(&path).unwrap();
    }

    #[test]
    fn a_key_made_before_its_expiry_was_recorded_passes_on_the_expiry_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let s = SqliteKeyStore::open(&path).unwrap();
        let k = s
            .create("svc", &[Role::Audit], Some(T0 + 86_400_000), T0)
            .unwrap();
        drop(s);
        // As a database made before `made_expires_ms` holds it.
        Connection::open(&path)
            .unwrap()
            .execute_batch("ALTER TABLE keys DROP COLUMN made_expires_ms")
            .unwrap();
        let s = SqliteKeyStore::open(&path).unwrap();
        let next = s
            .rotate(&k.record.id, Duration::from_secs(60), T0 + 1)
            .unwrap();
        assert_eq!(next.record.expires_ms, Some(T0 + 86_400_000));
    }

    #[test]
    fn a_binding_is_kept_on_disk_and_a_database_from_before_bindings_gets_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let client = ClientIdentity::of_der(b"a client certificate");
        let cert = *client.certificate();
        let s = SqliteKeyStore::open(&path).unwrap();
        let plain = s.create("plain", &[Role::Audit], None, T0).unwrap();
        drop(s);
        // As a database of schema 1 holds it: no columns, version 1.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "ALTER TABLE keys DROP COLUMN client_cert_sha256;
             ALTER TABLE keys DROP COLUMN client_san;
             PRAGMA user_version = 1",
        )
        .unwrap();
        drop(old);
        let s = SqliteKeyStore::open(&path).unwrap();
        assert_eq!(s.find(&plain.record.id).unwrap().unwrap().client_cert, None);
        let version = || user_version(&path);
        // No key bound yet: still of the schema the release before bindings opens.
        assert_eq!(version(), 1);
        let bound = bound_to(&s, "bound", ClientBinding::Certificate(cert));
        drop(s);
        let s = SqliteKeyStore::open(&path).unwrap();
        let found = s.find(&bound.record.id).unwrap().unwrap();
        assert_eq!(found.client_cert, Some(cert));
        assert_eq!(
            s.list()
                .unwrap()
                .iter()
                .filter(|k| k.client_cert.is_some())
                .count(),
            1
        );
        // Checked against the connection's certificate, or its absence.
        let other = ClientIdentity::of_der(b"another");
        let outcome = |client| s.authenticate_from(&bound.key, client, T0).unwrap();
        assert!(matches!(outcome(Some(&client)), Authn::Valid(_)));
        assert_eq!(
            outcome(Some(&other)),
            Authn::WrongClient(bound.record.id.clone())
        );
        assert_eq!(outcome(None), Authn::WrongClient(bound.record.id.clone()));
        assert!(matches!(
            s.authenticate_from(&plain.key, Some(&other), T0).unwrap(),
            Authn::Valid(_)
        ));
        // The file is now of schema 2, which a gateway that does not check bindings refuses.
        assert_eq!(version(), 2);
        // And a gateway of schema 1 already running on it, which reads the hash alone, finds
        // no match for the bound key: SHA-256 of the key is not what is stored (review).
        let stored = |id: &str| -> Vec<u8> {
            Connection::open(&path)
                .unwrap()
                .query_row("SELECT hash FROM keys WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        let sha256 = |key: &str| Sha256::digest(key.as_bytes()).to_vec();
        assert_ne!(stored(&bound.record.id), sha256(&bound.key));
        assert_eq!(stored(&plain.record.id), sha256(&plain.key));
        // An operator's audit entry names the binding.
        let s = SqliteKeyStore::open(&path).unwrap().for_operator("op");
        bound_to(&s, "b2", ClientBinding::Certificate(cert));
        let queued = s.outbox(10).unwrap();
        let entry = String::from_utf8(queued.last().unwrap().entry.clone()).unwrap();
        assert!(
            entry.contains(&format!("--client-cert sha256:{cert}")),
            "{entry}"
        );
    }

    /// A key of `s` with the audit role, named `name`, bound as `binding` says.
    fn bound_to(s: &SqliteKeyStore, name: &str, binding: ClientBinding) -> NewKey {
        s.create_bound(name, &[Role::Audit], None, Some(binding), T0)
            .unwrap()
    }

    /// A client identity whose certificate carries `names` (URIs if they have "://", DNS names
    /// otherwise), a new key pair each time: a renewal of the same names.
    fn presenting(names: &[&str]) -> ClientIdentity {
        use rcgen::SanType;
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.contains("://") {
                true => SanType::URI((*n).try_into().unwrap()),
                false => SanType::DnsName((*n).try_into().unwrap()),
            })
            .collect();
        let key = rcgen::KeyPair::generate().unwrap();
        ClientIdentity::of_der(p.self_signed(&key).unwrap().der())
    }

    /// The schema version in the header of the database at `path`.
    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_key_bound_to_a_name_outlives_renewals_and_takes_the_file_to_the_schema_of_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let version = || user_version(&path);
        let spiffe = "spiffe://example.org/ns/prod/sa/scorer";
        let name: SubjectName = format!("uri:{spiffe}").parse().unwrap();
        let s = SqliteKeyStore::open(&path).unwrap().for_operator("op");
        let alice = presenting(&[spiffe]);
        let by_cert = bound_to(&s, "c", ClientBinding::Certificate(*alice.certificate()));
        assert_eq!(version(), schema::KEYS_CERT_BOUND);
        let by_name = bound_to(&s, "n", ClientBinding::Name(name.clone()));
        // A release that knows certificate bindings only would not check this one.
        assert_eq!(version(), schema::KEYS);
        assert_eq!(by_name.record.client_san, Some(name.clone()));
        assert_eq!(by_name.record.client_cert, None);
        let entry = String::from_utf8(s.outbox(10).unwrap().last().unwrap().entry.clone());
        assert!(entry.unwrap().contains(&format!("--client-san {name}")));
        drop(s);
        let s = SqliteKeyStore::open(&path).unwrap();
        let found = s.find(&by_name.record.id).unwrap().unwrap();
        assert_eq!(found.binding(), Some(ClientBinding::Name(name.clone())));
        let outcome = |key: &str, client: Option<&ClientIdentity>| {
            s.authenticate_from(key, client, T0).unwrap()
        };
        // The certificate renewed (same name, new key pair, so another thumbprint): the key
        // bound to the name still works; the one bound to the old certificate does not.
        let renewed = presenting(&[spiffe]);
        assert_ne!(renewed.certificate(), alice.certificate());
        for client in [&alice, &renewed] {
            assert!(matches!(
                outcome(&by_name.key, Some(client)),
                Authn::Valid(_)
            ));
        }
        assert!(matches!(
            outcome(&by_cert.key, Some(&alice)),
            Authn::Valid(_)
        ));
        let wrong = |id: &str| Authn::WrongClient(id.to_string());
        assert_eq!(
            outcome(&by_cert.key, Some(&renewed)),
            wrong(&by_cert.record.id)
        );
        // Another name, the same name as another kind, a name the certificate only starts
        // with, or no certificate: refused.
        for client in [
            presenting(&["spiffe://example.org/ns/prod/sa/mallory"]),
            presenting(&["spiffe://example.org/ns/prod/sa/scorer/x"]),
            presenting(&["scorer.example.org"]),
        ] {
            assert_eq!(
                outcome(&by_name.key, Some(&client)),
                wrong(&by_name.record.id)
            );
        }
        assert_eq!(outcome(&by_name.key, None), wrong(&by_name.record.id));
        // Stored as bound: what a release before names compares (SHA-256 of the key alone)
        // does not match.
        let stored: Vec<u8> = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT hash FROM keys WHERE id = ?1",
                params![by_name.record.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_ne!(stored, Sha256::digest(by_name.key.as_bytes()).to_vec());
        // Rotation keeps the name, or moves a certificate's key to a name.
        let kept = s.rotate(&by_name.record.id, Duration::ZERO, T0).unwrap();
        assert_eq!(
            kept.record.binding(),
            Some(ClientBinding::Name(name.clone()))
        );
        let moved = s
            .rotate_rebinding(
                &by_cert.record.id,
                Duration::ZERO,
                Some(ClientBinding::Name(name.clone())),
                T0,
            )
            .unwrap();
        assert_eq!(moved.record.client_cert, None);
        assert!(matches!(
            outcome(&moved.key, Some(&renewed)),
            Authn::Valid(_)
        ));
    }

    #[test]
    fn a_name_the_store_cannot_read_refuses_the_key_and_is_shown_as_stored() {
        let (dir, k, _) = a_store_with_an_unreadable_name();
        let path = dir.path().join("keys.db");
        let s = SqliteKeyStore::open(&path).unwrap();
        // No certificate presents it, whatever its names.
        let outcome = s
            .authenticate_from(&k.key, Some(&presenting(&["scorer.example.org"])), T0)
            .unwrap();
        assert!(!matches!(outcome, Authn::Valid(_)), "{outcome:?}");
        let found = s.find(&k.record.id).unwrap().unwrap();
        let shown = found.client_san.unwrap();
        assert_eq!(
            (shown.kind(), shown.to_string()),
            (NameKind::Unreadable, "dns:*".into())
        );
    }

    /// A store with a plain key and a key whose stored name was edited into one that does not
    /// parse.
    fn a_store_with_an_unreadable_name() -> (tempfile::TempDir, NewKey, NewKey) {
        with_stored_name("dns:scorer.example.org", "dns:*", false)
    }

    /// A store with a plain key and a key bound to the name `made`, then edited to `stored`,
    /// its hash too if `rehash` (as if written so).
    fn with_stored_name(
        made: &str,
        stored: &str,
        rehash: bool,
    ) -> (tempfile::TempDir, NewKey, NewKey) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let s = SqliteKeyStore::open(&path).unwrap();
        let plain = s.create("plain", &[Role::Audit], None, T0).unwrap();
        let name: SubjectName = made.parse().unwrap();
        let bound = bound_to(&s, "n", ClientBinding::Name(name));
        drop(s);
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE keys SET client_san = ?2 WHERE id = ?1",
            params![bound.record.id, stored],
        )
        .unwrap();
        if rehash {
            let mut h = Sha256::new();
            h.update(bound.key.as_bytes());
            h.update(b"\0client-san\0");
            h.update(stored.as_bytes());
            let hash: [u8; 32] = h.finalize().into();
            conn.execute(
                "UPDATE keys SET hash = ?2 WHERE id = ?1",
                params![bound.record.id, &hash[..]],
            )
            .unwrap();
        }
        (dir, bound, plain)
    }

    #[test]
    fn a_key_whose_stored_name_does_not_parse_can_still_be_revoked() {
        let (dir, bad, _) = a_store_with_an_unreadable_name();
        let s = SqliteKeyStore::open(&dir.path().join("keys.db")).unwrap();
        let revoked = s.revoke(&bad.record.id, T0 + 1);
        assert!(matches!(revoked, Ok(true)), "revoke: {revoked:?}");
    }

    /// Review: one such row makes `list` fail as a whole, so `palisade keys list`, the admin
    /// API's list and `palisade serve` without `--tls-client-ca` (which lists the keys to warn
    /// about bound ones, `serve.rs`) all fail because of one key.
    #[test]
    fn one_stored_name_that_does_not_parse_does_not_hide_every_key() {
        let (dir, _, plain) = a_store_with_an_unreadable_name();
        let s = SqliteKeyStore::open(&dir.path().join("keys.db")).unwrap();
        let listed = s.list();
        assert!(
            listed
                .as_ref()
                .is_ok_and(|l| l.iter().any(|k| k.id == plain.record.id)),
            "list: {listed:?}"
        );
    }

    #[test]
    fn thumbprints_parse_as_openssl_prints_them_and_nothing_else() {
        let cert = ClientCertificate::of_der(b"x");
        let hex = cert.to_string();
        assert_eq!(hex.len(), 64);
        let openssl: String = hex
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        for form in [hex.clone(), openssl, format!("  {hex}\n")] {
            assert_eq!(form.parse::<ClientCertificate>().unwrap(), cert, "{form}");
        }
        for bad in [
            "",
            "abc",
            &hex[..62],
            &format!("{hex}00"),
            &hex.replace('a', "g"),
            "é",
        ] {
            let e = bad.parse::<ClientCertificate>().unwrap_err().to_string();
            assert!(e.contains("thumbprint"), "{bad}: {e}");
        }
        // From PEM: the first certificate's DER.
        let der = b"not really a certificate, but DER bytes all the same";
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        assert_eq!(
            ClientCertificate::from_pem(pem.as_bytes()).unwrap(),
            ClientCertificate::of_der(der)
        );
        let e = ClientCertificate::from_pem(b"no PEM here")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        // Serialised as the hex.
        assert_eq!(serde_json::to_value(cert).unwrap(), serde_json::json!(hex));
    }

    /// `u8::from_str_radix` takes a leading `+`: 32 pairs such as `+f` are 64 characters, pass
    /// the length check, and parse as a thumbprint (`0f0f…`) that nobody wrote.
    #[test]
    fn a_thumbprint_with_sign_characters_is_refused() {
        for bad in ["+f".repeat(32), format!("+0{}", "ab".repeat(31))] {
            let parsed = bad.parse::<ClientCertificate>();
            assert!(parsed.is_err(), "{bad} parsed as {parsed:?}");
        }
    }

    /// The schema refusal that keeps a gateway which does not know bindings from accepting a
    /// bound key without its certificate (`schema::KEYS_CERT_BOUND`, 2, and `schema::KEYS`, 3) is made only when the file is
    /// opened. A gateway already running when a later Palisade takes the file over (a rolling
    /// upgrade of gateways sharing `keys.db`, or `palisade keys create --client-cert` from a newer
    /// CLI next to an older `serve`) goes on serving the file's keys, new ones included, reading
    /// none of what the later schema added: a schema-1 gateway accepts a key bound by a schema-2
    /// one from any connection, certificate or none.
    #[test]
    fn a_running_gateway_takes_no_keys_from_a_file_a_later_schema_has_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let gateway = SqliteKeyStore::open(&path).unwrap();
        let cli = SqliteKeyStore::open(&path).unwrap();
        // A later Palisade brings the file to a schema this one does not know (a column this one
        // does not read, as `client_cert_sha256` is to a gateway of schema 1), and makes a key
        // that uses it.
        let k = cli
            .create("svc", &[Role::Query("*".into())], None, T0)
            .unwrap();
        taken_over_by_a_later_release(&path, &k.record.id);
        // Opened now, the file is refused...
        assert!(SqliteKeyStore::open(&path).is_err());
        // ...but the gateway that opened it before serves the key the later schema made.
        std::thread::sleep(RECHECK_AFTER);
        let outcome = gateway.authenticate(&k.key, T0 + 1);
        assert!(
            outcome.is_err(),
            "a gateway on a file of a later schema took its key: {outcome:?}"
        );
    }

    /// As a later Palisade would: the file at a schema this one does not know, with a column
    /// this one does not read (as `client_cert_sha256` is to a gateway of schema 1), set on the
    /// key `id`.
    fn taken_over_by_a_later_release(path: &Path, id: &str) {
        let later = Connection::open(path).unwrap();
        let bump = format!(
            "ALTER TABLE keys ADD COLUMN later_binding BLOB; PRAGMA user_version = {}",
            crate::schema::KEYS + 1
        );
        later.execute_batch(&bump).unwrap();
        let set = "UPDATE keys SET later_binding = x'01' WHERE id = ?1";
        later.execute(set, params![id]).unwrap();
    }

    /// Review of cbe460d: `authenticate` now refuses a file that a later schema has taken over,
    /// but the store's writes do not look: a running gateway still rotates and creates keys in
    /// it. A rotation copies what this build reads of the old key and nothing else, so a key the
    /// later schema constrained (as `client_cert_sha256` constrains a key to a schema-1 build)
    /// gets a successor without the constraint, which is the very downgrade `schema::KEYS` is
    /// there to stop. `insert` looked at the version only for a bound key; the admin API reaches
    /// `rotate` after the key checks, with the intent's fsync and the 10 ms recheck window
    /// between them and the write.
    #[test]
    fn a_running_gateway_writes_no_keys_into_a_file_a_later_schema_has_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let gateway = SqliteKeyStore::open(&path).unwrap();
        let k = gateway
            .create("svc", &[Role::Query("*".into())], None, T0)
            .unwrap();
        taken_over_by_a_later_release(&path, &k.record.id);
        std::thread::sleep(RECHECK_AFTER);
        // Reading is refused...
        assert!(gateway.authenticate(&k.key, T0 + 1).is_err());
        // ...writing is not: the successor carries none of the later schema's constraint.
        let rotated = gateway.rotate(&k.record.id, Duration::from_secs(60), T0 + 2);
        let created = gateway.create("new", &[Role::Query("*".into())], None, T0 + 3);
        assert!(
            rotated.is_err() && created.is_err(),
            "a store wrote keys into a file of a later schema: rotate {:?}, create {:?}",
            rotated.map(|n| n.record.id),
            created.map(|n| n.record.id)
        );
    }

    #[test]
    fn roles_parse_and_print() {
        for r in [
            "query:mnist",
            "query:*",
            "ingest",
            "train",
            "deploy",
            "audit",
            "admin",
        ] {
            assert_eq!(r.parse::<Role>().unwrap().to_string(), r);
        }
        assert!("query:".parse::<Role>().is_err());
        assert!("root".parse::<Role>().is_err());
        assert!("query:a/b".parse::<Role>().is_err());
    }

    #[test]
    fn giving_a_code_back_keeps_the_refusals_since() {
        let s = SqliteKeyStore::in_memory().unwrap();
        let t = 1_700_000_000_000u64;
        let k = s.create("adm", &[Role::Admin], None, t).unwrap();
        let code = totp_code(k.totp_secret.as_ref().unwrap(), t).unwrap();
        assert!(s.check_totp(&k.record.id, &code, t).unwrap());
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for i in 1..=4 {
            assert!(!s.check_totp(&k.record.id, wrong, t + i).unwrap());
        }
        // Given back (its action did not run): the four refusals since still count.
        assert!(s.release_totp(&k.record.id, &code, t + 5).unwrap());
        assert!(!s.check_totp(&k.record.id, wrong, t + 6).unwrap());
        assert!(matches!(
            s.check_totp(&k.record.id, wrong, t + 7),
            Err(KeyError::TotpLocked { .. })
        ));
    }

    /// A stored name that parses but is not in the canonical form this release writes (here
    /// `email:ci@example.org.`, with the domain's trailing dot an unlanded commit kept), its key
    /// hashed with that text: not read into another form, whose hash would fail the key's
    /// holder as a forger, but as unreadable, so the holder is refused as the wrong client and
    /// told why (second review).
    #[test]
    fn a_stored_name_not_in_canonical_form_refuses_its_key_as_the_wrong_client() {
        let old_text = "email:ci@example.org.";
        let (dir, k, _) = with_stored_name("email:ci@example.org", old_text, true);
        let s = SqliteKeyStore::open(&dir.path().join("keys.db")).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![rcgen::SanType::Rfc822Name(
            "ci@example.org".try_into().unwrap(),
        )];
        let kp = rcgen::KeyPair::generate().unwrap();
        let client = ClientIdentity::of_der(p.self_signed(&kp).unwrap().der());
        let outcome = s.authenticate_from(&k.key, Some(&client), T0).unwrap();
        assert_eq!(outcome, Authn::WrongClient(k.record.id.clone()));
        let shown = s.find(&k.record.id).unwrap().unwrap().client_san.unwrap();
        assert_eq!(
            (shown.kind(), shown.value()),
            (NameKind::Unreadable, old_text)
        );
    }

    /// A rotation that would keep a binding to a name this release cannot read is refused (its
    /// successor could never be used here), saying why; one that rebinds is made (second
    /// review).
    #[test]
    fn rotating_a_key_bound_to_an_unreadable_name_is_refused_unless_it_rebinds() {
        let (dir, bad, _) = a_store_with_an_unreadable_name();
        let s = SqliteKeyStore::open(&dir.path().join("keys.db")).unwrap();
        let rotated = s.rotate(&bad.record.id, Duration::from_secs(60), T0 + 1);
        let e = rotated.map(|n| n.record).unwrap_err().to_string();
        assert!(
            e.contains("cannot read") && e.contains("--client-san"),
            "{e}"
        );
        let name: SubjectName = "dns:scorer.example.org".parse().unwrap();
        let rebound = s
            .rotate_rebinding(
                &bad.record.id,
                Duration::from_secs(60),
                Some(ClientBinding::Name(name.clone())),
                T0 + 1,
            )
            .unwrap();
        assert_eq!(rebound.record.client_san, Some(name));
    }

    /// A record with an unreadable name reads back from its JSON, the name still unreadable
    /// (second review).
    #[test]
    fn a_record_with_an_unreadable_name_round_trips_through_serde() {
        let (dir, bad, _) = a_store_with_an_unreadable_name();
        let s = SqliteKeyStore::open(&dir.path().join("keys.db")).unwrap();
        let rec = s.find(&bad.record.id).unwrap().unwrap();
        let json = serde_json::to_string(&rec).unwrap();
        let back = serde_json::from_str::<KeyRecord>(&json);
        assert_eq!(back.unwrap(), rec, "{json}");
    }

    /// The "cannot read" warning is for the key's holder only: one who knows the id (it is not
    /// secret) and makes up a secret writes no warning per request (second review).
    #[test]
    fn no_warning_for_a_forged_key_with_an_unreadable_name() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (dir, bad, _) = a_store_with_an_unreadable_name();
        let s = SqliteKeyStore::open(&dir.path().join("keys.db")).unwrap();
        let forged = format!("pal_{}_not-the-secret", bad.record.id);
        let n = Arc::new(AtomicUsize::new(0));
        let counted = n.clone();
        let count = crate::test_support::OnWarn(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        tracing::subscriber::with_default(count, || {
            for _ in 0..100 {
                let o = s.authenticate_from(&forged, None, T0).unwrap();
                assert!(matches!(o, Authn::Unknown(_)), "{o:?}");
            }
        });
        assert_eq!(
            n.load(Ordering::SeqCst),
            0,
            "WARN lines for 100 forged keys"
        );
    }
}
