//! Daily query budgets: how many units (samples, or requests: `LimitPolicy::count`) a key's line
//! has spent on a model today, counted in memory and, with a ledger (an SQLite file), kept across
//! restarts. A charge spends all its units or none.
//!
//! A budget is a control against model extraction: a restart, or a crash a client provokes,
//! must not hand it a fresh one. Writing every request to disk would put a commit on every
//! infer request, so the ledger holds **reservations** instead: before a request may spend a
//! unit, the ledger must already hold a count at least as high. A count is reserved a block at a
//! time (a 64th of the day's budget, at most [`MAX_BLOCK`]), and the next block is asked for when
//! half of the current one is spent, by a writer thread, so that a request waits for the disk
//! only when spending outruns the writer: the first request of a key on a model each day, and
//! every request against a budget of under 128 a day, whose block is the request itself
//! (requests that wait together are served by one write). After `kill -9`, and with
//! [`Durability::Full`] after a power cut, the count resumes from the reservation: a client may
//! lose up to one block of its budget (under 128 a day: the units of its requests in flight; and
//! at most the units of its batches in flight where those are more), never gain any. With [`Durability::Process`] a power cut may lose the last reservations, and
//! so give back what they covered. A graceful stop ([`Budgets::close`]) writes the exact counts,
//! so a planned restart loses nothing. Days are the gateway clock's UTC days, and a count is never
//! given back for the clock's sake: a clock stepping back counts against the later day stored, and
//! a start under a clock days ahead forgets nothing. The cost falls the other way: a budget spent
//! while the clock ran days ahead stays spent until the clock reaches that day again, or until
//! an administrator gives it back ([`Budgets::reset`], the admin API's budget reset).
//!
//! When the ledger cannot be written, the requests that need a reservation are refused (the
//! limits fail closed) until a write succeeds again; the spends already reserved go on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rusqlite::{Connection, params};
use tokio::sync::Notify;

use super::ratelimit::LimitError;
use crate::audit::Durability;

/// The largest block reserved at once: with a budget past 64 × this, a crash costs a client at
/// most this many requests (1/64 of a smaller budget).
pub const MAX_BLOCK: u64 = 1 << 20;

/// What is logged of budgets counted for days after the clock's tomorrow.
const CLOCK_BEHIND: &str = "daily budgets are counted for days after tomorrow by this clock: it is \
     behind now, or was ahead when they were spent; they count against those days (none is given \
     back for the clock's sake), so a key that spent its budget is refused until then unless an \
     administrator gives it back (POST /v2/admin/keys/{id}/budget/reset)";

/// How many units a reservation covers beyond what is spent, for a budget of `limit`.
fn block(limit: u64) -> u64 {
    (limit / 64).clamp(1, MAX_BLOCK)
}

/// One key line's budget on one model.
#[derive(Debug, Clone, Default)]
struct Spent {
    /// The UTC day counted (days since the epoch).
    day: u64,
    /// Units spent that day.
    spent: u64,
    /// What the ledger holds for that day: `spent` may grow up to it without a write (without a
    /// ledger: unbounded).
    durable: u64,
    /// The highest reservation asked of the writer (`>= durable`; more while a write is on its
    /// way).
    asked: u64,
    /// Writes for this budget that failed so far: a request that waited for a write and sees
    /// this grow reports the failure instead of waiting on.
    failures: u64,
    /// Why the last of them failed; `None` once a write has succeeded since.
    why: Option<Arc<str>>,
    /// How many times the budget was given back ([`Budgets::reset`]): a reservation asked before
    /// a reset raises nothing once written.
    epoch: u64,
}

type Table = HashMap<String, HashMap<String, Spent>>;

/// What [`Budgets::spend`] decided.
pub(crate) enum Spend<'a> {
    /// Spent; what remains of the budget of UTC day `day`, the day counted (the one asked for,
    /// or a later one already stored: see [`Budgets::spend`]).
    Granted {
        /// Units left.
        remaining: u64,
        /// The day counted.
        day: u64,
    },
    /// Too little left of the budget of UTC day `day`, the day counted; nothing spent.
    Exhausted {
        /// Units left (fewer than asked for).
        remaining: u64,
        /// The day counted.
        day: u64,
    },
    /// The ledger does not yet hold enough: wait for it to move, then spend again, passing the
    /// count of failed writes given here (so that a failure of the write waited for is reported).
    Wait(Pin<Box<tokio::sync::futures::Notified<'a>>>, u64),
}

