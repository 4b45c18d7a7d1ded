//! Walking around a protected route, attacked as a backend would be fooled:
//! path spellings, Host spellings and header spellings, sent as exact bytes
//! over real TLS (HTTP/1.1) and as real HTTP/2 requests. A public route `/`
//! and a protected route `/admin` (scope `admin`) share one upstream, which
//! must never receive a request for `/admin` that was not authorised.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use support::client::{raw_exchange, Reply};
use support::*;

fn routes(up: std::net::SocketAddr, admin_extra: &str) -> String {
    format!(
        r#"  - name: admin
    match: {{ path_prefix: /admin{admin_extra} }}
    upstream: "http://{up}"
    auth: {{ scopes: [admin] }}
  - name: cancel
    match: {{ path_prefix: "/v1/jobs:cancel" }}
    upstream: "http://{up}"
    auth: {{ scopes: [admin] }}
  - name: reports
    match: {{ path_prefix: /reports/ }}
    upstream: "http://{up}"
    auth: {{ scopes: [admin] }}
  - name: api-host
    match: {{ path_prefix: /, host: api.example.com }}
    upstream: "http://{up}"
  - name: public
    match: {{ path_prefix: / }}
    upstream: "http://{up}"
    auth: {{ required: false }}
    strip_request_headers: [x-debug-user]
"#
    )
}

async fn setup(listener: &str, admin_extra: &str) -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let gw = Gateway::start_with_listener(listener, &routes(up.addr, admin_extra), "").await;
    (gw, up)
}

