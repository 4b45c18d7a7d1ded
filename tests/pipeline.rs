//! The in-process tier: the real pipeline (`server::dispatch::handle`, with
//! a real config, state and token keys) driven without sockets, for the
//! checks that end before an upstream is needed. Each case sends the hostile
//! input itself and asserts the exact refusal: status, error code and
//! `WWW-Authenticate`. What needs a connection (TLS, HTTP framing, h2,
//! upstream behaviour) stays in the socket tests.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use support::*;
use valet::app::App;
use valet::bodies::RequestBody;

struct Pipeline {
    app: Arc<App>,
    key: TestKey,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: serde_json::Value,
}

impl Answer {
    fn challenge(&self) -> &str {
        self.headers
            .get(http::header::WWW_AUTHENTICATE)
            .map_or("", |v| v.to_str().unwrap())
    }
}

const PEER: &str = "192.0.2.7:40000";

impl Pipeline {
    /// The config of the socket tests, with routes to a closed port (a
    /// refusal never reaches it) and an authorization server.
    fn new(listener: &str) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let key = TestKey::new();
        std::fs::write(dir.path().join("signing.pem"), &key.pem).unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let extra = format!(
            "authorization_server:\n  clients:\n    - client_id: svc\n      secret_hash: \"{}\"\n      grant_types: [client_credentials]\n      operator: svc-op\n      scopes: [read]\n",
            valet::credentials::argon2id_hash("svc-secret")
        );
        let mut text = config_text(&ca, &dir, &default_routes(closed), &extra);
        if !listener.is_empty() {
            let indented: String = listener.lines().map(|l| format!("    {l}\n")).collect();
            text = text.replacen("metrics:\n", &format!("{indented}metrics:\n"), 1);
        }
        let path = dir.path().join("valet.yaml");
        std::fs::write(&path, text).unwrap();
        let config = valet::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        Pipeline {
            app: App::new(config).unwrap(),
            key,
            _dir: dir,
        }
    }

    async fn send(&self, req: Request<RequestBody>) -> Answer {
        let peer: SocketAddr = PEER.parse().unwrap();
        let resp = valet::server::dispatch::handle(&self.app, 0, peer, req).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        }
    }

    async fn get(&self, target: &str, token: Option<&str>) -> Answer {
        let mut b = Request::get(target).header("host", "valet.test");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(RequestBody::whole(Bytes::new())).unwrap())
            .await
    }

    fn client_errors(&self, reason: &str) -> f64 {
        self.sample(&format!("valet_client_errors_total{{reason=\"{reason}\"}}"))
    }

    fn sample(&self, sample: &str) -> f64 {
        let text = String::from_utf8(self.app.metrics.render()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

#[tokio::test]
async fn path_spellings_a_backend_might_decode_are_refused_before_routing() {
    let p = Pipeline::new("");
    let token = sign(&p.key, &claims("alice", "read"));
    for target in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2e/admin",
        "/api/.%2E/admin",
        "/public/./x",
        "/api%2Fx",
        "/api%2fx",
        "/api%5Cx",
        "/api\\x",
        "//api/x",
        "/api//x",
        "/api/x;jsessionid=1",
        "/;x/api",
        "/api/%00",
        "/api/%zz",
        "/api/%2",
    ] {
        let before = p.client_errors("bad_path");
        let a = p.get(target, Some(&token)).await;
        assert_eq!(a.status, 400, "{target}: {}", a.body);
        assert_eq!(a.body["error"], "invalid_request", "{target}");
        assert_eq!(a.challenge(), "", "{target}");
        assert_eq!(p.client_errors("bad_path"), before + 1.0, "{target}");
    }
    // The canonical spelling of an unreserved escape is routed.
    let a = p.get("/public/%61bc", None).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.body["error"], "bad_gateway");
}

