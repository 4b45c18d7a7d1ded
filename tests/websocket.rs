//! WebSocket through valet (issue 12): a real WebSocket echo upstream, a
//! real WebSocket client over TLS. The upgrade is authenticated like any
//! request, refused on routes that do not allow it, and cut at the idle
//! limit.

mod support;

use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// An echo server; records the subject header of each handshake.
async fn echo_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                // tungstenite's callback type: its error is a whole response.
                #[allow(clippy::result_large_err)]
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp| {
                    let sub = req
                        .headers()
                        .get("x-valet-subject")
                        .map_or("", |v| v.to_str().unwrap())
                        .to_string();
                    seen.lock().unwrap().push(sub);
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn setup() -> (Gateway, Arc<Mutex<Vec<String>>>) {
    setup_with("").await
}

async fn setup_with(extra: &str) -> (Gateway, Arc<Mutex<Vec<String>>>) {
    let (echo, seen) = echo_upstream().await;
    let routes = format!(
        r#"  - name: ws
    match: {{ path_prefix: /ws }}
    upstream: "http://{echo}"
    websocket: {{ idle_timeout: 30s, max_duration: 1h }}
  - name: idle
    match: {{ path_prefix: /idle }}
    upstream: "http://{echo}"
    websocket: {{ idle_timeout: 1s, max_duration: 1h }}
  - name: short
    match: {{ path_prefix: /short }}
    upstream: "http://{echo}"
    websocket: {{ idle_timeout: 10s, max_duration: 1s }}
  - name: plain
    match: {{ path_prefix: /plain }}
    upstream: "http://{echo}"
"#
    );
    (Gateway::start(&routes, extra).await, seen)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn connect(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(gw.ca.client_config(&[b"http/1.1"]))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut req = format!("wss://localhost:{}{path}", gw.addr.port())
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::client_async(req, tls)
        .await
        .map(|(ws, _)| ws)
}

/// Sessions of route `ws` that ended so (0 before the first).
async fn ended(gw: &Gateway, end: &str) -> f64 {
    ended_on(gw, "ws", end).await
}

async fn ended_on(gw: &Gateway, route: &str, end: &str) -> f64 {
    let sample = format!("valet_websocket_sessions_total{{end=\"{end}\",route=\"{route}\"}} ");
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&sample).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

fn refused_with(e: tokio_tungstenite::tungstenite::Error) -> u16 {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("not an HTTP refusal: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_echoes_through_valet_with_a_valid_token() {
    let (gw, seen) = setup().await;
    let mut ws = connect(&gw, "/ws/echo", Some(&gw.token("alice", "read")))
        .await
        .unwrap();
    for m in ["hello", "again"] {
        ws.send(Message::text(m)).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), m);
    }
    // The upstream saw valet's identity headers on the handshake.
    assert_eq!(seen.lock().unwrap().as_slice(), ["alice"]);
    assert_eq!(gw.metric("valet_websockets_open").await, 1.0);
    ws.close(None).await.unwrap();
    drop(ws);
    assert!(eventually(PICKUP, || async { ended(&gw, "closed").await == 1.0 }).await);
    assert_eq!(gw.metric("valet_websockets_open").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_without_a_valid_token_or_on_a_plain_route_is_refused() {
    let (gw, seen) = setup().await;
    assert_eq!(
        refused_with(connect(&gw, "/ws/echo", None).await.unwrap_err()),
        401
    );
    assert_eq!(
        refused_with(connect(&gw, "/ws/echo", Some("forged")).await.unwrap_err()),
        401
    );
    let token = gw.token("alice", "read");
    assert_eq!(
        refused_with(connect(&gw, "/plain/echo", Some(&token)).await.unwrap_err()),
        403
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_websocket_is_cut_at_the_limit() {
    let (gw, _) = setup().await;
    let mut ws = connect(&gw, "/idle/echo", Some(&gw.token("alice", "read")))
        .await
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    // Nothing either way for longer than idle_timeout (1 s): valet closes.
    let cut = tokio::time::timeout(PICKUP, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the idle session was not closed");
    assert!(
        eventually(PICKUP, || async {
            ended_on(&gw, "idle", "idle").await == 1.0
        })
        .await
    );
}

/// A busy session still ends at max_duration: what bounds a socket whose
/// token was revoked after it opened.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_websocket_ends_at_its_maximum_duration() {
    let (gw, _) = setup().await;
    let mut ws = connect(&gw, "/short/echo", Some(&gw.token("alice", "read")))
        .await
        .unwrap();
    let cut = tokio::time::timeout(PICKUP, async {
        loop {
            if ws.send(Message::text("tick")).await.is_err() {
                return;
            }
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(cut.is_ok(), "the session outlived max_duration");
    assert!(
        eventually(PICKUP, || async {
            ended_on(&gw, "short", "max_duration").await == 1.0
        })
        .await
    );
}

/// An upgrade carrying a body, or not a GET, is refused before anything
/// reaches the upstream: bytes an upstream never reads would be the next
/// request on its connection.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_with_a_body_is_refused() {
    let (gw, seen) = setup().await;
    let token = gw.token("alice", "read");
    for method in ["GET", "POST"] {
        let req = http::Request::builder()
            .method(method)
            .uri("/ws/echo")
            .header("host", format!("localhost:{}", gw.addr.port()))
            .header("authorization", format!("Bearer {token}"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
            )))
            .unwrap();
        let r = gw.client(Proto::H1).send(req).await;
        assert_eq!(r.status, 400, "{method}");
        assert!(
            r.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("GET without a body"),
            "{method}"
        );
    }
    assert!(seen.lock().unwrap().is_empty());
}

/// A WebSocket route speaks HTTP/1.1 upstream: h2c is refused with it.
#[test]
fn a_websocket_route_cannot_be_h2c() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    std::fs::write(dir.path().join("signing.pem"), TestKey::new().pem).unwrap();
    let path = dir.path().join("valet.yaml");
    let routes = "  - name: a\n    match: { path_prefix: /a }\n    upstream: \"http://127.0.0.1:9\"\n    upstream_protocol: h2c\n    websocket: {}\n";
    std::fs::write(&path, config_text(&ca, &dir, routes, "")).unwrap();
    let e = valet::config::load(&path).unwrap_err().to_string();
    assert!(e.contains("HTTP/2 has no upgrade"), "{e}");
    let zero = "  - name: a\n    match: { path_prefix: /a }\n    upstream: \"http://127.0.0.1:9\"\n    websocket: { max_duration: 0s }\n";
    std::fs::write(&path, config_text(&ca, &dir, zero, "")).unwrap();
    let e = valet::config::load(&path).unwrap_err().to_string();
    assert!(e.contains("must be positive"), "{e}");
}

/// One identity cannot take every session: at its share it gets 429,
/// others still connect, and a closed session frees its place.
#[tokio::test(flavor = "multi_thread")]
async fn one_subject_holds_at_most_its_share_of_sessions() {
    let (gw, _) = setup_with("limits:\n  max_websockets_per_subject: 2\n").await;
    let alice = gw.token("alice", "read");
    let mut first = connect(&gw, "/ws/echo", Some(&alice)).await.unwrap();
    let _second = connect(&gw, "/ws/echo", Some(&alice)).await.unwrap();
    assert_eq!(
        refused_with(connect(&gw, "/ws/echo", Some(&alice)).await.unwrap_err()),
        429
    );
    let _bob = connect(&gw, "/ws/echo", Some(&gw.token("bob", "read")))
        .await
        .unwrap();
    first.close(None).await.unwrap();
    drop(first);
    assert!(
        eventually(PICKUP, || async {
            connect(&gw, "/ws/echo", Some(&alice)).await.is_ok()
        })
        .await,
        "a closed session did not free its place"
    );
}

/// How a fake upstream answers an upgrade with 101.
#[derive(Clone, Copy)]
enum Answer {
    /// As a WebSocket server: the accept value of the client's key.
    Proper,
    /// No `Sec-WebSocket-Accept` at all.
    NoAccept,
    /// The accept value of another key.
    WrongAccept,
    /// Proper, but choosing a subprotocol the client never offered.
    UnofferedProtocol,
}

/// What a fake upstream saw: connections, and the bytes each received
/// after its request's headers (until it closed, or 2 s passed).
#[derive(Default)]
struct FakeSeen {
    connections: usize,
    after_headers: Vec<Vec<u8>>,
    closed_by_valet: Vec<bool>,
}

/// A TCP upstream that answers every request with a 101 shaped by `answer`,
/// then records what arrives on that connection.
async fn fake_101_upstream(answer: Answer) -> (std::net::SocketAddr, Arc<Mutex<FakeSeen>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(FakeSeen::default()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                seen.lock().unwrap().connections += 1;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let key = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("sec-websocket-key:")
                            .then(|| l[18..].trim().to_string())
                    })
                    .unwrap_or_default();
                use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
                let accept = match answer {
                    Answer::NoAccept => String::new(),
                    Answer::WrongAccept => format!(
                        "Sec-WebSocket-Accept: {}\r\n",
                        derive_accept_key(b"AAAAAAAAAAAAAAAAAAAAAA==")
                    ),
                    Answer::Proper | Answer::UnofferedProtocol => format!(
                        "Sec-WebSocket-Accept: {}\r\n",
                        derive_accept_key(key.as_bytes())
                    ),
                };
                let protocol = match answer {
                    Answer::UnofferedProtocol => "Sec-WebSocket-Protocol: admin\r\n",
                    _ => "",
                };
                let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}{protocol}\r\n");
                if tcp.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                let mut after = buf[end..].to_vec();
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
                let closed = loop {
                    match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break true,
                        Ok(Ok(n)) => after.extend_from_slice(&chunk[..n]),
                        Err(_) => break false,
                    }
                };
                let mut s = seen.lock().unwrap();
                s.after_headers.push(after);
                s.closed_by_valet.push(closed);
            });
        }
    });
    (addr, seen)
}

