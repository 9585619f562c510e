//! End-to-end: `palisade keys` changes reach the audit log of their state folder, which then
//! verifies (no gateway running: the command appends them itself).

use std::path::Path;
use std::process::Command;

fn palisade(dir: &Path, args: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--json")
        .args(args)
        .current_dir(dir)
        .env("PALISADE_ACTOR", "ci")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "palisade {args:?}\nstdout: {out}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null)
}

fn entries(dir: &Path) -> u64 {
    let v = palisade(dir, &["audit", "verify", "--state", "st"]);
    v["entries"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn key_changes_by_the_cli_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = palisade(
        d,
        &[
            "keys", "--state", "st", "create", "--name", "svc", "--role", "query:*",
        ],
    );
    let id = k["record"]["id"].as_str().unwrap().to_string();
    assert_eq!(entries(d), 1);
    palisade(
        d,
        &["keys", "--state", "st", "rotate", &id, "--overlap", "1m"],
    );
    palisade(d, &["keys", "--state", "st", "revoke", &id]);
    // Listing changes nothing and logs nothing.
    palisade(d, &["keys", "--state", "st", "list"]);
    assert_eq!(entries(d), 3);
}
