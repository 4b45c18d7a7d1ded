//! valet as an OAuth 2.0 authorization server, end to end over real TLS:
//! tokens obtained from valet are then used through valet's proxy.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

const SVC_SECRET: &str = "svc-secret";
/// A secret with the characters Basic encoding gets wrong.
const ODD_SECRET: &str = "p:a%s+s w&=";
const APP_SECRET: &str = "app-secret";

fn auth_server_yaml(extra: &str) -> String {
    let h = valet::oauth2::registry::argon2id_hash;
    format!(
        r#"authorization_server:
  refresh_grace: 1s
  max_failed_auth: 3
  failed_auth_window: 1m
  clients:
    - client_id: svc
      secret_hash: "{svc}"
      grant_types: [client_credentials]
      operator: svc-operator
      scopes: [read, write]
      default_scopes: [read]
    - client_id: "odd.client"
      secret_hash: "{odd}"
      grant_types: [client_credentials]
      operator: odd-operator
      scopes: [read]
    - client_id: app
      secret_hash: "{app}"
      grant_types: [password]
      scopes: [read, write]
      default_scopes: [read]
      use_refresh_token: true
    - client_id: other-app
      secret_hash: "{app}"
      grant_types: [password]
      scopes: [read]
      use_refresh_token: true
    - client_id: rs
      secret_hash: "{app}"
      grant_types: [client_credentials]
      operator: resource-server
      introspect_any: true
  users:
    - username: alice
      password_hash: "{alice}"
      claims: {{ email: alice@example.com }}
{extra}"#,
        svc = h(SVC_SECRET),
        odd = h(ODD_SECRET),
        app = h(APP_SECRET),
        alice = h("alice-pw"),
    )
}

async fn setup() -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), &auth_server_yaml("")).await;
    (gw, up)
}

const TOKEN: &str = "/oauth2/token";

async fn client_credentials(c: &Client, scope: Option<&str>) -> Reply {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    c.post_form(TOKEN, &form, Some(("svc", SVC_SECRET))).await
}

async fn password_grant(c: &Client, client: &str) -> Reply {
    c.post_form(
        TOKEN,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-pw"),
        ],
        Some((client, APP_SECRET)),
    )
    .await
}

async fn refresh(c: &Client, rt: &str, scope: Option<&str>) -> Reply {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    c.post_form(TOKEN, &form, Some(("app", APP_SECRET))).await
}

fn assert_oauth_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.json()["error"], code, "{:?}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    assert_eq!(r.header("pragma"), "no-cache");
}

