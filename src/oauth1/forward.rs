//! Signing forwarded requests (RFC 5849 §3) for routes with
//! `upstream_auth: {oauth1: provider}`: the subject's stored token (or the
//! provider's pre-provisioned one) signs the request as the upstream will
//! see it. Form bodies are read (within the route's limit) because their
//! parameters are signed; every other body streams untouched.

use crate::app::App;
use crate::bodies::{BodyError, BodyOutcome, LimitedBody, MinRate};
use crate::config::Provider;
use crate::metrics::Metrics;
use crate::refusal::ProxyError;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A route's provider with its metric handles resolved up front.
pub struct RouteSigner {
    pub provider: Arc<Provider>,
    /// Signed instead of the upstream's scheme and authority (via a proxy).
    pub signed_origin: Option<String>,
    pub signed: IntCounter,
    pub unauthorized: IntCounter,
    warn_throttle: Throttle,
}

/// Lets an event through at most once per `WARN_EVERY_SECS`.
struct Throttle {
    /// Unix second of the last event let through.
    last: AtomicI64,
}

impl Throttle {
    fn new() -> Self {
        Throttle {
            last: AtomicI64::new(i64::MIN),
        }
    }

    fn allow(&self, now: i64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        now.saturating_sub(last) >= WARN_EVERY_SECS
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// At most one "upstream refused a signed request" warning per route and
/// minute: a token revoked at the provider fails every request until the
/// subject authorizes again, and the counter already says how often.
const WARN_EVERY_SECS: i64 = 60;

impl RouteSigner {
    pub fn new(m: &Metrics, provider: Arc<Provider>, signed_origin: Option<String>) -> Self {
        RouteSigner {
            signed_origin,
            warn_throttle: Throttle::new(),
            signed: m.oauth1_signed.with_label_values(&[&provider.name]),
            unauthorized: m
                .oauth1_upstream_unauthorized
                .with_label_values(&[&provider.name]),
            provider,
        }
    }
}

impl RouteSigner {
    /// Records an upstream 401 to a signed request of `route`.
    pub fn upstream_refused(&self, route: &str) {
        self.unauthorized.inc();
        if self.warn_throttle.allow(crate::revocation::now()) {
            tracing::warn!(route, provider = %self.provider.name, refused_total = self.unauthorized.get(), "the upstream refused an OAuth 1.0-signed request (401); the provider token may be revoked (logged at most once a minute)");
        }
    }
}

/// Sets `Authorization: OAuth ...` on the upstream request `parts` (whose
/// URI is already the upstream's), returning the body to send.
pub async fn sign(
    app: &App,
    s: &RouteSigner,
    subject: &str,
    parts: &mut Parts,
    body: Incoming,
    limit: u64,
    rate: MinRate,
) -> Result<(LimitedBody, BodyOutcome), ProxyError> {
    let p = &s.provider;
    let creds = match &p.shared_token {
        Some(t) => t.clone(),
        None => app
            .oauth1_store()
            .and_then(|st| st.get(&p.name, subject))
            .ok_or_else(|| ProxyError::OAuth1Required {
                provider: p.name.clone(),
                authorize_url: p.start_url.clone(),
            })?,
    };
    let (body, outcome, form) = if crate::header_names::is_form_urlencoded(&parts.headers) {
        let (limited, outcome) = LimitedBody::new(body, limit, rate);
        let bytes = limited
            .collect()
            .await
            .map_err(|_| ProxyError::Body(outcome.get().unwrap_or(BodyError::Malformed)))?
            .to_bytes();
        let form: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
        parts.headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(bytes.len() as u64),
        );
        parts.headers.remove(header::TRANSFER_ENCODING);
        (LimitedBody::full(bytes), outcome, form)
    } else {
        let (b, e) = LimitedBody::new(body, limit, rate);
        (b, e, Vec::new())
    };
    let url = match &s.signed_origin {
        Some(o) => format!(
            "{o}{}",
            parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
        ),
        None => parts.uri.to_string(),
    };
    // Protocol parameters are valet's alone: a caller's `oauth_token` in the
    // query or body could otherwise shadow or contradict the header's.
    let mut params = super::signing::query_params(&url);
    params.extend(form);
    if params.iter().any(|(k, _)| k.starts_with("oauth_")) {
        return Err(ProxyError::BadRequest(
            "parameters named oauth_* are reserved on this route: valet signs the request itself",
        ));
    }
    let secret = std::str::from_utf8(creds.secret.expose()).unwrap_or("");
    let authz = p
        .consumer
        .authorization(
            Some((&creds.token, secret)),
            &[],
            parts.method.as_str(),
            &url,
            params,
        )
        .map_err(|_| ProxyError::BadRequest("the request target cannot be signed"))?;
    parts.headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&authz).map_err(|_| ProxyError::BadRequest("unsignable"))?,
    );
    s.signed.inc();
    Ok((body, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_warning_is_let_through_once_a_minute() {
        let t = Throttle::new();
        assert!(t.allow(1_000));
        assert!(!t.allow(1_000));
        assert!(!t.allow(1_059));
        assert!(t.allow(1_060));
        assert!(!t.allow(1_061));
    }
}
