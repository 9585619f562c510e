//! A client that sends its headers and then stalls its body is answered 408 once the model's
//! `input.body_timeout_ms` runs out, the connection is closed, the refusal is audited, and the
//! gateway goes on serving.

mod common;

use std::time::{Duration, Instant};

use common::*;
use palisade_gateway::audit::AuditLog as _;
use tokio::io::AsyncReadExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_when_the_policy_s_wait_runs_out() {
    let s = start().await;
    let policy = format!("{LIN_POLICY}body_timeout_ms = 300\n");
    s.models.deploy(served("slow", "1", &policy)).unwrap();
    let auth = query_auth(&s, "slow");
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);

    let mut conn = stalled_infer(s.addr, "slow", &auth, &body).await;
    let t = Instant::now();
    // The server answers and closes: read to the end (bounded, so a hang fails the test).
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply))
        .await
        .expect("the gateway answered and closed the connection")
        .unwrap();
    let waited = t.elapsed();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within 300 ms"), "{text}");
    assert!(
        waited >= Duration::from_millis(250),
        "answered after {waited:?}"
    );

    // A request that sends its whole body is served as ever.
    let ok = post_infer(s.addr, "slow", &auth, &body).await;
    assert_eq!(ok.status, 200, "{ok:?}");

    let n = s.state.audit.size().unwrap();
    let refused = (0..n)
        .filter_map(|i| s.state.audit.entry(i).unwrap())
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e).unwrap())
        .filter(|e| e["status"] == 408)
        .count();
    assert_eq!(refused, 1);
    s.stop().await;
}
