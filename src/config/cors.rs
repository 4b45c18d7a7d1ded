//! CORS policies (a route's, or the top-level one for valet's own token,
//! revocation and OAuth 1.0 endpoints): parsed and checked here, applied by
//! `proxy::cors`.

use super::error::Collector;
use super::units::ConfigDuration;
use http::header::{HeaderName, HeaderValue};
use http::Method;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    /// Exact origins (`https://app.example.com`, as browsers send them), or
    /// `["*"]` (then without credentials).
    pub(super) allowed_origins: Vec<String>,
    /// Beyond GET, HEAD and POST (always allowed). Default: none.
    #[serde(default)]
    pub(super) allowed_methods: Vec<String>,
    /// Request headers a page may send. Default: authorization, content-type.
    pub(super) allowed_headers: Option<Vec<String>>,
    /// Response headers a page may read beyond the safelisted ones.
    #[serde(default)]
    pub(super) exposed_headers: Vec<String>,
    /// Cookies and `Authorization` from the browser's own store. Default: false.
    #[serde(default)]
    pub(super) allow_credentials: bool,
    /// How long a browser may keep a preflight's answer. Default: 10m.
    pub(super) max_age: Option<ConfigDuration>,
}

/// Which origins a policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    /// Exact, as browsers serialise them.
    List(Vec<HeaderValue>),
}

/// A compiled CORS policy; the header values are made once, here.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    pub origins: CorsOrigins,
    /// Methods beyond the safelisted GET, HEAD and POST.
    pub methods: Vec<Method>,
    /// `Access-Control-Allow-Methods`.
    pub methods_header: HeaderValue,
    /// Lowercase.
    pub headers: Vec<HeaderName>,
    /// `Access-Control-Allow-Headers` (empty: none).
    pub headers_header: Option<HeaderValue>,
    /// `Access-Control-Expose-Headers`.
    pub expose_header: Option<HeaderValue>,
    pub credentials: bool,
    /// `Access-Control-Max-Age`.
    pub max_age: HeaderValue,
}

/// Browsers cap it lower (Chromium: 2 h); more only keeps a mistake alive.
const MAX_AGE_CAP: Duration = Duration::from_secs(86_400);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

pub(super) fn compile(raw: &RawCors, at: &str, c: &mut Collector<'_>) -> Option<Arc<CorsPolicy>> {
    let before = c.errors.len();
    let origins = if raw.allowed_origins.iter().any(|o| o == "*") {
        if raw.allowed_origins.len() > 1 {
            c.at(
                &format!("{at}.allowed_origins"),
                "`*` stands alone: it already allows every origin",
            );
        }
        if raw.allow_credentials {
            c.at(
                &format!("{at}.allowed_origins"),
                "`*` with allow_credentials: true would let any site act with a user's credentials (and browsers refuse it): list the origins",
            );
        }
        CorsOrigins::Any
    } else {
        if raw.allowed_origins.is_empty() {
            c.at(
                &format!("{at}.allowed_origins"),
                "list at least one origin (or `*`)",
            );
        }
        let mut list = Vec::new();
        for o in &raw.allowed_origins {
            match origin(o) {
                Ok(v) => list.push(v),
                Err(e) => c.at(&format!("{at}.allowed_origins"), format!("`{o}`: {e}")),
            }
        }
        CorsOrigins::List(list)
    };
    let mut methods = Vec::new();
    for m in &raw.allowed_methods {
        match Method::from_bytes(m.as_bytes()) {
            Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => {
                if !matches!(method, Method::GET | Method::HEAD | Method::POST) {
                    methods.push(method);
                }
            }
            _ => c.at(
                &format!("{at}.allowed_methods"),
                format!("`{m}` is not a method name in capitals (GET, PUT, DELETE, ...)"),
            ),
        }
    }
    let header_list = |names: &[String], what: &str, c: &mut Collector<'_>| -> Vec<HeaderName> {
        let mut out = Vec::new();
        for h in names {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) if h != "*" => out.push(n),
                _ => c.at(
                    &format!("{at}.{what}"),
                    format!("`{h}` is not a header name (and `*` is not accepted: name them)"),
                ),
            }
        }
        out
    };
    let default_headers = ["authorization".to_string(), "content-type".to_string()];
    let headers = header_list(
        raw.allowed_headers.as_deref().unwrap_or(&default_headers),
        "allowed_headers",
        c,
    );
    let exposed = header_list(&raw.exposed_headers, "exposed_headers", c);
    let max_age = raw.max_age.map_or(DEFAULT_MAX_AGE, |d| d.0);
    if max_age > MAX_AGE_CAP {
        c.at(&format!("{at}.max_age"), "max_age must be at most 1d");
    }
    if c.errors.len() > before {
        return None;
    }
    let join = |items: Vec<&str>| HeaderValue::from_str(&items.join(", ")).ok();
    let mut all_methods = vec!["GET", "HEAD", "POST"];
    all_methods.extend(methods.iter().map(Method::as_str));
    Some(Arc::new(CorsPolicy {
        origins,
        methods_header: join(all_methods).expect("method names are header-safe"),
        headers_header: (!headers.is_empty())
            .then(|| join(headers.iter().map(HeaderName::as_str).collect()))
            .flatten(),
        expose_header: (!exposed.is_empty())
            .then(|| join(exposed.iter().map(HeaderName::as_str).collect()))
            .flatten(),
        methods,
        headers,
        credentials: raw.allow_credentials,
        max_age: HeaderValue::from(max_age.as_secs()),
    }))
}

/// An origin as a browser serialises it: `scheme://host[:port]`, lowercase,
/// no path, no trailing slash.
fn origin(o: &str) -> Result<HeaderValue, &'static str> {
    if o == "null" {
        return Err(
            "`null` is the origin of sandboxed frames and local files: any page can send it",
        );
    }
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or("an origin is http:// or https:// and a host")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(
            "an origin is scheme://host[:port], with no path, query, user or trailing slash",
        );
    }
    if (o.starts_with("https://") && o.ends_with(":443"))
        || (o.starts_with("http://") && o.ends_with(":80"))
    {
        return Err("leave the default port out: browsers do, and the origin would never match");
    }
    if o.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("write it in lowercase, as browsers send it");
    }
    let host_ok = rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !host_ok {
        return Err("a host of letters, digits, dots and dashes (an IDN in its xn-- form)");
    }
    HeaderValue::from_str(o).map_err(|_| "not a header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_written_as_browsers_send_them() {
        assert!(origin("https://app.example.com").is_ok());
        assert!(origin("http://localhost:3000").is_ok());
        assert!(origin("https://[::1]:8443").is_ok());
        for bad in [
            "null",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://App.example.com",
            "https://user@app.example.com",
            "ftp://app.example.com",
            "https://",
            "https://ünicode.example",
            "https://app.example.com:443",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }
}
