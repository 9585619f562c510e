//! End-to-end: a daily query budget survives the gateway's restarts. A graceful stop keeps the
//! exact count; `kill -9` keeps at least what was spent, so the budget is never refilled. And
//! two gateways whose limits are kept in one Redis (`--limits-redis`) share them.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{
    Killed, exited_within, http, infer, listening, repository, serve_in, serve_until, started,
};

const BUDGET: u64 = 3;

/// Starts `palisade serve` on the repository `repo` and state `st` of `dir`; returns the process
/// and its address once it answers ready, and the first admin key if it printed one.
fn serve(dir: &Path) -> (Killed, String, Option<String>) {
    let (child, addr, started) = serve_with(dir, &["--state", "st"]);
    (child, addr, started["key"].as_str().map(str::to_string))
}

/// [`serve`] with other arguments (a state folder among them); the JSON it printed on start.
fn serve_with(dir: &Path, args: &[&str]) -> (Killed, String, serde_json::Value) {
    let ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    serve_until(dir, args, |addr| http(addr, ready) == 200)
}

fn stop(gw: Killed) {
    assert!(stopped_within(gw, Duration::from_secs(60)).success());
}

#[test]
fn a_daily_budget_is_not_refilled_by_a_restart_or_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    repository(
        d,
        &format!("[input]\nrange = [0.0, 1.0]\n\n[limits]\ndaily_budget = {BUDGET}\n"),
    );

    let (gw, addr, key) = serve(d);
    let key = key.expect("the first start prints an admin key");
    assert_eq!(infer(&addr, &key), 200);
    // A graceful stop, then a restart: the count goes on from 1.
    stop(gw);
    let (gw, addr, again) = serve(d);
    assert_eq!(again, None);
    assert_eq!(infer(&addr, &key), 200);
    // kill -9, then a restart: the spent units are still spent.
    let (gw, addr) = crash_and_restart(gw, d);
    assert_eq!(infer(&addr, &key), 200);
    assert_eq!(
        infer(&addr, &key),
        429,
        "the budget of {BUDGET} was refilled"
    );
    let (mut gw, addr) = crash_and_restart(gw, d);
    assert_eq!(
        infer(&addr, &key),
        429,
        "the budget of {BUDGET} was refilled"
    );
    gw.kill().unwrap();
    gw.wait().unwrap();
}

fn crash_and_restart(mut gw: Killed, dir: &Path) -> (Killed, String) {
    gw.kill().unwrap();
    gw.wait().unwrap();
    let (gw, addr, _) = serve(dir);
    (gw, addr)
}

/// Two gateways with one key database (copied) and their limits in one Redis: a key's burst of
/// 3 is spent across both, a refusal by one holds on the other, and once Redis is gone both
/// refuse with 503 rather than serve unlimited. Needs `redis-server` (see
/// `palisade-gateway/tests/redis_limits.rs` for when its absence skips the test).
#[test]
fn gateways_with_their_limits_in_one_redis_share_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let socket = d.join("redis.sock");
    let bin = std::env::var("PALISADE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let spawned = Command::new(&bin)
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(&socket)
        .arg("--dir")
        .arg(d)
        .stdout(Stdio::null())
        .spawn();
    let mut redis = match spawned {
        Ok(c) => Killed(c),
        Err(e) if std::env::var_os("PALISADE_REQUIRE_REDIS").is_none() => {
            eprintln!(
                "skipped: cannot start {bin} ({e}); set PALISADE_REQUIRE_REDIS to fail instead"
            );
            return;
        }
        Err(e) => panic!("cannot start {bin}: {e}"),
    };
    let end = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < end, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    repository(
        d,
        "[input]\nrange = [0.0, 1.0]\n\n[limits]\nper_key = { rate = 1, period_ms = 3600000, burst = 3 }\n",
    );
    let url = format!("redis+unix://{}", socket.display());
    let shared = ["--limits-redis", url.as_str(), "--limits-prefix", "test:"];

    // The first gateway makes the key; the second gets a copy of its key database.
    let (gw, _, started) = serve_with(d, &[&["--state", "a"][..], &shared].concat());
    let key = started["key"].as_str().unwrap().to_string();
    assert_eq!(started["limits"], "redis, keys test:*");
    stop(gw);
    // Its limits are in Redis only: the state folder holds no limits.db to drift from them.
    assert!(d.join("a/keys.db").exists());
    assert!(!d.join("a/limits.db").exists());
    std::fs::create_dir(d.join("b")).unwrap();
    std::fs::copy(d.join("a/keys.db"), d.join("b/keys.db")).unwrap();
    let (_a, at_a, _) = serve_with(d, &[&["--state", "a"][..], &shared].concat());
    let (_b, at_b, started) = serve_with(d, &[&["--state", "b"][..], &shared].concat());
    assert_eq!(started["key"], serde_json::Value::Null, "b knows a's keys");

    let statuses: Vec<u16> = [&at_a, &at_b, &at_a, &at_b, &at_a]
        .iter()
        .map(|addr| infer(addr, &key))
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // Without Redis the limits cannot be checked: refused, not served.
    redis.0.kill().unwrap();
    redis.0.wait().unwrap();
    assert_eq!(infer(&at_a, &key), 503);
    assert_eq!(infer(&at_b, &key), 503);
}

