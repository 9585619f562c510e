//! The SQLite audit log: group commit by one writer thread (or, with `process` durability, an
//! append journal and an ingester), readers on their own connection.
//!
//! **Durability policy.** The database runs in WAL mode. [`SqliteAuditLog::append`] resolves only
//! once its entry is durable, and the gateway sends a response only after its entry's append has
//! resolved. What "durable" means is the [`Durability`]:
//! - [`Durability::Full`] (the default, `synchronous=FULL`): the WAL is fsynced at every commit,
//!   so an acknowledged request's entry survives `kill -9` and power loss;
//! - [`Durability::Process`]: the entry is appended to a journal file (see `journal.rs`) with
//!   one `write(2)` per group and not fsynced, so an acknowledged entry survives `kill -9` of
//!   the gateway — the kernel holds the written pages — but the last entries can be lost if the
//!   machine itself loses power or crashes. SQLite (`synchronous=NORMAL`) receives the entries
//!   from the journal a few milliseconds later. Two things are fsynced all the same: a commit
//!   that signs a checkpoint (a root already published must not be lost, or the log could sign
//!   another for the same size), and what the database holds before journal files go (their
//!   deletion must not reach the disk before the entries do).
//!
//! Concurrent appends are made durable together (one commit or journal write, and with `Full`
//! one fsync, per group), which is what keeps the cost per request low under load. Who writes
//! depends on the durability:
//! - with `Full`, a writer thread commits to SQLite: an fsync takes from a fraction of a
//!   millisecond to several, too long to hold an async worker, and the appends that arrive
//!   meanwhile make the next group;
//! - with `Process`, the appending thread itself (leader/follower group write): the first
//!   appender writes its entry and whatever others queued while it did to the journal, until the
//!   queue is empty; the others wait for its answer. Groups form only where appends overlap, on
//!   several async workers: on one (the default up to 4 cores) each entry is its own write, 0.96
//!   more `write(2)` per request than the bare endpoint at 16 connections on 2 cores
//!   (`bench/gateway_profile.sh`, 2026-12-05). Handing the entry to another thread and
//!   being woken back would cost more than the write: at one connection on a 2-core VM, removing
//!   that hand-off cut 50 to 160 µs from each request (`bench/gateway_vs_bare.sh`). An ingester
//!   thread copies the journaled entries into SQLite every [`INGEST_EVERY`] while there are any,
//!   in one transaction (the appenders do not wake it: it sleeps only when nothing is pending),
//!   signs checkpoints and deletes journal files it has emptied. Reads (size, entries, proofs,
//!   checkpoints) first wait until SQLite holds every acknowledged entry. Opening the log copies
//!   in what a killed gateway left in the journal, after checking that entries both hold agree;
//!   `palisade audit verify` reads a journal it finds. Committing each group to SQLite from the
//!   appending thread, as before the journal, cost 20 µs of CPU per request at 16 connections
//!   (perf, `bench/gateway_profile.sh`), about a sixth of the gateway's cost beyond inference.
//!
//! In `Full` mode the writer thread also signs time-based checkpoints; in `Process` mode the
//! ingester does.
//!
//! **Proofs** read the roots of perfect subtrees, not every leaf: each commit also stores, in the
//! `nodes` table and the same transaction, the subtrees of 16 leaves and up that its entries
//! complete (about one row per 8 entries); smaller ones are hashed from their leaves. An
//! inclusion or consistency proof then reads O(log² n) rows: 61 µs at 131 072 entries against
//! 42 ms from every leaf (`cargo bench -p palisade-gateway --bench audit_proofs`, 4 KiB pages;
//! 40 µs with [`PAGE_SIZE`] pages, 2026-12-07). A log written
//! before the table existed gets the same proofs from its leaves until a gateway opens it, which
//! fills the table in.
//!
//! **Opening** reads the same table rather than every leaf: the right edge of the tree its
//! latest checkpoint signed (one node per set bit of the size), which must give that
//! checkpoint's root under the gateway's key, then the entries after it. A log that does not
//! match its own signed checkpoint is refused, not extended. Open and close of a log of 131 072
//! entries: 0.74 ms against 36 ms reading every leaf (`audit_open` in the same bench; 0.77 ms
//! with [`PAGE_SIZE`] pages), and memory no longer grows with the log.
//!
//! **WAL checkpoints** (copying the WAL into the database file, with an fsync of each) do not run
//! in the writer: SQLite's automatic checkpoint would run inside a commit every 1,000 pages and
//! hold that request, and the ones queued behind it, for as long as the copy and its fsyncs take
//! (`bench/gateway_vs_bare.sh` measured a p99 of 323 ms at one connection with it, about 2 ms
//! without). A second thread checkpoints on its own connection in `PASSIVE` mode, beside the
//! writer, every [`WAL_CHECKPOINT_EVERY`]; when the WAL has grown past [`WAL_RESTART_BYTES`]
//! of frames (a writer that never pauses leaves no moment for SQLite to start the WAL over), it
//! checkpoints in `RESTART` mode, which holds the writer only for the frames written since the
//! last pass.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::checkpoint::{Checkpoint, CheckpointSigner, SignedCheckpoint};
use super::journal::{self, Journal, Retired};
use super::merkle::{self, Frontier, Hash};
use super::{AppendFuture, AuditError, AuditLog, ConsistencyProof, InclusionProof};
use crate::hexfmt;

/// The page size of a new log's database (an existing one keeps its own: SQLite cannot change
/// it in WAL mode). The log only appends, so larger pages mean fewer WAL frames, each a
/// `pwrite(2)` by the committer and a `pread(2)` and `pwrite(2)` by the WAL checkpointer: with
/// 16 KiB rather than SQLite's 4 KiB, 0.115 `pwrite` and 0.030 `pread` per request against 0.394
/// and 0.112 at 16 connections with `process` durability (`perf stat -e
/// 'syscalls:sys_enter_p*'` on the gateway under `bench/gateway_profile.sh`'s load, 2026-12-07).
const PAGE_SIZE: i64 = 16384;

/// Most entries committed in one transaction.
const MAX_GROUP: usize = 4096;

/// How often the WAL checkpointer copies committed frames into the database file.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// WAL length from which the checkpointer also starts the WAL over (in frames of one page each:
/// 16,384 of SQLite's default 4 KiB, 4,096 of [`PAGE_SIZE`]).
const WAL_RESTART_BYTES: i64 = 64 << 20;

/// How long journaled entries gather before the ingester copies them into SQLite (`Process`).
/// Each pass costs a wake-up and a transaction whatever it carries: at one connection, passes
/// every 5 ms (and WAL checkpoints every 100 ms) cost the gateway 108 µs of CPU per request more
/// than the bare endpoint, passes every 25 ms (and checkpoints every 500 ms) 41 µs
/// (`bench/gateway_vs_bare.sh`, `cpu` columns). From 25 to 100 ms, the ingester's own CPU per
/// request fell from 2.4 to 1.6–2.0 µs at one connection and from 1.9–2.1 to 1.4 µs at 16 (the
/// kernel's per-thread counts, 3 alternating rounds, 2026-12-05). Reads do not wait for the
/// tick: they hurry it. What a killed gateway leaves in the journal for its next start to copy in
/// is about a tick's worth of entries, more if SQLite had fallen behind.
const INGEST_EVERY: Duration = Duration::from_millis(100);

/// Longest a read waits for the ingester to bring SQLite up to the acknowledged entries.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// When an audit commit is considered durable (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The WAL is fsynced at every commit: acknowledged entries survive power loss.
    #[default]
    Full,
    /// Commits reach the kernel but are not fsynced one by one: acknowledged entries survive the
    /// gateway process being killed, not the machine losing power.
    Process,
}

impl Durability {
    fn synchronous(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Process => "NORMAL",
        }
    }
}

/// When checkpoints are signed.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// Sign after this many new entries…
    pub every_entries: u64,
    /// …or when this much time has passed with unsigned entries.
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_entries: 1000,
            every: Duration::from_secs(1),
        }
    }
}

type Reply = oneshot::Sender<Result<u64, AuditError>>;
type CheckpointReply = oneshot::Sender<Result<Option<SignedCheckpoint>, AuditError>>;

enum Msg {
    Append(Vec<u8>, Reply),
    Checkpoint(CheckpointReply),
}

/// An append-only Merkle log in an SQLite file.
pub struct SqliteAuditLog {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    reader: Mutex<Connection>,
    /// `Some` when appends are journaled by the appending threads (`Durability::Process`).
    inline: Option<Arc<Inline>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    wal: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    db: PathBuf,
    /// Values kept until the log is closed ([`SqliteAuditLog::hold`]); dropped after `drop`
    /// has closed it.
    held: Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
}

/// `Durability::Process`: the appending threads' group write to the journal, and what the
/// ingester has yet to copy into SQLite.
struct Inline {
    queue: Mutex<InlineQueue>,
    /// Signalled when no leader is writing.
    idle: Condvar,
    /// Written only by the leader; `None` once closed.
    journal: Mutex<Option<Journal>>,
    ingest: Mutex<IngestQueue>,
    /// Wakes the ingester (only when it sleeps, or to hurry it).
    ingest_wake: Condvar,
    /// Signalled after each ingestion pass.
    ingested_cv: Condvar,
}

/// Journaled entries on their way into SQLite.
struct IngestQueue {
    /// `(index, data)`, contiguous, acknowledged.
    entries: Vec<(u64, Vec<u8>)>,
    /// Journal files to delete once their entries are in SQLite.
    retired: Vec<Retired>,
    /// Entries journaled (and acknowledged) so far: the log's size.
    appended: u64,
    /// Entries committed to SQLite so far.
    ingested: u64,
    failed: Option<String>,
    /// Whether the ingester waits for a wake-up (no entries were pending).
    sleeping: bool,
    /// A reader or `close` is waiting: ingest now rather than at the next tick.
    hurry: bool,
    closing: bool,
    checkpoint_waiters: Vec<CheckpointReply>,
}

