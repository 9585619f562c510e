//! The append journal of [`Durability::Process`](super::Durability::Process): where an entry is
//! made durable before its request is answered, ahead of the SQLite log that holds the tree.
//!
//! A group of entries costs one `write(2)` to the end of a file, where an SQLite commit costs a
//! read and a write transaction, their `-shm` locks and WAL page writes. A background thread
//! (see `sqlite.rs`) copies the journal's entries into SQLite in large transactions and deletes
//! a journal file once everything in it is there; opening the log copies what a killed gateway
//! left behind, and the offline verifier reads a journal it finds beside the database.
//!
//! **Format.** Files `<database>.journal-<first index, 20 digits>` beside the database, each a
//! run of records `len: u32 LE | crc32: u32 LE | index: u64 LE | data[len]`, the CRC (IEEE) over
//! the index bytes and the data. Indices are contiguous within and across files. A file is
//! started afresh at [`ROTATE_BYTES`], so that ingested ones can be deleted.
//!
//! **Torn tails.** A write cut short by `kill -9` (Linux stops a buffered write between pages
//! when a fatal signal is pending) leaves a prefix of a record at the end of the last file. That
//! record's request was never answered: readers stop at it. A write that fails (a full disk) is
//! cut back off the file before the error is returned, so no later record follows a torn one; if
//! even that fails the journal refuses every later append. Anything else a reader cannot take,
//! a whole record that fails its CRC, bytes after a record that are not a prefix of one, or a
//! torn record in a file that is not the last, is corruption, not a torn write: the journal is
//! refused (the log does not open, `audit verify` reports it), never cut short there, which would
//! drop acknowledged entries (review, 2026-12-06). Only zeros after the last record are taken as
//! torn as well: a file extended by the file system but never written (a power cut, which
//! `process` durability does not promise to survive, but which should not keep the log shut).

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::AuditError;
use super::merkle::{self, Hash};

/// Size from which the next group starts a new file.
pub(crate) const ROTATE_BYTES: u64 = 4 << 20;

/// Bytes before a record's data.
const HEADER: usize = 16;

/// Largest entry a record holds (entries are audit records of a few hundred bytes).
const MAX_ENTRY: usize = 16 << 20;

/// The journal's files for the database `db`, with their first indices, in index order.
pub(crate) fn files(db: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let (dir, prefix) = dir_and_prefix(db);
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort_unstable();
    Ok(out)
}

fn dir_and_prefix(db: &Path) -> (PathBuf, String) {
    let dir = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, format!("{name}.journal-"))
}

fn path_for(db: &Path, first: u64) -> PathBuf {
    let (dir, prefix) = dir_and_prefix(db);
    dir.join(format!("{prefix}{first:020}"))
}

fn crc(index: u64, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(data);
    h.finalize()
}

/// Appends one record for entry `index` to `buf`.
pub(crate) fn encode(buf: &mut Vec<u8>, index: u64, data: &[u8]) {
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc(index, data).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(data);
}

/// The records of one file's bytes, up to the first that is incomplete or fails its CRC, and
/// the number of bytes after the last good record.
pub(crate) fn decode(bytes: &[u8]) -> (Vec<(u64, Vec<u8>)>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let word = |o: usize| u32::from_le_bytes(bytes[at + o..at + o + 4].try_into().unwrap());
        let len = word(0) as usize;
        let sum = word(4);
        let index = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        let Some(data) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if len > MAX_ENTRY || crc(index, data) != sum {
            break;
        }
        out.push((index, data.to_vec()));
        at += HEADER + len;
    }
    (out, bytes.len() - at)
}

/// Whether `rest`, the bytes after a file's last good record (see [`decode`]), can be what a
/// torn write leaves: a prefix of a record (an incomplete header, or a header whose data runs
/// past the end), or zeros. `Err` says what else it is.
fn torn(rest: &[u8]) -> Result<(), String> {
    if rest.len() < HEADER || rest.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
    if len > MAX_ENTRY {
        return Err(format!("a record claims {len} bytes (at most {MAX_ENTRY})"));
    }
    if HEADER + len > rest.len() {
        return Ok(());
    }
    let index = u64::from_le_bytes(rest[8..16].try_into().unwrap_or_default());
    Err(format!("the record of entry {index} fails its CRC"))
}

