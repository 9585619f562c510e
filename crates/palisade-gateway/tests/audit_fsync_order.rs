//! With `process` durability an acknowledged entry is first in the append journal, and only in
//! the SQLite log once the ingester has copied it there. A journal file may go only once what it
//! held is durable in SQLite: every write to the log's WAL and database file before the file's
//! deletion must be fsynced before it, or a power cut after the deletion reached the disk could
//! lose entries the journal no longer holds.
//!
//! The order of those system calls is what is tested: the scenario (an ignored test of this
//! file) runs under `strace`, and the trace is checked. Without `strace` on the PATH this test
//! says so and passes, unless `PALISADE_REQUIRE_STRACE` is set, as `.ci/run` sets it after
//! installing strace.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_gateway::audit::{
    AuditLog as _, CheckpointPolicy, CheckpointSigner, Durability, SqliteAuditLog,
};

/// Where the scenario keeps its log (set by the test that runs it under strace).
const DIR_VAR: &str = "PALISADE_FSYNC_SCENARIO_DIR";

fn journal_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".journal-")
        })
        .count()
}

/// Appends enough large entries to fill three journal files (they start afresh at 4 MiB), waits
/// for the ingester to delete the two it has emptied, and closes the log (which deletes the
/// last).
#[test]
#[ignore = "run under strace by journal_files_go_only_after_what_they_held_is_fsynced"]
fn scenario() {
    let dir = std::path::PathBuf::from(std::env::var(DIR_VAR).expect("the scenario's folder"));
    let db = dir.join("audit.db");
    let log = SqliteAuditLog::open(
        &db,
        CheckpointSigner::from_seed(&[7; 32]),
        CheckpointPolicy::default(),
        Durability::Process,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let entry = vec![b'x'; 64 << 10];
    for _ in 0..(2 * 64 + 3) {
        rt.block_on(log.append(entry.clone())).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_files(&dir) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(journal_files(&dir), 1, "the ingester deleted emptied files");
    log.close();
    assert_eq!(journal_files(&dir), 0);
}

/// One system call from the trace.
#[derive(Debug)]
struct Call {
    tid: u32,
    name: String,
    /// The path of its file (`strace -y`) or, for an unlink, its argument.
    path: String,
    /// Whether this line is where the call began (a whole line or an `unfinished` one).
    began: bool,
    /// Whether this line is where the call returned (a whole line or a `resumed` one).
    returned: bool,
    /// Whether the call returned 0 (on both lines of a split call, once it has returned): an
    /// fsync or an unlink that failed is neither a sync nor a deletion.
    zero: bool,
}

/// Whether a line that returned says it returned 0 (`... = 0`, with no error after).
fn returned_zero(line: &str) -> bool {
    line.rsplit_once(" = ")
        .is_some_and(|(_, ret)| ret.trim() == "0")
}

/// Parses `strace -f -y` output: `TID name(args) = ret`, or a call split across threads as
/// `TID name(args <unfinished ...>` and later `TID <... name resumed>...) = ret`.
fn parse(trace: &str) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    // A split call's first line, by thread: its path, and where it is in `calls`.
    let mut started: std::collections::HashMap<u32, (String, usize)> = Default::default();
    for line in trace.lines() {
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(tid) = tid.trim().parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let name = resumed.split(' ').next().unwrap_or_default().to_string();
            let zero = returned_zero(rest);
            let path = match started.remove(&tid) {
                Some((path, first)) => {
                    calls[first].zero = zero;
                    path
                }
                None => String::new(),
            };
            calls.push(Call {
                tid,
                name,
                path,
                began: false,
                returned: true,
                zero,
            });
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue; // signals, exits
        };
        let path = call_path(name, args);
        let returned = !rest.ends_with("<unfinished ...>");
        if !returned {
            started.insert(tid, (path.clone(), calls.len()));
        }
        calls.push(Call {
            tid,
            name: name.to_string(),
            path,
            began: true,
            returned,
            zero: returned && returned_zero(rest),
        });
    }
    calls
}