/// Sends an upgrade request with a raw `GET /admin` pipelined behind it in
/// the same write; returns what valet answered on that connection, read
/// until valet closes it (or 3 s pass).
async fn upgrade_with_smuggled_request(gw: &Gateway, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(gw.ca.client_config(&[b"http/1.1"]))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let req = format!(
        "GET /ws/x HTTP/1.1\r\nHost: localhost:{}\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat\r\n\r\nGET /admin HTTP/1.1\r\nHost: internal\r\n\r\n",
        gw.addr.port()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(3), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// RFC 6455 §4.1: the upstream's 101 is checked as a WebSocket client
/// checks it. An endpoint that answers 101 without the accept value of the
/// client's key (the "WebSocket smuggling" shape) gets no tunnel: the
/// client gets 502 with `Connection: close`, the upstream connection is
/// closed, and nothing the client sent after its upgrade (a raw `GET
/// /admin` included) reaches it.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_is_not_a_websocket_server_gets_no_tunnel() {
    for (answer, why) in [
        (Answer::NoAccept, "Sec-WebSocket-Accept"),
        (Answer::WrongAccept, "Sec-WebSocket-Accept"),
        (Answer::UnofferedProtocol, "subprotocol"),
    ] {
        let (addr, seen) = fake_101_upstream(answer).await;
        let routes = format!(
            "  - name: ws\n    match: {{ path_prefix: /ws }}\n    upstream: \"http://{addr}\"\n    websocket: {{ idle_timeout: 5s }}\n"
        );
        let gw = Gateway::start(&routes, "").await;
        let out = upgrade_with_smuggled_request(&gw, &gw.token("alice", "read")).await;
        let head = out.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 502"), "{why}: {out}");
        assert!(head.contains("connection: close"), "{why}: {out}");
        assert!(out.contains(why), "{why}: {out}");
        // One answer only: the pipelined request was never read as HTTP.
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
        assert!(
            eventually(PICKUP, || async {
                !seen.lock().unwrap().after_headers.is_empty()
            })
            .await
        );
        let (after, closed) = {
            let s = seen.lock().unwrap();
            (s.after_headers.clone(), s.closed_by_valet.clone())
        };
        assert_eq!(
            after,
            [Vec::<u8>::new()],
            "{why}: bytes reached the upstream"
        );
        assert_eq!(closed, [true], "{why}: the upstream connection stayed open");
        assert_eq!(
            gw.metric("valet_upstream_errors_total{kind=\"websocket_handshake\",route=\"ws\"}")
                .await,
            1.0
        );
        assert_eq!(gw.metric("valet_websockets_open").await, 0.0);
    }
    // The control: a real server's answer opens the tunnel, and then the
    // client's bytes do flow (so the test above can see them if they did).
    let (addr, seen) = fake_101_upstream(Answer::Proper).await;
    let routes = format!(
        "  - name: ws\n    match: {{ path_prefix: /ws }}\n    upstream: \"http://{addr}\"\n    websocket: {{ idle_timeout: 5s }}\n"
    );
    let gw = Gateway::start(&routes, "").await;
    let out = upgrade_with_smuggled_request(&gw, &gw.token("alice", "read")).await;
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
    assert!(
        eventually(PICKUP, || async {
            !seen.lock().unwrap().after_headers.is_empty()
        })
        .await
    );
    assert!(String::from_utf8_lossy(&seen.lock().unwrap().after_headers[0]).contains("GET /admin"));
}

/// A handshake valet cannot check is refused before it reaches an upstream.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_without_a_proper_key_is_refused() {
    let (gw, seen) = setup().await;
    let token = gw.token("alice", "read");
    for key in [None, Some("c2hvcnQ="), Some("not base64 at all")] {
        let mut b = http::Request::get("/ws/echo")
            .header("host", format!("localhost:{}", gw.addr.port()))
            .header("authorization", format!("Bearer {token}"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13");
        if let Some(k) = key {
            b = b.header("sec-websocket-key", k);
        }
        let req = b
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = gw.client(Proto::H1).send(req).await;
        assert_eq!(r.status, 400, "{key:?}");
        assert!(
            r.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("Sec-WebSocket-Key"),
            "{key:?}"
        );
    }
    assert!(seen.lock().unwrap().is_empty());
}

/// A stream whose writes stop after `allowed` bytes until released: a slow
/// network, so that a frame can be caught half-sent.
struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    written: std::sync::atomic::AtomicUsize,
    allowed: std::sync::atomic::AtomicUsize,
    waker: Mutex<Option<std::task::Waker>>,
}

impl Gate {
    fn open() -> Arc<Gate> {
        let g = Gate::default();
        g.allowed
            .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
        Arc::new(g)
    }
    /// From now on, `n` more bytes pass, then writes wait.
    fn allow_more(&self, n: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        self.allowed.store(self.written.load(SeqCst) + n, SeqCst);
    }
    fn release(&self) {
        self.allowed
            .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
    fn blocked(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.written.load(SeqCst) >= self.allowed.load(SeqCst)
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Gated<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::sync::atomic::Ordering::SeqCst;
        let room = self
            .gate
            .allowed
            .load(SeqCst)
            .saturating_sub(self.gate.written.load(SeqCst));
        if room == 0 {
            *self.gate.waker.lock().unwrap() = Some(cx.waker().clone());
            // Released between the check and the registration?
            if !self.gate.blocked() {
                cx.waker().wake_by_ref();
            }
            return std::task::Poll::Pending;
        }
        let n = data.len().min(room);
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, &data[..n]);
        if let std::task::Poll::Ready(Ok(k)) = &r {
            self.gate.written.fetch_add(*k, SeqCst);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What one side of the session received: whole messages, then the close
/// frame's code (or the error that ended it).
#[derive(Default, Debug)]
struct Received {
    messages: Vec<Vec<u8>>,
    close: Option<u16>,
    error: Option<String>,
}

/// Reads `ws` to its end, recording what arrived.
async fn record<S>(mut rx: S, into: Arc<Mutex<Received>>)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(m) = rx.next().await {
        match m {
            Ok(Message::Binary(b)) => into.lock().unwrap().messages.push(b.to_vec()),
            Ok(Message::Close(f)) => {
                into.lock().unwrap().close = Some(f.map_or(0, |f| u16::from(f.code)));
            }
            Ok(_) => {}
            Err(e) => {
                into.lock().unwrap().error = Some(e.to_string());
                return;
            }
        }
    }
}

/// SIGTERM with a session open and a large message half-sent each way:
/// after the drain grace, valet lets each frame finish, then sends a close
/// frame with 1001 (going away) to both sides, masked towards the upstream
/// (the real WebSocket server refuses unmasked client frames); both sides
/// get their whole message and then the close, and valet exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn at_shutdown_both_sides_get_a_going_away_close_after_the_frame_in_flight() {
    use support::process::Proc;
    const BIG: usize = 2 << 20;
    let up_payload: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    let client_payload: Vec<u8> = (0..BIG).map(|i| (i % 241) as u8).collect();
    // The upstream: a real WebSocket server whose writes can be held.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = l.local_addr().unwrap();
    let up_gate = Gate::open();
    let up_got = Arc::new(Mutex::new(Received::default()));
    {
        let (gate, got, payload) = (up_gate.clone(), up_got.clone(), up_payload.clone());
        tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let stream = Gated {
                inner: tcp,
                gate: gate.clone(),
            };
            let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let (mut tx, rx) = ws.split();
            tokio::spawn(record(rx, got));
            // Half of the big message's frame goes out, then the gate holds.
            gate.allow_more(BIG / 2);
            let _ = tx.send(Message::binary(payload)).await;
            // Answer the close (tungstenite does when it reads it; flush).
            let _ = tx.flush().await;
        });
    }
    let routes = format!(
        "  - name: ws\n    match: {{ path_prefix: /ws }}\n    upstream: \"http://{up_addr}\"\n    websocket: {{ idle_timeout: 60s }}\n"
    );
    let mut p = Proc::start_with_limits(
        &routes,
        "  shutdown_grace: 1s\n",
        "",
        std::process::Stdio::null(),
    )
    .await;
    // The client: a real WebSocket client over TLS, its writes held too.
    let token = sign(&p.key, &claims("alice", "read"));
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(p.ca.client_config(&[b"http/1.1"]))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let client_gate = Gate::open();
    let stream = Gated {
        inner: tls,
        gate: client_gate.clone(),
    };
    let mut req = format!("wss://localhost:{}/ws/x", p.addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    let (mut tx, rx) = ws.split();
    let client_got = Arc::new(Mutex::new(Received::default()));
    tokio::spawn(record(rx, client_got.clone()));
    client_gate.allow_more(BIG / 2);
    let sender = {
        let payload = client_payload.clone();
        tokio::spawn(async move {
            let _ = tx.send(Message::binary(payload)).await;
            let _ = tx.flush().await;
            tx
        })
    };
    // Both frames are half-way: the gates hold the rest.
    assert!(
        eventually(PICKUP, || async {
            up_gate.blocked() && client_gate.blocked()
        })
        .await
    );
    p.signal("TERM");
    // Past the grace (1 s), valet wants to close but each frame is still
    // in flight; nothing may be injected into it. Then the frames end.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    up_gate.release();
    client_gate.release();
    let _tx = sender.await.unwrap();
    for (who, got, sent) in [
        ("client", &client_got, &up_payload),
        ("upstream", &up_got, &client_payload),
    ] {
        assert!(
            eventually(PICKUP, || async {
                let g = got.lock().unwrap();
                g.close.is_some() || g.error.is_some()
            })
            .await,
            "{who}: no close frame"
        );
        let g = got.lock().unwrap();
        assert_eq!(g.error, None, "{who}");
        assert_eq!(g.messages.len(), 1, "{who}: the message in flight was cut");
        assert!(
            g.messages[0] == *sent,
            "{who}: the message arrived corrupted"
        );
        assert_eq!(g.close, Some(1001), "{who}");
    }
    let status = tokio::task::spawn_blocking(move || p.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
