//! The three-legged flow (RFC 5849 §2), served by valet:
//!
//! - `GET {prefix}/{provider}/authorize` (bearer token required): obtain
//!   temporary credentials with `oauth_callback`, remember them bound to the
//!   subject and to a one-time state cookie, redirect to the provider.
//! - `GET {prefix}/{provider}/callback`: the temporary token must belong to
//!   a pending flow (each is usable once, and only until it expires) and the
//!   state cookie must match; exchange the verifier for token credentials,
//!   store them, redirect to the allow-listed return URL.
//! - `GET|DELETE {prefix}/{provider}/token` (bearer token required): whether
//!   the subject has a token; forget it.

use super::client::{self, ProviderError};
use crate::app::oauth1_tokens::{Credentials, Pending, TokenStore};
use crate::app::{App, Snapshot};
use crate::bodies::json as json_response;
use crate::bodies::RequestBody;
use crate::bodies::ResponseBody;
use crate::config::Level;
use crate::config::{OAuth1Config, Provider};
use crate::credentials::Secret;
use crate::refusal::{ProxyError, Refusal};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::sync::Arc;

/// What a path under the OAuth 1.0 prefix asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Authorize,
    Callback,
    Token,
    /// A start link for a browser (bearer).
    Link,
    /// The page a start link opens, and its button's POST (no bearer: the
    /// link is the credential).
    Start,
    /// The application redeems a browser flow's code (bearer).
    Redeem,
}

/// `{prefix}/{provider}/{action}` → the provider and action; a path under
/// the prefix that names no provider or action is still valet's (404).
pub fn endpoint_for<'a>(
    o: &'a OAuth1Config,
    path: &str,
) -> Option<Result<(&'a Arc<Provider>, Action), ()>> {
    let rest = path.strip_prefix(o.path_prefix.as_str())?;
    let rest = rest.strip_prefix('/')?;
    let (name, action) = rest.split_once('/').unwrap_or((rest, ""));
    let action = match action {
        "authorize" => Action::Authorize,
        "callback" => Action::Callback,
        "token" => Action::Token,
        "link" => Action::Link,
        "start" => Action::Start,
        "redeem" => Action::Redeem,
        _ => return Some(Err(())),
    };
    Some(o.provider(name).map(|p| (p, action)).ok_or(()))
}

/// `__Host-`: only valet's own origin, over HTTPS, can set it (a sibling
/// subdomain or a plain-HTTP attacker cannot plant their own state in the
/// user's browser). The prefix requires `Path=/`; the proxy strips it from
/// what it forwards (`proxy::headers::strip_own_cookies`).
fn cookie_name(p: &Provider) -> String {
    format!(
        "{}{}",
        crate::header_names::OAUTH1_COOKIE_PREFIX,
        p.name.replace('.', "_")
    )
}

fn error(status: StatusCode, code: &'static str, message: String) -> Response<ResponseBody> {
    Refusal::new(status, code, message).into_response()
}

