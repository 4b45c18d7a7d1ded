//! The one-shot HTTP requests valet makes on its own behalf (not the
//! proxy's pooled upstream clients): calls to OAuth 1.0 providers and the
//! CLI's health probe. One connection per call, one deadline over all of
//! it (connect, TLS, request, answer), and an answer read up to a limit, so
//! a slow or endless peer costs a bounded wait and bounded memory.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

/// How one call may go.
pub struct Limits<'a> {
    /// For `https://` URLs; without it they are refused.
    pub tls: Option<&'a Arc<rustls::ClientConfig>>,
    /// Over the whole call, from connecting to the last byte of the answer.
    pub timeout: Duration,
    /// Largest answer body read.
    pub max_answer: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("the URL cannot be used: {0}")]
    BadUrl(&'static str),
    #[error("cannot connect: {0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is larger than {0} bytes or was cut short")]
    Answer(usize),
}

/// An absolute `http://` or `https://` URL that valet may call: a host,
/// and no user info (`user:pass@host` would be sent in `Host`, and a URL
/// like `https://trusted@evil` names another host than it seems to).
pub fn callable_url(s: &str) -> Result<http::Uri, &'static str> {
    let u: http::Uri = s.parse().map_err(|_| "it is not a URL")?;
    if !matches!(u.scheme_str(), Some("http") | Some("https")) {
        return Err("it is not an absolute http(s) URL");
    }
    let Some(a) = u.authority() else {
        return Err("it has no host");
    };
    if a.as_str().contains('@') {
        return Err("it carries user info (user:pass@)");
    }
    if a.host().is_empty() {
        return Err("it has no host");
    }
    Ok(u)
}

/// `host[:port]` of `u` in lower case, with the scheme's default port
/// made explicit: what "the same host" compares.
pub fn host_and_port(u: &http::Uri) -> Option<(String, u16)> {
    let a = u.authority()?;
    let default = if u.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    Some((
        a.host().to_ascii_lowercase(),
        a.port_u16().unwrap_or(default),
    ))
}

/// Sends `req` (whose URI is absolute: `http://` or `https://`) on a new
/// connection and reads the answer. valet's `User-Agent` and the `Host`
/// are set here; the request line carries the origin form.
pub async fn send(
    req: Request<Full<Bytes>>,
    limits: &Limits<'_>,
) -> Result<Response<Bytes>, OutboundError> {
    match tokio::time::timeout(limits.timeout, send_inner(req, limits)).await {
        Ok(r) => r,
        Err(_) => Err(OutboundError::Timeout(limits.timeout)),
    }
}

async fn send_inner(
    req: Request<Full<Bytes>>,
    limits: &Limits<'_>,
) -> Result<Response<Bytes>, OutboundError> {
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .uri
        .authority()
        .ok_or(OutboundError::BadUrl("it has no host"))?
        .clone();
    if authority.as_str().contains('@') {
        // Never sent in `Host`, whatever handed this URL over.
        return Err(OutboundError::BadUrl("it carries user info (user:pass@)"));
    }
    let https = match parts.uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(OutboundError::BadUrl("the scheme must be http or https")),
    };
    let tls = match (https, limits.tls) {
        (true, None) => return Err(OutboundError::BadUrl("https is not available here")),
        (true, Some(t)) => Some(t.clone()),
        (false, _) => None,
    };
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .map_err(|_| OutboundError::BadUrl("the path cannot be sent"))?;
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(authority.as_str())
            .map_err(|_| OutboundError::BadUrl("the host cannot be sent"))?,
    );
    parts.headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("valet/", env!("CARGO_PKG_VERSION"))),
    );
    let req = Request::from_parts(parts, body);
    let unreachable = |e: &dyn std::fmt::Display| OutboundError::Unreachable(e.to_string());
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| unreachable(&e))?;
    let _ = tcp.set_nodelay(true);
    let resp = match tls {
        Some(tls) => {
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| OutboundError::BadUrl("the host is not a valid TLS server name"))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(&e))?;
            exchange(TokioIo::new(stream), req).await?
        }
        None => exchange(TokioIo::new(tcp), req).await?,
    };
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, limits.max_answer)
        .collect()
        .await
        .map_err(|_| OutboundError::Answer(limits.max_answer))?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

async fn exchange<I>(
    io: I,
    req: Request<Full<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, OutboundError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut s, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| OutboundError::Unreachable(e.to_string()))?;
    // Ends with the call: the connection is dropped with `s`.
    tokio::spawn(conn);
    s.send_request(req)
        .await
        .map_err(|e| OutboundError::Unreachable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_user_info_are_not_callable() {
        assert!(callable_url("https://idp.example/keys").is_ok());
        assert!(callable_url("http://127.0.0.1:8080/x").is_ok());
        for bad in [
            "https://user:pw@idp.example/keys",
            "https://idp.example@evil.example/",
            "ftp://idp.example/",
            "/relative",
            "not a url",
        ] {
            assert!(callable_url(bad).is_err(), "{bad}");
        }
    }

    /// Whatever hands `send` a URL with user info, it never reaches `Host`.
    #[tokio::test]
    async fn send_refuses_user_info() {
        let req = Request::get("http://user:pw@127.0.0.1:9/x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let limits = Limits {
            tls: None,
            timeout: Duration::from_secs(1),
            max_answer: 1024,
        };
        let e = send(req, &limits).await.unwrap_err();
        assert!(e.to_string().contains("user info"), "{e}");
    }

    #[test]
    fn hosts_compare_with_their_default_port() {
        let u: http::Uri = "https://IdP.Example/x".parse().unwrap();
        assert_eq!(host_and_port(&u), Some(("idp.example".into(), 443)));
        let u: http::Uri = "http://a:8080".parse().unwrap();
        assert_eq!(host_and_port(&u), Some(("a".into(), 8080)));
    }
}
