//! The audit log on disk: appends are durable and ordered, proofs verify, and the offline
//! verifier catches rewritten, reordered and truncated logs.

use palisade_gateway::audit::{
    AuditLog as _, AuditRecord, CheckpointPolicy, CheckpointSigner, Durability, SqliteAuditLog,
    verify_log,
};
use std::time::Duration;

fn record(i: u64) -> Vec<u8> {
    serde_json::to_vec(&AuditRecord {
        ts_ms: i,
        key_id: Some("0123456789ab".into()),
        method: "POST".into(),
        path: "/v2/models/m/infer".into(),
        action: "infer".into(),
        model: Some("m".into()),
        version: Some("1".into()),
        decision: "allowed".into(),
        status: 200,
        input_sha256: None,
        output_sha256: None,
        latency_us: i,
        operator: None,
    })
    .unwrap()
}

fn write_log(path: &std::path::Path, n: u64, every: u64) -> [u8; 32] {
    let signer = CheckpointSigner::from_seed(&[9u8; 32]);
    let pk = signer.public_key();
    let log = SqliteAuditLog::open(
        path,
        signer,
        CheckpointPolicy {
            every_entries: every,
            every: Duration::from_secs(3600),
        },
        Durability::Full,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let futs: Vec<_> = (0..n).map(|i| log.append(record(i))).collect();
        for (i, f) in futs.into_iter().enumerate() {
            assert_eq!(f.await.unwrap(), i as u64);
        }
    });
    log.close();
    pk
}

/// Verifies the log at `db` and fails unless a problem mentions `needle`.
fn assert_problem(
    db: &std::path::Path,
    pk: &[u8; 32],
    trusted: &[palisade_gateway::audit::SignedCheckpoint],
    needle: &str,
) {
    let r = verify_log(db, pk, trusted).unwrap();
    assert!(
        r.problems.iter().any(|p| p.contains(needle)),
        "no problem mentions {needle:?}: {:?}",
        r.problems
    );
}

/// Replaces entry `idx` by `record(with)`, with a matching leaf hash.
fn rewrite_entry(c: &rusqlite::Connection, idx: i64, with: u64) {
    let data = record(with);
    let leaf = palisade_gateway::audit::merkle::leaf_hash(&data);
    c.execute(
        "UPDATE entries SET data = ?1, leaf = ?2 WHERE idx = ?3",
        rusqlite::params![data, &leaf[..], idx],
    )
    .unwrap();
}

#[test]
fn a_clean_log_verifies_and_proofs_check() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let pk = write_log(&db, 100, 7);
    let r = verify_log(&db, &pk, &[]).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.entries, 100);
    assert_eq!(r.verified_up_to, 100, "closing signs a final checkpoint");
    assert!(r.checkpoints >= 1);
    let off = palisade_gateway::audit::open_offline(&db).unwrap();
    for i in [0, 50, 99] {
        assert!(off.inclusion(i, 100).unwrap().verify());
    }
    assert!(off.consistency(13, 100).unwrap().verify());
    assert!(off.inclusion(100, 100).is_err());
    assert!(off.consistency(0, 10).is_err());
    // A different key does not verify.
    let other = CheckpointSigner::from_seed(&[1u8; 32]).public_key();
    assert!(!verify_log(&db, &other, &[]).unwrap().ok());
}

#[test]
fn tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let pk = write_log(&db, 40, 10);
    let trusted = palisade_gateway::audit::open_offline(&db)
        .unwrap()
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    let c = rusqlite::Connection::open(&db).unwrap();

    // Rewrite one entry and its leaf hash consistently: the checkpoints catch it.
    rewrite_entry(&c, 5, 999);
    assert_problem(&db, &pk, &[], "root");

    // Restore, then truncate the log and delete the checkpoints that covered the tail: only a
    // checkpoint kept elsewhere notices.
    rewrite_entry(&c, 5, 5);
    assert!(verify_log(&db, &pk, &[]).unwrap().ok());
    c.execute("DELETE FROM entries WHERE idx >= 30", [])
        .unwrap();
    c.execute("DELETE FROM checkpoints WHERE size > 30", [])
        .unwrap();
    assert!(verify_log(&db, &pk, &[]).unwrap().ok());
    assert_problem(&db, &pk, &[trusted], "removed");

    // A leaf hash that does not match its data.
    c.execute("UPDATE entries SET data = X'00' WHERE idx = 3", [])
        .unwrap();
    assert_problem(&db, &pk, &[], "entry 3");
}