fn redirect(to: &str) -> Response<ResponseBody> {
    let mut r = json_response(StatusCode::FOUND, &json!({ "location": to }));
    if let Some(v) = client::location(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Serves one of the flow endpoints.
pub async fn serve(
    app: &Arc<App>,
    snap: &Snapshot,
    o: &OAuth1Config,
    target: Result<(&Arc<Provider>, Action), ()>,
    req: Request<RequestBody>,
    request_id: &HeaderValue,
    authenticated: &mut Option<Arc<crate::tokens::VerifiedToken>>,
) -> Response<ResponseBody> {
    let Ok((p, action)) = target else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no such OAuth 1.0 endpoint; use {}/{{provider}}/authorize, /callback or /token",
                o.path_prefix
            ),
        );
    };
    let allowed: &[Method] = match action {
        Action::Authorize | Action::Callback => &[Method::GET],
        Action::Token => &[Method::GET, Method::DELETE],
        Action::Link | Action::Redeem => &[Method::POST],
        Action::Start => &[Method::GET, Method::POST],
    };
    if !allowed.contains(req.method()) {
        let allow = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        return Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed here",
        )
        .allow(&allow)
        .into_response();
    }
    if action == Action::Callback {
        return callback(app, p, &req).await;
    }
    if action == Action::Start {
        return start(app, o, p, req).await;
    }
    let token = match crate::app::authenticate(app, snap, req.headers()).await {
        Ok(t) => t,
        Err(e) => {
            if let ProxyError::InvalidToken(reason) = &e {
                app.metrics.token_failure(*reason);
            }
            return e.into_response(request_id);
        }
    };
    // For the access log.
    *authenticated = Some(token.clone());
    let store = app.oauth1_store();
    match (action, req.method()) {
        (Action::Authorize, _) => authorize(app, o, p, token.namespaced_subject(), &req).await,
        (Action::Link, _) => match (choose(app, p, &req), app_state(&req), store) {
            (Err(r), _, _) | (_, Err(r), _) => r,
            (Ok(_), _, None) => store_missing(),
            (Ok((return_url, level)), Ok(st), Some(store)) => json_response(
                StatusCode::OK,
                &json!({
                    "provider": p.name,
                    "start_url": store.start_link(p, token.namespaced_subject(), &return_url, level.map(|l| l.name.as_str()), st.as_deref()),
                    "expires_in": crate::app::oauth1_tokens::LINK_TTL_SECS,
                }),
            ),
        },
        (Action::Redeem, _) => redeem(app, snap, p, token.namespaced_subject(), req).await,
        (Action::Token, &Method::DELETE) => {
            let (name, sub) = (p.name.clone(), token.namespaced_subject().to_string());
            match with_store(app, move |s| s.remove(&name, &sub)).await {
                Some(Ok(had)) => {
                    if had {
                        tracing::info!(provider = %p.name, sub = %token.subject, "OAuth 1.0 token forgotten");
                    }
                    json_response(
                        StatusCode::OK,
                        &json!({ "provider": p.name, "forgotten": had }),
                    )
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "cannot update the OAuth 1.0 token store");
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "the token store cannot be written; nothing was changed".into(),
                    )
                }
                None => store_missing(),
            }
        }
        (Action::Token, _) => {
            let sub = token.namespaced_subject();
            let has = store.is_some_and(|s| s.get(&p.name, sub).is_some());
            let access = store.filter(|_| has).and_then(|s| s.access(&p.name, sub));
            let mut doc = json!({
                "provider": p.name,
                "authorized": has || p.shared_token.is_some(),
                "pre_provisioned": p.shared_token.is_some(),
                "authorize_url": p.start_url,
            });
            if let Some(perms) = &p.permissions {
                // The level the token was granted with, and the choices.
                doc["access"] = access.into();
                doc["access_levels"] = perms
                    .levels
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .into();
            }
            json_response(StatusCode::OK, &doc)
        }
        (Action::Callback | Action::Start, _) => unreachable!("answered above"),
    }
}

/// Runs `f` on the token store off the async workers (its writes fsync);
/// `None` if no store is open.
async fn with_store<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&TokenStore) -> T + Send + 'static,
) -> Option<T> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || app.oauth1_store().map(f))
        .await
        .ok()
        .flatten()
}

fn store_missing() -> Response<ResponseBody> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the OAuth 1.0 token store is not open (it was configured after start; restart valet)"
            .into(),
    )
}

async fn authorize(
    app: &Arc<App>,
    o: &OAuth1Config,
    p: &Provider,
    subject: &str,
    req: &Request<RequestBody>,
) -> Response<ResponseBody> {
    match choose(app, p, req) {
        Ok((return_url, level)) => {
            begin(
                app,
                o,
                p,
                subject,
                return_url,
                level,
                false,
                StatusCode::FOUND,
            )
            .await
        }
        Err(r) => r,
    }
}

