//! The end-to-end cases of the scan command line, run against both binaries that have it:
//! `palisade-scan` (tests/standalone.rs here) and `palisade scan` (palisade-cli's tests/scan.rs,
//! which includes this file by path). The same assertions on both is what shows that the two
//! behave the same.

use std::path::Path;
use std::process::{Command, Output};

/// `os.system("id")`, protocol 2.
const EVIL: &[u8] = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.";
/// `[1, 2]`, protocol 2.
const DATA: &[u8] = b"\x80\x02]q\x00(K\x01K\x02e.";

/// Runs `bin` with `prefix` (e.g. `["scan"]`) then `args`, in `cwd`, and logs what it did.
fn run(bin: &Path, prefix: &[&str], args: &[&str], cwd: &Path) -> Output {
    let out = Command::new(bin)
        .args(prefix)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run the scanner");
    eprintln!(
        "{} {prefix:?} {args:?}\nstatus {:?}\nstdout:\n{}\nstderr:\n{}",
        bin.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Exit codes, text, JSON, SARIF, options, errors and usage errors of the scanner at `bin`.
pub fn exit_codes_reports_and_errors(bin: &Path, prefix: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("good.pkl"), DATA).unwrap();
    std::fs::write(d.join("evil.bin"), EVIL).unwrap();
    std::fs::write(d.join("mystery.pt"), b"\x00\x01\x02 not a model").unwrap();
    let scan = |args: &[&str]| run(bin, prefix, args, d);

    let out = scan(&["good.pkl"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 file(s) scanned: 1 clean"));

    let out = scan(&["evil.bin"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DANGEROUS") && text.contains("os.system"),
        "{text}"
    );

    assert_eq!(scan(&["mystery.pt"]).status.code(), Some(2));
    assert_eq!(scan(&["good.pkl", "mystery.pt"]).status.code(), Some(2));

    // A missing path: exit 2 and one line that names it, in text and in JSON.
    let out = scan(&["does-not-exist"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot read does-not-exist: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = scan(&["--json", "does-not-exist"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("does-not-exist"));

    let out = scan(&["--json", "."]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["files"], 3);
    assert_eq!(v["summary"]["flagged"], 1);
    assert_eq!(v["summary"]["unscannable"], 1);
    assert!(
        v["files"][0]["sha256"]
            .as_str()
            .is_some_and(|s| s.len() == 64)
    );

    // --no-hash drops the hashes; --allow turns the call into an allowed one.
    let out = scan(&["--json", "--no-hash", "good.pkl"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"][0]["sha256"], "");
    assert_eq!(
        scan(&["--allow", "os.system", "evil.bin"]).status.code(),
        Some(0)
    );

    let out = scan(&["--sarif", "evil.bin"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "2.1.0");
    let results = v["runs"][0]["results"].as_array().unwrap();
    assert!(
        results
            .iter()
            .any(|r| r["ruleId"] == "pickle-call" && r["level"] == "error")
    );

    // --sarif and --json are exclusive; no path is a usage error (clap's exit code 2).
    assert_eq!(
        scan(&["--sarif", "--json", "evil.bin"]).status.code(),
        Some(2)
    );
    assert_eq!(scan(&[]).status.code(), Some(2));

    let help = scan(&["--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes"));
}
