//! The endpoints: token (RFC 6749 §3.2, grants in `grants.rs`), revocation
//! (RFC 7009), introspection (RFC 7662), metadata (RFC 8414) and JWKS.
//! Every change to revocations is durable before the answer (see
//! `Revocations::apply`); if it cannot be made durable the answer is 503 and
//! nothing changed.

use super::client_auth::authenticate;
use super::error::{json, OAuthError};
use super::form::Form;
use super::state::{apply, family_revocation};
use super::Call;
use crate::app::throttle::Source;
use crate::app::{App, Snapshot};
use crate::bodies::RequestBody;
use crate::bodies::ResponseBody;
use crate::config::AuthServerConfig;
use crate::revocation::{Change, RevokedToken};
use crate::tokens::issue::{decode_own, Kind};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest form body accepted by the OAuth endpoints.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Which endpoint a path is, if it is one of valet's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Revoke,
    Introspect,
    Metadata,
    Jwks,
}

pub fn endpoint_for(a: &AuthServerConfig, path: &str) -> Option<Endpoint> {
    let p = &a.paths;
    [
        (&p.token, Endpoint::Token),
        (&p.revocation, Endpoint::Revoke),
        (&p.introspection, Endpoint::Introspect),
        (&p.metadata, Endpoint::Metadata),
        (&p.jwks, Endpoint::Jwks),
    ]
    .into_iter()
    .find_map(|(ep, e)| (ep == path).then_some(e))
}

/// Serves one of valet's own endpoints.
pub async fn serve(
    app: &Arc<App>,
    snap: &Snapshot,
    a: &AuthServerConfig,
    ep: Endpoint,
    peer: SocketAddr,
    req: Request<RequestBody>,
) -> Response<ResponseBody> {
    match ep {
        Endpoint::Metadata => return metadata(snap, a),
        Endpoint::Jwks => return jwks(snap),
        _ => {}
    }
    let (parts, form) = match read_form(req, crate::bodies::MinRate::of(&snap.config.limits)).await
    {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    // Clients, users and revocations as the files have them now, not as
    // the watcher last saw them; `now` is when that was true.
    let now = app.sync_files().await;
    let fresh = app.snapshot();
    let (snap, a) = match fresh.config.authorization_server.as_ref() {
        Some(a) => (&*fresh, a),
        None => {
            return OAuthError::Unavailable("the authorization server is not configured".into())
                .into_response()
        }
    };
    // Who is asking, for the throttle and the hash queue: the peer, or
    // behind a trusted proxy the client it names.
    let source = Source::of(crate::net::client_address(
        peer.ip(),
        &parts.headers,
        &snap.config.trusted_proxies,
    ));
    let c = Call {
        app,
        snap,
        a,
        source,
        headers: &parts.headers,
        form: &form,
        now,
    };
    let result = match ep {
        Endpoint::Token => super::grants::token(c).await,
        Endpoint::Revoke => revoke(c).await,
        Endpoint::Introspect => introspect(c).await,
        Endpoint::Metadata | Endpoint::Jwks => unreachable!("answered above"),
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            if ep == Endpoint::Token {
                let grant = super::grants::grant_label(form.get("grant_type"));
                app.metrics
                    .token_requests_failed
                    .with_label_values(&[grant, e.code()])
                    .inc();
            }
            e.into_response()
        }
    }
}

/// POST, form body, nothing in the query: RFC 6749 §2.3.1 and §3.2.
async fn read_form(
    req: Request<RequestBody>,
    rate: crate::bodies::MinRate,
) -> Result<(http::request::Parts, Form), OAuthError> {
    if req.method() != Method::POST {
        return Err(OAuthError::MethodNotAllowed);
    }
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(OAuthError::InvalidRequest(
            "parameters (and above all credentials) must be sent in the request body, not the query string".into(),
        ));
    }
    if !crate::header_names::is_form_urlencoded(req.headers()) {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded".into(),
        ));
    }
    let (parts, body) = req.into_parts();
    let (body, _) = crate::bodies::LimitedBody::new(body, MAX_FORM_BYTES as u64, rate);
    let bytes = body
        .collect()
        .await
        .map_err(|_| {
            OAuthError::InvalidRequest("the request body is too large or was cut off".into())
        })?
        .to_bytes();
    Ok((parts, Form::parse(&bytes)?))
}

pub(crate) fn origin(issuer: &str) -> &str {
    match issuer.find("://") {
        Some(i) => match issuer[i + 3..].find('/') {
            Some(j) => &issuer[..i + 3 + j],
            None => issuer,
        },
        None => issuer,
    }
}

