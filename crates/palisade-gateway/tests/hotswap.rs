//! Hot-swap through the admin API: a new version loads only if it is signed by the trusted key
//! and scans clean, and the previous one can be made active again.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use palisade_gateway::keys::{Authn, KeyStore as _, NewKey, Role};
use palisade_gateway::loader::{LoadedModel, ModelSource, Runtime, SIGNATURE_FILE, Trust};
use palisade_supply::keys::{Curve, SigningKey};

/// Any ONNX bytes become the test's linear model (the runtime is not what is under test).
struct LinearRuntime;

impl Runtime for LinearRuntime {
    fn load(&self, _path: &Path, _bytes: &[u8]) -> Result<LoadedModel, String> {
        Ok(LoadedModel {
            classifier: Arc::new(linear("lin")),
            input_name: "input".into(),
            output_name: "logits".into(),
            platform: "palisade-linear".into(),
        })
    }
}

fn version(repo: &Path, v: &str, policy: &str) -> std::path::PathBuf {
    let dir = repo.join("lin").join(v);
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist_cnn_public.onnx");
    std::fs::copy(onnx, dir.join("model.onnx")).unwrap();
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    dir
}

fn sign(dir: &Path, key: &SigningKey) {
    let sig = dir.join(SIGNATURE_FILE);
    let opts = palisade_supply::oms::SignOptions {
        signature_path: Some(sig.clone()),
        ..Default::default()
    };
    let signed = palisade_supply::oms::sign_model(dir, key, &opts, None).unwrap();
    std::fs::write(sig, signed.bundle).unwrap();
}

/// POSTs `body` to `path` with the key `k` and its TOTP code of now.
async fn with_code(addr: std::net::SocketAddr, k: &NewKey, path: String, body: &[u8]) -> Reply {
    let (a, code) = (bearer(k), totp_now(k, 0));
    request(
        addr,
        "POST",
        &path,
        &[("Authorization", &a), ("X-Palisade-TOTP", &code)],
        body,
    )
    .await
}

/// A fresh key of the `deploy` role: a TOTP code is accepted once per key, so each action of a
/// test gets a key of its own.
fn deployer(s: &Server) -> NewKey {
    s.state
        .keys
        .create("deployer", &[Role::Deploy], None, now_ms())
        .unwrap()
}

/// An action of the `deploy` role: POSTs `body` to `path` with a fresh key and its code of now.
async fn as_deployer(s: &Server, path: &str, body: &[u8]) -> Reply {
    with_code(s.addr, &deployer(s), path.to_string(), body).await
}

/// What a restart of `s` would serve of `repo`, signed by `key`: the repository loaded as
/// `palisade serve` loads it, leaving out what the state folder keeps down; and what it loaded.
fn restart(
    repo: &Path,
    key: &SigningKey,
    s: &Server,
) -> (palisade_gateway::ModelRepository, Vec<(String, String)>) {
    let kept = palisade_gateway::loader::Withdrawn::open(&s.state.paths.rolled_back()).unwrap();
    let restarted = palisade_gateway::ModelRepository::new();
    let trust = Trust::Key(Arc::new(key.public_key()));
    let loaded = palisade_gateway::loader::load_repository(
        repo,
        &LinearRuntime,
        &trust,
        &restarted,
        Some(&kept),
    )
    .unwrap();
    (restarted, loaded)
}