/// Sends `target` as an exact HTTP/1.1 request line; returns status and body.
async fn h1(gw: &Gateway, target: &str, extra_headers: &str) -> (u16, String) {
    let c = gw.client(Proto::H1);
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra_headers}Connection: close\r\n\r\n"
    );
    let text = raw_exchange(&c, req.as_bytes()).await;
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The same target as an HTTP/2 `:path`.
async fn h2(gw: &Gateway, target: &str) -> Reply {
    let c = gw.client(Proto::H2);
    c.send(
        c.request("GET", target)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn path_spellings_cannot_reach_a_protected_route_through_the_public_one() {
    let (gw, up) = setup("", "").await;
    // The plain spelling is protected.
    assert_eq!(h1(&gw, "/admin/users", "").await.0, 401);
    // Decoded, the spelling is the protected route: 401 like the plain one.
    for t in [
        "/%61dmin/users",
        "/%61%64%6D%69%6E/users",
        "/adm%69n",
        // Escaped sub-delimiters: servers decode them before routing.
        "/v1/jobs%3Acancel",
        "/v1/jobs%3acancel/1",
        // A prefix with a trailing slash guards the bare path too.
        "/reports",
    ] {
        let (status, _) = h1(&gw, t, "").await;
        assert_eq!(status, 401, "{t}");
        assert_eq!(h2(&gw, t).await.status, 401, "h2 {t}");
    }
    // Spellings servers disagree about: refused outright, naming why.
    for (t, why) in [
        ("/admin;x=1/users", ";-parameters"),
        ("/admin;/users", ";-parameters"),
        ("//admin/users", "empty segment"),
        ("/x//admin", "empty segment"),
        ("/admin%2fusers", "encoded slash"),
        ("/admin%2Fusers", "encoded slash"),
        ("/x%5cadmin", "encoded slash"),
        ("/x\\admin", "encoded slash"),
        ("/admin%00/users", "NUL"),
        ("/public/%2e%2e/admin", "dot-segments"),
        ("/public/.%2E/admin", "dot-segments"),
        ("/public/../admin", "dot-segments"),
        ("/admin%zz", "malformed percent-encoding"),
        ("/admin%", "malformed percent-encoding"),
    ] {
        let (status, body) = h1(&gw, t, "").await;
        assert_eq!(status, 400, "{t}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "invalid_request", "{t}");
        let d = v["error_description"].as_str().unwrap();
        assert!(d.contains(why), "{t}: {d}");
        let r = h2(&gw, t).await;
        assert_eq!(r.status, 400, "h2 {t}: {:?}", r.body);
    }
    assert_eq!(up.count(), 0, "the upstream received a request");
    let refused = gw
        .metric("valet_client_errors_total{reason=\"bad_path\"}")
        .await;
    assert!(refused >= 28.0, "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_receives_the_canonical_spelling() {
    let (gw, up) = setup("", "").await;
    let (status, _) = h1(&gw, "/pub%6cic/caf%c3%a9/%7e%41?q=%41&r=%2f", "").await;
    assert_eq!(status, 200);
    assert_eq!(up.last().uri, "/public/caf%C3%A9/~A?q=%41&r=%2f");
    // Raw non-ASCII bytes leave escaped.
    let c = gw.client(Proto::H1);
    let text = raw_exchange(
        &c,
        "GET /caf\u{e9} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(up.last().uri, "/caf%C3%A9");
    // With the right token, the decoded spelling reaches /admin as /admin.
    let token = gw.token("root", "admin");
    let r = gw
        .client(Proto::H2)
        .get("/%61dmin/users", Some(&token))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/admin/users");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_case_insensitive_route_catches_every_case() {
    let (gw, up) = setup("", ", case_insensitive: true").await;
    for t in ["/ADMIN/users", "/Admin", "/aDmIn/x", "/%41DMIN/x"] {
        assert_eq!(h1(&gw, t, "").await.0, 401, "{t}");
        assert_eq!(h2(&gw, t).await.status, 401, "h2 {t}");
    }
    assert_eq!(up.count(), 0);
    // Not a prefix of a longer segment.
    assert_eq!(h1(&gw, "/ADMINS", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_case_insensitivity_another_case_is_another_path() {
    // The documented default: an upstream that ignores case needs the route
    // to say so. The forwarded path keeps its case.
    let (gw, up) = setup("", "").await;
    assert_eq!(h1(&gw, "/ADMIN/users", "").await.0, 200);
    assert_eq!(up.last().uri, "/ADMIN/users");
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_settings_relax_each_rule_without_opening_a_bypass() {
    let (gw, up) = setup(
        "paths: { encoded_slashes: pass, empty_segments: merge, path_parameters: allow }",
        "",
    )
    .await;
    // `;` parameters never change the route: admin;x=1 routes as admin.
    assert_eq!(h1(&gw, "/admin;x=1/users", "").await.0, 401);
    assert_eq!(h1(&gw, "/adm%69n;jsessionid=1", "").await.0, 401);
    // Merged slashes route (and are forwarded) merged.
    assert_eq!(h1(&gw, "//admin//users", "").await.0, 401);
    assert_eq!(up.count(), 0);
    let token = gw.token("root", "admin");
    let auth = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(h1(&gw, "/admin;x=1/users", &auth).await.0, 200);
    assert_eq!(up.last().uri, "/admin;x=1/users");
    assert_eq!(h1(&gw, "//admin//users", &auth).await.0, 200);
    assert_eq!(up.last().uri, "/admin/users");
    // An encoded slash passes untouched (uppercased)...
    assert_eq!(h1(&gw, "/files/a%2fb", "").await.0, 200);
    assert_eq!(up.last().uri, "/files/a%2Fb");
    // ...but routes as the separator a decoding server would take it for,
    // and dot-segments behind it are refused.
    assert_eq!(h1(&gw, "/admin%2fusers", "").await.0, 401);
    assert_eq!(h1(&gw, "/x%2F..%2Fadmin", "").await.0, 400);
    assert_eq!(h1(&gw, "/x%5C..%5Cadmin", "").await.0, 400);
    // A segment of parameters only is an empty segment (Tomcat reads
    // `/;/admin` as `/admin`).
    assert_eq!(h1(&gw, "/;/admin/users", "").await.0, 400);
    assert_eq!(h1(&gw, "/;x=1/admin", "").await.0, 400);
    // NUL and dot-segments have no setting.
    assert_eq!(h1(&gw, "/a%00", "").await.0, 400);
    assert_eq!(h1(&gw, "/x/..;a/admin", "").await.0, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn valets_own_endpoints_match_the_canonical_path_only() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &routes(up.addr, ""),
        "authorization_server:\n  clients: []\n",
    )
    .await;
    let r = gw
        .client(Proto::H1)
        .get("/.well-known/%6Awks.json", None)
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["keys"].is_array());
    // Not forwarded to the public route under another spelling either.
    assert_eq!(h1(&gw, "//.well-known/jwks.json", "").await.0, 400);
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_host_is_refused_without_a_panic() {
    let (gw, up) = setup("", "").await;
    let c = gw.client(Proto::H1);
    for host in ["[", "[::1", "a@b", "a:99999", "a:x", "[::1]x", "a b"] {
        let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let text = raw_exchange(&c, req.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{host}: {text}");
    }
    // Two Hosts, no Host on HTTP/1.1: 400 (RFC 9112 §3.2).
    let text = raw_exchange(
        &c,
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let text = raw_exchange(&c, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("no Host header"), "{text}");
    // Absolute-form that disagrees with Host.
    let text = raw_exchange(
        &c,
        b"GET https://evil.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // HTTP/1.0 may leave Host out.
    let text = raw_exchange(&c, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"),
        "{text}"
    );
    assert_eq!(up.count(), 1);
    // Every connection was closed and counted down; nothing panicked.
    assert!(
        eventually(PICKUP, || async {
            gw.metric("valet_open_connections").await == 0.0
        })
        .await,
        "the open-connections gauge stayed raised"
    );
    assert_eq!(gw.metric("valet_panics_total").await, 0.0);
    assert!(
        gw.metric("valet_client_errors_total{reason=\"bad_host\"}")
            .await
            >= 10.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_spellings_cannot_step_around_a_host_route() {
    let (gw, up) = setup("", "").await;
    let c = gw.client(Proto::H1);
    for host in [
        "api.example.com",
        "API.Example.COM",
        "api.example.com.",
        "api.example.com.:8443",
        "api.example.com:443",
    ] {
        let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let text = raw_exchange(&c, req.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 401"), "{host}: {text}");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_identity_and_origin_headers_never_reach_the_upstream() {
    let (gw, up) = setup("", "").await;
    let forged = "X_Valet_Subject: admin\r\nx-valet_client_id: evil\r\nX-Valet-Scopes: admin\r\n\
        X_Forwarded_For: 10.0.0.1\r\nX-Real-IP: 10.0.0.1\r\nTrue-Client-IP: 10.0.0.1\r\n\
        X-Client-IP: 10.0.0.1\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n\
        X-Forwarded-Prefix: /admin\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Server: evil\r\n\
        X-Debug-User: root\r\nX_Debug_User: root\r\nX_Other: 1\r\nX-Kept: 1\r\n";
    let (status, _) = h1(&gw, "/public", forged).await;
    assert_eq!(status, 200);
    let h = up.last().headers;
    let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "host",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-kept",
            "x-request-id"
        ],
        "{h:?}"
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_headers_from_a_trusted_proxy_pass_identity_spellings_never() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &routes(up.addr, ""),
        "forwarding:\n  trusted_proxies: [127.0.0.1]\n",
    )
    .await;
    let (status, _) = h1(
        &gw,
        "/public",
        "X-Real-IP: 10.0.0.1\r\nX-Forwarded-Prefix: /p\r\nX_Valet_Subject: admin\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let h = up.last().headers;
    assert_eq!(h["x-real-ip"], "10.0.0.1");
    assert_eq!(h["x-forwarded-prefix"], "/p");
    assert!(h.get("x_valet_subject").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn underscore_headers_can_be_allowed_or_rejected_but_never_as_identity() {
    let (gw, up) = setup("headers_with_underscores: allow", "").await;
    let (status, _) = h1(&gw, "/public", "X_Valet_Subject: admin\r\nX_Trace: 1\r\n").await;
    assert_eq!(status, 200);
    let h = up.last().headers;
    assert!(h.get("x_valet_subject").is_none());
    assert_eq!(h["x_trace"], "1");

    let (gw, up) = setup("headers_with_underscores: reject", "").await;
    let (status, body) = h1(&gw, "/public", "X_Trace: 1\r\n").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("underscores"), "{body}");
    assert_eq!(up.count(), 0);
}
