//! The token endpoint's grants (RFC 6749 §4.3, §4.4, §6).
//!
//! Refresh tokens rotate on every use: the used one is recorded as rotated
//! (durably) before the new pair is returned. Presenting a rotated token again
//! within the grace period yields a pair (two tabs, a retry); after it, it is
//! reuse (RFC 9700 §4.14.2) and the whole family is revoked, including the
//! access tokens issued from it.

use super::client_auth::{authenticate, spend_and_hash, throttled};
use super::error::{json, OAuthError};
use super::form::Form;
use super::state::{apply, family_revocation};
use super::Call;
use crate::app::throttle::Key;
use crate::app::{App, Snapshot};
use crate::bodies::ResponseBody;
use crate::credentials::{Client, Grant, SecretHash};
use crate::revocation::Rotation;
use crate::tokens::issue::{decode_own, mint, mint_refresh, Kind, TokenRequest};
use http::{Response, StatusCode};
use serde_json::{Map, Value};
use std::time::Duration;

/// The metrics label for a `grant_type` value (bounded: unknown ones are `other`).
pub fn grant_label(g: Option<&str>) -> &'static str {
    match g {
        Some("client_credentials") => "client_credentials",
        Some("password") => "password",
        Some("refresh_token") => "refresh_token",
        Some(crate::credentials::JWT_BEARER) => "jwt_bearer",
        Some(crate::credentials::SAML2_BEARER) => "saml2_bearer",
        None => "none",
        Some(_) => "other",
    }
}

/// The granted scope: the requested one if the client (and user) may have
/// it all, else `invalid_scope`; the defaults when none is requested.
fn grant_scope(
    requested: Option<&str>,
    allowed: &[&str],
    default: &[&str],
) -> Result<String, OAuthError> {
    match requested {
        None => Ok(default.join(" ")),
        Some(r) => {
            let mut out: Vec<&str> = Vec::new();
            for s in r.split(' ').filter(|s| !s.is_empty()) {
                if !allowed.contains(&s) {
                    return Err(OAuthError::InvalidScope(format!(
                        "scope `{s}` is not allowed"
                    )));
                }
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            Ok(out.join(" "))
        }
    }
}

/// The scope to grant a client: what it asks for, or its defaults, within its
/// registered scopes narrowed by `also` (a user's or an assertion's scopes).
fn client_scope(
    client: &Client,
    form: &Form,
    also: impl Fn(&str) -> bool,
) -> Result<String, OAuthError> {
    let allowed: Vec<&str> = client
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| also(s))
        .collect();
    let default: Vec<&str> = client
        .default_scopes
        .iter()
        .map(String::as_str)
        .filter(|s| allowed.contains(s))
        .collect();
    grant_scope(form.get("scope"), &allowed, &default)
}

pub async fn token(c: Call<'_>) -> Result<Response<ResponseBody>, OAuthError> {
    let Call {
        app,
        snap,
        a,
        source,
        headers,
        form,
        now,
    } = c;
    let grant_type = form.require("grant_type")?;
    let grant = Grant::parse(grant_type)
        .ok_or_else(|| OAuthError::UnsupportedGrantType(grant_type.to_string()))?;
    let client = authenticate(app, a, source, headers, form).await?;
    if !client.allows(grant) {
        return Err(OAuthError::UnauthorizedClient(format!(
            "this client may not use the {} grant",
            grant.as_str()
        )));
    }
    // `now` is when the files were known current (see `App::sync_files`):
    // the issue time of what follows.
    // Before anything the grant uses up (an assertion's id, a rotation).
    client_may_be_issued(app, &client.id, now)?;
    let issued = match grant {
        Grant::ClientCredentials => {
            subject_may_be_issued(app, client.operator.as_deref().unwrap_or_default(), now)?;
            client_credentials(snap, &client, form, now)?
        }
        Grant::Password => password(c, &client).await?,
        Grant::RefreshToken => refresh(c, &client).await?,
        Grant::JwtBearer => {
            let m = super::jwt_bearer::verify(c, &client).await?;
            subject_may_be_issued(app, &m.subject, now)?;
            assertion_token(snap, &client, form, m, now)?
        }
        Grant::Saml2Bearer => {
            let m = super::saml_bearer::verify(c, &client).await?;
            subject_may_be_issued(app, &m.subject, now)?;
            assertion_token(snap, &client, form, m, now)?
        }
    };
    app.metrics
        .tokens_issued
        .with_label_values(&[grant.as_str(), &client.id])
        .inc();
    Ok(json(StatusCode::OK, &issued))
}

