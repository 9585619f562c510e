//! `palisade audit inclusion|consistency --checkpoint`: a proof's roots are checked against
//! signed checkpoints kept elsewhere, not only against themselves; a checkpoint that another
//! key signed or whose root the log no longer gives fails (exit 1), one of a size the proof is
//! not about is an error (exit 2).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use palisade_gateway::audit::{
    AuditLog as _, CheckpointPolicy, CheckpointSigner, Durability, SqliteAuditLog,
};

/// Runs `palisade --json audit --db <db> args...`: (exit code, JSON output).
fn audit(dir: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["--json", "audit", "--db", "audit.db"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let v = serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null);
    (o.status.code().unwrap(), v)
}

/// Appends `n` entries to the log in `dir`, signed by the key of `seed`, closing it (which signs
/// a checkpoint of everything).
fn append(dir: &Path, seed: u8, from: u64, n: u64) {
    let log = SqliteAuditLog::open(
        &dir.join("audit.db"),
        CheckpointSigner::from_seed(&[seed; 32]),
        CheckpointPolicy {
            every_entries: 1 << 20,
            every: Duration::from_secs(3600),
        },
        Durability::Full,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in from..from + n {
            log.append(format!("{{\"entry\":{i}}}").into_bytes())
                .await
                .unwrap();
        }
    });
    log.close();
}

fn save_checkpoint(dir: &Path, name: &str) {
    let (code, v) = audit(dir, &["checkpoint"]);
    assert_eq!(code, 0, "{v}");
    std::fs::write(dir.join(name), v.to_string()).unwrap();
}

/// Writes the hex public key of the signer of `seed` to `dir/name`.
fn write_key(dir: &Path, name: &str, seed: u8) {
    let pk = hex::encode(CheckpointSigner::from_seed(&[seed; 32]).public_key());
    std::fs::write(dir.join(name), pk).unwrap();
}

/// Removes the log in `dir` (to write another in its place).
fn remove_log(dir: &Path) {
    for f in ["audit.db", "audit.db-wal", "audit.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// [`audit`] with `--public-key audit.pub`.
fn audit_keyed(dir: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    audit(dir, &[args, &["--public-key", "audit.pub"]].concat())
}

/// The problem reported for the first checkpoint given.
fn problem(v: &serde_json::Value) -> &str {
    v["checked_against"][0]["problem"]
        .as_str()
        .unwrap_or_default()
}

#[test]
fn proofs_are_checked_against_signed_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    append(d, 7, 0, 40);
    save_checkpoint(d, "at40.json");
    append(d, 7, 40, 60);
    save_checkpoint(d, "at100.json");
    write_key(d, "audit.pub", 7);
    write_key(d, "other.pub", 8);

    // Without a checkpoint: checked against its own root only, and it says so.
    let (code, v) = audit(d, &["inclusion", "--index", "3"]);
    assert_eq!(
        (code, v["size"].as_u64(), v["verifies"].as_bool()),
        (0, Some(100), Some(true)),
        "{v}"
    );
    assert_eq!(v["checked_against"], serde_json::json!([]));

    // Against the checkpoint of 40 entries: the proof is for that tree, and its root matches.
    let (code, v) = audit_keyed(
        d,
        &["inclusion", "--index", "3", "--checkpoint", "at40.json"],
    );
    assert_eq!((code, v["size"].as_u64()), (0, Some(40)), "{v}");
    assert_eq!(v["checked_against"][0]["matches"], true, "{v}");
    let both = ["--checkpoint", "at40.json", "--checkpoint", "at100.json"];
    let (code, v) = audit_keyed(d, &[&["consistency", "--first", "40"][..], &both].concat());
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["checked_against"].as_array().map(Vec::len),
        Some(2),
        "{v}"
    );

    // Under another key the checkpoint does not verify: exit 1, saying why.
    let (code, v) = audit(
        d,
        &[
            "inclusion",
            "--index",
            "3",
            "--checkpoint",
            "at40.json",
            "--public-key",
            "other.pub",
        ],
    );
    assert_eq!(code, 1, "{v}");
    assert!(problem(&v).contains("signature"), "{v}");

    // A checkpoint of a size the proof is not about is a usage error.
    let (code, _) = audit_keyed(
        d,
        &[
            "consistency",
            "--first",
            "10",
            "--second",
            "50",
            "--checkpoint",
            "at40.json",
        ],
    );
    assert_eq!(code, 2);

    // The consistency of the tree at 10 with the checkpoint's (the newer size defaults to it).
    let (code, v) = audit_keyed(
        d,
        &["consistency", "--first", "10", "--checkpoint", "at40.json"],
    );
    assert_eq!((code, v["second"].as_u64()), (0, Some(40)), "{v}");

    // The log replaced by another of the same size, signed by the same key: the proof agrees
    // with itself, but not with what was signed.
    remove_log(d);
    append(d, 7, 1000, 100);
    let (code, v) = audit_keyed(
        d,
        &["inclusion", "--index", "3", "--checkpoint", "at40.json"],
    );
    assert_eq!((code, v["verifies"].as_bool()), (1, Some(true)), "{v}");
    assert!(problem(&v).contains("altered"), "{v}");
}

