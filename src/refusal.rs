//! Why valet refuses a request that is not for its OAuth endpoints, and the
//! one place such a refusal becomes a response: RFC 6750 challenges for
//! token problems, small JSON bodies for everything else, always carrying
//! the request id. Nothing internal leaks into a body. Shared by the proxy
//! and the OAuth 1.0 handler (the token endpoints answer in RFC 6749's
//! shape, `oauth2::error`).

use crate::bodies::{BodyError, ResponseBody};
use crate::tokens::TokenError;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

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
    HeadersTooLarge,
    BadGateway(&'static str),
    GatewayTimeout(&'static str),
    /// 500: a bug in valet (a request handler panicked).
    Internal,
    /// 403: the route signs with an OAuth 1.0 provider and the subject has
    /// no token for it yet.
    OAuth1Required {
        provider: String,
        authorize_url: String,
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
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadGateway(_) => StatusCode::BAD_GATEWAY,
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
            ProxyError::BadGateway(m) => ("bad_gateway", (*m).to_string()),
            ProxyError::GatewayTimeout(m) => ("gateway_timeout", (*m).to_string()),
            ProxyError::Internal => (
                "internal_error",
                "valet failed to handle this request".into(),
            ),
            ProxyError::OAuth1Required { provider, authorize_url } => (
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
        let mut body = serde_json::json!({
            "error": code,
            "error_description": message,
            "request_id": request_id.to_str().unwrap_or_default(),
        });
        if let ProxyError::OAuth1Required {
            provider,
            authorize_url,
        } = &self
        {
            body["provider"] = provider.as_str().into();
            body["authorize_url"] = authorize_url.as_str().into();
        }
        let mut resp = json_response(self.status(), &body);
        if let Some(c) = self.challenge() {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&c).expect("challenge is ASCII"),
            );
        }
        resp.headers_mut()
            .insert("x-request-id", request_id.clone());
        resp
    }
}

pub use crate::bodies::json as json_response;