/// What the caller chose in the query: the return URL (allow-listed) and
/// the level of access (among the provider's).
#[allow(clippy::result_large_err)]
fn choose<'p>(
    app: &App,
    p: &'p Provider,
    req: &Request<RequestBody>,
) -> Result<(String, Option<&'p Level>), Response<ResponseBody>> {
    let fail = |reason: &str| app.metrics.oauth1_flow_failed(&p.name, reason);
    if p.shared_token.is_some() {
        fail("pre_provisioned");
        return Err(error(
            StatusCode::CONFLICT,
            "pre_provisioned",
            format!("provider `{}` uses a pre-provisioned token for every subject; there is no flow to start", p.name),
        ));
    }
    let query: Vec<(String, String)> = query_of(req);
    let return_url = match client::single(&query, "return_to") {
        None if !query.iter().any(|(k, _)| k == "return_to") => p.return_urls[0].clone(),
        Some(r) if p.return_urls.iter().any(|a| a == r) => r.to_string(),
        _ => {
            fail("return_url_not_allowed");
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "return_to is not one of the return URLs allowed for provider `{}`",
                    p.name
                ),
            ));
        }
    };
    // The level of access asked for (`?access=`), among the provider's.
    let level = match (&p.permissions, client::single(&query, "access")) {
        (None, None) if !query.iter().any(|(k, _)| k == "access") => None,
        (None, _) => {
            fail("access_not_allowed");
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "provider `{}` has no levels of access to choose from",
                    p.name
                ),
            ));
        }
        (Some(perms), asked) => {
            let repeated = asked.is_none() && query.iter().any(|(k, _)| k == "access");
            match perms.level(asked).filter(|_| !repeated) {
                Some(l) => Some(l),
                None => {
                    fail("access_not_allowed");
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        format!(
                            "access is not one of provider `{}`'s levels: {}",
                            p.name,
                            perms.names()
                        ),
                    ));
                }
            }
        }
    };
    Ok((return_url, level))
}

/// Starts a flow for `subject`: temporary credentials from the provider,
/// the pending flow (bound to the state cookie), the redirect.
#[allow(clippy::too_many_arguments)]
async fn begin(
    app: &Arc<App>,
    o: &OAuth1Config,
    p: &Provider,
    subject: &str,
    return_url: String,
    level: Option<&Level>,
    redeem: bool,
    status: StatusCode,
) -> Response<ResponseBody> {
    let fail = |reason: &str| app.metrics.oauth1_flow_failed(&p.name, reason);
    // A level's request-token parameters go in the URL's query: RFC 5849
    // §3.4.1.3 signs them with the rest.
    let request_token_url = match level {
        Some(l) if !l.request_token.is_empty() => {
            let params: Vec<(&str, &str)> = l
                .request_token
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            client::with_query(&p.request_token_url, &params)
        }
        _ => p.request_token_url.clone(),
    };
    let issued = match client::obtain(
        p,
        &request_token_url,
        None,
        &[("oauth_callback", &p.callback_url)],
    )
    .await
    {
        Ok(i) => i,
        Err(e) => return provider_failed(app, p, e),
    };
    // RFC 5849 §2.1: the provider must confirm it took the callback (1.0a).
    if client::single(&issued.form, "oauth_callback_confirmed") != Some("true") {
        return provider_failed(
            app,
            p,
            ProviderError::BadAnswer("oauth_callback_confirmed is not `true`"),
        );
    }
    let (tok, secret) = (issued.token.as_str(), issued.secret.as_str());
    let state = crate::tokens::random_id();
    let mut params = vec![("oauth_token", tok)];
    if let Some(l) = level {
        params.extend(
            l.authorize_url
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
    }
    let to = client::with_query(&p.authorize_url, &params);
    let pending = Pending {
        provider: p.name.clone(),
        subject: subject.into(),
        token_secret: Secret::new(secret.as_bytes().to_vec()),
        state_digest: crate::digest::sha256(state.as_bytes()),
        return_url,
        expires_at_ms: crate::revocation::now_ms().saturating_add(o.pending_ttl.as_millis() as i64),
        access: level.map(|l| l.name.clone()),
        redeem,
    };
    // In the state store, so the callback may reach any authority process;
    // under a key only the browser holding the state cookie can name, so a
    // callback without it cannot end (take) the flow.
    let key = flow_key(tok, &state);
    match with_store(app, move |s| s.start_flow(&key, &pending)).await {
        Some(Ok(true)) => {}
        Some(Ok(false)) => {
            fail("too_many_pending");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many authorization flows are in progress; try again shortly".into(),
            );
        }
        Some(Err(e)) => {
            fail("store_write");
            tracing::error!(error = %e, "cannot record an OAuth 1.0 flow in the state store");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the flow could not be recorded; try again later".into(),
            );
        }
        None => return store_missing(),
    }
    app.metrics
        .oauth1_flows_started
        .with_label_values(&[&p.name])
        .inc();
    tracing::info!(provider = %p.name, sub = %subject, "OAuth 1.0 flow started");
    let mut r = redirect(&to);
    *r.status_mut() = status;
    // The cookie ties the callback to the browser that started the flow.
    let max_age = cookie::time::Duration::seconds(o.pending_ttl.as_secs() as i64);
    r.headers_mut()
        .insert(header::SET_COOKIE, state_cookie(p, &state, max_age));
    r
}

