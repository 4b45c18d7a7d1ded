//! Client authentication at the OAuth endpoints (RFC 6749 §2.3.1):
//! `client_secret_basic` or `client_secret_post`, never both; Basic
//! credentials are form-url-decoded before comparison; secrets are compared
//! in constant time; an unknown client id costs what a wrong secret costs;
//! repeated failures per client id and per source address are refused.

use super::error::OAuthError;
use super::form::{decode_component, Form};
use super::registry::Client;
use crate::app::App;
use crate::config::AuthServerConfig;
use http::header::{self, HeaderMap};
use std::net::SocketAddr;
use std::sync::Arc;

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
pub async fn authenticate(
    app: &Arc<App>,
    a: &AuthServerConfig,
    peer: SocketAddr,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Arc<Client>, OAuthError> {
    let p = presented(headers, form)?;
    let keys = [
        (format!("client:{}", p.id), "client"),
        (format!("address:{}", peer.ip()), "address"),
    ];
    for (key, by) in &keys {
        if let Some(after) = app
            .limiter
            .blocked(key, a.max_failed_auth, a.failed_auth_window)
        {
            app.metrics.rate_limited.with_label_values(&[by]).inc();
            return Err(OAuthError::RateLimited(after));
        }
    }
    let client = a.registry.clients.get(&p.id).cloned();
    // An unknown client is checked against a dummy hash of the same kind, so
    // the answer takes as long as for a known client with a wrong secret.
    let hash = match &client {
        Some(c) => Some(c.secret.clone()),
        None => a.registry.dummy_client.clone(),
    };
    let pepper = a.registry.pepper.clone();
    let secret = p.secret;
    let ok = tokio::task::spawn_blocking(move || {
        hash.is_some_and(|h| h.verify(secret.as_bytes(), pepper.as_ref()))
    })
    .await
    .unwrap_or(false);
    match client {
        Some(c) if ok => Ok(c),
        _ => {
            for (key, _) in &keys {
                app.limiter.failure(key, a.failed_auth_window);
            }
            app.metrics.client_auth_failures.inc();
            tracing::info!(client_id = %p.id, peer = %peer.ip(), "client authentication failed");
            Err(OAuthError::InvalidClient {
                basic: p.basic,
                description: "client authentication failed",
            })
        }
    }
}
