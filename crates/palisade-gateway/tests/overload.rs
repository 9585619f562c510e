//! A full inference queue: the request that finds it full is refused 503 with `Retry-After`,
//! audited and counted as an overload, without being charged to the caller's rate limit or daily
//! budget, and the calls already waiting are answered once the model frees up. A request
//! admitted before the queue filled is served, not refused after its charge. Idle connections
//! up to the process's open-file limit do not lock out a client that sends requests. A model
//! call past its deadline is answered 504 and its thread is stood in for.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use palisade_gateway::pool::InferencePool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inference_queue_answers_503_and_the_waiting_calls_are_served() {
    // A quota of three requests (per-key burst and daily budget alike).
    let policy = format!(
        "{LIN_POLICY}[limits]\nper_key = {{ rate = 1, period_ms = 600000, burst = 3 }}\ndaily_budget = 3\n"
    );
    let slow = Slow::start(&policy, Some(1)).await;
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    let [running, waiting] = slow.fill(&body).await;

    let refused = slow.infer(&body).await.unwrap();
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(
        refused.headers.get("retry-after").map(String::as_str),
        Some("1")
    );
    assert!(refused.error().contains("busy"), "{refused:?}");

    // Open the gate: both calls that got in are answered.
    slow.open_gate();
    for r in [running.await.unwrap(), waiting.await.unwrap()] {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["outputs"][0]["shape"], serde_json::json!([1, 3]));
    }
    // The refused request cost no quota: a third request is served, with nothing left after it
    // (charged, the overload would have left none for it: 429), and a fourth is over the quota.
    let third = slow.infer(&body).await.unwrap();
    assert_eq!(third.status, 200, "{third:?}");
    let state = third.headers.get("ratelimit").cloned().unwrap_or_default();
    assert!(
        state.contains("\"key\";r=0") && state.contains("\"day\";r=0"),
        "{state}"
    );
    let fourth = slow.infer(&body).await.unwrap();
    assert_eq!(fourth.status, 429, "{fourth:?}");

    let metrics = request(slow.s.addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("palisade_guard_rejections_total{guard=\"overload\"} 1"),
        "{text}"
    );
    // The refusal is in the audit log like any other.
    let decisions: Vec<String> = slow
        .s
        .audit_entries(0)
        .iter()
        .map(|e| e["decision"].to_string())
        .collect();
    assert_eq!(
        decisions
            .iter()
            .filter(|d| d.contains("denied:overload"))
            .count(),
        1,
        "{decisions:?}"
    );
    slow.s.stop().await;
}