/// Appends waiting for the current leader to commit them.
#[derive(Default)]
struct InlineQueue {
    pending: Vec<(Vec<u8>, Reply)>,
    /// Whether a thread is committing (and will take `pending` before it stops).
    leading: bool,
    closed: bool,
}

/// Locks `m`, recovering from a panic of another holder: a commit that panicked rolled its
/// transaction back and left the in-memory tree as it was (see [`Writer::commit_group`]).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for SqliteAuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAuditLog").finish_non_exhaustive()
    }
}

pub(crate) fn open_conn(path: &Path, durability: Durability) -> Result<Connection, AuditError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", durability.synchronous())?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS entries (
             idx  INTEGER PRIMARY KEY,
             leaf BLOB NOT NULL,
             data BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS checkpoints (
             size         INTEGER PRIMARY KEY,
             root         BLOB NOT NULL,
             timestamp_ms INTEGER NOT NULL,
             signature    BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS nodes (
             level INTEGER NOT NULL,
             idx   INTEGER NOT NULL,
             hash  BLOB NOT NULL,
             PRIMARY KEY (level, idx)) WITHOUT ROWID;",
    )?;
    crate::schema::check(&conn, crate::schema::AUDIT)?;
    Ok(conn)
}

/// Calls `each` with the leaf hashes `[from, to)` in order, read row by row (memory does not
/// grow with the range), checking that indices are contiguous.
fn for_each_leaf(
    conn: &Connection,
    from: u64,
    to: u64,
    mut each: impl FnMut(Hash) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, leaf FROM entries WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
    )?;
    let mut rows = stmt.query(params![from as i64, to as i64])?;
    let mut next = from;
    while let Some(row) = rows.next()? {
        let idx: i64 = row.get(0)?;
        let leaf: Vec<u8> = row.get(1)?;
        if idx != next as i64 {
            return Err(AuditError::Corrupt(format!(
                "entry {next} is missing (found {idx} next)"
            )));
        }
        let leaf: Hash = leaf
            .try_into()
            .map_err(|_| AuditError::Corrupt(format!("entry {idx}: leaf hash is not 32 bytes")))?;
        each(leaf)?;
        next += 1;
    }
    if next < to {
        return Err(AuditError::OutOfRange(format!(
            "the log has {next} entries, {to} were asked for"
        )));
    }
    Ok(())
}

/// The leaf hashes `[from, to)` (see [`for_each_leaf`]).
fn read_leaf_range(conn: &Connection, from: u64, to: u64) -> Result<Vec<Hash>, AuditError> {
    let mut out = Vec::new();
    for_each_leaf(conn, from, to, |leaf| {
        out.push(leaf);
        Ok(())
    })?;
    Ok(out)
}

/// The lowest level of the tree whose nodes the `nodes` table keeps (subtrees of 16 leaves and
/// up: about one row per 8 entries). A proof needs O(log² n) of them; a node below this level is
/// hashed from at most 8 leaves.
const STORED_FROM: u32 = 4;

/// A [`Frontier::push_with`] callback that keeps in `made` the subtrees the `nodes` table
/// stores (level [`STORED_FROM`] and up).
pub(crate) fn keep_stored(made: &mut Vec<(u32, u64, Hash)>) -> impl FnMut(u32, u64, &Hash) + '_ {
    move |level, index, h| {
        if level >= STORED_FROM {
            made.push((level, index, *h));
        }
    }
}

/// Records the perfect subtrees of level [`STORED_FROM`] and up among `made`, in `tx`.
fn insert_nodes(tx: &Connection, made: &[(u32, u64, Hash)]) -> Result<(), AuditError> {
    let mut stmt =
        tx.prepare_cached("INSERT OR REPLACE INTO nodes (level, idx, hash) VALUES (?1, ?2, ?3)")?;
    for (level, idx, hash) in made {
        stmt.execute(params![level, *idx as i64, &hash[..]])?;
    }
    Ok(())
}

/// The root of the perfect subtree at `level`, `index` (see [`merkle::range_root`]): from the
/// `nodes` table, or, when the table lacks it (a log written before the table existed and not
/// reopened by a gateway since, which fills it in), from its two halves, down to
/// [`STORED_FROM`], below which it is hashed from its leaves.
fn node_at(conn: &Connection, level: u32, index: u64) -> Result<Hash, AuditError> {
    if level >= STORED_FROM {
        let stored: Option<Vec<u8>> = conn
            .prepare_cached("SELECT hash FROM nodes WHERE level = ?1 AND idx = ?2")?
            .query_row(params![level, index as i64], |r| r.get(0))
            .optional()?;
        return match stored {
            Some(h) => h.try_into().map_err(|_| {
                AuditError::Corrupt(format!("node ({level}, {index}) is not 32 bytes"))
            }),
            None => Ok(merkle::node_hash(
                &node_at(conn, level - 1, 2 * index)?,
                &node_at(conn, level - 1, 2 * index + 1)?,
            )),
        };
    }
    let from = index << level;
    Ok(merkle::root(&read_leaf_range(
        conn,
        from,
        from + (1 << level),
    )?))
}

/// Fails unless `conn` holds at least `size` entries.
fn holds(conn: &Connection, size: u64) -> Result<(), AuditError> {
    let fewer = || AuditError::OutOfRange(format!("the log has fewer than {size} entries"));
    if size == 0 {
        return Ok(());
    }
    // Indices are SQLite integers: a size past them is past any log.
    let last = i64::try_from(size - 1).map_err(|_| fewer())?;
    conn.prepare_cached("SELECT idx FROM entries WHERE idx = ?1")?
        .query_row(params![last], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|_| ())
        .ok_or_else(fewer)
}

/// How many entries `conn` holds: one past the highest index, found in O(log n) (counting the
/// rows would read the whole table). Where indices are read in order they are checked to be
/// contiguous; `palisade audit verify` checks all of them.
pub(crate) fn stored_size(conn: &Connection) -> Result<u64, AuditError> {
    let last: Option<i64> = conn.query_row("SELECT MAX(idx) FROM entries", [], |r| r.get(0))?;
    Ok(last.map_or(0, |l| l.saturating_add(1).max(0) as u64))
}

/// Whether `conn` has a table `name`.
pub(crate) fn table_exists(conn: &Connection, name: &str) -> Result<bool, AuditError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists(params![name])?)
}

/// Opens the audit database at `path` to read it, changing nothing in it. A read-write
/// connection would do more than it is asked: closing the last one copies the WAL into the
/// database and deletes the WAL. A WAL that a killed gateway left is read all the same; SQLite
/// makes its index file (`-shm`) beside the database if that is missing, which is then the one
/// file written.
///
/// A database with a hot rollback journal (a writer stopped in a transaction, in rollback
/// mode; a gateway keeps its log in WAL mode and leaves none) cannot be read without rolling
/// that back, a write: it is refused with an error that says so.
pub(crate) fn open_read_only(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    match crate::schema::readable(&conn, crate::schema::AUDIT) {
        Err(crate::schema::SchemaError::Sqlite(e))
            if e.sqlite_error()
                .is_some_and(|e| e.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK) =>
        {
            Err(AuditError::Schema(format!(
                "{} has a hot rollback journal (a writer stopped in the middle of a transaction) \
                 that must be rolled back before it can be read: open it once with sqlite3, on \
                 a copy if it is evidence",
                path.display()
            )))
        }
        r => {
            r?;
            Ok(conn)
        }
    }
}

/// The audit database at `path` opened by [`open_read_only`], for proofs: it must have the log's
/// tables. One made before the `nodes` table gets an empty one in the connection's temporary
/// schema, so that proofs are built from its leaves.
pub(crate) fn open_for_proofs(path: &Path) -> Result<Connection, AuditError> {
    let conn = open_read_only(path)?;
    is_a_log(&conn, path)?;
    if !table_exists(&conn, "nodes")? {
        conn.execute_batch(
            "CREATE TEMP TABLE nodes (
                 level INTEGER NOT NULL,
                 idx   INTEGER NOT NULL,
                 hash  BLOB NOT NULL,
                 PRIMARY KEY (level, idx)) WITHOUT ROWID;",
        )?;
    }
    Ok(conn)
}

