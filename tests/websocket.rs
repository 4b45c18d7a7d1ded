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
    let (echo, seen) = echo_upstream().await;
    let routes = format!(
        r#"  - name: ws
    match: {{ path_prefix: /ws }}
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
    (Gateway::start(&routes, "").await, seen)
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
    let mut ws = connect(&gw, "/ws/echo", Some(&gw.token("alice", "read")))
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
    assert!(eventually(PICKUP, || async { ended(&gw, "idle").await == 1.0 }).await);
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