/// A model call past the policy's `inference.timeout_ms`, or past the request's own `timeout`
/// parameter if that is shorter, is answered 504, audited `error` and counted; the one
/// inference thread, held, is stood in for, so another model is still served meanwhile. Before,
/// the request waited for as long as the model did, and the held thread served nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_call_past_its_deadline_is_a_504_and_another_thread_serves_on() {
    let slow = Slow::start(
        &format!("{LIN_POLICY}[inference]\ntimeout_ms = 300\n"),
        None,
    )
    .await;
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    let t = std::time::Instant::now();
    let late = slow.infer(&body).await.unwrap();
    assert_eq!(late.status, 504, "{late:?}");
    assert!(
        late.error()
            .contains("within 300 ms (the model's inference.timeout_ms)"),
        "{late:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "it waited for the model"
    );
    assert_eq!(slow.pool.stuck(), 1);
    let entry = slow.entries(0).pop().expect("an audit entry");
    assert_eq!(
        (entry["decision"].as_str(), entry["status"].as_u64()),
        (Some("error"), Some(504)),
        "{entry}"
    );

    // The thread is held by the gate; another model is served on the thread standing in.
    let other = post_infer(slow.s.addr, "lin", &bearer(&slow.s.query), &body).await;
    assert_eq!(other.status, 200, "{other:?}");

    // The request's own deadline, in microseconds (Triton's `timeout`), when it is shorter.
    let hurried = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32",
                    "data": [0.1, 0.2, 0.3, 0.4]}],
        "parameters": {"timeout": 50_000}
    });
    let r = slow.infer(hurried.to_string().as_bytes()).await.unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.error().contains("within 50 ms"), "{r:?}");

    let metrics = request(slow.s.addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        "palisade_inference_timeouts_total{model=\"slow\"} 2",
        "palisade_inference_threads_stuck 2",
    ] {
        assert!(text.contains(line), "no {line} in\n{text}");
    }
    // Once the model returns, the threads given up on end, and the pool serves as before.
    slow.open_gate();
    wait_until(|| slow.pool.stuck() == 0).await;
    let again = slow.infer(&body).await.unwrap();
    assert_eq!(again.status, 200, "{again:?}");
    slow.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_still_sending_their_bodies_do_not_fill_the_inference_queue() {
    // One thread, at most one call waiting: were a place in the queue taken on admission,
    // one stalled upload would have every other request refused while the thread idles.
    let pool = Arc::new(InferencePool::new(Some(1), Some(1)).unwrap());
    let s = start_on(None, Some(pool.clone())).await;
    let auth = bearer(&s.query);
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(stalled_infer(s.addr, "lin", &auth, &body).await);
    }
    // Let the server read what was sent and pass the two requests through the guards it can.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let r = post_infer(s.addr, "lin", &auth, &body).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(pool.queued(), 0);
    drop(stalled);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_admitted_before_the_queue_filled_is_served_not_refused_after_its_charge() {
    let slow = Slow::start(LIN_POLICY, Some(1)).await;
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    // Admitted (and charged) while the queue is empty; its body is still on the way.
    let late = stalled_infer(slow.s.addr, "slow", &slow.auth, &body).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let [running, waiting] = slow.fill(&body).await;
    // A new request is refused at admission...
    let refused = slow.infer(&body).await.unwrap();
    assert_eq!(refused.status, 503, "{refused:?}");
    // ...but the admitted one, its body complete, goes into the queue past the limit.
    let rest = body[body.len() / 2..].to_vec();
    let late = tokio::spawn(async move { finish_stalled(late, &rest).await });
    wait_until(|| slow.pool.queued() == 2).await;
    slow.open_gate();
    for r in [
        running.await.unwrap(),
        waiting.await.unwrap(),
        late.await.unwrap(),
    ] {
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(slow.pool.queued(), 0);
    slow.s.stop().await;
}

const FLOOD_CHILD: &str = "PALISADE_TEST_FD_FLOOD_CHILD";

/// A client opens more connections than the server's open-file limit allows (256, a stand-in for
/// the usual 1,024) and sends nothing; a client that then sends a request is answered at once,
/// not after the idle ones' 30 s first-request deadline (before the bound on connections,
/// `accept` failed with EMFILE until then). The server runs in a child process, which alone has
/// the low limit.
#[test]
fn idle_connections_past_the_open_file_limit_do_not_lock_out_a_client() {
    use std::io::BufRead as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const NAME: &str = "idle_connections_past_the_open_file_limit_do_not_lock_out_a_client";
    if let Some(files) = std::env::var_os(FLOOD_CHILD) {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let files: u64 = files.to_str().unwrap().parse().unwrap();
        let limit = Rlimit {
            current: Some(files),
            maximum: getrlimit(Resource::Nofile).maximum,
        };
        setrlimit(Resource::Nofile, limit).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("PORT {}", listener.local_addr().unwrap().port());
            let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
            palisade_gateway::serve(listener, router, std::future::pending())
                .await
                .unwrap();
        });
        return;
    }
    // The server may open 256 files (fewer where this process's hard limit would not leave room
    // for its own connections to it, more than the server's limit).
    let (_, usable) = palisade_gateway::listen::raise_open_files_limit().unwrap();
    let files = usable.map_or(256, |n| n.saturating_sub(100).clamp(32, 256));
    let idle_count = files + 64;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(FLOOD_CHILD, files.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let _child = Kill(child);
    let port: u16 = loop {
        let line = lines.next().expect("the server printed its port").unwrap();
        if let Some(p) = line.split("PORT ").nth(1) {
            break p.trim().parse().unwrap();
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut idle = Vec::new();
        for _ in 0..idle_count {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..3 {
            let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
            ok.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut reply = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), ok.read_to_end(&mut reply))
                .await
                .expect("a request was answered within 5 s despite the idle connections")
                .unwrap();
            let reply = String::from_utf8_lossy(&reply);
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        }
        drop(idle);
    });
}

/// With `--inference-queue 1`, a request whose own `timeout` has passed while it waited
/// in the queue is answered 504 and dropped; it is no longer a call waiting for the model, so
/// the next request is not refused 503 "1 model call is already waiting" for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_at_its_timeout_does_not_hold_the_queue_full() {
    let slow = Slow::start(LIN_POLICY, Some(1)).await;
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    // One call holds the one thread (the policy's deadline, 30 s, is far off).
    let running = slow.infer(&body);
    wait_until(|| slow.entered.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    let hurried = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32",
                    "data": [0.1, 0.2, 0.3, 0.4]}],
        "parameters": {"timeout": 200_000}
    })
    .to_string();
    let first = slow.infer(hurried.as_bytes()).await.unwrap();
    assert_eq!(first.status, 504, "{first:?}");
    let queued = slow.pool.queued();
    // Nothing waits for the model now: the next request is queued, then times out too.
    let second = slow.infer(hurried.as_bytes()).await.unwrap();
    slow.open_gate();
    let _ = running.await;
    assert_eq!(
        second.status, 504,
        "queued() = {queued} after the first was answered 504: {second:?}"
    );
    slow.s.stop().await;
}