fn s(v: &Value) -> String {
    v.as_str().unwrap().to_string()
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

type Reply = support::client::Reply;

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_token_works_through_the_proxy_and_has_no_refresh_token() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H1);
    let r = client_credentials(&c, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    assert_eq!(r.header("pragma"), "no-cache");
    let j = r.json();
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["expires_in"], 3600, "the default access token lifetime");
    assert_eq!(j["scope"], "read", "default scopes");
    assert!(
        j.get("refresh_token").is_none(),
        "client credentials never returns a refresh token"
    );
    let at = s(&j["access_token"]);
    let claims = claims_of(&at);
    assert_eq!(
        claims["sub"], "svc-operator",
        "tokens are issued to the operator"
    );
    assert_eq!(claims["client_id"], "svc");
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(claims["iss"], ISSUER);
    let p = gw.client(Proto::H2).get("/api/x", Some(&at)).await;
    assert_eq!(p.status, 200);
    assert_eq!(up.last().headers["x-valet-subject"], "svc-operator");
    assert_eq!(up.last().headers["x-valet-client-id"], "svc");
    assert_eq!(
        gw.metric("valet_tokens_issued_total{client=\"svc\",grant=\"client_credentials\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_secret_post_and_basic_with_odd_characters_both_authenticate() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let r = c
        .post_form(
            TOKEN,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "svc"),
                ("client_secret", SVC_SECRET),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // ':', '%', '+', ' ', '&' and '=' in the secret, '.' in the id: form-url-encoded inside Basic.
    let r = c
        .post_form(
            TOKEN,
            &[("grant_type", "client_credentials")],
            Some(("odd.client", ODD_SECRET)),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The same secret sent without the form-url-encoding step is a different secret.
    use base64::Engine;
    let raw = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("odd.client:{ODD_SECRET}"))
    );
    let req = c
        .request("POST", TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", raw)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"grant_type=client_credentials",
        )))
        .unwrap();
    let r = c.send(req).await;
    assert_oauth_error(&r, 401, "invalid_client");
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc6749_errors_have_their_status_and_headers() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    // Wrong secret with Basic: 401 and a Basic challenge.
    let r = c
        .post_form(
            TOKEN,
            &[("grant_type", "client_credentials")],
            Some(("svc", "wrong")),
        )
        .await;
    assert_oauth_error(&r, 401, "invalid_client");
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"valet\"");
    // Wrong secret in the body: 401, no challenge.
    let r = c
        .post_form(
            TOKEN,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "other-app"),
                ("client_secret", "x"),
            ],
            None,
        )
        .await;
    assert_oauth_error(&r, 401, "invalid_client");
    assert!(r.headers.get("www-authenticate").is_none());
    // No client authentication at all.
    let r = c
        .post_form(TOKEN, &[("grant_type", "client_credentials")], None)
        .await;
    assert_oauth_error(&r, 401, "invalid_client");
    // Unknown grant.
    let r = c
        .post_form(
            TOKEN,
            &[("grant_type", "urn:example:magic")],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    assert_oauth_error(&r, 400, "unsupported_grant_type");
    // A grant the client is not registered for.
    let r = password_grant(&c, "rs").await;
    assert_oauth_error(&r, 400, "unauthorized_client");
    // A scope the client may not have.
    let r = client_credentials(&c, Some("read admin")).await;
    assert_oauth_error(&r, 400, "invalid_scope");
    // Wrong user password.
    let r = c
        .post_form(
            TOKEN,
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "nope"),
            ],
            Some(("app", APP_SECRET)),
        )
        .await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // Missing grant_type.
    let r = c
        .post_form(TOKEN, &[("scope", "read")], Some(("svc", SVC_SECRET)))
        .await;
    assert_oauth_error(&r, 400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn details_implementations_get_wrong_are_refused() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    // A repeated parameter.
    let req = c
        .request("POST", TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", client::basic_header("svc", SVC_SECRET))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"grant_type=client_credentials&scope=read&scope=write",
        )))
        .unwrap();
    let r = c.send(req).await;
    assert_oauth_error(&r, 400, "invalid_request");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("repeated"));
    // Credentials in the query string.
    let r = c
        .post_form(
            &format!("{TOKEN}?client_id=svc&client_secret={SVC_SECRET}"),
            &[("grant_type", "client_credentials")],
            None,
        )
        .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // Two client authentication methods at once.
    let r = c
        .post_form(
            TOKEN,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "svc"),
                ("client_secret", SVC_SECRET),
            ],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // Not a form.
    let req = c
        .request("POST", TOKEN)
        .header("content-type", "application/json")
        .header("authorization", client::basic_header("svc", SVC_SECRET))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"grant_type\":\"client_credentials\"}",
        )))
        .unwrap();
    assert_oauth_error(&c.send(req).await, 400, "invalid_request");
    // GET.
    let r = c.get(TOKEN, None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), "POST");
}

