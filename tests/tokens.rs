//! Bearer token validation on proxied routes: every rejection with its exact
//! RFC 6750 challenge, sent as real malicious tokens over real TLS.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;

fn challenge(description: &str) -> String {
    format!("Bearer realm=\"valet\", error=\"invalid_token\", error_description=\"{description}\"")
}

async fn setup() -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    (gw, up)
}

async fn expect_401(gw: &Gateway, token: &str, description: &str, reason: &str) {
    let before = gw
        .metric(&format!(
            "valet_token_validation_failures_total{{reason=\"{reason}\"}}"
        ))
        .await;
    let r = gw.client(Proto::H1).get("/api/x", Some(token)).await;
    assert_eq!(r.status, 401, "{description}: {:?}", r.body);
    assert_eq!(r.header("www-authenticate"), challenge(description));
    assert_eq!(r.json()["error"], "invalid_token");
    let after = gw
        .metric(&format!(
            "valet_token_validation_failures_total{{reason=\"{reason}\"}}"
        ))
        .await;
    assert_eq!(after, before + 1.0, "metric for {reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_token_gets_a_challenge_without_error_code() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H1);
    let r = c.get("/api/x", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"valet\"");
    // Another scheme is not a bearer token either.
    let req = c
        .request("GET", "/api/x")
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"valet\"");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_token_is_rejected() {
    let (gw, _up) = setup().await;
    expect_401(&gw, "not-a-jwt", "malformed token", "malformed").await;
    expect_401(&gw, "a.b.c", "malformed token", "malformed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_is_rejected() {
    let (gw, _up) = setup().await;
    let mut c = claims("alice", "read");
    c["exp"] = json!(now() - 60);
    c["iat"] = json!(now() - 120);
    c["nbf"] = json!(now() - 120);
    expect_401(&gw, &sign(&gw.key, &c), "token expired", "expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_within_clock_skew_is_accepted() {
    let (gw, _up) = setup().await;
    let mut c = claims("alice", "read");
    c["exp"] = json!(now() - 2); // skew is 5 s in the test config
    let r = gw
        .client(Proto::H1)
        .get("/api/x", Some(&sign(&gw.key, &c)))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn not_yet_valid_token_is_rejected() {
    let (gw, _up) = setup().await;
    let mut c = claims("alice", "read");
    c["nbf"] = json!(now() + 120);
    expect_401(
        &gw,
        &sign(&gw.key, &c),
        "token not yet valid",
        "not_yet_valid",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_issuer_and_audience_are_rejected() {
    let (gw, _up) = setup().await;
    let mut c = claims("alice", "read");
    c["iss"] = json!("https://evil.example");
    expect_401(&gw, &sign(&gw.key, &c), "wrong issuer", "wrong_issuer").await;
    let mut c = claims("alice", "read");
    c["aud"] = json!("other-api");
    expect_401(&gw, &sign(&gw.key, &c), "wrong audience", "wrong_audience").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signature_is_rejected() {
    let (gw, _up) = setup().await;
    // Same kid, signed by a key valet does not know.
    let forged = sign(&TestKey::new(), &claims("alice", "read"));
    expect_401(&gw, &forged, "invalid signature", "bad_signature").await;
    // A valid token whose payload was swapped for another's.
    let good = gw.token("alice", "read");
    let other = gw.token("admin", "read write");
    let parts: Vec<&str> = good.split('.').collect();
    let other_payload = other.split('.').nth(1).unwrap();
    let spliced = format!("{}.{}.{}", parts[0], other_payload, parts[2]);
    expect_401(&gw, &spliced, "invalid signature", "bad_signature").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alg_none_is_rejected() {
    let (gw, _up) = setup().await;
    let t = raw_token(
        &json!({"alg": "none", "typ": "at+jwt", "kid": KID}),
        &claims("alice", "read"),
        "",
    );
    expect_401(
        &gw,
        &t,
        "algorithm not allowed for this key",
        "wrong_algorithm",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hs256_signed_with_the_public_key_is_rejected() {
    let (gw, _up) = setup().await;
    let mut h = Header::new(Algorithm::HS256);
    h.typ = Some("at+jwt".into());
    h.kid = Some(KID.into());
    let t = sign_with(
        &h,
        &claims("alice", "read"),
        &EncodingKey::from_secret(gw.key.public_pem().as_bytes()),
    );
    expect_401(
        &gw,
        &t,
        "algorithm not allowed for this key",
        "wrong_algorithm",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_typ_is_rejected() {
    let (gw, _up) = setup().await;
    for typ in [Some("JWT"), None] {
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = typ.map(Into::into);
        h.kid = Some(KID.into());
        let t = sign_with(
            &h,
            &claims("alice", "read"),
            &EncodingKey::from_ed_der(&gw.key.pkcs8),
        );
        expect_401(&gw, &t, "token type must be at+jwt", "wrong_type").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_kid_is_rejected() {
    let (gw, _up) = setup().await;
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = Some("someone-elses".into());
    let t = sign_with(
        &h,
        &claims("alice", "read"),
        &EncodingKey::from_ed_der(&gw.key.pkcs8),
    );
    expect_401(&gw, &t, "signing key not recognised", "unknown_key").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn string_typed_exp_and_missing_claims_are_rejected() {
    let (gw, _up) = setup().await;
    // The jsonwebtoken < 10.3 bypass: a string `exp` skipped expiry checks.
    let mut c = claims("alice", "read");
    c["exp"] = json!("1000");
    expect_401(
        &gw,
        &sign(&gw.key, &c),
        "required claim missing or invalid",
        "missing_claim",
    )
    .await;
    for claim in ["jti", "client_id", "iat", "sub", "exp"] {
        let mut c = claims("alice", "read");
        c.as_object_mut().unwrap().remove(claim);
        expect_401(
            &gw,
            &sign(&gw.key, &c),
            "required claim missing or invalid",
            "missing_claim",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_scope_is_403_insufficient_scope() {
    let (gw, up) = setup().await;
    let r = gw
        .client(Proto::H1)
        .get("/api/x", Some(&gw.token("alice", "write")))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        "Bearer realm=\"valet\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"read\""
    );
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn scheme_is_case_insensitive_and_duplicates_are_refused() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let t = gw.token("alice", "read");
    let req = c
        .request("GET", "/api/x")
        .header("authorization", format!("bearer {t}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(c.send(req).await.status, 200);
    let req = c
        .request("GET", "/api/x")
        .header("authorization", format!("Bearer {t}"))
        .header(
            "authorization",
            format!("Bearer {}", gw.token("admin", "read")),
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_token_is_still_rejected_once_it_expires() {
    let (gw, _up) = setup().await;
    let mut c = claims("alice", "read");
    c["exp"] = json!(now() - 3); // valid only thanks to the 5 s skew
    let t = sign(&gw.key, &c);
    let client = gw.client(Proto::H1);
    assert_eq!(client.get("/api/x", Some(&t)).await.status, 200);
    // Once the skew has passed the cached verification must not help.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let r = client.get("/api/x", Some(&t)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), challenge("token expired"));
}