#[tokio::test]
async fn hosts_that_disagree_or_carry_more_than_a_host_are_refused() {
    let p = Pipeline::new("");
    let req = |uri: &str, hosts: &[&str]| {
        let mut b = Request::get(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(RequestBody::whole(Bytes::new())).unwrap()
    };
    for (uri, hosts) in [
        ("/public/x", &["a.test", "b.test"][..]),
        ("/public/x", &["user@a.test"][..]),
        ("/public/x", &["a.test:port"][..]),
        ("/public/x", &["a.test/x"][..]),
        ("/public/x", &[][..]),
        ("https://a.test/public/x", &["b.test"][..]),
    ] {
        let before = p.client_errors("bad_host");
        let a = p.send(req(uri, hosts)).await;
        assert_eq!(a.status, 400, "{uri} {hosts:?}: {}", a.body);
        assert_eq!(a.body["error"], "invalid_request");
        assert_eq!(p.client_errors("bad_host"), before + 1.0);
    }
}

#[tokio::test]
async fn bearer_refusals_carry_their_rfc_6750_challenge() {
    let p = Pipeline::new("");
    let n = now();
    let mut expired = claims("alice", "read");
    expired["exp"] = (n - 60).into();
    let mut foreign_aud = claims("alice", "read");
    foreign_aud["aud"] = "another-api".into();
    let mut foreign_iss = claims("alice", "read");
    foreign_iss["iss"] = "https://evil.test".into();
    let none = raw_token(
        &serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": KID}),
        &claims("alice", "read"),
        "",
    );
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.typ = Some("at+jwt".into());
        h.kid = Some(KID.into());
        let k = jsonwebtoken::EncodingKey::from_secret(p.key.public_pem().as_bytes());
        sign_with(&h, &claims("alice", "read"), &k)
    };
    let other_key = sign(&TestKey::new(), &claims("alice", "read"));
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "not.a.jwt".to_string()),
        ("alg none", none),
        ("HS256 keyed with the public key", hs256),
        ("another key under our kid", other_key),
        ("expired", sign(&p.key, &expired)),
        ("wrong audience", sign(&p.key, &foreign_aud)),
        ("wrong issuer", sign(&p.key, &foreign_iss)),
    ];
    for (what, token) in cases {
        let a = p.get("/api/x", Some(&token)).await;
        assert_eq!(a.status, 401, "{what}: {}", a.body);
        assert_eq!(a.body["error"], "invalid_token", "{what}");
        assert!(
            a.challenge()
                .starts_with("Bearer realm=\"valet\", error=\"invalid_token\""),
            "{what}: {}",
            a.challenge()
        );
    }
    // No token: a challenge without an error (RFC 6750 §3.1).
    let a = p.get("/api/x", None).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.challenge(), "Bearer realm=\"valet\"");
    // A valid token without the route's scope.
    let a = p
        .get("/api/x", Some(&sign(&p.key, &claims("alice", "write"))))
        .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.body["error"], "insufficient_scope");
    assert!(a.challenge().contains("error=\"insufficient_scope\""));
    assert!(
        a.challenge().ends_with("scope=\"read\""),
        "{}",
        a.challenge()
    );
}