#[tokio::test(flavor = "multi_thread")]
async fn password_grant_issues_mapped_claims_and_a_rotating_refresh_token() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H1);
    let r = password_grant(&c, "app").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    let (at, rt) = (s(&j["access_token"]), s(&j["refresh_token"]));
    let claims = claims_of(&at);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["email"], "alice@example.com",
        "identity mapping: user claims"
    );
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(&at)).await.status,
        200
    );
    assert_eq!(up.last().headers["x-valet-subject"], "alice");
    // A refresh token is not an access token.
    let r = gw.client(Proto::H1).get("/api/x", Some(&rt)).await;
    assert_eq!(r.status, 401);

    // Rotation: a new pair; the new refresh token differs.
    let r2 = refresh(&c, &rt, None).await;
    assert_eq!(r2.status, 200, "{:?}", r2.body);
    let rt2 = s(&r2.json()["refresh_token"]);
    assert_ne!(rt, rt2);
    assert_eq!(
        claims_of(&s(&r2.json()["access_token"]))["email"],
        "alice@example.com"
    );
    // Within the grace period the just-rotated token still works (a second tab).
    let r3 = refresh(&c, &rt, None).await;
    assert_eq!(r3.status, 200, "grace period: {:?}", r3.body);
    // The refreshed scope must stay within the original.
    let r = refresh(&c, &rt2, Some("read write")).await;
    assert_oauth_error(&r, 400, "invalid_scope");
    // Another client cannot use it.
    let r = c
        .post_form(
            TOKEN,
            &[("grant_type", "refresh_token"), ("refresh_token", &rt2)],
            Some(("other-app", APP_SECRET)),
        )
        .await;
    assert_oauth_error(&r, 400, "invalid_grant");
}

#[tokio::test(flavor = "multi_thread")]
async fn reusing_a_rotated_refresh_token_after_the_grace_period_revokes_the_family() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let j = password_grant(&c, "app").await.json();
    let rt = s(&j["refresh_token"]);
    let first_at = s(&j["access_token"]);
    let j2 = refresh(&c, &rt, None).await.json();
    let (at2, rt2) = (s(&j2["access_token"]), s(&j2["refresh_token"]));
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(&at2)).await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(2100)).await; // grace is 1 s
    let r = refresh(&c, &rt, None).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // The whole family is gone: the newest refresh token and the access tokens.
    assert_oauth_error(&refresh(&c, &rt2, None).await, 400, "invalid_grant");
    for at in [&first_at, &at2] {
        let r = gw.client(Proto::H1).get("/api/x", Some(at)).await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            "Bearer realm=\"valet\", error=\"invalid_token\", error_description=\"token revoked\""
        );
    }
    assert_eq!(
        gw.metric("valet_revocations_total{kind=\"refresh_reuse\"}")
            .await,
        1.0
    );
}

const REVOKE: &str = "/oauth2/revoke";
const INTROSPECT: &str = "/oauth2/introspect";

