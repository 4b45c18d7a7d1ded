//! The proxy path: one ordered pipeline per request.
//!
//! 0. one canonical request target (Host parsed, path canonical), made by
//!    the dispatcher (`server::dispatch`) before any handler looks at it
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
pub mod cors;
pub mod forwarded;
pub mod headers;
pub mod router;
pub mod upstream_oauth1;
pub mod websocket;
pub mod websocket_frames;

use crate::app::{App, Route, Snapshot};
use crate::bodies::RequestBody;
use crate::config::RequestPolicy;
use crate::tokens::VerifiedToken;
use body::{BodyError, LimitedBody, MinRate};
pub use error::ProxyError;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, Uri, Version};
use http_body_util::Either;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What valet answers with: the upstream's streamed body, or its own.
pub use crate::bodies::ResponseBody;

/// What the proxy learned of a request, for its access-log line and
/// metrics (kept by the caller, so a request cut short still has it).
#[derive(Default)]
pub struct Seen {
    /// Index of the route in the snapshot.
    pub route: Option<usize>,
    pub token: Option<Arc<VerifiedToken>>,
}

/// Steps 1 to 7 for a request whose target `prepare` made canonical;
/// `routing` is its routing reading when that differs from the path.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    app: &App,
    snap: &Snapshot,
    policy: &RequestPolicy,
    peer: SocketAddr,
    mut req: Request<RequestBody>,
    routing: Option<String>,
    authority: Option<(Authority, HeaderValue)>,
    request_id: &HeaderValue,
    x: &mut Seen,
) -> Result<Response<ResponseBody>, ProxyError> {
    check_framing(snap, &req)?;
    let idx = select_route(snap, &req, routing.as_deref(), authority.as_ref()).map_err(|e| {
        // On a validator, the authority's paths say why they are not here
        // (a route that matches them still wins).
        let path = routing.as_deref().unwrap_or(req.uri().path());
        if snap.config.role == crate::config::Role::Validator && authority_path(path) {
            ProxyError::NotOnValidator
        } else {
            e
        }
    })?;
    x.route = Some(idx);
    let route = &snap.routes[idx];
    // A browser's preflight carries no credentials: answered here, before
    // authentication, and never forwarded.
    if let Some(p) = route
        .cfg
        .cors
        .as_deref()
        .filter(|_| cors::is_preflight(&req))
    {
        return Ok(cors::preflight(p, &req));
    }
    authenticate_and_authorize(app, snap, route, &req, x).await?;
    check_declared_length(route, &req)?;
    let upgrade = websocket_upgrade(app, snap, route, peer, &mut req, x)?;
    let (mut parts, body) = req.into_parts();
    rewrite(
        snap,
        route,
        policy,
        peer,
        &mut parts,
        x.token.as_deref(),
        authority.as_ref(),
        request_id,
    )?;
    if upgrade.is_some() {
        websocket::restore_upgrade_headers(&mut parts.headers);
    }
    let mut resp = forward(app, snap, route, parts, body, x.token.as_deref()).await?;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS && upgrade.is_none() {
        // Nothing asked for it (valet strips the caller's Upgrade): the
        // connection would carry another protocol the client never chose.
        app.metrics.upstream_error(&route.cfg.name, "protocol");
        return Err(ProxyError::BadGateway(
            "the upstream switched protocols without being asked",
        ));
    }
    let upgraded = match upgrade {
        Some(u) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
            Some(u.accept(app, route, &mut resp)?)
        }
        _ => None,
    };
    headers::strip_hop_by_hop(resp.headers_mut());
    if let Some(session) = upgraded {
        session.start(app, route, &mut resp);
    }
    Ok(resp.map(Either::Left))
}

/// The paths an authority serves by default (token endpoints, metadata).
fn authority_path(path: &str) -> bool {
    path == "/oauth2"
        || path.starts_with("/oauth2/")
        || path.starts_with("/.well-known/oauth-authorization-server")
        || path.starts_with("/.well-known/openid-configuration")
}

/// 1. Framing (the target was made canonical in `prepare`).
fn check_framing(snap: &Snapshot, req: &Request<RequestBody>) -> Result<(), ProxyError> {
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
    Ok(())
}

/// 2. Route, on the routing reading of the canonical path (see
///    `request_target::routing_path`) and the normalised host.
fn select_route(
    snap: &Snapshot,
    req: &Request<RequestBody>,
    routing: Option<&str>,
    authority: Option<&(Authority, HeaderValue)>,
) -> Result<usize, ProxyError> {
    let routing = routing.unwrap_or(req.uri().path());
    let host_name = authority.map(|(a, _)| crate::request_target::host_name(a));
    router::select(
        snap.routes.iter().map(|r| router::Candidate {
            host: r.cfg.host.as_deref(),
            prefix: r.cfg.path_prefix.as_str(),
            case_insensitive: r.cfg.case_insensitive,
        }),
        host_name,
        routing,
    )
    .ok_or(ProxyError::NotFound)
}

