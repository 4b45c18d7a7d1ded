//! Every fuzz corpus and seed file (`fuzz/corpus/<target>`,
//! `fuzz/seeds/<target>`) replayed through its target's property
//! (`valet::fuzzing`) as an ordinary test on the stable toolchain, so a
//! regression on anything the fuzzers ever found or kept fails CI without
//! a fuzzer.

use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use valet::fuzzing;

const FUZZ_KEY: &str = include_str!("../fuzz/keys/fuzz-only-ed25519.pem");

/// The files of a target, corpus and seeds together.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "seeds"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_file() {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, check: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= 3,
        "{target}: only {} corpus files",
        files.len()
    );
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        assert!(r.is_ok(), "{target}: {} fails its property", f.display());
    }
}

#[test]
fn canonical_path_corpus() {
    replay("canonical_path", fuzzing::canonical_path);
}

#[test]
fn host_corpus() {
    replay("host", fuzzing::host);
}

#[test]
fn header_scrub_corpus() {
    replay("header_scrub", fuzzing::header_scrub);
}

#[test]
fn forwarded_corpus() {
    replay("forwarded", fuzzing::forwarded);
}

#[test]
fn token_form_corpus() {
    replay("token_form", fuzzing::token_form);
}

#[test]
fn revocation_yaml_corpus() {
    replay("revocation_yaml", fuzzing::revocation_yaml);
}

#[test]
fn config_corpus() {
    replay("config", fuzzing::config);
}

#[test]
fn rfc3339_corpus() {
    replay("rfc3339", fuzzing::rfc3339);
}

#[test]
fn oauth1_params_corpus() {
    replay("oauth1_params", fuzzing::oauth1_params);
}

#[test]
fn bearer_token_corpus() {
    let oracle = fuzzing::BearerOracle::new(FUZZ_KEY);
    replay("bearer_token", |d| oracle.check(d));
}

#[test]
fn c14n_corpus() {
    replay("c14n", fuzzing::c14n);
}

#[test]
fn saml_assertion_corpus() {
    let pem = include_bytes!("data/saml/idp-cert.pem");
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(pem).unwrap();
    replay("saml_assertion", |d| {
        fuzzing::saml_assertion(d, cert.as_ref())
    });
}

/// The bearer oracle is not vacuous: the seed tokens signed with the fuzz
/// key validate, so the corpus exercises the accepting path.
#[test]
fn bearer_seed_tokens_validate() {
    let files = inputs("bearer_token");
    let valid = files
        .iter()
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("valid-")
        })
        .count();
    assert!(valid >= 2, "no valid seed tokens");
    let oracle = fuzzing::BearerOracle::new(FUZZ_KEY);
    for f in files {
        if f.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("valid-")
        {
            assert!(
                oracle.accepts(&std::fs::read(&f).unwrap()),
                "{}",
                f.display()
            );
        }
        // Signed with the fuzz key like the valid seeds, but naming
        // critical extensions: refused (RFC 7515 §4.1.11).
        if f.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("crit-")
        {
            assert!(
                !oracle.accepts(&std::fs::read(&f).unwrap()),
                "{}",
                f.display()
            );
        }
    }
}

/// Writes the bearer seeds: `cargo test --test fuzz_corpus -- --ignored`.
#[test]
#[ignore]
fn write_bearer_seeds() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/bearer_token");
    std::fs::create_dir_all(&dir).unwrap();
    let key = EncodingKey::from_ed_pem(FUZZ_KEY.as_bytes()).unwrap();
    // jsonwebtoken checks exp and nbf against the real clock, valet against
    // BEARER_NOW: valid for both until 2096.
    let (past, future) = (1_700_000_000i64, 4_000_000_000i64);
    let claims = |extra: serde_json::Value| {
        let mut c = serde_json::json!({
            "iss": fuzzing::BEARER_ISSUER, "sub": "alice", "aud": fuzzing::BEARER_AUDIENCE,
            "exp": future, "iat": past, "nbf": past, "jti": "j1",
            "client_id": "c", "scope": "read write",
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = Some("fuzz".into());
    let sign = |h: &Header, c: &serde_json::Value| jsonwebtoken::encode(h, c, &key).unwrap();
    let seeds = [
        ("valid-1", sign(&h, &claims(serde_json::json!({})))),
        (
            "valid-2",
            sign(
                &h,
                &claims(serde_json::json!({"aud": ["x", fuzzing::BEARER_AUDIENCE], "jti": "j2"})),
            ),
        ),
        (
            "expired",
            sign(&h, &claims(serde_json::json!({"exp": past + 100}))),
        ),
        (
            "wrong-iss",
            sign(&h, &claims(serde_json::json!({"iss": "https://evil"}))),
        ),
        (
            "string-exp",
            sign(&h, &claims(serde_json::json!({"exp": "9999999999"}))),
        ),
    ];
    for (name, t) in seeds {
        std::fs::write(dir.join(name), t).unwrap();
    }
    let mut none = Header::new(Algorithm::EdDSA);
    none.typ = Some("JWT".into());
    std::fs::write(
        dir.join("typ-jwt"),
        sign(&none, &claims(serde_json::json!({}))),
    )
    .unwrap();
    std::fs::write(
        dir.join("alg-none"),
        "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.eyJzdWIiOiJhbGljZSJ9.",
    )
    .unwrap();
}