/// Redis settings that cannot work stop the start with a message and exit code 2, and no key is
/// made: a CA for a URL without TLS, a CA file that is missing or holds no certificate, a client
/// certificate without its key, a cluster node on a Unix socket. None of these needs a Redis
/// server.
#[test]
fn redis_settings_that_cannot_work_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    repository(d, "[input]\nrange = [0.0, 1.0]\n");
    std::fs::write(d.join("empty.pem"), "no certificate here\n").unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "--limits-redis",
                "redis://127.0.0.1:1",
                "--limits-redis-ca",
                "empty.pem",
            ],
            "does not use TLS",
        ),
        (
            &[
                "--limits-redis",
                "rediss://127.0.0.1:1",
                "--limits-redis-ca",
                "empty.pem",
            ],
            "holds no PEM certificate",
        ),
        (
            &[
                "--limits-redis",
                "rediss://127.0.0.1:1",
                "--limits-redis-ca",
                "missing.pem",
            ],
            "--limits-redis-ca: cannot read",
        ),
        (
            &[
                "--limits-redis",
                "rediss://127.0.0.1:1",
                "--limits-redis-cert",
                "empty.pem",
            ],
            "--limits-redis-key",
        ),
        (
            &[
                "--limits-redis",
                "redis+unix:///nowhere",
                "--limits-redis-cluster",
            ],
            "unix socket",
        ),
        (
            &["--limits-redis-cluster"],
            "--limits-redis-cluster needs --limits-redis",
        ),
    ];
    for (args, says) in cases {
        let out = serve_in(d, "127.0.0.1:0", args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // The state may exist (it is opened before Redis is reached), but holds no key.
    if d.join("st/keys.db").exists() {
        let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["--json", "keys", "list", "--state", "st"])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(out.status.success());
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(keys, serde_json::json!([]), "a failed start made a key");
    }
}

/// `--max-connections-per-address`: with a bound of one, a second connection from the same
/// address is closed as soon as it is accepted, the first one is served on, and /metrics counts
/// the refusal. (In this file for its `serve` helpers.)
#[test]
fn serve_closes_a_connection_past_the_bound_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    repository(d, "[input]\nrange = [0.0, 1.0]\n");
    let (gw, addr, started) =
        serve_with(d, &["--state", "st", "--max-connections-per-address", "1"]);
    assert_eq!(started["max_connections_per_address"], 1, "{started}");
    // Let the readiness checks' connections end.
    std::thread::sleep(Duration::from_millis(300));
    let mut held = std::net::TcpStream::connect(&addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = |c: &mut std::net::TcpStream| {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") && c.read(&mut byte).unwrap_or(0) == 1 {
            got.push(byte[0]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    held.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(head(&mut held).starts_with("HTTP/1.1 200"));

    let mut second = std::net::TcpStream::connect(&addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = second.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut reply = Vec::new();
    let _ = second.read_to_end(&mut reply);
    assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));

    held.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut metrics = String::new();
    held.read_to_string(&mut metrics).unwrap();
    assert!(
        metrics.contains("palisade_connections_refused_total 1\n"),
        "{metrics}"
    );
    stop(gw);
}

/// `palisade bench-endpoint` (hidden, the benchmarks' bare endpoint) has no guards: it refuses
/// an address that is not loopback, and on loopback answers an infer with no key. SIGTERM ends
/// it normally (a build instrumented for profile-guided optimisation writes its profile only
/// then).
#[test]
fn the_bench_endpoint_listens_only_on_loopback_and_answers_without_a_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["bench-endpoint", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("only on a loopback address"), "{stderr}");

    stop(bench_endpoint().0);
}

