//! The cost OAuth 1.0 signing adds to a forwarded request: the whole
//! `Authorization: OAuth ...` header (nonce, timestamp, base string,
//! HMAC or RSA) for a GET with a query and for a form POST.
//!
//! Run: `cargo bench --bench oauth1_signing`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::Duration;
use valet::config::Provider;
use valet::oauth1::client::authorization;
use valet::oauth1::rsa_sha1::RsaSha1Key;
use valet::oauth1::signing::{Consumer, SignatureMethod};
use valet::oauth2::registry::Secret;

fn provider(method: SignatureMethod) -> Provider {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    Provider {
        name: "legacy".into(),
        request_token_url: "https://provider.example/rt".into(),
        authorize_url: "https://provider.example/authorize".into(),
        access_token_url: "https://provider.example/at".into(),
        consumer: Consumer {
            key: "dpf43f3p2l4k3l03".into(),
            secret: Secret::new(b"kd94hf93k423kf44".to_vec()),
            method,
            rsa_key: None,
            realm: Some("Legacy".into()),
        },
        callback_url: "https://valet.example/oauth1/legacy/callback".into(),
        return_urls: vec!["https://app.example/".into()],
        tls: Arc::new(tls),
        timeout: Duration::from_secs(10),
        shared_token: None,
        token_problems: Vec::new(),
        permissions: None,
        start_url: "https://valet.example/oauth1/legacy/authorize".into(),
    }
}

fn bench(c: &mut Criterion) {
    let url = "http://127.0.0.1:8090/v1/accounts/42/items?page=2&size=50&sort=name";
    let form: Vec<(String, String)> = vec![
        (
            "text".into(),
            "Hello Ladies + Gentlemen, a signed OAuth request!".into(),
        ),
        ("include_entities".into(), "true".into()),
    ];
    for (name, m) in [
        ("hmac_sha1", SignatureMethod::HmacSha1),
        ("hmac_sha256", SignatureMethod::HmacSha256),
        ("rsa_sha1_1024", SignatureMethod::RsaSha1),
    ] {
        let mut p = provider(m);
        if m == SignatureMethod::RsaSha1 {
            let pem = std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/oauth1-rsa-sha1-key.pem"
            ))
            .unwrap();
            p.consumer.rsa_key = Some(Arc::new(RsaSha1Key::from_pem(&pem).unwrap()));
        }
        let token = Some(("nnch734d00sl2jdk", "pfkkdhi9sl3r4s00"));
        c.bench_function(&format!("oauth1_sign_get_{name}"), |b| {
            b.iter(|| authorization(&p, token, &[], "GET", black_box(url), &[]).unwrap())
        });
        c.bench_function(&format!("oauth1_sign_form_post_{name}"), |b| {
            b.iter(|| authorization(&p, token, &[], "POST", black_box(url), &form).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
