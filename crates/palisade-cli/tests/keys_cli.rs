//! End-to-end: `palisade keys` changes reach the audit log of their state folder through the
//! gateway that runs on it (at once when it runs, when it starts otherwise), and the log
//! verifies; `palisade audit verify` counts the changes still queued.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Killed, http, listening, started};

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

/// (entries in the log, key changes queued), the log verifying.
fn audit(dir: &Path) -> (u64, u64) {
    let v = palisade(dir, &["audit", "verify", "--state", "st"]);
    assert!(
        v["problems"].as_array().is_some_and(|p| p.is_empty()),
        "{v}"
    );
    (
        v["entries"].as_u64().unwrap(),
        v["queued_key_changes"].as_u64().unwrap(),
    )
}

/// `palisade --json serve` on the state folder `st` of `dir` (the bundled model), its stderr to
/// `stderr`, on a port the system picks: the process and the address it bound.
fn serve(dir: &Path, stderr: Stdio) -> (Killed, String) {
    let mut serve = Killed(
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args([
                "--json",
                "serve",
                "--state",
                "st",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--grpc-listen", "none"])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let addr = listening(&started(&mut serve).expect("serve started"));
    (serve, addr)
}

fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ready(addr: &str) -> bool {
    http(
        addr,
        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ) == 200
}

#[test]
fn key_changes_by_the_cli_reach_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = |args: &[&str]| {
        let mut all = vec!["keys", "--state", "st"];
        all.extend_from_slice(args);
        palisade(d, &all)
    };
    // No gateway yet: the change waits in the key database.
    let k = keys(&["create", "--name", "svc", "--role", "query:*"]);
    let id = k["record"]["id"].as_str().unwrap().to_string();

    let (mut serve, addr) = serve(d, Stdio::null());
    until("the gateway", Duration::from_secs(120), || ready(&addr));
    // Keys existed: no first admin key; the queued change is in the log.
    until("the queued change", Duration::from_secs(10), || {
        audit(d) == (1, 0)
    });
    // With the gateway running: in the log within a second or so.
    keys(&["revoke", &id]);
    until("the revocation", Duration::from_secs(10), || {
        audit(d) == (2, 0)
    });
    Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(serve.wait().unwrap().success());
    assert_eq!(audit(d), (2, 0));
    // Listing changes nothing; a change with the gateway stopped is queued, and counted.
    keys(&["list"]);
    keys(&["create", "--name", "later", "--role", "audit"]);
    assert_eq!(audit(d), (2, 1));
    // A key database that cannot be read leaves the count unknown, not the log's verdict.
    std::fs::write(d.join("st/keys.db"), b"not a database").unwrap();
    for f in ["keys.db-wal", "keys.db-shm"] {
        let _ = std::fs::remove_file(d.join("st").join(f));
    }
    let v = palisade(d, &["audit", "verify", "--state", "st"]);
    assert_eq!(v["entries"], 2, "{v}");
    assert!(v["queued_key_changes"].is_null(), "{v}");
    assert!(
        v["queued_key_changes_unknown"]
            .as_str()
            .is_some_and(|w| w.contains("keys.db")),
        "{v}"
    );
}

/// `palisade keys create --client-cert` binds the key to the certificate's SHA-256, `list`
/// shows it, `rotate --client-cert` moves it and a plain `rotate` keeps it; a file that is not
/// a certificate is refused naming it, and no key is made.
#[test]
fn keys_bind_to_client_certificates() {
    use rcgen::{CertificateParams, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let cert = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let c = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&path, c.pem()).unwrap();
        let der = c.der().to_vec();
        (
            path,
            palisade_gateway::keys::ClientCertificate::of_der(&der).to_string(),
        )
    };
    let (alice, alice_sha) = cert("alice");
    let (renewed, renewed_sha) = cert("alice-renewed");
    let made = palisade(
        dir.path(),
        &[
            "keys",
            "create",
            "--state",
            "st",
            "--name",
            "alice",
            "--role",
            "query:*",
            "--client-cert",
            alice.to_str().unwrap(),
        ],
    );
    assert_eq!(
        made["record"]["client_cert_sha256"],
        alice_sha.as_str(),
        "{made}"
    );
    let id = made["record"]["id"].as_str().unwrap().to_string();
    let listed = palisade(dir.path(), &["keys", "list", "--state", "st"]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(entry["client_cert_sha256"], alice_sha.as_str());
    let kept = palisade(
        dir.path(),
        &["keys", "rotate", "--state", "st", &id, "--overlap", "1m"],
    );
    assert_eq!(
        kept["record"]["client_cert_sha256"],
        alice_sha.as_str(),
        "{kept}"
    );
    let kept_id = kept["record"]["id"].as_str().unwrap();
    let moved = palisade(
        dir.path(),
        &[
            "keys",
            "rotate",
            "--state",
            "st",
            kept_id,
            "--overlap",
            "1m",
            "--client-cert",
            renewed.to_str().unwrap(),
        ],
    );
    assert_eq!(
        moved["record"]["client_cert_sha256"],
        renewed_sha.as_str(),
        "{moved}"
    );

    // What a certificate presents, for binding by thumbprint or by name; a key bound by name.
    let shown = palisade(dir.path(), &["keys", "identity", renewed.to_str().unwrap()]);
    assert_eq!(
        shown,
        serde_json::json!({"client_cert_sha256": renewed_sha, "client_san": ["dns:alice-renewed"]})
    );
    let by_name = palisade(
        dir.path(),
        &[
            "keys",
            "create",
            "--state",
            "st",
            "--name",
            "by-name",
            "--role",
            "query:*",
            "--client-san",
            "DNS:Alice-Renewed",
        ],
    );
    assert_eq!(
        by_name["record"]["client_san"], "dns:alice-renewed",
        "{by_name}"
    );
    assert!(by_name["record"].get("client_cert_sha256").is_none());

    // Bad files: a clear error naming the file, and no key made.
    let before = palisade(dir.path(), &["keys", "list", "--state", "st"])
        .as_array()
        .unwrap()
        .len();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    // Bad files (the error names the file), a name that is not one, or both bindings: refused,
    // saying why, and no key made.
    let (junk, missing) = (junk.to_str().unwrap(), "missing.pem");
    for (args, says) in [
        (
            ["--client-cert", junk].as_slice(),
            vec!["no CERTIFICATE", "junk.pem"],
        ),
        (&["--client-cert", missing], vec!["cannot read", missing]),
        (&["--client-san", "alice"], vec!["no kind"]),
        (&["--client-san", "dns:*.alice"], vec!["wildcard"]),
        (
            &["--client-san", "dns:alice", "--client-cert", "alice.pem"],
            vec!["cannot be used with"],
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args([
                "keys", "create", "--state", "st", "--name", "x", "--role", "audit",
            ])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(says.iter().all(|s| err.contains(s)), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let after = palisade(dir.path(), &["keys", "list", "--state", "st"])
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);

    // A gateway that asks for no client certificate says at start that bound keys will be
    // refused (here: the bound keys above, still active).
    let log = dir.path().join("serve.log");
    let (mut serve, addr) = serve(dir.path(), std::fs::File::create(&log).unwrap().into());
    until("the gateway", Duration::from_secs(120), || ready(&addr));
    Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    serve.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("keys bound to client certificates (or their names) are refused")
            && said.contains("\"keys\":4"),
        "{said}"
    );
}
