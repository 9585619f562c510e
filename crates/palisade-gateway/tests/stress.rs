//! Request execution under stress: clients that leave, malformed gRPC, rollbacks at once,
//! panicking models, shutdown with calls queued (review, 2026-12-06).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use ndarray::{Array2, ArrayViewD};
use palisade_core::{Classifier, LinearClassifier, ModelError, ModelInfo};
use palisade_gateway::pool::InferencePool;

/// A client that sends a whole infer request, is charged for it and has the model run for it,
/// then disconnects before the answer: the request still gets its audit entry, with status 499
/// (it had none: the log and the limits disagreed about what the key did, and model calls could
/// be made without a trace on the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charged_request_whose_client_disconnects_still_has_an_audit_entry() {
    let policy =
        format!("{LIN_POLICY}[limits]\nper_key = {{ rate = 1, period_ms = 600000, burst = 5 }}\n");
    let slow = Slow::start(&policy, None).await;
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    let before = slow.s.audit_entries(0).len() as u64;

    // The whole request is sent; the model runs for it; then the client goes away.
    let conn = slow.send_and_keep(&body).await;
    wait_until(|| slow.entered.load(Ordering::SeqCst) == 1).await;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.open_gate();

    // The next request is served and shows two units charged to the key (5 - 2 = 3 left).
    let r = slow.infer(&body).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let state = r.headers.get("ratelimit").cloned().unwrap_or_default();
    assert!(state.contains("\"key\";r=3"), "two charges: {state}");
    // The first request's entry is written by the task that finished it: wait for it (at most
    // the 10 s `wait_until` allows), then make sure no third one comes.
    wait_until(|| slow.entries(before).len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let entries = slow.entries(before);
    assert_eq!(
        entries.len(),
        2,
        "two requests charged and run, but the audit log holds only: {entries:#?}"
    );
    let statuses: Vec<_> = entries.iter().map(|e| e["status"].as_u64()).collect();
    assert!(statuses.contains(&Some(499)), "{entries:#?}");
    assert!(statuses.contains(&Some(200)), "{entries:#?}");
    assert!(
        entries.iter().all(|e| e["decision"] == "allowed"),
        "{entries:#?}"
    );
    slow.s.stop().await;
}

/// A request whose client leaves while its call waits for an inference thread is audited (499)
/// but the model is not run for it: nobody would read the scores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_whose_client_left_is_audited_and_not_run() {
    let slow = Slow::start(LIN_POLICY, None).await;
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    let before = slow.s.audit_entries(0).len() as u64;
    // The first call holds the only inference thread.
    let first = slow.infer(&body);
    wait_until(|| slow.entered.load(Ordering::SeqCst) == 1).await;
    // The second waits in the queue, and its client leaves.
    let conn = slow.send_and_keep(&body).await;
    wait_until(|| slow.pool.queued() == 1).await;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    slow.open_gate();
    assert_eq!(first.await.unwrap().status, 200);
    wait_until(|| slow.entries(before).len() >= 2).await;
    let entries = slow.entries(before);
    let statuses: Vec<_> = entries.iter().map(|e| e["status"].as_u64()).collect();
    assert!(statuses.contains(&Some(499)), "{entries:#?}");
    assert_eq!(
        slow.entered.load(Ordering::SeqCst),
        1,
        "the model ran for a client that left"
    );
    slow.s.stop().await;
}

/// Requests whose client left are finished in tasks of their own, which nothing else bounds: at
/// the bound a new request waits before anything is done for it, and goes on once one of them
/// has its entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requests_wait_while_the_bound_on_requests_whose_client_left_is_reached() {
    let slow = Slow::start_tweaked(LIN_POLICY, None, |gw| gw.bound_orphans(1)).await;
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    let before = slow.s.audit_entries(0).len() as u64;
    // The first request's model call runs (held at the gate), and its client leaves.
    let conn = slow.send_and_keep(&body).await;
    wait_until(|| slow.entered.load(Ordering::SeqCst) == 1).await;
    drop(conn);
    let finishing = |n: usize| {
        let addr = slow.s.addr;
        async move {
            let m = request(addr, "GET", "/metrics", &[], b"").await;
            String::from_utf8_lossy(&m.body)
                .contains(&format!("palisade_requests_client_left_finishing {n}\n"))
        }
    };
    for _ in 0..500 {
        if finishing(1).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        finishing(1).await,
        "the request whose client left is not being finished"
    );
    // The second waits in the audit guard: it is neither admitted to the inference queue nor
    // audited yet.
    let second = slow.infer(&body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(slow.pool.queued(), 0, "a request went on past the bound");
    assert!(!second.is_finished());
    assert!(slow.entries(before).is_empty());
    // Once the first has its entry, the second goes on and is answered.
    slow.open_gate();
    assert_eq!(second.await.unwrap().status, 200);
    let statuses: Vec<_> = slow
        .entries(before)
        .iter()
        .map(|e| e["status"].as_u64())
        .collect();
    assert_eq!(statuses, [Some(499), Some(200)]);
    assert!(finishing(0).await);
    slow.s.stop().await;
}