/// Cut-offs this close ahead of now were just made by "revoke all" (see
/// `manage::revoke_tokens`); further ahead, an operator chose a future time.
const CUTOFF_LEAD: i64 = 5;

/// Whether a token for `client_id` may be issued now (`now` from
/// `App::sync_files`). Not while its cut-off lies just ahead: cut-offs reject
/// `iat < T` and `iat` has whole seconds, so the token would be born revoked,
/// and the secret that just authenticated may be the one a regeneration is
/// replacing. Not either while the config in memory may predate a passed
/// cut-off (its re-read failed): the secret it holds may be the replaced one.
/// Either way: 503 with Retry-After. (Lifting `iat` to the cut-off instead,
/// as valet once did, let a token obtained with the old secret during a
/// regeneration outlive it.)
fn client_may_be_issued(app: &App, client_id: &str, now: i64) -> Result<(), OAuthError> {
    let Some(t) = app.revocations.current().client_cutoff(client_id) else {
        return Ok(());
    };
    if t > now && t <= now + CUTOFF_LEAD {
        return Err(OAuthError::Busy(Duration::from_secs((t - now) as u64)));
    }
    if t <= now && app.config_current_ms() < t.saturating_mul(1000) {
        tracing::warn!(
            client_id,
            "a cut-off is newer than the last good read of the clients file; not issuing"
        );
        return Err(OAuthError::Busy(Duration::from_secs(1)));
    }
    Ok(())
}

/// The same for a subject's cut-off just ahead ("revoke all of this user").
fn subject_may_be_issued(app: &App, sub: &str, now: i64) -> Result<(), OAuthError> {
    match app.revocations.current().subject_cutoff(sub) {
        Some(t) if t > now && t <= now + CUTOFF_LEAD => {
            Err(OAuthError::Busy(Duration::from_secs((t - now) as u64)))
        }
        _ => Ok(()),
    }
}

fn response(access: &crate::tokens::issue::Minted, scope: &str, refresh: Option<String>) -> Value {
    let mut v = serde_json::json!({
        "access_token": access.token,
        "token_type": "Bearer",
        "expires_in": access.expires_in,
        "scope": scope,
    });
    if let Some(r) = refresh {
        v["refresh_token"] = Value::from(r);
    }
    v
}

fn sign_error(e: crate::tokens::issue::IssueError) -> OAuthError {
    tracing::error!(error = %e, "cannot sign a token");
    OAuthError::Unavailable("tokens cannot be signed right now".into())
}

/// RFC 6749 §4.4: tokens for the client's operator; never a refresh token.
fn client_credentials(
    snap: &Snapshot,
    client: &Client,
    form: &Form,
    now: i64,
) -> Result<Value, OAuthError> {
    let scope = client_scope(client, form, |_| true)?;
    let operator = client.operator.as_deref().unwrap_or_default();
    issue_pair(snap, client, operator, &scope, None, &Map::new(), now)
}

