//! Shared by the CLI's integration tests.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A model repository in `dir` (`repo/mnist/1`: the bundled model, unsigned) with `policy` as
/// the model's policy.
#[allow(dead_code)] // not every test binary has a repository
pub fn repository(dir: &Path, policy: &str) {
    let version = dir.join("repo/mnist/1");
    std::fs::create_dir_all(&version).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        root.join("models/mnist_cnn_public.onnx"),
        version.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(version.join("policy.toml"), policy).unwrap();
}

/// Sends one HTTP/1.1 request and returns the status code (0 if there was no answer).
#[allow(dead_code)]
pub fn http(addr: &str, request: &[u8]) -> u16 {
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = c.write_all(request);
    let mut reply = Vec::new();
    let _ = c.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// POSTs one MNIST-shaped JSON infer request (every pixel 0.5) to model `mnist` with `key`;
/// returns the status code.
#[allow(dead_code)]
pub fn infer(addr: &str, key: &str) -> u16 {
    let data = vec!["0.5"; 784].join(",");
    let body = format!(
        r#"{{"inputs": [{{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [{data}]}}]}}"#
    );
    let req = format!(
        "POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(addr, req.as_bytes())
}

/// A process killed when dropped: a test that fails leaves none running behind it.
#[allow(dead_code)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Killed {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// How `child` ended, if it has within `limit` (polled every 50 ms); `None` if it still runs.
#[allow(dead_code)]
pub fn exited_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What `palisade --json serve` (or `bench-endpoint`), spawned with its stdout piped, printed on
/// start: the first JSON value on its stdout, which says where it serves (and, from serve, gives
/// the first admin key, once); `None` if it exited first. Fails the test after 120 s of
/// silence. The rest is read on, so that the gateway never writes to a closed pipe.
#[allow(dead_code)]
pub fn started(child: &mut Child) -> Option<serde_json::Value> {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = std::io::BufReader::new(out);
        let mut text = String::new();
        let started = loop {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut out, &mut line).unwrap_or(0) == 0 {
                break None;
            }
            text.push_str(&line);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                break Some(v);
            }
        };
        let _ = tx.send(started);
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the gateway printed nothing it could be told started by within 120 s")
}

/// The HTTP address the gateway bound, from what it printed on start.
#[allow(dead_code)]
pub fn listening(started: &serde_json::Value) -> String {
    started["listening"]
        .as_str()
        .unwrap_or_else(|| panic!("the gateway did not say where it listens: {started}"))
        .to_string()
}

/// `palisade --json serve` in `dir` with `args`, on a port the system picks, once `ready` holds
/// for it: the process, the address it bound and the JSON it printed on start.
#[allow(dead_code)]
pub fn serve_until(
    dir: &Path,
    args: &[&str],
    ready: impl Fn(&str) -> bool,
) -> (Killed, String, serde_json::Value) {
    // Port 0, read back from what the gateway prints: a port found free beforehand could be
    // taken by another test's process before the gateway binds it.
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["--json", "serve", "--models", "repo"])
            .args(args)
            .args([
                "--allow-unsigned",
                "--listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "none",
            ])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = started(&mut child).expect("the gateway exited before it said where it serves");
    let addr = listening(&started);
    let end = Instant::now() + Duration::from_secs(120);
    while !ready(&addr) {
        assert!(Instant::now() < end, "the gateway never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, addr, started)
}

/// `palisade serve` of the repository in `d` (unsigned), its state in `st`, with `args`,
/// listening on `listen` and not on a second address: to run as the caller chooses.
#[allow(dead_code)]
pub fn serve_in(d: &Path, listen: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_palisade"));
    c.args([
        "serve",
        "--models",
        "repo",
        "--allow-unsigned",
        "--state",
        "st",
    ])
    .args(args)
    .args(["--listen", listen, "--grpc-listen", "none"])
    .current_dir(d);
    c
}
