//! Triton's logging extension (`GET`/`POST /v2/logging`, gRPC `LogSettings`; tritonclient's
//! `get_log_settings` and `update_log_settings`): the admin role reads the settings, a change
//! needs a TOTP code too and is audited, settings the logger cannot take change nothing.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use palisade_gateway::grpc::inference::LogSettingsRequest;
use palisade_gateway::grpc::inference::log_settings_request::SettingValue;
use palisade_gateway::grpc::inference::log_settings_request::setting_value::ParameterChoice;
use palisade_gateway::grpc::inference::log_settings_response::setting_value::ParameterChoice as Got;
use palisade_gateway::keys::{KeyStore as _, Role};
use palisade_gateway::logging::LogControl;
use tracing::level_filters::LevelFilter;

/// A logger whose level is a value, and how many times it was set.
struct Level(Mutex<LevelFilter>, std::sync::atomic::AtomicUsize);

impl LogControl for Level {
    fn level(&self) -> LevelFilter {
        *self.0.lock().unwrap()
    }
    fn set_level(&self, level: LevelFilter) -> Result<(), String> {
        *self.0.lock().unwrap() = level;
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn format(&self) -> &'static str {
        "json"
    }
}

async fn serving_a_logger() -> (Arc<Level>, Server) {
    let log = Arc::new(Level(Mutex::new(LevelFilter::INFO), Default::default()));
    let control: Arc<dyn LogControl> = log.clone();
    let s = start_tweaked(None, move |gw| gw.log = Some(control)).await;
    (log, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_role_reads_and_with_a_code_changes_the_log_level() {
    let (log, s) = serving_a_logger().await;
    let admin = bearer(&s.admin);
    let get = |auth: String| {
        let addr = s.addr;
        async move { request(addr, "GET", "/v2/logging", &[("Authorization", &auth)], b"").await }
    };
    let r = get(admin.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({"log_file": "", "log_info": true, "log_warning": true,
            "log_error": true, "log_verbose_level": 0, "log_format": "json"})
    );
    // Another role, or none: refused.
    assert_eq!(get(bearer(&s.query)).await.status, 403);
    assert_eq!(get(String::new()).await.status, 401);

    // A change: with a code, applied, answered with the settings after, audited. A code is
    // taken once: each change gets an admin key of its own.
    let post = |body: &'static [u8]| {
        let k = s
            .state
            .keys
            .create("admin", &[Role::Admin], None, now_ms())
            .unwrap();
        let (addr, code, auth) = (s.addr, totp_now(&k, 0), bearer(&k));
        async move {
            request(
                addr,
                "POST",
                "/v2/logging",
                &[("Authorization", &auth), ("X-Palisade-TOTP", &code)],
                body,
            )
            .await
        }
    };
    let r = post(br#"{"log_verbose_level": 1}"#).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["log_verbose_level"], 1);
    assert_eq!(*log.0.lock().unwrap(), LevelFilter::DEBUG);
    let entries = s.audit_entries(0);
    let posted: Vec<_> = entries
        .iter()
        .filter(|e| e["path"] == "/v2/logging" && e["method"] == "POST")
        .collect();
    assert_eq!(posted.len(), 2, "the intent and the outcome: {posted:?}");
    assert_eq!(posted[0]["decision"], "intent");
    assert_eq!(posted[1]["status"], 200);
    // What the logger cannot take changes nothing; without a code nothing either.
    for body in [
        &br#"{"log_warning": false, "log_info": true}"#[..],
        br#"{"log_file": "/tmp/log"}"#,
        br#"{"log_format": "ISO8601"}"#,
        b"[",
    ] {
        let r = post(body).await;
        assert_eq!(r.status, 400, "{r:?}");
    }
    let r = request(
        s.addr,
        "POST",
        "/v2/logging",
        &[("Authorization", &admin)],
        br#"{"log_info": false}"#,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(*log.0.lock().unwrap(), LevelFilter::DEBUG);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_log_settings_go_through_the_admin_stack() {
    let (log, s) = serving_a_logger().await;
    let mut c = grpc_client(&s).await;
    let call = |settings: &[(&str, ParameterChoice)], key: &str, code: Option<String>| {
        let message = LogSettingsRequest {
            settings: settings
                .iter()
                .map(|(k, v)| {
                    let value = SettingValue {
                        parameter_choice: Some(v.clone()),
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
    // Read with the admin key alone.
    let got = c
        .log_settings(call(&[], &s.admin.key, None))
        .await
        .unwrap()
        .into_inner();
    let verbose = |g: &palisade_gateway::grpc::inference::LogSettingsResponse| {
        g.settings["log_verbose_level"].parameter_choice.clone()
    };
    assert_eq!(verbose(&got), Some(Got::Uint32Param(0)));
    assert_eq!(
        got.settings["log_format"].parameter_choice,
        Some(Got::StringParam("json".into()))
    );
    // Changed with a code.
    let got = c
        .log_settings(call(
            &[
                ("log_verbose_level", ParameterChoice::Uint32Param(2)),
                ("log_info", ParameterChoice::BoolParam(true)),
            ],
            &s.admin.key,
            Some(totp_now(&s.admin, 0)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verbose(&got), Some(Got::Uint32Param(2)));
    assert_eq!(*log.0.lock().unwrap(), LevelFilter::TRACE);
    // Refused: a key without the admin role (before its message is read), a change without a
    // code, a setting the logger cannot take.
    let e = c
        .log_settings(call(&[], &s.query.key, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = c
        .log_settings(call(
            &[("log_error", ParameterChoice::BoolParam(false))],
            &s.admin.key,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let other = s
        .state
        .keys
        .create("admin2", &[Role::Admin], None, now_ms())
        .unwrap();
    let e = c
        .log_settings(call(
            &[("log_file", ParameterChoice::StringParam("/x".into()))],
            &other.key,
            Some(totp_now(&other, 0)),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("stderr"), "{e:?}");
    assert_eq!(*log.0.lock().unwrap(), LevelFilter::TRACE);
    s.stop().await;
}

/// A gateway with no logger to hand answers 404 (REST) and `NOT_FOUND` (gRPC), and does not
/// list the extension; one with a logger does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_logger_the_settings_are_not_found() {
    let s = start().await;
    let r = request(
        s.addr,
        "GET",
        "/v2/logging",
        &[("Authorization", &bearer(&s.admin))],
        b"",
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    let mut c = grpc_client(&s).await;
    let mut ask = tonic::Request::new(LogSettingsRequest::default());
    ask.metadata_mut()
        .insert("authorization", bearer(&s.admin).parse().unwrap());
    let e = c.log_settings(ask).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let listed = |s: &Server| {
        let addr = s.addr;
        async move {
            let r = request(addr, "GET", "/v2", &[], b"").await;
            r.json()["extensions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == "logging")
        }
    };
    assert!(!listed(&s).await);
    s.stop().await;
    let (_log, s) = serving_a_logger().await;
    assert!(listed(&s).await);
    s.stop().await;
}

/// Settings that change nothing leave the logger untouched (its `--log` directives stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_change_nothing_leave_the_logger_untouched() {
    let (log, s) = serving_a_logger().await;
    let k = s
        .state
        .keys
        .create("admin", &[Role::Admin], None, now_ms())
        .unwrap();
    *log.0.lock().unwrap() = LevelFilter::WARN;
    let sets = log.1.load(std::sync::atomic::Ordering::SeqCst);
    let r = request(
        s.addr,
        "POST",
        "/v2/logging",
        &[
            ("Authorization", &bearer(&k)),
            ("X-Palisade-TOTP", &totp_now(&k, 0)),
        ],
        br#"{"log_warning": true, "log_verbose_level": 0}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["log_info"], false);
    assert_eq!(log.1.load(std::sync::atomic::Ordering::SeqCst), sets);
    s.stop().await;
}
