//! Offline verification of an audit database: every leaf hash is recomputed from its entry, the
//! tree is rebuilt, and every stored checkpoint (and any checkpoint the caller kept elsewhere)
//! must match the rebuilt root and carry a valid signature.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::OptionalExtension as _;
use serde::Serialize;

use super::merkle::{self, Frontier};
use super::{AuditError, AuditRecord, SignedCheckpoint, journal, sqlite};
use crate::hexfmt;

/// What the verifier found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Entries in the log.
    pub entries: u64,
    /// Of those, entries found only in the append journal beside the database (acknowledged by
    /// a gateway with `process` durability that stopped before copying them in; it copies them
    /// when it opens the log again).
    pub journal_entries: u64,
    /// Checkpoints checked (stored and supplied).
    pub checkpoints: u64,
    /// Size of the largest checkpoint that verified.
    pub verified_up_to: u64,
    /// Entries after the last verified checkpoint (protected only by the next checkpoint).
    pub unsigned_tail: u64,
    /// The root of the whole log (hex).
    pub root: String,
    /// Everything that is wrong; empty when the log verifies.
    pub problems: Vec<String>,
    /// Fields of well-formed entries that this version does not know, with how many entries
    /// carry each: not a problem (a later gateway may record more, and the leaf hashes cover
    /// them), but what they mean is not checked here.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown_fields: BTreeMap<String, u64>,
}

