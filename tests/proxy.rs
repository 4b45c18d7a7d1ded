//! The proxy path end to end: real gateway, real TLS, real upstream.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

async fn setup() -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    (gw, up)
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_token_is_forwarded_with_identity_and_without_credentials_or_forgeries() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H1);
    let token = gw.token("alice", "read write");
    let req = c
        .request("POST", "/api/items?q=1")
        .header("authorization", format!("Bearer {token}"))
        .header("x-valet-subject", "mallory")
        .header("x-valet-client-id", "forged")
        .header("x-valet-scopes", "admin")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("forwarded", "for=6.6.6.6")
        .header("x-request-id", "trace-123")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-request-id"), "trace-123");
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/items?q=1", "prefix stripped, query kept");
    assert_eq!(seen.body_len, 5);
    let h = &seen.headers;
    assert!(
        h.get("authorization").is_none(),
        "Authorization must not be forwarded"
    );
    assert_eq!(h.get_all("x-valet-subject").iter().count(), 1);
    assert_eq!(h["x-valet-subject"], "alice");
    assert_eq!(h["x-valet-client-id"], "test-client");
    assert_eq!(h["x-valet-scopes"], "read write");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "untrusted chain replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(
        h["x-forwarded-host"],
        format!("localhost:{}", gw.addr.port()).as_str()
    );
    assert!(h.get("forwarded").is_none());
    assert_eq!(h["x-request-id"], "trace-123");
    assert_eq!(h["host"], up.addr.to_string().as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H1);
    let req = c
        .request("GET", "/api/x")
        .header("authorization", format!("Bearer {}", gw.token("a", "read")))
        .header("connection", "keep-alive, x-caller-secret")
        .header("x-caller-secret", "s")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("upgrade", "websocket")
        .header("x-kept", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    for name in [
        "x-caller-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(h.get(name).is_none(), "{name} reached the upstream");
    }
    assert_eq!(h["x-kept"], "1");
    // The upstream's own hop-by-hop headers do not reach the caller.
    assert!(r.headers.get("x-up-secret").is_none());
    assert!(r.headers.get("keep-alive").is_none());
    assert_eq!(r.header("x-up-visible"), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_is_generated_when_absent_or_unsafe() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H1);
    let r = c.get("/public/x", None).await;
    let id = r.header("x-request-id").to_string();
    assert!(id.len() >= 16);
    assert_eq!(up.last().headers["x-request-id"], id.as_str());
    let req = c
        .request("GET", "/public/x")
        .header("x-request-id", "bad id with spaces")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_ne!(r.header("x-request-id"), "bad id with spaces");
}

