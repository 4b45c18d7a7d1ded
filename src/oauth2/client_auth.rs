//! Client authentication at the OAuth endpoints (RFC 6749 §2.3.1):
//! `client_secret_basic` or `client_secret_post`, never both; Basic
//! credentials are form-url-decoded before comparison; secrets are compared
//! in constant time; an unknown client id costs what a wrong secret costs;
//! attempts are throttled per (client id, source) and per source.

use super::error::OAuthError;
use super::form::{decode_component, Form};
use crate::app::hash_pool::Busy;
use crate::app::throttle::{Key, Source, Throttle, Throttled};
use crate::app::App;
use crate::config::AuthServerConfig;
use crate::credentials::{Argon2Hash, Client, SecretHash};
use http::header::{self, HeaderMap};
use std::sync::Arc;
use std::time::Duration;

/// Credentials as presented.
struct Presented {
    id: String,
    secret: String,
    basic: bool,
}

fn presented(headers: &HeaderMap, form: &Form) -> Result<Presented, OAuthError> {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let first = auth.next();
    if auth.next().is_some() {
        return Err(OAuthError::InvalidRequest(
            "more than one Authorization header".into(),
        ));
    }
    match (first, form.get("client_secret")) {
        (Some(_), Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method (Basic or client_secret in the body), not both"
                .into(),
        )),
        (Some(h), None) => {
            let bad = || OAuthError::InvalidClient {
                basic: true,
                description: "malformed Basic credentials",
            };
            let v = h.to_str().map_err(|_| bad())?;
            let Some(b64) = v
                .strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
            else {
                return Err(OAuthError::InvalidClient {
                    basic: true,
                    description: "client authentication must use the Basic scheme",
                });
            };
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| bad())?;
            let raw = String::from_utf8(raw).map_err(|_| bad())?;
            let (id, secret) = raw.split_once(':').ok_or_else(bad)?;
            // RFC 6749 §2.3.1: both parts are form-url-encoded before Basic encoding.
            let id = decode_component(id).ok_or_else(bad)?;
            let secret = decode_component(secret).ok_or_else(bad)?;
            if form.get("client_id").is_some_and(|f| f != id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id in the body disagrees with the Basic credentials".into(),
                ));
            }
            Ok(Presented {
                id,
                secret,
                basic: true,
            })
        }
        (None, Some(secret)) => Ok(Presented {
            id: form.require("client_id")?.to_string(),
            secret: secret.to_string(),
            basic: false,
        }),
        (None, None) => Err(OAuthError::InvalidClient {
            basic: false,
            description: "client authentication is required",
        }),
    }
}

/// Authenticates the calling client or explains why not.
///
/// Order matters: the throttle is asked first (a throttled key gets no
/// answer about its secret, not even from the cache); a fast (HMAC) secret
/// is checked inline and a failure then counted; an argon2id secret is
/// looked up in the verified-secret cache, and only a miss spends allowance
/// (given back if the secret was right) and goes to the hash pool.
pub async fn authenticate(
    app: &Arc<App>,
    a: &AuthServerConfig,
    source: Source,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Arc<Client>, OAuthError> {
    let p = presented(headers, form)?;
    let keys = [Key::ClientSource(&p.id, source), Key::Source(source)];
    let throttle = app.throttle.load();
    throttle.check(&keys).map_err(|t| throttled(app, t))?;
    let client = a.registry.clients.get(&p.id).cloned();
    // An unknown client is checked against a dummy hash of the same kind, so
    // the answer takes as long as for a known client with a wrong secret.
    let hash = match &client {
        Some(c) => Some(&c.secret),
        None => a.registry.dummy_client.as_ref(),
    };
    let ok = match hash {
        Some(SecretHash::Argon2id(h)) => {
            let slot_key = app
                .verified_secrets
                .key(&p.id, h.fingerprint(), p.secret.as_bytes());
            // (The dummy hash of an unknown client can "match" too: no refund.)
            let real = client.is_some();
            let check = || spend_and_hash(app, a, &throttle, &keys, h, p.secret.as_bytes(), real);
            // Unknown ids go through the cache too, so identical concurrent
            // attempts are coalesced alike and the answers cannot tell
            // whether a client exists.
            match app.verified_secrets.slot(&slot_key, a.verified_secret_ttl) {
                Some(slot) => {
                    let mut ran = false;
                    let r = slot
                        .get_or_verify(|| {
                            ran = true;
                            check()
                        })
                        .await;
                    if !ran && r == Ok(true) {
                        app.metrics.verified_secret_hits.inc();
                    }
                    r?
                }
                None => check().await?,
            }
        }
        Some(h @ SecretHash::HmacSha256(_)) => {
            let ok = h.verify(p.secret.as_bytes(), a.registry.pepper.as_ref());
            if !ok {
                // Counted after the fact: the check costs nothing.
                throttle.fail(&keys);
            }
            ok
        }
        None => {
            throttle.fail(&keys);
            false
        }
    };
    match client {
        Some(c) if ok => Ok(c),
        _ => {
            app.metrics.client_auth_failures.inc();
            tracing::info!(client_id = %p.id, %source, "client authentication failed");
            Err(OAuthError::InvalidClient {
                basic: p.basic,
                description: "client authentication failed",
            })
        }
    }
}

/// Spends one unit of each key's allowance, then checks `candidate` against
/// an argon2id hash in the hash pool (the source is the first key's). The
/// allowance is given back when the check matched a `real` principal (only
/// failures stay counted) or never ran (a saturated pool is not the
/// caller's failure). Saturation becomes 429 or 503.
pub async fn spend_and_hash(
    app: &App,
    a: &AuthServerConfig,
    throttle: &Throttle,
    keys: &[Key<'_>],
    hash: &Arc<Argon2Hash>,
    candidate: &[u8],
    real: bool,
) -> Result<bool, OAuthError> {
    let spent = throttle.spend(keys).map_err(|t| throttled(app, t))?;
    let source = keys
        .iter()
        .find_map(Key::source)
        .expect("a key with a source");
    let r = app
        .hash_pool
        .verify(source, hash.clone(), candidate.to_vec(), &a.hash_queue)
        .await;
    if r.is_err() || (r == Ok(true) && real) {
        throttle.refund(keys, spent);
    }
    r.map_err(|busy| match busy {
        Busy::SourceFull => OAuthError::RateLimited(Duration::from_secs(1)),
        Busy::Full | Busy::Deadline => OAuthError::Busy(Duration::from_secs(1)),
    })
}

/// A throttle refusal, counted.
pub fn throttled(app: &App, t: Throttled) -> OAuthError {
    app.metrics.rate_limited.with_label_values(&[t.by]).inc();
    OAuthError::RateLimited(t.retry_after)
}
