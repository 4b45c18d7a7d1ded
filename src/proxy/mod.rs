//! The proxy path: one ordered pipeline per request.
//!
//! 0. one canonical request target (Host parsed, path canonical): valet's
//!    own endpoints and the routes see only that
//! 1. framing checks (tokens in the query, header size)
//! 2. route selection
//! 3. authentication (bearer token → verified claims, revocation map)
//! 4. authorization (the route's scopes)
//! 5. body limit
//! 6. rewrite (hop-by-hop out, caller identity out, ours in, X-Forwarded-*)
//! 7. forward with timeouts, stream the response back

/// The request and response bodies, a foundation all handlers share.
pub use crate::bodies as body;
/// Refusals and their responses, shared with the OAuth 1.0 handler.
pub use crate::refusal as error;
pub mod forwarded;
pub mod headers;
pub mod router;

use crate::app::{App, Route, Snapshot};
use crate::config::{RequestPolicy, UnderscoreHeaders};
use crate::tokens::VerifiedToken;
use body::{BodyError, LimitedBody, MinRate};
pub use error::ProxyError;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What valet answers with: the upstream's streamed body, or its own.
pub use crate::bodies::ResponseBody;

const X_REQUEST_ID: &str = "x-request-id";

/// One request's record: filled in along the pipeline, written to the
/// metrics and the access log exactly once, when the answer is ready or,
/// should the request end any other way (the client went away, a task
/// ended abnormally), when it is dropped.
struct Exchange {
    snap: Arc<Snapshot>,
    start: Instant,
    peer: SocketAddr,
    method: http::Method,
    /// As the client sent it (a clone shares the bytes).
    uri: Uri,
    request_id: HeaderValue,
    kind: Kind,
    token: Option<Arc<VerifiedToken>>,
    /// `valet_client_errors_total` reason, when the client was at fault.
    client_error: Option<&'static str>,
    done: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    None,
    OAuth2,
    OAuth1,
    Route(usize),
}

/// nginx's "client closed request": the status logged for a request whose
/// answer was never written.
const CLIENT_CLOSED: u16 = 499;

impl Exchange {
    fn finish(&mut self, app: &App, status: u16) {
        self.done = true;
        let snap = &self.snap;
        let (route_name, metrics) = match self.kind {
            Kind::OAuth2 => ("oauth2", &snap.oauth2),
            Kind::OAuth1 => ("oauth1", &snap.oauth1),
            Kind::Route(i) => (snap.routes[i].cfg.name.as_str(), &snap.routes[i].metrics),
            Kind::None => ("none", &snap.unmatched),
        };
        metrics.record(
            &self.method,
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST),
        );
        let elapsed = self.start.elapsed();
        metrics.duration.observe(elapsed.as_secs_f64());
        if let Some(reason) = self.client_error {
            app.metrics.client_error(reason);
        }
        tracing::info!(
            target: "valet::access",
            request_id = self.request_id.to_str().unwrap_or_default(),
            peer = %self.peer.ip(),
            method = %self.method,
            path = self.uri.path(),
            route = route_name,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            client_error = self.client_error,
            token = self.token.as_ref().map(|t| t.fingerprint.as_str()),
            client_id = self.token.as_ref().map(|t| &*t.client_id),
            sub = self.token.as_ref().map(|t| &*t.subject),
        );
    }
}

/// Answers that were never written still count once.
struct ExchangeGuard<'a> {
    app: &'a App,
    x: Exchange,
}

impl Drop for ExchangeGuard<'_> {
    fn drop(&mut self) {
        if !self.x.done {
            // Unwinding from a panic: the client is answered 500 (the
            // connection's panic guard), and so is the log.
            let status = if std::thread::panicking() {
                500
            } else {
                self.x.client_error.get_or_insert("client_closed");
                CLIENT_CLOSED
            };
            self.x.finish(self.app, status);
        }
    }
}

/// Handles one request from `peer` on listener number `listener` end to
/// end. Never fails: every error becomes a response.
pub async fn handle(
    app: &Arc<App>,
    listener: usize,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let snap = app.snapshot();
    let policy = snap
        .config
        .listeners
        .get(listener)
        .map(|l| l.requests)
        .unwrap_or_default();
    let mut g = ExchangeGuard {
        app,
        x: Exchange {
            start: Instant::now(),
            peer,
            method: req.method().clone(),
            uri: req.uri().clone(),
            request_id: request_id(req.headers()),
            kind: Kind::None,
            token: None,
            client_error: None,
            done: false,
            snap: snap.clone(),
        },
    };
    let request_id = g.x.request_id.clone();
    // 0. One canonical request target, before anything looks at it: valet's
    //    own endpoints and the routes match on it, the upstream receives it.
    let mut resp = match prepare(&mut req, &policy) {
        Err(e) => {
            g.x.client_error = Some(e.0);
            e.1.into_response(&request_id)
        }
        Ok(authority) => dispatch(app, &snap, &policy, peer, req, authority, &mut g.x).await,
    };
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    g.x.finish(app, resp.status().as_u16());
    resp
}