/// Everything the journal of `db` holds: its files, and their entries in index order.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    /// The files read, in index order.
    pub files: Vec<PathBuf>,
    /// `(index, data)`, contiguous.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Bytes of torn records dropped from the ends of files (a write cut short by a kill).
    pub torn_bytes: usize,
}

/// Reads the journal of `db`. Fails if its indices are not contiguous (a file is missing or was
/// edited). A file that disappears between listing and reading is skipped, and so are the
/// entries read before it: a running gateway's ingester deletes a file only once the database
/// holds all of it (and so all before it), so a reader that reads the journal first and the
/// database after misses nothing, and [`beyond`] still finds a hole the database does not fill.
pub(crate) fn read(db: &Path) -> Result<Contents, AuditError> {
    let mut c = Contents::default();
    let files = files(db)?;
    let last = files.len().saturating_sub(1);
    for (n, (first, path)) in files.into_iter().enumerate() {
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // What came before is in the database too; the next file starts afresh, and is
                // not held to follow on from it (a live `audit verify` saw a false hole here).
                c.entries.clear();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (records, rest) = decode(&bytes);
        if rest > 0 {
            let at = bytes.len() - rest;
            let why = match torn(&bytes[at..]) {
                Ok(()) if n == last => None,
                Ok(()) => Some("a torn record, in a file that is not the last".to_string()),
                Err(why) => Some(why),
            };
            if let Some(why) = why {
                return Err(AuditError::Corrupt(format!(
                    "{} is corrupt at byte {at}: {why}",
                    path.display()
                )));
            }
        }
        c.torn_bytes += rest;
        if let Some((idx, _)) = records.first()
            && *idx != first
        {
            return Err(AuditError::Corrupt(format!(
                "{} starts with entry {idx}, not {first}",
                path.display()
            )));
        }
        for (idx, data) in records {
            if let Some((prev, _)) = c.entries.last()
                && idx != prev + 1
            {
                return Err(AuditError::Corrupt(format!(
                    "journal entry {} is missing ({} follows it in {})",
                    prev + 1,
                    idx,
                    path.display()
                )));
            }
            c.entries.push((idx, data));
        }
        c.files.push(path);
    }
    Ok(c)
}

/// The entries of a journal (as [`read`] returns them) that a database lacks whose entries
/// end where `leaves`, the leaf hashes of its entries from index `from` on, end: contiguous
/// from there. Fails, saying why, if an entry both hold differs or if the journal goes on past
/// entries neither holds. Journal entries before `from` are not compared (`from` is at most
/// the journal's first index where the caller has them). Opening the log and the offline
/// verifier both hold the journal to this rule.
pub(crate) fn beyond<'a>(
    entries: &'a [(u64, Vec<u8>)],
    from: u64,
    leaves: &[Hash],
) -> Result<&'a [(u64, Vec<u8>)], String> {
    let size = from + leaves.len() as u64;
    let split = entries.partition_point(|(idx, _)| *idx < size);
    for (idx, data) in &entries[..split] {
        let Some(have) = idx.checked_sub(from).map(|i| &leaves[i as usize]) else {
            continue;
        };
        if *have != merkle::leaf_hash(data) {
            return Err(format!(
                "journal entry {idx} differs from the database's entry {idx}"
            ));
        }
    }
    let tail = &entries[split..];
    match tail.first() {
        Some((idx, _)) if *idx != size => Err(format!(
            "the journal goes on from entry {idx} but the database holds {size}: entries {size} to {} are missing",
            idx - 1
        )),
        _ => Ok(tail),
    }
}

/// The open journal, written by one appender at a time.
#[derive(Debug)]
pub(crate) struct Journal {
    db: PathBuf,
    file: File,
    path: PathBuf,
    len: u64,
    next: u64,
    buf: Vec<u8>,
    /// Set when a failed write could not be cut back off the file.
    broken: Option<String>,
    /// A file moved on from by a group whose write then failed: handed out with the next group
    /// written, so that it is deleted in its turn. Dropped, it stayed on disk while the files
    /// after it were deleted, and the journal then had a hole that kept a killed log from
    /// opening (2026-12-06 review).
    retired: Option<Retired>,
}

