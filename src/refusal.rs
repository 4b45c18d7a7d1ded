//! Every refusal valet answers itself, and the one place it becomes a
//! response ([`Refusal`]): a JSON body `{"error": code, "error_description":
//! text}` (RFC 6749 §5.2's shape, which RFC 6750 §3 and the rest share),
//! the request id where known, and the headers the kind of refusal needs
//! (`WWW-Authenticate`, `Retry-After`, `Allow`). The token endpoints
//! (`oauth2::error`), proxied routes ([`ProxyError`], RFC 6750 challenges),
//! the OAuth 1.0 flow and the admin API all answer through it. Nothing
//! internal leaks into a body.

use crate::bodies::{BodyError, ResponseBody};
use crate::tokens::TokenError;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use std::time::Duration;

/// One refusal, as it will be written.
#[must_use]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    description: String,
    request_id: Option<HeaderValue>,
    challenge: Option<HeaderValue>,
    retry_after: Option<Duration>,
    allow: Option<HeaderValue>,
    /// Further members of the body (e.g. where to authorize).
    extra: Vec<(&'static str, String)>,
}

impl Refusal {
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            description: description.into(),
            request_id: None,
            challenge: None,
            retry_after: None,
            allow: None,
            extra: Vec::new(),
        }
    }

    /// In the body and as `X-Request-Id`.
    pub fn request_id(mut self, id: &HeaderValue) -> Self {
        self.request_id = Some(id.clone());
        self
    }

    /// `WWW-Authenticate` (RFC 9110 §11.6.1).
    pub fn challenge(mut self, value: HeaderValue) -> Self {
        self.challenge = Some(value);
        self
    }

    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// `Allow`, for a 405 (RFC 9110 §15.5.6).
    pub fn allow(mut self, methods: &str) -> Self {
        self.allow = HeaderValue::from_str(methods).ok();
        self
    }

    /// A further member of the body; never one of the members above.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        if !matches!(name, "error" | "error_description" | "request_id") {
            self.extra.push((name, value.into()));
        }
        self
    }

    /// The code for a status, for refusals that have no finer one.
    pub fn code_for(status: StatusCode) -> &'static str {
        match status.as_u16() {
            400 => "invalid_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            409 => "conflict",
            429 => "too_many_requests",
            503 => "temporarily_unavailable",
            s if s >= 500 => "internal_error",
            _ => "invalid_request",
        }
    }

    /// For listeners whose bodies are always whole (the admin API).
    pub fn into_full(self) -> Response<Full<Bytes>> {
        let mut body = serde_json::json!({
            "error": self.code,
            "error_description": self.description,
        });
        if let Some(id) = &self.request_id {
            body["request_id"] = id.to_str().unwrap_or_default().into();
        }
        for (k, v) in self.extra {
            body[k] = v.into();
        }
        let mut r = crate::bodies::json_full(self.status, &body);
        let h = r.headers_mut();
        if let Some(c) = self.challenge {
            h.insert(header::WWW_AUTHENTICATE, c);
        }
        if let Some(after) = self.retry_after {
            let secs = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(a) = self.allow {
            h.insert(header::ALLOW, a);
        }
        if let Some(id) = self.request_id {
            h.insert(crate::header_names::X_REQUEST_ID, id);
        }
        r
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        self.into_full().map(http_body_util::Either::Right)
    }
}

/// The `realm` of valet's Bearer challenges.
pub const REALM: &str = "valet";