/// The application's `state` for a start link (`?state=`), returned with
/// the code: at most 256 printable ASCII characters.
#[allow(clippy::result_large_err)]
fn app_state(req: &Request<RequestBody>) -> Result<Option<String>, Response<ResponseBody>> {
    let query: Vec<(String, String)> = query_of(req);
    let all: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "state")
        .map(|(_, v)| v.as_str())
        .collect();
    match all.as_slice() {
        [] => Ok(None),
        [s] if !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s.to_string()))
        }
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "state is one value of 1 to 256 printable ASCII characters".into(),
        )),
    }
}

/// The request's query parameters, decoded.
fn query_of(req: &Request<RequestBody>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// The largest form valet's browser and redemption endpoints read.
const MAX_FORM: u64 = 8 * 1024;

/// The form in a POST body (at most `MAX_FORM`; anything else: empty).
async fn read_form(snap: &Snapshot, req: Request<RequestBody>) -> Option<Vec<(String, String)>> {
    use http_body_util::BodyExt;
    if !crate::header_names::is_form_urlencoded(req.headers()) {
        return None;
    }
    let rate = crate::bodies::MinRate::of(&snap.config.limits);
    let (body, _) = crate::bodies::LimitedBody::new(req.into_body(), MAX_FORM, rate);
    let bytes = body.collect().await.ok()?.to_bytes();
    Some(form_urlencoded::parse(&bytes).into_owned().collect())
}

/// A small page for a person (valet's browser endpoints): no scripts, no
/// framing, no caching, no Referer (the URL holds the link).
fn page(status: StatusCode, title: &str, body_html: &str) -> Response<ResponseBody> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title></head><body><main><h1>{t}</h1>{body_html}</main></body></html>\n",
        t = escape(title)
    );
    let mut r = Response::new(http_body_util::Either::Right(http_body_util::Full::new(
        bytes::Bytes::from(html),
    )));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // The button's POST carries valet's Origin (checked); nothing leaves
    // for another origin with the link in a Referer.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    // No form-action: browsers apply it to the redirects after the POST
    // too, and a provider's authorization page may pass through hosts
    // valet cannot list; the page runs nothing and injects nothing.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    r
}

/// HTML text escaping.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The origin of an absolute URL as a browser sends it in `Origin` (no
/// default port).
fn origin_of(url: &str) -> String {
    let o = match url.find("://") {
        Some(i) => match url[i + 3..].find(['/', '?', '#']) {
            Some(j) => &url[..i + 3 + j],
            None => url,
        },
        None => "",
    };
    let o = o.to_ascii_lowercase();
    match (o.strip_suffix(":443"), o.strip_suffix(":80")) {
        (Some(b), _) if b.starts_with("https://") => b.to_string(),
        (_, Some(b)) if b.starts_with("http://") => b.to_string(),
        _ => o,
    }
}