/// The budgets of one gateway (`Default`: in process memory only, which a restart resets).
#[derive(Debug, Default)]
pub(crate) struct Budgets {
    shared: Arc<Shared>,
    ledger: Option<Ledger>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Key line → model → its budget. Nested, so that a lookup borrows the names (a map keyed by
    /// the pair would copy both into a new key on every request).
    used: Mutex<Table>,
    /// Signalled after every write of the ledger, done or failed.
    progressed: Notify,
    /// Set by [`Budgets::close`]: nothing more is spent from the ledger's reservations.
    closed: AtomicBool,
    /// Whether [`Budgets::spend`] has logged [`CLOCK_BEHIND`] (once: every charge of such a
    /// budget would).
    behind_logged: AtomicBool,
}

/// The writer of the ledger file.
#[derive(Debug)]
struct Ledger {
    path: PathBuf,
    /// `None` once closed.
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

enum Msg {
    /// Hold at least `reserved` for (key, model, day), asked in the budget's epoch.
    Reserve(String, String, u64, u64, u64),
    /// Forget (key, model)'s row, then say whether that was done.
    Reset(
        String,
        String,
        tokio::sync::oneshot::Sender<Result<(), Arc<str>>>,
    ),
    /// Write these exact counts and stop.
    Close(Vec<(String, String, u64, u64)>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(path: &Path, e: impl std::fmt::Display) -> LimitError {
    LimitError::Unavailable(format!("budget ledger {}: {e}", path.display()))
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS budgets (
        key      TEXT NOT NULL,
        model    TEXT NOT NULL,
        day      INTEGER NOT NULL,
        reserved INTEGER NOT NULL,
        PRIMARY KEY (key, model)) WITHOUT ROWID;";

/// Raises the stored reservation; a later day replaces an earlier one, an earlier day is ignored.
const RESERVE: &str = "INSERT INTO budgets (key, model, day, reserved) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (key, model) DO UPDATE SET day = excluded.day, reserved = excluded.reserved
     WHERE excluded.day > budgets.day
        OR (excluded.day = budgets.day AND excluded.reserved > budgets.reserved)";

/// Forgets a budget: given back.
const FORGET: &str = "DELETE FROM budgets WHERE key = ?1 AND model = ?2";

/// Sets the exact count of a day (at a graceful stop, when the count may be below the reservation).
const EXACT: &str = "INSERT INTO budgets (key, model, day, reserved) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (key, model) DO UPDATE SET day = excluded.day, reserved = excluded.reserved
     WHERE excluded.day >= budgets.day";

impl Budgets {
    /// Budgets kept in the ledger at `path` (created when missing), whose commits are fsynced
    /// with [`Durability::Full`] and survive `kill -9` but not a power cut with
    /// [`Durability::Process`]. Each budget resumes from the count the ledger holds for its day.
    /// No row is deleted by the clock's reading at a start: a clock days ahead would take today's
    /// counts for old ones (the ledger holds a row per key line and model, so it does not grow
    /// with the days). Budgets counted for a day after `today`'s tomorrow are logged (a warning):
    /// they stay spent until then.
    pub(crate) fn open(
        path: &Path,
        durability: Durability,
        today: u64,
    ) -> Result<Self, LimitError> {
        let conn = open_ledger(path, durability).map_err(|e| unavailable(path, e))?;
        let mut table = Table::new();
        (|| -> rusqlite::Result<()> {
            let ahead: i64 = conn.query_row(
                "SELECT count(*) FROM budgets WHERE day > ?1",
                params![today.saturating_add(1) as i64],
                |r| r.get(0),
            )?;
            if ahead > 0 {
                tracing::warn!(
                    ledger = %path.display(),
                    budgets = ahead,
                    today,
                    "{}",
                    CLOCK_BEHIND
                );
            }
            let mut stmt = conn.prepare("SELECT key, model, day, reserved FROM budgets")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (key, model): (String, String) = (r.get(0)?, r.get(1)?);
                let (day, reserved): (i64, i64) = (r.get(2)?, r.get(3)?);
                let n = reserved.max(0) as u64;
                table.entry(key).or_default().insert(
                    model,
                    Spent {
                        day: day.max(0) as u64,
                        spent: n,
                        durable: n,
                        asked: n,
                        ..Spent::default()
                    },
                );
            }
            Ok(())
        })()
        .map_err(|e| unavailable(path, e))?;
        let shared = Arc::new(Shared {
            used: Mutex::new(table),
            ..Shared::default()
        });
        let (tx, rx) = mpsc::channel();
        let thread = {
            let shared = shared.clone();
            let owned = path.to_path_buf();
            std::thread::Builder::new()
                .name("palisade-budgets".into())
                .spawn(move || write_loop(conn, &owned, &shared, rx))
                .map_err(|e| unavailable(path, e))?
        };
        Ok(Budgets {
            shared,
            ledger: Some(Ledger {
                path: path.to_path_buf(),
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// What remains of `key`'s budget on `model` for UTC day `day`, spending nothing, and the
    /// day it counts against (`day`, or a later day already stored, as [`Budgets::spend`]
    /// counts it): checked before the rate limits so that a key whose budget is spent is refused
    /// without charging them (and so cannot use up the model's shared rate). [`Budgets::spend`]
    /// stays the authority: two requests racing for the last unit may both see one here.
    pub(crate) fn left(&self, key: &str, model: &str, day: u64, limit: u64) -> (u64, u64) {
        let used = lock(&self.shared.used);
        match used.get(key).and_then(|m| m.get(model)) {
            Some(s) if s.day >= day => (limit.saturating_sub(s.spent), s.day),
            _ => (limit, day),
        }
    }

    /// The units of [`Budgets::left`] alone.
    #[cfg(test)]
    pub(crate) fn remaining(&self, key: &str, model: &str, day: u64, limit: u64) -> u64 {
        self.left(key, model, day, limit).0
    }

    /// Spends `units` (at least 1) of `key`'s budget on `model` for UTC day `day` if at most
    /// `limit` are then spent and the ledger (if any) holds them; asks the ledger for the next
    /// block when half of the current one is spent. `waited`: the count of failed writes that
    /// the [`Spend::Wait`] this request waited on gave (`None` on its first try).
    pub(crate) fn spend(
        &self,
        key: &str,
        model: &str,
        day: u64,
        limit: u64,
        units: u64,
        waited: Option<u64>,
    ) -> Result<Spend<'_>, LimitError> {
        let units = units.max(1);
        let mut used = lock(&self.shared.used);
        if !used.contains_key(key) {
            used.insert(key.to_string(), HashMap::new());
        }
        let Some(per_model) = used.get_mut(key) else {
            unreachable!("inserted above")
        };
        if !per_model.contains_key(model) {
            per_model.insert(model.to_string(), Spent::default());
        }
        let Some(e) = per_model.get_mut(model) else {
            unreachable!("inserted above")
        };
        // Only a later day starts afresh: a clock stepping back across midnight must not zero
        // the count, so an earlier day counts against the one stored.
        if e.day > day.saturating_add(1) && !self.shared.behind_logged.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                key,
                model,
                stored_day = e.day,
                today = day,
                "{}",
                CLOCK_BEHIND
            );
        }
        if day > e.day {
            *e = Spent {
                day,
                epoch: e.epoch,
                ..Spent::default()
            };
        }
        if units > limit.saturating_sub(e.spent) {
            return Ok(Spend::Exhausted {
                remaining: limit.saturating_sub(e.spent),
                day: e.day,
            });
        }
        let Some(ledger) = &self.ledger else {
            e.spent += units;
            return Ok(Spend::Granted {
                remaining: limit - e.spent,
                day: e.day,
            });
        };
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(unavailable(&ledger.path, "closed"));
        }
        let block = block(limit);
        if e.spent + units <= e.durable {
            e.spent += units;
            // Half the block spent and nothing on its way: ask for the next one now, so that
            // the requests after this one find it written. (Never for a block of one, which is
            // written with its own request.)
            if block > 1
                && 2 * (e.durable - e.spent) <= block
                && e.asked == e.durable
                && e.durable < limit
            {
                e.asked = (e.spent + block).min(limit);
                if !ledger.send(key, model, e) {
                    e.asked = e.durable;
                }
            }
            return Ok(Spend::Granted {
                remaining: limit - e.spent,
                day: e.day,
            });
        }
        if waited.is_some_and(|seen| e.failures > seen) {
            let why = e.why.clone();
            return Err(unavailable(
                &ledger.path,
                why.as_deref().unwrap_or("a write failed"),
            ));
        }
        // Nothing on its way that covers this request: a block (or this request's units, if
        // more). On its way already: this request's units more, so that requests arriving
        // together are served by one write, not one write each; but only on its first try:
        // woken by a write that did not bring its units (another key's, say), it asked already,
        // and asking again would reserve units more per wake-up, units a crash would lose
        // (2026-12-06 review).
        let want = if e.asked < e.spent + units {
            e.spent + block.max(units)
        } else if waited.is_none() {
            e.asked + units
        } else {
            e.asked
        }
        .min(limit);
        if want > e.asked {
            e.asked = want;
            if !ledger.send(key, model, e) {
                e.asked = e.durable;
                return Err(unavailable(&ledger.path, "closed"));
            }
        }
        // Registered before the table is unlocked: the writer's signal cannot come in between.
        let mut wait = Box::pin(self.shared.progressed.notified());
        wait.as_mut().enable();
        Ok(Spend::Wait(wait, e.failures))
    }

    /// Gives back `key`'s budget on `model`: nothing counts as spent any more, whatever day it
    /// counted (one ahead of the clock included), and the next spend starts today's count
    /// afresh. Returns the day counted and the units it had spent (`None`: none). With a ledger,
    /// answers once the ledger has forgotten the budget, so that a restart does not bring the
    /// count back; if that write fails, the budget is given back in this process only, and the
    /// error says so (a retry writes it again).
    pub(crate) async fn reset(
        &self,
        key: &str,
        model: &str,
    ) -> Result<Option<(u64, u64)>, LimitError> {
        let (given, written) = {
            let mut used = lock(&self.shared.used);
            if let Some(ledger) = &self.ledger
                && self.shared.closed.load(Ordering::Acquire)
            {
                return Err(unavailable(&ledger.path, "closed"));
            }
            let given = used.get_mut(key).and_then(|t| t.get_mut(model)).map(|e| {
                let given = (e.day, e.spent);
                *e = Spent {
                    epoch: e.epoch + 1,
                    failures: e.failures,
                    ..Spent::default()
                };
                given
            });
            // Told under the lock: after every reservation asked before the reset, before any
            // asked after it.
            let written = match &self.ledger {
                None => None,
                Some(ledger) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if !ledger.tell(Msg::Reset(key.into(), model.into(), tx)) {
                        return Err(unavailable(&ledger.path, "closed"));
                    }
                    Some((ledger, rx))
                }
            };
            (given, written)
        };
        if let Some((ledger, rx)) = written {
            let failed = match rx.await {
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(why.to_string()),
                Err(_) => Some("the writer stopped".to_string()),
            };
            if let Some(why) = failed {
                return Err(unavailable(
                    &ledger.path,
                    format!(
                        "the budget is given back in this process, but the ledger could not \
                         forget it (a restart would bring the count back; retry): {why}"
                    ),
                ));
            }
        }
        Ok(given.filter(|&(_, spent)| spent > 0))
    }

    /// Writes the exact counts to the ledger and stops its writer; later spends that need the
    /// ledger fail. Does nothing for budgets in memory, or a second time.
    pub(crate) fn close(&self) {
        let Some(ledger) = &self.ledger else { return };
        let Some(tx) = lock(&ledger.tx).take() else {
            return;
        };
        let exact = {
            let used = lock(&self.shared.used);
            self.shared.closed.store(true, Ordering::Release);
            let mut exact = Vec::new();
            for (key, models) in used.iter() {
                for (model, e) in models {
                    // Below what is written or on its way to be: the count is exact.
                    if e.durable.max(e.asked) > e.spent {
                        exact.push((key.clone(), model.clone(), e.day, e.spent));
                    }
                }
            }
            exact
        };
        let _ = tx.send(Msg::Close(exact));
        drop(tx);
        if let Some(t) = lock(&ledger.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Budgets {
    fn drop(&mut self) {
        self.close();
    }
}

impl Ledger {
    /// Asks the writer to reserve `e.asked` for `e`'s day; false once closed.
    fn send(&self, key: &str, model: &str, e: &Spent) -> bool {
        self.tell(Msg::Reserve(
            key.into(),
            model.into(),
            e.day,
            e.asked,
            e.epoch,
        ))
    }

    /// Gives the writer `m`; false once closed.
    fn tell(&self, m: Msg) -> bool {
        lock(&self.tx).as_ref().is_some_and(|tx| tx.send(m).is_ok())
    }
}

fn open_ledger(
    path: &Path,
    durability: Durability,
) -> Result<Connection, crate::schema::SchemaError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Process => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.execute_batch(SCHEMA)?;
    crate::schema::check(&conn, crate::schema::LIMITS)?;
    Ok(conn)
}

/// The ledger's writer: commits the reservations and resets asked since its last commit, in
/// order, in one transaction; then raises the budgets' durable counts (or marks them failed),
/// answers the resets and wakes the requests waiting.
fn write_loop(mut conn: Connection, path: &Path, shared: &Shared, rx: mpsc::Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut close = None;
        for m in std::iter::once(first).chain(rx.try_iter()) {
            match m {
                Msg::Close(exact) => close = Some(exact),
                m => batch.push(m),
            }
        }
        let written = commit_batch(&mut conn, &batch);
        let why: Option<Arc<str>> = written.as_ref().err().map(|e| {
            tracing::error!(error = %e, ledger = %path.display(), "could not reserve daily budget units; requests that need them are refused");
            e.to_string().into()
        });
        {
            let mut used = lock(&shared.used);
            for m in batch {
                let (k, m, d, n, epoch) = match m {
                    Msg::Reserve(k, m, d, n, epoch) => (k, m, d, n, epoch),
                    Msg::Reset(_, _, answer) => {
                        let _ = answer.send(why.clone().map_or(Ok(()), Err));
                        continue;
                    }
                    Msg::Close(_) => continue,
                };
                let Some(e) = used.get_mut(&k).and_then(|t| t.get_mut(&m)) else {
                    continue;
                };
                if e.day != d || e.epoch != epoch {
                    continue;
                }
                match &why {
                    None => {
                        e.durable = e.durable.max(n);
                        e.asked = e.asked.max(e.durable);
                        e.why = None;
                    }
                    Some(why) => {
                        // Asked again by the next request that needs it.
                        e.asked = e.durable;
                        e.failures += 1;
                        e.why = Some(why.clone());
                    }
                }
            }
        }
        shared.progressed.notify_waiters();
        if let Some(exact) = close {
            if let Err(e) = commit(&mut conn, EXACT, &exact) {
                tracing::error!(error = %e, ledger = %path.display(), "could not write the exact daily budget counts; the reservations stand");
            }
            return;
        }
    }
}

/// Writes `batch`'s reservations and resets, in order, in one transaction.
fn commit_batch(conn: &mut Connection, batch: &[Msg]) -> rusqlite::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        let mut reserve = tx.prepare_cached(RESERVE)?;
        let mut forget = tx.prepare_cached(FORGET)?;
        for m in batch {
            match m {
                Msg::Reserve(k, m, d, n, _) => {
                    reserve.execute(params![k, m, *d as i64, *n as i64])?;
                }
                Msg::Reset(k, m, _) => {
                    forget.execute(params![k, m])?;
                }
                Msg::Close(_) => {}
            }
        }
    }
    tx.commit()
}

fn commit(
    conn: &mut Connection,
    sql: &str,
    rows: &[(String, String, u64, u64)],
) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(sql)?;
        for (k, m, d, n) in rows {
            stmt.execute(params![k, m, *d as i64, *n as i64])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spends without waiting (budgets in memory never wait).
    fn now(b: &Budgets, key: &str, model: &str, day: u64, limit: u64) -> Option<u64> {
        match b.spend(key, model, day, limit, 1, None).unwrap() {
            Spend::Granted { remaining, .. } => Some(remaining),
            Spend::Exhausted { .. } => None,
            Spend::Wait(..) => panic!("budgets in memory waited"),
        }
    }

    /// Spends, waiting for the ledger as the rate limiter does.
    async fn spend(
        b: &Budgets,
        key: &str,
        model: &str,
        day: u64,
        limit: u64,
    ) -> Result<Option<u64>, LimitError> {
        spend_n(b, key, model, day, limit, 1).await
    }

    /// [`spend`], `units` at once.
    async fn spend_n(
        b: &Budgets,
        key: &str,
        model: &str,
        day: u64,
        limit: u64,
        units: u64,
    ) -> Result<Option<u64>, LimitError> {
        let mut waited = None;
        loop {
            match b.spend(key, model, day, limit, units, waited)? {
                Spend::Granted { remaining, .. } => return Ok(Some(remaining)),
                Spend::Exhausted { .. } => return Ok(None),
                Spend::Wait(w, failures) => {
                    waited = Some(failures);
                    w.await
                }
            }
        }
    }

    fn stored(path: &Path) -> Vec<(String, String, i64, i64)> {
        let c = Connection::open(path).unwrap();
        let mut s = c
            .prepare("SELECT key, model, day, reserved FROM budgets ORDER BY key, model")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_waiter_woken_before_its_unit_came_does_not_reserve_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.db");
        // A budget of 7: blocks of one unit, each written with its request.
        let b = Budgets::open(&path, Durability::Process, 7).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap(); // the writer's commit waits
        let Ok(Spend::Wait(_, seen)) = b.spend("k1", "m", 7, 10, 1, None) else {
            panic!("the first spend waits for the ledger")
        };
        // What the waiter does each time a write (another key's, say) wakes it first.
        for _ in 0..3 {
            let Ok(Spend::Wait(..)) = b.spend("k1", "m", 7, 10, 1, Some(seen)) else {
                panic!("still waiting")
            };
        }
        other.execute_batch("COMMIT").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stored(&path).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::mem::forget(b); // a crash: no exact counts written
        assert_eq!(
            stored(&path)[0].3,
            1,
            "reserved for the one request in flight"
        );
    }

    #[tokio::test]
    async fn a_budget_given_back_stays_given_back_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.db");
        let (today, limit) = (20_000, 4);
        let b = Budgets::open(&path, Durability::Process, today).unwrap();
        // Spent while the clock ran 30 days ahead, and on another model today.
        for _ in 0..4 {
            spend(&b, "k", "m", today + 30, limit)
                .await
                .unwrap()
                .unwrap();
        }
        spend(&b, "k", "other", today, limit)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(spend(&b, "k", "m", today, limit).await.unwrap(), None);
        assert_eq!(b.reset("k", "m").await.unwrap(), Some((today + 30, 4)));
        // Nothing left to give back; an unknown budget neither.
        assert_eq!(b.reset("k", "m").await.unwrap(), None);
        assert_eq!(b.reset("nobody", "m").await.unwrap(), None);
        assert_eq!(b.remaining("k", "m", today, limit), limit);
        assert_eq!(b.remaining("k", "other", today, limit), limit - 1);
        assert_eq!(spend(&b, "k", "m", today, limit).await.unwrap(), Some(3));
        // A crash now: the ledger holds today's new count, not the old one.
        std::mem::forget(b);
        let rows = stored(&path);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows.iter()
                .any(|r| r.1 == "m" && r.2 == today as i64 && r.3 >= 1 && r.3 <= 4),
            "{rows:?}"
        );
        let again = Budgets::open(&path, Durability::Process, today).unwrap();
        assert!(again.remaining("k", "m", today, limit) < limit);
        assert_eq!(again.remaining("k", "m", today + 30, limit), limit);
    }

