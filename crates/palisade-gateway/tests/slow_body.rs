//! A client that sends its headers and then stalls its body is answered 408 once the model's
//! `input.body_timeout_ms` runs out, the connection is closed, the refusal is audited, and the
//! gateway goes on serving. A gRPC body is held to its own model's deadline too.

mod common;

use std::time::{Duration, Instant};

use common::*;
use palisade_gateway::keys::{KeyStore as _, Role};
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

    let refused = s
        .audit_entries(0)
        .iter()
        .filter(|e| e["status"] == 408)
        .count();
    assert_eq!(refused, 1);
    s.stop().await;
}

/// Sends gRPC `message` to `method` over HTTP/2, framed, in two halves `pause` apart; returns
/// the call's `grpc-status` and `grpc-message`.
async fn grpc_slowly(
    addr: std::net::SocketAddr,
    method: &str,
    message: &[u8],
    auth: &str,
    pause: Duration,
) -> (String, String) {
    use bytes::Bytes;
    use http_body_util::channel::Channel;
    use hyper::body::Frame;

    let frame = grpc_frame(message);
    let (mut tx, body) = Channel::<Bytes>::new(2);
    let call = tokio::spawn({
        let (auth, method) = (auth.to_string(), method.to_string());
        async move { grpc_raw_to(addr, &method, &auth, body).await }
    });
    let half = frame.len() / 2;
    tx.send_data(Bytes::copy_from_slice(&frame[..half]))
        .await
        .unwrap();
    tokio::time::sleep(pause).await;
    // The server may have answered already; the rest then has nowhere to go.
    let _ = tx
        .send(Frame::data(Bytes::copy_from_slice(&frame[half..])))
        .await;
    drop(tx);
    call.await.unwrap()
}

/// [`grpc_slowly`] with an infer call to `model`.
async fn grpc_infer_slowly(
    addr: std::net::SocketAddr,
    model: &str,
    auth: &str,
    pause: Duration,
) -> (String, String) {
    let message = lin_infer_message(model);
    grpc_slowly(addr, "ModelInfer", &message, auth, pause).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_body_is_held_to_its_model_s_deadline() {
    let s = start().await;
    let policy = format!("{LIN_POLICY}body_timeout_ms = 300\n");
    s.models.deploy(served("quick", "1", &policy)).unwrap();
    let quick = query_auth(&s, "quick");
    let both = s
        .state
        .keys
        .create(
            "both",
            &[Role::Query("lin".into()), Role::Query("quick".into())],
            None,
            now_ms(),
        )
        .unwrap();
    let both = bearer(&both);
    let pause = Duration::from_millis(600);

    // A key for both models gets "lin"'s 30 s before the model is known. 600 ms is within
    // them: served. Past "quick"'s 300 ms: DEADLINE_EXCEEDED (4), from validate, which holds
    // the time the message took against the model it names.
    let (code, message) = grpc_infer_slowly(s.addr, "lin", &both, pause).await;
    assert_eq!(code, "0", "{message}");
    let (code, message) = grpc_infer_slowly(s.addr, "quick", &both, pause).await;
    assert_eq!(code, "4", "{message}");
    assert!(message.contains("300 ms"), "{message}");

    // Audited by the guards, as a REST body past its deadline is.
    let last = s.last_audit_entry();
    assert_eq!(last["status"], 408, "{last}");
    assert_eq!(last["decision"], "denied:validate", "{last}");
    assert_eq!(last["method"], "GRPC ModelInfer", "{last}");

    // Before the model is known a key gets the longest deadline of the models it may query,
    // and no less than 2 s. Sent in halves 2.3 s apart: "quick"'s key calling "lin" is refused
    // DEADLINE_EXCEEDED at 2 s (given "lin"'s 30 s, it would be read whole and refused
    // PERMISSION_DENIED, 7); no key and a forged key are refused UNAUTHENTICATED (16) at once,
    // before the body is read (`grpc::keyfirst`). All are audited before the guards.
    let forged = format!("{}x", bearer(&s.query));
    let late = Duration::from_millis(2300);
    let before = s.audit_entries(0).len() as u64;
    let (a, b, c) = tokio::join!(
        grpc_infer_slowly(s.addr, "lin", &quick, late),
        grpc_infer_slowly(s.addr, "lin", "", late),
        grpc_infer_slowly(s.addr, "lin", &forged, late),
    );
    assert_eq!(a.0, "4", "{}", a.1);
    assert!(a.1.contains("2000 ms"), "{}", a.1);
    for (code, message) in [b, c] {
        assert_eq!(code, "16", "{message}");
    }
    let mut refused = s.audit_entries(before);
    refused.sort_by_key(|e| e["status"].as_u64());
    let statuses: Vec<_> = refused.iter().map(|e| e["status"].clone()).collect();
    assert_eq!(statuses, [401, 401, 408], "{refused:#?}");
    for e in &refused {
        assert_eq!(e["decision"], "denied:grpc", "{e}");
    }
    // Health calls get the 2 s, with or without a key, though "quick" allows 300 ms.
    for auth in ["", quick.as_str()] {
        let (code, message) = grpc_slowly(s.addr, "ServerLive", &[], auth, pause).await;
        assert_eq!(code, "0", "{auth:?}: {message}");
    }
    s.stop().await;
}
