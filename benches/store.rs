//! The embedded store's writes do not grow with its state: one refresh
//! rotation (a durable check-and-set, fsynced) and one revocation (a row
//! and a log entry, fsynced) with 0, 100k and 1M rotations and revocations
//! already stored. The YAML file it replaces rewrote everything on each:
//! 27 ms per refresh when empty, 744 ms at 100k entries.
//!
//! Run: `cargo bench --bench store`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use valet::store::sqlite::SqliteStore;
use valet::store::{Record, Store};

/// A store holding `n` rotations and `n` revocations (written in bulk, in
/// one transaction, the way a long-running authority accumulates them).
fn filled(dir: &std::path::Path, n: u64) -> SqliteStore {
    let path = dir.join(format!("bench-{n}.db"));
    let s = SqliteStore::open(&path).unwrap();
    let mut c = rusqlite::Connection::open(&path).unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut rot = tx
            .prepare("INSERT INTO rotations (jti, expires_at, first_use_ms) VALUES (?1, ?2, ?3)")
            .unwrap();
        let mut rev = tx
            .prepare("INSERT INTO revoked (kind, key, value) VALUES (0, ?1, ?2)")
            .unwrap();
        let mut log = tx
            .prepare("INSERT INTO log (kind, key, value) VALUES (0, ?1, ?2)")
            .unwrap();
        for i in 0..n {
            let jti = format!("{i:032x}");
            rot.execute(rusqlite::params![jti, 4_000_000_000i64, 0i64])
                .unwrap();
            rev.execute(rusqlite::params![jti, 4_000_000_000i64])
                .unwrap();
            log.execute(rusqlite::params![jti, 4_000_000_000i64])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    s
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(std::env::var("VALET_BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .unwrap();
    let mut g = c.benchmark_group("store");
    g.sample_size(30).measurement_time(Duration::from_secs(5));
    for n in [0u64, 100_000, 1_000_000] {
        let s = filled(dir.path(), n);
        let next = AtomicU64::new(0);
        g.bench_with_input(BenchmarkId::new("rotate (first use)", n), &n, |b, _| {
            b.iter(|| {
                let i = next.fetch_add(1, Ordering::Relaxed);
                s.rotate(&format!("new-{i}"), 4_000_000_000, 0, 0).unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("revoke (append)", n), &n, |b, _| {
            b.iter(|| {
                let i = next.fetch_add(1, Ordering::Relaxed);
                s.append(&[Record::Token {
                    jti: format!("rev-{i}"),
                    expires_at: 4_000_000_000,
                }])
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