/// The admin and audit routes have a bound of their own on requests whose client left: model
/// requests left behind a model call that does not return must not hold up the audit API or a
/// key's revocation (review, 2026-12-06: with one bound they waited behind them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_left_behind_a_stuck_model_call_do_not_hold_up_the_admin_routes() {
    let slow = Slow::start_tweaked(LIN_POLICY, None, |gw| gw.bound_orphans(1)).await;
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    let conn = slow.send_and_keep(&body).await;
    wait_until(|| slow.entered.load(Ordering::SeqCst) == 1).await;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let auditor = bearer(&slow.s.auditor);
    let asked = tokio::time::timeout(
        Duration::from_secs(5),
        request(
            slow.s.addr,
            "GET",
            "/v2/audit/checkpoint",
            &[("Authorization", auditor.as_str())],
            b"",
        ),
    )
    .await
    .expect("the audit API waited behind a model request whose client left");
    assert!(asked.status == 200 || asked.status == 404, "{asked:?}");
    slow.open_gate();
    slow.s.stop().await;
}

/// A ModelInfer message that is not valid protobuf is the client's fault: it should be refused
/// `INVALID_ARGUMENT` (3), as the gateway's own audit entry for it says (status 400). tonic answers
/// `INTERNAL` (13), which tells the client, its retry policy and its alerts that the server broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_grpc_message_is_refused_invalid_argument() {
    let s = start().await;
    let garbage = http_body_util::Full::new(bytes::Bytes::from(grpc_frame(&[0xff; 3])));
    let (status, message) = grpc_raw(s.addr, &bearer(&s.query), garbage).await;
    let entry = s.last_audit_entry();
    assert_eq!(entry["status"], 400, "{entry}");
    assert_eq!(
        status, "3",
        "a malformed message answered grpc-status {status} ({message}), not INVALID_ARGUMENT"
    );
    assert!(
        message.contains("not a valid ModelInferRequest"),
        "{message}"
    );
    // So for every method: the service's codec decodes them all. And a body without a message
    // or with a frame cut short is the client's fault too, for every method (tonic answers
    // both `INTERNAL`).
    let cut_short = grpc_frame(&[0x0a, 0x01, b'x'])[..6].to_vec();
    for method in [
        "ModelInfer",
        "ModelMetadata",
        "ModelReady",
        "ServerMetadata",
        "ServerLive",
    ] {
        for body in [grpc_frame(&[0xff; 3]), Vec::new(), cut_short.clone()] {
            if method == "ModelInfer" && body == grpc_frame(&[0xff; 3]) {
                continue;
            }
            let sent = format!("{body:02x?}");
            let body = http_body_util::Full::new(bytes::Bytes::from(body));
            let (status, message) = grpc_raw_to(s.addr, method, &bearer(&s.query), body).await;
            assert_eq!(status, "3", "{method} {sent}: {message}");
        }
    }
    s.stop().await;
}

