//! The SQLite audit log: one writer thread with group commit, readers on their own connection.
//!
//! **Durability policy.** The database runs in WAL mode. [`SqliteAuditLog::append`] resolves only
//! after the transaction holding the entry has committed, and the gateway sends a response only
//! after its entry's append has resolved. What "committed" means is the [`Durability`]:
//! - [`Durability::Full`] (the default, `synchronous=FULL`): the WAL is fsynced at every commit,
//!   so an acknowledged request's entry survives `kill -9` and power loss;
//! - [`Durability::Process`] (`synchronous=NORMAL`): the commit is written to the WAL file but
//!   not fsynced (the WAL is fsynced when SQLite checkpoints it into the database), so an
//!   acknowledged entry survives `kill -9` of the gateway — the kernel holds the written pages —
//!   but the last commits can be lost if the machine itself loses power or crashes.
//!
//! Concurrent appends are committed together (one commit, and with `Full` one fsync, per group),
//! which is what keeps the cost per request low under load. Who commits depends on the
//! durability:
//! - with `Full`, a writer thread: an fsync takes from a fraction of a millisecond to several, too
//!   long to hold an async worker, and the appends that arrive meanwhile make the next group;
//! - with `Process`, the appending thread itself (leader/follower group commit): the first
//!   appender commits its entry and whatever others queued while it did, until the queue is
//!   empty; the others wait for its answer. A commit without an fsync costs tens of microseconds,
//!   less than handing the entry to another thread and being woken back: at one connection on a
//!   2-core VM, removing that hand-off cut 50 to 160 µs from each request (`bench/gateway_vs_bare.sh`).
//!
//! The writer thread runs in both modes: it also signs time-based checkpoints.
//!
//! **WAL checkpoints** (copying the WAL into the database file, with an fsync of each) do not run
//! in the writer: SQLite's automatic checkpoint would run inside a commit every 1,000 pages and
//! hold that request, and the ones queued behind it, for as long as the copy and its fsyncs take
//! (`bench/gateway_vs_bare.sh` measured a p99 of 323 ms at one connection with it, about 2 ms
//! without). A second thread checkpoints on its own connection in `PASSIVE` mode, beside the
//! writer, every [`WAL_CHECKPOINT_EVERY`]; when the WAL has grown past [`WAL_RESTART_FRAMES`]
//! frames (a writer that never pauses leaves no moment for SQLite to start the WAL over), it
//! checkpoints in `RESTART` mode, which holds the writer only for the frames written since the
//! last pass.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::checkpoint::{Checkpoint, CheckpointSigner, SignedCheckpoint};
use super::merkle::{self, Frontier, Hash};
use super::{AppendFuture, AuditError, AuditLog, ConsistencyProof, InclusionProof};
use crate::hexfmt;

/// Most entries committed in one transaction.
const MAX_GROUP: usize = 4096;

/// How often the WAL checkpointer copies committed frames into the database file.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL length (frames of one page) from which the checkpointer also starts the WAL over.
const WAL_RESTART_FRAMES: i64 = 16_384;

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

enum Msg {
    Append(Vec<u8>, Reply),
    Checkpoint(oneshot::Sender<Result<Option<SignedCheckpoint>, AuditError>>),
}

/// An append-only Merkle log in an SQLite file.
pub struct SqliteAuditLog {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    reader: Mutex<Connection>,
    state: Arc<Mutex<Writer>>,
    /// `Some` when appends are committed by the appending threads (`Durability::Process`).
    inline: Option<Inline>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    wal: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

/// The appending threads' group commit: the queue, and a signal when no leader is committing.
#[derive(Default)]
struct Inline {
    queue: Mutex<InlineQueue>,
    idle: Condvar,
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
             signature    BLOB NOT NULL);",
    )?;
    Ok(conn)
}

