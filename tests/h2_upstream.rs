//! HTTP/2 towards upstreams (issue 12): prior-knowledge h2c on a route
//! that says so, with request and response trailers passed end to end and
//! `te: trailers` kept, as gRPC needs. The client speaks HTTP/2 to valet
//! over TLS (ALPN h2); the upstream is a real hyper HTTP/2 server.

mod support;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Mutex};
use support::*;

type Frames = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

fn frames(data: impl Into<Bytes>, trailers: &[(&'static str, &str)]) -> Frames {
    let mut t = HeaderMap::new();
    for (k, v) in trailers {
        t.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    StreamBody::new(futures_util::stream::iter(vec![
        Ok(Frame::data(data.into())),
        Ok(Frame::trailers(t)),
    ]))
}

/// What the upstream saw: version, `te`, and the request's trailer.
type Saw = Arc<Mutex<Vec<(Version, Option<String>, Option<String>)>>>;

/// An HTTP/2 connection to valet over TLS (ALPN h2).
async fn h2_client(gw: &Gateway) -> hyper::client::conn::http2::SendRequest<Frames> {
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(gw.ca.client_config(&[b"h2"]))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// A gRPC call to `path` as alice, its body still to be given.
fn grpc_call(gw: &Gateway, path: &str) -> http::request::Builder {
    Request::post(format!("https://localhost:{}{path}", gw.addr.port()))
        .header(
            "authorization",
            format!("Bearer {}", gw.token("alice", "read")),
        )
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}

/// An HTTP/2 upstream: h2c, or over TLS (`tls`, offering only h2 by ALPN).
async fn h2_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> (std::net::SocketAddr, Saw) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let saw: Saw = Default::default();
    let s2 = saw.clone();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let saw = s2.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let saw = saw.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let te = parts
                            .headers
                            .get("te")
                            .map(|v| v.to_str().unwrap().to_string());
                        let collected = body.collect().await.unwrap();
                        let trailer = collected
                            .trailers()
                            .and_then(|t| t.get("x-req-trailer"))
                            .map(|v| v.to_str().unwrap().to_string());
                        let n = collected.to_bytes().len();
                        saw.lock()
                            .unwrap()
                            .push((parts.version, te, trailer.clone()));
                        let resp = Response::builder()
                            .header("content-type", "application/grpc")
                            .body(frames(
                                grpc_frame(format!("echo:{n}").as_bytes()),
                                &[
                                    ("grpc-status", "0"),
                                    ("x-saw-trailer", trailer.as_deref().unwrap_or("none")),
                                ],
                            ))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    None => b.serve_connection(TokioIo::new(tcp), svc).await,
                    Some(a) => {
                        let Ok(tls) = a.accept(tcp).await else { return };
                        b.serve_connection(TokioIo::new(tls), svc).await
                    }
                };
            });
        }
    });
    (addr, saw)
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_upstreams_get_http2_with_trailers_both_ways() {
    let (up, saw) = h2_upstream(None).await;
    let routes = format!(
        "  - name: grpc\n    match: {{ path_prefix: /grpc }}\n    upstream: \"http://{up}\"\n    upstream_protocol: h2c\n"
    );
    let gw = Gateway::start(&routes, "").await;
    let mut send = h2_client(&gw).await;
    let req = grpc_call(&gw, "/grpc/echo.Echo/Say")
        .body(frames(grpc_frame(b"hello"), &[("x-req-trailer", "abc")]))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    // A unary gRPC call: one framed message each way, the status in trailers.
    assert_eq!(collected.to_bytes(), grpc_frame(b"echo:10"));
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        trailers["x-saw-trailer"], "abc",
        "the request trailer reached the upstream"
    );
    let seen = saw.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(Version::HTTP_2, Some("trailers".into()), Some("abc".into()))]
    );
    // Over HTTP/1.1 from the client, the upstream is still spoken to in h2.
    let r = gw
        .client(Proto::H1)
        .get("/grpc/x", Some(&gw.token("alice", "read")))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(saw.lock().unwrap().last().unwrap().0, Version::HTTP_2);
}

#[test]
fn h2c_is_for_plain_upstreams_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    std::fs::write(dir.path().join("signing.pem"), TestKey::new().pem).unwrap();
    let path = dir.path().join("valet.yaml");
    let routes = "  - name: a\n    match: { path_prefix: /a }\n    upstream: \"https://localhost:9\"\n    upstream_protocol: h2c\n";
    std::fs::write(&path, config_text(&ca, &dir, routes, "")).unwrap();
    let e = valet::config::load(&path).unwrap_err().to_string();
    assert!(e.contains("h2c is HTTP/2 over plain TCP"), "{e}");
}

/// An https upstream that offers h2 by ALPN is spoken to in HTTP/2.
#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_offering_h2_gets_http2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let ca_file = dir.path().join("up-ca.pem");
    ca.write_ca_pem(&ca_file);
    let mut cfg = (*ca.server_config()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let (up, saw) = h2_upstream(Some(Arc::new(cfg))).await;
    let routes = format!(
        "  - name: h2\n    match: {{ path_prefix: /h2 }}\n    upstream: \"https://localhost:{}\"\n    upstream_tls: {{ ca_file: \"{}\" }}\n",
        up.port(),
        ca_file.display()
    );
    let gw = Gateway::start(&routes, "").await;
    let r = gw
        .client(Proto::H1)
        .get("/h2/x", Some(&gw.token("alice", "read")))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(saw.lock().unwrap().last().unwrap().0, Version::HTTP_2);
}

/// A gRPC message on the wire (gRPC over HTTP/2: uncompressed flag, 4-byte
/// big-endian length, the message).
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

/// A server-streaming gRPC call through valet: the upstream sends its
/// second message only after the client has received the first, so the
/// call completes only if valet streams (never buffers) the response; the
/// status comes in the trailers.
#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_server_streaming_call_streams_through_valet() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let (go_on, wait) = tokio::sync::mpsc::channel::<()>(1);
    let wait = Arc::new(tokio::sync::Mutex::new(wait));
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let svc = service_fn(move |req: Request<Incoming>| {
            let wait = wait.clone();
            async move {
                let path = req.uri().path().to_string();
                let _ = req.into_body().collect().await;
                let (tx, rx) =
                    tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Frame::data(grpc_frame(b"one")))).await;
                    // The client must have had "one" before "two" is sent.
                    wait.lock().await.recv().await;
                    let _ = tx.send(Ok(Frame::data(grpc_frame(b"two")))).await;
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", HeaderValue::from_static("0"));
                    t.insert("grpc-message", HeaderValue::from_str(&path).unwrap());
                    let _ = tx.send(Ok(Frame::trailers(t))).await;
                });
                let body = StreamBody::new(tokio_stream_from(rx));
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .unwrap(),
                )
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    });
    let routes = format!(
        // gRPC routes on the service's own path (`/package.Service`).
        "  - name: feed\n    match: {{ path_prefix: /feed.Feed }}\n    upstream: \"http://{up}\"\n    upstream_protocol: h2c\n"
    );
    let gw = Gateway::start(&routes, "").await;
    let mut send = h2_client(&gw).await;
    let req = grpc_call(&gw, "/feed.Feed/List")
        .body(frames(grpc_frame(b"request"), &[]))
        .unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, grpc_frame(b"one"));
    go_on.send(()).await.unwrap();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, grpc_frame(b"two"));
    let trailers = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_trailers()
        .unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "/feed.Feed/List");
    assert!(body.frame().await.is_none());
}

/// A `futures` stream over an mpsc receiver.
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}