async fn dispatch(
    app: &Arc<App>,
    snap: &Snapshot,
    policy: &RequestPolicy,
    peer: SocketAddr,
    req: Request<Incoming>,
    authority: Option<(Authority, HeaderValue)>,
    x: &mut Exchange,
) -> Response<ResponseBody> {
    // valet's own OAuth endpoints come before any proxy route, matched on
    // the same reading as the routes (computed once, here).
    let routing = crate::request_target::routing_path(req.uri().path(), &policy.paths);
    let path: &str = &routing;
    if let Some((a, ep)) = snap
        .config
        .authorization_server
        .as_ref()
        .and_then(|a| crate::oauth2::endpoints::endpoint_for(a, path).map(|e| (a, e)))
    {
        x.kind = Kind::OAuth2;
        drop(routing);
        return crate::oauth2::endpoints::serve(app, snap, a, ep, peer, req).await;
    }
    if let Some((o, target)) = snap
        .config
        .oauth1
        .as_ref()
        .and_then(|o| crate::oauth1::flow::endpoint_for(o, path).map(|t| (o, t)))
    {
        x.kind = Kind::OAuth1;
        drop(routing);
        let rid = x.request_id.clone();
        return crate::oauth1::flow::serve(app, snap, o, target, req, &rid, &mut x.token).await;
    }
    // Kept only when it differs from the request's path (rare), so that
    // `req` can move on.
    let routing = match routing {
        Cow::Owned(r) => Some(r),
        Cow::Borrowed(_) => None,
    };
    match proxy(app, snap, policy, peer, req, routing, authority, x).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(reason) = e.client_reason() {
                x.client_error = Some(reason);
            }
            e.into_response(&x.request_id)
        }
    }
}

/// The framing step: Host and authority checked and parsed, the path made
/// canonical (the request's URI is rewritten when its spelling differs).
/// Returns the authority the client addressed and its header value (for
/// `X-Forwarded-Host`).
#[allow(clippy::type_complexity)]
fn prepare(
    req: &mut Request<Incoming>,
    policy: &RequestPolicy,
) -> Result<Option<(Authority, HeaderValue)>, (&'static str, ProxyError)> {
    use crate::request_target as rt;
    let bad = |reason, m| (reason, ProxyError::BadRequest(m));
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("bad_host", "more than one Host header"));
    }
    let host = match host {
        Some(h) => Some((
            rt::parse_host(h.as_bytes())
                .map_err(|_| bad("bad_host", "the Host header is not a valid host[:port]"))?,
            h.clone(),
        )),
        None => None,
    };
    let authority = match (req.uri().authority(), host) {
        (Some(a), h) => {
            rt::check_authority(a)
                .map_err(|_| bad("bad_host", "the request target's authority is not valid"))?;
            if let Some((h, _)) = &h {
                if !rt::same_authority(a, h) {
                    return Err(bad(
                        "bad_host",
                        "the Host header disagrees with the request target",
                    ));
                }
            }
            let v = match h {
                Some((_, v)) => v,
                None => HeaderValue::from_str(a.as_str())
                    .map_err(|_| bad("bad_host", "the request target's authority is not valid"))?,
            };
            Some((a.clone(), v))
        }
        (None, Some(h)) => Some(h),
        // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request
        // without Host; HTTP/2 requests carry `:authority` (RFC 9113 §8.3.1).
        (None, None) if req.version() >= Version::HTTP_11 => {
            return Err(bad("bad_host", "the request has no Host header"));
        }
        (None, None) => None,
    };
    if policy.underscores == UnderscoreHeaders::Reject
        && headers::has_underscore_name(req.headers())
    {
        return Err(bad(
            "header_underscore",
            "header names with underscores are not accepted",
        ));
    }
    let canonical = rt::canonical_path(req.uri().path(), &policy.paths)
        .map_err(|e| ("bad_path", ProxyError::BadPath(e)))?;
    if let Cow::Owned(path) = canonical {
        let mut pq = path;
        if let Some(q) = req.uri().query() {
            pq.push('?');
            pq.push_str(q);
        }
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(
            pq.parse()
                .map_err(|_| bad("bad_path", "the request target cannot be read"))?,
        );
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|_| bad("bad_path", "the request target cannot be read"))?;
    }
    Ok(authority)
}