#[tokio::test(flavor = "multi_thread")]
async fn revoking_an_access_token_makes_the_proxy_refuse_it() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let at = s(&client_credentials(&c, None).await.json()["access_token"]);
    let other = s(&client_credentials(&c, None).await.json()["access_token"]);
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(&at)).await.status,
        200
    );
    let r = c
        .post_form(
            REVOKE,
            &[("token", &at), ("token_type_hint", "refresh_token")],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // In force as soon as the answer came (and on disk: see the process tests).
    let r = gw.client(Proto::H1).get("/api/x", Some(&at)).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        "Bearer realm=\"valet\", error=\"invalid_token\", error_description=\"token revoked\""
    );
    assert_eq!(
        gw.client(Proto::H1)
            .get("/api/x", Some(&other))
            .await
            .status,
        200
    );
    // Durable in the state store; the operator's file is not written.
    let jti = claims_of(&at)["jti"].as_str().unwrap().to_string();
    let store = valet::store::sqlite::SqliteStore::open(
        &gw.revocation_path.with_file_name("valet-state.db"),
    )
    .unwrap();
    use valet::store::Store;
    assert!(store
        .snapshot()
        .unwrap()
        .records
        .contains(&valet::store::Record::Token {
            jti: jti.clone(),
            expires_at: claims_of(&at)["exp"].as_i64().unwrap(),
        }));
    assert!(!std::fs::read_to_string(&gw.revocation_path)
        .unwrap_or_default()
        .contains(&jti));
    // Unknown, malformed and already revoked tokens: 200 too.
    for t in ["not-a-token", at.as_str()] {
        let r = c
            .post_form(REVOKE, &[("token", t)], Some(("svc", SVC_SECRET)))
            .await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_refresh_token_ends_its_access_tokens_and_only_the_owner_may() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let j = password_grant(&c, "app").await.json();
    let (at, rt) = (s(&j["access_token"]), s(&j["refresh_token"]));
    // Another client may not revoke it.
    let r = c
        .post_form(REVOKE, &[("token", &rt)], Some(("other-app", APP_SECRET)))
        .await;
    assert_oauth_error(&r, 400, "unauthorized_client");
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(&at)).await.status,
        200
    );
    // The owner may.
    let r = c
        .post_form(REVOKE, &[("token", &rt)], Some(("app", APP_SECRET)))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(&at)).await.status,
        401
    );
    assert_oauth_error(&refresh(&c, &rt, None).await, 400, "invalid_grant");
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_reports_active_revoked_expired_and_foreign_tokens() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let at = s(&client_credentials(&c, Some("read write")).await.json()["access_token"]);
    let r = c
        .post_form(INTROSPECT, &[("token", &at)], Some(("svc", SVC_SECRET)))
        .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["active"], true);
    assert_eq!(j["scope"], "read write");
    assert_eq!(j["client_id"], "svc");
    assert_eq!(j["sub"], "svc-operator");
    assert_eq!(j["iss"], ISSUER);
    // Another client does not see it; a resource server allowed to introspect does.
    let r = c
        .post_form(INTROSPECT, &[("token", &at)], Some(("app", APP_SECRET)))
        .await;
    assert_eq!(r.json(), serde_json::json!({"active": false}));
    let r = c
        .post_form(INTROSPECT, &[("token", &at)], Some(("rs", APP_SECRET)))
        .await;
    assert_eq!(r.json()["active"], true);
    // A token valet did not sign.
    let foreign = sign(&TestKey::new(), &claims("x", "read"));
    let r = c
        .post_form(
            INTROSPECT,
            &[("token", &foreign)],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    assert_eq!(r.json(), serde_json::json!({"active": false}));
    // Expired: signed by valet's key, but past its exp (beyond the skew).
    let mut old = claims("svc-operator", "read");
    old["client_id"] = "svc".into();
    old["exp"] = (now() - 60).into();
    let expired = sign(&gw.key, &old);
    let r = c
        .post_form(
            INTROSPECT,
            &[("token", &expired)],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    assert_eq!(r.json(), serde_json::json!({"active": false}));
    // Revoked.
    c.post_form(REVOKE, &[("token", &at)], Some(("svc", SVC_SECRET)))
        .await;
    let r = c
        .post_form(INTROSPECT, &[("token", &at)], Some(("svc", SVC_SECRET)))
        .await;
    assert_eq!(r.json(), serde_json::json!({"active": false}));
    // Unauthenticated introspection is refused.
    let r = c.post_form(INTROSPECT, &[("token", &at)], None).await;
    assert_oauth_error(&r, 401, "invalid_client");
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_issuer_matches_tokens_and_jwks_verifies_them() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let r = c.get("/.well-known/oauth-authorization-server", None).await;
    assert_eq!(r.status, 200);
    let meta = r.json();
    let at = s(&client_credentials(&c, None).await.json()["access_token"]);
    // Byte for byte.
    assert_eq!(
        meta["issuer"].as_str().unwrap().as_bytes(),
        claims_of(&at)["iss"].as_str().unwrap().as_bytes()
    );
    assert_eq!(meta["token_endpoint"], format!("{ISSUER}/oauth2/token"));
    assert_eq!(
        meta["revocation_endpoint"],
        format!("{ISSUER}/oauth2/revoke")
    );
    assert_eq!(meta["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    // A Host header never changes what valet publishes.
    let req = c
        .request("GET", "/.well-known/oauth-authorization-server")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let mut req = req;
    req.headers_mut()
        .insert("host", "evil.example".parse().unwrap());
    assert_eq!(c.send(req).await.json()["issuer"], ISSUER);

    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&c.get("/.well-known/jwks.json", None).await.body).unwrap();
    let jwk = jwks.find(KID).expect("the signing key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&[AUDIENCE]);
    jsonwebtoken::decode::<Value>(&at, &key, &v)
        .expect("the published key verifies valet's tokens");
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_secret_guessing_is_throttled_but_never_locks_out_the_real_client() {
    let (gw, _up) = setup().await;
    let attacker = gw.client(Proto::H1);
    for _ in 0..3 {
        let r = attacker
            .post_form(
                TOKEN,
                &[("grant_type", "client_credentials")],
                Some(("svc", "guess")),
            )
            .await;
        assert_oauth_error(&r, 401, "invalid_client");
    }
    // The guessing source is throttled, even when it tries the right secret
    // (so the throttle is no oracle)...
    let r = client_credentials(&attacker, None).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(gw.metric("valet_client_auth_failures_total").await, 3.0);
    assert_eq!(
        gw.metric("valet_rate_limited_total{by=\"client_source\"}")
            .await,
        1.0
    );
    // ...but the real client, from anywhere else, is not locked out.
    let real = gw.client(Proto::H1).from("127.0.0.2");
    assert_eq!(client_credentials(&real, None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_that_cannot_be_written_answers_503_and_changes_nothing() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let at = s(&client_credentials(&c, None).await.json()["access_token"]);
    // The store file moved away under the running gateway: a write there
    // would land in a file no one opens again, so it is refused.
    let store = gw.revocation_path.with_file_name("valet-state.db");
    let away = store.with_extension("away");
    std::fs::rename(&store, &away).unwrap();
    let r = c
        .post_form(REVOKE, &[("token", &at)], Some(("svc", SVC_SECRET)))
        .await;
    assert_oauth_error(&r, 503, "temporarily_unavailable");
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(&at)).await.status,
        200,
        "never a 200 that was not kept"
    );
    assert_eq!(
        gw.metric("valet_store_errors_total{op=\"append\"}").await,
        1.0
    );
    std::fs::rename(&away, &store).unwrap();
    let r = c
        .post_form(REVOKE, &[("token", &at)], Some(("svc", SVC_SECRET)))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(&at)).await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_rotate_without_failing_tokens_in_flight() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let old = s(&client_credentials(&c, None).await.json()["access_token"]);
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(&old)).await.status,
        200
    );
    // Rotate: a new ES256 key signs from now on; the old one stays for verification.
    let text = std::fs::read_to_string(&gw.config_path).unwrap().replace(
        "  keys:\n",
        "  signing_key: next-key\n  keys:\n    - id: next-key\n      algorithm: ES256\n      private_key_file: next.pem\n      generate_if_missing: true\n",
    );
    let tmp = gw.config_path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &gw.config_path).unwrap();
    let rotated = eventually(PICKUP, || async {
        let t = s(&client_credentials(&c, None).await.json()["access_token"]);
        jsonwebtoken::decode_header(&t).unwrap().kid.as_deref() == Some("next-key")
    })
    .await;
    assert!(rotated, "new tokens are not signed with the new key");
    let new = s(&client_credentials(&c, None).await.json()["access_token"]);
    assert_eq!(
        jsonwebtoken::decode_header(&new).unwrap().alg,
        jsonwebtoken::Algorithm::ES256
    );
    // Both the token in flight and the new one pass the proxy.
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(&old)).await.status,
        200
    );
    assert_eq!(
        gw.client(Proto::H1).get("/api/x", Some(&new)).await.status,
        200
    );
    // The JWKS publishes both, and each verifies its own tokens.
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&c.get("/.well-known/jwks.json", None).await.body).unwrap();
    assert_eq!(jwks.keys.len(), 2);
    for (t, kid, alg) in [
        (&old, KID, jsonwebtoken::Algorithm::EdDSA),
        (&new, "next-key", jsonwebtoken::Algorithm::ES256),
    ] {
        let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(kid).unwrap()).unwrap();
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_audience(&[AUDIENCE]);
        jsonwebtoken::decode::<Value>(t, &key, &v).unwrap_or_else(|e| panic!("{kid}: {e}"));
    }
}