/// `palisade --json bench-endpoint` on a port the system picks, once it has answered an infer
/// with 200: the process and the address it bound.
fn bench_endpoint() -> (Killed, String) {
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["--json", "bench-endpoint", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = listening(&started(&mut child).expect("the bench endpoint started"));
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = infer(&addr, "none");
        if s != 0 || Instant::now() > end {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "the bench endpoint's answer");
    (child, addr)
}

/// Sends `child` SIGTERM and returns how it ended, failing (not hanging) if it has not within
/// `limit`.
fn stopped_within(mut child: Killed, limit: Duration) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // Killed when dropped, on the way out of the panic.
    exited_within(&mut child, limit)
        .unwrap_or_else(|| panic!("still running {limit:?} after SIGTERM"))
}

/// A client that sent half a request does not keep the bench endpoint from ending on SIGTERM:
/// it has no header or body deadline, so the connections in flight get a bounded grace, and the
/// process still ends normally (review, 2026-12-07: it waited for ever).
#[test]
fn the_bench_endpoint_ends_on_sigterm_while_a_client_holds_half_a_request() {
    use std::io::Write as _;
    let (child, addr) = bench_endpoint();
    let mut heads = Vec::new();
    for half in [
        &b"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\n"[..],
        b"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    ] {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(half).unwrap();
        heads.push(c);
    }
    std::thread::sleep(Duration::from_millis(200));
    let status = stopped_within(child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    drop(heads);
}

/// A CA's PEM, and the PEM of a certificate for 127.0.0.1 it issued and of its key.
fn tls_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "palisade test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Sends one HTTP/1.1 request over TLS, trusting `ca`, and returns the status code (0 if there
/// was no answer, or the handshake failed).
fn https(addr: &str, ca: &str, request: &[u8]) -> u16 {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let Ok(tcp) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    if tls.write_all(request).is_err() {
        return 0;
    }
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply)
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `serve --tls-cert --tls-key` serves HTTPS (and says so), refuses plain HTTP, and unusable
/// files stop the start with an error naming the flag and the file.
#[test]
fn serve_over_tls_answers_https_and_refuses_unusable_files_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    repository(d, "[input]\nrange = [0.0, 1.0]\n");
    let (ca, cert, key) = tls_pki();
    std::fs::write(d.join("cert.pem"), &cert).unwrap();
    std::fs::write(d.join("key.pem"), &key).unwrap();

    // A missing key file: a clear error before anything else, exit status 2, no panic.
    let out = serve_in(
        d,
        "127.0.0.1:0",
        &["--tls-cert", "cert.pem", "--tls-key", "nokey.pem"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--tls-cert/--tls-key") && stderr.contains("nokey.pem"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("loading"),
        "models were loaded first: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // --tls-key alone is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["serve", "--tls-key", "key.pem"])
        .current_dir(d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    let ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (child, addr, started) = serve_until(
        d,
        &[
            "--state",
            "st",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ],
        |addr| https(addr, &ca, ready) == 200,
    );
    assert_eq!(started["tls"], "tls", "{started}");
    // Plain HTTP gets no answer.
    assert_eq!(http(&addr, ready), 0);
    stop(child);
}

/// Empty `PALISADE_TLS_*` variables (`${X:-}` in a compose file) mean no TLS, as unset ones do;
/// clap's path parser refused them and serve did not start (review, 2026-12-06).
#[test]
fn empty_tls_environment_variables_mean_no_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    repository(d, "[input]\nrange = [0.0, 1.0]\n");
    let mut child = Killed(
        serve_in(d, "127.0.0.1:0", &["--json"])
            .env("PALISADE_TLS_CERT", "")
            .env("PALISADE_TLS_KEY", "")
            .env("PALISADE_TLS_CLIENT_CA", "")
            .current_dir(d)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(d.join("serve.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    // Its log goes to a file: a pipe no one reads could fill and stop it.
    let exited = |status: std::process::ExitStatus| {
        let stderr = std::fs::read_to_string(d.join("serve.err")).unwrap_or_default();
        panic!("serve exited ({status}) instead of serving without TLS: {stderr}");
    };
    let Some(started) = started(&mut child) else {
        exited(child.wait().unwrap())
    };
    let addr = listening(&started);
    let ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            exited(status);
        }
        if http(&addr, ready) == 200 {
            break;
        }
        assert!(Instant::now() < end, "the gateway never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(child);
}