#[allow(clippy::too_many_arguments)]
async fn proxy(
    app: &App,
    snap: &Snapshot,
    policy: &RequestPolicy,
    peer: SocketAddr,
    req: Request<Incoming>,
    routing: Option<String>,
    authority: Option<(Authority, HeaderValue)>,
    x: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    // 1. Framing (the target was made canonical in `prepare`).
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

    // 2. Route, on the routing reading of the canonical path (see
    //    `request_target::routing_path`) and the normalised host.
    let routing = routing.as_deref().unwrap_or(req.uri().path());
    let host_name = authority
        .as_ref()
        .map(|(a, _)| crate::request_target::host_name(a));
    let idx = router::select(
        snap.routes.iter().map(|r| router::Candidate {
            host: r.cfg.host.as_deref(),
            prefix: r.cfg.path_prefix.as_str(),
            case_insensitive: r.cfg.case_insensitive,
        }),
        host_name,
        routing,
    )
    .ok_or(ProxyError::NotFound)?;
    x.kind = Kind::Route(idx);
    let route = &snap.routes[idx];

    // 3. Authenticate.
    if route.cfg.auth_required {
        match authenticate(app, snap, req.headers()) {
            Ok(t) => x.token = Some(t),
            Err(e) => {
                if let ProxyError::InvalidToken(reason) = &e {
                    app.metrics.token_failure(*reason);
                }
                return Err(e);
            }
        }
    }

    // 4. Authorize.
    if let Some(t) = &x.token {
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
        return Err(ProxyError::Body(BodyError::TooLarge));
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
    let trusted = crate::net::in_any(&snap.config.trusted_proxies, peer.ip());
    // Caller-sent identity headers are forgeries by definition, in any
    // spelling a backend might merge with ours; so are origin headers from
    // anyone but a trusted proxy.
    headers::Scrub {
        underscores: policy.underscores,
        trusted,
        identity: [&names.subject, &names.client_id, &names.scopes],
        extra: &route.cfg.strip_request_headers,
    }
    .apply(h);
    if let Some(t) = &x.token {
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
    forwarded::apply(h, peer.ip(), trusted, authority.as_ref().map(|(_, v)| v));
    h.insert(X_REQUEST_ID, x.request_id.clone());
    h.insert(header::HOST, route.host_header.clone());

    // 7. Sign for the upstream (OAuth 1.0 routes), then forward.
    let rate = MinRate::of(&snap.config.limits);
    let (body, outcome) = match (&route.oauth1, &x.token) {
        (Some(signer), Some(t)) => {
            crate::oauth1::forward::sign(app, signer, &t.subject, &mut parts, body, limit, rate)
                .await?
        }
        _ => LimitedBody::new(body, limit, rate),
    };
    let up = Request::from_parts(parts, body);
    let sent = Instant::now();
    let result = tokio::time::timeout(route.cfg.response_timeout, route.client.request(up)).await;
    route
        .metrics
        .upstream_duration
        .observe(sent.elapsed().as_secs_f64());
    // A request body that failed is the client's fault, whatever the
    // upstream made of the cut-off request.
    if let Some(e) = outcome.get() {
        return Err(ProxyError::Body(e));
    }
    let mut resp = match result {
        Err(_) => {
            app.metrics.upstream_error(&route.cfg.name, "timeout");
            return Err(ProxyError::GatewayTimeout(
                "the upstream did not answer in time",
            ));
        }
        Ok(Err(e)) => {
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

pub use crate::app::authenticate;

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
        strip_segments(path, route.prefix_segments)
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

/// `path` without its first `n` segments (`/a;p=1/b/c`, 1 → `/b/c`): the
/// prefix matched on the routing form, whose segments may carry `;`
/// parameters in the forwarded one, so it is cut by count, not by length.
fn strip_segments(path: &str, n: usize) -> &str {
    if n == 0 {
        return path;
    }
    match path.match_indices('/').nth(n) {
        Some((i, _)) => &path[i..],
        None => "/",
    }
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
    fn prefixes_are_stripped_by_segment() {
        assert_eq!(strip_segments("/api/x/y", 1), "/x/y");
        assert_eq!(strip_segments("/api", 1), "/");
        assert_eq!(strip_segments("/api/", 1), "/");
        assert_eq!(strip_segments("/api;v=2/x", 1), "/x");
        assert_eq!(strip_segments("/a/b/c", 2), "/c");
        assert_eq!(strip_segments("/a/b", 0), "/a/b");
    }

    #[test]
    fn access_token_in_query_is_detected_in_any_spelling() {
        assert!(query_has_access_token("a=1&access_token=x"));
        assert!(query_has_access_token("access%5Ftoken=x"));
        assert!(query_has_access_token("access_token"));
        assert!(!query_has_access_token("my_access_token=x&b=2"));
    }
}
