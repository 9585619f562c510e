//! `palisade scan` end to end: the built binary on files in a temporary directory.

use std::path::Path;
use std::process::{Command, Output};

fn palisade(args: &[&str], cwd: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run palisade");
    eprintln!(
        "palisade {args:?} in {}\nstatus {:?}\nstdout:\n{}\nstderr:\n{}",
        cwd.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `os.system("id")`, protocol 2.
const EVIL: &[u8] = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.";
/// `[1, 2]`, protocol 2.
const DATA: &[u8] = b"\x80\x02]q\x00(K\x01K\x02e.";

#[test]
fn exit_codes_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("good.pkl"), DATA).unwrap();
    std::fs::write(d.join("evil.bin"), EVIL).unwrap();
    std::fs::write(d.join("mystery.pt"), b"\x00\x01\x02 not a model").unwrap();

    assert_eq!(palisade(&["scan", "good.pkl"], d).status.code(), Some(0));

    let out = palisade(&["scan", "evil.bin"], d);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("os.system"));

    assert_eq!(palisade(&["scan", "mystery.pt"], d).status.code(), Some(2));
    assert_eq!(
        palisade(&["scan", "good.pkl", "mystery.pt"], d)
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        palisade(&["scan", "does-not-exist"], d).status.code(),
        Some(2)
    );

    let out = palisade(&["scan", "--json", "."], d);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["files"], 3);
    assert_eq!(v["summary"]["flagged"], 1);
    assert_eq!(v["summary"]["unscannable"], 1);

    let out = palisade(&["scan", "--sarif", "evil.bin"], d);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "2.1.0");
    let results = v["runs"][0]["results"].as_array().unwrap();
    assert!(
        results
            .iter()
            .any(|r| r["ruleId"] == "pickle-call" && r["level"] == "error")
    );

    let help = palisade(&["scan", "--help"], d);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes"));
}
