//! What the audit API serves is checkable against the signed tree (review, 2026-12-06).
//!
//! An auditor fetches an entry (`GET /v2/audit/entries/{i}`) and its inclusion proof
//! (`GET /v2/audit/proof/inclusion?index=i`) and checks that `SHA-256(0x00 ‖ entry)` is the
//! proof's leaf: that is what ties the entry's content to a signed root.

mod common;

use base64::Engine as _;
use common::*;
use palisade_gateway::audit::merkle::leaf_hash;
use palisade_gateway::audit::{AuditError, AuditLog as _, InclusionProof, open_offline};

fn hex(b: impl AsRef<[u8]>) -> String {
    b.as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// `GET path` as the auditor; the answer must be 200.
async fn audited_get(s: &Server, path: &str) -> Reply {
    let r = request(
        s.addr,
        "GET",
        path,
        &[("Authorization", &bearer(&s.auditor))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r
}

/// One infer request, answered.
async fn infer(s: &Server) {
    let r = post_infer(
        s.addr,
        "lin",
        &bearer(&s.query),
        &json_infer(&[0.1, 0.2, 0.3, 0.4], 1),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// The API's answer for entry `i`: the body as sent, and the bytes of `leaf_input`.
async fn served_entry(s: &Server, i: u64) -> (Vec<u8>, Vec<u8>) {
    let r = audited_get(s, &format!("/v2/audit/entries/{i}")).await;
    let input = r.json()["leaf_input"]
        .as_str()
        .expect("leaf_input")
        .to_string();
    let input = base64::engine::general_purpose::STANDARD
        .decode(input)
        .expect("base64");
    (r.body.to_vec(), input)
}

async fn served_proof(s: &Server, i: u64) -> InclusionProof {
    let r = audited_get(s, &format!("/v2/audit/proof/inclusion?index={i}")).await;
    serde_json::from_slice(&r.body).unwrap()
}

/// The entry the API serves hashes to the leaf its inclusion proof proves: `leaf_input` holds
/// the stored bytes, and `entry` is those bytes as they are. (Parsed into a JSON value and
/// written again, its keys came back sorted, and it hashed to no leaf.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_entry_hashes_to_its_proofs_leaf() {
    let s = start().await;
    infer(&s).await;
    let i = s.state.audit.size().unwrap() - 1;
    let stored = s.state.audit.entry(i).unwrap().unwrap();
    let (body, served) = served_entry(&s, i).await;
    let proof = served_proof(&s, i).await;
    assert!(proof.verify());
    assert_eq!(served, stored);
    assert_eq!(hex(leaf_hash(&served)), proof.leaf);
    // `entry` is the stored text itself.
    let text = String::from_utf8(body).unwrap();
    let stored = String::from_utf8(stored).unwrap();
    assert!(text.contains(&format!("\"entry\":{stored}")), "{text}");
    s.stop().await;
}

/// No inclusion proof is given for an entry whose data was rewritten with its stored leaf hash
/// left alone: built from the stored hash, it verified against the signed root, and
/// `palisade audit inclusion --index I --checkpoint saved.json` (which makes this same call)
/// exited 0 for an entry whose content had been altered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_inclusion_proof_for_an_entry_whose_data_was_rewritten() {
    let s = start().await;
    for _ in 0..3 {
        infer(&s).await;
    }
    let n = s.state.audit.size().unwrap();
    let i = n - 2;
    let original = s.state.audit.entry(i).unwrap().unwrap();
    let db = s.state.paths.audit_db();
    let dir = s.stop().await;

    // Rewrite entry i's data (an allowed infer made to look refused), leaving its leaf.
    let forged = String::from_utf8(original.clone())
        .unwrap()
        .replace("\"allowed\"", "\"denied:authorise\"")
        .into_bytes();
    assert_ne!(forged, original);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE entries SET data = ?1 WHERE idx = ?2",
        rusqlite::params![forged, i as i64],
    )
    .unwrap();
    drop(conn);

    let log = open_offline(&db).unwrap();
    match log.inclusion(i, n) {
        Err(AuditError::Corrupt(m)) => assert!(m.contains("does not hash"), "{m}"),
        other => panic!("a proof for a rewritten entry: {other:?}"),
    }
    // The entries around it still prove.
    assert!(log.inclusion(i - 1, n).unwrap().verify());
    drop(dir);
}