/// RFC 6749 §4.3, for clients that enable it explicitly (RFC 9700 §2.4).
async fn password(c: Call<'_>, client: &Client) -> Result<Value, OAuthError> {
    let (app, snap, a, form, now) = (c.app, c.snap, c.a, c.form, c.now);
    let source = c.source;
    let username = form.require("username")?;
    let password = form.require("password")?;
    subject_may_be_issued(app, username, now)?;
    // Per (username, source) and per source; and per username from the
    // sources that never signed in as this user, so guesses at one account
    // from many places are counted against it without locking the user out
    // of the places they use. Spent before the hash runs.
    let throttle = app.throttle.load();
    let familiar = throttle.familiar(username, source);
    let all = [
        Key::UserSource(username, source),
        Key::Source(source),
        Key::Username(username),
    ];
    let keys = if familiar { &all[..2] } else { &all[..] };
    throttle.check(keys).map_err(|t| throttled(app, t))?;
    let user = a.registry.users.get(username).cloned();
    let hash = match &user {
        Some(u) => Some(&u.password),
        None => a.registry.dummy_user.as_ref(),
    };
    let ok = match hash {
        Some(SecretHash::Argon2id(h)) => {
            let real = user.is_some();
            spend_and_hash(app, a, &throttle, keys, h, password.as_bytes(), real).await?
        }
        // Users' passwords are always argon2id (checked at load).
        _ => false,
    };
    if ok && user.is_some() {
        throttle.signed_in(username, source);
    }
    let user = match user {
        Some(u) if ok => u,
        _ => {
            app.metrics.client_auth_failures.inc();
            return Err(OAuthError::InvalidGrant(
                "invalid resource owner credentials".into(),
            ));
        }
    };
    let scope = client_scope(client, form, |s| {
        user.scopes.is_empty() || user.scopes.iter().any(|u| u == s)
    })?;
    let family = client.use_refresh_token.then(crate::tokens::random_id);
    let ends = now.saturating_add(client.family_max_lifetime.as_secs() as i64);
    issue_pair(
        snap,
        client,
        &user.username,
        &scope,
        family.as_deref().map(|f| (f, ends)),
        &user.claims,
        now,
    )
}

/// A family: its id and when it ends.
type Family<'a> = Option<(&'a str, i64)>;

fn issue_pair(
    snap: &Snapshot,
    client: &Client,
    subject: &str,
    scope: &str,
    family: Family<'_>,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<Value, OAuthError> {
    let req = TokenRequest {
        subject,
        client_id: &client.id,
        scope,
        ttl: Some(client.access_ttl),
        audience: Some(&client.audience),
        family: family.map(|f| f.0),
        family_expires: family.map(|f| f.1),
        extra: Some(claims),
    };
    let access = mint(&snap.config.tokens, &req, now).map_err(sign_error)?;
    let refresh = match family {
        Some(_) => Some(
            mint_refresh(&snap.config.tokens, &req, client.refresh_ttl, now)
                .map_err(sign_error)?
                .token,
        ),
        None => None,
    };
    Ok(response(&access, scope, refresh))
}

/// An access token for a verified assertion (JWT or SAML bearer): the mapped
/// subject and claims; scopes within the client's (and the assertion's, when
/// a scopes claim is mapped). No refresh token: the client can present a
/// new assertion (RFC 7522 §3 / RFC 7523 §3 leave it to the server).
fn assertion_token(
    snap: &Snapshot,
    client: &Client,
    form: &Form,
    m: super::jwt_bearer::Mapped,
    now: i64,
) -> Result<Value, OAuthError> {
    // Operators are service identities that only their own client obtains:
    // an IdP asserting `sub: billing-svc` must not become that service (nor
    // share its subject cut-offs). Mapping onto a local *user* stays allowed.
    if let Some(a) = &snap.config.authorization_server {
        if a.registry
            .clients
            .values()
            .any(|c| c.operator.as_deref() == Some(m.subject.as_str()))
        {
            return Err(OAuthError::InvalidGrant(format!(
                "the assertion is invalid: its subject `{}` is a service identity (a client's operator), which assertions cannot take",
                m.subject
            )));
        }
        // Nor another issuer's namespace: an unprefixed IdP asserting
        // `corp:alice` is not the `corp:` IdP's alice.
        if let Some(p) = a
            .registry
            .subject_prefixes
            .iter()
            .find(|p| **p != m.prefix && m.subject.starts_with(p.as_str()))
        {
            return Err(OAuthError::InvalidGrant(format!(
                "the assertion is invalid: its subject `{}` is in another issuer's namespace `{p}`",
                m.subject
            )));
        }
    }
    let scope = client_scope(client, form, |s| {
        m.scopes.as_ref().is_none_or(|a| a.iter().any(|x| x == s))
    })?;
    issue_pair(snap, client, &m.subject, &scope, None, &m.claims, now)
}

