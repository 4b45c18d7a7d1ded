//! Tokens from trusted external issuers (issue 11): a test identity
//! provider over TLS under its own CA, with discovery and a JWKS endpoint
//! that counts its hits, rotates keys and can be switched off. Tokens are
//! shaped like Keycloak's (`azp`, `scope`, a `typ` claim) and Entra ID's
//! (`appid`/`azp`, `scp`, `roles`, no `jti`).

mod support;

use support::idp::{rsa_key, sign_rs256, Idp};
use support::*;

struct Setup {
    kc: Idp,
    entra: Idp,
    up: Upstream,
    gw: Gateway,
}

fn issuers_yaml(kc: &Idp, entra: &Idp) -> String {
    format!(
        r#"  issuers:
    - name: keycloak
      issuer: "{kc}"
      discovery: true
      ca_file: "{kc_ca}"
      token_types: [at+jwt, JWT]
      client_id_claims: [azp]
      min_refresh: 1h
    - name: entra
      issuer: "{en}"
      jwks_uri: "{en_jwks}"
      ca_file: "{en_ca}"
      token_types: [JWT]
      audiences: ["api://test-api"]
      client_id_claims: [azp, appid]
      scope_claims: [scp, roles]
      min_refresh: 1h
"#,
        kc = kc.issuer,
        kc_ca = kc.ca_file.display(),
        en = entra.issuer,
        en_jwks = entra.jwks_uri,
        en_ca = entra.ca_file.display(),
    )
}

async fn setup() -> Setup {
    setup_with(|_| {}, "").await
}

/// `prepare` runs on the Keycloak-like provider before valet starts;
/// `kc_yaml` replaces its `min_refresh` line.
async fn setup_with(prepare: impl FnOnce(&Idp), kc_yaml: &str) -> Setup {
    let kc = Idp::start("/realms/acme").await;
    prepare(&kc);
    let entra = Idp::start("/tenant-1/v2.0").await;
    let up = Upstream::start().await;
    let routes = format!(
        r#"{}  - name: kc-only
    match: {{ path_prefix: /kc-only }}
    upstream: "http://{a}"
    auth: {{ issuers: [keycloak] }}
  - name: aud
    match: {{ path_prefix: /aud }}
    upstream: "http://{a}"
    auth: {{ audiences: ["api://test-api"] }}
  - name: claims
    match: {{ path_prefix: /claims }}
    upstream: "http://{a}"
    inject_claims: {{ x-user-email: email, x-roles: realm_access.roles }}
"#,
        default_routes(up.addr),
        a = up.addr
    );
    let mut issuers = issuers_yaml(&kc, &entra);
    if !kc_yaml.is_empty() {
        issuers = issuers.replacen("      min_refresh: 1h\n", kc_yaml, 1);
    }
    let gw = Gateway::start_with(&routes, "", move |t| {
        t.replacen("revocation:\n", &format!("{issuers}revocation:\n"), 1)
    })
    .await;
    let s = Setup { kc, entra, up, gw };
    // The key sets are fetched at start.
    for idp in [&s.kc, &s.entra] {
        assert!(
            eventually(PICKUP, || async { idp.hits() >= 1 }).await,
            "{} not fetched at start",
            idp.issuer
        );
    }
    s
}

/// A Keycloak-shaped access token (header `typ: JWT`).
fn kc_claims(kc: &Idp, sub: &str) -> serde_json::Value {
    let n = now();
    serde_json::json!({
        "iss": kc.issuer, "sub": sub, "aud": AUDIENCE, "exp": n + 300, "iat": n,
        "jti": format!("kc-{}", valet::tokens::random_id()), "typ": "Bearer",
        "azp": "billing-app", "scope": "read profile", "email": format!("{sub}@example.com"),
        "realm_access": {"roles": ["admin", "user"]},
    })
}

/// An Entra ID v2-shaped access token: no `jti`, `scp` and `roles`.
fn entra_claims(en: &Idp, sub: &str) -> serde_json::Value {
    let n = now();
    serde_json::json!({
        "iss": en.issuer, "sub": sub, "oid": sub, "aud": "api://test-api", "exp": n + 300,
        "iat": n, "nbf": n, "azp": "0b7c-app", "scp": "read", "roles": ["Reader"], "ver": "2.0",
    })
}

