//! CORS for browser applications on another origin (issue 21, item 5): real
//! preflights and browser-shaped requests against a route's policy and the
//! top-level policy of valet's own endpoints.

mod support;

use http_body_util::Empty;
use support::client::Reply;
use support::*;

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";

fn routes(up: std::net::SocketAddr) -> String {
    format!(
        r#"  - name: api
    match: {{ path_prefix: /api }}
    upstream: "http://{up}"
    strip_prefix: true
    auth: {{ scopes: [read] }}
    cors:
      allowed_origins: ["{APP}", "http://localhost:3000"]
      allowed_methods: [PUT]
      allowed_headers: [authorization, content-type, x-trace]
      exposed_headers: [x-request-id]
      allow_credentials: true
      max_age: 5m
  - name: plain
    match: {{ path_prefix: /plain }}
    upstream: "http://{up}"
"#
    )
}

fn extra() -> String {
    format!(
        r#"cors:
  allowed_origins: ["{APP}"]
authorization_server:
  clients:
    - client_id: spa
      secret_hash: "{}"
      grant_types: [client_credentials]
      operator: spa-op
      scopes: [read]
"#,
        valet::oauth2::registry::argon2id_hash("spa-secret")
    )
}

async fn start() -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&routes(up.addr), &extra()).await;
    (gw, up)
}

/// An `OPTIONS` preflight as a browser sends it: no credentials.
async fn preflight(gw: &Gateway, path: &str, origin: &str, method: &str, headers: &str) -> Reply {
    let c = gw.client(Proto::H1);
    let mut b = c
        .request("OPTIONS", path)
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        b = b.header("access-control-request-headers", headers);
    }
    c.send(b.body(Empty::<bytes::Bytes>::new()).unwrap()).await
}

fn has(r: &Reply, name: &str) -> bool {
    r.headers.contains_key(name)
}

fn varies_on_origin(r: &Reply) -> bool {
    r.headers
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("Origin"))
}

#[tokio::test(flavor = "multi_thread")]
async fn preflights_are_answered_before_authentication_and_never_forwarded() {
    let (gw, up) = start().await;
    let r = preflight(
        &gw,
        "/api/items/7",
        APP,
        "PUT",
        "authorization, content-type, X-Trace",
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), APP);
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert_eq!(
        r.header("access-control-allow-methods"),
        "GET, HEAD, POST, PUT"
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        "authorization, content-type, x-trace"
    );
    assert_eq!(r.header("access-control-max-age"), "300");
    assert!(varies_on_origin(&r));
    // Another allowed origin gets its own name back, never the list.
    let r = preflight(&gw, "/api/x", "http://localhost:3000", "GET", "").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        "http://localhost:3000"
    );

    // Refused: another origin, a look-alike, a method, a header.
    for (origin, method, headers) in [
        (EVIL, "PUT", ""),
        ("https://app.example.com.evil.example", "GET", ""),
        ("https://APP.example.com", "GET", ""),
        ("null", "GET", ""),
        (APP, "DELETE", ""),
        (APP, "PUT", "authorization, x-secret"),
    ] {
        let r = preflight(&gw, "/api/x", origin, method, headers).await;
        assert_eq!(r.status, 403, "{origin} {method} {headers}");
        assert_eq!(r.json()["error"], "cors_refused");
        assert!(!has(&r, "access-control-allow-origin"), "{origin}");
        assert!(!has(&r, "access-control-allow-methods"));
    }
    assert_eq!(up.count(), 0, "a preflight reached the upstream");

    // A route without a policy: an OPTIONS is a request like any other.
    let r = preflight(&gw, "/plain/x", APP, "GET", "").await;
    assert_eq!(r.status, 401);
    assert!(!has(&r, "access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_carry_cors_headers_for_allowed_origins_only() {
    let (gw, up) = start().await;
    let token = gw.token("alice", "read");
    let c = gw.client(Proto::H1);
    // A browser-shaped request with credentials, from the allowed origin.
    let req = c
        .request("GET", "/api/x")
        .header("origin", APP)
        .header("authorization", format!("Bearer {token}"))
        .header("cookie", "session=abc")
        .header("sec-fetch-mode", "cors")
        .header("sec-fetch-site", "cross-site")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), APP);
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert_eq!(r.header("access-control-expose-headers"), "x-request-id");
    assert!(varies_on_origin(&r));
    assert_eq!(up.count(), 1);

    // From another origin: served (CORS is the browser's to enforce), but
    // nothing allows the page to read it.
    let req = c
        .request("GET", "/api/x")
        .header("origin", EVIL)
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200);
    assert!(!has(&r, "access-control-allow-origin"));
    assert!(!has(&r, "access-control-allow-credentials"));
    assert!(varies_on_origin(&r));

    // valet's own refusal is readable by the allowed page (why it failed).
    let req = c
        .request("GET", "/api/x")
        .header("origin", APP)
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), APP);
}

#[tokio::test(flavor = "multi_thread")]
async fn valets_own_endpoints_follow_the_top_level_policy() {
    let (gw, _up) = start().await;
    let r = preflight(
        &gw,
        "/oauth2/token",
        APP,
        "POST",
        "authorization, content-type",
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), APP);
    assert!(!has(&r, "access-control-allow-credentials"));
    let r = preflight(&gw, "/oauth2/token", EVIL, "POST", "").await;
    assert_eq!(r.status, 403);

    let c = gw.client(Proto::H1);
    let req = c
        .request("POST", "/oauth2/token")
        .header("origin", APP)
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "authorization",
            support::client::basic_header("spa", "spa-secret"),
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(
            "grant_type=client_credentials",
        )))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), APP);
    assert!(varies_on_origin(&r));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_a_browser_would_refuse_or_abuse_is_a_config_error() {
    let (gw, up) = start().await;
    for (cors, says) in [
        (
            "      allowed_origins: [\"*\"]\n      allow_credentials: true\n",
            "`*` with allow_credentials",
        ),
        ("      allowed_origins: [\"null\"]\n", "sandboxed frames"),
        (
            "      allowed_origins: [\"https://app.example.com/\"]\n",
            "no path",
        ),
        (
            "      allowed_origins: [\"https://App.example.com\"]\n",
            "lowercase",
        ),
        (
            "      allowed_origins: [\"*\"]\n      allowed_headers: [\"*\"]\n",
            "name them",
        ),
    ] {
        let routes = format!(
            "  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: \"http://{}\"\n    cors:\n{cors}",
            up.addr
        );
        let text = gw.config_text(&routes, "");
        let e = valet::config::parse(&gw.config_path, &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{cors}: {e}");
    }
}
