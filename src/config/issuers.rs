//! `tokens.issuers`: trusted external issuers, their keys (a `jwks_uri`,
//! discovery, or files) and the shape of their tokens.

use super::error::Collector;
use super::keys::{load_keys, resolve};
use super::raw::RawIssuer;
use crate::tokens::issuers::{normalize_type, KeySource, TrustedIssuer};
use crate::tokens::jwks::RemoteSource;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Fresh time of a key set whose answer sets none (and the floor).
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(300);
/// Longest a key set is trusted without a refetch (the ceiling).
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(86400);
/// An unknown `kid` refetches at most once in this interval per issuer.
pub const DEFAULT_UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(5);
/// And at most this many times a minute.
pub const DEFAULT_MAX_FETCHES_PER_MINUTE: u32 = 6;
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default clock skew for an issuer that sets none.
pub const DEFAULT_ISSUER_SKEW: Duration = Duration::from_secs(60);
/// The longest `max_refresh` accepted.
pub const MAX_REFRESH_CAP: Duration = Duration::from_secs(7 * 86400);

pub(super) fn compile(
    raw: &[RawIssuer],
    own_issuer: &str,
    default_audiences: &[String],
    base: &Path,
    c: &mut Collector<'_>,
) -> Vec<Arc<TrustedIssuer>> {
    let mut out: Vec<Arc<TrustedIssuer>> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = format!("tokens.issuers[{i}]");
        if r.issuer.is_empty() || r.issuer.chars().any(char::is_control) {
            c.at(
                &format!("{at}.issuer"),
                "an issuer is a non-empty URL without control characters",
            );
        }
        let with_user_info = r
            .issuer
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().contains('@')))
            .unwrap_or(false);
        if with_user_info {
            c.at(
                &format!("{at}.issuer"),
                "an issuer URL cannot carry user info (user:pass@)",
            );
        }
        if r.issuer == own_issuer {
            c.at(
                &format!("{at}.issuer"),
                "this is valet's own issuer (tokens.issuer); its keys are tokens.keys",
            );
        }
        let name = r.name.clone().unwrap_or_else(|| r.issuer.clone());
        if out.iter().any(|o| o.issuer == r.issuer || o.name == name) {
            c.at(
                &at,
                format!("issuer `{}` (name `{name}`) is listed twice", r.issuer),
            );
        }
        // A name routes use must mean one issuer only.
        let clashes =
            name == own_issuer || (name != r.issuer && raw.iter().any(|o| o.issuer == name));
        if clashes {
            c.at(
                &format!("{at}.name"),
                format!("name `{name}` is another issuer's URL"),
            );
        }
        let Some(keys) = key_source(r, &at, base, c) else {
            continue;
        };
        let list = |v: &Option<Vec<String>>, def: &[&str]| -> Vec<String> {
            v.clone()
                .unwrap_or_else(|| def.iter().map(|s| s.to_string()).collect())
        };
        let audiences = r
            .audiences
            .clone()
            .unwrap_or_else(|| default_audiences.to_vec());
        if audiences.is_empty() {
            c.at(
                &format!("{at}.audiences"),
                "at least one accepted audience is needed",
            );
        }
        let token_types: Vec<String> = list(&r.token_types, &["at+jwt"])
            .iter()
            .map(|t| normalize_type(t))
            .collect();
        if token_types.is_empty() {
            c.at(
                &format!("{at}.token_types"),
                "list at least one accepted header typ (at+jwt, JWT)",
            );
        }
        let client_id_claims = list(&r.client_id_claims, &["client_id"]);
        if client_id_claims.is_empty() {
            c.at(
                &format!("{at}.client_id_claims"),
                "list the claim(s) that carry the client id",
            );
        }
        out.push(Arc::new(TrustedIssuer {
            name,
            issuer: r.issuer.clone(),
            keys,
            audiences,
            token_types,
            required_claims: list(&r.required_claims, &["sub"]),
            client_id_claims,
            scope_claims: list(&r.scope_claims, &["scope"]),
            clock_skew: r.clock_skew.map_or(DEFAULT_ISSUER_SKEW, |d| d.0),
        }));
    }
    out
}