/// A file the journal has moved on from, to delete once entries `..end` are in the database.
#[derive(Debug)]
pub(crate) struct Retired {
    pub path: PathBuf,
    pub end: u64,
}

impl Journal {
    /// Starts a journal whose first entry will be `next`, in a new file.
    pub(crate) fn create(db: &Path, next: u64) -> io::Result<Journal> {
        let path = path_for(db, next);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        if len != 0 {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not empty", path.display()),
            ));
        }
        Ok(Journal {
            db: db.to_path_buf(),
            file,
            path,
            len: 0,
            next,
            buf: Vec::new(),
            broken: None,
            retired: None,
        })
    }

    /// Writes `entries` with one write and returns the index of the first, and the file the
    /// journal moved on from before writing (or before an earlier write that failed), if it did.
    pub(crate) fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(u64, Option<Retired>), AuditError> {
        if let Some(why) = &self.broken {
            return Err(AuditError::Write(why.clone()));
        }
        // A journal file deleted under the gateway (its state folder removed) takes writes that
        // no one will read: every entry would be acknowledged and lost (review, 2026-12-06).
        // One `fstat` per group: about 0.45 µs on the 2-vCPU VM this was written on (Python's
        // `os.fstat` in a loop, 0.57 µs, less the loop's own 0.13 µs for `os.getpid`).
        {
            use std::os::unix::fs::MetadataExt as _;
            if self.file.metadata()?.nlink() == 0 {
                let why = format!(
                    "{} was deleted: the audit log's folder was removed",
                    self.path.display()
                );
                self.broken = Some(why.clone());
                return Err(AuditError::Write(why));
            }
        }
        if self.len >= ROTATE_BYTES {
            let fresh = Journal::create(&self.db, self.next)?;
            let old = std::mem::replace(&mut self.file, fresh.file);
            drop(old);
            let path = std::mem::replace(&mut self.path, fresh.path);
            self.len = 0;
            // A file is only started afresh after a write, so at most one waits here.
            self.retired = Some(Retired {
                path,
                end: self.next,
            });
        }
        let first = self.next;
        self.buf.clear();
        let mut next = first;
        for data in entries {
            if data.len() > MAX_ENTRY {
                return Err(AuditError::Write(format!(
                    "an audit entry of {} bytes exceeds {MAX_ENTRY}",
                    data.len()
                )));
            }
            encode(&mut self.buf, next, data);
            next += 1;
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            if let Err(cut) = self.file.set_len(self.len) {
                self.broken = Some(format!(
                    "a journal write failed ({e}) and could not be undone ({cut})"
                ));
            }
            return Err(AuditError::Io(e));
        }
        self.len += self.buf.len() as u64;
        self.next = next;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok((first, self.retired.take()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("audit.db")
    }

    /// A journal file of `db` starting at entry `first`, holding `entries`.
    fn journaled(db: &Path, first: u64, entries: &[&[u8]]) {
        Journal::create(db, first)
            .unwrap()
            .append(entries.iter().copied())
            .unwrap();
    }

    #[test]
    fn records_read_back_in_order_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        let mut j = Journal::create(&db, 7).unwrap();
        let (first, r) = j.append([&b"a"[..], b"bb"]).unwrap();
        assert_eq!((first, r.is_none()), (7, true));
        // Past the rotation size the next group goes to a new file.
        let big = vec![1u8; ROTATE_BYTES as usize];
        j.append([big.as_slice()]).unwrap();
        let (first, retired) = j.append([&b"c"[..]]).unwrap();
        assert_eq!(first, 10);
        assert_eq!(retired.unwrap().end, 10);
        let c = read(&db).unwrap();
        assert_eq!(c.files.len(), 2);
        let idx: Vec<u64> = c.entries.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![7, 8, 9, 10]);
        assert_eq!(c.entries[1].1, b"bb");
        assert_eq!(c.entries[3].1, b"c");
        assert_eq!(c.torn_bytes, 0);
        // Other files beside the database are not journal files.
        std::fs::write(dir.path().join("audit.db.journal-12"), b"x").unwrap();
        std::fs::write(dir.path().join("audit.db-wal"), b"x").unwrap();
        assert_eq!(files(&db).unwrap().len(), 2);
    }

    #[test]
    fn a_torn_tail_ends_the_journal_there_and_anything_else_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        let mut j = Journal::create(&db, 0).unwrap();
        j.append([&b"one"[..], b"two", b"three"]).unwrap();
        let path = files(&db).unwrap()[0].1.clone();
        let full = std::fs::read(&path).unwrap();
        // Every cut inside the last record leaves the first two.
        let last = full.len() - (HEADER + 5);
        for cut in last..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let c = read(&db).unwrap();
            assert_eq!(c.entries.len(), 2, "cut at {cut}");
            assert_eq!(c.torn_bytes, cut - last);
        }
        // Zeros after the last record (a file extended, never written) are torn too.
        let mut zeros = full[..last].to_vec();
        zeros.resize(full.len() + 100, 0);
        std::fs::write(&path, &zeros).unwrap();
        assert_eq!(read(&db).unwrap().entries.len(), 2);
        // A flipped bit in a whole record, in the middle or the last, is corruption: the
        // acknowledged entries after it are not dropped as a torn tail would be.
        let corrupt = |c: Result<Contents, AuditError>| matches!(c, Err(AuditError::Corrupt(m)) if m.contains("fails its CRC"));
        for at in [HEADER + 3 + HEADER, full.len() - 1] {
            let mut bad = full.clone();
            bad[at] ^= 1;
            std::fs::write(&path, &bad).unwrap();
            assert!(corrupt(read(&db)), "a flipped bit at {at}");
        }
        // So is a length no record has.
        let mut bad = full.clone();
        bad[last..last + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(read(&db), Err(AuditError::Corrupt(m)) if m.contains("claims")));
        // A torn record in a file that another follows cannot be a kill's.
        std::fs::write(&path, &full[..full.len() - 1]).unwrap();
        journaled(&db, 3, &[b"four"]);
        assert!(matches!(read(&db), Err(AuditError::Corrupt(m)) if m.contains("not the last")));
    }

    #[test]
    fn a_gap_between_files_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        journaled(&db, 0, &[b"a", b"b"]);
        journaled(&db, 5, &[b"c"]);
        assert!(
            matches!(read(&db), Err(AuditError::Corrupt(m)) if m.contains("entry 2 is missing"))
        );
    }

    #[test]
    fn a_journal_is_never_started_over_a_nonempty_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        journaled(&db, 3, &[b"a"]);
        assert!(Journal::create(&db, 3).is_err());
        assert_eq!(read(&db).unwrap().entries.len(), 1);
    }

    #[test]
    fn any_bytes_read_as_a_prefix_of_whole_records() {
        // The fuzz target's property, on valid files cut anywhere, with bits flipped, and on
        // noise from a fixed-seed generator.
        let mut file = Vec::new();
        for (i, d) in [&b"first"[..], b"", b"third record"].iter().enumerate() {
            encode(&mut file, 40 + i as u64, d);
        }
        for cut in 0..=file.len() {
            crate::audit::fuzzing::journal(&file[..cut]);
        }
        for bit in 0..file.len() * 8 {
            let mut f = file.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            crate::audit::fuzzing::journal(&f);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..400 {
            let noise: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            crate::audit::fuzzing::journal(&noise);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_middle_file_deleted_while_reading_leaves_no_false_hole() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        journaled(&db, 0, &[b"a", b"b"]);
        // Listed, then deleted by the ingester before it is opened.
        std::os::unix::fs::symlink(dir.path().join("gone"), path_for(&db, 2)).unwrap();
        journaled(&db, 5, &[b"f"]);
        let c = read(&db).unwrap();
        assert_eq!(
            c.entries.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![5]
        );
        // A database that holds less than the journal skipped is still told apart.
        assert!(beyond(&c.entries, 0, &[[0; 32]; 2]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_file_deleted_while_listing_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        // Listed (by name) but gone when opened, as when the ingester deletes it meanwhile.
        std::os::unix::fs::symlink(dir.path().join("gone"), path_for(&db, 0)).unwrap();
        journaled(&db, 4, &[b"e"]);
        let c = read(&db).unwrap();
        assert_eq!(c.files.len(), 1);
        assert_eq!(
            c.entries.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![4]
        );
    }
}
