//! The SAML 2.0 bearer grant (RFC 7522) end to end over real TLS, with
//! assertions signed by xmlsec1 (tests/data/saml/generate.sh), and the
//! attacks on it.

mod support;

use base64::Engine;
use support::*;

const SAML2_BEARER: &str = "urn:ietf:params:oauth:grant-type:saml2-bearer";
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/saml/");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}{name}")).unwrap()
}

async fn setup() -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let yaml = format!(
        r#"authorization_server:
  clients:
    - client_id: sso
      secret_hash: "{hash}"
      grant_types: ["{SAML2_BEARER}"]
      scopes: [read, write]
      saml2_bearer:
        idp_entity_id: "https://idp.test"
        idp_certificate_file: "{DIR}idp-cert.pem"
        claims: {{ email: email, roles: roles }}
        scopes_attribute: roles
    - client_id: sso-ns
      secret_hash: "{hash}"
      grant_types: ["{SAML2_BEARER}"]
      scopes: [read]
      saml2_bearer:
        idp_entity_id: "https://idp.test"
        idp_certificate_file: "{DIR}idp-cert.pem"
        subject_prefix: "corp:"
"#,
        hash = valet::oauth2::registry::argon2id_hash("sso-secret"),
    );
    let gw = Gateway::start(&default_routes(up.addr), &yaml).await;
    (gw, up)
}

async fn grant_raw(gw: &Gateway, assertion_param: &str) -> support::client::Reply {
    gw.client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", SAML2_BEARER), ("assertion", assertion_param)],
            Some(("sso", "sso-secret")),
        )
        .await
}

async fn grant(gw: &Gateway, xml: &str) -> support::client::Reply {
    grant_raw(
        gw,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(xml),
    )
    .await
}

fn assert_refused(r: &support::client::Reply, why: &str) {
    assert_eq!(r.status, 400, "{why}: {:?}", r.body);
    let j = r.json();
    assert_eq!(j["error"], "invalid_grant", "{why}");
    let d = j["error_description"].as_str().unwrap();
    assert!(d.contains(why), "expected `{why}` in `{d}`");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_assertion_yields_a_mapped_token_usable_on_the_proxy_once() {
    let (gw, up) = setup().await;
    let xml = fixture("grant-valid.xml");
    let r = grant(&gw, &xml).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    assert!(j.get("refresh_token").is_none());
    assert_eq!(
        j["scope"], "read",
        "the client's scopes within the roles attribute"
    );
    let at = j["access_token"].as_str().unwrap();
    let payload = at.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "dave@idp.test", "NameID becomes the subject");
    assert_eq!(claims["email"], "dave@idp.test");
    assert_eq!(claims["roles"], serde_json::json!(["read", "admin"]));
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(at)).await.status,
        200
    );
    assert_eq!(up.last().headers["x-valet-subject"], "dave@idp.test");
    // Replay of the same assertion.
    assert_refused(&grant(&gw, &xml).await, "already used");
    // A padded encoding of another valid assertion is accepted too.
    let padded = base64::engine::general_purpose::URL_SAFE.encode(fixture("grant-valid-2.xml"));
    assert_eq!(grant_raw(&gw, &padded).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subject_prefix_keeps_the_idps_users_in_their_own_namespace() {
    let (gw, _up) = setup().await;
    let xml = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(fixture("grant-valid-2.xml"));
    let r = gw
        .client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", SAML2_BEARER), ("assertion", &xml)],
            Some(("sso-ns", "sso-secret")),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let at = r.json()["access_token"].as_str().unwrap().to_string();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(at.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let sub = claims["sub"].as_str().unwrap();
    assert!(sub.starts_with("corp:") && sub.len() > 5, "{sub}");
}

#[tokio::test(flavor = "multi_thread")]
async fn defective_assertions_signed_by_the_idp_are_refused() {
    let (gw, _up) = setup().await;
    for (file, why) in [
        ("grant-expired.xml", "subject confirmation"),
        ("grant-wrong-audience.xml", "audience"),
        ("grant-wrong-recipient.xml", "subject confirmation"),
        ("grant-wrong-issuer.xml", "issuer"),
        ("grant-other-key.xml", "does not verify"),
        ("grant-comment-nameid.xml", "plain text"),
    ] {
        assert_refused(&grant(&gw, &fixture(file)).await, why);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_wrapped_and_hostile_documents_are_refused() {
    let (gw, _up) = setup().await;
    let valid = fixture("grant-valid.xml");
    // Modified after signing.
    assert_refused(
        &grant(
            &gw,
            &valid.replace(
                "dave@idp.test</saml:NameID>",
                "admin@idp.test</saml:NameID>",
            ),
        )
        .await,
        "modified after signing",
    );
    // XXE and entity expansion: refused before anything is expanded.
    let body = &valid[valid.find("<saml:Assertion").unwrap()..];
    let xxe =
        format!("<!DOCTYPE saml:Assertion [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>{body}");
    assert_refused(&grant(&gw, &xxe).await, "DTD");
    // Wrapping: an unsigned evil assertion carrying the signed one in its Advice.
    let evil = format!(
        "<saml:Assertion xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"_evil\" Version=\"2.0\" IssueInstant=\"2026-01-01T00:00:00Z\"><saml:Issuer>https://idp.test</saml:Issuer><saml:Subject><saml:NameID>admin@idp.test</saml:NameID></saml:Subject><saml:Advice>{body}</saml:Advice></saml:Assertion>"
    );
    assert_refused(&grant(&gw, &evil).await, "more than one Assertion");
    // The signed assertion intact, a second one inside ds:Signature/ds:Object
    // (outside the enveloped digest, so the signature still verifies): the
    // shape alone is refused.
    let in_object = valid.replacen(
        "</ds:Signature>",
        "<ds:Object><saml:Assertion ID=\"_other\"><saml:Subject><saml:NameID>admin@idp.test</saml:NameID></saml:Subject></saml:Assertion></ds:Object></ds:Signature>",
        1,
    );
    assert_refused(&grant(&gw, &in_object).await, "more than one Assertion");
    // Not base64url, not XML.
    assert_refused(&grant_raw(&gw, "%%%").await, "base64url");
    assert_refused(&grant(&gw, "not xml").await, "well-formed");
    assert_eq!(
        gw.metric(
            "valet_token_requests_failed_total{error=\"invalid_grant\",grant=\"saml2_bearer\"}"
        )
        .await,
        6.0
    );
}