    #[tokio::test]
    async fn a_reservation_asked_before_a_reset_does_not_count_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.db");
        let (today, limit) = (20_000, 6_400); // blocks of 100
        let b = Budgets::open(&path, Durability::Process, today).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap(); // the writer's commit waits
        let Ok(Spend::Wait(..)) = b.spend("k", "m", today, limit, 1, None) else {
            panic!("the first spend waits for the ledger")
        };
        // The block's write is held up; the reset is asked behind it.
        let reset = b.reset("k", "m");
        let unblock = async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            other.execute_batch("COMMIT").unwrap();
        };
        let (given, ()) = tokio::join!(reset, unblock);
        assert_eq!(
            given.unwrap(),
            None,
            "the waiting request had spent nothing"
        );
        {
            let used = lock(&b.shared.used);
            let e = &used["k"]["m"];
            assert_eq!(
                (e.spent, e.durable),
                (0, 0),
                "the old block was not counted"
            );
        }
        assert!(stored(&path).is_empty(), "{:?}", stored(&path));
        // The next spend reserves anew.
        assert_eq!(
            spend(&b, "k", "m", today, limit).await.unwrap(),
            Some(limit - 1)
        );
        assert_eq!(stored(&path)[0].3, 100);
    }

    #[tokio::test]
    async fn a_reset_after_close_is_refused_and_in_memory_one_needs_no_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let b = Budgets::open(&dir.path().join("limits.db"), Durability::Process, 1).unwrap();
        b.close();
        assert!(matches!(
            b.reset("k", "m").await,
            Err(LimitError::Unavailable(_))
        ));
        let b = Budgets::default();
        assert_eq!(now(&b, "k", "m", 1, 2), Some(1));
        assert_eq!(b.reset("k", "m").await.unwrap(), Some((1, 1)));
        assert_eq!(b.remaining("k", "m", 1, 2), 2);
    }

    #[test]
    fn budgets_reset_daily() {
        let b = Budgets::default();
        assert_eq!(now(&b, "k", "m", 1, 2), Some(1));
        assert_eq!(now(&b, "k", "m", 1, 2), Some(0));
        assert_eq!(now(&b, "k", "m", 1, 2), None);
        assert_eq!(now(&b, "k2", "m", 1, 2), Some(1));
        assert_eq!(now(&b, "k", "m", 2, 2), Some(1));
    }

    #[test]
    fn an_earlier_day_counts_against_the_later_one() {
        let b = Budgets::default();
        assert_eq!(b.remaining("k", "m", 2, 2), 2);
        assert_eq!(now(&b, "k", "m", 2, 2), Some(1));
        // The clock stepped back across midnight: still day 2's budget.
        assert_eq!(b.remaining("k", "m", 1, 2), 1);
        assert_eq!(now(&b, "k", "m", 1, 2), Some(0));
        assert_eq!(b.remaining("k", "m", 2, 2), 0);
        assert_eq!(now(&b, "k", "m", 2, 2), None);
        assert_eq!(now(&b, "k", "m", 1, 2), None);
        assert_eq!(b.remaining("k", "m", 3, 2), 2);
        assert_eq!(b.remaining("k", "other", 2, 2), 2);
        // However far back: a budget is never given back for the clock's sake.
        assert_eq!(now(&b, "k", "m", 100, 2), Some(1));
        assert_eq!(now(&b, "k", "m", 100, 2), Some(0));
        assert_eq!(b.remaining("k", "m", 2, 2), 0);
        assert_eq!(now(&b, "k", "m", 2, 2), None);
    }

    #[tokio::test]
    async fn a_crash_never_refills_a_budget_and_a_graceful_stop_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.db");
        let (day, limit) = (20_000, 6_400); // a block of 100 units
        let b = Budgets::open(&path, Durability::Process, day).unwrap();
        for i in 1..=130 {
            assert_eq!(
                spend(&b, "k", "m", day, limit).await.unwrap(),
                Some(limit - i)
            );
        }
        // What a crash now would leave: at least what was spent, at most one block more.
        let held = |path: &Path| stored(path)[0].3 as u64;
        // Nothing on its way to the ledger: what it holds stays as it is.
        let settled = || {
            let used = lock(&b.shared.used);
            let e = &used["k"]["m"];
            e.durable == e.asked
        };
        let mut waited = 0;
        while held(&path) < 130 || !settled() {
            // The next block is asked for ahead, by the writer thread.
            std::thread::sleep(std::time::Duration::from_millis(5));
            waited += 1;
            assert!(waited < 1000, "the ledger never held the spent units");
        }
        assert!(held(&path) <= 130 + block(limit), "{}", held(&path));
        // A second gateway process on the file after the crash resumes from the reservation.
        let after_crash = Budgets::open(&path, Durability::Process, day).unwrap();
        assert_eq!(
            after_crash.remaining("k", "m", day, limit),
            limit - held(&path)
        );
        assert!(after_crash.remaining("k", "m", day, limit) <= limit - 130);
        drop(after_crash);

        // A graceful stop writes the exact count.
        b.close();
        assert_eq!(stored(&path), [("k".into(), "m".into(), day as i64, 130)]);
        let reopened = Budgets::open(&path, Durability::Process, day).unwrap();
        assert_eq!(reopened.remaining("k", "m", day, limit), limit - 130);
        assert_eq!(
            spend(&reopened, "k", "m", day, limit).await.unwrap(),
            Some(limit - 131)
        );
        // The next day starts afresh.
        assert_eq!(
            spend(&reopened, "k", "m", day + 1, limit).await.unwrap(),
            Some(limit - 1)
        );
        reopened.close();
        // A start forgets nothing, and a clock read days behind at it counts against the day
        // stored (before 2026-12-06, opening deleted the rows of days before the clock's
        // yesterday: a start under a clock days ahead gave every budget back).
        let behind = Budgets::open(&path, Durability::Process, day).unwrap();
        assert_eq!(stored(&path), [("k".into(), "m".into(), day as i64 + 1, 1)]);
        assert_eq!(
            spend(&behind, "k", "m", day - 30, limit).await.unwrap(),
            Some(limit - 2)
        );
        behind.close();
        // Spending after close is refused, not lost.
        assert!(b.spend("k", "m", day, limit, 1, None).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_requests_spend_a_small_budget_exactly_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.db");
        let b = Arc::new(Budgets::open(&path, Durability::Process, 7).unwrap());
        // A budget under 128: a block of one, every unit written before it is spent.
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { spend(&b, "k", "m", 7, 100).await.unwrap() })
            })
            .collect();
        let mut granted = Vec::new();
        for t in tasks {
            if let Some(rem) = t.await.unwrap() {
                granted.push(rem);
            }
        }
        granted.sort_unstable();
        assert_eq!(granted, (0..100).collect::<Vec<_>>());
        assert_eq!(stored(&path)[0].3, 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_batches_spend_all_their_units_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.db");
        let b = Arc::new(Budgets::open(&path, Durability::Process, 7).unwrap());
        // Batches of 1 to 5 samples, 240 in all, against a budget of 100 (blocks of one).
        let tasks: Vec<_> = (0..80u64)
            .map(|i| {
                let b = b.clone();
                let units = i % 5 + 1;
                tokio::spawn(async move {
                    let left = spend_n(&b, "k", "m", 7, 100, units).await.unwrap();
                    (units, left)
                })
            })
            .collect();
        let mut granted = 0;
        let mut lefts = Vec::new();
        for t in tasks {
            if let (units, Some(left)) = t.await.unwrap() {
                granted += units;
                lefts.push(left);
            }
        }
        assert!(granted <= 100, "{granted}");
        assert_eq!(b.remaining("k", "m", 7, 100), 100 - granted);
        // Each grant saw what it left, and no two saw the same.
        let grants = lefts.len();
        lefts.sort_unstable();
        lefts.dedup();
        assert_eq!(lefts.len(), grants, "two grants left the same");
        // What a crash would leave covers every grant; the exact count after a stop.
        let held = stored(&path)[0].3 as u64;
        assert!(
            (granted..=100).contains(&held),
            "{held} held, {granted} granted"
        );
        b.close();
        assert_eq!(stored(&path)[0].3 as u64, granted);
        // More than is left: refused, spending nothing.
        let reopened = Budgets::open(&path, Durability::Process, 7).unwrap();
        let left = 100 - granted;
        assert_eq!(
            spend_n(&reopened, "k", "m", 7, 100, left + 1)
                .await
                .unwrap(),
            None
        );
        assert_eq!(reopened.remaining("k", "m", 7, 100), left);
        reopened.close();
    }

    #[tokio::test]
    async fn a_ledger_that_cannot_be_written_refuses_what_it_would_have_to_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.db");
        let b = Budgets::open(&path, Durability::Process, 7).unwrap();
        assert_eq!(spend(&b, "k", "m", 7, 10).await.unwrap(), Some(9));
        // A budget of 10 has blocks of one: each unit is written before it is spent, so
        // another hand breaking the file makes the next request fail, and those after it, until
        // a write succeeds again.
        assert_eq!(stored(&path)[0].3, 1);
        let other = Connection::open(&path).unwrap();
        other.execute_batch("DROP TABLE budgets").unwrap();
        let e = spend(&b, "k", "m", 7, 10).await.unwrap_err();
        assert!(e.to_string().contains("no such table"), "{e}");
        assert_eq!(
            b.remaining("k", "m", 7, 10),
            9,
            "the refused request spent nothing"
        );
        other.execute_batch(SCHEMA).unwrap();
        assert_eq!(spend(&b, "k", "m", 7, 10).await.unwrap(), Some(8));
        b.close();
        assert_eq!(stored(&path), [("k".into(), "m".into(), 7, 2)]);
    }
}
