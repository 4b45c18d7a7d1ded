//! The JWT bearer grant (RFC 7523) end to end, and the attacks on it. The
//! assertions are signed here by hand (JWS compact serialization over an
//! aws-lc-rs Ed25519 signature), not with the library valet verifies with.

mod support;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use serde_json::{json, Value};
use support::*;

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const IDP: &str = "https://idp.test";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Idp {
    key: Ed25519KeyPair,
    _dir: tempfile::TempDir,
    jwks: std::path::PathBuf,
}

impl Idp {
    fn new() -> Idp {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("idp-jwks.json");
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().as_ref()), "alg": "EdDSA", "kid": "idp-1", "use": "sig"});
        std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
        Idp {
            key,
            _dir: dir,
            jwks,
        }
    }

    fn sign_with(&self, key: &Ed25519KeyPair, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = key.sign(input.as_bytes());
        format!("{input}.{}", b64(sig.as_ref()))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with(
            &self.key,
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": "idp-1"}),
            claims,
        )
    }
}

fn assertion_claims() -> Value {
    let n = now();
    json!({
        "iss": IDP, "sub": "bob@idp.test", "aud": ISSUER, "exp": n + 120, "iat": n, "nbf": n,
        "jti": valet::tokens::random_id(), "email": "bob@idp.test", "scp": ["read", "admin"],
    })
}

async fn setup(idp: &Idp) -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let yaml = format!(
        r#"authorization_server:
  clients:
    - client_id: federated
      secret_hash: "{hash}"
      grant_types: ["{JWT_BEARER}"]
      scopes: [read, write]
      jwt_bearer:
        issuers:
          - issuer: "{IDP}"
            jwks_file: "{jwks}"
        max_assertion_lifetime: 10m
        claims: {{ email: email }}
        scopes_claim: scp
    - client_id: billing
      secret_hash: "{hash}"
      grant_types: [client_credentials]
      operator: billing-svc
      scopes: [read]
    - client_id: federated-ns
      secret_hash: "{hash}"
      grant_types: ["{JWT_BEARER}"]
      scopes: [read]
      jwt_bearer:
        issuers:
          - issuer: "{IDP}"
            jwks_file: "{jwks}"
            subject_prefix: "idp:"
"#,
        hash = valet::oauth2::registry::argon2id_hash("fed-secret"),
        jwks = idp.jwks.display()
    );
    let gw = Gateway::start(&default_routes(up.addr), &yaml).await;
    (gw, up)
}

async fn grant(gw: &Gateway, assertion: &str) -> support::client::Reply {
    gw.client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", JWT_BEARER), ("assertion", assertion)],
            Some(("federated", "fed-secret")),
        )
        .await
}