/// A state folder at `dir` whose key database has queued two changes for the audit log: its first
/// admin key (returned), and that key's revocation by `palisade keys` as `ops@host`.
fn with_two_queued_key_changes(
    dir: &std::path::Path,
    durability: Durability,
) -> (palisade_gateway::LocalState, palisade_gateway::keys::NewKey) {
    use palisade_gateway::keys::{KeyStore as _, SqliteKeyStore};
    let state =
        palisade_gateway::LocalState::open(dir, CheckpointPolicy::default(), durability).unwrap();
    let admin = state.first_admin_key().unwrap().unwrap();
    let cli = SqliteKeyStore::open(&state.paths.keys_db())
        .unwrap()
        .for_operator("ops@host");
    assert!(cli.revoke(&admin.record.id, 1_700_000_000_000).unwrap());
    (state, admin)
}

/// A gateway that dies between appending a queued key change and taking it off the queue does
/// not append it again when it restarts; one that died before appending it does append it.
#[tokio::test]
async fn a_key_change_reaches_the_audit_log_once_across_a_crash_of_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _) = with_two_queued_key_changes(dir.path(), Durability::Process);
    let queued = state.keys.outbox(10).unwrap();
    assert_eq!(queued.len(), 2);
    // The first drain died after appending the first change (and a request's entry came
    // after it), before taking it off the queue; it had not yet appended the second one.
    state.keys.outbox_trying(queued[0].seq, 0).unwrap();
    state.audit.append(queued[0].entry.clone()).await.unwrap();
    state.audit.append(b"{}".to_vec()).await.unwrap();
    state.keys.outbox_trying(queued[1].seq, 2).unwrap();
    // The next drain finds the first in the log and appends only the second.
    assert_eq!(state.drain_key_outbox().await.unwrap(), 1);
    assert!(state.keys.outbox(10).unwrap().is_empty());
    assert_eq!(state.audit.size().unwrap(), 3);
    assert_eq!(state.audit.entry(0).unwrap().unwrap(), queued[0].entry);
    assert_eq!(state.audit.entry(2).unwrap().unwrap(), queued[1].entry);
}

/// The drain waits for the key database on a blocking thread: while another process holds the
/// database's write lock, a gateway with a single async worker goes on serving.
#[test]
fn a_drain_waiting_for_the_key_database_does_not_hold_up_the_async_worker() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = with_two_queued_key_changes(dir.path(), Durability::Process);
        let state = std::sync::Arc::new(state);
        // Another process writing to the key database, for 300 ms.
        let other = rusqlite::Connection::open(state.paths.keys_db()).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let held = std::time::Instant::now();
        let drain = tokio::spawn({
            let state = state.clone();
            async move { state.drain_key_outbox().await.unwrap() }
        });
        // Meanwhile the worker runs another task: a 300 ms sleep ends well within 5 s (a
        // drain on the worker would hold it for the key database's 10 s busy timeout).
        let other_task = tokio::spawn(tokio::time::sleep(std::time::Duration::from_millis(300)));
        tokio::time::timeout(std::time::Duration::from_secs(5), other_task)
            .await
            .expect("the async worker was held up")
            .unwrap();
        assert!(!drain.is_finished(), "the drain did not wait for the lock");
        other.execute_batch("COMMIT").unwrap();
        assert!(held.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(drain.await.unwrap(), 2);
    });
}

/// Key changes made outside the HTTP API reach the audit log, each once: the first admin key, and
/// a revocation by `palisade keys` (its own connection, as an operator) while the gateway holds
/// the state folder. The log then verifies.
#[tokio::test]
async fn key_changes_by_operators_are_moved_into_the_audit_log() {
    use palisade_gateway::keys::OPERATOR_METHOD;
    use palisade_gateway::{GatewayError, LocalState};
    let dir = tempfile::tempdir().unwrap();
    let (state, admin) = with_two_queued_key_changes(dir.path(), Durability::Full);
    assert!(matches!(
        LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Full),
        Err(GatewayError::InUse(_))
    ));
    assert_eq!(state.drain_key_outbox().await.unwrap(), 2);
    assert_eq!(state.drain_key_outbox().await.unwrap(), 0);
    assert_eq!(state.audit.size().unwrap(), 2);
    let entry = |i| -> serde_json::Value {
        serde_json::from_slice(&state.audit.entry(i).unwrap().unwrap()).unwrap()
    };
    let (first, revoked) = (entry(0), entry(1));
    assert_eq!(first["operator"], "palisade serve (first start)", "{first}");
    assert_eq!(first["action"], "admin.keys", "{first}");
    assert!(
        first["path"].as_str().unwrap().contains(&admin.record.id),
        "{first}"
    );
    assert_eq!(revoked["operator"], "ops@host", "{revoked}");
    assert_eq!(revoked["method"], OPERATOR_METHOD, "{revoked}");
    assert_eq!(revoked["action"], "admin.keys.revoke", "{revoked}");
    let (db, pk) = (state.paths.audit_db(), state.public_key);
    drop(state);
    let report = verify_log(&db, &pk, &[]).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.entries, 2);
}