/// Whether a browser made this POST for another site (an auto-submitted
/// form): `Sec-Fetch-Site` says so, or, from a browser too old to send it,
/// an `Origin` other than valet's. A client sending neither is no
/// browser, and can do no more than with its own link.
fn cross_site(req: &Request<RequestBody>, own_origin: &str) -> bool {
    let h = req.headers();
    if let Some(v) = h.get("sec-fetch-site") {
        return !matches!(v.as_bytes(), b"same-origin" | b"none");
    }
    h.get(header::ORIGIN)
        .is_some_and(|o| !o.as_bytes().eq_ignore_ascii_case(own_origin.as_bytes()))
}

/// A start link opened: GET shows a page with one button (so a link
/// scanner that fetches it uses nothing up); the button's POST uses the
/// link up and starts the flow for the link's subject, no bearer needed.
async fn start(
    app: &Arc<App>,
    o: &OAuth1Config,
    p: &Provider,
    req: Request<RequestBody>,
) -> Response<ResponseBody> {
    let snap = app.snapshot();
    let refused = |why: &str, back: &str| {
        app.metrics.oauth1_flow_failed(&p.name, "bad_link");
        page(
            StatusCode::BAD_REQUEST,
            "This link cannot be used",
            &format!(
                "<p>{}</p><p>Go back to <a href=\"{}\">the application</a> and connect your {} account again: it gives you a new link.</p>",
                escape(why),
                escape(back),
                escape(&p.name)
            ),
        )
    };
    let Some(store) = app.oauth1_store() else {
        return store_missing();
    };
    let post = req.method() == Method::POST;
    if post && cross_site(&req, &origin_of(&p.start_url)) {
        app.metrics.oauth1_flow_failed(&p.name, "cross_site");
        tracing::warn!(provider = %p.name, "a start link POSTed from another site refused");
        return page(
            StatusCode::FORBIDDEN,
            "This link cannot be used",
            &format!(
                "<p>Another site tried to connect an account for you.</p><p>Go back to <a href=\"{}\">the application</a> to connect your {} account.</p>",
                escape(&p.return_urls[0]),
                escape(&p.name)
            ),
        );
    }
    let sealed = if post {
        read_form(&snap, req)
            .await
            .and_then(|f| client::single(&f, "link").map(str::to_owned))
    } else {
        let q: Vec<(String, String)> = query_of(&req);
        client::single(&q, "link").map(str::to_owned)
    };
    let back = p.return_urls[0].clone();
    let Some(link) = sealed.and_then(|l| store.open_link(&p.name, &l).map(|k| (l, k))) else {
        return refused(
            "The link is not one valet made for this provider, or it was changed.",
            &back,
        );
    };
    let (sealed, link) = link;
    if !p.return_urls.contains(&link.ret) {
        return refused(
            "The application this link returns to is no longer allowed.",
            &back,
        );
    }
    if link.exp <= crate::revocation::now() {
        return refused("The link expired.", &link.ret);
    }
    let level = match (&p.permissions, link.acc.as_deref()) {
        (None, None) => None,
        (Some(perms), asked) => match perms.level(asked) {
            Some(l) => Some(l),
            None => {
                return refused(
                    "The level of access this link asks for is no longer offered.",
                    &link.ret,
                )
            }
        },
        (None, Some(_)) => {
            return refused(
                "The level of access this link asks for is no longer offered.",
                &link.ret,
            )
        }
    };
    if !post {
        let what = level.map_or(String::new(), |l| format!(" ({} access)", escape(&l.name)));
        return page(
            StatusCode::OK,
            &format!("Connect your {} account", p.name),
            &format!(
                "<p>You will be sent to {name} to allow this application access{what}.</p><form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"link\" value=\"{link}\"><button type=\"submit\">Continue to {name}</button></form>",
                name = escape(&p.name),
                action = escape(&format!("{}/{}/start", o.path_prefix, p.name)),
                link = escape(&sealed),
            ),
        );
    }
    // Used up here, once, in any process on the store.
    let (id, exp) = (format!("oauth1-link:{}", link.id), link.exp);
    match with_store(app, move |s| s.use_once(&id, exp)).await {
        Some(Ok(true)) => {}
        Some(Ok(false)) => return refused("The link was already used.", &link.ret),
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot record a start link's use");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the link cannot be used now; try again shortly".into(),
            );
        }
        None => return store_missing(),
    }
    // The application's own state, if it gave one, comes back with the
    // code: it checks the flow is one it started.
    let return_url = match &link.st {
        Some(st) => client::with_query(&link.ret, &[("state", st)]),
        None => link.ret.clone(),
    };
    let mut r = begin(
        app,
        o,
        p,
        &link.sub,
        return_url,
        level,
        true,
        StatusCode::SEE_OTHER,
    )
    .await;
    r.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