#[test]
fn a_checkpoint_beyond_the_log_means_entries_were_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    append(d, 7, 0, 50);
    save_checkpoint(d, "at50.json");
    write_key(d, "audit.pub", 7);
    remove_log(d);
    append(d, 7, 0, 30);
    for cmd in [
        &["inclusion", "--index", "3"][..],
        &["consistency", "--first", "10"][..],
    ] {
        let (code, v) = audit_keyed(d, &[cmd, &["--checkpoint", "at50.json"][..]].concat());
        assert_eq!((code, v["log_entries"].as_u64()), (1, Some(30)), "{v}");
        assert!(problem(&v).contains("removed"), "{v}");
    }
}

/// An entry whose data was rewritten, its stored leaf hash left, gets no inclusion proof: exit
/// 1, saying so (a proof built from the stored hash verified against the signed root).
#[test]
fn a_rewritten_entry_gets_no_inclusion_proof() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    append(d, 7, 0, 10);
    save_checkpoint(d, "at10.json");
    write_key(d, "audit.pub", 7);
    rusqlite::Connection::open(d.join("audit.db"))
        .unwrap()
        .execute(
            "UPDATE entries SET data = CAST('{\"entry\":99}' AS BLOB) WHERE idx = 3",
            [],
        )
        .unwrap();
    let (code, v) = audit_keyed(
        d,
        &["inclusion", "--index", "3", "--checkpoint", "at10.json"],
    );
    assert_eq!((code, v["verifies"].as_bool()), (1, Some(false)), "{v}");
    assert!(
        v["problem"]
            .as_str()
            .unwrap_or_default()
            .contains("does not hash"),
        "{v}"
    );
    // Its neighbours still prove against the checkpoint.
    let (code, v) = audit_keyed(
        d,
        &["inclusion", "--index", "4", "--checkpoint", "at10.json"],
    );
    assert_eq!(code, 0, "{v}");
}

/// A proof asked for an entry that a killed gateway left only in its journal (not yet copied
/// into the database, which the gateway's next start does) is an error that says so and what to
/// do, not a bare "out of range".
#[test]
fn a_proof_of_an_entry_still_only_in_the_journal_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    append(d, 3, 0, 2);
    let entry = |i: u64| format!(r#"{{"n":{i}}}"#).into_bytes();
    let (a, b) = (entry(2), entry(3));
    palisade_gateway::audit::testing::journal(&d.join("audit.db"), 2, &[&a, &b]).unwrap();
    for args in [
        &["inclusion", "--index", "3"][..],
        &["consistency", "--first", "1", "--second", "4"][..],
    ] {
        let (code, out) = audit(d, args);
        assert_eq!(code, 2, "{args:?}: {out}");
        let e = out["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("2 more acknowledged entries are only in the journal")
                && e.contains("palisade serve"),
            "{args:?}: {e}"
        );
    }
    // Within the database, proofs are given as before.
    let (code, out) = audit(d, &["inclusion", "--index", "1"]);
    assert_eq!((code, out["verifies"].as_bool()), (0, Some(true)), "{out}");
}