#[tokio::test(flavor = "multi_thread")]
async fn public_route_still_strips_forged_identity_and_keeps_base_path() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H1);
    let req = c
        .request("GET", "/public/page")
        .header("x-valet-subject", "admin")
        .header("authorization", "Bearer whatever")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/base/public/page");
    assert!(seen.headers.get("x-valet-subject").is_none());
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn route_that_asks_for_it_forwards_authorization() {
    let (gw, up) = setup().await;
    let t = gw.token("a", "");
    let r = gw.client(Proto::H1).get("/fwd/x", Some(&t)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().headers["authorization"],
        format!("Bearer {t}").as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_token_in_query_is_refused_and_not_forwarded() {
    let (gw, up) = setup().await;
    let t = gw.token("a", "read");
    let r = gw
        .client(Proto::H1)
        .get(&format!("/api/x?access_token={t}"), None)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    assert!(!String::from_utf8_lossy(&r.body).contains(&t));
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_hosts_are_refused() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H1);
    let port = gw.addr.port();
    let two_hosts = format!("GET /public/x HTTP/1.1\r\nHost: localhost:{port}\r\nHost: evil.example\r\nConnection: close\r\n\r\n");
    let out = client::raw_exchange(&c, two_hosts.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("more than one Host header"), "{out}");
    let absolute = format!("GET https://localhost:{port}/public/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n");
    let out = client::raw_exchange(&c, absolute.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("disagrees"), "{out}");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_and_unknown_paths_are_refused() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H1);
    let out = client::raw_exchange(
        &c,
        b"GET /public/../api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let r = c.get("/public/%2e%2e/api/x", None).await;
    assert_eq!(r.status, 400);
    let r = c.get("/nowhere", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_answer_431_and_bodies_413() {
    let up = Upstream::start().await;
    let routes = format!(
        "{}  - name: small\n    match: {{ path_prefix: /small }}\n    upstream: \"http://{}\"\n    auth: {{ required: false }}\n    max_body_size: 1KiB\n",
        default_routes(up.addr),
        up.addr
    );
    let gw = Gateway::start(&routes, "").await;
    for proto in [Proto::H1, Proto::H2] {
        let c = gw.client(proto);
        let req = c
            .request("GET", "/public/x")
            .header("x-big", "a".repeat(20_000))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = c.try_send(req).await;
        match (proto, r) {
            (_, Ok(r)) => assert_eq!(r.status, 431, "{proto:?}"),
            // h2 may refuse an oversized header block at the protocol level.
            (Proto::H2, Err(_)) => {}
            (_, Err(e)) => panic!("{e}"),
        }
        // Declared length over the limit: refused before the upstream is contacted.
        let req = c
            .request("POST", "/small/x")
            .body(Full::new(Bytes::from(vec![b'x'; 2048])))
            .unwrap();
        let r = c.send(req).await;
        assert_eq!(r.status, 413, "{proto:?}");
        assert_eq!(r.json()["error"], "payload_too_large");
    }
    // Streamed (chunked) body over the limit: cut off mid-stream.
    let c = gw.client(Proto::H1);
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..4)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'y'; 512]))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let req = c.request("POST", "/small/x").body(body).unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 413);
    // The upstream may have seen the start of the stream, never all of it.
    let seen = up.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.body_len <= 1024), "{seen:?}");
    // Each is the client's fault, counted as such, never as the upstream's.
    assert_eq!(
        gw.metric("valet_client_errors_total{reason=\"body_too_large\"}")
            .await,
        3.0
    );
    assert!(!gw.metrics().await.contains("valet_upstream_errors_total{"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_502_and_slow_is_504_with_json() {
    let up = Upstream::start().await;
    let dead = upstream::dead_addr();
    let routes = format!(
        "  - name: dead\n    match: {{ path_prefix: /dead }}\n    upstream: \"http://{dead}\"\n    auth: {{ required: false }}\n  - name: slow\n    match: {{ path_prefix: /s }}\n    upstream: \"http://{}\"\n    auth: {{ required: false }}\n    response_timeout: 500ms\n",
        up.addr
    );
    let gw = Gateway::start(&routes, "").await;
    let c = gw.client(Proto::H1);
    let r = c.get("/dead/x", None).await;
    assert_eq!(r.status, 502);
    let j = r.json();
    assert_eq!(j["error"], "bad_gateway");
    assert_eq!(j["request_id"], r.header("x-request-id"));
    let started = std::time::Instant::now();
    let r = c.get("/s/slow", None).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "must not wait for the upstream"
    );
    let r = c.get("/s/reset", None).await;
    assert_eq!(r.status, 502);
    assert!(
        gw.metric("valet_upstream_errors_total{kind=\"timeout\",route=\"slow\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_over_tls_works() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H2);
    let r = c.get("/api/h2", Some(&gw.token("alice", "read"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/h2");
    assert_eq!(up.last().headers["x-valet-subject"], "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_is_refused_and_counted_and_tls12_is_accepted() {
    let (gw, _up) = setup().await;
    let before = gw.metric("valet_tls_handshake_failures_total").await;
    // Plain HTTP on the TLS port.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    assert!(
        eventually(PICKUP, || async {
            gw.metric("valet_tls_handshake_failures_total").await > before
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls12_only_client_is_served() {
    let (gw, _up) = setup().await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(gw.ca.ca_der.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let c = Client::new(gw.addr, std::sync::Arc::new(cfg), Proto::H1);
    assert_eq!(c.get("/public/x", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_pooled_and_reused() {
    let (gw, up) = setup().await;
    let t = gw.token("alice", "read");
    for proto in [Proto::H1, Proto::H2, Proto::H1, Proto::H2, Proto::H1] {
        // A fresh client connection each time; the upstream side is reused.
        assert_eq!(gw.client(proto).get("/api/x", Some(&t)).await.status, 200);
    }
    assert_eq!(up.count(), 5);
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// valet's own OAuth 1.0 state cookies (`__Host-valet_oauth1_*`, which the
/// `__Host-` prefix makes `Path=/`) are not forwarded upstream; the
/// application's cookies are, as sent.
#[tokio::test(flavor = "multi_thread")]
async fn valets_own_cookies_are_not_forwarded() {
    let (gw, up) = setup().await;
    let c = gw.client(Proto::H1);
    let token = gw.token("alice", "read");
    for (sent, forwarded) in [
        (
            vec!["a=1; __Host-valet_oauth1_legacy=state-1; b=2"],
            Some(vec!["a=1; b=2"]),
        ),
        (vec!["__Host-valet_oauth1_x=s"], None),
        (
            vec!["__Host-valet_oauth1_x=s;session=abc", "theme=dark"],
            Some(vec!["session=abc", "theme=dark"]),
        ),
        (
            vec!["valet_oauth1_x=kept; __host-valet_oauth1_y=kept-too"],
            Some(vec!["valet_oauth1_x=kept; __host-valet_oauth1_y=kept-too"]),
        ),
    ] {
        let mut b = c
            .request("GET", "/api/items")
            .header("authorization", format!("Bearer {token}"));
        for v in &sent {
            b = b.header("cookie", *v);
        }
        let r = c.send(b.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(r.status, 200);
        let seen = up.last();
        let got: Vec<String> = seen
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        match forwarded {
            None => assert!(got.is_empty(), "{sent:?}: {got:?}"),
            Some(want) => assert_eq!(got, want, "{sent:?}"),
        }
    }
}