/// The application redeems a browser flow's code with the bearer token of
/// the subject the link was made for; only then is the token stored. A
/// code redeemed by another subject (the link was minted by someone else
/// and completed in this user's browser) stores nothing.
async fn redeem(
    app: &Arc<App>,
    snap: &Snapshot,
    p: &Provider,
    subject: &str,
    req: Request<RequestBody>,
) -> Response<ResponseBody> {
    let restart = format!(
        "start again with a new link ({}/link)",
        p.start_url.trim_end_matches("/authorize")
    );
    let Some(code) = read_form(snap, req)
        .await
        .and_then(|f| client::single(&f, "code").map(str::to_owned))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send the code as a form field `code` in the body (application/x-www-form-urlencoded)"
                .into(),
        );
    };
    let name = p.name.clone();
    let held = match with_store(app, move |s| s.take_held(&code, &name)).await {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot read a held OAuth 1.0 token");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the code cannot be redeemed now; try again shortly".into(),
            );
        }
        None => return store_missing(),
    };
    let fail = |reason: &str| app.metrics.oauth1_flow_failed(&p.name, reason);
    let Some(held) = held else {
        fail("unknown_code");
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            format!("the code is unknown or was already redeemed; {restart}"),
        );
    };
    if held.expires_at_ms <= crate::revocation::now_ms() {
        fail("expired");
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            format!("the code expired; {restart}"),
        );
    }
    if held.subject != subject {
        fail("subject_mismatch");
        tracing::warn!(provider = %p.name, sub = subject, link_sub = %held.subject, "an OAuth 1.0 code made for another subject's link was redeemed; nothing stored");
        return error(
            StatusCode::FORBIDDEN,
            "access_denied",
            format!("this authorization was started from a link made for another user, so nothing was stored; {restart}"),
        );
    }
    let (name, sub, access) = (p.name.clone(), held.subject.clone(), held.access.clone());
    let creds = held.creds;
    let a = access.clone();
    match with_store(app, move |s| s.put(&name, &sub, creds, a.as_deref())).await {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            fail("store_write");
            tracing::error!(error = %e, "cannot write the OAuth 1.0 token store");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                format!("the token could not be stored; {restart}"),
            );
        }
        None => return store_missing(),
    }
    app.metrics
        .oauth1_flows_completed
        .with_label_values(&[&p.name])
        .inc();
    tracing::info!(provider = %p.name, sub = subject, "OAuth 1.0 code redeemed; token stored");
    let mut doc = json!({"provider": p.name, "authorized": true});
    if p.permissions.is_some() {
        doc["access"] = access.into();
    }
    json_response(StatusCode::OK, &doc)
}

/// Where a pending flow is kept: its temporary token and state together.
fn flow_key(token: &str, state: &str) -> String {
    crate::digest::sha256_hex(
        [token.as_bytes(), b"\0", state.as_bytes()]
            .concat()
            .as_slice(),
    )
}

