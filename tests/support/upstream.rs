//! A real upstream HTTP server that records what it received. Paths decide
//! its behaviour: `/slow` answers after 3 s, `/reset` drops the connection,
//! `/big` answers 32 MiB,
//! anything else answers 200 with hop-by-hop headers valet must strip.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// Over TLS, whether the client showed a certificate.
    pub client_cert: bool,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections that ended (the client closed them, or they failed).
    pub closed: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug)]
struct Reset;
impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset")
    }
}
impl std::error::Error for Reset {}

async fn answer(
    seen: Arc<Mutex<Vec<Seen>>>,
    client_cert: bool,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Reset> {
    let (parts, mut body) = req.into_parts();
    let mut body_len = 0u64;
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let path = parts.uri.path().to_string();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body_len,
        client_cert,
    });
    if path.contains("/reset") {
        return Err(Reset);
    }
    if path.contains("/slow") {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    if path.contains("/big") {
        // 32 MiB: far more than socket buffers hold.
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; 32 << 20]))));
    }
    let body = serde_json::json!({ "ok": true, "path": path, "body_len": body_len }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("connection", "x-up-secret".parse().unwrap());
    h.insert("x-up-secret", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("x-up-visible", "1".parse().unwrap());
    Ok(r)
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::listen(None).await
    }

    /// The same upstream over TLS (`tls` decides the certificate and
    /// whether clients must show one).
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Upstream {
        Self::listen(Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn listen(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a2 = accepted.clone();
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c2 = closed.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                a2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (seen, tls, closed) = (s2.clone(), tls.clone(), c2.clone());
                tokio::spawn(async move {
                    // Counted however the connection ends.
                    struct Ended(Arc<std::sync::atomic::AtomicUsize>);
                    impl Drop for Ended {
                        fn drop(&mut self) {
                            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    let _ended = Ended(closed);
                    let h1 = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            let svc = service_fn(move |req| answer(seen.clone(), false, req));
                            h1.serve_connection(TokioIo::new(tcp), svc).await
                        }
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let client_cert = tls.get_ref().1.peer_certificates().is_some();
                            let svc = service_fn(move |req| answer(seen.clone(), client_cert, req));
                            h1.serve_connection(TokioIo::new(tls), svc).await
                        }
                    };
                });
            }
        });
        Upstream {
            addr,
            seen,
            accepted,
            closed,
        }
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// An address where nothing listens.
pub fn dead_addr() -> SocketAddr {
    // Bound and never listening, for the rest of the test process: a
    // connection there is refused, and no other test (a gateway, an
    // upstream) can be given the port meanwhile, as it could when a
    // listener was bound and dropped.
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = s.local_addr().unwrap();
    std::mem::forget(s);
    a
}
