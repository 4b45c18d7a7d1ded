//! A route's OAuth 1.0 provider as the proxy signs with it (RFC 5849 §3):
//! the provider, the origin it signs for, and its metric handles resolved
//! when the snapshot is built.

use crate::config::Provider;
use crate::metrics::Metrics;
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