/// Fails unless the database on `conn` (at `path`) has the tables every audit log has.
pub(crate) fn is_a_log(conn: &Connection, path: &Path) -> Result<(), AuditError> {
    for table in ["entries", "checkpoints"] {
        if !table_exists(conn, table)? {
            return Err(AuditError::Schema(format!(
                "{} is not an audit log: it has no `{table}` table",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Whether the audit database at `db` exists and holds a signed checkpoint, read without
/// changing it; one that cannot be read counts as holding one.
pub(crate) fn has_checkpoints(db: &Path) -> bool {
    if !db.exists() {
        return false;
    }
    let Ok(conn) = open_read_only(db) else {
        return true;
    };
    match table_exists(&conn, "checkpoints") {
        Ok(false) => false,
        Ok(true) => conn
            .query_row("SELECT EXISTS (SELECT 1 FROM checkpoints)", [], |r| {
                r.get::<_, bool>(0)
            })
            .unwrap_or(true),
        Err(_) => true,
    }
}

/// Whether the `nodes` table holds every stored subtree of the right edge of a tree of `size`
/// leaves: what opening the log reads instead of the leaves. A log made before the table, or
/// whose table was emptied, lacks them.
fn has_edge_nodes(conn: &Connection, size: u64) -> Result<bool, AuditError> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM nodes WHERE level = ?1 AND idx = ?2")?;
    for (level, index) in merkle::edge(size).filter(|(level, _)| *level >= STORED_FROM) {
        if !stmt.exists(params![level, index as i64])? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Rebuilds the `nodes` table from the leaves of the first `size` entries (a log made before
/// the table existed, or a table damaged), streaming them in index order: memory stays
/// O(log n) however long the log. In `tx`, which the caller commits or drops.
fn fill_nodes(tx: &rusqlite::Transaction<'_>, size: u64) -> Result<(), AuditError> {
    tx.execute("DELETE FROM nodes", [])?;
    let mut f = Frontier::new();
    let mut made = Vec::new();
    for_each_leaf(tx, 0, size, |leaf| {
        f.push_with(leaf, keep_stored(&mut made));
        if made.len() >= 4096 {
            insert_nodes(tx, &made)?;
            made.clear();
        }
        Ok(())
    })?;
    insert_nodes(tx, &made)
}

/// Takes up the tree stored in `conn`, which holds `size` entries, without reading every leaf:
/// the right edge of the tree that the latest stored checkpoint signed comes from the `nodes`
/// table, and must give that checkpoint's root; the checkpoint must verify under the gateway's
/// own key; the entries after it are read and pushed (returned: the tree and the size the
/// checkpoint signed). When the edge does not give the root (or
/// cannot be read), the table is rebuilt from the leaves, kept only if the rebuilt edge gives it.
/// A log that still does not match, or whose checkpoint another key signed, is refused, not
/// extended, and left as it was: the gateway would otherwise sign roots over history it cannot
/// vouch for. This checks the stored edge, not every entry under it: an entry rewritten with
/// its leaf but not the table, or deleted, is found by `palisade audit verify` (and makes the
/// proofs through it fail), not here.
fn resume_tree(
    conn: &mut Connection,
    size: u64,
    signer: &CheckpointSigner,
) -> Result<(Frontier, u64), AuditError> {
    let latest = latest_checkpoint(conn)?;
    let signed = latest.as_ref().map_or(0, |c| c.checkpoint.size);
    if signed > size {
        return Err(AuditError::Corrupt(format!(
            "the latest checkpoint covers {signed} entries but the log holds only {size}: entries were removed (palisade audit verify shows more)"
        )));
    }
    if let Some(c) = &latest
        && !c.verify(&signer.public_key())
    {
        return Err(AuditError::Corrupt(format!(
            "the log's latest checkpoint (of {signed} entries) is not signed by this gateway's audit key: the key changed or the checkpoint was forged; run palisade audit verify with the key that signed it, or move the log aside, with its -wal, -shm and .journal-* files, to start a new one"
        )));
    }
    let want = latest.as_ref().and_then(|c| c.checkpoint.root_hash());
    if latest.is_some() && want.is_none() {
        return Err(AuditError::Corrupt(format!(
            "the latest checkpoint (of {signed} entries) has a malformed root"
        )));
    }
    // The edge of the signed tree, when it gives the signed root (or there is none to give).
    let edge = |conn: &Connection| -> Option<Frontier> {
        let f =
            Frontier::from_subtrees(signed, &mut |level, idx| node_at(conn, level, idx)).ok()?;
        (want.is_none() || want == Some(f.root())).then_some(f)
    };
    let stored = if has_edge_nodes(conn, signed)? && has_edge_nodes(conn, size)? {
        edge(conn)
    } else {
        None
    };
    let mut frontier = match stored {
        Some(f) => f,
        None => {
            // A log from before the table, or a table damaged: rebuilt from the leaves, kept
            // only if it then matches.
            tracing::info!(
                entries = size,
                "rebuilding the audit log's table of subtree roots from its entries"
            );
            let tx = conn.transaction()?;
            fill_nodes(&tx, size)?;
            let Some(f) = edge(&tx) else {
                return Err(AuditError::Corrupt(format!(
                    "the log does not match its latest checkpoint (of {signed} entries): its entries were altered; run palisade audit verify to see which, and move the log aside, with its -wal, -shm and .journal-* files, to start a new one"
                )));
            };
            tx.commit()?;
            f
        }
    };
    for_each_leaf(conn, signed, size, |leaf| {
        frontier.push(leaf);
        Ok(())
    })?;
    Ok((frontier, signed))
}

pub(crate) fn row_to_checkpoint(
    size: i64,
    root: Vec<u8>,
    ts: i64,
    sig: Vec<u8>,
) -> SignedCheckpoint {
    SignedCheckpoint {
        checkpoint: Checkpoint {
            size: size.max(0) as u64,
            root: hexfmt::encode(&root),
            timestamp_ms: ts.max(0) as u64,
        },
        signature: hexfmt::encode(&sig),
    }
}

/// The stored checkpoint with the largest size.
pub(crate) fn latest_checkpoint(conn: &Connection) -> Result<Option<SignedCheckpoint>, AuditError> {
    Ok(conn
        .query_row(
            "SELECT size, root, timestamp_ms, signature FROM checkpoints ORDER BY size DESC LIMIT 1",
            [],
            |r| Ok(row_to_checkpoint(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SqliteAuditLog {
    /// Opens (or creates) the log at `path`, taking up the tree's right edge from the stored
    /// subtree roots (see `resume_tree`), and starts the writer thread, which commits with the
    /// given `durability`.
    pub fn open(
        path: &Path,
        signer: CheckpointSigner,
        policy: CheckpointPolicy,
        durability: Durability,
    ) -> Result<Self, AuditError> {
        let mut wconn = open_conn(path, durability)?;
        wconn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let size = stored_size(&wconn)?;
        let (frontier, last_checkpoint_size) = resume_tree(&mut wconn, size, &signer)?;
        let reader = open_conn(path, durability)?;
        let mut writer = Writer {
            conn: wconn,
            durability,
            frontier,
            signer,
            policy,
            last_checkpoint_size,
            last_checkpoint_at: Instant::now(),
            file: (path.to_path_buf(), file_id(path)?),
        };
        writer.replay_journal(path)?;
        // Entries a killed gateway left unsigned are signed now, not at the next checkpoint due.
        writer.checkpoint_if_due(true)?;
        let wal_conn = open_conn(path, durability)?;
        let (wal_tx, wal_rx) = mpsc::channel();
        let wal = std::thread::Builder::new()
            .name("palisade-audit-wal".into())
            .spawn(move || wal_checkpointer(wal_conn, wal_rx, durability == Durability::Process))
            .map_err(AuditError::Io)?;
        let size = writer.frontier.size();
        let shared = Arc::new(Mutex::new(writer));
        let (tx, inline, handle) = match durability {
            Durability::Full => {
                let (tx, rx) = mpsc::channel();
                let handle = std::thread::Builder::new()
                    .name("palisade-audit".into())
                    .spawn(move || Writer::run(&shared, rx))
                    .map_err(AuditError::Io)?;
                (Some(tx), None, handle)
            }
            Durability::Process => {
                let inline = Arc::new(Inline {
                    queue: Mutex::default(),
                    idle: Condvar::new(),
                    journal: Mutex::new(Some(Journal::create(path, size)?)),
                    ingest: Mutex::new(IngestQueue {
                        entries: Vec::new(),
                        retired: Vec::new(),
                        appended: size,
                        ingested: size,
                        failed: None,
                        sleeping: false,
                        hurry: false,
                        closing: false,
                        checkpoint_waiters: Vec::new(),
                    }),
                    ingest_wake: Condvar::new(),
                    ingested_cv: Condvar::new(),
                });
                let ingest = inline.clone();
                let handle = std::thread::Builder::new()
                    .name("palisade-audit".into())
                    .spawn(move || ingest_loop(&shared, &ingest))
                    .map_err(AuditError::Io)?;
                (None, Some(inline), handle)
            }
        };
        Ok(SqliteAuditLog {
            tx: Mutex::new(tx),
            reader: Mutex::new(reader),
            inline,
            writer: Mutex::new(Some(handle)),
            wal: Mutex::new(Some((wal_tx, wal))),
            db: path.to_path_buf(),
            held: Mutex::new(Vec::new()),
        })
    }

    /// Keeps `value` until this log has been closed and dropped: the lock on a state folder,
    /// say, which must not be let go while the log may still write there (its close signs a
    /// checkpoint and deletes the journal files; a gateway that took the folder over meanwhile
    /// lost its own journal; review, 2026-12-06).
    pub fn hold(&self, value: Arc<dyn std::any::Any + Send + Sync>) {
        lock(&self.held).push(value);
    }

    /// With `Durability::Process`, waits until SQLite holds every entry acknowledged so far, so
    /// that reads see what appends returned.
    fn catch_up(&self) -> Result<(), AuditError> {
        let Some(inline) = &self.inline else {
            return Ok(());
        };
        let mut q = lock(&inline.ingest);
        let target = q.appended;
        let deadline = Instant::now() + CATCH_UP_LIMIT;
        while q.ingested < target {
            if let Some(why) = &q.failed {
                return Err(AuditError::Write(why.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AuditError::Write(format!(
                    "the audit database is behind its journal ({} of {target} entries after {} s)",
                    q.ingested,
                    CATCH_UP_LIMIT.as_secs()
                )));
            }
            q.hurry = true;
            inline.ingest_wake.notify_one();
            q = inline
                .ingested_cv
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    fn sender(&self) -> Option<mpsc::Sender<Msg>> {
        self.tx.lock().ok()?.clone()
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let conn = self.reader.lock().map_err(|_| AuditError::Closed)?;
        f(&conn)
    }

    /// The first index from `from` on whose entry is `entry` (matched by leaf hash, then bytes):
    /// one query, not a read per entry.
    pub fn find_from(&self, from: u64, entry: &[u8]) -> Result<Option<u64>, AuditError> {
        self.catch_up()?;
        let leaf = merkle::leaf_hash(entry);
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT idx, data FROM entries WHERE idx >= ?1 AND leaf = ?2 ORDER BY idx",
            )?;
            let mut rows = stmt.query(params![from as i64, &leaf[..]])?;
            while let Some(row) = rows.next()? {
                let data: Vec<u8> = row.get(1)?;
                if data == entry {
                    return Ok(Some(row.get::<_, i64>(0)?.max(0) as u64));
                }
            }
            Ok(None)
        })
    }

    /// Signs a checkpoint of everything committed so far (if anything is unsigned) and returns
    /// the latest checkpoint.
    pub fn checkpoint_now(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        let (tx, rx) = oneshot::channel();
        if let Some(inline) = &self.inline {
            let mut q = lock(&inline.ingest);
            if q.closing {
                return Err(AuditError::Closed);
            }
            q.checkpoint_waiters.push(tx);
            inline.ingest_wake.notify_one();
        } else {
            self.sender()
                .ok_or(AuditError::Closed)?
                .send(Msg::Checkpoint(tx))
                .map_err(|_| AuditError::Closed)?;
        }
        rx.blocking_recv().map_err(|_| AuditError::Closed)?
    }

    /// Journals, in the calling thread, what is queued until the queue is empty (the caller has
    /// become the leader): one write per group, then the entries go to the ingester and each
    /// appender gets its index.
    fn lead(&self, inline: &Inline) {
        loop {
            let batch: Vec<(Vec<u8>, Reply)> = {
                let mut q = lock(&inline.queue);
                if q.pending.is_empty() {
                    q.leading = false;
                    // Only `close` waits for the leader, and it sets `closed` first (under this
                    // lock). A notify is a futex system call even with no one waiting: one per
                    // group written, ~0.7 per request under load when it was measured (`perf
                    // record -e syscalls:sys_enter_futex`), so it is made only when it can wake
                    // someone.
                    if q.closed {
                        inline.idle.notify_all();
                    }
                    return;
                }
                let n = q.pending.len().min(MAX_GROUP);
                q.pending.drain(..n).collect()
            };
            // Once SQLite cannot take the journal, appends fail closed rather than pile up there.
            let failed = lock(&inline.ingest).failed.clone();
            let written = if let Some(why) = failed {
                Err(AuditError::Write(format!(
                    "the audit database could not take journaled entries: {why}"
                )))
            } else {
                match lock(&inline.journal).as_mut() {
                    Some(j) => j.append(batch.iter().map(|(d, _)| d.as_slice())),
                    None => Err(AuditError::Closed),
                }
            };
            match written {
                Ok((first, retired)) => {
                    let mut replies = Vec::with_capacity(batch.len());
                    {
                        let mut q = lock(&inline.ingest);
                        for (i, (data, reply)) in batch.into_iter().enumerate() {
                            q.entries.push((first + i as u64, data));
                            replies.push(reply);
                        }
                        q.retired.extend(retired);
                        q.appended = first + replies.len() as u64;
                        if q.sleeping {
                            q.sleeping = false;
                            inline.ingest_wake.notify_one();
                        }
                    }
                    reply(replies, Ok(first));
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit journal write failed");
                    reply(batch.into_iter().map(|(_, r)| r), Err(e));
                }
            }
        }
    }

    /// Stops the writer after it has committed what it was given and signed a final checkpoint.
    /// With `Durability::Process`, the journal is deleted once SQLite holds all of it.
    pub fn close(&self) {
        if let Some(inline) = &self.inline {
            {
                let mut q = lock(&inline.queue);
                q.closed = true;
                // A leader still writing finishes before the final checkpoint is signed.
                while q.leading {
                    q = inline.idle.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            }
            lock(&inline.journal).take();
            let mut q = lock(&inline.ingest);
            q.closing = true;
            inline.ingest_wake.notify_one();
        }
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut g| g.take()) {
            let _ = h.join();
            if let Some(inline) = &self.inline {
                let q = lock(&inline.ingest);
                if q.failed.is_none() && q.ingested == q.appended {
                    drop(q);
                    remove_journal(&self.db);
                }
            }
        }
        if let Some((stop, h)) = self.wal.lock().ok().and_then(|mut g| g.take()) {
            drop(stop);
            let _ = h.join();
        }
    }
}

/// Tells a group's appenders, in order, their indices from `first`, or why the group failed.
fn reply(replies: impl IntoIterator<Item = Reply>, first: Result<u64, AuditError>) {
    match first {
        Ok(first) => {
            for (i, r) in replies.into_iter().enumerate() {
                let _ = r.send(Ok(first + i as u64));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for r in replies {
                let _ = r.send(Err(AuditError::Write(msg.clone())));
            }
        }
    }
}

/// Deletes the journal files of `db` (everything in them is in the database).
fn remove_journal(db: &Path) {
    match journal::files(db) {
        Ok(files) => {
            for (_, f) in files {
                if let Err(e) = std::fs::remove_file(&f) {
                    tracing::warn!(error = %e, file = %f.display(), "could not delete an audit journal file");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list the audit journal"),
    }
}

/// The ingester of `Durability::Process`: every [`INGEST_EVERY`] while entries are pending (at
/// once when hurried), commits them to SQLite in one transaction, signs checkpoints when due or
/// asked, and deletes the journal files it has emptied. It sleeps while nothing is pending.
fn ingest_loop(shared: &Mutex<Writer>, inline: &Inline) {
    background_priority();
    let every = lock(shared).policy.every;
    loop {
        let mut q = lock(&inline.ingest);
        while !(q.closing || q.hurry || !q.checkpoint_waiters.is_empty()) {
            if q.entries.is_empty() {
                q.sleeping = true;
                let (g, t) = inline
                    .ingest_wake
                    .wait_timeout(q, every)
                    .unwrap_or_else(|p| p.into_inner());
                q = g;
                q.sleeping = false;
                if t.timed_out() && q.entries.is_empty() {
                    drop(q);
                    if let Err(e) = lock(shared).checkpoint_if_due(false) {
                        tracing::error!(error = %e, "audit checkpoint failed");
                    }
                    q = lock(&inline.ingest);
                }
            } else {
                // Let a tick's worth of entries gather; appenders do not wake the ingester.
                q = inline
                    .ingest_wake
                    .wait_timeout(q, INGEST_EVERY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                break;
            }
        }
        let entries = std::mem::take(&mut q.entries);
        let retired = std::mem::take(&mut q.retired);
        let waiters = std::mem::take(&mut q.checkpoint_waiters);
        let closing = q.closing;
        q.hurry = false;
        drop(q);

        let mut w = lock(shared);
        let done = w.ingest(
            &entries,
            !waiters.is_empty() || closing,
            !retired.is_empty(),
        );
        let ingested = w.frontier.size();
        let latest = if waiters.is_empty() {
            None
        } else {
            Some(w.latest())
        };
        drop(w);
        if let Err(e) = &done {
            tracing::error!(error = %e, "copying the audit journal into SQLite failed");
        }
        // A file that could not be deleted is tried again after the next pass: left behind while
        // the files after it go, it would leave the journal a hole that keeps the log from
        // opening after a kill.
        let mut undeleted = Vec::new();
        for r in retired {
            if done.is_err() || r.end > ingested {
                undeleted.push(r);
                continue;
            }
            match std::fs::remove_file(&r.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, file = %r.path.display(), "could not delete an audit journal file; trying again after the next copy");
                    undeleted.push(r);
                }
            }
        }
        let finished = {
            let mut q = lock(&inline.ingest);
            q.retired.splice(0..0, undeleted);
            q.ingested = ingested;
            if let Err(e) = &done {
                q.failed = Some(e.to_string());
            }
            inline.ingested_cv.notify_all();
            closing && q.entries.is_empty()
        };
        for r in waiters {
            let _ = r.send(match (&done, &latest) {
                (Err(e), _) => Err(AuditError::Write(e.to_string())),
                (Ok(()), Some(Ok(c))) => Ok(c.clone()),
                (Ok(()), Some(Err(e))) => Err(AuditError::Write(e.to_string())),
                (Ok(()), None) => Ok(None),
            });
        }
        if finished || (closing && done.is_err()) {
            break;
        }
    }
}

impl Drop for SqliteAuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl AuditLog for SqliteAuditLog {
    fn append(&self, entry: Vec<u8>) -> AppendFuture {
        let (tx, rx) = oneshot::channel();
        if let Some(inline) = &self.inline {
            let lead = {
                let mut q = lock(&inline.queue);
                if q.closed {
                    return Box::pin(async { Err(AuditError::Closed) });
                }
                q.pending.push((entry, tx));
                !std::mem::replace(&mut q.leading, true)
            };
            if lead {
                self.lead(inline);
            }
            return Box::pin(async move { rx.await.map_err(|_| AuditError::Closed)? });
        }
        let sent = self
            .sender()
            .map(|s| s.send(Msg::Append(entry, tx)).is_ok())
            .unwrap_or(false);
        Box::pin(async move {
            if !sent {
                return Err(AuditError::Closed);
            }
            rx.await.map_err(|_| AuditError::Closed)?
        })
    }

    fn size(&self) -> Result<u64, AuditError> {
        self.catch_up()?;
        self.with_reader(stored_size)
    }

    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, AuditError> {
        self.catch_up()?;
        self.with_reader(|c| entry_data(c, index))
    }

    fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        self.catch_up()?;
        self.with_reader(latest_checkpoint)
    }

    fn inclusion(&self, index: u64, size: u64) -> Result<InclusionProof, AuditError> {
        self.catch_up()?;
        self.with_reader(|c| inclusion_from(c, index, size))
    }

    fn consistency(&self, first: u64, second: u64) -> Result<ConsistencyProof, AuditError> {
        self.catch_up()?;
        self.with_reader(|c| consistency_from(c, first, second))
    }

    /// With `Durability::Full` every commit was fsynced already. With `Process`, waits until
    /// SQLite holds every acknowledged entry, then checkpoints the WAL in `FULL` mode, which
    /// syncs the WAL, copies it into the database file and syncs that (waiting for the ingester's
    /// commit in progress, if any).
    fn sync(&self) -> Result<(), AuditError> {
        if self.inline.is_none() {
            return Ok(());
        }
        self.catch_up()?;
        self.with_reader(|c| {
            for _ in 0..SYNC_TRIES {
                let (busy, _, _): (i64, i64, i64) =
                    c.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                if busy == 0 {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(AuditError::Write(format!(
                "the audit WAL could not be checkpointed in {SYNC_TRIES} tries"
            )))
        })
    }
}

/// How many times [`SqliteAuditLog`]'s `sync` tries a full WAL checkpoint that readers or the
/// writer keep from completing.
const SYNC_TRIES: u32 = 100;

/// The stored bytes of entry `index` (`None`: no such entry).
fn entry_data(conn: &Connection, index: u64) -> Result<Option<Vec<u8>>, AuditError> {
    Ok(conn
        .query_row(
            "SELECT data FROM entries WHERE idx = ?1",
            params![index as i64],
            |r| r.get(0),
        )
        .optional()?)
}

/// Inclusion proof of entry `index` in the tree of the first `size` entries stored in `conn`.
pub(crate) fn inclusion_from(
    conn: &Connection,
    index: u64,
    size: u64,
) -> Result<InclusionProof, AuditError> {
    if index >= size {
        return Err(AuditError::OutOfRange(format!(
            "index {index} is not below tree size {size}"
        )));
    }
    holds(conn, size)?;
    let mut node = |level, idx| node_at(conn, level, idx);
    let proof = merkle::inclusion_proof_by(index, size, &mut node)?
        .ok_or_else(|| AuditError::OutOfRange(format!("index {index}")))?;
    // The leaf is the entry's data hashed now, not the hash stored beside it: a proof for an
    // entry whose data was rewritten (and its stored hash left) would otherwise verify against
    // the signed root (review, 2026-12-06).
    let data = entry_data(conn, index)?
        .ok_or_else(|| AuditError::Corrupt(format!("entry {index} is missing")))?;
    let leaf = merkle::leaf_hash(&data);
    if leaf != node(0, index)? {
        return Err(AuditError::Corrupt(format!(
            "entry {index}'s data does not hash to the leaf stored for it"
        )));
    }
    Ok(InclusionProof {
        index,
        size,
        leaf: hexfmt::encode(&leaf),
        root: hexfmt::encode(&merkle::range_root(0, size, &mut node)?),
        path: proof.iter().map(|h| hexfmt::encode(h)).collect(),
    })
}

/// Consistency proof between the trees of the first `first` and `second` entries in `conn`.
pub(crate) fn consistency_from(
    conn: &Connection,
    first: u64,
    second: u64,
) -> Result<ConsistencyProof, AuditError> {
    if first == 0 || first > second {
        return Err(AuditError::OutOfRange(format!(
            "a consistency proof needs 0 < first <= second (got {first}, {second})"
        )));
    }
    holds(conn, second)?;
    let mut node = |level, idx| node_at(conn, level, idx);
    let proof = merkle::consistency_proof_by(first, second, &mut node)?
        .ok_or_else(|| AuditError::OutOfRange(format!("first {first}")))?;
    Ok(ConsistencyProof {
        first,
        second,
        first_root: hexfmt::encode(&merkle::range_root(0, first, &mut node)?),
        second_root: hexfmt::encode(&merkle::range_root(0, second, &mut node)?),
        path: proof.iter().map(|h| hexfmt::encode(h)).collect(),
    })
}

struct Writer {
    conn: Connection,
    /// What an ordinary commit waits for (see [`Writer::commit_group`] for the exceptions).
    durability: Durability,
    frontier: Frontier,
    signer: CheckpointSigner,
    policy: CheckpointPolicy,
    last_checkpoint_size: u64,
    last_checkpoint_at: Instant,
    /// The database file, and its device and inode when opened: see [`Writer::still_there`].
    file: (PathBuf, (u64, u64)),
}

/// A file's device and inode.
fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl Writer {
    /// Fails unless the database file is still where it was opened: SQLite goes on writing to a
    /// file that was deleted (the state folder removed by an operator, or by someone hiding
    /// what the log holds), and every entry committed after would be acknowledged and lost
    /// with the process (review, 2026-12-06). One `stat` per commit.
    fn still_there(&self) -> Result<(), AuditError> {
        let (path, was) = &self.file;
        match file_id(path) {
            Ok(now) if now == *was => Ok(()),
            Ok(_) => Err(AuditError::Write(format!(
                "{} was replaced by another file since the audit log opened it",
                path.display()
            ))),
            Err(e) => Err(AuditError::Write(format!(
                "{} is no longer there ({e}): the audit log's folder was deleted or moved",
                path.display()
            ))),
        }
    }

    /// The writer thread: commits the appends sent to it (`Full`), answers checkpoint requests
    /// and signs a checkpoint when entries have waited `policy.every` without one.
    fn run(shared: &Mutex<Writer>, rx: mpsc::Receiver<Msg>) {
        let every = lock(shared).policy.every;
        loop {
            let first = match rx.recv_timeout(every) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = lock(shared).checkpoint_if_due(true) {
                        tracing::error!(error = %e, "audit checkpoint failed");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut appends: Vec<(Vec<u8>, Reply)> = Vec::new();
            let mut ckpt_waiters = Vec::new();
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    Msg::Append(d, r) => appends.push((d, r)),
                    Msg::Checkpoint(r) => ckpt_waiters.push(r),
                }
                if appends.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            let force = !ckpt_waiters.is_empty();
            let mut w = lock(shared);
            w.commit_and_reply(appends, force);
            for r in ckpt_waiters {
                let _ = r.send(w.latest());
            }
        }
        if let Err(e) = lock(shared).checkpoint_if_due(true) {
            tracing::error!(error = %e, "final audit checkpoint failed");
        }
    }

    /// Commits `appends` as one group and tells each appender its index, or the error.
    fn commit_and_reply(&mut self, appends: Vec<(Vec<u8>, Reply)>, force: bool) {
        let result = self.commit_group(appends.iter().map(|(d, _)| d.as_slice()), force);
        if let Err(e) = &result {
            tracing::error!(error = %e, "audit append failed");
        }
        reply(appends.into_iter().map(|(_, r)| r), result);
    }

    fn latest(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        latest_checkpoint(&self.conn)
    }

    /// Commits `appends` in one transaction (with a checkpoint when one is due) and returns the
    /// index of the first. On failure nothing is committed and the in-memory tree is unchanged.
    ///
    /// With `Durability::Process` an ordinary commit is not fsynced (the journal holds its
    /// entries), but one that signs a checkpoint is, as with `Full`: clients may fetch a
    /// checkpoint and hold the log to it, and a power cut must not take back a root already
    /// published, after which the gateway would sign another for the same size. That is one
    /// fsync per checkpoint: by the default policy every 1,000 entries or every second, whichever
    /// comes first (about 6 a second at 6,000 requests a second), on the ingester's thread.
    fn commit_group<'a, I>(&mut self, entries: I, force: bool) -> Result<u64, AuditError>
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: ExactSizeIterator,
    {
        self.still_there()?;
        let entries = entries.into_iter();
        let after = self.frontier.size() + entries.len() as u64;
        let due = after > self.last_checkpoint_size
            && (force
                || after - self.last_checkpoint_size >= self.policy.every_entries
                || self.last_checkpoint_at.elapsed() >= self.policy.every);
        self.synced(due, |w| w.commit_entries(entries, due))
    }

    /// Runs `f` with every commit fsynced when `sync` is set and the ordinary commit is not.
    fn synced<T>(
        &mut self,
        sync: bool,
        f: impl FnOnce(&mut Self) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let raise = sync && self.durability != Durability::Full;
        if raise {
            self.conn
                .pragma_update(None, "synchronous", Durability::Full.synchronous())?;
        }
        let r = f(self);
        if raise {
            self.conn
                .pragma_update(None, "synchronous", self.durability.synchronous())?;
        }
        r
    }

    fn commit_entries<'a>(
        &mut self,
        entries: impl Iterator<Item = &'a [u8]>,
        due: bool,
    ) -> Result<u64, AuditError> {
        let start = self.frontier.size();
        let mut frontier = self.frontier.clone();
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO entries (idx, leaf, data) VALUES (?1, ?2, ?3)")?;
            let mut made = Vec::new();
            for data in entries {
                let leaf = merkle::leaf_hash(data);
                stmt.execute(params![frontier.size() as i64, &leaf[..], data])?;
                frontier.push_with(leaf, keep_stored(&mut made));
            }
            insert_nodes(&tx, &made)?;
        }
        if due {
            insert_checkpoint(&tx, &self.signer, &frontier)?;
        }
        tx.commit()?;
        self.frontier = frontier;
        if due {
            self.last_checkpoint_size = self.frontier.size();
            self.last_checkpoint_at = Instant::now();
        }
        Ok(start)
    }

    /// Commits journaled `entries` (contiguous from the tree's size) as one group; with
    /// `force`, signs a checkpoint of everything even when no entries came.
    /// With `durable`, journal files are to be deleted after it: what it commits, and what was
    /// committed before, is made durable first ([`Writer::sync_committed`]), so that the
    /// deletion cannot reach the disk before the entries do (a power cut would then leave a
    /// database without them and no journal to take them from). Once per 4 MiB of journal.
    fn ingest(
        &mut self,
        entries: &[(u64, Vec<u8>)],
        force: bool,
        durable: bool,
    ) -> Result<(), AuditError> {
        self.ingest_entries(entries, force)?;
        if durable {
            self.sync_committed()?;
        }
        Ok(())
    }

    fn ingest_entries(
        &mut self,
        entries: &[(u64, Vec<u8>)],
        force: bool,
    ) -> Result<(), AuditError> {
        let Some((first, _)) = entries.first() else {
            return if force {
                self.checkpoint_if_due(true)
            } else {
                Ok(())
            };
        };
        if *first != self.frontier.size() {
            return Err(AuditError::Corrupt(format!(
                "journaled entries start at {first} but the log holds {}",
                self.frontier.size()
            )));
        }
        self.commit_group(entries.iter().map(|(_, d)| d.as_slice()), force)?;
        Ok(())
    }

    /// Copies into the database the journal entries it lacks (a gateway killed before its
    /// ingester caught up), checks the ones it has against the database's, then deletes the
    /// journal.
    fn replay_journal(&mut self, db: &Path) -> Result<(), AuditError> {
        let j = journal::read(db)?;
        if j.files.is_empty() {
            return Ok(());
        }
        let size = self.frontier.size();
        let from = j.entries.first().map_or(size, |(idx, _)| (*idx).min(size));
        let leaves = read_leaf_range(&self.conn, from, size)?;
        if j.torn_bytes > 0 {
            tracing::warn!(
                bytes = j.torn_bytes,
                "dropped a torn record at the end of the audit journal (a write cut short by a kill; its request was not answered)"
            );
        }
        let tail = journal::beyond(&j.entries, from, &leaves).map_err(AuditError::Corrupt)?;
        if !tail.is_empty() {
            self.commit_group(tail.iter().map(|(_, d)| d.as_slice()), true)?;
            tracing::info!(
                entries = tail.len(),
                "copied journaled audit entries into the database"
            );
        }
        // What the database holds of the journal, copied now or committed without an fsync by
        // the gateway that was killed, is made durable before the journal goes.
        self.sync_committed()?;
        for f in &j.files {
            std::fs::remove_file(f)?;
        }
        Ok(())
    }

    /// Makes what was committed so far durable: fsyncs the WAL and the database file. A commit
    /// is in the WAL until a checkpoint has copied it into the database file, and SQLite
    /// (`synchronous=NORMAL`) fsyncs the WAL before a checkpoint and the database file after
    /// one, before the WAL is ever started over; so every committed page is in a file synced
    /// here or synced already.
    fn sync_committed(&mut self) -> Result<(), AuditError> {
        if self.durability == Durability::Full {
            return Ok(()); // every commit was fsynced
        }
        let Some(db) = self
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
        else {
            return Ok(()); // in memory
        };
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        for path in [PathBuf::from(wal), db] {
            match std::fs::File::open(&path) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn checkpoint_if_due(&mut self, force: bool) -> Result<(), AuditError> {
        if self.frontier.size() <= self.last_checkpoint_size {
            return Ok(());
        }
        if !force && self.last_checkpoint_at.elapsed() < self.policy.every {
            return Ok(());
        }
        // Fsynced, as every commit that signs a checkpoint (see `commit_group`).
        self.synced(true, |w| {
            let tx = w.conn.transaction()?;
            insert_checkpoint(&tx, &w.signer, &w.frontier)?;
            tx.commit()?;
            Ok(())
        })?;
        self.last_checkpoint_size = self.frontier.size();
        self.last_checkpoint_at = Instant::now();
        Ok(())
    }
}

/// The WAL checkpointer's loop (see the module documentation); ends when `stop`'s sender is
/// dropped, after a last pass.
/// The nice value of the threads that copy a `Durability::Process` log into SQLite and
/// checkpoint its WAL: work no answer waits for, which at the default priority took a core from
/// the async worker and the inference threads in bursts (a tick's entries at once) and showed in
/// their tail latency. Open loop at 3,000 requests per second (`bench/gateway_latency.sh`,
/// 2026-12-06, two runs each), the added p99 was 0.32-0.33 ms at 16 connections and 0.48-0.54 ms
/// at 64 at nice 10, against 0.83-1.03 and 0.58-0.92 ms at nice 0. Under `Durability::Full`
/// the writer is on the answer's path, and a checkpoint in RESTART mode blocks it, so there
/// neither is lowered (a lowered thread holding what the path waits for would be a priority
/// inversion). Linux gives a nice value per thread; raising it needs no privilege.
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`]; a failure only costs latency.
fn background_priority() {
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), BACKGROUND_NICE)
    {
        tracing::debug!(error = %e, "could not lower a background thread's priority");
    }
}

fn wal_checkpointer(conn: Connection, stop: mpsc::Receiver<()>, background: bool) {
    if background {
        background_priority();
    }
    let checkpoint = |mode: &str| -> rusqlite::Result<(i64, i64, i64)> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    };
    // The log's own page size: one made before `PAGE_SIZE` keeps SQLite's default.
    let page_size = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .unwrap_or(PAGE_SIZE)
        .max(512);
    let restart_frames = WAL_RESTART_BYTES / page_size;
    loop {
        let last = !matches!(
            stop.recv_timeout(WAL_CHECKPOINT_EVERY),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        match checkpoint("PASSIVE") {
            Ok((_, frames, _)) if frames >= restart_frames => {
                if let Err(e) = checkpoint("RESTART") {
                    tracing::warn!(error = %e, frames, "audit WAL restart failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit WAL checkpoint failed"),
        }
        if last {
            break;
        }
    }
}

fn insert_checkpoint(
    tx: &rusqlite::Transaction<'_>,
    signer: &CheckpointSigner,
    frontier: &Frontier,
) -> Result<(), AuditError> {
    // Never before the latest checkpoint's time: a wall clock stepped back (NTP, a VM resumed or
    // moved) would otherwise sign a checkpoint older than the one before it, which the verifier
    // reports on every later run of an untampered log.
    let latest: Option<i64> = tx
        .prepare_cached("SELECT timestamp_ms FROM checkpoints ORDER BY size DESC LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    let at = now_ms().max(latest.map_or(0, |t| t.max(0) as u64));
    let c = signer.sign(Checkpoint::new(frontier.size(), &frontier.root(), at));
    let sig = hexfmt::decode(&c.signature).unwrap_or_default();
    let root = frontier.root();
    tx.execute(
        "INSERT OR REPLACE INTO checkpoints (size, root, timestamp_ms, signature) VALUES (?1, ?2, ?3, ?4)",
        params![c.checkpoint.size as i64, &root[..], c.checkpoint.timestamp_ms as i64, sig],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// The log at `db` with default checkpoints, signed with a key from `seed`.
    fn try_open_log(
        db: &Path,
        seed: u8,
        durability: Durability,
    ) -> Result<SqliteAuditLog, AuditError> {
        SqliteAuditLog::open(
            db,
            CheckpointSigner::from_seed(&[seed; 32]),
            CheckpointPolicy::default(),
            durability,
        )
    }

    fn open_log(db: &Path, seed: u8, durability: Durability) -> SqliteAuditLog {
        try_open_log(db, seed, durability).unwrap()
    }

    /// A new log's database has [`PAGE_SIZE`] pages; one made with SQLite's default keeps its
    /// own, and opens and grows as before.
    #[test]
    fn a_new_log_has_large_pages_and_an_old_one_keeps_its_own() {
        let page_size = |db: &Path| -> i64 {
            Connection::open(db)
                .unwrap()
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let new = dir.path().join("new.db");
        let log = open_log(&new, 1, Durability::Process);
        rt.block_on(log.append(b"{}".to_vec())).unwrap();
        log.close();
        assert_eq!(page_size(&new), PAGE_SIZE);

        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE t (x); DROP TABLE t;")
            .unwrap();
        assert_eq!(page_size(&old), 4096);
        for n in 1..=2u64 {
            let log = open_log(&old, 1, Durability::Process);
            rt.block_on(log.append(b"{}".to_vec())).unwrap();
            assert_eq!(log.size().unwrap(), n);
            log.close();
        }
        assert_eq!(page_size(&old), 4096);
    }

    /// With `process` durability, `sync` puts what was appended into the database file itself
    /// (synced), so that the file alone, without its WAL or the journal, holds it.
    #[test]
    fn sync_puts_process_mode_entries_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let log = open_log(&db, 1, Durability::Process);
        let rt = runtime();
        for i in 0..3u8 {
            rt.block_on(log.append(vec![b'{', i, b'}'])).unwrap();
        }
        log.sync().unwrap();
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(&db, copy.path().join("audit.db")).unwrap();
        let alone = crate::audit::open_offline(&copy.path().join("audit.db")).unwrap();
        assert_eq!(alone.size().unwrap(), 3);
        log.close();
        // With `full` durability every commit is synced already: nothing to do.
        let full = open_log(&dir.path().join("full.db"), 1, Durability::Full);
        full.sync().unwrap();
        full.close();
    }

    /// The files in `dir` and their contents' digests, apart from the contents of SQLite's WAL
    /// index (`-shm`), which every reader of a WAL writes its read marks to.
    fn files(dir: &Path) -> std::collections::BTreeMap<String, [u8; 32]> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let bytes = if name.ends_with("-shm") {
                    Vec::new()
                } else {
                    std::fs::read(e.path()).unwrap()
                };
                (name, merkle::leaf_hash(&bytes))
            })
            .collect()
    }

    /// The offline readers (`palisade audit checkpoint|inclusion|consistency|verify`, and the
    /// gateway's look before it opens a log) read a WAL that a killed gateway left and change
    /// nothing: they opened the database read-write, and closing copied the WAL into it and
    /// deleted the WAL (review, 2026-12-06).
    #[test]
    fn offline_readers_read_a_killed_gateways_wal_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let policy = CheckpointPolicy {
            every_entries: 2,
            every: Duration::from_secs(3600),
        };
        let signer = CheckpointSigner::from_seed(&[4; 32]);
        let public = signer.public_key();
        let log = SqliteAuditLog::open(&db, signer, policy, Durability::Full).unwrap();
        let rt = runtime();
        for i in 0..5 {
            rt.block_on(log.append(record(i))).unwrap();
        }
        // The files as a kill would leave them, taken while the log is open; its WAL holds the
        // entries that its checkpointer has not yet copied into the database.
        let copy = tempfile::tempdir().unwrap();
        for name in ["audit.db", "audit.db-wal", "audit.db-shm"] {
            std::fs::copy(dir.path().join(name), copy.path().join(name)).unwrap();
        }
        log.close();
        let there = copy.path().join("audit.db");
        let before = files(copy.path());
        assert!(
            std::fs::metadata(copy.path().join("audit.db-wal"))
                .unwrap()
                .len()
                > 0
        );

        assert!(has_checkpoints(&there));
        let off = crate::audit::open_offline(&there).unwrap();
        assert_eq!(off.size().unwrap(), 5);
        assert_eq!(off.latest_checkpoint().unwrap().unwrap().checkpoint.size, 4);
        assert!(off.inclusion(4, 5).unwrap().verify());
        assert!(off.consistency(2, 5).unwrap().verify());
        drop(off);
        let report = crate::audit::verify_log(&there, &public, &[]).unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(files(copy.path()), before);
    }

    /// A file that is not an audit log is refused by the offline readers, and left as it was
    /// (opening it for proofs made the log's tables in it and switched it to WAL).
    #[test]
    fn offline_readers_refuse_what_is_not_an_audit_log_and_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let before = files(dir.path());
        for path in [&other, &empty] {
            let e = crate::audit::open_offline(path).unwrap_err();
            assert!(e.to_string().contains("is not an audit log"), "{e}");
            let e = crate::audit::verify_log(path, &[0; 32], &[]).unwrap_err();
            assert!(e.to_string().contains("is not an audit log"), "{e}");
        }
        assert_eq!(files(dir.path()), before);
    }

    /// A log made before the `nodes` table still gives proofs offline, from its leaves, and
    /// does not get the table.
    #[test]
    fn offline_proofs_of_a_log_without_stored_nodes_come_from_its_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let log = open_log(&db, 1, Durability::Full);
        let rt = runtime();
        for i in 0..40u8 {
            rt.block_on(log.append(vec![b'{', i, b'}'])).unwrap();
        }
        let with_nodes = crate::audit::open_offline(&db)
            .unwrap()
            .inclusion(3, 40)
            .unwrap();
        log.close();
        Connection::open(&db)
            .unwrap()
            .execute_batch("DROP TABLE nodes;")
            .unwrap();
        let off = crate::audit::open_offline(&db).unwrap();
        let p = off.inclusion(3, 40).unwrap();
        assert!(p.verify());
        assert_eq!((p.root, p.path), (with_nodes.root, with_nodes.path));
        drop(off);
        assert!(!table_exists(&Connection::open(&db).unwrap(), "nodes").unwrap());
    }

    /// A database in rollback mode with a hot journal cannot be read without a write: the
    /// offline readers refuse it saying so (review, 2026-12-06: a bare "attempt to write a
    /// readonly database"), and leave it.
    #[test]
    fn offline_readers_refuse_a_hot_rollback_journal_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        drop(open_conn(&db, Durability::Full).unwrap());
        let c = Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "DELETE").unwrap();
        c.pragma_update(None, "cache_size", 1).unwrap();
        c.execute_batch("BEGIN IMMEDIATE; CREATE TABLE junk (b BLOB);")
            .unwrap();
        for _ in 0..200 {
            c.execute("INSERT INTO junk VALUES (randomblob(4000))", [])
                .unwrap();
        }
        // The files as a writer stopped mid-transaction leaves them.
        let copy = tempfile::tempdir().unwrap();
        for name in ["audit.db", "audit.db-journal"] {
            std::fs::copy(dir.path().join(name), copy.path().join(name)).unwrap();
        }
        drop(c);
        let there = copy.path().join("audit.db");
        let before = files(copy.path());
        let e = crate::audit::verify_log(&there, &[0; 32], &[]).unwrap_err();
        assert!(e.to_string().contains("hot rollback journal"), "{e}");
        let e = crate::audit::open_offline(&there).unwrap_err();
        assert!(e.to_string().contains("hot rollback journal"), "{e}");
        assert_eq!(files(copy.path()), before);
    }

    fn synchronous(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn durability_sets_what_a_commit_waits_for() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        // SQLite's codes: 1 = NORMAL (no fsync per WAL commit), 2 = FULL.
        assert_eq!(synchronous(&open_conn(&db, Durability::Full).unwrap()), 2);
        assert_eq!(
            synchronous(&open_conn(&db, Durability::Process).unwrap()),
            1
        );
        let mode: String = open_conn(&db, Durability::Process)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn concurrent_appenders_commit_for_each_other_in_process_mode() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let log = Arc::new(open_log(&db, 3, Durability::Process));
        assert!(log.inline.is_some());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    let rt = runtime();
                    (0..50u8)
                        .map(|i| (rt.block_on(log.append(vec![t, i])).unwrap(), vec![t, i]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let appended: Vec<(u64, Vec<u8>)> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        for (index, data) in &appended {
            assert_eq!(log.entry(*index).unwrap().as_ref(), Some(data));
        }
        let mut indices: Vec<u64> = appended.iter().map(|(i, _)| *i).collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..400).collect::<Vec<u64>>());
        assert_eq!(log.size().unwrap(), 400);
        // The stored tree matches the checkpoint.
        let ckpt = log.checkpoint_now().unwrap().unwrap();
        assert_eq!(ckpt.checkpoint.size, 400);
        let proof = log.inclusion(123, 400).unwrap();
        assert_eq!(proof.root, ckpt.checkpoint.root);
        log.close();
        let rt = runtime();
        assert!(matches!(
            rt.block_on(log.append(vec![0])),
            Err(AuditError::Closed)
        ));
    }

    #[test]
    fn close_waits_for_a_leader_still_writing_and_keeps_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let log = Arc::new(open_log(&db, 4, Durability::Process));
        let inline = log.inline.clone().unwrap();
        // Hold the journal so that the appender below becomes the leader and stays writing.
        let journal = inline.journal.lock().unwrap();
        let appender = {
            let log = log.clone();
            std::thread::spawn(move || runtime().block_on(log.append(vec![7])))
        };
        while !{
            let q = lock(&inline.queue);
            q.leading && q.pending.is_empty()
        } {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (done_tx, done_rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                log.close();
                let _ = done_tx.send(());
            });
        }
        assert!(
            done_rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "close returned while a leader was still writing"
        );
        drop(journal);
        done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("close did not return once the leader had finished");
        assert_eq!(appender.join().unwrap().unwrap(), 0);
        drop(log);
        let log = open_log(&db, 4, Durability::Process);
        assert_eq!(log.entry(0).unwrap(), Some(vec![7]));
    }

    #[test]
    fn the_wal_is_checkpointed_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let rt = runtime();
        let log = open_log(&db, 2, Durability::Process);
        for i in 0..200u64 {
            assert_eq!(rt.block_on(log.append(vec![7; 3000])).unwrap(), i);
        }
        // The writer never checkpoints (its commits stay short); the checkpointer copies the
        // WAL into the database file within a few of its periods.
        let main_db_bytes = || std::fs::metadata(&db).unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while main_db_bytes() < 400_000 && Instant::now() < deadline {
            std::thread::sleep(WAL_CHECKPOINT_EVERY);
        }
        assert!(
            main_db_bytes() >= 400_000,
            "the database file has {} bytes after 200 entries of 3 KB",
            main_db_bytes()
        );
        log.close();
        let log = open_log(&db, 2, Durability::Full);
        assert_eq!(log.size().unwrap(), 200);
    }

    #[test]
    fn entries_committed_without_fsync_are_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let rt = runtime();
        {
            let log = open_log(&db, 1, Durability::Process);
            for i in 0..5u64 {
                assert_eq!(rt.block_on(log.append(vec![i as u8])).unwrap(), i);
            }
        }
        let log = open_log(&db, 1, Durability::Full);
        assert_eq!(log.size().unwrap(), 5);
        assert_eq!(log.entry(3).unwrap(), Some(vec![3]));
        assert_eq!(rt.block_on(log.append(vec![5])).unwrap(), 5);
    }

    /// Entries as a gateway killed before its ingester caught up leaves them: `db` holds
    /// `in_db` entries; the journal holds `journal` (possibly overlapping the database).
    fn killed_gateway_state(db: &Path, in_db: u8, journal: std::ops::Range<u8>) {
        let rt = runtime();
        let log = open_log(db, 4, Durability::Full);
        for i in 0..in_db {
            rt.block_on(log.append(vec![i])).unwrap();
        }
        log.close();
        let mut j = Journal::create(db, u64::from(journal.start)).unwrap();
        let data: Vec<Vec<u8>> = journal.map(|i| vec![i]).collect();
        j.append(data.iter().map(Vec::as_slice)).unwrap();
    }

    #[test]
    fn journaled_entries_a_killed_gateway_left_are_copied_in_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        // Entries 0..5 in SQLite; the journal still holds 3..5 (not yet deleted) and 5..8
        // (acknowledged, never ingested).
        killed_gateway_state(&db, 5, 3..8);
        let log = open_log(&db, 4, Durability::Process);
        assert_eq!(log.size().unwrap(), 8);
        for i in 0..8u8 {
            assert_eq!(log.entry(u64::from(i)).unwrap(), Some(vec![i]));
        }
        let proof = log.inclusion(6, 8).unwrap();
        assert!(proof.verify());
        // The old journal is gone; the open log has started its own.
        let files = journal::files(&db).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, 8);
        let rt = runtime();
        assert_eq!(rt.block_on(log.append(vec![8])).unwrap(), 8);
        log.close();
        assert!(journal::files(&db).unwrap().is_empty());
        assert_eq!(open_log(&db, 4, Durability::Full).size().unwrap(), 9);
    }

    #[test]
    fn a_journal_that_disagrees_with_the_database_or_skips_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        killed_gateway_state(&db, 3, 5..6);
        let refused = |db: &Path, durability| match try_open_log(db, 4, durability) {
            Err(AuditError::Corrupt(m)) => m,
            Err(e) => panic!("not a corruption error: {e}"),
            Ok(_) => panic!("the log opened"),
        };
        let m = refused(&db, Durability::Process);
        assert!(m.contains("entries 3 to 4 are missing"), "{m}");
        // Nothing was deleted or copied: the evidence stays as it was.
        assert_eq!(journal::files(&db).unwrap().len(), 1);

        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        killed_gateway_state(&db, 3, 0..0);
        let mut j = Journal::create(&db, 1).unwrap();
        j.append([&b"forged"[..]]).unwrap();
        let m = refused(&db, Durability::Full);
        assert!(m.contains("entry 1 differs"), "{m}");
    }

    #[test]
    fn process_mode_journals_rotates_and_deletes_what_sqlite_holds() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let rt = runtime();
        let log = open_log(&db, 5, Durability::Process);
        let entry = vec![9u8; 64 << 10];
        let n = (journal::ROTATE_BYTES / (64 << 10)) * 2 + 3;
        for i in 0..n {
            assert_eq!(rt.block_on(log.append(entry.clone())).unwrap(), i);
        }
        // Acknowledged entries are readable at once (reads wait for the ingester).
        assert_eq!(log.size().unwrap(), n);
        assert_eq!(log.entry(n - 1).unwrap().as_deref(), Some(entry.as_slice()));
        // The ingester deletes the files it has emptied within a few ticks.
        let deadline = Instant::now() + Duration::from_secs(10);
        while journal::files(&db).unwrap().len() > 1 && Instant::now() < deadline {
            std::thread::sleep(INGEST_EVERY);
        }
        assert_eq!(journal::files(&db).unwrap().len(), 1);
        let ckpt = log.checkpoint_now().unwrap().unwrap();
        assert_eq!(ckpt.checkpoint.size, n);
        log.close();
        assert!(journal::files(&db).unwrap().is_empty());
    }

    #[test]
    fn the_offline_verifier_counts_a_journal_left_beside_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let pk = CheckpointSigner::from_seed(&[4; 32]).public_key();
        let rt = runtime();
        let log = open_log(&db, 4, Durability::Full);
        for i in 0..4 {
            rt.block_on(log.append(record(i))).unwrap();
        }
        log.close();
        let mut j = Journal::create(&db, 2).unwrap();
        let tail: Vec<Vec<u8>> = (2..7).map(record).collect();
        j.append(tail.iter().map(Vec::as_slice)).unwrap();
        let r = super::super::verify_log(&db, &pk, &[]).unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!((r.entries, r.journal_entries, r.verified_up_to), (7, 3, 4));
        // The offline log holds what the database does, and says what is only journaled.
        let off = crate::audit::open_offline(&db).unwrap();
        assert_eq!(off.size().unwrap(), 4);
        assert_eq!((off.journaled_beyond(4), off.journaled_beyond(6)), (3, 1));
        drop(off);
        // The root is the one the log has once it copies the journal in.
        let log = open_log(&db, 4, Durability::Full);
        assert_eq!(log.inclusion(0, 7).unwrap().root, r.root);
        log.close();
        // A journal entry that contradicts the database is reported.
        let mut j = Journal::create(&db, 6).unwrap();
        j.append([record(99).as_slice()]).unwrap();
        let r = super::super::verify_log(&db, &pk, &[]).unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("journal entry 6 differs")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn entries_a_killed_gateway_left_unsigned_are_signed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let rarely = CheckpointPolicy {
            every_entries: 1000,
            every: Duration::from_secs(3600),
        };
        let signer = || CheckpointSigner::from_seed(&[6; 32]);
        let rt = runtime();
        let log = SqliteAuditLog::open(&db, signer(), rarely, Durability::Full).unwrap();
        for i in 0..3u8 {
            rt.block_on(log.append(vec![i])).unwrap();
        }
        assert_eq!(log.latest_checkpoint().unwrap(), None);
        // Gone without closing, as under kill -9: no final checkpoint was signed.
        std::mem::forget(log);
        let log = SqliteAuditLog::open(&db, signer(), rarely, Durability::Process).unwrap();
        let c = log.latest_checkpoint().unwrap().unwrap();
        assert_eq!(c.checkpoint.size, 3);
        assert_eq!(c.checkpoint.root, log.inclusion(0, 3).unwrap().root);
    }

    #[test]
    fn when_sqlite_cannot_take_the_journal_appends_and_reads_fail_closed_and_the_journal_stays() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let rt = runtime();
        let log = open_log(&db, 7, Durability::Process);
        assert_eq!(rt.block_on(log.append(vec![0])).unwrap(), 0);
        assert_eq!(log.size().unwrap(), 1);
        // Another connection breaks the table the ingester writes to.
        open_conn(&db, Durability::Full)
            .unwrap()
            .execute_batch("ALTER TABLE entries RENAME TO broken")
            .unwrap();
        // The entry is journaled and acknowledged; copying it in fails.
        assert_eq!(rt.block_on(log.append(vec![1])).unwrap(), 1);
        assert!(matches!(log.size(), Err(AuditError::Write(_))));
        // From then on appends are refused rather than piling up in the journal.
        assert!(matches!(
            rt.block_on(log.append(vec![2])),
            Err(AuditError::Write(_))
        ));
        log.close();
        // The acknowledged entry is still in the journal for the next open to copy in.
        let left = journal::read(&db).unwrap();
        assert_eq!(
            left.entries.last().map(|(i, d)| (*i, d.clone())),
            Some((1, vec![1]))
        );
    }

    /// A well-formed audit entry (the offline verifier checks entries' form).
    fn record(i: u64) -> Vec<u8> {
        serde_json::to_vec(&super::super::AuditRecord {
            ts_ms: i,
            key_id: None,
            method: "POST".into(),
            path: "/v2/models/m/infer".into(),
            action: "infer".into(),
            model: Some("m".into()),
            version: None,
            decision: "allowed".into(),
            status: 200,
            input_sha256: None,
            output_sha256: None,
            latency_us: 1,
            operator: None,
        })
        .unwrap()
    }

    #[test]
    fn a_checkpoint_is_never_signed_before_the_one_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let signer = CheckpointSigner::from_seed(&[9; 32]);
        let rt = runtime();
        let log = open_log(&db, 9, Durability::Full);
        for i in 0..3 {
            rt.block_on(log.append(record(i))).unwrap();
        }
        let first = log.checkpoint_now().unwrap().unwrap();
        log.close();
        // The clock that signed it was an hour ahead of the one that signs next (it stepped back).
        let ahead = signer.sign(Checkpoint {
            timestamp_ms: first.checkpoint.timestamp_ms + 3_600_000,
            ..first.checkpoint.clone()
        });
        let conn = open_conn(&db, Durability::Full).unwrap();
        conn.execute(
            "UPDATE checkpoints SET timestamp_ms = ?1, signature = ?2 WHERE size = 3",
            params![
                ahead.checkpoint.timestamp_ms as i64,
                hexfmt::decode(&ahead.signature).unwrap()
            ],
        )
        .unwrap();
        drop(conn);
        let log = open_log(&db, 9, Durability::Full);
        for i in 3..5 {
            rt.block_on(log.append(record(i))).unwrap();
        }
        let second = log.checkpoint_now().unwrap().unwrap();
        log.close();
        assert!(second.checkpoint.timestamp_ms >= ahead.checkpoint.timestamp_ms);
        let report = super::super::verify_log(&db, &signer.public_key(), &[]).unwrap();
        assert!(report.ok(), "{:?}", report.problems);
    }

    #[test]
    fn a_proof_size_past_any_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let conn = open_conn(&db, Durability::Full).unwrap();
        for size in [1 << 63, u64::MAX] {
            assert!(matches!(
                inclusion_from(&conn, 0, size),
                Err(AuditError::OutOfRange(_))
            ));
            assert!(matches!(
                consistency_from(&conn, 1, size),
                Err(AuditError::OutOfRange(_))
            ));
        }
    }

    #[test]
    fn a_file_moved_on_from_before_a_failed_write_is_deleted_in_its_turn() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let rt = runtime();
        let log = open_log(&db, 8, Durability::Process);
        let big = vec![b'x'; journal::ROTATE_BYTES as usize];
        assert_eq!(rt.block_on(log.append(big.clone())).unwrap(), 0);
        // The next group starts journal file 1 and then fails (an entry over the limit; a full
        // disk takes the same path).
        assert!(rt.block_on(log.append(vec![0; (16 << 20) + 1])).is_err());
        assert_eq!(rt.block_on(log.append(big)).unwrap(), 1);
        assert_eq!(rt.block_on(log.append(vec![1])).unwrap(), 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while journal::files(&db).unwrap().len() > 1 && Instant::now() < deadline {
            std::thread::sleep(INGEST_EVERY);
        }
        let left: Vec<u64> = journal::files(&db).unwrap().iter().map(|f| f.0).collect();
        assert_eq!(left, [2], "the files before the last were not all deleted");
        assert_eq!(log.size().unwrap(), 3);
        std::mem::forget(log); // kill -9
        try_open_log(&db, 8, Durability::Process).expect("the killed log opens");
    }

    // A journal record corrupted in the middle of a file is not a torn tail (review, 2026-12-06).

    /// A killed gateway's state: entries 0..4 in SQLite, 4..8 acknowledged in the journal only;
    /// then one byte of entry 5's data in the journal is changed. Entry 5 is a whole record
    /// with entries 6 and 7 after it, so this is not a write cut short by a kill (a torn write
    /// is a prefix of a record at the end of the last file): the journal is corrupt.
    fn corrupted_journal_state(db: &Path) -> std::path::PathBuf {
        let rt = runtime();
        let log = open_log(db, 4, Durability::Full);
        for i in 0..4 {
            rt.block_on(log.append(record(i))).unwrap();
        }
        log.close();
        let mut j = Journal::create(db, 4).unwrap();
        let tail: Vec<Vec<u8>> = (4..8).map(record).collect();
        j.append(tail.iter().map(Vec::as_slice)).unwrap();
        drop(j);
        let files = journal::files(db).unwrap();
        assert_eq!(files.len(), 1);
        let path = files[0].1.clone();
        let mut bytes = std::fs::read(&path).unwrap();
        // Record of entry 4: 16-byte header + its data; entry 5's data starts after its header.
        let at = 16 + record(4).len() + 16 + 2;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        path
    }

    #[test]
    fn verify_reports_a_journal_record_corrupted_before_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        corrupted_journal_state(&db);
        let pk = CheckpointSigner::from_seed(&[4; 32]).public_key();
        let r = super::super::verify_log(&db, &pk, &[]).unwrap();
        assert!(
            !r.ok(),
            "a journal whose entry 5 fails its CRC, with entries 6 and 7 after it, verified: \
             {} entries, {} from the journal, problems {:?}",
            r.entries,
            r.journal_entries,
            r.problems
        );
    }

    #[test]
    fn opening_refuses_a_journal_record_corrupted_before_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let path = corrupted_journal_state(&db);
        let opened = try_open_log(&db, 4, Durability::Process);
        let size = opened.as_ref().ok().map(|l| l.size().unwrap());
        assert!(
            opened.is_err(),
            "the log opened over a corrupt journal: size {size:?} (acknowledged entries 5..8 \
             dropped), journal file still there: {}",
            path.exists()
        );
        assert!(
            path.exists(),
            "the corrupt journal (the evidence) was deleted"
        );
    }
}
