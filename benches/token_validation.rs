//! Hot-path benchmarks: bearer token validation (cached and not) and
//! revocation lookups in a map of a million entries.
//!
//! Run: `cargo bench --bench token_validation`

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use std::sync::Arc;
use std::time::Duration;
use valet::config::TokenConfig;
use valet::revocation::{RevocationFile, RevocationSet, RevokedToken};
use valet::tokens::issue::{mint, TokenRequest};
use valet::tokens::keys::{self, KeyConfig};
use valet::tokens::Validator;

fn token_config(alg: jsonwebtoken::Algorithm, cache: usize) -> (TokenConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // Generated in memory; a benchmark has no use for the file.
    let key = keys::load(
        &KeyConfig {
            id: "k".into(),
            algorithm: alg,
            private_key_file: Some(dir.path().join("k.pem")),
            public_key_file: None,
            generate_if_missing: true,
        },
        &mut Vec::new(),
    )
    .unwrap();
    let cfg = TokenConfig {
        issuer: "https://valet.bench".into(),
        audiences: vec!["api".into()],
        clock_skew: Duration::from_secs(30),
        keys: vec![Arc::new(key)],
        signing_key: Some(0),
        access_token_ttl: Duration::from_secs(3600),
        cache_entries: cache,
        issuers: Vec::new(),
    };
    (cfg, dir)
}

fn big_revocation_set(n: usize, now: i64) -> RevocationSet {
    let file = RevocationFile {
        tokens: (0..n)
            .map(|i| RevokedToken {
                jti: format!("revoked-token-id-{i:010}"),
                expires_at: valet::revocation::time::Timestamp(now + 3600),
                rotated_at: None,
                rotated_at_ms: None,
            })
            .collect(),
        ..Default::default()
    };
    RevocationSet::from_file(file, now)
}

fn bench(c: &mut Criterion) {
    let now = valet::revocation::now();
    let req = TokenRequest {
        subject: "alice",
        client_id: "billing",
        scope: "read write",
        ttl: None,
        ..Default::default()
    };
    let revoked = big_revocation_set(1_000_000, now);

    for alg in [
        jsonwebtoken::Algorithm::EdDSA,
        jsonwebtoken::Algorithm::ES256,
    ] {
        let (cfg, _dir) = token_config(alg, 100_000);
        let token = mint(&cfg, &req, now).unwrap().token;
        let cached = Validator::new(&cfg);
        cached.validate(&token, &revoked, now).unwrap();
        c.bench_function(&format!("validate/{alg:?}/cached, 1M revocations"), |b| {
            b.iter(|| cached.validate(black_box(&token), &revoked, now).unwrap())
        });
        let (nocache_cfg, _d2) = token_config(alg, 0);
        let token2 = mint(&nocache_cfg, &req, now).unwrap().token;
        let uncached = Validator::new(&nocache_cfg);
        c.bench_function(&format!("validate/{alg:?}/signature verified"), |b| {
            b.iter(|| {
                uncached
                    .validate(black_box(&token2), &revoked, now)
                    .unwrap()
            })
        });
    }

    c.bench_function("revocation/check miss, 1M entries", |b| {
        b.iter(|| {
            revoked.check(
                black_box(Some("not-revoked-id-000000")),
                "billing",
                "alice",
                now,
                None,
            )
        })
    });
    c.bench_function("revocation/check hit, 1M entries", |b| {
        b.iter(|| {
            revoked.check(
                black_box(Some("revoked-token-id-0000500000")),
                "billing",
                "alice",
                now,
                None,
            )
        })
    });

    let mut g = c.benchmark_group("revocation/build");
    g.sample_size(10);
    g.bench_function("1M entries from parsed file", |b| {
        b.iter_batched(
            || (),
            |_| big_revocation_set(1_000_000, now),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
