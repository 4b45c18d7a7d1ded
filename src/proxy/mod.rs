//! The proxy path: one ordered pipeline per request.
//!
//! 1. framing checks (Host, request target, tokens in the query)
//! 2. route selection
//! 3. authentication (bearer token → verified claims, revocation map)
//! 4. authorization (the route's scopes)
//! 5. body limit
//! 6. rewrite (hop-by-hop out, caller identity out, ours in, X-Forwarded-*)
//! 7. forward with timeouts, stream the response back

pub mod body;
pub mod error;
pub mod forwarded;
pub mod headers;
pub mod router;

use crate::app::{App, Route, Snapshot};
use crate::tokens::VerifiedToken;
use body::LimitedBody;
use bytes::Bytes;
pub use error::ProxyError;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// What valet answers with: the upstream's streamed body, or its own.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

const X_REQUEST_ID: &str = "x-request-id";

/// Facts gathered along the pipeline, for metrics and the access log.
#[derive(Default)]
struct Ctx {
    route: Option<usize>,
    token: Option<Arc<VerifiedToken>>,
}

/// Handles one request from `peer` end to end. Never fails: every error
/// becomes a response.
pub async fn handle(
    app: &Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let snap = app.snapshot();
    let request_id = request_id(req.headers());
    let method = req.method().clone();
    // A `Uri` clone shares its bytes: no allocation on the request path.
    let uri_for_log = req.uri().clone();
    let mut ctx = Ctx::default();
    // valet's own OAuth endpoints come before any proxy route.
    let own =
        snap.config.authorization_server.as_ref().and_then(|a| {
            crate::oauth2::endpoints::endpoint_for(a, req.uri().path()).map(|e| (a, e))
        });
    let oauth1 =
        match own {
            Some(_) => None,
            None => snap.config.oauth1.as_ref().and_then(|o| {
                crate::oauth1::flow::endpoint_for(o, req.uri().path()).map(|t| (o, t))
            }),
        };
    let mut resp = match (own, oauth1) {
        (Some((a, ep)), _) => crate::oauth2::endpoints::serve(app, &snap, a, ep, peer, req).await,
        (None, Some((o, target))) => {
            crate::oauth1::flow::serve(app, &snap, o, target, req, &request_id, &mut ctx.token)
                .await
        }
        (None, None) => match proxy(app, &snap, peer, req, &request_id, &mut ctx).await {
            Ok(r) => r,
            Err(e) => e.into_response(&request_id),
        },
    };
    resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
    let status = resp.status();
    let (route_name, metrics) = match (own, oauth1.is_some(), ctx.route) {
        (Some(_), _, _) => ("oauth2", &snap.oauth2),
        (None, true, _) => ("oauth1", &snap.oauth1),
        (None, false, Some(i)) => (snap.routes[i].cfg.name.as_str(), &snap.routes[i].metrics),
        (None, false, None) => ("none", &snap.unmatched),
    };
    metrics.record(&method, status);
    let elapsed = start.elapsed();
    metrics.duration.observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "valet::access",
        request_id = request_id.to_str().unwrap_or_default(),
        peer = %peer.ip(),
        method = %method,
        path = uri_for_log.path(),
        route = route_name,
        status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        token = ctx.token.as_ref().map(|t| t.fingerprint.as_str()),
        client_id = ctx.token.as_ref().map(|t| &*t.client_id),
        sub = ctx.token.as_ref().map(|t| &*t.subject),
    );
    resp
}

