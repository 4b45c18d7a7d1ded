//! valet as the OAuth 1.0 client: the signed `Authorization: OAuth` header
//! for a request (RFC 5849 §3.1), and the calls to a provider's temporary
//! credential and token endpoints (§2.1, §2.3) over http or https.

use super::signing::{self, SignError};
use crate::config::Provider;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::Full;

/// Largest provider token-endpoint response read (it is a short form).
const MAX_PROVIDER_RESPONSE: usize = 64 * 1024;

/// The `Authorization` header value for `method url`, signed with the
/// provider's consumer credentials and `token` (token, secret) if any.
/// `extra` are further protocol parameters (`oauth_callback`,
/// `oauth_verifier`); `body` are the form body's parameters, if the body is
/// `application/x-www-form-urlencoded`.
pub fn authorization(
    p: &Provider,
    token: Option<(&str, &str)>,
    extra: &[(&str, &str)],
    method: &str,
    url: &str,
    body: &[(String, String)],
) -> Result<String, SignError> {
    let mut params = signing::query_params(url);
    params.extend_from_slice(body);
    p.consumer.authorization(token, extra, method, url, params)
}

/// Why a call to a provider's token endpoint failed (a metric label and a
/// message for the user; never the provider's secrets).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot reach the provider: {0}")]
    Unreachable(String),
    #[error("the provider did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the provider refused the request with status {status}{}", problem.as_deref().map(|p| format!(" ({p})")).unwrap_or_default())]
    Refused {
        status: StatusCode,
        problem: Option<String>,
    },
    #[error("the provider's answer is not usable: {0}")]
    BadAnswer(&'static str),
}

impl ProviderError {
    pub fn label(&self) -> &'static str {
        match self {
            ProviderError::Unreachable(_) => "provider_unreachable",
            ProviderError::Timeout(_) => "provider_timeout",
            ProviderError::Refused { .. } => "provider_refused",
            ProviderError::BadAnswer(_) => "provider_bad_answer",
        }
    }
}

/// Credentials a provider's token endpoint answered with (§2.1 temporary
/// credentials or §2.3 token credentials).
pub struct Issued {
    pub token: String,
    pub secret: String,
    /// The whole decoded answer (e.g. `oauth_callback_confirmed`).
    pub form: Vec<(String, String)>,
}

/// Signs and POSTs a request to the token endpoint `url` (with `token`
/// credentials and `extra` protocol parameters, if any) and returns the
/// credentials it issued.
pub async fn obtain(
    p: &Provider,
    url: &str,
    token: Option<(&str, &str)>,
    extra: &[(&str, &str)],
) -> Result<Issued, ProviderError> {
    let authz = authorization(p, token, extra, "POST", url, &[])
        .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
    let form = call(p, url, authz).await?;
    let (Some(token), Some(secret)) = (
        single(&form, "oauth_token"),
        single(&form, "oauth_token_secret"),
    ) else {
        return Err(ProviderError::BadAnswer(
            "oauth_token or oauth_token_secret is missing",
        ));
    };
    if token.is_empty() || token.contains(char::is_control) {
        return Err(ProviderError::BadAnswer(
            "the oauth_token is empty or holds control characters",
        ));
    }
    Ok(Issued {
        token: token.to_string(),
        secret: secret.to_string(),
        form,
    })
}

/// POSTs to a provider token endpoint (parameters in the header only, empty
/// body) and returns the decoded form answer.
pub async fn call(
    p: &Provider,
    url: &str,
    authorization: String,
) -> Result<Vec<(String, String)>, ProviderError> {
    use crate::outbound::{self, OutboundError};
    let req = Request::post(url)
        .header(header::AUTHORIZATION, authorization)
        .header(header::CONTENT_LENGTH, "0")
        .header(header::ACCEPT, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::new()))
        .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
    let limits = outbound::Limits {
        tls: Some(&p.tls),
        timeout: p.timeout,
        max_answer: MAX_PROVIDER_RESPONSE,
    };
    let resp = outbound::send(req, &limits).await.map_err(|e| match e {
        OutboundError::Timeout(d) => ProviderError::Timeout(d),
        OutboundError::Answer(_) => {
            ProviderError::BadAnswer("the answer is too large or cut short")
        }
        e => ProviderError::Unreachable(e.to_string()),
    })?;
    let form: Vec<(String, String)> = form_urlencoded::parse(resp.body()).into_owned().collect();
    if !resp.status().is_success() {
        // RFC 5849 has no error format; the Problem Reporting extension's
        // `oauth_problem` is common, and harmless to show.
        let problem = form
            .iter()
            .find(|(k, _)| k == "oauth_problem")
            .map(|(_, v)| v.chars().take(64).collect());
        return Err(ProviderError::Refused {
            status: resp.status(),
            problem,
        });
    }
    Ok(form)
}

/// The value of `name` in a decoded form, if present exactly once.
pub fn single<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut it = form.iter().filter(|(k, _)| k == name);
    match (it.next(), it.next()) {
        (Some((_, v)), None) => Some(v.as_str()),
        _ => None,
    }
}

/// `base?oauth_token=...` (or `&` when `base` has a query already).
pub fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = String::from(base);
    let mut ser = form_urlencoded::Serializer::new(String::new());
    ser.extend_pairs(pairs);
    s.push(if base.contains('?') { '&' } else { '?' });
    s.push_str(&ser.finish());
    s
}

/// A header value for a redirect, refusing what cannot be one.
pub fn location(url: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(url).ok()
}