fn provider_failed(app: &App, p: &Provider, e: ProviderError) -> Response<ResponseBody> {
    app.metrics.oauth1_flow_failed(&p.name, e.label());
    tracing::warn!(provider = %p.name, error = %e, "OAuth 1.0 provider call failed");
    let status = match e {
        ProviderError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    error(status, e.label(), e.to_string())
}

/// The value of the cookie `name` in the request (parsed by the `cookie`
/// crate; a malformed pair is skipped, not an error).
fn cookie<'a>(req: &'a Request<RequestBody>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .and_then(|c| c.value_raw())
}

/// The state cookie: only for this provider's callback, only over HTTPS,
/// not readable by scripts, sent on the provider's top-level redirect back.
fn state_cookie(p: &Provider, value: &str, max_age: cookie::time::Duration) -> HeaderValue {
    let c = cookie::Cookie::build((cookie_name(p), value.to_string()))
        .path("/")
        .max_age(max_age)
        .secure(true)
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .build();
    HeaderValue::from_str(&c.to_string()).expect("a cookie is a valid header value")
}

async fn callback(
    app: &Arc<App>,
    p: &Provider,
    req: &Request<RequestBody>,
) -> Response<ResponseBody> {
    let failed = |reason: &str, status: StatusCode, message: String| {
        app.metrics.oauth1_flow_failed(&p.name, reason);
        tracing::warn!(provider = %p.name, reason, "OAuth 1.0 callback refused");
        let mut r = error(status, "invalid_request", message);
        r.headers_mut().insert(header::SET_COOKIE, clear_cookie(p));
        r
    };
    let restart = format!("start again at {}", p.start_url);
    let query: Vec<(String, String)> = query_of(req);
    // A user who declines comes back with `denied=<temporary token>` (the
    // de facto convention, e.g. Twitter's) instead of oauth_token.
    let denied = client::single(&query, "oauth_token").is_none();
    let token_param = if denied { "denied" } else { "oauth_token" };
    let Some(tok) = client::single(&query, token_param) else {
        return failed(
            "bad_callback",
            StatusCode::BAD_REQUEST,
            format!("the callback carries no single oauth_token; {restart}"),
        );
    };
    // The browser binding first, before the store is touched: a callback
    // without the state cookie (a replay by someone who learned the
    // oauth_token) must not use up the user's pending flow.
    let Some(state) = cookie(req, &cookie_name(p)).filter(|s| !s.is_empty()) else {
        app.metrics.oauth1_flow_failed(&p.name, "state_mismatch");
        tracing::warn!(provider = %p.name, "OAuth 1.0 callback without the state cookie refused; the flow is left as it was");
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("this callback does not come from the browser that started the flow (it carries no state cookie); {restart}"),
        );
    };
    // Taken out first: a temporary token is usable once, whatever follows.
    // The key needs the cookie too: another browser's names no flow.
    let (key, name) = (flow_key(tok, state), p.name.clone());
    let pending = match with_store(app, move |s| s.take_flow(&key, &name)).await {
        Some(Ok(Some(pending))) => pending,
        Some(Ok(None)) => {
            return failed(
                "unknown_token",
                StatusCode::BAD_REQUEST,
                format!("oauth_token is unknown or was already used, or this callback does not come from the browser that started the flow; {restart}"),
            )
        }
        Some(Err(e)) => {
            app.metrics.oauth1_flow_failed(&p.name, "store_read");
            tracing::error!(error = %e, "cannot read OAuth 1.0 flows from the state store");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the flow cannot be looked up now; try the link again shortly".into(),
            );
        }
        None => return store_missing(),
    };
    if pending.expires_at_ms <= crate::revocation::now_ms() {
        return failed(
            "expired",
            StatusCode::BAD_REQUEST,
            format!("this authorization flow expired; {restart}"),
        );
    }
    let state_ok = cookie(req, &cookie_name(p)).is_some_and(|s| {
        aws_lc_rs::constant_time::verify_slices_are_equal(
            &crate::digest::sha256(s.as_bytes()),
            &pending.state_digest,
        )
        .is_ok()
    });
    if !state_ok {
        return failed(
            "state_mismatch",
            StatusCode::BAD_REQUEST,
            format!(
                "this callback does not come from the browser that started the flow; {restart}"
            ),
        );
    }
    if denied {
        // The app learns the outcome at its return URL.
        app.metrics.oauth1_flow_failed(&p.name, "denied");
        tracing::info!(provider = %p.name, sub = %pending.subject, "OAuth 1.0 authorization declined by the user");
        let to = client::with_query(
            &pending.return_url,
            &[("error", "access_denied"), ("provider", &p.name)],
        );
        let mut r = redirect(&to);
        r.headers_mut().insert(header::SET_COOKIE, clear_cookie(p));
        return r;
    }
    let Some(verifier) = client::single(&query, "oauth_verifier") else {
        return failed(
            "denied",
            StatusCode::BAD_REQUEST,
            format!("the provider sent no oauth_verifier (was access denied?); {restart}"),
        );
    };
    let secret = std::str::from_utf8(pending.token_secret.expose()).unwrap_or("");
    let issued = match client::obtain(
        p,
        &p.access_token_url,
        Some((tok, secret)),
        &[("oauth_verifier", verifier)],
    )
    .await
    {
        Ok(i) => i,
        Err(e) => return provider_failed(app, p, e),
    };
    let creds = Credentials {
        token: issued.token,
        secret: Secret::new(issued.secret.into_bytes()),
    };
    if pending.redeem {
        return hold_for_redemption(app, p, pending, creds).await;
    }
    let (name, sub, access) = (
        p.name.clone(),
        pending.subject.to_string(),
        pending.access.clone(),
    );
    let stored = match with_store(app, move |s| s.put(&name, &sub, creds, access.as_deref())).await
    {
        Some(r) => r,
        None => return store_missing(),
    };
    if let Err(e) = stored {
        app.metrics.oauth1_flow_failed(&p.name, "store_write");
        tracing::error!(error = %e, "cannot write the OAuth 1.0 token store");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the token could not be stored; start again later".into(),
        );
    }
    app.metrics
        .oauth1_flows_completed
        .with_label_values(&[&p.name])
        .inc();
    tracing::info!(provider = %p.name, sub = %pending.subject, "OAuth 1.0 flow completed; token stored");
    let mut r = redirect(&pending.return_url);
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie(p));
    r
}