/// A failure answered by valet itself (not by the upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// 400 for a request valet will not forward.
    BadRequest(&'static str),
    /// 401 with no `error`: the request carried no bearer token (RFC 6750 §3.1).
    NoToken,
    /// 401 `invalid_token`.
    InvalidToken(TokenError),
    /// 403 `insufficient_scope`, with the scopes the route needs.
    InsufficientScope(String),
    /// 400: the path has no canonical form (`request_target`).
    BadPath(crate::request_target::PathError),
    /// 400/408/413: the request body was the client's fault.
    Body(BodyError),
    NotFound,
    /// 403: an `Upgrade: websocket` on a route without `websocket:`.
    UpgradeNotAllowed,
    /// 503: `limits.max_websockets` sessions are open.
    TooManyWebSockets,
    /// 429: this subject holds `limits.max_websockets_per_subject` sessions.
    TooManyWebSocketsHere,
    HeadersTooLarge,
    BadGateway(&'static str),
    /// 502 with `Connection: close`: the upstream answered an upgrade
    /// without being a WebSocket server; whatever the client sent after its
    /// request must not be read as HTTP either.
    BadUpgrade(&'static str),
    GatewayTimeout(&'static str),
    /// 500: a bug in valet (a request handler panicked).
    Internal,
    /// 404 on a validator, for the authority's paths: tokens are issued
    /// there. (Not forwarded: client secrets and passwords would then pass
    /// through every sidecar.)
    NotOnValidator,
    /// 503: the route fails closed while revocations cannot be confirmed
    /// current (the store not read for longer than `store.stale_after`).
    RevocationsStale,
    /// 403: the route signs with an OAuth 1.0 provider and the subject has
    /// no token for it yet.
    OAuth1Required {
        provider: String,
        authorize_url: String,
        /// A start link a browser can follow, for this subject.
        start_url: Option<String>,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::Body(e) => match e {
                BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::TooSlow => StatusCode::REQUEST_TIMEOUT,
                BodyError::Malformed => StatusCode::BAD_REQUEST,
            },
            ProxyError::NoToken | ProxyError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            ProxyError::InsufficientScope(_) | ProxyError::OAuth1Required { .. } => {
                StatusCode::FORBIDDEN
            }
            ProxyError::NotFound | ProxyError::NotOnValidator => StatusCode::NOT_FOUND,
            ProxyError::UpgradeNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::TooManyWebSockets | ProxyError::RevocationsStale => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::TooManyWebSocketsHere => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadGateway(_) | ProxyError::BadUpgrade(_) => StatusCode::BAD_GATEWAY,
            ProxyError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code_and_message(&self) -> (&'static str, String) {
        match self {
            ProxyError::BadRequest(m) => ("invalid_request", (*m).to_string()),
            ProxyError::NoToken => ("unauthorized", "a bearer token is required".into()),
            ProxyError::InvalidToken(e) => ("invalid_token", e.to_string()),
            ProxyError::InsufficientScope(s) => (
                "insufficient_scope",
                format!("the token lacks a required scope ({s})"),
            ),
            ProxyError::NotFound => ("not_found", "no route matches this request".into()),
            ProxyError::NotOnValidator => (
                "not_found",
                "this valet is a validator (role: validator): tokens are issued, revoked and introspected by the authority, not here".into(),
            ),
            ProxyError::UpgradeNotAllowed => (
                "upgrade_not_allowed",
                "this route does not accept WebSocket upgrades".into(),
            ),
            ProxyError::TooManyWebSocketsHere => (
                "too_many_requests",
                "this identity holds as many WebSocket sessions as it may; close one first".into(),
            ),
            ProxyError::TooManyWebSockets => (
                "temporarily_unavailable",
                "too many WebSocket sessions are open; retry later".into(),
            ),
            ProxyError::RevocationsStale => (
                "temporarily_unavailable",
                "revocations cannot be confirmed current (the state store is out of reach), and this route does not serve without them; retry later".into(),
            ),
            ProxyError::BadPath(e) => ("invalid_request", e.to_string()),
            ProxyError::Body(e) => (
                match e {
                    BodyError::TooLarge => "payload_too_large",
                    BodyError::TooSlow => "request_timeout",
                    BodyError::Malformed => "invalid_request",
                },
                e.to_string(),
            ),
            ProxyError::HeadersTooLarge => (
                "headers_too_large",
                "the request headers are too large".into(),
            ),
            ProxyError::BadGateway(m) | ProxyError::BadUpgrade(m) => {
                ("bad_gateway", (*m).to_string())
            }
            ProxyError::GatewayTimeout(m) => ("gateway_timeout", (*m).to_string()),
            ProxyError::Internal => (
                "internal_error",
                "valet failed to handle this request".into(),
            ),
            ProxyError::OAuth1Required { provider, authorize_url, .. } => (
                "oauth1_authorization_required",
                format!("this route reaches its upstream with your OAuth 1.0 token for provider `{provider}`, and there is none yet; authorize first at {authorize_url}"),
            ),
        }
    }

    /// The `valet_client_errors_total` reason when the client is at fault
    /// in a way an operator watches for (not token refusals: those have
    /// their own counter).
    pub fn client_reason(&self) -> Option<&'static str> {
        match self {
            ProxyError::BadPath(_) => Some("bad_path"),
            ProxyError::Body(e) => Some(e.reason()),
            ProxyError::BadRequest(_) => Some("bad_request"),
            ProxyError::HeadersTooLarge => Some("headers_too_large"),
            _ => None,
        }
    }

    /// The RFC 6750 §3 challenge, where one applies.
    pub fn challenge(&self) -> Option<String> {
        match self {
            ProxyError::NoToken => Some(format!("Bearer realm=\"{REALM}\"")),
            ProxyError::InvalidToken(e) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{e}\""
            )),
            ProxyError::InsufficientScope(scope) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"{scope}\""
            )),
            _ => None,
        }
    }

    pub fn into_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let (code, message) = self.code_and_message();
        let close = matches!(self, ProxyError::BadUpgrade(_));
        let mut r = Refusal::new(self.status(), code, message).request_id(request_id);
        if let Some(c) = self.challenge() {
            r = r.challenge(HeaderValue::from_str(&c).expect("challenge is ASCII"));
        }
        if let ProxyError::OAuth1Required {
            provider,
            authorize_url,
            start_url,
        } = self
        {
            r = r
                .with("provider", provider)
                .with("authorize_url", authorize_url);
            if let Some(u) = start_url {
                r = r.with("start_url", u);
            }
        }
        let mut resp = r.into_response();
        if close {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

pub use crate::bodies::json as json_response;