/// The repository index's entries of `model`, as the admin key sees them.
async fn indexed(s: &Server, model: &str) -> Vec<serde_json::Value> {
    let auth = bearer(&s.admin);
    let r = request(
        s.addr,
        "POST",
        "/v2/repository/index",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    let all = r.json().as_array().cloned().unwrap_or_default();
    all.into_iter().filter(|e| e["name"] == model).collect()
}

/// Whether the audit log holds a deployment (`admin.models`) answered 200 whose `field` is
/// `value`.
fn deployed(s: &Server, field: &str, value: &str) -> bool {
    s.audit_entries(0)
        .iter()
        .any(|e| e[field] == value && e["action"] == "admin.models" && e["status"] == 200)
}

/// A gateway whose admin API loads from an empty repository folder, trusting the key returned.
async fn serving_a_repository() -> (tempfile::TempDir, SigningKey, Server) {
    let repo = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(Curve::P256);
    let source = ModelSource {
        repo: repo.path().to_path_buf(),
        runtime: Arc::new(LinearRuntime),
        trust: Trust::Key(Arc::new(key.public_key())),
    };
    let s = start_with(Some(source)).await;
    (repo, key, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_version_hot_swaps_and_rolls_back_an_unsigned_one_is_refused() {
    let (repo, key, s) = serving_a_repository().await;
    let a = bearer(&s.admin);
    // A TOTP code works once and codes must move forward: a second deploy key gives the test
    // more than the three codes of one key's window.
    let deployer = deployer(&s);
    let load = |k: &NewKey, v: &'static str, step: i64| {
        let a = bearer(k);
        let code = totp_now(k, step);
        let addr = s.addr;
        async move {
            request(
                addr,
                "POST",
                "/v2/admin/models/lin/load",
                &[("Authorization", &a), ("X-Palisade-TOTP", &code)],
                format!(r#"{{"version":"{v}"}}"#).as_bytes(),
            )
            .await
        }
    };

    // Version 2, unsigned: refused with the reason, version 1 stays active.
    let v2 = version(repo.path(), "2", "[input]\nmax_batch = 2\n");
    let r = load(&s.admin, "2", -1).await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.error().contains("no signature"), "{}", r.error());
    // The files it names are said relative to the repository folder.
    assert!(r.error().contains("lin/2/model.sig"), "{}", r.error());
    let root = repo.path().to_str().unwrap();
    assert!(!r.error().contains(root), "{}", r.error());
    assert_eq!(s.models.get("lin", None).unwrap().version, "1");

    // Signed: loads and becomes active.
    sign(&v2, &key);
    let r = load(&s.admin, "2", 0).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["active_version"], "2");
    assert_eq!(s.models.get("lin", None).unwrap().policy.input.max_batch, 2);

    // Loading it again is a conflict; a version that does not exist fails its checks.
    assert_eq!(load(&s.admin, "2", 1).await.status, 409);
    let v3 = version(repo.path(), "3", "");
    sign(&v3, &SigningKey::generate(Curve::P256));
    let r = load(&deployer, "3", -1).await;
    assert_eq!(r.status, 422, "signed by an untrusted key: {r:?}");

    // Without the TOTP code, or with a query key, loading is refused.
    for (auth, status) in [(a.clone(), 401), (bearer(&s.query), 403)] {
        let r = request(
            s.addr,
            "POST",
            "/v2/admin/models/lin/load",
            &[("Authorization", &auth)],
            br#"{"version":"3"}"#,
        )
        .await;
        assert_eq!(r.status, status, "{r:?}");
    }

    // Rollback makes version 1 active again.
    let r = request(
        s.addr,
        "POST",
        "/v2/admin/models/lin/rollback",
        &[
            ("Authorization", &bearer(&deployer)),
            ("X-Palisade-TOTP", &totp_now(&deployer, 0)),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.models.get("lin", None).unwrap().version, "1");
    // The version rolled back from is unloaded: not served even when named.
    assert!(s.models.get("lin", Some("2")).is_none());

    // And it stays down across a restart: the state folder keeps the rollback, and loading the
    // repository again (as `palisade serve` starts) leaves it out.
    let kept = palisade_gateway::loader::Withdrawn::open(&s.state.paths.rolled_back()).unwrap();
    assert!(kept.contains("lin", "2"));
    sign(&version(repo.path(), "1", ""), &key);
    std::fs::remove_dir_all(&v3).unwrap(); // signed by an untrusted key: would fail the start
    let (restarted, _) = restart(repo.path(), &key, &s);
    assert_eq!(restarted.get("lin", None).unwrap().version, "1");
    assert!(restarted.get("lin", Some("2")).is_none());

    // Loaded again through the API, it is no longer kept down.
    let r = load(&deployer, "2", 1).await;
    assert_eq!(r.status, 200, "{r:?}");
    let kept = palisade_gateway::loader::Withdrawn::open(&s.state.paths.rolled_back()).unwrap();
    assert!(!kept.contains("lin", "2"));
    s.stop().await;
}

/// Triton's repository index (`POST /v2/repository/index`, tritonclient's
/// `get_model_repository_index`): every version served is `READY`; a version of the folder that
/// is not served is `UNAVAILABLE`, with why; `{"ready": true}` leaves those out; a key sees the
/// models it may query and no others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_index_lists_what_is_served_and_what_is_not() {
    let (repo, key, s) = serving_a_repository().await;
    let deployer = deployer(&s);
    sign(&version(repo.path(), "1", ""), &key);
    sign(&version(repo.path(), "2", ""), &key);
    version(repo.path(), "3", ""); // never loaded
    assert_eq!(
        with_code(
            s.addr,
            &s.admin,
            "/v2/admin/models/lin/load".into(),
            br#"{"version":"2"}"#
        )
        .await
        .status,
        200
    );
    assert_eq!(
        with_code(
            s.addr,
            &deployer,
            "/v2/admin/models/lin/rollback".into(),
            b""
        )
        .await
        .status,
        200
    );
    let index = |auth: Option<String>, method: &'static str, body: &'static [u8]| {
        let addr = s.addr;
        async move {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            request(addr, method, "/v2/repository/index", &headers, body).await
        }
    };
    let listed = |r: &Reply| -> Vec<String> {
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let reason = e.get("reason").and_then(|r| r.as_str()).unwrap_or("");
                format!(
                    "{}/{} {} {reason}",
                    e["name"].as_str().unwrap(),
                    e["version"].as_str().unwrap(),
                    e["state"].as_str().unwrap()
                )
                .trim_end()
                .to_string()
            })
            .collect()
    };
    // tritonclient sends an empty body.
    let a = Some(bearer(&s.admin));
    let all = listed(&index(a.clone(), "POST", b"").await);
    assert_eq!(
        all,
        [
            "label/1 READY",
            "limited/1 READY",
            "lin/1 READY",
            "lin/2 UNAVAILABLE rolled back",
            "lin/3 UNAVAILABLE not loaded",
            "top2/1 READY",
        ]
    );
    let entry = s.last_audit_entry();
    assert_eq!(
        (&entry["action"], &entry["decision"]),
        (&"index".into(), &"allowed".into()),
        "{entry}"
    );
    let ready = listed(&index(a.clone(), "POST", br#"{"ready": true}"#).await);
    assert_eq!(
        ready,
        [
            "label/1 READY",
            "limited/1 READY",
            "lin/1 READY",
            "top2/1 READY"
        ]
    );
    assert_eq!(
        listed(&index(a.clone(), "POST", br#"{"ready": false}"#).await),
        all
    );
    // A query key sees the models it may query.
    let q = listed(&index(Some(bearer(&s.query)), "POST", b"{}").await);
    assert_eq!(
        q,
        [
            "limited/1 READY",
            "lin/1 READY",
            "lin/2 UNAVAILABLE rolled back",
            "lin/3 UNAVAILABLE not loaded",
        ]
    );
    // Refused: no key, no query role, another method, a body it cannot read.
    assert_eq!(index(None, "POST", b"").await.status, 401);
    let r = index(Some(bearer(&s.auditor)), "POST", b"").await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = index(a.clone(), "GET", b"").await;
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.headers["allow"], "POST");
    for (body, needle) in [
        (
            &br#"{"ready": "yes"}"#[..],
            "invalid repository index request",
        ),
        (br#"{"redy": true}"#, "unknown field"),
        (b"[", "invalid repository index request"),
    ] {
        let r = index(a.clone(), "POST", body).await;
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.error().contains(needle), "{}", r.error());
    }
    let big: &'static [u8] = Box::leak(vec![b' '; 5000].into_boxed_slice());
    assert_eq!(index(a.clone(), "POST", big).await.status, 413);
    s.stop().await;
}

/// Triton's load and unload (`POST /v2/repository/models/{m}/load` and `…/unload`,
/// tritonclient's `load_model` and `unload_model`): role `deploy` with a TOTP code, as the admin
/// API's load; a load serves the highest version of the folder not rolled back, under the same
/// checks; an unload takes every version down and keeps the model down across a restart, until
/// it is loaded again; parameters that would replace the folder's files are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_load_and_unload_serve_and_take_down_a_model_under_the_deploy_role() {
    let (repo, key, s) = serving_a_repository().await;
    let server = &s;
    let act = move |path: String, body: &'static [u8]| async move {
        as_deployer(server, &path, body).await
    };
    let triton = |action: &str, model: &str, body: &'static [u8]| {
        act(format!("/v2/repository/models/{model}/{action}"), body)
    };
    let (admin_auth, body) = (bearer(&s.admin), json_infer(&[0.5; 4], 1));
    let infer = || post_infer(s.addr, "lin", &admin_auth, &body);
    assert_eq!(infer().await.status, 200);

    // The folder holds no lin yet (the test's lin/1 was deployed from elsewhere).
    let r = triton("load", "lin", b"").await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.error().contains("holds no model 'lin'"), "{}", r.error());
    // Version 2 unsigned: refused by the checks; signed, served; version 3 is rolled back
    // below and so not what a load picks.
    let v2 = version(repo.path(), "2", "[input]\nmax_batch = 2\n");
    let r = triton("load", "lin", b"").await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.error().contains("no signature"), "{}", r.error());
    sign(&v2, &key);
    let r = triton("load", "lin", b"{}").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["active_version"], "2");
    assert_eq!(s.models.get("lin", None).unwrap().version, "2");
    // Again: nothing to do.
    let r = triton("load", "lin", br#"{"parameters": {}}"#).await;
    assert_eq!(
        (r.status, r.json()["active_version"].clone()),
        (200, "2".into())
    );
    assert_eq!(s.models.versions("lin"), ["1", "2"]);

    // What Palisade does not take: a configuration or files in place of the folder's, anything
    // unknown, a body it cannot read.
    for (action, body, needle) in [
        (
            "load",
            &br#"{"parameters": {"config": "{}"}}"#[..],
            "'config'",
        ),
        (
            "load",
            br#"{"parameters": {"file:1/model.onnx": "AAAA"}}"#,
            "file:1/model.onnx",
        ),
        (
            "load",
            br#"{"parameters": {"unload_dependents": true}}"#,
            "unknown parameter",
        ),
        (
            "unload",
            br#"{"parameters": {"unload_dependents": "yes"}}"#,
            "true or false",
        ),
        (
            "unload",
            br#"{"parameters": {"config": "{}"}}"#,
            "unknown parameter",
        ),
        ("unload", br#"{"version": "2"}"#, "unknown field"),
        ("load", b"[", "expected an empty body"),
    ] {
        let r = triton(action, "lin", body).await;
        assert_eq!(r.status, 400, "{action} {r:?}");
        assert!(r.error().contains(needle), "{}", r.error());
    }
    assert_eq!(s.models.get("lin", None).unwrap().version, "2");

    // Without the TOTP code, or with a query key: refused.
    for (auth, status) in [(bearer(&deployer(&s)), 401), (bearer(&s.query), 403)] {
        for action in ["load", "unload"] {
            let r = request(
                s.addr,
                "POST",
                &format!("/v2/repository/models/lin/{action}"),
                &[("Authorization", &auth)],
                b"",
            )
            .await;
            assert_eq!(r.status, status, "{action} {r:?}");
        }
    }
    assert!(s.models.get("lin", None).is_some());

    // Unload: every version down, the model no longer served, audited.
    let r = triton(
        "unload",
        "lin",
        br#"{"parameters": {"unload_dependents": false}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["unloaded_versions"], serde_json::json!(["1", "2"]));
    assert!(s.models.get("lin", None).is_none());
    assert_eq!(infer().await.status, 404);
    assert!(
        deployed(&s, "path", "/v2/repository/models/lin/unload"),
        "no entry for the unload"
    );
    // Kept across a restart: loading the repository as `palisade serve` starts leaves it out.
    let (restarted, loaded) = restart(repo.path(), &key, &s);
    assert!(loaded.is_empty() && restarted.get("lin", None).is_none());
    // The index says why.
    let lin = indexed(&s, "lin").await;
    assert_eq!(lin.len(), 1, "{lin:?}");
    assert_eq!(
        (&lin[0]["state"], &lin[0]["reason"]),
        (&"UNAVAILABLE".into(), &"unloaded".into())
    );
    // Unloading it again is nothing to do; a model neither served nor in the folder is not found.
    let r = triton("unload", "lin", b"").await;
    assert_eq!(
        (r.status, r.json()["unloaded_versions"].clone()),
        (200, serde_json::json!([]))
    );
    assert_eq!(triton("unload", "nothing", b"").await.status, 404);

    // A load serves it again, from the highest version not rolled back.
    let v3 = version(repo.path(), "3", "");
    sign(&v3, &key);
    let r = triton("load", "lin", b"").await;
    assert_eq!(
        (r.status, r.json()["active_version"].clone()),
        (200, "3".into()),
        "{r:?}"
    );
    // Version 3 alone, across a restart too: the versions the unload took down stay down.
    let (restarted, _) = restart(repo.path(), &key, &s);
    assert_eq!(restarted.versions("lin"), ["3"]);
    assert_eq!(s.models.versions("lin"), ["3"]);
    let two: Vec<_> = indexed(&s, "lin")
        .await
        .into_iter()
        .filter(|e| e["version"] == "2")
        .collect();
    assert_eq!(two[0]["reason"], "kept down", "{two:?}");
    let rollback = || act("/v2/admin/models/lin/rollback".into(), b"");
    let r = rollback().await;
    assert_eq!(r.status, 409, "only version 3 is served: {r:?}");
    let r = act("/v2/admin/models/lin/load".into(), br#"{"version":"2"}"#).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = rollback().await;
    assert_eq!(
        (r.status, r.json()["active_version"].clone()),
        (200, "3".into()),
        "{r:?}"
    );
    // Version 2 rolled back: a load keeps to 3, which is active, so there is nothing to do.
    let r = triton("load", "lin", b"").await;
    assert_eq!(
        (r.status, r.json()["active_version"].clone()),
        (200, "3".into()),
        "{r:?}"
    );
    let kept = palisade_gateway::loader::Withdrawn::open(&s.state.paths.rolled_back()).unwrap();
    assert!(!kept.unloaded("lin") && kept.contains("lin", "2"));
    s.stop().await;
}

/// With every model unloaded the gateway stays ready (REST and gRPC), as Triton does, so that a
/// load balancer keeps sending it the load that serves one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_models_were_all_unloaded_stays_ready() {
    let (_repo, _key, s) = serving_a_repository().await;
    let ready = || async {
        let r = request(s.addr, "GET", "/v2/health/ready", &[], b"").await;
        let mut c = grpc_client(&s).await;
        let g = c
            .server_ready(palisade_gateway::grpc::inference::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready;
        (r.status, g)
    };
    assert_eq!(ready().await, (200, true));
    for model in s.models.names() {
        let r = as_deployer(&s, &format!("/v2/repository/models/{model}/unload"), b"").await;
        assert_eq!(r.status, 200, "{model}: {r:?}");
    }
    assert!(s.models.names().is_empty());
    assert_eq!(ready().await, (200, true));
    s.stop().await;
}

/// A rollback or unload that the state folder cannot note is not done: 500, the model served as
/// before, and the answer names none of the folder's files (the gateway's log has them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_the_state_folder_cannot_note_is_refused_without_naming_its_files() {
    let (repo, key, s) = serving_a_repository().await;
    sign(&version(repo.path(), "2", ""), &key);
    let act = |path: &'static str, body: &'static [u8]| as_deployer(&s, path, body);
    // A version the folder does not hold: 422, said relative to the folder.
    let r = act("/v2/admin/models/lin/load", br#"{"version":"9"}"#).await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.error().contains("has no lin/9/model.onnx"),
        "{}",
        r.error()
    );
    assert!(
        !r.error().contains(repo.path().to_str().unwrap()),
        "{}",
        r.error()
    );
    let r = act("/v2/admin/models/lin/load", br#"{"version":"2"}"#).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The notes' file replaced by a folder: the next note cannot replace it.
    let notes = s.state.paths.rolled_back();
    let _ = std::fs::remove_file(&notes);
    std::fs::create_dir(&notes).unwrap();
    let folder = notes.parent().unwrap().to_str().unwrap().to_string();
    for (path, what) in [
        ("/v2/admin/models/lin/rollback", "could not note the change"),
        (
            "/v2/repository/models/lin/unload",
            "could not note the unload",
        ),
    ] {
        let r = act(path, b"").await;
        assert_eq!(r.status, 500, "{path}: {r:?}");
        let e = r.error();
        assert!(e.contains(what) && e.contains("log has the details"), "{e}");
        assert!(!e.contains(&folder) && !e.contains("rolled-back"), "{e}");
        assert_eq!(s.models.get("lin", None).unwrap().version, "2", "{path}");
        assert_eq!(s.models.versions("lin"), ["1", "2"], "{path}");
    }
    let last = s.audit_entries(0).pop().unwrap();
    assert_eq!(
        (last["status"].clone(), last["decision"].clone()),
        (500.into(), "error".into()),
        "{last}"
    );
    s.stop().await;
}

/// Triton's `RepositoryModelLoad` and `RepositoryModelUnload` over gRPC: the REST load and
/// unload through the admin stack (the key's `deploy` role checked before the message is read,
/// the TOTP code in `x-palisade-totp` metadata), Triton's message layout and KServe's (the
/// model's name in field 1) both read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_load_and_unload_go_through_the_admin_stack() {
    use palisade_gateway::grpc::inference::{
        ModelRepositoryParameter, RepositoryModelLoadRequest, RepositoryModelUnloadRequest,
        model_repository_parameter::ParameterChoice,
    };
    use tonic::Code;
    let (repo, key, s) = serving_a_repository().await;
    sign(&version(repo.path(), "2", ""), &key);
    let mut c = grpc_client(&s).await;
    // A call from a fresh deploy key with its code (`totp` false: without one).
    fn deploying<T>(s: &Server, message: T, totp: bool) -> tonic::Request<T> {
        let k = deployer(s);
        let mut r = tonic::Request::new(message);
        r.metadata_mut()
            .insert("authorization", bearer(&k).parse().unwrap());
        if totp {
            r.metadata_mut()
                .insert("x-palisade-totp", totp_now(&k, 0).parse().unwrap());
        }
        r
    }
    let call = |m, totp| deploying(&s, m, totp);
    let load = |repository: &str, model: &str| RepositoryModelLoadRequest {
        repository_name: repository.into(),
        model_name: model.into(),
        parameters: Default::default(),
    };
    let got = c
        .repository_model_load(call(load("", "lin"), true))
        .await
        .unwrap()
        .into_inner();
    assert!(got.is_loaded && got.model_name == "lin", "{got:?}");
    assert_eq!(s.models.get("lin", None).unwrap().version, "2");
    assert!(
        deployed(&s, "method", "GRPC RepositoryModelLoad"),
        "no entry for the load"
    );

    // Refused: a query key (before its message is read), no TOTP code, another repository, a
    // configuration in place of the folder's, more parameters than the bounds.
    let mut query = load("", "lin");
    let mut config = load("", "lin");
    config.parameters.insert(
        "config".into(),
        ModelRepositoryParameter {
            parameter_choice: Some(ParameterChoice::StringParam("{}".into())),
        },
    );
    let mut many = load("", "lin");
    for i in 0..65 {
        many.parameters
            .insert(format!("p{i}"), ModelRepositoryParameter::default());
    }
    let q = {
        let mut r = tonic::Request::new(std::mem::take(&mut query));
        r.metadata_mut()
            .insert("authorization", bearer(&s.query).parse().unwrap());
        r
    };
    let e = c.repository_model_load(q).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    for (message, totp, code, needle) in [
        (load("", "lin"), false, Code::Unauthenticated, "TOTP"),
        (
            load("other", "lin"),
            true,
            Code::InvalidArgument,
            "one model repository",
        ),
        (config, true, Code::InvalidArgument, "'config'"),
        (many, true, Code::InvalidArgument, "parameters"),
        (load("", "nothing"), true, Code::NotFound, "holds no model"),
    ] {
        let e = c
            .repository_model_load(call(message, totp))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(needle), "{e:?}");
    }

    // KServe's layout: the name in field 1.
    let unload = RepositoryModelUnloadRequest {
        repository_name: "lin".into(),
        model_name: String::new(),
        parameters: Default::default(),
    };
    let got = c
        .repository_model_unload(deploying(&s, unload, true))
        .await
        .unwrap()
        .into_inner();
    assert!(got.is_unloaded && got.model_name == "lin", "{got:?}");
    assert!(s.models.get("lin", None).is_none());
    c.repository_model_load(call(load("lin", ""), true))
        .await
        .unwrap();
    assert_eq!(s.models.versions("lin"), ["2"]);
    s.stop().await;
}

/// An admin action whose client closes its connection as soon as the request is sent is done
/// with its audit entry or not at all. hyper may drop such a request before the stack sees it
/// (then nothing happens), so the test tries until one revocation went through, each try with
/// an admin key of its own (a TOTP code is accepted once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_action_whose_client_leaves_is_audited_or_not_done() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt as _;
    let s = start().await;
    let mut done = 0;
    for tries in 0..20 {
        let admin = s
            .state
            .keys
            .create("adm", &[Role::Admin], None, now_ms())
            .unwrap();
        let victim = s
            .state
            .keys
            .create("v", &[Role::Query("lin".into())], None, now_ms())
            .unwrap();
        let id = &victim.key[4..16];
        let request = format!(
            "POST /v2/admin/keys/{id}/revoke HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nX-Palisade-TOTP: {}\r\nContent-Length: 0\r\n\r\n",
            bearer(&admin),
            totp_now(&admin, 0)
        );
        let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        // Closed while the action runs (its TOTP check and revocation each commit with an
        // fsync): sooner, hyper may drop the request before the stack sees it.
        tokio::time::sleep(Duration::from_millis(tries)).await;
        conn.shutdown().await.unwrap();
        drop(conn);
        let revoked = || {
            matches!(
                s.state.keys.authenticate(&victim.key, now_ms()),
                Ok(Authn::Revoked(_))
            )
        };
        // The outcome's entry: the one written ahead of the action does not count here.
        let audited = || {
            s.audit_entries(0).iter().any(|e| {
                e["decision"] != "intent"
                    && e["path"]
                        .as_str()
                        .is_some_and(|p| p.ends_with(&format!("/{id}/revoke")))
            })
        };
        // A revocation that runs takes a few ms; its entry may take longer on a loaded machine.
        let until = Instant::now() + Duration::from_secs(2);
        while !revoked() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let until = Instant::now() + Duration::from_secs(10);
        while revoked() && !audited() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !revoked() || audited(),
            "a revocation without its audit entry"
        );
        if revoked() {
            done += 1;
            break;
        }
    }
    assert_eq!(done, 1, "no revocation went through in 20 tries");
    s.stop().await;
}

