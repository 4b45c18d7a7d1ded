//! Signing forwarded requests (RFC 5849 §3) for routes with
//! `upstream_auth: {oauth1: provider}`: the subject's stored token (or the
//! provider's pre-provisioned one) signs the request as the upstream will
//! see it. Form bodies are read (within the route's limit) because their
//! parameters are signed; every other body streams untouched.

use crate::app::route_signer::RouteSigner;
use crate::app::App;
use crate::bodies::RequestBody;
use crate::bodies::{BodyError, BodyOutcome, LimitedBody, MinRate};
use crate::refusal::ProxyError;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http_body_util::BodyExt;

/// Sets `Authorization: OAuth ...` on the upstream request `parts` (whose
/// URI is already the upstream's), returning the body to send.
pub async fn sign(
    app: &App,
    s: &RouteSigner,
    subject: &str,
    parts: &mut Parts,
    body: RequestBody,
    limit: u64,
    rate: MinRate,
) -> Result<(LimitedBody, BodyOutcome), ProxyError> {
    let p = &s.provider;
    let creds = match &p.shared_token {
        Some(t) => t.clone(),
        None => app
            .oauth1_store()
            .and_then(|st| st.get(&p.name, subject))
            .ok_or_else(|| ProxyError::OAuth1Required {
                provider: p.name.clone(),
                authorize_url: p.start_url.clone(),
            })?,
    };
    let (body, outcome, form) = if crate::header_names::is_form_urlencoded(&parts.headers) {
        let (limited, outcome) = LimitedBody::new(body, limit, rate);
        let bytes = limited
            .collect()
            .await
            .map_err(|_| ProxyError::Body(outcome.get().unwrap_or(BodyError::Malformed)))?
            .to_bytes();
        let form: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
        parts.headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(bytes.len() as u64),
        );
        parts.headers.remove(header::TRANSFER_ENCODING);
        (LimitedBody::full(bytes), outcome, form)
    } else {
        let (b, e) = LimitedBody::new(body, limit, rate);
        (b, e, Vec::new())
    };
    let url = match &s.signed_origin {
        Some(o) => format!(
            "{o}{}",
            parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
        ),
        None => parts.uri.to_string(),
    };
    // Protocol parameters are valet's alone: a caller's `oauth_token` in the
    // query or body could otherwise shadow or contradict the header's.
    let mut params = crate::oauth1_signature::query_params(&url);
    params.extend(form);
    if params.iter().any(|(k, _)| k.starts_with("oauth_")) {
        return Err(ProxyError::BadRequest(
            "parameters named oauth_* are reserved on this route: valet signs the request itself",
        ));
    }
    let secret = std::str::from_utf8(creds.secret.expose()).unwrap_or("");
    let authz = p
        .consumer
        .authorization(
            Some((&creds.token, secret)),
            &[],
            parts.method.as_str(),
            &url,
            params,
        )
        .map_err(|_| ProxyError::BadRequest("the request target cannot be signed"))?;
    parts.headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&authz).map_err(|_| ProxyError::BadRequest("unsignable"))?,
    );
    s.signed.inc();
    Ok((body, outcome))
}
