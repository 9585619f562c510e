//! An admin action is checked against its key again just before it runs: a client that sent its
//! headers (key and TOTP code, both checked then) and held its body back cannot make the action
//! run after the key's revocation has returned.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_action_held_back_does_not_run_after_its_key_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let state =
        LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Full).unwrap();
    let admin = state.first_admin_key().unwrap().unwrap();
    let gateway = state.gateway(Arc::new(ModelRepository::new())).unwrap();
    let code = totp_code(admin.totp_secret.as_ref().unwrap(), now_ms()).unwrap();
    let (mut tx, body) =
        http_body_util::channel::Channel::<bytes::Bytes, std::convert::Infallible>::new(1);
    let req = axum::http::Request::post("/v2/admin/keys")
        .header("authorization", format!("Bearer {}", admin.key))
        .header("x-palisade-totp", code)
        .header("content-type", "application/json")
        .body(Body::new(body))
        .unwrap();
    let call = tokio::spawn(gateway.router().oneshot(req));
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
