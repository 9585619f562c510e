//! End-to-end: `palisade serve` with every model of its repository unloaded (Triton's unload,
//! noted in the state folder) starts serving none and ready, so that a load can serve one again;
//! a repository with no model it may serve is still an error.

mod common;
use common::{http, repository, serve_in, serve_until};

const READY: &[u8] = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
const MODEL_READY: &[u8] =
    b"GET /v2/models/mnist/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

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
    let (mut gw, addr, started) = serve_until(d, &["--state", "st"], |a| http(a, READY) == 200);
    // Not served: the model's own readiness is refused (no key) or not found, never ready.
    assert_ne!(http(&addr, MODEL_READY), 200);
    assert!(started["key"].is_string(), "{started}");
    gw.kill().unwrap();
    gw.wait().unwrap();
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
    let out = serve_in(d, "127.0.0.1:0", &[]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no model that may be served"), "{err}");
}
