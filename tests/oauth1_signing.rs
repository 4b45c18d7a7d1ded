//! RFC 5849 signing against published, independently verified vectors
//! (tests/data/oauth1-vectors.json, copied from the project's shared test
//! data: RFC 5849 §1.2 and §3.4.1, OAuth Core 1.0 Appendix A, Twitter's
//! documented example, oauth1-request's docs, PLAINTEXT per §3.4.4), and
//! parameter normalization edge cases.

use serde_json::Value;
use valet::oauth1::signing::{base_string, normalize, query_params, sign, SignatureMethod};

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap().to_string(),
                        p[1].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_published_vector_matches() {
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/oauth1-vectors.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 9);
    let mut checked_bases = 0;
    let mut checked_sigs = 0;
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let secrets = (
            v["consumer_secret"].as_str(),
            v["token_secret"].as_str().unwrap_or(""),
        );
        if v["signature_method"] == "PLAINTEXT" {
            let sig = sign(
                SignatureMethod::Plaintext,
                "",
                secrets.0.unwrap(),
                secrets.1,
            );
            assert_eq!(sig, v["signature"].as_str().unwrap(), "{name}");
            checked_sigs += 1;
            continue;
        }
        let url = v["url"].as_str().unwrap();
        let oauth = pairs(&v["oauth"]);
        let mut params = query_params(url);
        params.extend(pairs(&v["body"]));
        params.extend(oauth.iter().cloned());
        let base = base_string(v["method"].as_str().unwrap(), url, &params).unwrap();
        if let Some(expected) = v["base_string"].as_str() {
            assert_eq!(base, expected, "{name}: base string");
            checked_bases += 1;
        }
        if let (Some(expected), Some(cs)) = (v["signature"].as_str(), secrets.0) {
            let method = oauth
                .iter()
                .find(|(k, _)| k == "oauth_signature_method")
                .and_then(|(_, m)| SignatureMethod::parse(m))
                .unwrap();
            assert_eq!(
                sign(method, &base, cs, secrets.1),
                expected,
                "{name}: signature"
            );
            checked_sigs += 1;
        }
    }
    // Every vector with an expected base string or signature was checked.
    assert_eq!((checked_bases, checked_sigs), (3, 8));
}

fn p(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[test]
fn normalization_edge_cases() {
    // Repeated names are kept and sorted by value; empty values stay.
    assert_eq!(
        normalize(&[p("a", "2"), p("a", "1"), p("b", ""), p("a", "")]),
        "a=&a=1&a=2&b="
    );
    // Sorting is on the encoded form (byte order), upper case before lower case.
    assert_eq!(
        normalize(&[p("b", "x"), p("B", "x"), p("a1", "x"), p("a", "x")]),
        "B=x&a=x&a1=x&b=x"
    );
    // Non-ASCII is percent-encoded UTF-8.
    assert_eq!(
        normalize(&[p("name", "Zoë ☃")]),
        "name=Zo%C3%AB%20%E2%98%83"
    );
    // In a query, `+` is a space and `%20` is a space; a literal plus is %2B.
    assert_eq!(
        query_params("http://x/?a=b+c&d=e%20f&g=h%2Bi"),
        vec![p("a", "b c"), p("d", "e f"), p("g", "h+i")]
    );
    assert_eq!(
        normalize(&query_params("http://x/?a=b+c&g=h%2Bi")),
        "a=b%20c&g=h%2Bi"
    );
    // A name without `=` is a parameter with an empty value.
    assert_eq!(
        query_params("http://x/?flag&x="),
        vec![p("flag", ""), p("x", "")]
    );
}

#[test]
fn query_and_body_parameters_both_enter_the_base_string() {
    let mut params = query_params("http://example.com/r?q=1");
    params.push(p("q", "0")); // the same name in the form body
    params.push(p("oauth_nonce", "n"));
    let base = base_string("post", "http://example.com/r?q=1", &params).unwrap();
    assert_eq!(
        base,
        "POST&http%3A%2F%2Fexample.com%2Fr&oauth_nonce%3Dn%26q%3D0%26q%3D1"
    );
}

/// The published RSA-SHA1 test case: the OAuth wiki's TestCases page, §9.3
/// (wiki.oauth.net/w/page/12238556/TestCases), reused by many libraries'
/// suites; the base string keeps its "vacaction" typo. Checked here with
/// `openssl dgst -sha1 -sign tests/data/oauth1-rsa-sha1-key.pem`, which
/// prints the same signature.
#[test]
fn the_published_rsa_sha1_test_case_matches() {
    use valet::oauth1::rsa_sha1::RsaSha1Key;
    use valet::oauth1::signing::sign_rsa_sha1;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
    let pem = std::fs::read(format!("{data}oauth1-rsa-sha1-key.pem")).unwrap();
    let key = RsaSha1Key::from_pem(&pem).unwrap();
    let params = vec![
        p("file", "vacaction.jpg"),
        p("size", "original"),
        p("oauth_consumer_key", "dpf43f3p2l4k3l03"),
        p("oauth_nonce", "13917289812797014437"),
        p("oauth_signature_method", "RSA-SHA1"),
        p("oauth_timestamp", "1196666512"),
        p("oauth_version", "1.0"),
    ];
    let base = base_string("GET", "http://photos.example.net/photos", &params).unwrap();
    assert_eq!(
        base,
        "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacaction.jpg%26oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3D13917289812797014437%26oauth_signature_method%3DRSA-SHA1%26oauth_timestamp%3D1196666512%26oauth_version%3D1.0%26size%3Doriginal"
    );
    assert_eq!(
        sign_rsa_sha1(&key, &base),
        "jvTp/wX1TYtByB1m+Pbyo0lnCOLIsyGCH7wke8AUs3BpnwZJtAuEJkvQL2/9n4s5wUmUl4aCI4BwpraNx4RtEXMe5qg5T1LVTGliMRpKasKsW//e+RinhejgCuzoH26dyF8iY2ZZ/5D1ilgeijhV/vBka5twt399mXwaYdCwFYE="
    );

    // Any other message: aws-lc-rs's verifier (a separate code path) accepts
    // the signature with the public key, and refuses it for another message.
    let public = std::fs::read(format!("{data}oauth1-rsa-sha1-public.der")).unwrap();
    let verifier = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        public,
    );
    let sig = key.sign(b"POST&https%3A%2F%2Fjira.example%2Fx&a%3D1");
    assert!(verifier
        .verify(b"POST&https%3A%2F%2Fjira.example%2Fx&a%3D1", &sig)
        .is_ok());
    assert!(verifier
        .verify(b"POST&https%3A%2F%2Fjira.example%2Fx&a%3D2", &sig)
        .is_err());

    // The same key as PKCS#1 PEM; and what is not an RSA private key.
    // (oauth1-rsa-sha1-key.pkcs1.pem: `openssl rsa -traditional` of the same key.)
    let pkcs1 = std::fs::read(format!("{data}oauth1-rsa-sha1-key.pkcs1.pem")).unwrap();
    let k1 = RsaSha1Key::from_pem(&pkcs1).unwrap();
    assert_eq!(k1.sign(base.as_bytes()), key.sign(base.as_bytes()));
    let ec = rcgen::KeyPair::generate().unwrap().serialize_pem();
    assert!(RsaSha1Key::from_pem(ec.as_bytes())
        .unwrap_err()
        .contains("not an RSA key"));
    assert!(RsaSha1Key::from_pem(
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    .is_err());
    assert!(RsaSha1Key::from_pem(b"hello").is_err());
}
