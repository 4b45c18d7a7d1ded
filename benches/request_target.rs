//! The request guard's cost on the hot path: making a path canonical (the
//! common, already-canonical case borrows; a spelling that needs rewriting
//! allocates once), routing on it, scrubbing a request's headers, and
//! stripping valet's own cookies.
//!
//! Run: `cargo bench --bench request_target`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderName};
use valet::config::UnderscoreHeaders;
use valet::proxy::headers::{strip_own_cookies, Scrub};
use valet::proxy::router::{self, Candidate};
use valet::request_target::{canonical_path, PathPolicy};

fn headers(extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("accept", "application/json"),
        ("user-agent", "curl/8.5.0"),
        ("accept-encoding", "gzip, deflate"),
        ("content-type", "application/json"),
        ("x-request-id", "trace-1234"),
        ("authorization", "Bearer eyJhbGciOiJFZERTQSJ9.e30.sig"),
    ]
    .iter()
    .chain(extra)
    {
        h.insert(HeaderName::from_static(k), v.parse().unwrap());
    }
    h
}

fn bench(c: &mut Criterion) {
    let p = PathPolicy::default();
    c.bench_function("canonical_path/already canonical", |b| {
        b.iter(|| canonical_path(black_box("/api/v1/users/12345/orders"), &p))
    });
    c.bench_function("canonical_path/escaped", |b| {
        b.iter(|| canonical_path(black_box("/api/v1/%75sers/caf%c3%a9/orders"), &p))
    });
    let routes: Vec<(Option<&str>, &str)> = vec![
        (None, "/"),
        (None, "/api"),
        (None, "/api/v1"),
        (None, "/admin"),
        (Some("a.example"), "/"),
        (None, "/oauth1"),
        (None, "/public"),
        (None, "/legacy"),
    ];
    c.bench_function("route/8 routes", |b| {
        b.iter(|| {
            router::select(
                routes.iter().map(|(h, p)| Candidate {
                    host: *h,
                    prefix: p,
                    case_insensitive: false,
                }),
                Some("localhost"),
                black_box("/api/v1/users/12345"),
            )
        })
    });
    let (s, ci, sc, is) = (
        HeaderName::from_static("x-valet-subject"),
        HeaderName::from_static("x-valet-client-id"),
        HeaderName::from_static("x-valet-scopes"),
        HeaderName::from_static("x-valet-issuer"),
    );
    let scrub = Scrub {
        underscores: UnderscoreHeaders::Drop,
        trusted: false,
        identity: [&s, &ci, &sc, &is],
        extra: &[],
    };
    let clean = headers(&[]);
    c.bench_function("scrub/clean request", |b| {
        b.iter_batched_ref(
            || clean.clone(),
            |h| scrub.apply(h),
            criterion::BatchSize::SmallInput,
        )
    });
    let forged = headers(&[("x_valet_subject", "admin"), ("x-real-ip", "1.2.3.4")]);
    c.bench_function("scrub/forged headers", |b| {
        b.iter_batched_ref(
            || forged.clone(),
            |h| scrub.apply(h),
            criterion::BatchSize::SmallInput,
        )
    });
    // valet's own OAuth 1.0 state cookie stripped from what is forwarded:
    // the common case (an application's cookies, none of valet's) only
    // scans; a request carrying one rebuilds its Cookie header.
    const APP_COOKIES: &str = "session=3f2a9c81e0b54d7a; theme=dark; _ga=GA1.2.1234567890.1700000000; csrftoken=a1b2c3d4e5f6a7b8c9d0";
    let app = headers(&[("cookie", APP_COOKIES)]);
    c.bench_function("own cookies/none in 4 cookies", |b| {
        b.iter_batched_ref(
            || app.clone(),
            strip_own_cookies,
            criterion::BatchSize::SmallInput,
        )
    });
    let with_state = headers(&[(
        "cookie",
        "session=3f2a9c81e0b54d7a; __Host-valet_oauth1_legacy=Jq3x9d0B8k2LmZ7rT5vW1yA4; theme=dark",
    )]);
    c.bench_function("own cookies/one stripped", |b| {
        b.iter_batched_ref(
            || with_state.clone(),
            strip_own_cookies,
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
