//! Triton's statistics extension under load and refusal: every infer request that reaches
//! validation counts exactly once, a success or a failure, on the version that served it
//! (probes of the 2026-12-07 review, kept as regression tests).

mod common;

use std::io::Write as _;

use common::*;

/// `model` version `version`'s statistics, read with the admin key.
async fn stats_of(s: &Server, model: &str, version: &str) -> serde_json::Value {
    let r = request(
        s.addr,
        "GET",
        &format!("/v2/models/{model}/versions/{version}/stats"),
        &[("Authorization", &bearer(&s.admin))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["model_stats"][0].clone()
}

/// (successes, failures) of a statistics entry.
fn outcomes(v: &serde_json::Value) -> (u64, u64) {
    let count = |k: &str| v["inference_stats"][k]["count"].as_u64().unwrap();
    (count("success"), count("fail"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_infers_good_and_bad_are_each_counted_once() {
    let s = start().await;
    let q = bearer(&s.query);
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (addr, q) = (s.addr, q.clone());
            tokio::spawn(async move {
                // One in three does not validate (3 values for a [1, 1, 2, 2] input).
                let body = if i % 3 == 0 {
                    json_infer(&[0.1; 3], 1)
                } else {
                    json_infer(&[0.1; 8], 2)
                };
                post_infer(addr, "lin", &q, &body).await.status
            })
        })
        .collect();
    let mut answered = Vec::new();
    for t in tasks {
        answered.push(t.await.unwrap());
    }
    assert_eq!(answered.iter().filter(|&&c| c == 200).count(), 16);
    let v = stats_of(&s, "lin", "1").await;
    assert_eq!(outcomes(&v), (16, 8), "{v}");
    assert_eq!(
        (&v["inference_count"], &v["execution_count"]),
        (&32.into(), &16.into())
    );
    assert_eq!(v["batch_stats"][0]["batch_size"], 2, "{v}");
    assert_eq!(v["batch_stats"][0]["compute_infer"]["count"], 16, "{v}");
    s.stop().await;
}

/// Bodies validation refuses (corrupt gzip, an encoding it does not take, over the size limit)
/// are failures; a gzip body that decodes is a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bodies_are_failures_and_a_gzip_body_a_success() {
    let s = start().await;
    let q = bearer(&s.query);
    let body = json_infer(&[0.1; 4], 1);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let gz = gz.finish().unwrap();
    let post = |encoding: &'static str, b: Vec<u8>| {
        let (addr, q) = (s.addr, q.clone());
        async move {
            let headers = [
                ("Authorization", q.as_str()),
                ("Content-Encoding", encoding),
            ];
            request(addr, "POST", "/v2/models/lin/infer", &headers, &b)
                .await
                .status
        }
    };
    assert_eq!(post("gzip", gz.clone()).await, 200);
    assert_eq!(post("gzip", gz[..gz.len() / 2].to_vec()).await, 400);
    assert_eq!(post("br", body.clone()).await, 415);
    // LIN_POLICY's max_body_bytes is 4096.
    assert_eq!(post("identity", vec![b' '; 5000]).await, 413);
    assert_eq!(outcomes(&stats_of(&s, "lin", "1").await), (1, 3));
    s.stop().await;
}

/// A batch the later charge refuses (429 after validation) is a failure; reading statistics
/// charges nothing, though the model allows three samples a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_after_validation_fails_and_reading_statistics_is_free() {
    let s = start().await;
    let q = bearer(&s.query);
    for _ in 0..10 {
        for path in ["/v2/models/limited/stats", "/v2/models/stats"] {
            let r = request(s.addr, "GET", path, &[("Authorization", &q)], b"").await;
            assert_eq!(r.status, 200, "{r:?}");
        }
    }
    let one = post_infer(s.addr, "limited", &q, &json_infer(&[0.1; 4], 1)).await;
    assert_eq!(one.status, 200, "{one:?}");
    let three = post_infer(s.addr, "limited", &q, &json_infer(&[0.1; 12], 3)).await;
    assert_eq!(three.status, 429, "{three:?}");
    assert_eq!(outcomes(&stats_of(&s, "limited", "1").await), (1, 1));
    s.stop().await;
}

/// A model call past its `inference.timeout_ms` (504) is one failure, and the call returning
/// later adds no success: the next request, served once it has returned, is the only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_model_call_is_one_failure_and_no_later_success() {
    let slow = Slow::start("[inference]\ntimeout_ms = 50\n", None).await;
    let body = json_infer(&[0.1; 4], 1);
    let r = slow.infer(&body).await.unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    slow.open_gate();
    let r = slow.infer(&body).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let v = stats_of(&slow.s, "slow", "1").await;
    assert_eq!(outcomes(&v), (1, 1), "{v}");
    assert_eq!(v["execution_count"], 1, "{v}");
    slow.s.stop().await;
}
