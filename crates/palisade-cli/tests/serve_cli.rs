//! End-to-end: `palisade serve` with every model of its repository unloaded (Triton's unload,
//! noted in the state folder) starts serving none and ready, so that a load can serve one again;
//! a repository with no model it may serve is still an error. And `serve` writes the traces it
//! took when it stops.

mod common;
use common::{Killed, exited_within, http, infer, repository, serve_in, serve_until};

const READY: &[u8] = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[test]
fn a_repository_whose_models_were_all_unloaded_starts_serving_none_and_ready() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    repository(d, "");
    std::fs::create_dir_all(d.join("st")).unwrap();
    std::fs::write(
        d.join("st/rolled-back.json"),
        br#"{"rolled_back": [], "unloaded": ["mnist"]}"#,
    )
    .unwrap();
    let (_gw, addr, started) = serve_until(d, &["--state", "st"], |a| http(a, READY) == 200);
    // Not served: none listed at start, and the model not found by a key that may query it (the
    // first admin key may query every model).
    assert_eq!(started["models"], serde_json::json!([]), "{started}");
    let key = started["key"].as_str().expect("the first admin key");
    let ask = format!(
        "GET /v2/models/mnist/ready HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(http(&addr, ask.as_bytes()), 404);
}

#[test]
fn a_repository_with_no_model_to_serve_is_an_error_whatever_was_unloaded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("repo")).unwrap();
    std::fs::create_dir_all(d.join("st")).unwrap();
    // A note of a model the folder no longer holds does not make an empty folder servable.
    std::fs::write(
        d.join("st/rolled-back.json"),
        br#"{"rolled_back": [], "unloaded": ["gone"]}"#,
    )
    .unwrap();
    // Run with a deadline: a regression would serve instead of exiting.
    let mut gw = Killed(
        serve_in(d, "127.0.0.1:0", &[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = exited_within(&mut gw, std::time::Duration::from_secs(60))
        .expect("serve still runs after 60 s on a folder with no model to serve");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut gw.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("holds no model that may be served"), "{err}");
}

/// The traces `serve` took and had not written (`log_frequency` 0: written when tracing stops)
/// are written when it stops on SIGTERM, in Triton's format, each naming its audit entry.
#[test]
fn serve_writes_the_traces_it_took_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    repository(d, "");
    let (mut gw, addr, started) = serve_until(d, &["--state", "st"], |a| http(a, READY) == 200);
    let key = started["key"].as_str().expect("the first admin key");
    let secret = started["totp_secret"].as_str().expect("its TOTP secret");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let code = palisade_gateway::keys::totp_code(secret, now_ms).unwrap();
    let body = r#"{"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}"#;
    let change = format!(
        "POST /v2/trace/setting HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nX-Palisade-TOTP: {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(http(&addr, change.as_bytes()), 200);
    for _ in 0..2 {
        assert_eq!(infer(&addr, key), 200);
    }
    let written = d.join("st/traces/trace.json.0");
    assert!(!written.exists(), "written before tracing stopped");
    std::process::Command::new("kill")
        .args(["-TERM", &gw.id().to_string()])
        .status()
        .unwrap();
    let status = exited_within(&mut gw, std::time::Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let traces: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
    let models: Vec<_> = traces
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t.get("model_name").is_some())
        .map(|t| {
            (
                t["model_name"].as_str().unwrap_or(""),
                t["audit_index"].is_u64(),
            )
        })
        .collect();
    assert_eq!(models, [("mnist", true); 2]);
}