/// RFC 7515 §4.1.11: valet understands no critical extension, so a token
/// validly signed by valet's own key that carries `crit` is refused.
#[tokio::test]
async fn own_tokens_naming_critical_extensions_are_refused() {
    let p = Pipeline::new("");
    let enc = jsonwebtoken::EncodingKey::from_ed_der(&p.key.pkcs8);
    let signed = |crit: Option<serde_json::Value>| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.typ = Some("at+jwt".into());
        h.kid = Some(KID.into());
        if let Some(c) = crit {
            h.extras.insert("crit", c);
            h.extras
                .insert("http://example.invalid/must-understand", true);
        }
        sign_with(&h, &claims("alice", "read"), &enc)
    };
    // The same token without `crit` passes authentication (the route's
    // upstream is a closed port: 502).
    assert_eq!(p.get("/api/x", Some(&signed(None))).await.status, 502);
    let sample = "valet_token_validation_failures_total{reason=\"critical_extension\"}";
    for crit in [
        serde_json::json!(["http://example.invalid/must-understand"]),
        serde_json::json!(["exp"]),
        serde_json::json!([]),
    ] {
        let before = p.sample(sample);
        let a = p.get("/api/x", Some(&signed(Some(crit.clone())))).await;
        assert_eq!(a.status, 401, "{crit}: {}", a.body);
        assert_eq!(a.body["error"], "invalid_token", "{crit}");
        assert!(
            a.challenge()
                .starts_with("Bearer realm=\"valet\", error=\"invalid_token\"")
                && a.challenge().contains("crit"),
            "{crit}: {}",
            a.challenge()
        );
        assert_eq!(p.sample(sample), before + 1.0, "{crit}");
    }
}

#[tokio::test]
async fn tokens_in_the_query_are_refused_in_any_spelling() {
    let p = Pipeline::new("");
    let token = sign(&p.key, &claims("alice", "read"));
    for q in [
        format!("access_token={token}"),
        format!("a=1&access%5Ftoken={token}"),
        format!("%61ccess_token={token}"),
        format!("ACCESS%5FTOKEN={token}"),
    ] {
        let a = p.get(&format!("/api/x?{q}"), None).await;
        assert_eq!(a.status, 400, "{q}");
        assert_eq!(a.body["error"], "invalid_request");
        assert!(a.body["error_description"]
            .as_str()
            .unwrap()
            .contains("query string"));
    }
}

#[tokio::test]
async fn underscore_headers_are_refused_when_the_listener_says_so() {
    let p = Pipeline::new("headers_with_underscores: reject");
    let req = Request::get("/public/x")
        .header("host", "valet.test")
        .header("x_user", "admin")
        .body(RequestBody::whole(Bytes::new()))
        .unwrap();
    let a = p.send(req).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(p.client_errors("header_underscore"), 1.0);
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_a_safe_one_is_kept() {
    let p = Pipeline::new("");
    let a = p.get("/nothing-here", None).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body["error"], "not_found");
    let id = a.headers["x-request-id"].to_str().unwrap();
    assert_eq!(a.body["request_id"], id);
    assert!(id.len() >= 16, "{id}");
    for (sent, kept) in [("abc-123.x:y_z", true), ("a b", false), ("<script>", false)] {
        let req = Request::get("/nothing-here")
            .header("host", "valet.test")
            .header("x-request-id", sent)
            .body(RequestBody::whole(Bytes::new()))
            .unwrap();
        let a = p.send(req).await;
        assert_eq!(a.headers["x-request-id"] == sent, kept, "{sent}");
    }
}

#[tokio::test]
async fn the_token_endpoint_refuses_in_rfc_6749_shape() {
    let p = Pipeline::new("");
    let form = |body: &'static str| {
        Request::post("/oauth2/token")
            .header("host", "valet.test")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(RequestBody::whole(body))
            .unwrap()
    };
    let a = p.send(form("grant_type=magic")).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"], "unsupported_grant_type");
    assert_eq!(a.headers["cache-control"], "no-store");
    let a = p.send(form("client_id=svc")).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"], "invalid_request");
    let a = p.get("/oauth2/token", None).await;
    assert_eq!(a.status, 405);
    assert_eq!(a.headers["allow"], "POST");
    // The right secret, whole pipeline: a token that the proxy accepts.
    let a = p
        .send(
            Request::post("/oauth2/token")
                .header("host", "valet.test")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(RequestBody::whole(
                    "grant_type=client_credentials&client_id=svc&client_secret=svc-secret",
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let token = a.body["access_token"].as_str().unwrap();
    let a = p.get("/api/x", Some(token)).await;
    assert_eq!(a.status, 502, "authenticated, then the closed upstream");
    assert_eq!(a.body["error"], "bad_gateway");
}
