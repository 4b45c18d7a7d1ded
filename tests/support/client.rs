//! A real HTTP client over real TLS: hyper's connection API on tokio-rustls,
//! one fresh connection per request (HTTP/1.1 or HTTP/2 by ALPN).

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Proto::H1 => &[b"http/1.1"],
            Proto::H2 => &[b"h2"],
        }
    }
}

pub struct Client {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    pub proto: Proto,
    /// The local address to connect from (another loopback address is
    /// another source to valet).
    pub from: Option<std::net::IpAddr>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

impl Client {
    pub fn new(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, proto: Proto) -> Self {
        Client {
            addr,
            tls,
            proto,
            from: None,
        }
    }

    /// The same client, connecting from `ip` (e.g. `127.0.0.2`).
    pub fn from(mut self, ip: &str) -> Self {
        self.from = Some(ip.parse().unwrap());
        self
    }

    pub async fn tls_stream(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = match self.from {
            None => TcpStream::connect(self.addr).await.unwrap(),
            Some(ip) => {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.bind(SocketAddr::new(ip, 0)).unwrap();
                s.connect(self.addr).await.unwrap()
            }
        };
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .unwrap()
    }

    /// A request builder with the right URI form for the protocol.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        let b = Request::builder().method(method);
        match self.proto {
            Proto::H1 => b
                .uri(path)
                .header("host", format!("localhost:{}", self.addr.port())),
            Proto::H2 => b
                .uri(format!("https://localhost:{}{path}", self.addr.port()))
                .version(http::Version::HTTP_2),
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut b = self.request("GET", path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(Full::new(Bytes::new())).unwrap()).await
    }

    /// POSTs a form; `basic` credentials are form-url-encoded, then Basic-encoded.
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Reply {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut b = self
            .request("POST", path)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some((id, secret)) = basic {
            b = b.header("authorization", basic_header(id, secret));
        }
        self.send(b.body(Full::new(Bytes::from(body))).unwrap())
            .await
    }

    pub async fn send<B>(&self, req: Request<B>) -> Reply
    where
        B: hyper::body::Body + Send + 'static + Unpin,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.try_send(req).await.unwrap()
    }

    pub async fn try_send<B>(&self, req: Request<B>) -> Result<Reply, hyper::Error>
    where
        B: hyper::body::Body + Send + 'static + Unpin,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = TokioIo::new(self.tls_stream().await);
        let resp = match self.proto {
            Proto::H1 => {
                let (mut s, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                s.send_request(req).await?
            }
            Proto::H2 => {
                let (mut s, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                s.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// GET over plain HTTP/1.1 (the metrics listener).
pub async fn plain_get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = s.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// A request over plain HTTP/1.1 (the admin API), optionally with a bearer
/// token; the status and the body as JSON (`Null` if it is not JSON).
pub async fn plain_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let resp = s
        .send_request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Writes raw bytes on a TLS connection and returns everything read back
/// until the server closes or 2 s pass (for requests hyper's client won't send).
pub async fn raw_exchange(client: &Client, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = client.tls_stream().await;
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
pub fn basic_header(id: &str, secret: &str) -> String {
    use base64::Engine;
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}