fn assert_refused(r: &support::client::Reply, why: &str) {
    assert_eq!(r.status, 400, "{why}: {:?}", r.body);
    let j = r.json();
    assert_eq!(j["error"], "invalid_grant", "{why}");
    assert!(
        j["error_description"].as_str().unwrap().contains(why),
        "expected `{why}` in {:?}",
        j["error_description"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_assertion_yields_a_mapped_token_usable_on_the_proxy_once() {
    let idp = Idp::new();
    let (gw, up) = setup(&idp).await;
    let a = idp.sign(&assertion_claims());
    let r = grant(&gw, &a).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    assert!(j.get("refresh_token").is_none());
    assert_eq!(
        j["scope"], "read",
        "scopes: the client's, within the assertion's"
    );
    let at = j["access_token"].as_str().unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(at.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "bob@idp.test");
    assert_eq!(claims["email"], "bob@idp.test", "mapped claim");
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(at)).await.status,
        200
    );
    assert_eq!(up.last().headers["x-valet-subject"], "bob@idp.test");
    // The same assertion again: a replay.
    assert_refused(&grant(&gw, &a).await, "already used");
    // The token endpoint URL is an accepted audience too.
    let mut c = assertion_claims();
    c["aud"] = json!([format!("{ISSUER}/oauth2/token")]);
    assert_eq!(grant(&gw, &idp.sign(&c)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn attacks_on_the_assertion_are_refused() {
    let idp = Idp::new();
    let (gw, _up) = setup(&idp).await;
    let n = now();
    let with = |k: &str, v: Value| {
        let mut c = assertion_claims();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = assertion_claims();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let cases: Vec<(String, &str)> = vec![
        (
            idp.sign(&with("aud", json!("https://someone-else.test"))),
            "audience",
        ),
        (idp.sign(&without("exp")), "exp"),
        (
            idp.sign(&with("exp", json!(n + 86400))),
            "too far in the future",
        ),
        (idp.sign(&with("exp", json!(n - 60))), "expired"),
        (idp.sign(&with("nbf", json!(n + 120))), "not yet valid"),
        (
            idp.sign(&with("iat", json!(n + 120))),
            "iat is in the future",
        ),
        (idp.sign(&without("jti")), "jti is required"),
        (idp.sign(&without("sub")), "subject"),
        (
            idp.sign(&with("iss", json!("https://evil.test"))),
            "not trusted",
        ),
    ];
    for (a, why) in &cases {
        assert_refused(&grant(&gw, a).await, why);
    }
    // Signed by a key the issuer does not have (same kid).
    let other = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let other = Ed25519KeyPair::from_pkcs8(other.as_ref()).unwrap();
    let forged = idp.sign_with(
        &other,
        &json!({"alg": "EdDSA", "kid": "idp-1"}),
        &assertion_claims(),
    );
    assert_refused(&grant(&gw, &forged).await, "bad signature");
    // Modified after signing.
    let good = idp.sign(&assertion_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(with("sub", json!("admin")).to_string().as_bytes()),
        parts[2]
    );
    assert_refused(&grant(&gw, &tampered).await, "bad signature");
    // alg none, and HS256 keyed with the public key.
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none"}).to_string().as_bytes()),
        b64(assertion_claims().to_string().as_bytes())
    );
    assert_refused(&grant(&gw, &none).await, "malformed");
    let public = idp.key.public_key().as_ref().to_vec();
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &assertion_claims(),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_refused(&grant(&gw, &hs).await, "algorithm");
    // Validly signed by the issuer's key, naming critical extensions that
    // valet does not understand (RFC 7515 §4.1.11).
    for crit in [
        json!(["http://example.invalid/must-understand"]),
        json!(["exp"]),
    ] {
        let critical = idp.sign_with(
            &idp.key,
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": "idp-1", "crit": crit,
                    "http://example.invalid/must-understand": true}),
            &assertion_claims(),
        );
        assert_refused(&grant(&gw, &critical).await, "critical header extensions");
    }
    // A client not registered for the grant.
    let r = gw
        .client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", JWT_BEARER), ("assertion", &good)],
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        gw.metric("valet_token_requests_failed_total{error=\"invalid_grant\",grant=\"jwt_bearer\"}")
            .await as usize,
        cases.len() + 6
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assertion_cannot_take_a_service_identity() {
    // `billing-svc` is the operator of the client-credentials client
    // `billing`: only that client obtains tokens for it, and its subject
    // cut-offs must not be shared with an IdP's user of the same name.
    let idp = Idp::new();
    let (gw, _up) = setup(&idp).await;
    let mut c = assertion_claims();
    c["sub"] = json!("billing-svc");
    assert_refused(&grant(&gw, &idp.sign(&c)).await, "service identity");
    // Any other subject is mapped as before.
    assert_eq!(grant(&gw, &idp.sign(&assertion_claims())).await.status, 200);

    // With a per-issuer subject prefix the IdP's users live in their own
    // namespace: the same name is another subject, and allowed.
    c["jti"] = json!(valet::tokens::random_id());
    let r = gw
        .client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", JWT_BEARER), ("assertion", &idp.sign(&c))],
            Some(("federated-ns", "fed-secret")),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let at = r.json()["access_token"].as_str().unwrap().to_string();
    use base64::Engine;
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(at.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["sub"], "idp:billing-svc");

    // An issuer without the prefix cannot assert a subject inside it.
    let mut c = assertion_claims();
    c["sub"] = json!("idp:bob@idp.test");
    assert_refused(
        &grant(&gw, &idp.sign(&c)).await,
        "another issuer's namespace",
    );

    // Nor may a local user or an operator live inside a namespace.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let bad = text.replacen(
        "      operator: billing-svc\n",
        "      operator: \"idp:billing\"\n",
        1,
    );
    let e = valet::config::parse(&gw.config_path, &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inside the subject namespace `idp:`"), "{e}");
}

fn claims_of(at: &str) -> Value {
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(at.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// The JWT bearer identity mapping set through `valet client add --spec`
/// (its key file relative to the spec) and changed through `valet client
/// update --spec` (a merge patch): the new mapping is used at once, and a
/// token minted under the old one is revoked.
#[tokio::test(flavor = "multi_thread")]
async fn an_identity_mapping_is_set_and_changed_through_the_cli() {
    let idp = Idp::new();
    let up = Upstream::start().await;
    let yaml =
        "authorization_server:\n  secret_pepper_file: pepper\n  generate_pepper_if_missing: true\n";
    let gw = Gateway::start(&default_routes(up.addr), yaml).await;
    let spec_dir = idp.jwks.parent().unwrap();
    let spec = spec_dir.join("client.yaml");
    std::fs::write(
        &spec,
        format!(
            "grant_types: [\"{JWT_BEARER}\"]\nscopes: [read]\naccess_token_ttl: 10m\njwt_bearer:\n  issuers:\n    - issuer: \"{IDP}\"\n      jwks_file: idp-jwks.json\n  claims: {{ email: email }}\n"
        ),
    )
    .unwrap();
    let valet = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_valet"))
            .args(args)
            .arg("--config")
            .arg(&gw.config_path)
            // From elsewhere: the spec's paths are the spec's folder's.
            .current_dir("/")
            .output()
            .unwrap();
        let (o, e) = (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        );
        assert!(out.status.success(), "{args:?}: {e}");
        o
    };
    let out = valet(&["client", "add", "fed-cli", "--spec", spec.to_str().unwrap()]);
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .unwrap()
        .to_string();
    let grant = |assertion: String| {
        let (gw, secret) = (&gw, secret.clone());
        async move {
            gw.client(Proto::H1)
                .post_form(
                    "/oauth2/token",
                    &[("grant_type", JWT_BEARER), ("assertion", &assertion)],
                    Some(("fed-cli", &secret)),
                )
                .await
        }
    };
    let r = grant(idp.sign(&assertion_claims())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["expires_in"], 600, "the lifetime of the spec");
    let old = r.json()["access_token"].as_str().unwrap().to_string();
    let c = claims_of(&old);
    assert_eq!(c["email"], "bob@idp.test", "mapped as the spec says");
    assert!(c.get("mail").is_none());

    // The mapping changed: a claim renamed, the old one removed (null).
    let patch = spec_dir.join("patch.yaml");
    std::fs::write(
        &patch,
        "jwt_bearer:\n  claims: { email: null, mail: email }\n",
    )
    .unwrap();
    valet(&[
        "client",
        "update",
        "fed-cli",
        "--spec",
        patch.to_str().unwrap(),
    ]);
    // (The gateway follows the store the CLI wrote.)
    let revoked = eventually(PICKUP, || async {
        gw.client(Proto::H1).get("/api/x", Some(&old)).await.status == 401
    })
    .await;
    assert!(revoked, "minted under the old mapping");
    let mut fresh = None;
    for _ in 0..4 {
        let r = grant(idp.sign(&assertion_claims())).await;
        if r.status == 503 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        assert_eq!(r.status, 200, "{:?}", r.body);
        fresh = Some(r.json()["access_token"].as_str().unwrap().to_string());
        break;
    }
    let c = claims_of(&fresh.expect("a token after the cut-off"));
    assert_eq!(c["mail"], "bob@idp.test", "the new mapping");
    assert!(c.get("email").is_none(), "{c}");
}