#[test]
fn unknown_clients_and_users_are_checked_against_a_dummy_of_the_same_kind() {
    // What an unknown id costs must be what a wrong secret costs: with argon2id
    // secrets registered, the dummy is an argon2id hash too (timing itself is
    // not asserted in tests).
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    std::fs::write(dir.path().join("signing.pem"), TestKey::new().pem).unwrap();
    let users = dir.path().join("users.yaml");
    std::fs::write(
        &users,
        format!(
            "users:\n  - username: erin\n    password_hash: \"{}\"\n",
            valet::oauth2::registry::argon2id_hash("pw")
        ),
    )
    .unwrap();
    let text = config_text(
        &ca,
        &dir,
        &default_routes("127.0.0.1:9".parse().unwrap()),
        &auth_server_yaml(&format!("  users_file: \"{}\"\n", users.display())),
    );
    let path = dir.path().join("valet.yaml");
    std::fs::write(&path, text).unwrap();
    let cfg = valet::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let reg = &cfg.authorization_server.as_ref().unwrap().registry;
    assert!(reg.dummy_client.as_ref().unwrap().is_argon2());
    assert!(reg.dummy_user.as_ref().unwrap().is_argon2());
    assert!(reg.users.contains_key("erin"), "users_file is read");
    assert!(reg.users.contains_key("alice"), "alongside inline users");
}

