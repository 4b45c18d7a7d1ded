//! The one dispatcher: every request, on any listener, passes the framing
//! step (`prepare`: one canonical request target), then goes to the handler
//! it names: valet's OAuth 2.0 endpoints, the OAuth 1.0 flow endpoints, or
//! the proxy. Each request is counted and logged here exactly once.

use crate::app::{App, Snapshot};
use crate::bodies::RequestBody;
use crate::bodies::ResponseBody;
use crate::config::{RequestPolicy, UnderscoreHeaders};
use crate::proxy::{self, Seen};
use crate::refusal::ProxyError;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, Uri, Version};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::header_names::X_REQUEST_ID;

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
    /// Route and token, once the proxy knows them.
    seen: Seen,
    /// `valet_client_errors_total` reason, when the client was at fault.
    client_error: Option<&'static str>,
    done: bool,
}

/// Which handler took the request.
#[derive(Clone, Copy)]
enum Kind {
    Proxy,
    OAuth2,
    OAuth1,
}

/// nginx's "client closed request": the status logged for a request whose
/// answer was never written.
const CLIENT_CLOSED: u16 = 499;

impl Exchange {
    fn finish(&mut self, app: &App, status: u16) {
        self.done = true;
        let snap = &self.snap;
        let (route_name, metrics) = match (self.kind, self.seen.route) {
            (Kind::OAuth2, _) => ("oauth2", &snap.oauth2),
            (Kind::OAuth1, _) => ("oauth1", &snap.oauth1),
            (Kind::Proxy, Some(i)) => (snap.routes[i].cfg.name.as_str(), &snap.routes[i].metrics),
            (Kind::Proxy, None) => ("none", &snap.unmatched),
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
            token = self.seen.token.as_ref().map(|t| t.fingerprint.as_str()),
            client_id = self.seen.token.as_ref().map(|t| &*t.client_id),
            sub = self.seen.token.as_ref().map(|t| &*t.subject),
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
    mut req: Request<RequestBody>,
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
            kind: Kind::Proxy,
            seen: Seen::default(),
            client_error: None,
            done: false,
            snap: snap.clone(),
        },
    };
    let request_id = g.x.request_id.clone();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight = proxy::cors::is_preflight(&req);
    // 0. One canonical request target, before anything looks at it: valet's
    //    own endpoints and the routes match on it, the upstream receives it.
    let mut resp = match prepare(&mut req, &policy) {
        Err(e) => {
            g.x.client_error = Some(e.0);
            e.1.into_response(&request_id)
        }
        Ok(authority) => dispatch(app, &snap, &policy, peer, req, authority, &mut g.x).await,
    };
    // CORS headers on every answer of a path with a policy (refusals
    // included: a page must be able to read why), except the preflight's
    // own, which has them already.
    let cors = match (g.x.kind, g.x.seen.route) {
        (Kind::Proxy, Some(i)) => snap.routes[i].cfg.cors.as_deref(),
        (Kind::Proxy, None) => None,
        (Kind::OAuth2 | Kind::OAuth1, _) => snap.config.cors.as_deref(),
    };
    if let Some(p) = cors.filter(|_| !preflight) {
        proxy::cors::decorate(p, origin.as_ref(), resp.headers_mut());
    }
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    g.x.finish(app, resp.status().as_u16());
    resp
}

/// A CORS preflight to one of valet's own endpoints, answered under the
/// top-level policy (never by the endpoint).
fn own_preflight(
    snap: &Snapshot,
    req: &Request<RequestBody>,
) -> Option<http::Response<crate::bodies::ResponseBody>> {
    let p = snap.config.cors.as_deref()?;
    proxy::cors::is_preflight(req).then(|| proxy::cors::preflight(p, req))
}

async fn dispatch(
    app: &Arc<App>,
    snap: &Snapshot,
    policy: &RequestPolicy,
    peer: SocketAddr,
    req: Request<RequestBody>,
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
        if let Some(r) = own_preflight(snap, &req) {
            return r;
        }
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
        if let Some(r) = own_preflight(snap, &req) {
            return r;
        }
        let rid = x.request_id.clone();
        return crate::oauth1::flow::serve(app, snap, o, target, req, &rid, &mut x.seen.token)
            .await;
    }
    // Kept only when it differs from the request's path (rare), so that
    // `req` can move on.
    let routing = match routing {
        Cow::Owned(r) => Some(r),
        Cow::Borrowed(_) => None,
    };
    let rid = &x.request_id;
    match proxy::serve(
        app,
        snap,
        policy,
        peer,
        req,
        routing,
        authority,
        rid,
        &mut x.seen,
    )
    .await
    {
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
    req: &mut Request<RequestBody>,
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
        && proxy::headers::has_underscore_name(req.headers())
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