/// Two rollbacks of one model at once (two operators, or a retried request): one rolls the
/// active version back, the other finds it moved (409) and, undoing its own note, takes the
/// version off `rolled-back.json` although the first rollback took it down. The next start then
/// loads it again, and as the highest version it is the active one: the rollback answered 200 is
/// undone by a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rollbacks_keep_the_version_rolled_back_withdrawn() {
    use palisade_gateway::admin::{AdminState, router};
    use palisade_gateway::loader::Withdrawn;
    use palisade_gateway::{LocalState, ModelRepository};
    use tower::ServiceExt as _;

    let dir = tempfile::tempdir().unwrap();
    let state = LocalState::open(
        dir.path(),
        palisade_gateway::audit::CheckpointPolicy::default(),
        palisade_gateway::audit::Durability::Full,
    )
    .unwrap();
    let gw = state.gateway(Arc::new(ModelRepository::new())).unwrap();
    for attempt in 0..40 {
        let path = dir.path().join(format!("rolled-back-{attempt}.json"));
        let models = Arc::new(ModelRepository::new());
        for v in ["1", "2", "3"] {
            models.deploy(served("m", v, LIN_POLICY)).unwrap();
        }
        let withdrawn = Arc::new(Withdrawn::open(&path).unwrap());
        let app = router(AdminState {
            keys: gw.keys.clone(),
            models: models.clone(),
            audit: gw.audit.clone(),
            audit_public_key: gw.audit_public_key,
            source: None,
            withdrawn: Some(withdrawn),
            limits: gw.limits.clone(),
            log: None,
            trace: None,
        });
        let call = || {
            let app = app.clone();
            tokio::spawn(async move {
                let req = axum::http::Request::post("/v2/admin/models/m/rollback")
                    .body(axum::body::Body::empty())
                    .unwrap();
                app.oneshot(req).await.unwrap().status().as_u16()
            })
        };
        let (a, b) = (call(), call());
        let statuses = [a.await.unwrap(), b.await.unwrap()];
        // What the next start reads.
        let on_disk = Withdrawn::open(&path).unwrap();
        let served_now = models.versions("m");
        for v in ["1", "2", "3"] {
            if !served_now.iter().any(|s| s == v) {
                assert!(
                    on_disk.contains("m", v),
                    "attempt {attempt}: rollbacks answered {statuses:?}, version {v} is no \
                     longer served, but rolled-back.json does not hold it: a restart serves it \
                     again (served now: {served_now:?})"
                );
            }
        }
    }
}

/// A model that panics, or fails, is answered 500 and audited `error`, without the panic's or
/// the error's text (the gateway's log has it), and the one inference thread goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_model_is_a_500_and_the_pool_goes_on() {
    struct Panics(LinearClassifier);
    impl Classifier for Panics {
        fn info(&self) -> &ModelInfo {
            self.0.info()
        }
        fn logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
            match x.shape()[0] {
                2 => panic!("a model bug on a batch of two"),
                3 => Err(ModelError::Labels("internals at /opt/models/boom".into())),
                _ => self.0.logits(x),
            }
        }
    }
    let pool = Arc::new(InferencePool::new(Some(1), Some(4)).unwrap());
    let s = start_on(None, Some(pool.clone())).await;
    let mut m = served("boom", "1", LIN_POLICY);
    m.classifier = Arc::new(Panics(linear("boom")));
    s.models.deploy(m).unwrap();
    let auth = query_auth(&s, "boom");
    for _ in 0..3 {
        let r = post_infer(s.addr, "boom", &auth, &json_infer(&[0.5; 8], 2)).await;
        assert_eq!(r.status, 500, "{r:?}");
        // The panic's message stays in the gateway's log.
        assert!(!r.error().contains("model bug"), "{r:?}");
        let e = s.last_audit_entry();
        assert_eq!(e["decision"], "error", "{e}");
        assert_eq!(e["status"], 500, "{e}");
        let r = post_infer(s.addr, "boom", &auth, &json_infer(&[0.5; 12], 3)).await;
        assert_eq!(r.status, 500, "{r:?}");
        assert!(!r.error().contains("internals"), "{r:?}");
        let r = post_infer(s.addr, "boom", &auth, &json_infer(&[0.5; 4], 1)).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(pool.queued(), 0);
    s.stop().await;
}

/// A shutdown with one call running and one queued answers both (200, audited)
/// once the model frees up, and the server then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_running_and_queued_calls() {
    let slow = Slow::start(LIN_POLICY, None).await;
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    let [running, queued] = slow.fill(&body).await;
    let before = slow.s.audit_entries(0).len();
    let state = slow.s.state.clone();
    let Slow { s, gate, .. } = slow;
    let stopping = tokio::spawn(s.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished());
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    for r in [running.await.unwrap(), queued.await.unwrap()] {
        assert_eq!(r.status, 200, "{r:?}");
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stopped in bounded time")
        .unwrap();
    use palisade_gateway::audit::AuditLog as _;
    assert_eq!(state.audit.size().unwrap() as usize, before + 2);
}