/// 3. Authenticate; 4. authorize: the route's issuers and audiences, then
///    its scopes.
async fn authenticate_and_authorize(
    app: &App,
    snap: &Snapshot,
    route: &Route,
    req: &Request<RequestBody>,
    x: &mut Seen,
) -> Result<(), ProxyError> {
    // Stale, on a route that asks to fail closed; or never read at all
    // (a validator that started without the store holds none of its
    // revocations): refused rather than served unchecked.
    let never_read = route.cfg.auth_required && !app.revocations.synced();
    if never_read || (route.cfg.fail_closed_when_stale && app.revocations_stale()) {
        return Err(ProxyError::RevocationsStale);
    }
    if route.cfg.auth_required {
        match authenticate(app, snap, req.headers()).await {
            Ok(t) => x.token = Some(t),
            Err(e) => {
                if let ProxyError::InvalidToken(reason) = &e {
                    app.metrics.token_failure(*reason);
                }
                return Err(e);
            }
        }
    }
    let Some(t) = &x.token else {
        return Ok(());
    };
    let refuse = |e| {
        app.metrics.token_failure(e);
        Err(ProxyError::InvalidToken(e))
    };
    if let Some(allowed) = &route.cfg.auth_issuers {
        if !allowed.contains(&t.issuer) {
            return refuse(crate::tokens::TokenError::IssuerNotAccepted);
        }
    }
    let auds = &route.cfg.auth_audiences;
    if !auds.is_empty() && !t.audiences.iter().any(|a| auds.iter().any(|r| **r == **a)) {
        return refuse(crate::tokens::TokenError::WrongAudience);
    }
    if !route.cfg.scopes.iter().all(|s| t.has_scope(s)) {
        return Err(ProxyError::InsufficientScope(route.scope_list.clone()));
    }
    Ok(())
}

/// 5. Body limit: refuse early when the length is declared.
fn check_declared_length(route: &Route, req: &Request<RequestBody>) -> Result<(), ProxyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.cfg.max_body_size) {
        return Err(ProxyError::Body(BodyError::TooLarge));
    }
    Ok(())
}

/// 5b. A WebSocket upgrade: only where the route allows it, and within
///     the sessions valet may hold open.
fn websocket_upgrade(
    app: &App,
    snap: &Snapshot,
    route: &Route,
    peer: SocketAddr,
    req: &mut Request<RequestBody>,
    x: &Seen,
) -> Result<Option<websocket::Pending>, ProxyError> {
    if !websocket::is_upgrade(req) {
        return Ok(None);
    }
    let Some(policy) = route.cfg.websocket else {
        return Err(ProxyError::UpgradeNotAllowed);
    };
    // RFC 6455 §4.1: a GET, and nothing after the headers. A body an
    // upstream never reads would be the next request on its connection.
    let bodyless = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_none_or(|v| v == "0")
        && !req.headers().contains_key(header::TRANSFER_ENCODING);
    if req.method() != http::Method::GET || !bodyless {
        return Err(ProxyError::BadRequest(
            "a WebSocket upgrade is a GET without a body",
        ));
    }
    let offer = websocket::Offer::of(req.headers()).map_err(ProxyError::BadRequest)?;
    let permit = app
        .websockets
        .clone()
        .try_acquire_owned()
        .map_err(|_| ProxyError::TooManyWebSockets)?;
    let who: Box<str> = match &x.token {
        Some(t) => t.namespaced_subject().into(),
        None => peer.ip().to_string().into(),
    };
    let held = websocket::Held::take(
        &app.websocket_holders,
        who,
        snap.config.limits.max_websockets_per_subject,
    )
    .ok_or(ProxyError::TooManyWebSocketsHere)?;
    Ok(Some(websocket::Pending {
        client: hyper::upgrade::on(req),
        policy,
        permit: (permit, held),
        offer,
    }))
}

/// 6. Rewrite: the upstream's URI, hop-by-hop and forged headers out,
///    valet's identity headers in, `X-Forwarded-*`, request id, Host.
#[allow(clippy::too_many_arguments)]
fn rewrite(
    snap: &Snapshot,
    route: &Route,
    policy: &RequestPolicy,
    peer: SocketAddr,
    parts: &mut http::request::Parts,
    token: Option<&VerifiedToken>,
    authority: Option<&(Authority, HeaderValue)>,
    request_id: &HeaderValue,
) -> Result<(), ProxyError> {
    parts.uri = upstream_uri(route, &parts.uri)?;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    // To an upstream that may speak HTTP/2, `te: trailers` is the one TE
    // value passed on (gRPC needs it; HTTP/2 allows no other, RFC 9113
    // §8.2.2); otherwise TE is hop-by-hop like the rest.
    let te_trailers = route.cfg.upstream.protocol != crate::config::UpstreamProtocol::Http1
        && h.get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    headers::strip_hop_by_hop(h);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
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
        identity: names.all(),
        extra: &route.cfg.strip_request_headers,
    }
    .apply(h);
    headers::strip_own_cookies(h);
    if let Some(t) = token {
        inject_identity(route, names, t, h);
    }
    forwarded::apply(h, peer.ip(), trusted, authority.map(|(_, v)| v));
    h.insert(crate::header_names::X_REQUEST_ID, request_id.clone());
    h.insert(header::HOST, route.host_header.clone());
    Ok(())
}

