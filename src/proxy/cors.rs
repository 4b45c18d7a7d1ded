//! CORS (the Fetch standard's protocol) for a route, or for valet's own
//! endpoints: a preflight is answered here, before authentication and never
//! forwarded; every other answer on a policy's paths, valet's refusals
//! included, carries the headers for an allowed origin only, with
//! `Vary: Origin`. valet owns CORS where a policy is set: the upstream's
//! own `Access-Control-*` headers are dropped.

use crate::bodies::ResponseBody;
use crate::config::cors::{CorsOrigins, CorsPolicy};
use crate::refusal::Refusal;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

/// Request headers a page may always send (the Fetch standard's safelist,
/// less `content-type`, whose safelisting depends on its value).
const SAFELISTED: [&str; 3] = ["accept", "accept-language", "content-language"];

/// `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn allows(p: &CorsPolicy, origin: &HeaderValue) -> bool {
    match &p.origins {
        CorsOrigins::Any => true,
        CorsOrigins::List(l) => l.iter().any(|o| o == origin),
    }
}

/// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
fn allow_origin(p: &CorsPolicy, origin: &HeaderValue) -> Option<HeaderValue> {
    match &p.origins {
        CorsOrigins::Any if !p.credentials => Some(HeaderValue::from_static("*")),
        _ if allows(p, origin) => Some(origin.clone()),
        _ => None,
    }
}

/// Answers a preflight: 204 with the policy's headers, or 403 saying what
/// is not allowed (without any `Access-Control-Allow-*`, so the browser
/// refuses the call it was asking about).
pub fn preflight<B>(p: &CorsPolicy, req: &Request<B>) -> Response<ResponseBody> {
    let h = req.headers();
    let origin = h
        .get(header::ORIGIN)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""));
    let refused = |why: String| {
        let mut r = Refusal::new(StatusCode::FORBIDDEN, "cors_refused", why).into_response();
        vary(r.headers_mut());
        r
    };
    let Some(allow) = allow_origin(p, &origin) else {
        return refused(format!(
            "origin {} is not allowed here",
            String::from_utf8_lossy(origin.as_bytes())
        ));
    };
    let method = h
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let method_ok = method.as_ref().is_some_and(|m| {
        matches!(*m, Method::GET | Method::HEAD | Method::POST) || p.methods.contains(m)
    });
    if !method_ok {
        return refused("the method asked for is not allowed here".into());
    }
    for v in h.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        let Ok(v) = v.to_str() else {
            return refused("Access-Control-Request-Headers is not text".into());
        };
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let ok = SAFELISTED.iter().any(|s| s.eq_ignore_ascii_case(name))
                || p.headers
                    .iter()
                    .any(|a| a.as_str().eq_ignore_ascii_case(name));
            if !ok {
                return refused(format!("request header `{name}` is not allowed here"));
            }
        }
    }
    let mut r: Response<ResponseBody> = Response::new(http_body_util::Either::Right(
        http_body_util::Full::new(bytes::Bytes::new()),
    ));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let out = r.headers_mut();
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        p.methods_header.clone(),
    );
    if let Some(v) = &p.headers_header {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    if p.credentials {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    out.insert(header::ACCESS_CONTROL_MAX_AGE, p.max_age.clone());
    vary(out);
    r
}

fn vary(h: &mut HeaderMap) {
    h.append(
        header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    );
}

/// The headers of an answer (any status) on a policy's path to a request
/// from `origin`.
pub fn decorate(p: &CorsPolicy, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
    for name in [
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::ACCESS_CONTROL_MAX_AGE,
    ] {
        h.remove(name);
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(allow) = origin.and_then(|o| allow_origin(p, o)) else {
        return;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    if p.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &p.expose_header {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
}