/// Reads the leaf hashes `[0, size)` in order, checking that indices are contiguous.
pub(crate) fn read_leaves(conn: &Connection, size: u64) -> Result<Vec<Hash>, AuditError> {
    let mut stmt =
        conn.prepare_cached("SELECT idx, leaf FROM entries WHERE idx < ?1 ORDER BY idx")?;
    let mut rows = stmt.query(params![size as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let idx: i64 = row.get(0)?;
        let leaf: Vec<u8> = row.get(1)?;
        if idx != out.len() as i64 {
            return Err(AuditError::Corrupt(format!(
                "entry {} is missing (found {idx} next)",
                out.len()
            )));
        }
        let leaf: Hash = leaf
            .try_into()
            .map_err(|_| AuditError::Corrupt(format!("entry {idx}: leaf hash is not 32 bytes")))?;
        out.push(leaf);
    }
    if (out.len() as u64) < size {
        return Err(AuditError::OutOfRange(format!(
            "the log has {} entries, {size} were asked for",
            out.len()
        )));
    }
    Ok(out)
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
    /// Opens (or creates) the log at `path`, rebuilding the tree's right edge from the stored leaf
    /// hashes, and starts the writer thread, which commits with the given `durability`.
    pub fn open(
        path: &Path,
        signer: CheckpointSigner,
        policy: CheckpointPolicy,
        durability: Durability,
    ) -> Result<Self, AuditError> {
        let wconn = open_conn(path, durability)?;
        wconn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let size: i64 = wconn.query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))?;
        let mut frontier = Frontier::new();
        for leaf in read_leaves(&wconn, size as u64)? {
            frontier.push(leaf);
        }
        let last_ckpt: i64 =
            wconn.query_row("SELECT COALESCE(MAX(size), 0) FROM checkpoints", [], |r| {
                r.get(0)
            })?;
        let reader = open_conn(path, durability)?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn: wconn,
            frontier,
            signer,
            policy,
            last_checkpoint_size: last_ckpt.max(0) as u64,
            last_checkpoint_at: Instant::now(),
        };
        let wal_conn = open_conn(path, durability)?;
        let (wal_tx, wal_rx) = mpsc::channel();
        let wal = std::thread::Builder::new()
            .name("palisade-audit-wal".into())
            .spawn(move || wal_checkpointer(wal_conn, wal_rx))
            .map_err(AuditError::Io)?;
        let state = Arc::new(Mutex::new(writer));
        let shared = state.clone();
        let handle = std::thread::Builder::new()
            .name("palisade-audit".into())
            .spawn(move || Writer::run(&shared, rx))
            .map_err(AuditError::Io)?;
        Ok(SqliteAuditLog {
            tx: Mutex::new(Some(tx)),
            reader: Mutex::new(reader),
            state,
            inline: (durability == Durability::Process).then(Inline::default),
            writer: Mutex::new(Some(handle)),
            wal: Mutex::new(Some((wal_tx, wal))),
        })
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

    /// Signs a checkpoint of everything committed so far (if anything is unsigned) and returns
    /// the latest checkpoint.
    pub fn checkpoint_now(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.sender()
            .ok_or(AuditError::Closed)?
            .send(Msg::Checkpoint(tx))
            .map_err(|_| AuditError::Closed)?;
        rx.blocking_recv().map_err(|_| AuditError::Closed)?
    }

    /// Commits, in the calling thread, what is queued until the queue is empty (the caller has
    /// become the leader).
    fn lead(&self, inline: &Inline) {
        loop {
            let batch: Vec<_> = {
                let mut q = lock(&inline.queue);
                if q.pending.is_empty() {
                    q.leading = false;
                    inline.idle.notify_all();
                    return;
                }
                let n = q.pending.len().min(MAX_GROUP);
                q.pending.drain(..n).collect()
            };
            lock(&self.state).commit_and_reply(batch, false);
        }
    }

    /// Stops the writer after it has committed what it was given and signed a final checkpoint.
    pub fn close(&self) {
        if let Some(inline) = &self.inline {
            let mut q = lock(&inline.queue);
            q.closed = true;
            // A leader still committing finishes before the final checkpoint is signed.
            while q.leading {
                q = inline.idle.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        }
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut g| g.take()) {
            let _ = h.join();
        }
        if let Some((stop, h)) = self.wal.lock().ok().and_then(|mut g| g.take()) {
            drop(stop);
            let _ = h.join();
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
        self.with_reader(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
    }

    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, AuditError> {
        self.with_reader(|c| {
            Ok(c.query_row(
                "SELECT data FROM entries WHERE idx = ?1",
                params![index as i64],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        self.with_reader(latest_checkpoint)
    }

    fn inclusion(&self, index: u64, size: u64) -> Result<InclusionProof, AuditError> {
        self.with_reader(|c| inclusion_from(c, index, size))
    }

    fn consistency(&self, first: u64, second: u64) -> Result<ConsistencyProof, AuditError> {
        self.with_reader(|c| consistency_from(c, first, second))
    }
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
    let leaves = read_leaves(conn, size)?;
    let proof = merkle::inclusion_proof(index as usize, &leaves)
        .ok_or_else(|| AuditError::OutOfRange(format!("index {index}")))?;
    Ok(InclusionProof {
        index,
        size,
        leaf: hexfmt::encode(&leaves[index as usize]),
        root: hexfmt::encode(&merkle::root(&leaves)),
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
    let leaves = read_leaves(conn, second)?;
    let proof = merkle::consistency_proof(first as usize, &leaves)
        .ok_or_else(|| AuditError::OutOfRange(format!("first {first}")))?;
    Ok(ConsistencyProof {
        first,
        second,
        first_root: hexfmt::encode(&merkle::root(&leaves[..first as usize])),
        second_root: hexfmt::encode(&merkle::root(&leaves)),
        path: proof.iter().map(|h| hexfmt::encode(h)).collect(),
    })
}

struct Writer {
    conn: Connection,
    frontier: Frontier,
    signer: CheckpointSigner,
    policy: CheckpointPolicy,
    last_checkpoint_size: u64,
    last_checkpoint_at: Instant,
}

impl Writer {
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
        match self.commit_group(&appends, force) {
            Ok(start) => {
                for (i, (_, r)) in appends.into_iter().enumerate() {
                    let _ = r.send(Ok(start + i as u64));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit append failed");
                let msg = e.to_string();
                for (_, r) in appends {
                    let _ = r.send(Err(AuditError::Write(msg.clone())));
                }
            }
        }
    }

    fn latest(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        latest_checkpoint(&self.conn)
    }

    /// Commits `appends` in one transaction (with a checkpoint when one is due) and returns the
    /// index of the first. On failure nothing is committed and the in-memory tree is unchanged.
    fn commit_group(
        &mut self,
        appends: &[(Vec<u8>, Reply)],
        force: bool,
    ) -> Result<u64, AuditError> {
        let start = self.frontier.size();
        let mut frontier = self.frontier.clone();
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO entries (idx, leaf, data) VALUES (?1, ?2, ?3)")?;
            for (data, _) in appends {
                let leaf = merkle::leaf_hash(data);
                stmt.execute(params![frontier.size() as i64, &leaf[..], data])?;
                frontier.push(leaf);
            }
        }
        let due = frontier.size() > self.last_checkpoint_size
            && (force
                || frontier.size() - self.last_checkpoint_size >= self.policy.every_entries
                || self.last_checkpoint_at.elapsed() >= self.policy.every);
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

    fn checkpoint_if_due(&mut self, force: bool) -> Result<(), AuditError> {
        if self.frontier.size() <= self.last_checkpoint_size {
            return Ok(());
        }
        if !force && self.last_checkpoint_at.elapsed() < self.policy.every {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        insert_checkpoint(&tx, &self.signer, &self.frontier)?;
        tx.commit()?;
        self.last_checkpoint_size = self.frontier.size();
        self.last_checkpoint_at = Instant::now();
        Ok(())
    }
}

/// The WAL checkpointer's loop (see the module documentation); ends when `stop`'s sender is
/// dropped, after a last pass.
fn wal_checkpointer(conn: Connection, stop: mpsc::Receiver<()>) {
    let checkpoint = |mode: &str| -> rusqlite::Result<(i64, i64, i64)> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    };
    loop {
        let last = !matches!(
            stop.recv_timeout(WAL_CHECKPOINT_EVERY),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        match checkpoint("PASSIVE") {
            Ok((_, frames, _)) if frames >= WAL_RESTART_FRAMES => {
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
    let c = signer.sign(Checkpoint::new(frontier.size(), &frontier.root(), now_ms()));
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
    fn open_log(db: &Path, seed: u8, durability: Durability) -> SqliteAuditLog {
        SqliteAuditLog::open(
            db,
            CheckpointSigner::from_seed(&[seed; 32]),
            CheckpointPolicy::default(),
            durability,
        )
        .unwrap()
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
        let main_db_pages = || std::fs::metadata(&db).unwrap().len() / 4096;
        let deadline = Instant::now() + Duration::from_secs(10);
        while main_db_pages() < 100 && Instant::now() < deadline {
            std::thread::sleep(WAL_CHECKPOINT_EVERY);
        }
        assert!(
            main_db_pages() >= 100,
            "the database file has {} pages after 200 entries of 3 KB",
            main_db_pages()
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
}
