//! Triton's trace extension (`GET`/`POST /v2[/models/{m}]/trace/setting`, gRPC `TraceSetting`;
//! tritonclient's `get_trace_settings` and `update_trace_settings`): the admin role reads the
//! settings, a change needs a TOTP code too and is audited, settings that cannot be taken change
//! nothing, and the requests a setting samples are written as Triton's trace files.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use palisade_gateway::grpc::inference::TraceSettingRequest;
use palisade_gateway::grpc::inference::trace_setting_request::SettingValue;
use palisade_gateway::keys::{KeyStore as _, Role};
use palisade_gateway::trace::Tracer;
use serde_json::json;

async fn serving_a_tracer(dir: &Path) -> Server {
    let tracer = Arc::new(Tracer::new(dir.join("trace.json")).unwrap());
    start_tweaked(None, move |gw| gw.trace = Some(tracer)).await
}

/// A POST of `body` to `path` with a new admin key and its code (a code is taken once).
async fn change(s: &Server, path: &str, body: &[u8]) -> Reply {
    let k = s
        .state
        .keys
        .create("admin", &[Role::Admin], None, now_ms())
        .unwrap();
    request(
        s.addr,
        "POST",
        path,
        &[
            ("Authorization", &bearer(&k)),
            ("X-Palisade-TOTP", &totp_now(&k, 0)),
        ],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_role_changes_trace_settings_and_the_requests_sampled_are_written() {
    let traces = tempfile::tempdir().unwrap();
    let s = serving_a_tracer(traces.path()).await;
    let admin = bearer(&s.admin);
    let get = |path: &'static str, auth: String| {
        let addr = s.addr;
        async move { request(addr, "GET", path, &[("Authorization", &auth)], b"").await }
    };
    let r = get("/v2/trace/setting", admin.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let file = traces.path().join("trace.json").display().to_string();
    assert_eq!(
        r.json(),
        json!({"trace_file": file, "trace_level": ["OFF"], "trace_rate": "1000",
            "trace_count": "-1", "log_frequency": "0"})
    );
    // Another role, or none: refused. A model not served: not found.
    assert_eq!(get("/v2/trace/setting/", admin.clone()).await.status, 200);
    assert_eq!(get("/v2/trace/setting", bearer(&s.query)).await.status, 403);
    assert_eq!(get("/v2/trace/setting", String::new()).await.status, 401);
    let r = get("/v2/models/nope/trace/setting", admin.clone()).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.error().contains("'nope'"), "{r:?}");
    let meta = request(s.addr, "GET", "/v2", &[], b"").await.json();
    assert!(
        meta["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("trace")),
        "{meta}"
    );

    // Model lin's own setting: every request, two traces. Audited ahead and after.
    let r = change(
        &s,
        "/v2/models/lin/trace/setting",
        br#"{"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "2"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["trace_count"], "2");
    let posted: Vec<_> = s
        .audit_entries(0)
        .into_iter()
        .filter(|e| e["path"] == "/v2/models/lin/trace/setting")
        .collect();
    assert_eq!(posted.len(), 2, "the intent and the outcome: {posted:?}");
    assert_eq!(posted[0]["decision"], "intent");
    assert_eq!(
        (posted[1]["status"].clone(), posted[1]["model"].clone()),
        (json!(200), json!("lin"))
    );
    // The global setting is untouched.
    assert_eq!(
        get("/v2/trace/setting", admin.clone()).await.json()["trace_level"],
        json!(["OFF"])
    );
    // What cannot be taken changes nothing; without a code nothing either.
    for body in [
        &br#"{"trace_level": ["TENSORS"]}"#[..],
        br#"{"trace_file": "/tmp/elsewhere.json"}"#,
        br#"{"trace_rate": "0"}"#,
        b"[",
    ] {
        let r = change(&s, "/v2/models/lin/trace/setting", body).await;
        assert_eq!(r.status, 400, "{r:?}");
    }
    let r = request(
        s.addr,
        "POST",
        "/v2/trace/setting",
        &[("Authorization", &admin)],
        br#"{"trace_level": ["TIMESTAMPS"]}"#,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        get("/v2/models/lin/trace/setting", admin.clone())
            .await
            .json()["trace_count"],
        "2"
    );

    // Three requests of lin, one of label (which follows the global setting, off): two traces.
    let before = s.audit_entries(0).len() as u64;
    for _ in 0..3 {
        let r = post_infer(s.addr, "lin", &bearer(&s.query), &json_infer(&[0.1; 4], 1)).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let label = query_auth(&s, "label");
    assert_eq!(
        post_infer(s.addr, "label", &label, &json_infer(&[0.1; 4], 1))
            .await
            .status,
        200
    );
    let r = get("/v2/models/lin/trace/setting", admin.clone()).await;
    assert_eq!(r.json()["trace_count"], "0");
    let infer_entries: Vec<u64> = (before..)
        .zip(s.audit_entries(before))
        .filter(|(_, e)| e["model"] == "lin" && e["action"] == "infer")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(infer_entries.len(), 3);
    // The count used up, the traces are written without waiting for shutdown.
    let written = traces.path().join("trace.json.0");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !written.exists() {
        assert!(
            std::time::Instant::now() < until,
            "no trace file within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let batch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
    let batch = batch.as_array().unwrap();
    assert_eq!(batch.len(), 4, "two traces, two objects each: {batch:?}");
    assert!(!traces.path().join("trace.json.1").exists());
    for (i, pair) in batch.chunks(2).enumerate() {
        let (model, times) = (&pair[0], &pair[1]);
        assert_eq!(model["id"], times["id"]);
        assert_eq!(
            (model["model_name"].clone(), model["model_version"].clone()),
            (json!("lin"), json!(1))
        );
        // The first two requests, each with its audit entry.
        assert_eq!(model["audit_index"], infer_entries[i]);
        let names: Vec<_> = times["timestamps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "REQUEST_START",
                "QUEUE_START",
                "COMPUTE_START",
                "COMPUTE_INPUT_END",
                "COMPUTE_OUTPUT_START",
                "COMPUTE_END",
                "REQUEST_END"
            ]
        );
        let ns: Vec<u64> = times["timestamps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["ns"].as_u64().unwrap())
            .collect();
        assert!(ns.windows(2).all(|w| w[0] <= w[1]), "in order: {ns:?}");
    }

    // A model's own setting outlives the model: unloaded, it is still read and turned off. The
    // path with a trailing slash, which the guards read as the same target, is served alike.
    let r = change(
        &s,
        "/v2/models/top2/trace/setting/",
        br#"{"trace_level": "TIMESTAMPS"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    s.models.unload("top2").unwrap();
    let r = get("/v2/models/top2/trace/setting", admin.clone()).await;
    assert_eq!(
        (r.status, r.json()["trace_level"].clone()),
        (200, json!(["TIMESTAMPS"]))
    );
    let r = change(
        &s,
        "/v2/models/top2/trace/setting",
        br#"{"trace_level": "OFF"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        get("/v2/models/label/trace/setting", admin.clone())
            .await
            .status,
        200
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trace_setting_goes_through_the_admin_stack() {
    let traces = tempfile::tempdir().unwrap();
    let s = serving_a_tracer(traces.path()).await;
    let mut c = grpc_client(&s).await;
    let call = |model: &str, settings: &[(&str, &[&str])], key: &str, code: Option<String>| {
        let message = TraceSettingRequest {
            model_name: model.into(),
            settings: settings
                .iter()
                .map(|(k, v)| {
                    let value = SettingValue {
                        value: v.iter().map(|s| s.to_string()).collect(),
                    };
                    (k.to_string(), value)
                })
                .collect(),
        };
        let mut r = tonic::Request::new(message);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        if let Some(code) = code {
            r.metadata_mut()
                .insert("x-palisade-totp", code.parse().unwrap());
        }
        r
    };
    let got = c
        .trace_setting(call("", &[], &s.admin.key, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.settings["trace_level"].value, ["OFF"]);
    assert_eq!(got.settings["trace_rate"].value, ["1000"]);
    // A model's own rate, then (a setting without a value) the global one again.
    let got = c
        .trace_setting(call(
            "lin",
            &[("trace_level", &["TIMESTAMPS"]), ("trace_rate", &["5"])],
            &s.admin.key,
            Some(totp_now(&s.admin, 0)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.settings["trace_level"].value, ["TIMESTAMPS"]);
    assert_eq!(got.settings["trace_rate"].value, ["5"]);
    let other = s
        .state
        .keys
        .create("admin2", &[Role::Admin], None, now_ms())
        .unwrap();
    let got = c
        .trace_setting(call(
            "lin",
            &[("trace_rate", &[])],
            &other.key,
            Some(totp_now(&other, 0)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.settings["trace_rate"].value, ["1000"]);
    assert_eq!(got.settings["trace_level"].value, ["TIMESTAMPS"]);
    // Refused: a key without the admin role (before its message is read), a change without a
    // code, a setting that cannot be taken, a model not served.
    let e = c
        .trace_setting(call("", &[], &s.query.key, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = c
        .trace_setting(call("", &[("trace_rate", &["1"])], &s.admin.key, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let third = s
        .state
        .keys
        .create("admin3", &[Role::Admin], None, now_ms())
        .unwrap();
    let e = c
        .trace_setting(call(
            "",
            &[("trace_level", &["TENSORS"])],
            &third.key,
            Some(totp_now(&third, 0)),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("tensors"), "{e:?}");
    let e = c
        .trace_setting(call("nope", &[], &s.admin.key, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    // Too many values for one setting: refused before it is decoded.
    let many: Vec<&str> = vec!["OFF"; 17];
    let e = c
        .trace_setting(call("", &[("trace_level", &many)], &s.admin.key, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    s.stop().await;
}

/// A gateway with no tracer answers 404 (REST) and `NOT_FOUND` (gRPC), and does not list the
/// extension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tracer_the_settings_are_not_found() {
    let s = start().await;
    let r = request(
        s.addr,
        "GET",
        "/v2/trace/setting",
        &[("Authorization", &bearer(&s.admin))],
        b"",
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    let meta = request(s.addr, "GET", "/v2", &[], b"").await.json();
    assert!(
        !meta["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("trace")),
        "{meta}"
    );
    let mut c = grpc_client(&s).await;
    let mut ask = tonic::Request::new(TraceSettingRequest::default());
    ask.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", s.admin.key).parse().unwrap(),
    );
    let e = c.trace_setting(ask).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    s.stop().await;
}