/// Exactly one of `jwks_uri`, `discovery: true` and `keys`.
fn key_source(r: &RawIssuer, at: &str, base: &Path, c: &mut Collector<'_>) -> Option<KeySource> {
    let given = [r.jwks_uri.is_some(), r.discovery, !r.keys.is_empty()];
    if given.iter().filter(|g| **g).count() != 1 {
        c.at(
            at,
            "give the issuer's keys one way: jwks_uri, discovery: true, or keys (public key files)",
        );
        return None;
    }
    if !r.keys.is_empty() {
        if r.keys
            .iter()
            .any(|k| k.private_key_file.is_some() || k.generate_if_missing)
        {
            c.at(
                &format!("{at}.keys"),
                "an external issuer's keys are public_key_file entries only",
            );
            return None;
        }
        return Some(KeySource::Files(load_keys(
            &r.keys,
            &format!("{at}.keys"),
            base,
            c,
        )));
    }
    if let Some(u) = &r.jwks_uri {
        let https = crate::outbound::callable_url(u).is_ok_and(|u| u.scheme_str() == Some("https"));
        if !https {
            c.at(
                &format!("{at}.jwks_uri"),
                format!("`{u}` is not an https URL without user info"),
            );
        }
    }
    let issuer_url = crate::outbound::callable_url(&r.issuer)
        .ok()
        .filter(|u| u.scheme_str() == Some("https"));
    if r.discovery && issuer_url.is_none() {
        c.at(
            &format!("{at}.discovery"),
            "discovery needs an https issuer URL without user info",
        );
    }
    let jwks_hosts = jwks_hosts(r, issuer_url.as_ref(), at, c);
    let d = |v: Option<super::units::ConfigDuration>, def: Duration| v.map_or(def, |v| v.0);
    let ca_file = r.ca_file.as_deref().map(|f| resolve(base, f));
    let source = RemoteSource {
        issuer: r.issuer.clone(),
        jwks_uri: r.jwks_uri.clone(),
        jwks_hosts,
        tls: match crate::certs::client_config(ca_file.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                c.at(&format!("{at}.ca_file"), e);
                return None;
            }
        },
        ca_digest: ca_file
            .as_deref()
            .map(|f| crate::digest::sha256(&std::fs::read(f).unwrap_or_default())),
        min_refresh: d(r.min_refresh, DEFAULT_MIN_REFRESH),
        max_refresh: d(r.max_refresh, DEFAULT_MAX_REFRESH),
        unknown_kid_interval: d(r.unknown_kid_interval, DEFAULT_UNKNOWN_KID_INTERVAL),
        max_fetches_per_minute: r
            .max_fetches_per_minute
            .unwrap_or(DEFAULT_MAX_FETCHES_PER_MINUTE),
        fetch_timeout: d(r.fetch_timeout, DEFAULT_FETCH_TIMEOUT),
    };
    if source.min_refresh.is_zero()
        || source.min_refresh > source.max_refresh
        || source.max_refresh > MAX_REFRESH_CAP
    {
        c.at(
            &format!("{at}.min_refresh"),
            "min_refresh must be positive and at most max_refresh, which is at most 7d",
        );
    }
    if source.fetch_timeout.is_zero() || source.fetch_timeout > Duration::from_secs(60) {
        c.at(
            &format!("{at}.fetch_timeout"),
            "fetch_timeout must be between 1ms and 60s",
        );
    }
    if source.max_fetches_per_minute == 0 {
        c.at(
            &format!("{at}.max_fetches_per_minute"),
            "max_fetches_per_minute must be at least 1",
        );
    }
    Some(KeySource::Remote(source))
}

/// Where a discovered `jwks_uri` may be: the issuer's own host (and port),
/// and the hosts `jwks_hosts` names (`host` for port 443, or `host:port`).
/// Only discovery uses them; a configured `jwks_uri` is the operator's own
/// choice.
fn jwks_hosts(
    r: &RawIssuer,
    issuer_url: Option<&http::Uri>,
    at: &str,
    c: &mut Collector<'_>,
) -> Vec<(String, u16)> {
    let mut hosts: Vec<(String, u16)> = Vec::new();
    if !r.discovery {
        if r.jwks_hosts.is_some() {
            c.at(
                &format!("{at}.jwks_hosts"),
                "jwks_hosts limits where a discovered jwks_uri may be; it applies with discovery: true only",
            );
        }
        return hosts;
    }
    hosts.extend(issuer_url.and_then(crate::outbound::host_and_port));
    for (j, h) in r.jwks_hosts.iter().flatten().enumerate() {
        let parsed = h
            .parse::<http::uri::Authority>()
            .ok()
            .filter(|a| !a.as_str().contains('@') && !a.host().is_empty());
        match parsed {
            Some(a) => hosts.push((a.host().to_ascii_lowercase(), a.port_u16().unwrap_or(443))),
            None => c.at(
                &format!("{at}.jwks_hosts[{j}]"),
                format!("`{h}` is not a host name or host:port (no scheme, path or user info)"),
            ),
        }
    }
    hosts
}
