//! The abuse battery: every kind of bad request gets the right 4xx and a JSON error, the server
//! keeps serving, and every answered request is in the audit log, which verifies.

mod common;

use std::io::Write as _;

use common::*;
use palisade_core::Classifier as _;
use palisade_gateway::audit::{AuditLog as _, verify_log};
use palisade_gateway::keys::{KeyStore as _, Role};

/// Expected status, headers, body, path, and what the error must mention.
type Case<'a> = (u16, Vec<(&'a str, String)>, Vec<u8>, &'a str, &'a str);

/// A valid request still works.
async fn still_serving(s: &Server) {
    let r = request(
        s.addr,
        "POST",
        "/v2/models/lin/infer",
        &[("Authorization", &bearer(&s.query))],
        &json_infer(&[0.1, 0.2, 0.3, 0.4], 1),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_requests_get_the_right_4xx_and_the_server_keeps_serving() {
    let s = start().await;
    let q = bearer(&s.query);
    let infer = "/v2/models/lin/infer";
    let good = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    let mut answered = 0u64;

    // (status, headers, body, path, what the error must mention)
    let forged = format!("Bearer pal_{}_{}", s.query.record.id, "A".repeat(43));
    let cases: Vec<Case> = vec![
        // Authentication.
        (401, vec![], good.clone(), infer, "missing API key"),
        (401, vec![("Authorization", "Bearer nonsense".into())], good.clone(), infer, "malformed"),
        (401, vec![("Authorization", forged)], good.clone(), infer, "invalid API key"),
        (401, vec![("Authorization", "Basic dTpw".into())], good.clone(), infer, "missing API key"),
        // Authorisation.
        (403, vec![("Authorization", q.clone())], good.clone(), "/v2/models/top2/infer", "may not query"),
        (403, vec![("Authorization", bearer(&s.auditor))], good.clone(), infer, "may not query"),
        (403, vec![("Authorization", q.clone())], b"{}".to_vec(), "/v2/admin/keys", "lacks the 'admin' role"),
        (403, vec![("Authorization", q.clone())], vec![], "/v2/audit/checkpoint", "lacks the 'audit' role"),
        (401, vec![("Authorization", bearer(&s.admin))], b"{}".to_vec(), "/v2/admin/keys", "TOTP"),
        (401, vec![("Authorization", bearer(&s.admin)), ("X-Palisade-TOTP", "123456".into())], b"{}".to_vec(), "/v2/admin/keys", "TOTP"),
        (404, vec![("Authorization", q.clone())], vec![], "/v2/models/lin/explode", "no such route"),
        // Unknown model (the key may query it, it does not exist).
        (404, vec![("Authorization", bearer(&s.admin))], good.clone(), "/v2/models/nope/infer", "not found"),
        (404, vec![("Authorization", q.clone())], good.clone(), "/v2/models/lin/versions/9/infer", "not found"),
        // Broken JSON and wrong requests.
        (400, vec![("Authorization", q.clone())], b"{\"inputs\": [".to_vec(), infer, "invalid JSON"),
        (400, vec![("Authorization", q.clone())], b"[1,2,3]".to_vec(), infer, "invalid JSON"),
        (400, vec![("Authorization", q.clone())], br#"{"inputs":[]}"#.to_vec(), infer, "no inputs"),
        (400, vec![("Authorization", q.clone())],
            br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[0,0,0,0]}]}"#.to_vec(),
            infer, "the model expects [N, 1, 2, 2]"),
        (400, vec![("Authorization", q.clone())],
            br#"{"inputs":[{"name":"input","shape":[1,1,2,2],"datatype":"INT64","data":[0,0,0,0]}]}"#.to_vec(),
            infer, "datatype INT64"),
        (400, vec![("Authorization", q.clone())],
            br#"{"inputs":[{"name":"input","shape":[1,1,2,2],"datatype":"FP32","data":[0,0,0]}]}"#.to_vec(),
            infer, "needs 4 values"),
        (400, vec![("Authorization", q.clone())],
            br#"{"inputs":[{"name":"pixels","shape":[1,1,2,2],"datatype":"FP32","data":[0,0,0,0]}]}"#.to_vec(),
            infer, "unknown input 'pixels'"),
        (400, vec![("Authorization", q.clone())],
            br#"{"inputs":[{"name":"input","shape":[1,1,2,2],"datatype":"FP32","data":[0,0,7,0]}]}"#.to_vec(),
            infer, "element 2 = 7 is outside [0, 1]"),
        (400, vec![("Authorization", q.clone())],
            br#"{"inputs":[{"name":"input","shape":[1,1,2,2],"datatype":"FP32","data":[0,"x",0,0]}]}"#.to_vec(),
            infer, "element 1 is not a number"),
        (400, vec![("Authorization", q.clone())], json_infer(&[0.5; 20], 5), infer, "batch size 5"),
        (400, vec![("Authorization", q.clone())],
            br#"{"inputs":[{"name":"input","shape":[1,1,2,2],"datatype":"FP32","data":[0,0,0,0]}],"outputs":[{"name":"secret"}]}"#.to_vec(),
            infer, "unknown output 'secret'"),
        // Compression.
        (415, vec![("Authorization", q.clone()), ("Content-Encoding", "br".into())], good.clone(), infer, "Content-Encoding"),
        (400, vec![("Authorization", q.clone()), ("Content-Encoding", "gzip".into())], b"not gzip at all".to_vec(), infer, "decompress"),
        // Body size: over the limit as sent, and as a small gzip bomb.
        (413, vec![("Authorization", q.clone())], vec![b' '; 5000], infer, "exceeds 4096"),
        (413, vec![("Authorization", q.clone()), ("Content-Encoding", "gzip".into())], gzip(&vec![b' '; 1 << 20]), infer, "exceeds 4096"),
    ];
    for (status, headers, body, path, needle) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = request(s.addr, "POST", path, &h, body).await;
        answered += 1;
        assert_eq!(r.status, *status, "{path} {headers:?}: {r:?}");
        let msg = r.error();
        assert!(
            msg.contains(needle),
            "{path}: '{msg}' should mention '{needle}'"
        );
        if *status == 401 {
            assert!(r.headers.contains_key("www-authenticate") || msg.contains("TOTP"));
        }
        still_serving(&s).await;
        answered += 1;
    }

    // Binary extension lies.
    let v = [0.1f32, 0.2, 0.3, 0.4];
    let bin = |body: Vec<u8>, h: String| {
        let q = q.clone();
        let addr = s.addr;
        async move {
            let hs = [
                ("Authorization", q.as_str()),
                ("Inference-Header-Content-Length", h.as_str()),
            ];
            request(addr, "POST", "/v2/models/lin/infer", &hs, &body).await
        }
    };
    let (body, h) = binary_infer(&v, &[1, 1, 2, 2], 16);
    let r = bin(body.clone(), h.to_string()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let (short, h2) = binary_infer(&v[..3], &[1, 1, 2, 2], 16);
    for (b, hl, needle) in [
        (short, h2.to_string(), "only 12 bytes remain"),
        (
            body.clone(),
            (body.len() + 10).to_string(),
            "but the body has only",
        ),
        (body.clone(), "twelve".to_string(), "not a number"),
        (
            [body.clone(), vec![0u8; 3]].concat(),
            h.to_string(),
            "3 bytes of binary data",
        ),
        (
            binary_infer(&[0.1, 0.2, 0.3, 0.4, 0.5], &[1, 1, 2, 2], 20).0,
            h.to_string(),
            "binary_data_size is 20",
        ),
        (
            binary_infer(&[0.1, f32::NAN, 0.3, 0.4], &[1, 1, 2, 2], 16).0,
            h.to_string(),
            "element 1 is NaN",
        ),
        (
            binary_infer(&[0.1, f32::INFINITY, 0.3, 0.4], &[1, 1, 2, 2], 16).0,
            h.to_string(),
            "element 1 is inf",
        ),
    ] {
        let r = bin(b, hl).await;
        answered += 2;
        assert_eq!(r.status, 400, "{needle}: {r:?}");
        let msg = r.error();
        assert!(msg.contains(needle), "'{msg}' should mention '{needle}'");
        still_serving(&s).await;
    }
    answered += 1; // the good binary request

    // A Content-Length that lies: 100 declared, 10 sent, then the client hangs up.
    let lie = format!(
        "POST {infer} HTTP/1.1\r\nHost: t\r\nAuthorization: {q}\r\nContent-Length: 100\r\n\r\n0123456789"
    );
    let r = raw(s.addr, lie.as_bytes(), true).await;
    answered += 1;
    assert_eq!(r.status, 400, "{r:?}");
    r.error();
    // Chunked with no length, over the limit.
    let mut chunked = format!(
        "POST {infer} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: {q}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..5 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b' '; 0x400]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw(s.addr, &chunked, false).await;
    answered += 1;
    assert_eq!(r.status, 413, "{r:?}");
    still_serving(&s).await;
    answered += 1;

    // A burst over the limit: 3 allowed, then 429 with Retry-After and RateLimit fields.
    for i in 0..5 {
        let r = request(
            s.addr,
            "POST",
            "/v2/models/limited/infer",
            &[("Authorization", &q)],
            &good,
        )
        .await;
        answered += 1;
        assert!(r.headers.contains_key("ratelimit"), "{r:?}");
        assert!(
            r.headers["ratelimit-policy"].contains("\"key\";q=3;w=180"),
            "{r:?}"
        );
        if i < 3 {
            assert_eq!(r.status, 200, "request {i}: {r:?}");
            assert!(
                r.headers["ratelimit"].contains(&format!("r={}", 2 - i)),
                "{r:?}"
            );
        } else {
            assert_eq!(r.status, 429, "request {i}: {r:?}");
            let retry: u64 = r.headers["retry-after"].parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
            assert!(r.error().contains("rate limit"));
        }
    }
    // Other keys and models are not affected.
    still_serving(&s).await;
    answered += 1;

    // Health and metrics are not audited; metrics carry no key ids.
    let m = request(s.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("palisade_guard_rejections_total{guard=\"rate-limit\"} 2"),
        "{text}"
    );
    assert!(!text.contains(&s.query.record.id));

    // Every answered request is in the log, and the log verifies.
    let log = s.state.audit.clone();
    assert_eq!(log.size().unwrap(), answered);
    let dbp = s.state.paths.audit_db();
    let pk = s.state.public_key;
    let _dir = s.stop().await;
    let report = verify_log(&dbp, &pk, &[]).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.entries, answered);
}

