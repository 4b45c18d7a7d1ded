//! Header hygiene between caller and upstream (RFC 9110 §7.6.1): hop-by-hop
//! headers, including any named in `Connection`, never cross valet.

use http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers per RFC 9110 plus the legacy ones proxies still see.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
];

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

/// Header names that cannot be identity headers (valet sets or strips them).
pub fn is_reserved(h: &HeaderName) -> bool {
    HOP_BY_HOP.contains(h)
        || [
            header::HOST,
            header::AUTHORIZATION,
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::COOKIE,
        ]
        .contains(h)
        || h.as_str().starts_with("x-forwarded-")
        || h == "x-request-id"
}

/// Whether the body is `application/x-www-form-urlencoded` (parameters ignored).
pub fn is_form_urlencoded(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