/// Proofs come from the stored roots of perfect subtrees, not from every leaf: with a leaf far
/// from its path rewritten, the proof of entry 0 still verifies against the checkpoint (from
/// the leaves, its root would change). A log whose node table is gone (made before it existed)
/// still gets the same proofs, from its leaves, and reopening it fills the table again.
#[test]
fn proofs_read_stored_subtrees_and_old_logs_still_prove() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    write_log(&db, 1000, 250);
    let off = palisade_gateway::audit::open_offline(&db).unwrap();
    let checkpoint = off.latest_checkpoint().unwrap().unwrap();
    assert_eq!(checkpoint.checkpoint.size, 1000);
    let expected: Vec<_> = [0u64, 1, 15, 16, 511, 512, 999]
        .iter()
        .map(|&i| off.inclusion(i, 1000).unwrap())
        .collect();
    let consistency = off.consistency(250, 1000).unwrap();
    for p in &expected {
        assert!(p.verify(), "{p:?}");
        assert_eq!(p.root, checkpoint.checkpoint.root, "{p:?}");
    }
    assert!(consistency.verify());
    let c = rusqlite::Connection::open(&db).unwrap();
    let nodes = |c: &rusqlite::Connection| -> i64 {
        c.query_row("SELECT COUNT(*) FROM nodes", [], |r| r.get(0))
            .unwrap()
    };
    // Levels 4.. of 1000 leaves: 62 + 31 + 15 + 7 + 3 + 1.
    assert_eq!(nodes(&c), 119);

    // Entry 900's leaf rewritten (no checkpoint covers the change): entry 0's proof reads
    // only stored subtrees on that side, and does not notice.
    let leaf: Vec<u8> = c
        .query_row("SELECT leaf FROM entries WHERE idx = 900", [], |r| r.get(0))
        .unwrap();
    c.execute("UPDATE entries SET leaf = zeroblob(32) WHERE idx = 900", [])
        .unwrap();
    assert_eq!(off.inclusion(0, 1000).unwrap(), expected[0]);
    c.execute(
        "UPDATE entries SET leaf = ?1 WHERE idx = 900",
        rusqlite::params![leaf],
    )
    .unwrap();

    // Without the node table: the same proofs, hashed from the leaves.
    c.execute("DELETE FROM nodes", []).unwrap();
    for (p, &i) in expected.iter().zip(&[0u64, 1, 15, 16, 511, 512, 999]) {
        assert_eq!(off.inclusion(i, 1000).unwrap(), *p);
    }
    assert_eq!(off.consistency(250, 1000).unwrap(), consistency);
    drop(off);
    // A gateway opening the log fills the table in again.
    let log = SqliteAuditLog::open(
        &db,
        CheckpointSigner::from_seed(&[9u8; 32]),
        CheckpointPolicy::default(),
        Durability::Full,
    )
    .unwrap();
    log.close();
    assert_eq!(nodes(&c), 119);
}

