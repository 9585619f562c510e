//! What an inclusion and a consistency proof cost as the audit log grows: logs of 1 024, 16 384
//! and 131 072 entries, proofs through `open_offline` (as `palisade audit inclusion` and the
//! `/v2/audit/proof/*` routes make them). From stored subtree roots a proof reads O(log² n)
//! rows, so the time should grow by a small factor from the smallest log to the largest, not
//! by 128.
//!
//! Also what a gateway's opening of the log costs (`open`, then `close`): it takes the tree up
//! from the stored subtree roots of its right edge, checked against the latest checkpoint, so
//! that too should not grow with the log.
//!
//! `cargo bench -p palisade-gateway --bench audit_proofs`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade_gateway::audit::{
    AuditLog as _, CheckpointPolicy, CheckpointSigner, Durability, SqliteAuditLog, open_offline,
};

/// A log of `n` small entries at `path`, written in groups as a loaded gateway writes them.
fn write_log(path: &std::path::Path, n: u64) {
    let log = SqliteAuditLog::open(
        path,
        CheckpointSigner::from_seed(&[3u8; 32]),
        CheckpointPolicy {
            every_entries: 4096,
            every: Duration::from_secs(3600),
        },
        Durability::Process,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for chunk in (0..n).collect::<Vec<_>>().chunks(4096) {
            let futs: Vec<_> = chunk
                .iter()
                .map(|i| log.append(format!("{{\"entry\":{i}}}").into_bytes()))
                .collect();
            for f in futs {
                f.await.unwrap();
            }
        }
    });
    log.close();
}

fn proofs(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("audit_proofs");
    g.sample_size(20);
    for n in [1u64 << 10, 1 << 14, 1 << 17] {
        let db = dir.path().join(format!("audit-{n}.db"));
        write_log(&db, n);
        let log = open_offline(&db).unwrap();
        g.bench_with_input(BenchmarkId::new("inclusion", n), &n, |b, &n| {
            b.iter(|| log.inclusion(n / 3, n).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("consistency", n), &n, |b, &n| {
            b.iter(|| log.consistency(n / 2 + 1, n).unwrap())
        });
    }
    g.finish();
    let mut g = c.benchmark_group("audit_open");
    g.sample_size(10);
    for n in [1u64 << 10, 1 << 14, 1 << 17] {
        let db = dir.path().join(format!("audit-{n}.db"));
        g.bench_with_input(BenchmarkId::new("open_close", n), &n, |b, _| {
            b.iter(|| {
                SqliteAuditLog::open(
                    &db,
                    CheckpointSigner::from_seed(&[3u8; 32]),
                    CheckpointPolicy::default(),
                    Durability::Full,
                )
                .unwrap()
                .close()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, proofs);
criterion_main!(benches);