/// A flow started from a browser link ends at the application, not here:
/// anyone can mint a link for their own subject and send it to someone
/// else, so the token is held under a one-time code the browser carries to
/// the return URL, and only the application, redeeming it with the same
/// subject's bearer token, makes valet store it.
async fn hold_for_redemption(
    app: &Arc<App>,
    p: &Provider,
    pending: Pending,
    creds: Credentials,
) -> Response<ResponseBody> {
    let code = crate::tokens::random_id();
    let (c, name, sub, access) = (
        code.clone(),
        p.name.clone(),
        pending.subject.to_string(),
        pending.access.clone(),
    );
    match with_store(app, move |s| {
        s.hold(&c, &name, &sub, &creds, access.as_deref())
    })
    .await
    {
        Some(Ok(true)) => {}
        Some(Ok(false)) => {
            app.metrics.oauth1_flow_failed(&p.name, "too_many_pending");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many authorizations are waiting to be redeemed; start again shortly".into(),
            );
        }
        Some(Err(e)) => {
            app.metrics.oauth1_flow_failed(&p.name, "store_write");
            tracing::error!(error = %e, "cannot hold an OAuth 1.0 token for redemption");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the token could not be held; start again later".into(),
            );
        }
        None => return store_missing(),
    }
    tracing::info!(provider = %p.name, sub = %pending.subject, "OAuth 1.0 flow completed; token held for the application to redeem");
    let to = client::with_query(
        &pending.return_url,
        &[("code", &code), ("provider", &p.name)],
    );
    let mut r = redirect(&to);
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie(p));
    // The code is in the Location only: not cached, not in valet's logs.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

fn clear_cookie(p: &Provider) -> HeaderValue {
    state_cookie(p, "", cookie::time::Duration::ZERO)
}