/// Opening a log takes its tree up from the stored subtree roots, checked against the latest
/// signed checkpoint, and the entries after it: the tree goes on as if rebuilt from every leaf.
/// A damaged table is rebuilt; a log that contradicts its own signed checkpoint is refused.
#[test]
fn reopening_resumes_from_stored_roots_and_refuses_a_log_its_checkpoint_contradicts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let pk = write_log(&db, 1000, 300);
    let open = |seed: u8| {
        SqliteAuditLog::open(
            &db,
            CheckpointSigner::from_seed(&[seed; 32]),
            CheckpointPolicy::default(),
            Durability::Full,
        )
    };
    let off = palisade_gateway::audit::open_offline(&db).unwrap();
    let full = off.latest_checkpoint().unwrap().unwrap().checkpoint;
    drop(off);
    let c = rusqlite::Connection::open(&db).unwrap();
    let zero_node = |level: u32, idx: i64| {
        c.execute(
            "UPDATE nodes SET hash = zeroblob(32) WHERE level = ?1 AND idx = ?2",
            rusqlite::params![level, idx],
        )
        .unwrap();
    };
    let node = |level: u32, idx: i64| -> Vec<u8> {
        c.query_row(
            "SELECT hash FROM nodes WHERE level = ?1 AND idx = ?2",
            rusqlite::params![level, idx],
            |r| r.get(0),
        )
        .unwrap()
    };

    // As a killed gateway leaves it: 100 entries after the last checkpoint (900). Reopening
    // signs them, with the root of all 1000 leaves.
    c.execute("DELETE FROM checkpoints WHERE size > 900", [])
        .unwrap();
    open(9).unwrap().close();
    let off = palisade_gateway::audit::open_offline(&db).unwrap();
    let again = off.latest_checkpoint().unwrap().unwrap().checkpoint;
    drop(off);
    assert_eq!((again.size, &again.root), (1000, &full.root));
    assert!(verify_log(&db, &pk, &[]).unwrap().ok());

    // An interior stored root rewritten: the verifier says so; emptying the table and
    // reopening refills it.
    let interior = node(4, 3);
    zero_node(4, 3);
    assert_problem(&db, &pk, &[], "(level 4, index 3)");
    c.execute("DELETE FROM nodes", []).unwrap();
    open(9).unwrap().close();
    assert_eq!(node(4, 3), interior);
    assert!(verify_log(&db, &pk, &[]).unwrap().ok());

    // A root on the tree's right edge rewritten (1000 = 512 + 256 + ...): the resumed tree
    // does not give the checkpoint's root, so the table is rebuilt from the leaves.
    let edge = node(9, 0);
    zero_node(9, 0);
    open(9).unwrap().close();
    assert_eq!(node(9, 0), edge);

    // Another key's gateway does not extend the log.
    let e = open(1).unwrap_err().to_string();
    assert!(e.contains("not signed by this gateway's audit key"), "{e}");

    // An entry rewritten together with its leaf hash and the stored roots: the resumed tree
    // contradicts the signed checkpoint, and the log is refused.
    rewrite_entry(&c, 5, 999);
    c.execute("DELETE FROM nodes", []).unwrap();
    let e = open(9).unwrap_err().to_string();
    assert!(e.contains("does not match its latest checkpoint"), "{e}");
    // Refused, the log is left as it was: the table rebuilt from the altered entries is not kept.
    let kept: i64 = c
        .query_row("SELECT COUNT(*) FROM nodes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 0);
    rewrite_entry(&c, 5, 5);

    // Entries under a checkpoint deleted.
    c.execute("DELETE FROM entries WHERE idx >= 950", [])
        .unwrap();
    let e = open(9).unwrap_err().to_string();
    assert!(e.contains("entries were removed"), "{e}");
}

/// A lost audit key is not silently replaced while the log it signed is there: a new key could
/// neither verify the log's checkpoints nor extend it.
#[test]
fn a_lost_audit_key_is_not_replaced_under_its_log() {
    use palisade_gateway::server::{StatePaths, load_or_create_signer};
    let dir = tempfile::tempdir().unwrap();
    let paths = StatePaths::new(dir.path());
    let signer = load_or_create_signer(&paths).unwrap();
    let log = SqliteAuditLog::open(
        &paths.audit_db(),
        signer,
        CheckpointPolicy::default(),
        Durability::Full,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(log.append(record(0))).unwrap();
    log.close();
    // The same key is loaded again.
    let again = load_or_create_signer(&paths).unwrap();
    std::fs::remove_file(paths.signing_key()).unwrap();
    let e = load_or_create_signer(&paths).unwrap_err().to_string();
    assert!(e.contains("is missing"), "{e}");
    assert!(!paths.signing_key().exists());
    // Without the log, a new key is made.
    std::fs::remove_file(paths.audit_db()).unwrap();
    assert_ne!(
        load_or_create_signer(&paths).unwrap().public_key(),
        again.public_key()
    );
}

/// Verifies a log of `entries` (full durability, appended in order).
fn verified(entries: Vec<Vec<u8>>) -> palisade_gateway::audit::VerifyReport {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = CheckpointSigner::from_seed(&[9u8; 32]);
    let pk = signer.public_key();
    let log =
        SqliteAuditLog::open(&db, signer, CheckpointPolicy::default(), Durability::Full).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for e in entries {
            log.append(e).await.unwrap();
        }
    });
    log.close();
    verify_log(&db, &pk, &[]).unwrap()
}

/// A log with entries that carry fields this version does not know (written by a later gateway)
/// verifies, and the report counts those fields.
#[test]
fn fields_a_later_gateway_records_do_not_fail_verification_and_are_counted() {
    let later = |i: u64| {
        let mut v: serde_json::Value = serde_json::from_slice(&record(i)).unwrap();
        v["tenant"] = "t1".into();
        serde_json::to_vec(&v).unwrap()
    };
    let report = verified(vec![record(0), later(1), later(2)]);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.entries, 3);
    assert_eq!(
        report.unknown_fields.into_iter().collect::<Vec<_>>(),
        [("tenant".to_string(), 2)]
    );
}

/// An unknown field whose name is written with an escape is counted under its name.
#[test]
fn an_unknown_field_written_with_an_escape_is_counted() {
    let mut escaped = record(0);
    escaped.pop();
    escaped.extend_from_slice(br#","t\u0065nant":"t1"}"#);
    let report = verified(vec![escaped]);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(
        report.unknown_fields.into_iter().collect::<Vec<_>>(),
        [("tenant".to_string(), 1)]
    );
}