/// Wrong TOTP codes lock the key's admin actions: five are refused 401, then every code, the
/// right one included, gets 429 with `Retry-After` (the lockout's end, 15 minutes away).
#[tokio::test]
async fn wrong_totp_codes_lock_admin_actions() {
    let s = start().await;
    let a = bearer(&s.admin);
    let right = totp_now(&s.admin, 0);
    // A six-digit code that is none of the three accepted now.
    let wrong = (0..)
        .map(|i| {
            format!(
                "{:06}",
                (right.parse::<u32>().unwrap() + 500_000 + i) % 1_000_000
            )
        })
        .find(|c| (-1..=1).all(|o| *c != totp_now(&s.admin, o)))
        .unwrap();
    let list = |code: String| {
        let a = a.clone();
        async move {
            request(
                s.addr,
                "GET",
                "/v2/admin/keys",
                &[("Authorization", &a), ("X-Palisade-TOTP", &code)],
                b"",
            )
            .await
        }
    };
    for _ in 0..5 {
        assert_eq!(list(wrong.clone()).await.status, 401);
    }
    for code in [wrong, right] {
        let r = list(code).await;
        assert_eq!(r.status, 429, "{r:?}");
        let secs: u64 = r.headers["retry-after"].parse().unwrap();
        assert!((14 * 60..=15 * 60).contains(&secs), "{secs}");
        assert!(r.error().contains("too many wrong TOTP codes"), "{r:?}");
    }
    s.stop().await;
}