async fn setup_with_grace(grace: &str) -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let yaml =
        auth_server_yaml("").replace("refresh_grace: 1s", &format!("refresh_grace: {grace}"));
    let gw = Gateway::start(&default_routes(up.addr), &yaml).await;
    (gw, up)
}

fn refresh_token_of(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["refresh_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grace_of_zero_means_a_rotated_refresh_token_never_yields_a_pair_again() {
    let (gw, _up) = setup_with_grace("0s").await;
    let c = gw.client(Proto::H1);
    let rt = refresh_token_of(&password_grant(&c, "app").await);
    let next = refresh_token_of(&refresh(&c, &rt, None).await);
    // At once, within the same second: reuse, and the family ends.
    assert_oauth_error(&refresh(&c, &rt, None).await, 400, "invalid_grant");
    assert_oauth_error(&refresh(&c, &next, None).await, 400, "invalid_grant");
    assert_eq!(
        gw.metric("valet_revocations_total{kind=\"refresh_reuse\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_uses_of_one_refresh_token_yield_exactly_one_pair() {
    let (gw, _up) = setup_with_grace("0s").await;
    let c = gw.client(Proto::H1);
    for round in 0..5 {
        let rt = refresh_token_of(&password_grant(&c, "app").await);
        let (a, b) = tokio::join!(refresh(&c, &rt, None), refresh(&c, &rt, None));
        let ok = [&a, &b].iter().filter(|r| r.status == 200).count();
        assert_eq!(ok, 1, "round {round}: {} and {}", a.status, b.status);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_use_within_the_grace_does_not_extend_it() {
    // A grace of 5 s leaves 3 s of margin for the second use on a busy
    // machine.
    let (gw, _up) = setup_with_grace("5s").await;
    let c = gw.client(Proto::H1);
    let rt = refresh_token_of(&password_grant(&c, "app").await);
    refresh_token_of(&refresh(&c, &rt, None).await);
    // 2 s after the first use: within the grace, a pair.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    refresh_token_of(&refresh(&c, &rt, None).await);
    // 6 s after the first use (4 s after the second): past the grace of the
    // first use, which the second did not move: reuse.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_oauth_error(&refresh(&c, &rt, None).await, 400, "invalid_grant");
    assert_eq!(
        gw.metric("valet_revocations_total{kind=\"refresh_reuse\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_carries_the_rights_of_now_not_of_the_login() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let r = c
        .post_form(
            TOKEN,
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "alice-pw"),
                ("scope", "read write"),
            ],
            Some(("app", APP_SECRET)),
        )
        .await;
    let rt = refresh_token_of(&r);
    assert_eq!(r.json()["scope"], "read write");
    // The operator takes `write` from the client and changes alice's email.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let text = text
        .replacen(
            "      grant_types: [password]\n      scopes: [read, write]",
            "      grant_types: [password]\n      scopes: [read]",
            1,
        )
        .replace("alice@example.com", "alice@new.example");
    std::fs::write(&gw.config_path, text).unwrap();
    assert!(gw.running.as_ref().unwrap().app.reload_config().is_ok());
    let r = refresh(&c, &rt, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["scope"], "read", "a scope the client lost stays lost");
    assert_eq!(
        claims_of(&s(&j["access_token"]))["email"],
        "alice@new.example"
    );
    // And the family's next refresh token carries no more than that.
    let r = refresh(&c, &s(&j["refresh_token"]), Some("write")).await;
    assert_oauth_error(&r, 400, "invalid_scope");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_family_ends_at_its_max_lifetime_however_often_it_is_used() {
    let up = Upstream::start().await;
    let yaml = auth_server_yaml("").replacen(
        "      use_refresh_token: true\n",
        "      use_refresh_token: true\n      refresh_token_max_lifetime: 3s\n",
        1,
    );
    let gw = Gateway::start(&default_routes(up.addr), &yaml).await;
    let c = gw.client(Proto::H1);
    let login = now();
    let mut rt = refresh_token_of(&password_grant(&c, "app").await);
    let fexp = claims_of(&rt)["fexp"].as_i64().unwrap();
    assert!((login + 3..=now() + 3).contains(&fexp), "{fexp}");
    // Refreshing keeps the family's end, and no refresh token outlives it.
    for _ in 0..2 {
        rt = refresh_token_of(&refresh(&c, &rt, None).await);
        let claims = claims_of(&rt);
        assert_eq!(claims["fexp"], fexp);
        assert!(claims["exp"].as_i64().unwrap() <= fexp);
    }
    // Past the family's end, its newest refresh token no longer works.
    tokio::time::sleep(std::time::Duration::from_secs(
        (fexp - now() + 1).max(0) as u64
    ))
    .await;
    assert_oauth_error(&refresh(&c, &rt, None).await, 400, "invalid_grant");
}

/// A used refresh token is spent: introspection says inactive (the
/// rotation lives in the state store, not in the revocation map).
#[tokio::test(flavor = "multi_thread")]
async fn introspecting_a_used_refresh_token_says_inactive() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let rt = refresh_token_of(&password_grant(&c, "app").await);
    let active = |r: &Reply| r.json()["active"].as_bool().unwrap();
    let ask = |t: String| {
        let c = gw.client(Proto::H1);
        async move {
            c.post_form(INTROSPECT, &[("token", &t)], Some(("app", APP_SECRET)))
                .await
        }
    };
    assert!(active(&ask(rt.clone()).await));
    let next = refresh_token_of(&refresh(&c, &rt, None).await);
    assert!(!active(&ask(rt).await), "a used refresh token is active");
    assert!(active(&ask(next).await));
}

/// A refresh token the operator revokes in the revocation file (not
/// through valet) is refused: the store does not know it, the map does.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_token_revoked_in_the_operators_file_is_refused() {
    let (gw, _up) = setup().await;
    let c = gw.client(Proto::H1);
    let rt = refresh_token_of(&password_grant(&c, "app").await);
    let claims = claims_of(&rt);
    std::fs::write(
        &gw.revocation_path,
        format!(
            "tokens:\n  - {{jti: {}, expires_at: {}}}\n",
            claims["jti"].as_str().unwrap(),
            claims["exp"]
        ),
    )
    .unwrap();
    let reloads = "valet_reloads_total{kind=\"revocation\",result=\"success\"}";
    assert!(eventually(PICKUP, || async { gw.metric(reloads).await >= 1.0 }).await);
    assert_oauth_error(&refresh(&c, &rt, None).await, 400, "invalid_grant");
}