/// RFC 6749 §6 with rotation and reuse detection.
async fn refresh(c: Call<'_>, client: &Client) -> Result<Value, OAuthError> {
    let (app, snap, a, form, now) = (c.app, c.snap, c.a, c.form, c.now);
    let presented = form.require("refresh_token")?;
    let invalid =
        || OAuthError::InvalidGrant("the refresh token is invalid, expired or revoked".into());
    let rt = decode_own(&snap.config.tokens, presented, true).ok_or_else(invalid)?;
    let Some(family) = rt.family.clone().filter(|_| rt.kind == Kind::Refresh) else {
        return Err(invalid());
    };
    if rt.client_id != client.id {
        return Err(invalid());
    }
    // Issued before the state store's contents go back (it was emptied and
    // started again): its rotation record is gone, so a stolen, already
    // rotated token would pass as a first use.
    if rt.iat < app.revocations.store().generation_since() {
        return Err(OAuthError::InvalidGrant(
            "the refresh token was issued before the state store was reset; sign in again".into(),
        ));
    }
    // The family's end is valet's own clock's: no skew.
    if rt.family_expires.is_some_and(|end| now >= end) {
        return Err(invalid());
    }
    // The user must still exist; a removed user's refresh tokens stop working.
    if !a.registry.users.contains_key(&rt.sub) {
        return Err(invalid());
    }
    // Before the rotation: a retry after the Retry-After must find the
    // token unused.
    subject_may_be_issued(app, &rt.sub, now)?;
    let set = app.revocations.current();
    // Family, client and subject revocations (the token id is looked at below).
    if set
        .check(None, &rt.client_id, &rt.sub, rt.iat, Some(&family))
        .is_some()
    {
        return Err(invalid());
    }
    // Revoked outright, the operator's file included (the store knows only
    // valet's own). An entry with a first use is a rotation an older valet
    // wrote there: the store has it (imported) and decides below.
    if set.token(&rt.jti).is_some_and(|e| e.rotated_at.is_none()) {
        return Err(invalid());
    }
    drop(set);
    // Decided and recorded in one check-and-set under the store's lock, at
    // millisecond precision: two concurrent uses (or two replicas) cannot
    // both be the first, and a use within the grace never moves it.
    let grace_ms = a.refresh_grace.as_millis().min(i64::MAX as u128) as i64;
    match super::state::rotate(app, &rt.jti, rt.exp, crate::revocation::now_ms(), grace_ms).await? {
        Rotation::First => {}
        Rotation::InGrace => {
            app.metrics
                .revocations
                .with_label_values(&["refresh_in_grace"])
                .inc();
        }
        Rotation::Reuse => {
            // Reuse of a rotated token: someone else may hold it. End the family.
            apply(app, vec![family_revocation(snap, client, &family, now)]).await?;
            app.metrics
                .revocations
                .with_label_values(&["refresh_reuse"])
                .inc();
            tracing::warn!(client_id = %client.id, sub = %rt.sub, "refresh token reuse detected; the token family is revoked");
            return Err(invalid());
        }
        Rotation::Revoked => return Err(invalid()),
    }
    // Rights as they are now, not as they were at login: the family's
    // scopes narrowed to what the client and the user may still hold, and
    // the user's claims as the user record has them today.
    let Some(user) = a.registry.users.get(&rt.sub) else {
        return Err(invalid());
    };
    let still: Vec<&str> = rt
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .filter(|s| client.scopes.iter().any(|c| c == s))
        .filter(|s| user.scopes.is_empty() || user.scopes.iter().any(|u| u == s))
        .collect();
    if still.is_empty() && !rt.scope.trim().is_empty() {
        return Err(OAuthError::InvalidGrant(
            "none of this refresh token's scopes is allowed any more; sign in again".into(),
        ));
    }
    let scope = grant_scope(form.get("scope"), &still, &still)?;
    let claims = user.claims.clone();

    // Families from before `fexp` existed end a full lifetime from now.
    let ends = rt
        .family_expires
        .unwrap_or_else(|| now.saturating_add(client.family_max_lifetime.as_secs() as i64));
    issue_pair(
        snap,
        client,
        &rt.sub,
        &scope,
        Some((&family, ends)),
        &claims,
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_must_be_within_what_is_allowed() {
        assert_eq!(grant_scope(None, &["a", "b"], &["a"]).unwrap(), "a");
        assert_eq!(
            grant_scope(Some("b a b"), &["a", "b"], &["a"]).unwrap(),
            "b a"
        );
        assert!(matches!(
            grant_scope(Some("a c"), &["a", "b"], &[]),
            Err(OAuthError::InvalidScope(_))
        ));
    }
}