/// Bodies over 64 KiB, and compressed ones, take the blocking-thread path (decompressed,
/// decoded, checked and hashed off the async worker, here the only one), and so do a large
/// batch's scores (hardened, encoded, hashed): that path gives the answers and the audit
/// digests a small body gets, good or bad. (Where the work ran is not observed here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn large_and_compressed_bodies_get_the_same_checks_answers_and_digests() {
    use sha2::Digest as _;
    let hex = |b: &[u8]| -> String {
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    let s = start().await;
    s.models
        .deploy(served(
            "big",
            "1",
            // Samples count against the rates: a burst that holds the batches sent.
            "[input]\nmax_body_bytes = 1048576\nmax_batch = 10000\n[limits]\n\
             per_key = { rate = 100000, period_ms = 1000, burst = 30000 }\n",
        ))
        .unwrap();
    let auth = query_auth(&s, "big");
    let n = 6000;
    let x: Vec<f32> = (0..n * 4).map(|i| (i % 97) as f32 / 97.0).collect();
    let body = json_infer(&x, n);
    assert!(body.len() > 64 << 10, "{} bytes", body.len());
    let expected = linear("big")
        .logits(
            ndarray::ArrayD::from_shape_vec(vec![n, 1, 2, 2], x.clone())
                .unwrap()
                .view(),
        )
        .unwrap();
    let expected: Vec<f32> = expected.iter().copied().collect();
    for (encoding, sent) in [("identity", body.clone()), ("gzip", gzip(&body))] {
        let r = request(
            s.addr,
            "POST",
            "/v2/models/big/infer",
            &[("Authorization", &auth), ("Content-Encoding", encoding)],
            &sent,
        )
        .await;
        assert_eq!(r.status, 200, "{encoding}: {}", r.error());
        let got: Vec<f32> = serde_json::from_value(r.json()["outputs"][0]["data"].clone()).unwrap();
        assert_eq!(got, expected, "{encoding}");
        // The input digest is of the body as decompressed; the output digest of the answer,
        // which is over 64 KiB too.
        assert!(r.body.len() > 64 << 10, "{} bytes", r.body.len());
        let e = s.last_audit_entry();
        assert_eq!(e["input_sha256"], hex(&body), "{encoding}");
        assert_eq!(e["output_sha256"], hex(&r.body), "{encoding}");
    }
    // One value out of range, deep in the batch: refused, saying which, and on the log.
    let mut bad = x.clone();
    bad[4 * 5000 + 3] = 2.0;
    let bad = json_infer(&bad, n);
    let r = post_infer(s.addr, "big", &auth, &bad).await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("outside"), "{}", r.error());
    let e = s.last_audit_entry();
    assert_eq!(e["status"], 400);
    assert_eq!(e["input_sha256"], hex(&bad));
    // A small compressed body, which also takes the blocking thread, and a corrupt one.
    let small = json_infer(&x[..4], 1);
    let r = post_infer_encoded(&s, &auth, "gzip", &gzip(&small)).await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = post_infer_encoded(&s, &auth, "gzip", b"not gzip at all").await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("decompress"), "{}", r.error());
    let r = post_infer_encoded(&s, &auth, "br", &small).await;
    assert_eq!(r.status, 415);
    s.stop().await;
}