/// An admin action is on the log before it runs: an `intent` entry (the caller, the digest of
/// the body, status 0), then the outcome's entry. When the log cannot take the intent, the
/// action is not taken (503); when it takes the intent but not the outcome, the action is on
/// the log and the answer (500) says that it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_written_ahead_and_not_taken_when_the_log_fails() {
    use palisade_gateway::audit::{
        AppendFuture, AuditError, AuditLog, ConsistencyProof, InclusionProof, SignedCheckpoint,
    };
    use sha2::{Digest as _, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Takes appends while `left` is above zero.
    struct Breakable {
        inner: Arc<dyn AuditLog>,
        left: Arc<AtomicU64>,
    }
    impl AuditLog for Breakable {
        fn append(&self, entry: Vec<u8>) -> AppendFuture {
            let took = self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if took.is_err() {
                return Box::pin(async { Err(AuditError::Write("disk full".into())) });
            }
            self.inner.append(entry)
        }
        fn size(&self) -> Result<u64, AuditError> {
            self.inner.size()
        }
        fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, AuditError> {
            self.inner.entry(index)
        }
        fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
            self.inner.latest_checkpoint()
        }
        fn inclusion(&self, index: u64, size: u64) -> Result<InclusionProof, AuditError> {
            self.inner.inclusion(index, size)
        }
        fn consistency(&self, first: u64, second: u64) -> Result<ConsistencyProof, AuditError> {
            self.inner.consistency(first, second)
        }
    }

    let left = Arc::new(AtomicU64::new(u64::MAX));
    let flag = left.clone();
    let s = start_audited_by(|inner| Arc::new(Breakable { inner, left: flag })).await;
    let a = bearer(&s.admin);
    let body = br#"{"name":"svc","roles":["query:lin"]}"#;
    let r = request(
        s.addr,
        "POST",
        "/v2/admin/keys",
        &[
            ("Authorization", &a),
            ("X-Palisade-TOTP", &totp_now(&s.admin, -1)),
        ],
        body,
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let created = r.json()["key"].as_str().unwrap().to_string();
    let entries = s.audit_entries(0);
    assert_eq!(entries.len(), 2, "{entries:#?}");
    let (intent, outcome) = (&entries[0], &entries[1]);
    assert_eq!(intent["decision"], "intent", "{intent}");
    assert_eq!(intent["status"], 0, "{intent}");
    assert_eq!(intent["action"], outcome["action"], "{intent}");
    assert_eq!(intent["key_id"], s.admin.record.id.as_str(), "{intent}");
    let digest: String = Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(intent["input_sha256"], digest.as_str(), "{intent}");
    assert_eq!(outcome["decision"], "allowed", "{outcome}");
    assert_eq!(outcome["status"], 201, "{outcome}");

    // A body too large for an admin request: refused before any intent (the refusal's own
    // entry only).
    let other = s
        .state
        .keys
        .create("adm2", &[Role::Admin], None, now_ms())
        .unwrap();
    let r = request(
        s.addr,
        "POST",
        "/v2/admin/keys",
        &[
            ("Authorization", &bearer(&other)),
            ("X-Palisade-TOTP", &totp_now(&other, 0)),
        ],
        &vec![b' '; (1 << 20) + 1],
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");
    let entries = s.audit_entries(0);
    assert_eq!(entries.len(), 3, "{entries:#?}");
    assert_eq!(entries[2]["decision"], "denied:validate", "{}", entries[2]);

    // The log fails: the revocation is refused and not done.
    left.store(0, Ordering::SeqCst);
    let id = &created[4..16];
    let revoke = |offset| {
        let (addr, a, code) = (s.addr, a.clone(), totp_now(&s.admin, offset));
        async move {
            request(
                addr,
                "POST",
                &format!("/v2/admin/keys/{id}/revoke"),
                &[("Authorization", &a), ("X-Palisade-TOTP", &code)],
                b"",
            )
            .await
        }
    };
    let r = revoke(0).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.error().contains("not served"), "{r:?}");
    let valid = || {
        matches!(
            s.state.keys.authenticate(&created, now_ms()),
            Ok(Authn::Valid(_))
        )
    };
    assert!(valid());
    assert_eq!(s.audit_entries(0).len(), 3);
    // An infer run while the log fails is answered 503 without its outputs, and its version's
    // statistics count a failure, not a success (review, 2026-12-07).
    let r = post_infer(s.addr, "lin", &bearer(&s.query), &json_infer(&[0.1; 8], 2)).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.json().get("outputs").is_none(), "{r:?}");
    let v = s
        .models
        .get("lin", None)
        .unwrap()
        .stats
        .snapshot("lin", "1");
    let st = v.inference_stats;
    assert_eq!((st.success.count, st.fail.count), (0, 1), "{v:?}");
    assert_eq!((v.inference_count, v.execution_count), (0, 0), "{v:?}");

    // The log takes the intent, then fails: the revocation is done, and on the log. The code
    // of the refused attempt was given back: it works again.
    left.store(1, Ordering::SeqCst);
    let r = revoke(0).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert!(r.error().contains("the action ran"), "{r:?}");
    assert!(r.error().contains("entry 3"), "{r:?}");
    assert!(!valid());
    let entries = s.audit_entries(0);
    assert_eq!(entries.len(), 4, "{entries:#?}");
    assert_eq!(entries[3]["decision"], "intent", "{}", entries[3]);
    assert!(
        entries[3]["path"].as_str().unwrap().ends_with("/revoke"),
        "{}",
        entries[3]
    );
    left.store(u64::MAX, Ordering::SeqCst);
    s.stop().await;
}