impl VerifyReport {
    /// Whether the log verified.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the audit database at `db` against the checkpoint `public_key`. `trusted` are
/// checkpoints kept outside the database (e.g. fetched earlier from the API): they detect a
/// truncated log whose later checkpoints were deleted too.
pub fn verify_log(
    db: &Path,
    public_key: &[u8; 32],
    trusted: &[SignedCheckpoint],
) -> Result<VerifyReport, AuditError> {
    if !db.is_file() {
        return Err(AuditError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not a file", db.display()),
        )));
    }
    // The journal is read before the entries: a running gateway deletes a journal file only
    // once the database holds all of it, so whatever leaves the journal meanwhile is in the
    // database when its entries are read.
    let journal = journal::read(db);
    let conn = sqlite::open_read_only(db)?;
    sqlite::is_a_log(&conn, db)?;
    let mut problems = Vec::new();
    let mut unknown_fields = BTreeMap::new();

    let mut ckpts: BTreeMap<u64, Vec<(SignedCheckpoint, &'static str)>> = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT size, root, timestamp_ms, signature FROM checkpoints ORDER BY size")?;
        let rows = stmt.query_map([], |r| {
            Ok(sqlite::row_to_checkpoint(
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?;
        for c in rows {
            let c = c?;
            ckpts
                .entry(c.checkpoint.size)
                .or_default()
                .push((c, "stored"));
        }
    }
    for c in trusted {
        ckpts
            .entry(c.checkpoint.size)
            .or_default()
            .push((c.clone(), "supplied"));
    }
    let n_ckpts = ckpts.values().map(|v| v.len() as u64).sum();

    let mut frontier = Frontier::new();
    let mut verified_up_to = 0u64;
    let mut last_ts = 0u64;
    let mut check = |size: u64,
                     root: &merkle::Hash,
                     list: &[(SignedCheckpoint, &str)],
                     problems: &mut Vec<String>| {
        for (c, origin) in list {
            if let Err(e) = c.vouches_for(public_key, size, Some(root)) {
                problems.push(format!("{origin} checkpoint at size {size}: {e}"));
            } else {
                verified_up_to = verified_up_to.max(size);
                if *origin == "stored" {
                    if c.checkpoint.timestamp_ms < last_ts {
                        problems.push(format!(
                            "stored checkpoint at size {size}: timestamp goes backwards"
                        ));
                    }
                    last_ts = c.checkpoint.timestamp_ms;
                }
            }
        }
    };
    if let Some(list) = ckpts.get(&0) {
        check(0, &merkle::empty_root(), list, &mut problems);
    }
    // Only the leaves the journal also holds are kept to compare (the journal of a running
    // gateway starts near the end of the log): memory does not grow with the log.
    let journal_from = match &journal {
        Ok(j) => j.entries.first().map_or(u64::MAX, |(idx, _)| *idx),
        Err(_) => u64::MAX,
    };
    let mut leaves = Vec::new();
    let mut gap = false;
    // The stored subtree roots that proofs are built from must be the entries' own: a
    // rewritten one cannot forge a signed root, but proofs through it would fail to verify.
    let mut node_stmt = if sqlite::table_exists(&conn, "nodes")? {
        Some(conn.prepare("SELECT hash FROM nodes WHERE level = ?1 AND idx = ?2")?)
    } else {
        None
    };
    let mut made = Vec::new();
    let mut bad_nodes = 0u64;
    {
        let mut stmt = conn.prepare("SELECT idx, leaf, data FROM entries ORDER BY idx")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let idx: i64 = row.get(0)?;
            let leaf: Vec<u8> = row.get(1)?;
            let data: Vec<u8> = row.get(2)?;
            let expected = frontier.size();
            if idx != expected as i64 {
                problems.push(format!("entry {expected} is missing (next is {idx})"));
                gap = true;
                break;
            }
            let computed = merkle::leaf_hash(&data);
            if leaf.as_slice() != computed {
                problems.push(format!(
                    "entry {idx}: stored leaf hash does not match its data"
                ));
            }
            if !well_formed(&data, &mut unknown_fields) {
                problems.push(format!("entry {idx}: not a well-formed audit record"));
            }
            if idx as u64 >= journal_from {
                leaves.push(computed);
            }
            frontier.push_with(computed, sqlite::keep_stored(&mut made));
            if let Some(node_stmt) = node_stmt.as_mut() {
                for (level, index, h) in made.drain(..) {
                    let stored: Option<Vec<u8>> = node_stmt
                        .query_row(rusqlite::params![level, index as i64], |r| r.get(0))
                        .optional()?;
                    // A missing node is hashed from its leaves when a proof needs it.
                    if stored.is_some_and(|s| s.as_slice() != h) {
                        bad_nodes += 1;
                        if bad_nodes <= 10 {
                            problems.push(format!(
                                "stored subtree root (level {level}, index {index}) differs from the entries' (the table was altered: proofs through it will not verify; a gateway refills the table when it opens a log whose table is empty)"
                            ));
                        }
                    }
                }
            }
            if let Some(list) = ckpts.get(&frontier.size()) {
                check(frontier.size(), &frontier.root(), list, &mut problems);
            }
        }
    }
    if bad_nodes > 10 {
        problems.push(format!(
            "{} more stored subtree roots differ from the entries'",
            bad_nodes - 10
        ));
    }
    // The journal of a gateway that stopped before copying it in: entries the database has
    // must be the same; the rest must follow on.
    let in_db = frontier.size();
    match journal {
        Err(e) => problems.push(format!("append journal: {e}")),
        Ok(j) if !gap => match journal::beyond(&j.entries, in_db - leaves.len() as u64, &leaves) {
            Err(why) => problems.push(why),
            Ok(tail) => {
                for (idx, data) in tail {
                    if !well_formed(data, &mut unknown_fields) {
                        problems.push(format!(
                            "journal entry {idx}: not a well-formed audit record"
                        ));
                    }
                    frontier.push(merkle::leaf_hash(data));
                    if let Some(list) = ckpts.get(&frontier.size()) {
                        check(frontier.size(), &frontier.root(), list, &mut problems);
                    }
                }
            }
        },
        Ok(_) => {}
    }
    let entries = frontier.size();
    if let Some((&size, list)) = ckpts.range(entries + 1..).next() {
        for (c, origin) in list {
            if let Err(e) = c.vouches_for(public_key, entries, None) {
                problems.push(format!("{origin} checkpoint at size {size}: {e}"));
            }
        }
    }
    Ok(VerifyReport {
        entries,
        journal_entries: entries - in_db,
        checkpoints: n_ckpts,
        verified_up_to,
        unsigned_tail: entries - verified_up_to.min(entries),
        root: hexfmt::encode(&frontier.root()),
        problems,
        unknown_fields,
    })
}

/// Whether `data` is an audit record; if it is, counts its fields that [`AuditRecord`] does not
/// know in `unknown`.
fn well_formed(data: &[u8], unknown: &mut BTreeMap<String, u64>) -> bool {
    if serde_json::from_slice::<AuditRecord>(data).is_err() {
        return false;
    }
    // Owned names: a name with an escape in it cannot be borrowed from the bytes.
    if let Ok(fields) = serde_json::from_slice::<BTreeMap<String, serde::de::IgnoredAny>>(data) {
        for name in fields.into_keys() {
            if !AuditRecord::FIELDS.contains(&name.as_str()) {
                *unknown.entry(name).or_default() += 1;
            }
        }
    }
    true
}