/// The validated identity, as the route asks for it.
fn inject_identity(
    route: &Route,
    names: &crate::config::IdentityHeaderNames,
    t: &VerifiedToken,
    h: &mut HeaderMap,
) {
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
    if inject.issuer {
        h.insert(names.issuer.clone(), t.issuer_header.clone());
    }
    for (name, claim) in &route.cfg.inject_claims {
        let value = crate::tokens::issuers::claim(&t.claims, claim)
            .and_then(crate::tokens::issuers::header_text)
            .and_then(|v| HeaderValue::from_str(&v).ok());
        // A claim the token lacks (or that no header can carry) is
        // simply not sent; the caller's copy is gone either way.
        if let Some(v) = value {
            h.insert(name.clone(), v);
        }
    }
}

/// 7. Sign for the upstream (OAuth 1.0 routes), then forward within the
///    route's response timeout.
async fn forward(
    app: &App,
    snap: &Snapshot,
    route: &Route,
    mut parts: http::request::Parts,
    body: RequestBody,
    token: Option<&VerifiedToken>,
) -> Result<Response<hyper::body::Incoming>, ProxyError> {
    let limit = route.cfg.max_body_size;
    let rate = MinRate::of(&snap.config.limits);
    let mut signed_with = None;
    let (body, outcome) = match (&route.oauth1, token) {
        (Some(signer), Some(t)) => {
            let sub = t.namespaced_subject();
            let (b, o, used) =
                upstream_oauth1::sign(app, signer, sub, &mut parts, body, limit, rate).await?;
            signed_with = used;
            (b, o)
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
    let resp = match result {
        Err(_) => {
            app.metrics.upstream_error(&route.cfg.name, "timeout");
            return Err(ProxyError::GatewayTimeout(
                "the upstream did not answer in time",
            ));
        }
        Ok(Err(e)) => return Err(upstream_failure(app, route, &e)),
        Ok(Ok(r)) => r,
    };
    if let (Some(s), Some(t)) = (&route.oauth1, token) {
        if resp.status() == http::StatusCode::UNAUTHORIZED {
            let sub = t.namespaced_subject();
            upstream_oauth1::refused(
                app,
                s,
                &route.cfg.name,
                sub,
                signed_with.as_deref(),
                resp.headers(),
            )
            .await?;
        }
    }
    Ok(resp)
}

/// Why the upstream call failed, counted and logged.
fn upstream_failure(app: &App, route: &Route, e: &hyper_util::client::legacy::Error) -> ProxyError {
    if is_timeout(e) {
        app.metrics
            .upstream_error(&route.cfg.name, "connect_timeout");
        return ProxyError::GatewayTimeout("connecting to the upstream timed out");
    }
    let (kind, why) = match tls_failure(e) {
        Some(TlsFailure::Certificate) => (
            "tls",
            "the upstream's TLS certificate was not accepted (untrusted, or not for this name)",
        ),
        Some(TlsFailure::Handshake) => ("tls", "the TLS handshake with the upstream failed"),
        None if e.is_connect() => ("connect", "the upstream refused the connection"),
        None => ("reset", "the upstream closed the connection"),
    };
    app.metrics.upstream_error(&route.cfg.name, kind);
    tracing::warn!(route = %route.cfg.name, error = %error_chain(e), "upstream request failed");
    ProxyError::BadGateway(why)
}

pub use crate::app::authenticate;

/// True if any query parameter is named `access_token` (also percent-encoded).
fn query_has_access_token(q: &str) -> bool {
    q.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        name == "access_token"
            || (name.contains('%')
                && percent_encoding::percent_decode_str(name)
                    .decode_utf8_lossy()
                    .eq_ignore_ascii_case("access_token"))
    })
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

enum TlsFailure {
    Certificate,
    Handshake,
}

/// Whether connecting failed in TLS, and how: a rustls error somewhere in
/// the chain. An `io::Error` holds its error inside (`get_ref`), not as its
/// source, and may be nested in another.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let mut inside = Some(err);
        while let Some(i) = inside {
            if let Some(t) = i.downcast_ref::<rustls::Error>() {
                return Some(match t {
                    rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented => TlsFailure::Certificate,
                    _ => TlsFailure::Handshake,
                });
            }
            inside = i
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|x| x as &(dyn std::error::Error + 'static));
        }
        cur = err.source();
    }
    None
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
        assert!(query_has_access_token("%61ccess%5ftoken=x"));
        assert!(query_has_access_token("x=1&ACCESS%5FTOKEN"));
        assert!(!query_has_access_token("my_access_token=x&b=2"));
    }
}