/// A limits store that charges nothing and, on its first call, deploys version 2 of `lin` with a
/// daily budget: a swap landing while a request's limits are charged (a Redis round trip, say).
struct SwapWhileCharging {
    models: std::sync::OnceLock<Arc<palisade_gateway::ModelRepository>>,
    charged: std::sync::Mutex<Vec<Option<u64>>>,
}

impl palisade_gateway::guard::ratelimit::LimitStore for SwapWhileCharging {
    fn admit<'a>(
        &'a self,
        c: palisade_gateway::guard::ratelimit::Charge<'a>,
    ) -> palisade_gateway::guard::ratelimit::AdmitFuture<'a> {
        self.charged.lock().unwrap().push(c.limits.daily_budget);
        if let Some(m) = self.models.get() {
            let policy = format!("{LIN_POLICY}[limits]\ndaily_budget = 1\n");
            let _ = m.deploy(served("lin", "2", &policy));
        }
        Box::pin(async {
            Ok(palisade_gateway::guard::ratelimit::Admission::Admitted(
                Vec::new(),
            ))
        })
    }

    /// Charges nothing, so has nothing to give back.
    fn reset_budget<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: u64,
    ) -> palisade_gateway::guard::ratelimit::ResetFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_served_by_the_version_whose_limits_it_was_charged() {
    let store = Arc::new(SwapWhileCharging {
        models: Default::default(),
        charged: Default::default(),
    });
    let s = start_limited_by(store.clone()).await;
    let _ = store.models.set(s.models.clone());
    let r = post_infer(s.addr, "lin", &bearer(&s.query), &json_infer(&[0.5; 4], 1)).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Charged under version 1's limits (no budget), while version 2 was deployed: served by 1.
    assert_eq!(*store.charged.lock().unwrap(), vec![None]);
    assert_eq!(r.json()["model_version"], "1", "{r:?}");
    // No limits charged: no RateLimit fields, rather than empty ones.
    assert!(!r.headers.contains_key("ratelimit"), "{r:?}");
    assert!(!r.headers.contains_key("ratelimit-policy"), "{r:?}");
    // The next request is charged and served by version 2.
    let r = post_infer(s.addr, "lin", &bearer(&s.query), &json_infer(&[0.5; 4], 1)).await;
    assert_eq!(r.json()["model_version"], "2", "{r:?}");
    assert_eq!(store.charged.lock().unwrap()[1], Some(1));
    s.stop().await;
}
