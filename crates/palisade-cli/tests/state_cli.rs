//! The state folder's secrets shown once: a key that could not be shown must not stay usable
//! (review of the state folder, tests kept).

use std::path::Path;
use std::process::Command;

mod common;
use common::{Killed, exited_within};

/// `palisade ARGS` with its standard output closed (`>&-`), as a service manager or a shell
/// script may start it.
fn with_stdout_closed(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" "$@" >&-"#)
        .arg(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .current_dir(dir)
        .env("PALISADE_ACTOR", "ci")
        .output()
        .unwrap()
}

/// The keys of a listing that are not revoked.
fn active(keys: &serde_json::Value) -> Vec<&serde_json::Value> {
    keys.as_array()
        .unwrap()
        .iter()
        .filter(|k| k["revoked_ms"].is_null())
        .collect()
}

fn listed(dir: &Path) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["--json", "keys", "--state", "st", "list"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// README: "A new key that cannot be shown (stdout closed, a pipe whose reader died) is revoked
/// at once and the command fails, the first admin key included." With standard output closed,
/// Rust's runtime opens /dev/null on descriptor 1, where writes succeed: the key was "written",
/// the command succeeded, and a key no one had seen stayed active.
#[test]
fn a_key_made_with_stdout_closed_is_not_left_active() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = with_stdout_closed(
        d,
        &[
            "keys", "--state", "st", "create", "--name", "ops", "--role", "admin",
        ],
    );
    let keys = listed(d);
    let active = active(&keys);
    assert!(
        !o.status.success() && active.is_empty(),
        "stdout was closed, so the key was shown to no one; yet the command exited {:?} and \
         the key is active: {active:?}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The same for the first admin key of `palisade serve` (serve.rs: "A key no one saw (stdout
/// closed, …) is taken back"): started with stdout closed, the gateway served with an active
/// admin key written to /dev/null, that no later start showed or mentioned. Now the start fails,
/// saying why, and the key it made is revoked.
#[test]
fn a_first_admin_key_made_with_stdout_closed_is_not_left_active() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut serve = Killed(
        Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" >&-"#)
            .arg(env!("CARGO_BIN_EXE_palisade"))
            .args(["serve", "--state", "st", "--listen", "127.0.0.1:0"])
            .args(["--grpc-listen", "none"])
            .current_dir(d)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let Some(status) = exited_within(&mut serve, std::time::Duration::from_secs(120)) else {
        drop(serve); // killed, so that its keys are read as it left them
        let keys = listed(d);
        panic!(
            "serve with stdout closed still runs after 120 s; keys active: {:?}",
            active(&keys)
        );
    };
    let mut stderr = String::new();
    serve
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "serve exited {status:?}\n{stderr}");
    assert!(stderr.contains("shown to no one"), "{stderr}");
    let keys = listed(d);
    assert!(
        !keys.as_array().unwrap().is_empty(),
        "no first admin key was made: {keys}\n{stderr}"
    );
    let active = active(&keys);
    assert!(
        active.is_empty(),
        "serve started with stdout closed and left the unseen first admin key active: {active:?}"
    );
}