/// RFC 8414 metadata. URLs come from the configured issuer, never from `Host`.
fn metadata(snap: &Snapshot, a: &AuthServerConfig) -> Response<ResponseBody> {
    let issuer = &snap.config.tokens.issuer;
    let o = origin(issuer);
    let methods = ["client_secret_basic", "client_secret_post"];
    let body = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{o}{}", a.paths.token),
        "revocation_endpoint": format!("{o}{}", a.paths.revocation),
        "introspection_endpoint": format!("{o}{}", a.paths.introspection),
        "jwks_uri": format!("{o}{}", a.paths.jwks),
        "grant_types_supported": ["client_credentials", "password", "refresh_token", crate::credentials::JWT_BEARER, crate::credentials::SAML2_BEARER],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_methods_supported": methods,
    });
    let mut r = json(StatusCode::OK, &body);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("max-age=300"),
    );
    r.headers_mut().remove(header::PRAGMA);
    r
}

/// Every configured key's public half: the active one and those kept for
/// tokens still in flight after a rotation.
fn jwks(snap: &Snapshot) -> Response<ResponseBody> {
    let keys: Vec<&serde_json::Value> = snap.config.tokens.keys.iter().map(|k| &k.jwk).collect();
    let mut r = json(StatusCode::OK, &serde_json::json!({ "keys": keys }));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("max-age=300"),
    );
    r.headers_mut().remove(header::PRAGMA);
    r
}

/// The authenticated client and the `token` it asks about (RFC 7009 §2.1,
/// RFC 7662 §2.1).
async fn client_and_token<'a>(
    c: Call<'a>,
) -> Result<(Arc<crate::credentials::Client>, &'a str), OAuthError> {
    let client = authenticate(c.app, c.a, c.source, c.headers, c.form).await?;
    Ok((client, c.form.require("token")?))
}

/// RFC 7009. 200 for unknown, invalid or expired tokens too; a client may
/// revoke only its own tokens.
async fn revoke(c: Call<'_>) -> Result<Response<ResponseBody>, OAuthError> {
    let (client, token) = client_and_token(c).await?;
    let Call { app, snap, .. } = c;
    // `token_type_hint` is a hint: the token's own `typ` decides.
    let ok = || json(StatusCode::OK, &serde_json::json!({}));
    let Some(own) = decode_own(&snap.config.tokens, token, false) else {
        return Ok(ok());
    };
    if own.client_id != client.id {
        return Err(OAuthError::UnauthorizedClient(
            "the token was not issued to this client".into(),
        ));
    }
    let now = crate::revocation::now();
    if own
        .exp
        .saturating_add(snap.config.tokens.clock_skew.as_secs() as i64)
        < now
    {
        return Ok(ok());
    }
    let mut changes = vec![Change::Token(RevokedToken {
        jti: own.jti.clone(),
        expires_at: crate::revocation::time::Timestamp(own.exp),
        rotated_at: None,
        rotated_at_ms: None,
    })];
    let kind = match (own.kind, &own.family) {
        (Kind::Refresh, Some(fam)) => {
            // The whole family, and so every access token issued from it.
            changes.push(family_revocation(snap, &client, fam, now));
            "refresh_token"
        }
        _ => "access_token",
    };
    apply(app, changes).await?;
    app.metrics.revocations.with_label_values(&[kind]).inc();
    tracing::info!(client_id = %client.id, kind, jti = %own.jti, "token revoked");
    Ok(ok())
}

/// RFC 7662, for authenticated clients; a client sees its own tokens unless
/// it may introspect any (a resource server).
async fn introspect(c: Call<'_>) -> Result<Response<ResponseBody>, OAuthError> {
    let (client, token) = client_and_token(c).await?;
    let Call { app, snap, .. } = c;
    let inactive = || json(StatusCode::OK, &serde_json::json!({"active": false}));
    let Some(own) = decode_own(&snap.config.tokens, token, true) else {
        return Ok(inactive());
    };
    if own.client_id != client.id && !client.introspect_any {
        return Ok(inactive());
    }
    let revoked = app.revocations.current().check(
        Some(&own.jti),
        &own.client_id,
        &own.sub,
        own.iat,
        own.family.as_deref(),
    );
    if revoked.is_some() {
        return Ok(inactive());
    }
    // A refresh token that was used (rotated) is spent: the store knows.
    if own.kind == Kind::Refresh {
        let (a2, jti) = (app.clone(), own.jti.clone());
        let used = tokio::task::spawn_blocking(move || a2.revocations.store().first_use(&jti))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match used {
            Ok(None) => {}
            Ok(Some(_)) => return Ok(inactive()),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the state store for introspection; answering 503");
                return Err(OAuthError::Unavailable(
                    "the token's state cannot be read now; retry later".into(),
                ));
            }
        }
    }
    let mut body = serde_json::json!({
        "active": true,
        "scope": own.scope,
        "client_id": own.client_id,
        "sub": own.sub,
        "exp": own.exp,
        "iat": own.iat,
        "iss": snap.config.tokens.issuer,
        "aud": own.aud,
        "jti": own.jti,
        "token_type": if own.kind == Kind::Access { "Bearer" } else { "refresh_token" },
    });
    if let Some(nbf) = own.nbf {
        body["nbf"] = nbf.into();
    }
    Ok(json(StatusCode::OK, &body))
}
