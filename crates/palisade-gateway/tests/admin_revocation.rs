//! An admin action is checked against its key again just before it runs: a client that sent its
//! headers (key and TOTP code, both checked then) and held its body back cannot make the action
//! run after the key's revocation has returned, nor hold it longer than the admin body deadline.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use palisade_gateway::audit::{AuditLog as _, CheckpointPolicy, Durability};
use palisade_gateway::keys::{Authn, KeyStore as _, SqliteKeyStore, totp_code};
use palisade_gateway::{LocalState, ModelRepository};
use tower::ServiceExt as _;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A fresh state folder with its first admin key, and a request by that key (with a TOTP code)
/// to create a key, whose body is sent through the returned sender, as and when the test likes.
struct HeldBack {
    _dir: tempfile::TempDir,
    state: LocalState,
    admin: palisade_gateway::keys::NewKey,
    router: axum::Router,
    tx: http_body_util::channel::Sender<bytes::Bytes, std::convert::Infallible>,
    req: axum::http::Request<Body>,
}

fn held_back_create_key() -> HeldBack {
    let dir = tempfile::tempdir().unwrap();
    let state =
        LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Full).unwrap();
    let admin = state.first_admin_key().unwrap().unwrap();
    let router = state
        .gateway(Arc::new(ModelRepository::new()))
        .unwrap()
        .router();
    let code = totp_code(admin.totp_secret.as_ref().unwrap(), now_ms()).unwrap();
    let (tx, body) =
        http_body_util::channel::Channel::<bytes::Bytes, std::convert::Infallible>::new(1);
    let req = axum::http::Request::post("/v2/admin/keys")
        .header("authorization", format!("Bearer {}", admin.key))
        .header("x-palisade-totp", code)
        .header("content-type", "application/json")
        .body(Body::new(body))
        .unwrap();
    HeldBack {
        _dir: dir,
        state,
        admin,
        router,
        tx,
        req,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_action_held_back_does_not_run_after_its_key_is_revoked() {
    let HeldBack {
        _dir,
        state,
        admin,
        router,
        mut tx,
        req,
    } = held_back_create_key();
    let call = tokio::spawn(router.oneshot(req));
    // Past authentication and the TOTP check, waiting for the body.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cli = SqliteKeyStore::open(&state.paths.keys_db())
        .unwrap()
        .for_operator("ops@host");
    assert!(cli.revoke(&admin.record.id, now_ms()).unwrap());
    assert!(matches!(
        state.keys.authenticate(&admin.key, now_ms()).unwrap(),
        Authn::Revoked(_)
    ));
    tx.send_data(bytes::Bytes::from_static(
        br#"{"name":"backdoor","roles":["admin","deploy","audit","query:*"]}"#,
    ))
    .await
    .unwrap();
    drop(tx);
    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.status(), axum::http::StatusCode::UNAUTHORIZED);
    let made = state
        .keys
        .list()
        .unwrap()
        .into_iter()
        .filter(|k| k.name == "backdoor")
        .count();
    assert_eq!(
        made, 0,
        "the revoked key made a key after its revocation returned"
    );
    // The intent was written, and its outcome: refused by authentication.
    let last = state.audit.size().unwrap();
    let entry: serde_json::Value =
        serde_json::from_slice(&state.audit.entry(last - 1).unwrap().unwrap()).unwrap();
    assert_eq!(entry["status"], 401, "{entry}");
    assert_eq!(entry["decision"], "denied:authenticate", "{entry}");
}

/// Real time: the TOTP check's write runs off the runtime, so a paused clock would jump past
/// the test's own bound meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_body_held_back_is_answered_408_at_its_deadline() {
    use palisade_gateway::guard::audit::ADMIN_BODY_TIMEOUT;
    let HeldBack {
        _dir,
        state,
        router,
        mut tx,
        req,
        ..
    } = held_back_create_key();
    let before = state.audit.size().unwrap();
    // The start of the body, and then nothing (the sender is kept alive).
    tx.send_data(bytes::Bytes::from_static(br#"{"name":"slow","#))
        .await
        .unwrap();
    let t = tokio::time::Instant::now();
    let resp = tokio::time::timeout(ADMIN_BODY_TIMEOUT * 3, router.oneshot(req))
        .await
        .expect("answered once the body's deadline passed")
        .unwrap();
    assert_eq!(resp.status(), axum::http::StatusCode::REQUEST_TIMEOUT);
    assert!(t.elapsed() >= ADMIN_BODY_TIMEOUT, "{:?}", t.elapsed());
    assert_eq!(resp.headers()["connection"], "close");
    let text = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("did not arrive within 10000 ms"), "{text}");
    assert!(state.keys.list().unwrap().iter().all(|k| k.name != "slow"));
    // No intent (the action never had its body), and the refusal itself is on the log.
    assert_eq!(state.audit.size().unwrap(), before + 1);
    let entry: serde_json::Value =
        serde_json::from_slice(&state.audit.entry(before).unwrap().unwrap()).unwrap();
    assert_eq!(entry["status"], 408, "{entry}");
    assert_eq!(entry["decision"], "denied:validate", "{entry}");
    drop(tx);
}
