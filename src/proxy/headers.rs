//! Header hygiene between caller and upstream (RFC 9110 §7.6.1): hop-by-hop
//! headers, including any named in `Connection`, never cross valet; nor do
//! caller headers that an upstream would read as an identity, an origin or
//! a different URL.

use crate::config::UnderscoreHeaders;
use http::header::{self, HeaderMap, HeaderName};

/// Headers that tell an upstream who the client is or which URL it asked
/// for. From anyone but a trusted proxy they are forgeries: the URL ones
/// rewrite the path in IIS and Symfony (a route bypass), the address ones
/// fool IP allow-lists.
const ORIGIN_HEADERS: [&str; 16] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-host",
    "x-host",
    "forwarded",
];

/// What a request's headers are scrubbed of, besides hop-by-hop headers.
pub struct Scrub<'a> {
    pub underscores: UnderscoreHeaders,
    /// The peer is a trusted proxy: its forwarding headers stay.
    pub trusted: bool,
    /// Identity headers valet sets (caller copies are always removed).
    pub identity: [&'a HeaderName; 4],
    /// The route's own `strip_request_headers`.
    pub extra: &'a [HeaderName],
}

/// `a` and `b` are the same name once `_` reads as `-` (names are lowercase).
fn same_modulo_underscore(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (x == b'_' && y == b'-') || (x == b'-' && y == b'_'))
}

fn is_origin_header(n: &str) -> bool {
    n.starts_with("x-forwarded-") || ORIGIN_HEADERS.contains(&n)
}

impl Scrub<'_> {
    /// Whether a caller header named `n` must not reach the upstream.
    fn removes(&self, n: &str) -> bool {
        if n.contains('_') {
            // Any spelling that CGI-style servers merge with a managed name
            // goes, whatever the setting; the rest per the setting.
            let dashed_managed = || {
                self.identity
                    .iter()
                    .any(|h| same_modulo_underscore(n, h.as_str()))
                    || self
                        .extra
                        .iter()
                        .any(|h| same_modulo_underscore(n, h.as_str()))
                    || ORIGIN_HEADERS.iter().any(|h| same_modulo_underscore(n, h))
                    || (n.len() > 12 && same_modulo_underscore(&n[..12], "x-forwarded-"))
                    || RESERVED.iter().any(|h| same_modulo_underscore(n, h))
            };
            return self.underscores != UnderscoreHeaders::Allow || dashed_managed();
        }
        self.identity.iter().any(|h| h.as_str() == n)
            || self.extra.iter().any(|h| h.as_str() == n)
            || (!self.trusted && is_origin_header(n))
    }

    /// Removes from `h` every caller header this scrub names. Allocates only
    /// when there is something to remove.
    pub fn apply(&self, h: &mut HeaderMap) {
        let doomed: Vec<HeaderName> = h
            .keys()
            .filter(|n| self.removes(n.as_str()))
            .cloned()
            .collect();
        for n in doomed {
            h.remove(n);
        }
    }
}

/// Removes valet's own cookies (the OAuth 1.0 state) from the `Cookie`
/// headers: they are for valet's callback, not for upstreams. Allocates
/// only when one is there.
pub fn strip_own_cookies(h: &mut HeaderMap) {
    use crate::header_names::OAUTH1_COOKIE_PREFIX as OWN;
    // Built once: the searcher's setup costs more than a search.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(OWN.as_bytes()));
    let has = |v: &http::HeaderValue| FINDER.find(v.as_bytes()).is_some();
    if !h.get_all(http::header::COOKIE).iter().any(has) {
        return;
    }
    let kept: Vec<http::HeaderValue> = h
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| {
            let pairs: Vec<&[u8]> = v
                .as_bytes()
                .split(|b| *b == b';')
                .filter(|p| !p.trim_ascii_start().starts_with(OWN.as_bytes()))
                .collect();
            let joined = pairs
                .iter()
                .map(|p| p.trim_ascii())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(&b"; "[..]);
            (!joined.is_empty())
                .then(|| http::HeaderValue::from_bytes(&joined).ok())
                .flatten()
        })
        .collect();
    h.remove(http::header::COOKIE);
    for v in kept {
        h.append(http::header::COOKIE, v);
    }
}

/// Whether a request carries a header name with `_` (for `reject`).
pub fn has_underscore_name(h: &HeaderMap) -> bool {
    h.keys().any(|n| n.as_str().contains('_'))
}

/// Names valet sets, checks or strips itself.
const RESERVED: [&str; 13] = [
    "host",
    "authorization",
    "content-length",
    "content-type",
    "cookie",
    "transfer-encoding",
    "connection",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-authorization",
    "x-request-id",
];

use crate::header_names::HOP_BY_HOP;

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Collect first: names in `Connection` must go even if listed twice.
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(h: &[(&str, &str)], underscores: UnderscoreHeaders, trusted: bool) -> Vec<String> {
        let mut m = HeaderMap::new();
        for (k, v) in h {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (s, c, sc, i) = (
            HeaderName::from_static("x-valet-subject"),
            HeaderName::from_static("x-valet-client-id"),
            HeaderName::from_static("x-valet-scopes"),
            HeaderName::from_static("x-valet-issuer"),
        );
        let extra = [HeaderName::from_static("x-debug")];
        Scrub {
            underscores,
            trusted,
            identity: [&s, &c, &sc, &i],
            extra: &extra,
        }
        .apply(&mut m);
        let mut left: Vec<String> = m.keys().map(|k| k.to_string()).collect();
        left.sort();
        left
    }

    #[test]
    fn identity_spellings_never_pass() {
        let h = [
            ("x_valet_subject", "admin"),
            ("X-Valet_Subject", "admin"),
            ("x-valet-subject", "admin"),
            ("x_debug", "1"),
            ("x-debug", "1"),
            ("x_forwarded_for", "1.1.1.1"),
            ("x_real_ip", "1.1.1.1"),
            ("content_length", "5"),
            ("x_user_agent_ok", "1"),
            ("accept", "*/*"),
        ];
        assert_eq!(scrubbed(&h, UnderscoreHeaders::Drop, false), ["accept"]);
        assert_eq!(
            scrubbed(&h, UnderscoreHeaders::Allow, true),
            ["accept", "x_user_agent_ok"]
        );
    }

    #[test]
    fn origin_headers_pass_only_from_trusted_proxies() {
        let h = [
            ("x-real-ip", "1.1.1.1"),
            ("true-client-ip", "1.1.1.1"),
            ("x-client-ip", "1.1.1.1"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-server", "a"),
            ("accept", "*/*"),
        ];
        assert_eq!(scrubbed(&h, UnderscoreHeaders::Drop, false), ["accept"]);
        assert_eq!(scrubbed(&h, UnderscoreHeaders::Drop, true).len(), h.len());
    }

    #[test]
    fn connection_named_headers_are_removed_too() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret".parse().unwrap());
        h.append("connection", "x-other".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
