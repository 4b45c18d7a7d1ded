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
/// URI is already the upstream's), returning the body to send and the
/// subject's own token it signed with (`None`: the provider's shared one).
pub async fn sign(
    app: &App,
    s: &RouteSigner,
    subject: &str,
    parts: &mut Parts,
    body: RequestBody,
    limit: u64,
    rate: MinRate,
) -> Result<(LimitedBody, BodyOutcome, Option<String>), ProxyError> {
    let p = &s.provider;
    let creds = match &p.shared_token {
        Some(t) => t.clone(),
        None => app
            .oauth1_store()
            .and_then(|st| st.get(&p.name, subject))
            .ok_or_else(|| required(app, p, subject))?,
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
    let own = p.shared_token.is_none().then(|| creds.token.clone());
    Ok((body, outcome, own))
}

/// The `oauth_problem` a provider's 401 names in `WWW-Authenticate: OAuth
/// ..., oauth_problem="..."` (the OAuth Problem Reporting extension).
pub fn oauth_problem(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| v.len() > 5 && v[..5].eq_ignore_ascii_case("oauth"))
        .find_map(|v| {
            // The parameter itself: at the start of a parameter (after the
            // scheme, a space or a comma), not inside another's value.
            let at = v.match_indices("oauth_problem").find_map(|(i, _)| {
                let before = v[..i].trim_end().chars().last();
                let after = v[i + "oauth_problem".len()..].trim_start();
                (matches!(before, Some(',') | None) || v[..i].trim().eq_ignore_ascii_case("oauth"))
                    .then_some(())
                    .and(after.strip_prefix('='))
                    .map(|rest| v.len() - rest.trim_start().len())
            })?;
            let rest = &v[at..];
            let value = match rest.strip_prefix('"') {
                Some(q) => &q[..q.find('"')?],
                None => rest.split([',', ' ']).next()?,
            };
            let ok = !value.is_empty()
                && value.len() <= 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            ok.then(|| value.to_string())
        })
}

/// A signed request the provider answered 401. A problem with the
/// subject's own token (revoked, expired, or configured) marks
/// it invalid, kept for the operator to see, and the subject is asked to
/// authorize again (403, as before the flow). Anything else is valet's
/// consumer's problem: no user's token is touched (one bad consumer key
/// must not unlink every user); it is counted for an alert, and the
/// provider's answer goes back as it is.
pub async fn refused(
    app: &App,
    s: &RouteSigner,
    route: &str,
    subject: &str,
    token: Option<&str>,
    headers: &http::HeaderMap,
) -> Result<(), ProxyError> {
    s.upstream_refused(route);
    let p = &s.provider;
    let problem = oauth_problem(headers);
    let (Some(problem), Some(token), Some(store)) = (
        problem
            .as_deref()
            .filter(|pr| p.token_problems.iter().any(|t| t == pr)),
        token,
        app.oauth1_store(),
    ) else {
        let label = match problem.as_deref() {
            None => "none",
            Some(pr) => crate::config::KNOWN_PROBLEMS
                .iter()
                .chain(crate::config::TOKEN_PROBLEMS.iter())
                .find(|k| **k == pr)
                .copied()
                .unwrap_or("other"),
        };
        app.metrics
            .oauth1_consumer_problems
            .with_label_values(&[&p.name, label])
            .inc();
        return Ok(());
    };
    // Out of use here at once; the durable write off the async workers.
    let done = match store.invalidate(&p.name, subject, token, problem) {
        Some(inv) => tokio::task::spawn_blocking(move || inv.record())
            .await
            .unwrap_or_else(|e| {
                Err(crate::store::StoreError::Failed {
                    path: "the state store".into(),
                    message: e.to_string(),
                })
            }),
        // Replaced meanwhile (the subject authorized again: the provider's
        // answer goes back as it is), or marked invalid by a concurrent
        // request (counted there).
        None => {
            return match store.invalid(&p.name, subject) {
                Some(_) => Err(required(app, p, subject)),
                None => Ok(()),
            };
        }
    };
    match done {
        Ok(()) => {
            app.metrics
                .oauth1_tokens_invalidated
                .with_label_values(&[&p.name, problem])
                .inc();
            tracing::info!(provider = %p.name, sub = subject, problem, "the provider refused this user's OAuth 1.0 token; marked invalid, the user must authorize again");
        }
        Err(e) => {
            tracing::warn!(provider = %p.name, sub = subject, error = %e, "cannot record that the provider refused a token; it is no longer used here");
        }
    }
    Err(required(app, p, subject))
}

/// The subject has no usable token: where to start, for an application
/// (`authorize_url`, with its bearer) and for a browser (`start_url`, a
/// start link made for this subject).
fn required(app: &App, p: &crate::config::Provider, subject: &str) -> ProxyError {
    ProxyError::OAuth1Required {
        provider: p.name.clone(),
        authorize_url: p.start_url.clone(),
        start_url: app
            .oauth1_store()
            .map(|s| s.start_link(p, subject, &p.return_urls[0], None, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::oauth_problem;

    fn problem(v: &str) -> Option<String> {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::WWW_AUTHENTICATE, v.parse().unwrap());
        oauth_problem(&h)
    }

    #[test]
    fn the_problem_is_read_from_its_own_parameter_only() {
        assert_eq!(
            problem(r#"OAuth realm="api", oauth_problem="token_revoked""#).as_deref(),
            Some("token_revoked")
        );
        assert_eq!(
            problem("OAuth oauth_problem=token_expired").as_deref(),
            Some("token_expired")
        );
        assert_eq!(
            problem(r#"OAuth realm="api",oauth_problem = "nonce_used""#).as_deref(),
            Some("nonce_used")
        );
        // Inside another parameter's value, or another parameter's name.
        assert_eq!(
            problem(r#"OAuth realm="oauth_problem=token_revoked""#),
            None
        );
        assert_eq!(problem(r#"OAuth xoauth_problem="token_revoked""#), None);
        // Not an OAuth challenge; unterminated; oversized; odd characters.
        assert_eq!(problem(r#"Bearer oauth_problem="token_revoked""#), None);
        assert_eq!(problem(r#"OAuth oauth_problem="token_revoked"#), None);
        assert_eq!(
            problem(&format!("OAuth oauth_problem=\"{}\"", "a".repeat(65))),
            None
        );
        assert_eq!(problem(r#"OAuth oauth_problem="token revoked""#), None);
    }
}