async fn proxy(
    app: &App,
    snap: &Snapshot,
    peer: SocketAddr,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    ctx: &mut Ctx,
) -> Result<Response<ResponseBody>, ProxyError> {
    // 1. Framing: requests whose meaning is ambiguous are refused, not guessed at.
    let host = host_of(&req)?;
    let path = req.uri().path();
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequest(
            "the request target must be an absolute path",
        ));
    }
    if router::has_dot_segments(path) {
        return Err(ProxyError::BadRequest("the path contains dot-segments"));
    }
    if req.uri().query().is_some_and(query_has_access_token) {
        // RFC 6750 §2.3 tokens in URLs end up in logs and caches; refuse them.
        return Err(ProxyError::BadRequest(
            "access tokens are not accepted in the query string; send an Authorization: Bearer header",
        ));
    }
    if req.version() == Version::HTTP_2
        && header_bytes(req.headers()) > snap.config.limits.max_header_size
    {
        // hyper enforces this for HTTP/1 itself.
        return Err(ProxyError::HeadersTooLarge);
    }

    // 2. Route.
    let host_name = host.as_ref().and_then(|h| h.to_str().ok()).map(strip_port);
    let idx = router::select(
        snap.routes
            .iter()
            .map(|r| (r.cfg.host.as_deref(), r.cfg.path_prefix.as_str())),
        host_name,
        path,
    )
    .ok_or(ProxyError::NotFound)?;
    ctx.route = Some(idx);
    let route = &snap.routes[idx];

    // 3. Authenticate.
    if route.cfg.auth_required {
        match authenticate(app, snap, req.headers()) {
            Ok(t) => ctx.token = Some(t),
            Err(e) => {
                if let ProxyError::InvalidToken(reason) = &e {
                    app.metrics.token_failure(*reason);
                }
                return Err(e);
            }
        }
    }

    // 4. Authorize.
    if let Some(t) = &ctx.token {
        if !route.cfg.scopes.iter().all(|s| t.has_scope(s)) {
            return Err(ProxyError::InsufficientScope(route.scope_list.clone()));
        }
    }

    // 5. Body limit: refuse early when the length is declared.
    let limit = route.cfg.max_body_size;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::PayloadTooLarge);
    }

    // 6. Rewrite.
    let (mut parts, body) = req.into_parts();
    parts.uri = upstream_uri(route, &parts.uri)?;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    if !route.cfg.forward_authorization {
        h.remove(header::AUTHORIZATION);
    }
    let names = &snap.config.identity_headers;
    // Caller-sent identity headers are forgeries by definition.
    h.remove(&names.subject);
    h.remove(&names.client_id);
    h.remove(&names.scopes);
    if let Some(t) = &ctx.token {
        let inject = route.cfg.inject;
        if inject.subject {
            h.insert(names.subject.clone(), t.subject_header.clone());
        }
        if inject.client_id {
            h.insert(names.client_id.clone(), t.client_id_header.clone());
        }
        if inject.scopes {
            h.insert(names.scopes.clone(), t.scopes_header.clone());
        }
    }
    let trusted = snap
        .config
        .trusted_proxies
        .iter()
        .any(|c| c.contains(peer.ip()));
    forwarded::apply(h, peer.ip(), trusted, host.as_ref());
    h.insert(X_REQUEST_ID, request_id.clone());
    h.insert(header::HOST, route.host_header.clone());

    // 7. Sign for the upstream (OAuth 1.0 routes), then forward.
    let (body, exceeded) = match (&route.oauth1, &ctx.token) {
        (Some(signer), Some(t)) => {
            crate::oauth1::forward::sign(app, signer, &t.subject, &mut parts, body, limit).await?
        }
        _ => {
            let (b, e) = LimitedBody::new(body, limit);
            (b, Some(e))
        }
    };
    let up = Request::from_parts(parts, body);
    let sent = Instant::now();
    let result = tokio::time::timeout(route.cfg.response_timeout, route.client.request(up)).await;
    route
        .metrics
        .upstream_duration
        .observe(sent.elapsed().as_secs_f64());
    let mut resp = match result {
        Err(_) => {
            app.metrics.upstream_error(&route.cfg.name, "timeout");
            return Err(ProxyError::GatewayTimeout(
                "the upstream did not answer in time",
            ));
        }
        Ok(Err(e)) => {
            if exceeded.is_some_and(|x| x.load(Ordering::Relaxed)) {
                return Err(ProxyError::PayloadTooLarge);
            }
            if is_timeout(&e) {
                app.metrics
                    .upstream_error(&route.cfg.name, "connect_timeout");
                return Err(ProxyError::GatewayTimeout(
                    "connecting to the upstream timed out",
                ));
            }
            app.metrics.upstream_error(
                &route.cfg.name,
                if e.is_connect() { "connect" } else { "reset" },
            );
            tracing::warn!(route = %route.cfg.name, error = %error_chain(&e), "upstream request failed");
            return Err(ProxyError::BadGateway(if e.is_connect() {
                "the upstream refused the connection"
            } else {
                "the upstream closed the connection"
            }));
        }
        Ok(Ok(r)) => r,
    };
    if let Some(s) = &route.oauth1 {
        if resp.status() == http::StatusCode::UNAUTHORIZED {
            s.upstream_refused(&route.cfg.name);
        }
    }
    headers::strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(Either::Left))
}

