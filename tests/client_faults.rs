//! A client's own faults are answered as the client's (400/408/413 or a
//! close, counted under `valet_client_errors_total`), never blamed on the
//! upstream as a 502; and connections that hold a slot without doing work
//! (silent after the handshake, idle HTTP/2, trickled bodies, clients that
//! stop reading) are cut, while a well-behaved client is still served.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;
use support::client::raw_exchange;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the server closes; `None` if it is still open after `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes.get(..12).unwrap_or(b"")).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overflowing_chunk_size_is_the_clients_fault_not_a_bad_gateway() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let c = gw.client(Proto::H1);
    let text = raw_exchange(
        &c,
        b"POST /public/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\nFFFFFFFFFFFFFFFFFFFF\r\n",
    )
    .await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    assert!(!text.contains("bad_gateway"), "{text}");
    assert!(
        eventually(PICKUP, || async {
            gw.metrics()
                .await
                .contains("valet_client_errors_total{reason=\"body_malformed\"} 1")
        })
        .await,
        "not counted as a client error"
    );
    assert!(
        !gw.metrics().await.contains("valet_upstream_errors_total{"),
        "blamed on the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_shorter_than_its_content_length_is_the_clients_fault() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let c = gw.client(Proto::H1);
    let mut s = c.tls_stream().await;
    s.write_all(
        b"POST /public/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    // Half-close: the body will never be complete.
    s.shutdown().await.unwrap();
    let out = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("closed");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    assert!(
        eventually(PICKUP, || async {
            gw.metrics()
                .await
                .contains("valet_client_errors_total{reason=\"body_malformed\"} 1")
        })
        .await
    );
    assert!(!gw.metrics().await.contains("valet_upstream_errors_total{"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_reset_mid_stream_over_http2_is_the_clients_fault() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let c = gw.client(Proto::H2);
    let (mut send, _conn) = h2_connect(&c, None).await;
    let (mut tx, body) = http_body_channel();
    let req = c
        .request("POST", "/public/x")
        .header("content-length", "1000")
        .body(body)
        .unwrap();
    let resp = tokio::spawn(async move { send.send_request(req).await });
    tx.send_data(Bytes::from_static(b"part")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Dropping the sender mid-body resets the stream.
    tx.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), resp).await;
    assert!(
        eventually(PICKUP, || async {
            // The stream's reset ends the request before or after its body
            // fails: either way it is the client's.
            let m = gw.metrics().await;
            m.contains("valet_client_errors_total{reason=\"body_malformed\"} 1")
                || m.contains("valet_client_errors_total{reason=\"client_closed\"} 1")
        })
        .await,
        "{}",
        gw.metrics().await
    );
    assert!(!gw.metrics().await.contains("valet_upstream_errors_total{"));
}

/// A streaming request body the test feeds by hand.
fn http_body_channel() -> (BodySender, http_body_util::StreamBody<BodyStream>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (
        BodySender(Some(tx)),
        http_body_util::StreamBody::new(BodyStream(rx)),
    )
}

struct BodySender(
    Option<tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, std::io::Error>>>,
);

impl BodySender {
    async fn send_data(&mut self, b: Bytes) -> Result<(), ()> {
        self.0
            .as_ref()
            .unwrap()
            .send(Ok(http_body::Frame::data(b)))
            .await
            .map_err(|_| ())
    }
    fn abort(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.try_send(Err(std::io::Error::other("aborted")));
        }
    }
}

struct BodyStream(tokio::sync::mpsc::Receiver<Result<http_body::Frame<Bytes>, std::io::Error>>);

impl futures_util::Stream for BodyStream {
    type Item = Result<http_body::Frame<Bytes>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

const FAST_LIMITS: &str = "limits:\n  idle_timeout: 1s\n  send_timeout: 1s\n  min_request_body_rate: 1KiB\n  request_body_grace: 1s\n  request_body_timeout: 2s\n  header_read_timeout: 2s\n";

#[tokio::test(flavor = "multi_thread")]
async fn silent_tls_connections_are_closed_after_the_idle_timeout() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), FAST_LIMITS).await;
    for proto in [Proto::H1, Proto::H2] {
        let mut s = gw.client(proto).tls_stream().await;
        // Not one byte after the handshake.
        let out = closed_within(&mut s, Duration::from_secs(6)).await;
        assert!(out.is_some(), "{proto:?}: still open after 6 s");
    }
    assert!(
        gw.metric("valet_connections_closed_total{reason=\"idle\"}")
            .await
            >= 1.0
    );
    assert!(
        eventually(PICKUP, || async {
            gw.metric("valet_open_connections").await == 0.0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http2_connection_is_closed_after_its_last_request() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), FAST_LIMITS).await;
    let c = gw.client(Proto::H2);
    let (mut send, conn) = h2_connect(&c, None).await;
    let r = send
        .send_request(
            c.request("GET", "/public/x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    // The client keeps the connection and sends nothing more: valet ends it
    // with GOAWAY, which completes the client's connection future.
    tokio::time::timeout(Duration::from_secs(6), conn)
        .await
        .expect("idle HTTP/2 connection still open after 6 s")
        .unwrap()
        .ok();
    assert!(
        gw.metric("valet_connections_closed_total{reason=\"idle\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_request_body_is_cut_off_with_408() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), FAST_LIMITS).await;
    let mut s = gw.client(Proto::H1).tls_stream().await;
    s.write_all(b"POST /public/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    // One byte every 200 ms: 5 B/s against a floor of 1 KiB/s.
    let writer = tokio::spawn(async move {
        for _ in 0..100 {
            if s.write_all(b"x").await.is_err() || s.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        s
    });
    let mut s = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .unwrap()
        .unwrap();
    let out = closed_within(&mut s, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert_eq!(
        status_of(&out),
        "HTTP/1.1 408",
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(
        gw.metric("valet_client_errors_total{reason=\"body_too_slow\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fast_start_does_not_buy_a_long_stall() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), FAST_LIMITS).await;
    let mut s = gw.client(Proto::H1).tls_stream().await;
    // 60 KiB at once earns a minute of credit at 1 KiB/s; the client then
    // stalls, and the longest single wait (2 s) ends it long before.
    let mut req =
        b"POST /public/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'x', 60 * 1024));
    s.write_all(&req).await.unwrap();
    let out = closed_within(&mut s, Duration::from_secs(20))
        .await
        .expect("a stalled body held its connection for 20 s");
    assert_eq!(
        status_of(&out),
        "HTTP/1.1 408",
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_disconnected() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), FAST_LIMITS).await;
    let mut s = gw.client(Proto::H1).tls_stream().await;
    s.write_all(b"GET /public/big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Read nothing while valet fills the socket buffers, then drain.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("connection still open");
    assert!(out.len() < 32 << 20, "the whole response was sent");
    assert_eq!(
        gw.metric("valet_connections_closed_total{reason=\"send_timeout\"}")
            .await,
        1.0
    );
}

/// An HTTP/2 connection (hyper's client), optionally with a fixed stream
/// window; the connection task is spawned.
async fn h2_connect<B>(
    c: &Client,
    window: Option<u32>,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = hyper_util::rt::TokioIo::new(c.tls_stream().await);
    let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    if let Some(w) = window {
        b.initial_stream_window_size(w).adaptive_window(false);
    }
    let (send, conn) = b.handshake(io).await.unwrap();
    (send, tokio::spawn(conn))
}

/// An HTTP/2 connection with a plain 64 KiB stream window (no adaptive
/// window) and a 32 MiB download on it that the caller leaves unread.
async fn h2_big_download_unread(
    c: &Client,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
    http::Response<hyper::body::Incoming>,
) {
    let (mut send, conn) = h2_connect(c, Some(65_535)).await;
    let r = send
        .send_request(
            c.request("GET", "/public/big")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (send, conn, r)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_withholds_flow_control_is_disconnected() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), FAST_LIMITS).await;
    let c = gw.client(Proto::H2);
    let (_send, conn, r) = h2_big_download_unread(&c).await;
    // Hold the response body unread: the window closes after 64 KiB.
    let _held = r;
    tokio::time::timeout(Duration::from_secs(8), conn)
        .await
        .expect("a stalled HTTP/2 stream kept its connection open")
        .unwrap()
        .ok();
    assert_eq!(
        gw.metric("valet_connections_closed_total{reason=\"send_timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_streams_do_not_keep_a_stalled_http2_stream_alive() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), FAST_LIMITS).await;
    let c = gw.client(Proto::H2);
    let (mut send, conn, stalled) = h2_big_download_unread(&c).await;
    // Small requests every 200 ms on the same connection, read in full,
    // while the big response stays unread.
    let mut busy = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !conn.is_finished() && tokio::time::Instant::now() < deadline {
        let req = c
            .request("GET", "/public/x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        match send.send_request(req).await {
            Ok(r) => {
                use http_body_util::BodyExt;
                let _ = r.into_body().collect().await;
                busy += 1;
            }
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
    assert!(busy >= 1, "no busy stream was served");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), conn)
            .await
            .is_ok(),
        "a stalled stream hid behind busy ones for 10 s"
    );
    assert_eq!(
        gw.metric("valet_connections_closed_total{reason=\"send_timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_client_is_served_while_a_flood_of_idle_and_slow_connections_is_in_progress() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &default_routes(up.addr),
        &format!("{FAST_LIMITS}  max_connections: 40\n"),
    )
    .await;
    let mut flood = Vec::new();
    for i in 0..30 {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
        let mut s = gw.client(proto).tls_stream().await;
        if i % 3 == 0 && proto == Proto::H1 {
            // Trickled bodies.
            s.write_all(
                b"POST /public/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 9999\r\n\r\nx",
            )
            .await
            .unwrap();
        }
        flood.push(s);
    }
    assert!(gw.metric("valet_open_connections").await >= 25.0);
    // The good client is served at once, while the flood holds its slots.
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        gw.client(Proto::H1).get("/public/ok", None),
    )
    .await
    .expect("a good client was not served during the flood");
    assert_eq!(r.status, 200);
    // And the flood is cut: every flooding connection is closed.
    for (i, s) in flood.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(10)).await.is_some(),
            "flood connection {i} still open"
        );
    }
    assert!(
        eventually(PICKUP, || async {
            gw.metric("valet_open_connections").await == 0.0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_at_the_limit_free_their_slots() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &default_routes(up.addr),
        &format!("{FAST_LIMITS}  max_connections: 3\n"),
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(gw.client(Proto::H1).tls_stream().await);
    }
    // Every slot is held by a silent client; the idle timeout frees them.
    let r = tokio::time::timeout(
        Duration::from_secs(8),
        gw.client(Proto::H1).get("/public/ok", None),
    )
    .await
    .expect("slots held by silent connections were never freed");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_source_cap_refuses_connections_beyond_it() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &default_routes(up.addr),
        "limits:\n  max_connections_per_source: 2\n",
    )
    .await;
    let a = gw.client(Proto::H1).tls_stream().await;
    let _b = gw.client(Proto::H1).tls_stream().await;
    // The third from the same address is closed before its handshake.
    let c = gw.client(Proto::H1);
    let handshake = || async {
        let tcp = tokio::net::TcpStream::connect(c.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(c.tls.clone())
            .connect(name, tcp)
            .await
    };
    assert!(handshake().await.is_err(), "a third connection was served");
    assert_eq!(
        gw.metric("valet_connections_closed_total{reason=\"per_source_limit\"}")
            .await,
        1.0
    );
    // A slot is free again once a connection closes.
    drop(a);
    assert!(
        eventually(PICKUP, || async { handshake().await.is_ok() }).await,
        "the slot of a closed connection was not released"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_bounded_even_with_default_limits() {
    // The defaults exist and are sane: a silent connection is not kept for
    // ever (60 s) and the request path answers normally.
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let l = &gw.running.as_ref().unwrap().app.snapshot().config.limits;
    assert_eq!(l.idle_timeout, Duration::from_secs(60));
    assert_eq!(l.send_timeout, Duration::from_secs(30));
    assert_eq!(l.min_request_body_rate, 1024);
    assert_eq!(l.http2_max_concurrent_streams, 100);
    assert_eq!(l.max_connections_per_source, None);
    let r = gw.client(Proto::H2).get("/public/x", None).await;
    assert_eq!(r.status, 200);
}
