//! RFC 6749 §5.2 error responses, the only way the token, revocation and
//! introspection endpoints fail: which code, status and headers each
//! failure gets; `refusal::Refusal` writes them.

use crate::bodies::ResponseBody;
use crate::refusal::Refusal;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest(String),
    /// `basic`: the client tried HTTP Basic, so the answer carries a Basic challenge.
    InvalidClient {
        basic: bool,
        description: &'static str,
    },
    InvalidGrant(String),
    UnauthorizedClient(String),
    UnsupportedGrantType(String),
    InvalidScope(String),
    /// The change could not be made durable; nothing was changed.
    Unavailable(String),
    /// Too many attempts from here: come back after this long (429).
    RateLimited(Duration),
    /// Password hashing is saturated: come back after this long (503).
    Busy(Duration),
    MethodNotAllowed,
}

impl OAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) | OAuthError::MethodNotAllowed => "invalid_request",
            OAuthError::InvalidClient { .. } | OAuthError::RateLimited(_) => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnauthorizedClient(_) => "unauthorized_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::Unavailable(_) | OAuthError::Busy(_) => "temporarily_unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            OAuthError::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
            OAuthError::Unavailable(_) | OAuthError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            OAuthError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            OAuthError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn description(&self) -> String {
        match self {
            OAuthError::InvalidRequest(d)
            | OAuthError::InvalidGrant(d)
            | OAuthError::UnauthorizedClient(d)
            | OAuthError::InvalidScope(d)
            | OAuthError::Unavailable(d) => d.clone(),
            OAuthError::UnsupportedGrantType(g) => format!("grant type `{g}` is not supported"),
            OAuthError::InvalidClient { description, .. } => (*description).to_string(),
            OAuthError::RateLimited(_) => {
                "too many authentication attempts from here; retry later".into()
            }
            OAuthError::Busy(_) => "too many authentications in progress; retry later".into(),
            OAuthError::MethodNotAllowed => "use POST".into(),
        }
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let r = Refusal::new(self.status(), self.code(), self.description());
        match self {
            OAuthError::InvalidClient { basic: true, .. } => {
                r.challenge(HeaderValue::from_static("Basic realm=\"valet\""))
            }
            OAuthError::RateLimited(after) | OAuthError::Busy(after) => r.retry_after(after),
            OAuthError::MethodNotAllowed => r.allow("POST"),
            _ => r,
        }
        .into_response()
    }
}

pub use crate::bodies::json;