/// The verified bearer token of a request (RFC 6750 §2.1 header only).
pub fn authenticate(
    app: &App,
    snap: &Snapshot,
    h: &HeaderMap,
) -> Result<Arc<VerifiedToken>, ProxyError> {
    let mut values = h.get_all(header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Err(ProxyError::NoToken);
    };
    if values.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Authorization header"));
    }
    let v = v.as_bytes();
    // RFC 6750 §2.1: `Bearer` (case-insensitive), one space, the token.
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return Err(ProxyError::NoToken);
    }
    let token = std::str::from_utf8(&v[7..])
        .map_err(|_| ProxyError::InvalidToken(crate::tokens::TokenError::Malformed))?
        .trim();
    let now = crate::revocation::now();
    snap.validator
        .validate(token, &app.revocations.current(), now)
        .map_err(ProxyError::InvalidToken)
}

/// The authority the caller addressed, from `Host` or an absolute URI; the
/// two must agree and `Host` must not repeat. Only routing reads it.
fn host_of(req: &Request<Incoming>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    match (req.uri().authority(), host) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) => Err(
            ProxyError::BadRequest("the Host header disagrees with the request target"),
        ),
        (Some(a), _) => Ok(Some(
            HeaderValue::from_str(a.as_str()).expect("authority is a valid header value"),
        )),
        (None, h) => Ok(h.cloned()),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// True if any query parameter is named `access_token` (also percent-encoded).
fn query_has_access_token(q: &str) -> bool {
    q.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        name == "access_token"
            || (name.contains('%') && percent_decode(name).eq_ignore_ascii_case("access_token"))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header_bytes(h: &HeaderMap) -> u64 {
    // RFC 7541 §4.1 size accounting: name + value + 32 per field.
    h.iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 32) as u64)
        .sum()
}

fn upstream_uri(route: &Route, orig: &Uri) -> Result<Uri, ProxyError> {
    let path = orig.path();
    let rest = if route.cfg.strip_prefix {
        let r = &path[route.cfg.path_prefix.trim_end_matches('/').len()..];
        if r.is_empty() {
            "/"
        } else {
            r
        }
    } else {
        path
    };
    let up = &route.cfg.upstream;
    let mut s = String::with_capacity(
        up.base_path.len() + rest.len() + orig.query().map_or(0, |q| q.len() + 1) + 64,
    );
    s.push_str(up.scheme.as_str());
    s.push_str("://");
    s.push_str(up.authority.as_str());
    s.push_str(&up.base_path);
    if rest != "/" || up.base_path.is_empty() {
        s.push_str(rest);
    }
    if let Some(q) = orig.query() {
        s.push('?');
        s.push_str(q);
    }
    s.parse()
        .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded"))
}

fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(X_REQUEST_ID) {
        let ok = (1..=128).contains(&v.len())
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
        if ok {
            return v.clone();
        }
    }
    HeaderValue::from_str(&crate::tokens::random_id()).expect("base64url is a valid header value")
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_in_query_is_detected_in_any_spelling() {
        assert!(query_has_access_token("a=1&access_token=x"));
        assert!(query_has_access_token("access%5Ftoken=x"));
        assert!(query_has_access_token("access_token"));
        assert!(!query_has_access_token("my_access_token=x&b=2"));
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("a.example:8443"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
    }
}
