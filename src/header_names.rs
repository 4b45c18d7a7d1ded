//! Header names with a fixed meaning to valet, shared by the config
//! compiler (which refuses them as identity headers) and the proxy (which
//! strips them).

use http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers per RFC 9110 plus the legacy ones proxies still see.
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
];

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
        || h == X_REQUEST_ID
}

/// The request id valet keeps or assigns, echoed to client and upstream.
pub const X_REQUEST_ID: &str = "x-request-id";

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

/// The start of the name of valet's OAuth 1.0 state cookies: valet's own,
/// never forwarded upstream.
pub const OAUTH1_COOKIE_PREFIX: &str = "__Host-valet_oauth1_";