/// The file a call's line names: for an unlink, its quoted path argument (`unlinkat`'s second,
/// after a descriptor that `-y` prints as `AT_FDCWD</cwd>`); for a call on a descriptor, the path
/// `-y` prints after its number (`3</path/to/file>`). Only the call's own arguments are read, not
/// a trailing `<unfinished ...>`, which a line gets when another thread's call interleaves.
fn call_path(name: &str, args: &str) -> String {
    if matches!(name, "unlink" | "unlinkat") {
        return args.split('"').nth(1).unwrap_or_default().to_string();
    }
    let digits = args.len() - args.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    match args[digits..].strip_prefix('<') {
        Some(rest) if digits > 0 => rest.split('>').next().unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

#[test]
fn each_line_is_read_for_its_own_path_and_result() {
    let trace = "\
11 unlink(\"/s/audit.db.journal-1\" <unfinished ...>
12 pwrite64(5</s/audit.db-wal>, \"a<b>\"..., 4096, 0 <unfinished ...>
11 <... unlink resumed>) = 0
12 <... pwrite64 resumed>) = 4096
11 unlinkat(AT_FDCWD</cwd>, \"/s/audit.db.journal-2\", 0) = 0
13 fsync(7</s/audit.db>) = 0
13 fsync(7</s/audit.db>) = -1 EIO (Input/output error)
11 unlink(\"/s/audit.db.journal-3\") = -1 ENOENT (No such file or directory)
";
    let calls = parse(trace);
    let read: Vec<(&str, &str, bool, bool, bool)> = calls
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.path.as_str(),
                c.began,
                c.returned,
                c.zero,
            )
        })
        .collect();
    assert_eq!(
        read,
        [
            ("unlink", "/s/audit.db.journal-1", true, false, true),
            ("pwrite64", "/s/audit.db-wal", true, false, false),
            ("unlink", "/s/audit.db.journal-1", false, true, true),
            ("pwrite64", "/s/audit.db-wal", false, true, false),
            ("unlinkat", "/s/audit.db.journal-2", true, true, true),
            ("fsync", "/s/audit.db", true, true, true),
            ("fsync", "/s/audit.db", true, true, false),
            ("unlink", "/s/audit.db.journal-3", true, true, false),
        ]
    );
}

/// The deletions of journal files that came before what they held was durable: for each
/// journal file's unlink, a write to the WAL (by any thread) or to the database file (by the
/// deleting thread: the checkpointer's copies of WAL pages need no fsync, the WAL holds them),
/// begun before it, that no fsync of that file had covered by the time the unlink began.
fn unsynced_deletions(calls: &[Call], db: &str) -> (usize, Vec<String>) {
    let wal = format!("{db}-wal");
    let is_write = |n: &str| matches!(n, "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2");
    let is_sync = |n: &str| matches!(n, "fsync" | "fdatasync");
    let mut problems = Vec::new();
    let mut deletions = 0;
    for (i, c) in calls.iter().enumerate() {
        if !(c.began
            && c.zero
            && matches!(c.name.as_str(), "unlink" | "unlinkat")
            && c.path.contains(".journal-"))
        {
            continue;
        }
        deletions += 1;
        for file in [&wal, &db.to_string()] {
            // The last write to `file` before the unlink, and whether an fsync of it returned
            // after that write began and before the unlink.
            let last_write = calls[..i].iter().rposition(|w| {
                is_write(&w.name) && w.began && &w.path == file && (file == &wal || w.tid == c.tid)
            });
            if let Some(w) = last_write {
                let synced = calls[w + 1..i]
                    .iter()
                    .any(|s| is_sync(&s.name) && s.returned && s.zero && &s.path == file);
                if !synced {
                    problems.push(format!(
                        "{} deleted while a write to {file} was not fsynced",
                        c.path
                    ));
                }
            }
        }
    }
    (deletions, problems)
}

#[test]
fn journal_files_go_only_after_what_they_held_is_fsynced() {
    let strace = std::env::var("PALISADE_STRACE").unwrap_or_else(|_| "strace".into());
    if Command::new(&strace).arg("-V").output().is_err() {
        if std::env::var_os("PALISADE_REQUIRE_STRACE").is_some() {
            panic!("cannot run {strace}");
        }
        eprintln!("skipped: no {strace}; set PALISADE_REQUIRE_STRACE to fail instead");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    std::fs::create_dir(&log_dir).unwrap();
    let trace = dir.path().join("trace");
    let status = Command::new(&strace)
        .args(["-f", "-qq", "-y", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,unlink,unlinkat",
            "--",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "scenario", "--test-threads=1"])
        .env(DIR_VAR, &log_dir)
        .status()
        .unwrap();
    assert!(status.success(), "the scenario failed under strace");
    let trace = std::fs::read_to_string(&trace).unwrap();
    let calls = parse(&trace);
    let db = log_dir.join("audit.db").canonicalize().unwrap();
    let db = db.to_str().unwrap();
    // Not vacuous: entries went through the journal and the WAL, and three files were deleted.
    assert!(
        calls
            .iter()
            .any(|c| c.name.starts_with("pwrite") && c.path == format!("{db}-wal")),
        "no write to the WAL in the trace"
    );
    let (deletions, problems) = unsynced_deletions(&calls, db);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(deletions, 3, "journal files deleted");
}