async fn post_infer_encoded(s: &Server, auth: &str, encoding: &str, body: &[u8]) -> Reply {
    request(
        s.addr,
        "POST",
        "/v2/models/big/infer",
        &[("Authorization", auth), ("Content-Encoding", encoding)],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_binary_and_gzip_agree_with_the_classifier() {
    let s = start().await;
    let q = bearer(&s.query);
    let x = [0.1f32, 0.9, 0.3, 0.4, 0.0, 1.0, 0.5, 0.25];
    let expected = linear("lin")
        .logits(
            ndarray::ArrayD::from_shape_vec(vec![2, 1, 2, 2], x.to_vec())
                .unwrap()
                .view(),
        )
        .unwrap();
    let expected: Vec<f32> = expected.iter().copied().collect();

    let r = request(
        s.addr,
        "POST",
        "/v2/models/lin/infer",
        &[("Authorization", &q)],
        &json_infer(&x, 2),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["id"], "t");
    assert_eq!(v["model_version"], "1");
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([2, 3]));
    let got: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(got, expected);

    let gz = gzip(&json_infer(&x, 2));
    let r = request(
        s.addr,
        "POST",
        "/v2/models/lin/infer",
        &[("Authorization", &q), ("Content-Encoding", "gzip")],
        &gz,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got: Vec<f32> = serde_json::from_value(r.json()["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(got, expected);

    let (body, h) = binary_infer(&x, &[2, 1, 2, 2], 32);
    let r = request(
        s.addr,
        "POST",
        "/v2/models/lin/infer",
        &[
            ("Authorization", &q),
            ("Inference-Header-Content-Length", &h.to_string()),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let hl: usize = r.headers["inference-header-content-length"]
        .parse()
        .unwrap();
    let got: Vec<f32> = r.body[hl..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(got, expected);

    // Metadata and readiness.
    let r = request(
        s.addr,
        "GET",
        "/v2/models/lin",
        &[("Authorization", &q)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["inputs"][0]["shape"],
        serde_json::json!([-1, 1, 2, 2])
    );
    let r = request(
        s.addr,
        "GET",
        "/v2/models/lin/ready",
        &[("Authorization", &q)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    for p in ["/v2/health/live", "/v2/health/ready", "/v2"] {
        assert_eq!(request(s.addr, "GET", p, &[], b"").await.status, 200, "{p}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardened_outputs_reveal_only_what_the_policy_allows() {
    let s = start().await;
    let a = bearer(&s.admin);
    let x = [0.1f32, 0.9, 0.3, 0.4];
    let r = request(
        s.addr,
        "POST",
        "/v2/models/top2/infer",
        &[("Authorization", &a)],
        &json_infer(&x, 1),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 2]));
    assert_eq!(v["outputs"][1]["name"], "logits_classes");
    for val in v["outputs"][0]["data"].as_array().unwrap() {
        let f = val.as_f64().unwrap();
        assert!(
            ((f * 100.0).round() - f * 100.0).abs() < 1e-3,
            "{f} not rounded"
        );
    }
    let r = request(
        s.addr,
        "POST",
        "/v2/models/label/infer",
        &[("Authorization", &a)],
        &json_infer(&x, 1),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v["outputs"][0]["name"], "label");
    assert_eq!(v["outputs"][0]["datatype"], "INT64");
    s.stop().await;
}

/// Triton's model configuration extension (`GET …/config`, tritonclient's `get_model_config`):
/// the tensors of the metadata as Triton names them, outputs as the policy shapes them, behind
/// the same key and role as the metadata, and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_configuration_is_the_metadata_in_tritons_terms_behind_the_same_guards() {
    let s = start().await;
    let a = bearer(&s.admin);
    let get = |path: String, auth: Option<String>| async move {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        request(s.addr, "GET", &path, &headers, b"").await
    };
    let config = |model: &str| format!("/v2/models/{model}/config");
    let r = get(config("lin"), Some(a.clone())).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({
            "name": "lin",
            "platform": "palisade-linear",
            "max_batch_size": 0,
            "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 1, 2, 2]}],
            "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [-1, 3]}],
        })
    );
    let r = get(config("top2"), Some(a.clone())).await;
    assert_eq!(
        r.json()["output"],
        serde_json::json!([
            {"name": "logits", "data_type": "TYPE_FP32", "dims": [-1, 2]},
            {"name": "logits_classes", "data_type": "TYPE_INT64", "dims": [-1, 2]},
        ])
    );
    let r = get("/v2/models/label/versions/1/config".into(), Some(a.clone())).await;
    assert_eq!(
        r.json()["output"],
        serde_json::json!([{"name": "label", "data_type": "TYPE_INT64", "dims": [-1]}])
    );
    // The same guards as the metadata: a key, and the query role on that model.
    let q = bearer(&s.query);
    let r = get(config("lin"), Some(q.clone())).await;
    assert_eq!(r.status, 200, "{r:?}");
    let entry = s.last_audit_entry();
    assert_eq!(
        (&entry["action"], &entry["decision"]),
        (&serde_json::json!("config"), &serde_json::json!("allowed")),
        "{entry}"
    );
    let r = get(config("top2"), Some(q.clone())).await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = get(config("lin"), None).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = get(config("nosuch"), Some(a.clone())).await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = get("/v2".into(), None).await;
    assert!(
        r.json()["extensions"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("model_configuration")),
        "{r:?}"
    );
    s.stop().await;
}

/// Triton's statistics extension (`GET /v2/models[/{m}[/versions/{v}]]/stats`, tritonclient's
/// `get_inference_statistics`): each version counts what it served and what failed once it was
/// its work, not what the guards refused before; a key sees the statistics of the models it may
/// query and no others; the route is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_count_what_each_version_served_and_only_for_keys_that_may_query_it() {
    let s = start().await;
    let (a, q) = (bearer(&s.admin), bearer(&s.query));
    let call = |method: &'static str, path: String, auth: Option<String>, body: Vec<u8>| async move {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        request(s.addr, method, &path, &headers, &body).await
    };
    let get = |path: &str, auth: &str| call("GET", path.into(), Some(auth.into()), vec![]);
    let infer = |model: &str, body: Vec<u8>, auth: &str| {
        call(
            "POST",
            format!("/v2/models/{model}/infer"),
            Some(auth.into()),
            body,
        )
    };
    let fresh = get("/v2/models/lin/stats", &q).await;
    assert_eq!(fresh.status, 200, "{fresh:?}");
    let v = &fresh.json()["model_stats"][0];
    assert_eq!((&v["name"], &v["version"]), (&"lin".into(), &"1".into()));
    assert_eq!(
        (&v["last_inference"], &v["execution_count"]),
        (&0.into(), &0.into())
    );

    let before = now_ms();
    assert_eq!(infer("lin", json_infer(&[0.1; 4], 1), &q).await.status, 200);
    assert_eq!(infer("lin", json_infer(&[0.2; 8], 2), &q).await.status, 200);
    // Its work, failed: a body that does not validate.
    assert_eq!(infer("lin", json_infer(&[0.1; 3], 1), &q).await.status, 400);
    // Not its work: refused before validation (no key; a key that may not query it).
    let no_key = call(
        "POST",
        "/v2/models/lin/infer".into(),
        None,
        json_infer(&[0.1; 4], 1),
    );
    assert_eq!(no_key.await.status, 401);
    assert_eq!(
        infer("lin", json_infer(&[0.1; 4], 1), &bearer(&s.auditor))
            .await
            .status,
        403
    );
    let r = get("/v2/models/lin/stats", &q).await;
    let all = r.json();
    assert_eq!(all["model_stats"].as_array().unwrap().len(), 1, "{all}");
    let v = &all["model_stats"][0];
    let last = v["last_inference"].as_u64().unwrap();
    assert!(last >= before && last <= now_ms(), "{v}");
    assert_eq!(
        (&v["inference_count"], &v["execution_count"]),
        (&3.into(), &2.into()),
        "{v}"
    );
    let st = &v["inference_stats"];
    let count = |k: &str| st[k]["count"].as_u64().unwrap();
    let ns = |k: &str| st[k]["ns"].as_u64().unwrap();
    assert_eq!((count("success"), count("fail")), (2, 1), "{st}");
    for k in ["queue", "compute_input", "compute_infer", "compute_output"] {
        assert_eq!(count(k), 2, "{k}: {st}");
        assert!(
            ns(k) <= ns("success"),
            "{k} is part of a request's time: {st}"
        );
    }
    assert!(ns("compute_infer") > 0 && ns("fail") > 0, "{st}");
    assert_eq!((count("cache_hit"), count("cache_miss")), (0, 0));
    let sizes: Vec<_> = v["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["batch_size"].as_u64().unwrap(),
                b["compute_infer"]["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes, [(1, 1), (2, 1)], "{v}");
    let entry = s.last_audit_entry();
    assert_eq!(
        (&entry["action"], &entry["model"], &entry["decision"]),
        (&"stats".into(), &"lin".into(), &"allowed".into()),
        "{entry}"
    );

    // A second version counts on its own; without a version, every version is listed.
    s.models.deploy(served("lin", "2", LIN_POLICY)).unwrap();
    assert_eq!(infer("lin", json_infer(&[0.1; 4], 1), &q).await.status, 200);
    let both = get("/v2/models/lin/stats", &q).await.json();
    let of = |v: &serde_json::Value| {
        (
            v["version"].as_str().unwrap().to_string(),
            v["inference_stats"]["success"]["count"].as_u64().unwrap(),
        )
    };
    let got: Vec<_> = both["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(of)
        .collect();
    assert_eq!(got, [("1".into(), 2), ("2".into(), 1)], "{both}");
    let one = get("/v2/models/lin/versions/1/stats", &q).await.json();
    let got: Vec<_> = one["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(of)
        .collect();
    assert_eq!(got, [("1".to_string(), 2)], "{one}");
    assert_eq!(get("/v2/models/lin/versions/9/stats", &q).await.status, 404);
    assert_eq!(get("/v2/models/nosuch/stats", &a).await.status, 404);

    // Every model: those the key may query, and no other.
    let names = |r: &Reply| -> Vec<String> {
        r.json()["model_stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["name"].as_str().unwrap(),
                    m["version"].as_str().unwrap()
                )
            })
            .collect()
    };
    let r = get("/v2/models/stats", &q).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(names(&r), ["limited/1", "lin/1", "lin/2"]);
    let r = get("/v2/models/stats", &a).await;
    assert_eq!(
        names(&r),
        ["label/1", "limited/1", "lin/1", "lin/2", "top2/1"]
    );
    let entry = s.last_audit_entry();
    assert_eq!(
        (&entry["action"], &entry["model"]),
        (&"stats".into(), &serde_json::Value::Null),
        "{entry}"
    );
    // Refused: a key with no query role, no key, another model's statistics, a method.
    let r = get("/v2/models/stats", &bearer(&s.auditor)).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("may not query any model"), "{r:?}");
    assert_eq!(
        call("GET", "/v2/models/stats".into(), None, vec![])
            .await
            .status,
        401
    );
    assert_eq!(get("/v2/models/top2/stats", &q).await.status, 403);
    for path in ["/v2/models/stats", "/v2/models/lin/stats"] {
        let r = call("POST", path.into(), Some(q.clone()), b"{}".to_vec()).await;
        assert_eq!(r.status, 405, "{path}: {r:?}");
        assert_eq!(r.headers["allow"], "GET, HEAD", "{path}");
    }
    // Reading statistics is not inference: lin/2 still counts one.
    let again = get("/v2/models/lin/versions/2/stats", &q).await.json();
    assert_eq!(again["model_stats"][0]["execution_count"], 1, "{again}");
    let r = call("GET", "/v2".into(), None, vec![]).await;
    assert!(
        r.json()["extensions"]
            .as_array()
            .unwrap()
            .contains(&"statistics".into()),
        "{r:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_totp_once_and_revocation_is_immediate() {
    let s = start().await;
    let a = bearer(&s.admin);
    let q = bearer(&s.query);
    let code = totp_now(&s.admin, -1);
    let body = br#"{"name":"svc","roles":["query:lin"]}"#;
    let r = request(
        s.addr,
        "POST",
        "/v2/admin/keys",
        &[("Authorization", &a), ("X-Palisade-TOTP", &code)],
        body,
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let new_key = r.json()["key"].as_str().unwrap().to_string();
    // Replaying the code fails.
    let r = request(
        s.addr,
        "POST",
        "/v2/admin/keys",
        &[("Authorization", &a), ("X-Palisade-TOTP", &code)],
        body,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    // Bad JSON and bad roles in an admin call are 400s.
    let r = request(
        s.addr,
        "POST",
        "/v2/admin/keys",
        &[
            ("Authorization", &a),
            ("X-Palisade-TOTP", &totp_now(&s.admin, 0)),
        ],
        br#"{"name":"x","roles":["root"]}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("unknown role"));

    let nk = format!("Bearer {new_key}");
    let addr = s.addr;
    let infer = |k: String| async move {
        request(
            addr,
            "POST",
            "/v2/models/lin/infer",
            &[("Authorization", &k)],
            &json_infer(&[0.0; 4], 1),
        )
        .await
    };
    assert_eq!(infer(nk.clone()).await.status, 200);
    let id = &new_key[4..16];
    let r = request(
        s.addr,
        "POST",
        &format!("/v2/admin/keys/{id}/revoke"),
        &[
            ("Authorization", &a),
            ("X-Palisade-TOTP", &totp_now(&s.admin, 1)),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = infer(nk).await;
    assert_eq!(r.status, 401);
    assert!(r.error().contains("revoked"));
    assert_eq!(infer(q).await.status, 200);

    // The auditor gets proofs that verify.
    let au = bearer(&s.auditor);
    let r = request(
        s.addr,
        "GET",
        "/v2/audit/proof/inclusion?index=2",
        &[("Authorization", &au)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let p: palisade_gateway::audit::InclusionProof = serde_json::from_slice(&r.body).unwrap();
    assert!(p.verify());
    let r = request(
        s.addr,
        "GET",
        "/v2/audit/proof/consistency?first=3",
        &[("Authorization", &au)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let c: palisade_gateway::audit::ConsistencyProof = serde_json::from_slice(&r.body).unwrap();
    assert!(c.verify());
    let r = request(
        s.addr,
        "GET",
        "/v2/audit/proof/inclusion?index=x",
        &[("Authorization", &au)],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    let r = request(
        s.addr,
        "GET",
        "/v2/audit/entries/0",
        &[("Authorization", &au)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["entry"]["action"], "admin.keys");
    assert_eq!(r.json()["entry"]["key_id"], s.admin.record.id.as_str());
    s.stop().await;
}

/// Rotating a key neither refills its rate limit nor doubles it during the overlap: the
/// successor and the old key spend the limits of the key they descend from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_shares_the_limits_of_its_line() {
    let s = start().await;
    let k = s
        .state
        .keys
        .create("l", &[Role::Query("limited".into())], None, now_ms())
        .unwrap();
    let infer = |key: String| {
        let addr = s.addr;
        async move {
            request(
                addr,
                "POST",
                "/v2/models/limited/infer",
                &[("Authorization", &format!("Bearer {key}"))],
                &json_infer(&[0.0; 4], 1),
            )
            .await
        }
    };
    // The model allows a burst of 3 per key, then one a minute.
    for _ in 0..3 {
        assert_eq!(infer(k.key.clone()).await.status, 200);
    }
    let next = s
        .state
        .keys
        .rotate(&k.record.id, std::time::Duration::from_secs(600), now_ms())
        .unwrap();
    assert_eq!(next.record.lineage, k.record.id);
    let r = infer(next.key.clone()).await;
    assert_eq!(r.status, 429, "the successor got a fresh burst: {r:?}");
    assert_eq!(infer(k.key.clone()).await.status, 429);
    // Another key of its own is not affected.
    let other = s
        .state
        .keys
        .create("o", &[Role::Query("limited".into())], None, now_ms())
        .unwrap();
    assert_eq!(infer(other.key).await.status, 200);
    s.stop().await;
}

/// A limit store that fails for one model, or does not answer for another (a shared store out
/// of reach, say), makes their infer requests fail closed with 503 and `Retry-After`, audited as
/// errors; the store is asked once per infer request, with the caller's line and the version's
/// limits, and not for metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_requests_fail_closed_when_the_limit_store_cannot_answer() {
    use palisade_gateway::guard::ratelimit::{
        AdmitFuture, Charge, LimitError, LimitStore, LocalLimits, ResetFuture,
    };
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Flaky {
        inner: LocalLimits,
        asked: Mutex<Vec<(String, String, Option<u32>)>>,
        reset_failed: std::sync::atomic::AtomicBool,
    }
    impl LimitStore for Flaky {
        fn admit<'a>(&'a self, c: Charge<'a>) -> AdmitFuture<'a> {
            let burst = c.limits.per_key.map(|r| r.burst);
            self.asked
                .lock()
                .unwrap()
                .push((c.key.clone(), c.model.to_string(), burst));
            match c.model {
                "lin" => Box::pin(async { Err(LimitError::Unavailable("refused".into())) }),
                // Out of reach: never answers.
                "top2" => Box::pin(std::future::pending()),
                _ => self.inner.admit(c),
            }
        }

        fn reset_budget<'a>(&'a self, line: &'a str, model: &'a str, t: u64) -> ResetFuture<'a> {
            // Fails once, as a ledger that cannot be written would.
            if !self
                .reset_failed
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Box::pin(async { Err(LimitError::Unavailable("ledger busy".into())) });
            }
            self.inner.reset_budget(line, model, t)
        }
    }

    let store = Arc::new(Flaky::default());
    let s = start_limited_by(store.clone()).await;
    let q = bearer(&s.query);
    // The query key may not query `top2`; the admin key may query every model.
    let infer_as = |model: &'static str, q: String| {
        let addr = s.addr;
        async move {
            request(
                addr,
                "POST",
                &format!("/v2/models/{model}/infer"),
                &[("Authorization", &q)],
                &json_infer(&[0.1, 0.2, 0.3, 0.4], 1),
            )
            .await
        }
    };
    let infer = |model: &'static str| infer_as(model, q.clone());
    let r = infer("lin").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.headers["retry-after"], "1", "{r:?}");
    assert!(
        r.error().contains("rate limits could not be checked"),
        "{r:?}"
    );
    assert!(!r.headers.contains_key("ratelimit"), "{r:?}");
    // No answer: refused once the guard stops waiting.
    let t = std::time::Instant::now();
    let r = infer_as("top2", bearer(&s.admin)).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.error().contains("rate limits could not be checked"),
        "{r:?}"
    );
    assert!(t.elapsed() >= palisade_gateway::guard::ratelimit::STORE_TIMEOUT);
    // The store answers for the other model: its limits are counted there.
    let r = infer("limited").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.headers["ratelimit"].contains("\"key\";r=2"), "{r:?}");
    // Metadata is not metered.
    let m = request(
        s.addr,
        "GET",
        "/v2/models/lin",
        &[("Authorization", &q)],
        b"",
    )
    .await;
    assert_eq!(m.status, 200, "{m:?}");
    let id = s.query.record.lineage.clone();
    // `lin` has the default limits.
    let default_burst = palisade_gateway::Policy::default()
        .limits
        .per_key
        .map(|r| r.burst);
    assert_eq!(
        *store.asked.lock().unwrap(),
        [
            (id.clone(), "lin".to_string(), default_burst),
            (s.admin.record.id.clone(), "top2".to_string(), default_burst),
            (id, "limited".to_string(), Some(3))
        ]
    );
    let entries = s.audit_entries(0);
    assert_eq!(entries.len(), 4, "{entries:#?}");
    for e in &entries[..2] {
        assert_eq!(e["decision"], "error", "{e}");
        assert_eq!(e["status"], 503, "{e}");
    }
    assert_eq!(entries[2]["decision"], "allowed", "{}", entries[2]);
    // Operators see the store failing, and how long it takes to answer.
    let m = request(s.addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("palisade_limits_check_failures_total 2"),
        "{text}"
    );
    assert!(
        text.contains("palisade_limits_check_seconds_count 3"),
        "{text}"
    );

    // Giving a budget back fails once: a 503 saying so, and a retry as told, with the same TOTP
    // code (given back, since the reset repeats nothing harmful), succeeds (review).
    let admin = bearer(&s.admin);
    let code = totp_now(&s.admin, 0);
    let path = format!("/v2/admin/keys/{}/budget/reset", s.query.record.id);
    let headers = [
        ("Authorization", admin.as_str()),
        ("X-Palisade-TOTP", &code),
    ];
    let r = request(s.addr, "POST", &path, &headers, br#"{"model": "limited"}"#).await;
    assert_eq!(r.status, 503, "{r:?}");
    // What failed, not the ledger's own words (they can name the state folder's files).
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("\"limited\" failed") && e.contains("log has the details"),
        "{e}"
    );
    assert!(!e.contains("ledger busy"), "{e}");
    assert_eq!(r.json()["budgets"], serde_json::json!([]), "{r:?}");
    let wait: u64 = r.headers["retry-after"].parse().unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    let r = request(s.addr, "POST", &path, &headers, br#"{"model": "limited"}"#).await;
    assert_eq!(r.status, 200, "{r:?}");
    // (`limited` has no daily budget: nothing was spent.)
    assert_eq!(
        r.json()["budgets"],
        serde_json::json!([{"model": "limited", "given_back": null}]),
        "{r:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_returns_scores_that_are_not_finite_is_answered_500() {
    let s = start().await;
    // A bias of +Inf: every logit of class 0 is infinite, and so probabilities NaN.
    let broken = palisade_core::LinearClassifier::new(
        "nan",
        vec![1, 2, 2],
        palisade_core::InputRange::default(),
        ndarray::Array2::zeros((3, 4)),
        ndarray::Array1::from(vec![f32::INFINITY, 0.0, 0.0]),
    )
    .unwrap();
    for (name, reveal) in [("nanlogits", "logits"), ("nanlabel", "label")] {
        let mut m = served(
            name,
            "1",
            &format!("{LIN_POLICY}[output]\nreveal = \"{reveal}\"\n"),
        );
        m.classifier = std::sync::Arc::new(broken.clone());
        s.models.deploy(m).unwrap();
    }
    let key = s
        .state
        .keys
        .create("nq", &[Role::Query("*".into())], None, 0)
        .unwrap();
    for name in ["nanlogits", "nanlabel"] {
        let r = post_infer(s.addr, name, &bearer(&key), &json_infer(&[0.5; 4], 1)).await;
        assert_eq!(r.status, 500, "{name}: {r:?}");
        assert!(r.error().contains("not finite"), "{name}: {r:?}");
    }
    s.stop().await;
}

/// Rates and budgets count samples: a batch of N costs N (one before its body is read, the rest
/// once validated), a batch larger than what the limits could ever let through is refused with
/// a 400 naming the limit, and a refusal of a batch's later samples is a 429 that says what is
/// left and is audited as the rate limiter's. With `count = "requests"` a batch costs one.
#[tokio::test]
async fn a_batch_costs_its_samples() {
    let s = start().await;
    let hour = "period_ms = 3600000";
    s.models
        .deploy(served(
            "samples",
            "1",
            &format!(
                "[input]\nmax_batch = 8\n[limits]\nper_key = {{ rate = 1, {hour}, burst = 10 }}\n\
                 daily_budget = 6\n"
            ),
        ))
        .unwrap();
    s.models
        .deploy(served(
            "requests",
            "1",
            &format!(
                "[input]\nmax_batch = 8\n[limits]\nper_key = {{ rate = 1, {hour}, burst = 10 }}\n\
                 daily_budget = 2\ncount = \"requests\"\n"
            ),
        ))
        .unwrap();
    // One key per model, for the whole test.
    let keys = [
        ("samples", query_auth(&s, "samples")),
        ("requests", query_auth(&s, "requests")),
    ];
    let send = |model: &'static str, n: usize| {
        let auth = keys.iter().find(|(m, _)| *m == model).unwrap().1.clone();
        let addr = s.addr;
        async move {
            let x: Vec<f32> = (0..n * 4).map(|i| (i % 7) as f32 / 7.0).collect();
            request(
                addr,
                "POST",
                &format!("/v2/models/{model}/infer"),
                &[("Authorization", &auth)],
                &json_infer(&x, n),
            )
            .await
        }
    };
    // Larger than the day's budget: no such batch could ever pass. Its first unit was charged
    // before the body was read.
    let r = send("samples", 7).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.error()
            .contains("batch size 7 is outside 1..=6 (the policy's limits.daily_budget)"),
        "{}",
        r.error()
    );
    // 2 samples: 3 left of the day's 6, 7 of the key's burst of 10.
    let r = send("samples", 2).await;
    assert_eq!(r.status, 200, "{r:?}");
    let state = |r: &Reply| r.headers["ratelimit"].clone();
    assert!(
        state(&r).starts_with("\"key\";r=7;t=10800, \"day\";r=3;t="),
        "{r:?}"
    );
    // 5 samples: the first unit leaves 2 of the budget, too few for the other 4. Refused,
    // saying what is left; the first unit stays spent.
    let r = send("samples", 5).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(
        r.error().contains("daily query budget exhausted"),
        "{}",
        r.error()
    );
    assert!(state(&r).contains("\"day\";r=2;"), "{r:?}");
    assert!(r.headers.contains_key("retry-after"), "{r:?}");
    let e = s.last_audit_entry();
    assert_eq!(e["decision"], "denied:rate-limit", "{e}");
    // The last 2.
    let r = send("samples", 2).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(state(&r).contains("\"day\";r=0;"), "{r:?}");
    let r = send("samples", 1).await;
    assert_eq!(r.status, 429, "{r:?}");

    // Counting requests: a batch of 4 costs one.
    for left in [1, 0] {
        let r = send("requests", 4).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            state(&r).starts_with(&format!("\"key\";r={};", 9 - (1 - left))),
            "{r:?}"
        );
        assert!(state(&r).contains(&format!("\"day\";r={left};")), "{r:?}");
    }
    let r = send("requests", 1).await;
    assert_eq!(r.status, 429, "{r:?}");

    // An administrator gives the budget back: on one model, then on every model served.
    let admin = bearer(&s.admin);
    let id = keys[1].1["Bearer pal_".len()..][..12].to_string();
    let reset = |body: &'static [u8], offset: i64| {
        let (admin, path, code) = (
            admin.clone(),
            format!("/v2/admin/keys/{id}/budget/reset"),
            totp_now(&s.admin, offset),
        );
        let addr = s.addr;
        async move {
            let headers = [
                ("Authorization", admin.as_str()),
                ("X-Palisade-TOTP", &code),
            ];
            request(addr, "POST", &path, &headers, body).await
        }
    };
    let today = now_ms() / 86_400_000;
    let r = reset(br#"{"model": "requests"}"#, -1).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json()["budgets"],
        serde_json::json!([{"model": "requests", "given_back": {"day": today, "spent": 2}}]),
        "{r:?}"
    );
    assert!(
        s.last_audit_entry()["path"]
            .as_str()
            .unwrap()
            .ends_with("/budget/reset"),
        "{}",
        s.last_audit_entry()
    );
    let r = send("requests", 1).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(state(&r).contains("\"day\";r=1;"), "{r:?}");
    let r = reset(br#"{"model": "nope"}"#, 0).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.error().contains("\"nope\""), "{r:?}");
    // Every model: this key line spent on `requests` only (the other key spent `samples`).
    let r = reset(b"", 1).await;
    assert_eq!(r.status, 200, "{r:?}");
    let given: Vec<_> = r.json()["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| !b["given_back"].is_null())
        .cloned()
        .collect();
    assert_eq!(
        given,
        vec![serde_json::json!({"model": "requests", "given_back": {"day": today, "spent": 1}})],
        "{r:?}"
    );
    assert_eq!(send("samples", 1).await.status, 429);
}

/// Each route answers only its own methods, with a JSON 405 and `Allow`: a `GET` with an infer
/// body had been served as an infer, a `POST` to a model's metadata path answered with it, and
/// axum's own 405 had an empty body (review, 2026-12-06).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_answers_only_its_own_methods() {
    let s = start().await;
    let auth = bearer(&s.query);
    let body = json_infer(&[0.1, 0.2, 0.3, 0.4], 1);
    let r = request(
        s.addr,
        "GET",
        "/v2/models/lin/infer",
        &[("Authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(r.status, 405, "{r:?}");
    assert!(r.error().contains("use POST"), "{r:?}");
    assert_eq!(r.headers.get("allow").map(String::as_str), Some("POST"));
    let entry = s.last_audit_entry();
    assert_eq!(entry["decision"], "denied:method", "{entry}");
    assert_eq!(entry["status"], 405, "{entry}");
    assert_eq!(entry["key_id"], s.query.record.id.as_str(), "{entry}");
    // Without a key, the key is what is missing.
    let r = request(s.addr, "GET", "/v2/models/lin/infer", &[], &body).await;
    assert_eq!(r.status, 401, "{r:?}");

    for path in [
        "/v2/models/lin",
        "/v2/models/lin/ready",
        "/v2/models/lin/config",
    ] {
        let r = request(s.addr, "POST", path, &[("Authorization", &auth)], b"{}").await;
        assert_eq!(r.status, 405, "{path}: {r:?}");
        assert_eq!(
            r.headers.get("allow").map(String::as_str),
            Some("GET, HEAD")
        );
        let r = request(s.addr, "GET", path, &[("Authorization", &auth)], b"").await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }

    let r = request(s.addr, "DELETE", "/v2/health/live", &[], b"").await;
    assert_eq!(r.status, 405, "{r:?}");
    assert!(r.error().contains("DELETE"), "{r:?}");
    assert!(
        r.headers.get("allow").is_some_and(|a| a.contains("GET")),
        "{r:?}"
    );
    still_serving(&s).await;
    s.stop().await;
}