impl Setup {
    async fn get(&self, path: &str, token: &str) -> client::Reply {
        self.gw.client(Proto::H1).get(path, Some(token)).await
    }
}

fn challenge(r: &client::Reply) -> String {
    r.headers
        .get("www-authenticate")
        .map_or(String::new(), |v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn keycloak_and_entra_tokens_reach_the_upstream_with_their_identity() {
    let s = setup().await;
    let kc = s.kc.sign("k1", "JWT", &kc_claims(&s.kc, "alice"));
    let r = s.get("/api/x", &kc).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = s.up.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen.headers["x-valet-subject"], "alice");
    assert_eq!(seen.headers["x-valet-client-id"], "billing-app");
    assert_eq!(seen.headers["x-valet-scopes"], "read profile");
    // A subject is unique within its issuer: the upstream is told which.
    assert_eq!(seen.headers["x-valet-issuer"], s.kc.issuer.as_str());

    let en = s.entra.sign("k1", "JWT", &entra_claims(&s.entra, "oid-1"));
    let r = s.get("/api/x", &en).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = s.up.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen.headers["x-valet-subject"], "oid-1");
    assert_eq!(seen.headers["x-valet-client-id"], "0b7c-app");
    assert_eq!(seen.headers["x-valet-scopes"], "read Reader");

    // valet's own tokens keep working beside them.
    assert_eq!(
        s.get("/api/x", &s.gw.token("bob", "read")).await.status,
        200
    );
    let seen = s.up.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen.headers["x-valet-issuer"], ISSUER);
    // Discovery was asked once; each set was fetched once.
    assert_eq!(
        s.kc.discovery_hits
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!((s.kc.hits(), s.entra.hits()), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn id_and_refresh_tokens_of_a_trusted_issuer_are_refused() {
    let s = setup().await;
    let mut id = kc_claims(&s.kc, "alice");
    id["typ"] = "ID".into();
    id["nonce"] = "n-1".into();
    id["at_hash"] = "x".into();
    let mut refresh = kc_claims(&s.kc, "alice");
    refresh["typ"] = "Refresh".into();
    let mut logout = kc_claims(&s.kc, "alice");
    logout["typ"] = "Logout".into();
    // An Entra ID token: the client app as audience, and a nonce.
    let mut en_id = entra_claims(&s.entra, "oid-1");
    en_id["aud"] = "0b7c-app".into();
    en_id["nonce"] = "n-2".into();
    // An ID token for the API's audience still has its nonce.
    let mut en_id_aud = entra_claims(&s.entra, "oid-1");
    en_id_aud["nonce"] = "n-3".into();
    for (what, token) in [
        ("keycloak ID token", s.kc.sign("k1", "JWT", &id)),
        ("keycloak refresh token", s.kc.sign("k1", "JWT", &refresh)),
        ("keycloak logout token", s.kc.sign("k1", "JWT", &logout)),
        ("entra ID token", s.entra.sign("k1", "JWT", &en_id)),
        (
            "entra ID token for the API",
            s.entra.sign("k1", "JWT", &en_id_aud),
        ),
    ] {
        let r = s.get("/api/x", &token).await;
        assert_eq!(r.status, 401, "{what}");
        assert!(
            challenge(&r).contains("error=\"invalid_token\""),
            "{what}: {}",
            challenge(&r)
        );
    }
    assert!(
        s.gw.metric("valet_token_validation_failures_total{reason=\"not_access_token\"}")
            .await
            >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_is_picked_up_on_the_first_unknown_kid_with_one_fetch() {
    let s = setup().await;
    s.kc.add_key("k2");
    s.kc.publish(&["k1", "k2"]);
    let before = s.kc.hits();
    let token = s.kc.sign("k2", "JWT", &kc_claims(&s.kc, "alice"));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let c = s.gw.client(Proto::H1);
        let t = token.clone();
        tasks.push(tokio::spawn(async move {
            c.get("/api/x", Some(&t)).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(s.kc.hits() - before, 1, "32 concurrent requests, one fetch");
}

#[tokio::test(flavor = "multi_thread")]
async fn random_unknown_kids_cost_the_issuer_at_most_the_cap() {
    let s = setup().await;
    let before = s.kc.hits();
    let k1 = s.kc.key("k1");
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let c = s.gw.client(Proto::H1);
        let token = sign_rs256(
            &k1.encoding,
            &format!("random-{i}-{}", valet::tokens::random_id()),
            "JWT",
            &kc_claims(&s.kc, "alice"),
        );
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            c.get("/api/x", Some(&token)).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let fetches = s.kc.hits() - before;
    // The documented cap: at most one refetch per 5 s and 6 a minute.
    assert!(fetches <= 6, "{fetches} fetches for 1000 unknown kids");
    let limited =
        s.gw.metric(&format!(
            "valet_jwks_fetches_total{{issuer=\"{}\",result=\"rate_limited\"}}",
            s.kc.issuer
        ))
        .await;
    assert!(limited >= 1.0, "{limited}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_issuer_down_cached_keys_keep_working() {
    let s = setup().await;
    s.kc.set_up(false);
    // A new kid makes valet try to fetch; the attempt fails.
    let stranger = rsa_key("k9");
    let t = sign_rs256(&stranger.encoding, "k9", "JWT", &kc_claims(&s.kc, "eve"));
    assert_eq!(s.get("/api/x", &t).await.status, 401);
    let failed = format!(
        "valet_jwks_fetches_total{{issuer=\"{}\",result=\"failure\"}}",
        s.kc.issuer
    );
    assert!(s.gw.metric(&failed).await >= 1.0);
    assert_eq!(
        s.gw.metric(&format!("valet_jwks_stale{{issuer=\"{}\"}}", s.kc.issuer))
            .await,
        1.0
    );
    // The held key still verifies.
    let good = s.kc.sign("k1", "JWT", &kc_claims(&s.kc, "alice"));
    assert_eq!(s.get("/api/x", &good).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_misdirected_tokens_are_refused() {
    let s = setup().await;
    let claims = kc_claims(&s.kc, "alice");
    let none = raw_token(
        &serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k1"}),
        &claims,
        "",
    );
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("k1".into());
        h.typ = Some("JWT".into());
        let k = jsonwebtoken::EncodingKey::from_secret(s.kc.key("k1").public_pem.as_bytes());
        sign_with(&h, &claims, &k)
    };
    let foreign = sign_rs256(&rsa_key("k1").encoding, "k1", "JWT", &claims);
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = "https://evil.example/realms/acme".into();
    let mut other_issuer = claims.clone();
    other_issuer["iss"] = s.entra.issuer.clone().into();
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = "another-api".into();
    let mut expired = claims.clone();
    expired["exp"] = (now() - 3600).into();
    let mut no_client = claims.clone();
    no_client.as_object_mut().unwrap().remove("azp");
    let mut at_jwt_typ_wrong = claims.clone();
    at_jwt_typ_wrong["sub"] = "bob".into();
    // Validly signed by the provider's own key, naming critical extensions.
    let critical = |crit: serde_json::Value| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some("k1".into());
        h.typ = Some("JWT".into());
        h.extras.insert("crit", crit);
        h.extras
            .insert("http://example.invalid/must-understand", true);
        sign_with(&h, &claims, &s.kc.key("k1").encoding)
    };
    // Without `crit`, the same header and claims pass.
    assert_eq!(
        s.get("/api/x", &s.kc.sign("k1", "JWT", &claims))
            .await
            .status,
        200
    );
    for (what, token, reason) in [
        (
            "crit naming an extension",
            critical(serde_json::json!([
                "http://example.invalid/must-understand"
            ])),
            "critical_extension",
        ),
        (
            "crit naming a registered claim",
            critical(serde_json::json!(["exp"])),
            "critical_extension",
        ),
        ("alg none", none, "wrong_algorithm"),
        ("HS256 keyed with the public key", hs256, "wrong_algorithm"),
        (
            "a foreign key under the provider's kid",
            foreign,
            "bad_signature",
        ),
        (
            "an untrusted issuer",
            s.kc.sign("k1", "JWT", &wrong_iss),
            "wrong_issuer",
        ),
        // Both providers name their first key k1: the other's k1 refuses it.
        (
            "signed by one issuer, claiming another",
            s.kc.sign("k1", "JWT", &other_issuer),
            "bad_signature",
        ),
        (
            "wrong audience",
            s.kc.sign("k1", "JWT", &wrong_aud),
            "wrong_audience",
        ),
        ("expired", s.kc.sign("k1", "JWT", &expired), "expired"),
        (
            "no client id",
            s.kc.sign("k1", "JWT", &no_client),
            "missing_claim",
        ),
        (
            "a typ the issuer does not use",
            s.kc.sign("k1", "id+jwt", &at_jwt_typ_wrong),
            "wrong_type",
        ),
    ] {
        let sample = format!("valet_token_validation_failures_total{{reason=\"{reason}\"}}");
        let before = s.gw.metric(&sample).await;
        let r = s.get("/api/x", &token).await;
        assert_eq!(r.status, 401, "{what}");
        assert!(
            challenge(&r).contains("error=\"invalid_token\""),
            "{what}: {}",
            challenge(&r)
        );
        assert_eq!(s.gw.metric(&sample).await, before + 1.0, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_restrict_issuers_and_audiences() {
    let s = setup().await;
    let kc = s.kc.sign("k1", "JWT", &kc_claims(&s.kc, "alice"));
    let en = s.entra.sign("k1", "JWT", &entra_claims(&s.entra, "oid-1"));
    assert_eq!(s.get("/kc-only/x", &kc).await.status, 200);
    let r = s.get("/kc-only/x", &en).await;
    assert_eq!(r.status, 401);
    assert!(
        challenge(&r).contains("not accepted here"),
        "{}",
        challenge(&r)
    );
    assert_eq!(
        s.get("/kc-only/x", &s.gw.token("bob", "read")).await.status,
        401,
        "valet's own token is not keycloak's"
    );
    assert_eq!(s.get("/aud/x", &en).await.status, 200);
    let r = s.get("/aud/x", &kc).await;
    assert_eq!(r.status, 401);
    assert!(
        challenge(&r).contains("wrong audience"),
        "{}",
        challenge(&r)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_are_injected_and_caller_copies_removed() {
    let s = setup().await;
    let kc = s.kc.sign("k1", "JWT", &kc_claims(&s.kc, "alice"));
    let host = format!("localhost:{}", s.gw.addr.port());
    let req = http::Request::get("/claims/x")
        .header("host", &host)
        .header("authorization", format!("Bearer {kc}"))
        .header("x-user-email", "mallory@example.com")
        .header("x_user_email", "mallory@example.com")
        .header("X-Roles", "superuser")
        .header("x-valet-issuer", "https://forged.example")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = s.gw.client(Proto::H1).send(req).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = s.up.seen.lock().unwrap().last().unwrap().clone();
    let all = |n: &str| -> Vec<String> {
        seen.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(all("x-user-email"), ["alice@example.com"]);
    assert_eq!(all("x-roles"), ["admin,user"]);
    assert_eq!(all("x-valet-issuer"), std::slice::from_ref(&s.kc.issuer));
    assert!(all("x_user_email").is_empty());
    // A token without the claim: the header is absent, not the caller's.
    let mut no_email = kc_claims(&s.kc, "bob");
    no_email.as_object_mut().unwrap().remove("email");
    let req = http::Request::get("/claims/x")
        .header("host", &host)
        .header(
            "authorization",
            format!("Bearer {}", s.kc.sign("k1", "JWT", &no_email)),
        )
        .header("x-user-email", "mallory@example.com")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(s.gw.client(Proto::H1).send(req).await.status, 200);
    let seen = s.up.seen.lock().unwrap().last().unwrap().clone();
    assert!(seen.headers.get("x-user-email").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_apply_in_each_issuers_namespace() {
    let s = setup().await;
    let mut revoked = kc_claims(&s.kc, "alice");
    revoked["jti"] = "shared-jti".into();
    let kc_revoked = s.kc.sign("k1", "JWT", &revoked);
    let mut same_jti_other_issuer = kc_claims(&s.kc, "alice");
    same_jti_other_issuer["jti"] = "own-jti".into();
    let kc_not_revoked = s.kc.sign("k1", "JWT", &same_jti_other_issuer);
    let mut old = entra_claims(&s.entra, "oid-7");
    old["iat"] = (now() - 60).into();
    let en_old = s.entra.sign("k1", "JWT", &old);
    let en_other = s.entra.sign("k1", "JWT", &entra_claims(&s.entra, "oid-8"));
    for t in [&kc_revoked, &kc_not_revoked, &en_old, &en_other] {
        assert_eq!(s.get("/api/x", t).await.status, 200);
    }
    let far = now() + 3600;
    std::fs::write(
        &s.gw.revocation_path,
        format!(
            "tokens:\n  - {{jti: own-jti, expires_at: {far}}}\nsubjects:\n  - {{subject: oid-8, revoked_before: {far}}}\nissuers:\n  - issuer: \"{kc}\"\n    tokens:\n      - {{jti: shared-jti, expires_at: {far}}}\n  - issuer: \"{en}\"\n    subjects:\n      - {{subject: oid-7, revoked_before: {cut}}}\n",
            kc = s.kc.issuer,
            en = s.entra.issuer,
            cut = now() - 1,
        ),
    )
    .unwrap();
    assert!(
        eventually(PICKUP, || async {
            s.get("/api/x", &kc_revoked).await.status == 401
        })
        .await,
        "the issuer-scoped jti was not revoked"
    );
    // valet's own entries (jti own-jti, subject oid-8) do not touch the
    // issuer's tokens; the issuer's subject cut-off does (no jti needed).
    assert_eq!(s.get("/api/x", &kc_not_revoked).await.status, 200);
    assert_eq!(s.get("/api/x", &en_other).await.status, 200);
    assert_eq!(s.get("/api/x", &en_old).await.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc_8414_metadata_is_used_when_there_is_no_openid_discovery() {
    let s = setup_with(|kc| kc.rfc8414_only(), "").await;
    let kc = s.kc.sign("k1", "JWT", &kc_claims(&s.kc, "alice"));
    assert_eq!(s.get("/api/x", &kc).await.status, 200);
    assert_eq!(
        s.kc.discovery_hits
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// The fresh time follows `Cache-Control: max-age` within the floor and the
/// ceiling: max-age=3600 under a 2 s ceiling is fetched again every 2 s;
/// `no-store` under a 1 s floor is not fetched more often than the floor.
#[tokio::test(flavor = "multi_thread")]
async fn the_key_set_is_refreshed_within_its_floor_and_ceiling() {
    let s = setup_with(
        |kc| kc.set_cache_control("public, max-age=3600"),
        "      min_refresh: 1s\n      max_refresh: 2s\n",
    )
    .await;
    assert!(
        eventually(PICKUP, || async { s.kc.hits() >= 3 }).await,
        "the ceiling did not bring a refetch: {} fetches",
        s.kc.hits()
    );
    s.kc.set_cache_control("no-store");
    // Waits for the fetches themselves, never counts them in a fixed
    // window: a busy machine only spaces them further apart, which the
    // floor allows.
    let start = s.kc.hits();
    assert!(
        eventually(PICKUP, || async { s.kc.hits() >= start + 3 }).await,
        "no-store under a 1 s floor stopped the refreshes: {} fetches",
        s.kc.hits() - start
    );
    // The floor: every answer since the switch said no-store, so each next
    // fetch came at least min_refresh (1 s) after it.
    let times = s.kc.hit_times();
    for pair in times[start..].windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= std::time::Duration::from_secs(1),
            "fetched again after {gap:?} under a 1 s floor"
        );
    }
}

/// A reload (any change to the config) keeps the keys already fetched: with
/// the provider down, its tokens still validate after the reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_fetched_keys() {
    let s = setup().await;
    s.kc.set_up(false);
    let reloads = "valet_reloads_total{kind=\"config\",result=\"success\"}";
    let before = s.gw.metric(reloads).await;
    let mut text = std::fs::read_to_string(&s.gw.config_path).unwrap();
    text.push_str(&format!(
        "  - name: added\n    match: {{ path_prefix: /added }}\n    upstream: \"http://{}\"\n",
        s.up.addr
    ));
    std::fs::write(&s.gw.config_path, text).unwrap();
    assert!(
        eventually(PICKUP, || async { s.gw.metric(reloads).await > before }).await,
        "the config was not reloaded"
    );
    let good = s.kc.sign("k1", "JWT", &kc_claims(&s.kc, "alice"));
    assert_eq!(s.get("/added/x", &good).await.status, 200);
    assert_eq!(s.get("/api/x", &good).await.status, 200);
}

/// A gateway trusting one provider by discovery; `extra` is added to its
/// issuer entry.
async fn discovery_gateway(idp: &Idp, up: &Upstream, extra: &str) -> Gateway {
    let issuers = format!(
        "  issuers:\n    - name: idp\n      issuer: \"{}\"\n      discovery: true\n      ca_file: \"{}\"\n      token_types: [JWT]\n      client_id_claims: [azp]\n{extra}",
        idp.issuer,
        idp.ca_file.display()
    );
    Gateway::start_with(&default_routes(up.addr), "", move |t| {
        t.replacen("revocation:\n", &format!("{issuers}revocation:\n"), 1)
    })
    .await
}

/// A discovered `jwks_uri` must be on the issuer's own host unless
/// `jwks_hosts` names another: a discovery document pointing elsewhere (here
/// 127.0.0.1 for an issuer on localhost, same port, a certificate valid for
/// both) gets no fetch, and the failure is counted; with the host listed,
/// the keys are fetched and the provider's tokens pass. A discovered URL
/// with user info is refused whatever the hosts.
#[tokio::test(flavor = "multi_thread")]
async fn a_discovered_key_set_must_be_on_an_allowed_host() {
    let up = Upstream::start().await;
    let elsewhere = |idp: &Idp, userinfo: &str| {
        idp.jwks_uri
            .replacen("localhost", &format!("{userinfo}127.0.0.1"), 1)
    };
    // Another host, not listed; then with user info, even when listed.
    for userinfo in ["", "user:pw@"] {
        let idp = Idp::start("/realms/acme").await;
        idp.set_discovered_jwks_uri(&elsewhere(&idp, userinfo));
        let extra = if userinfo.is_empty() {
            String::new()
        } else {
            format!("      jwks_hosts: [\"127.0.0.1:{}\"]\n", idp.addr.port())
        };
        let gw = discovery_gateway(&idp, &up, &extra).await;
        let failures = format!(
            "valet_jwks_fetches_total{{issuer=\"{}\",result=\"failure\"}}",
            idp.issuer
        );
        assert!(
            eventually(PICKUP, || async { gw.metric(&failures).await >= 1.0 }).await,
            "{userinfo}: the refused discovery was not counted"
        );
        assert_eq!(idp.hits(), 0, "{userinfo}: the key set was fetched");
        let token = idp.sign("k1", "JWT", &kc_claims(&idp, "alice"));
        let r = gw.client(Proto::H1).get("/api/x", Some(&token)).await;
        assert_eq!(r.status, 401, "{userinfo}");
    }
    // Listed: fetched, and the token passes.
    let idp = Idp::start("/realms/acme").await;
    idp.set_discovered_jwks_uri(&elsewhere(&idp, ""));
    let extra = format!("      jwks_hosts: [\"127.0.0.1:{}\"]\n", idp.addr.port());
    let gw = discovery_gateway(&idp, &up, &extra).await;
    assert!(eventually(PICKUP, || async { idp.hits() >= 1 }).await);
    let token = idp.sign("k1", "JWT", &kc_claims(&idp, "alice"));
    assert_eq!(
        gw.client(Proto::H1)
            .get("/api/x", Some(&token))
            .await
            .status,
        200
    );
    // On its own host (the default rule), discovery works as before: the
    // other tests' Keycloak-like provider.
}

/// What the config refuses: an injected claim in an identity header's
/// place, and an issuer name that is another issuer's URL.
#[test]
fn ambiguous_issuer_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    std::fs::write(dir.path().join("signing.pem"), TestKey::new().pem).unwrap();
    let load = |routes: &str, issuers: &str| {
        let text = config_text(&ca, &dir, routes, "").replacen(
            "revocation:\n",
            &format!("{issuers}revocation:\n"),
            1,
        );
        let path = dir.path().join("valet.yaml");
        std::fs::write(&path, text).unwrap();
        valet::config::load(&path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let route = |extra: &str| {
        format!(
            "  - name: r\n    match: {{ path_prefix: /r }}\n    upstream: \"http://127.0.0.1:9\"\n{extra}"
        )
    };
    let issuer = |name: &str, url: &str| {
        format!(
            "    - name: \"{name}\"\n      issuer: \"{url}\"\n      jwks_uri: \"https://idp.example/keys\"\n"
        )
    };
    assert_eq!(load(&route(""), ""), Ok(()));
    let e = load(
        &route("    inject_claims: { x-valet-subject: email }\n"),
        "",
    )
    .unwrap_err();
    assert!(e.contains("identity header"), "{e}");
    let two = format!(
        "  issuers:\n{}{}",
        issuer("https://b.example", "https://a.example"),
        issuer("b", "https://b.example")
    );
    let e = load(&route(""), &two).unwrap_err();
    assert!(e.contains("another issuer's URL"), "{e}");
    let own = format!("  issuers:\n{}", issuer(ISSUER, "https://a.example"));
    let e = load(&route(""), &own).unwrap_err();
    assert!(e.contains("another issuer's URL"), "{e}");
}

/// URLs valet calls carry no user info (it would be sent in `Host`), and
/// `jwks_hosts` belongs to discovery and names hosts only.
#[test]
fn issuer_urls_with_user_info_and_stray_jwks_hosts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    std::fs::write(dir.path().join("signing.pem"), TestKey::new().pem).unwrap();
    let load = |issuers: &str| {
        let routes =
            "  - name: r\n    match: { path_prefix: /r }\n    upstream: \"http://127.0.0.1:9\"\n";
        let text = config_text(&ca, &dir, routes, "").replacen(
            "revocation:\n",
            &format!("  issuers:\n{issuers}revocation:\n"),
            1,
        );
        let path = dir.path().join("valet.yaml");
        std::fs::write(&path, text).unwrap();
        valet::config::load(&path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let good = "    - issuer: \"https://idp.example\"\n      discovery: true\n      jwks_hosts: [keys.example, \"keys.example:8443\"]\n";
    assert_eq!(load(good), Ok(()));
    for (issuers, want) in [
        (
            "    - issuer: \"https://u:p@idp.example\"\n      discovery: true\n",
            "an issuer URL cannot carry user info",
        ),
        (
            "    - issuer: \"https://u:p@idp.example\"\n      discovery: true\n",
            "discovery needs an https issuer URL without user info",
        ),
        (
            "    - issuer: \"https://idp.example\"\n      jwks_uri: \"https://u:p@idp.example/keys\"\n",
            "is not an https URL without user info",
        ),
        (
            "    - issuer: \"https://idp.example\"\n      jwks_uri: \"https://idp.example/keys\"\n      jwks_hosts: [keys.example]\n",
            "it applies with discovery: true only",
        ),
        (
            "    - issuer: \"https://idp.example\"\n      discovery: true\n      jwks_hosts: [\"https://keys.example/x\"]\n",
            "is not a host name or host:port",
        ),
        (
            "    - issuer: \"https://idp.example\"\n      discovery: true\n      jwks_hosts: [\"u@keys.example\"]\n",
            "is not a host name or host:port",
        ),
    ] {
        let e = load(issuers).unwrap_err();
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}
