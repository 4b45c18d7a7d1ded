//! The admin API (its own listener, loopback only, `Authorization: Bearer`
//! with the admin secret): the seed product's client buttons over HTTP.
//!
//! - `GET  /admin/clients`
//! - `GET  /admin/clients/{id}` (never the secret or its hash)
//! - `POST /admin/clients` (JSON: the client's fields as in the config,
//!   without `secret_hash`; `client_id` left out for a generated one)
//! - `PATCH /admin/clients/{id}` (a JSON merge patch of those fields; an
//!   update that narrows what the client may do revokes its tokens)
//! - `DELETE /admin/clients/{id}` (tombstoned; its tokens revoked)
//! - `POST /admin/clients/{id}/regenerate-secret`
//! - `POST /admin/clients/{id}/revoke-tokens`
//! - `GET  /admin/oauth1/{provider}/tokens` (the subjects holding a token)
//! - `DELETE /admin/oauth1/{provider}/tokens/{subject}` (forget it; the
//!   subject is percent-encoded in the path)
//!
//! New secrets appear once, in the response; only their hashes are stored.
//! Every change is an audit record (`app::audit`), naming the credential.

use crate::app::App;
use crate::oauth2::manage::{self, ManageError};
use crate::refusal::Refusal;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::sync::Arc;

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    crate::bodies::json_full(status, &body)
}

fn error(status: StatusCode, e: impl std::fmt::Display) -> Response<Full<Bytes>> {
    Refusal::new(status, Refusal::code_for(status), e.to_string()).into_full()
}

/// The name of the admin credential the request carries, if any. Every
/// credential is compared (in constant time), whichever matches.
fn authorized(app: &App, req: &Request<Incoming>) -> Option<String> {
    let admin = app.snapshot().config.admin.clone()?;
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    let d = crate::digest::sha256(token.trim().as_bytes());
    let mut who = None;
    for (name, digest) in &admin.credentials {
        if aws_lc_rs::constant_time::verify_slices_are_equal(d.as_ref(), digest).is_ok() {
            who = Some(name.clone());
        }
    }
    who
}

fn status_of(e: &ManageError) -> StatusCode {
    match e {
        ManageError::UnknownClient(_) | ManageError::NoAuthServer => StatusCode::NOT_FOUND,
        ManageError::NoPepper | ManageError::Conflict(_) => StatusCode::CONFLICT,
        ManageError::Exists(_) | ManageError::NotManaged(_) => StatusCode::CONFLICT,
        ManageError::Invalid(_) => StatusCode::BAD_REQUEST,
        ManageError::Deleted(_) => StatusCode::CONFLICT,
        ManageError::Revocation(_) | ManageError::Store(_) | ManageError::Audit(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

pub async fn respond(app: Arc<App>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(who) = authorized(&app, &req) else {
        return Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin bearer token required",
        )
        .challenge(header::HeaderValue::from_static(
            "Bearer realm=\"valet-admin\"",
        ))
        .into_full();
    };
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // Admin requests are small JSON documents.
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let app2 = app.clone();
    let (logged_method, logged_path) = (method.clone(), path.clone());
    // As the audit log names who made a change.
    let actor = format!("admin:{who}");
    // File I/O and durable writes stay off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        let app = app2;
        let snap = app.snapshot();
        let config = &snap.config;
        // Each segment percent-decoded exactly once, after splitting: an
        // id or subject arrives as it was named, and `%2F` stays inside
        // its segment.
        let Some(decoded) = path
            .trim_matches('/')
            .split('/')
            .map(|seg| percent_encoding::percent_decode_str(seg).decode_utf8().ok())
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(error(StatusCode::BAD_REQUEST, "a path segment is not UTF-8 once decoded"));
        };
        let segments: Vec<&str> = decoded.iter().map(|s| s.as_ref()).collect();
        let out = match (&method, segments.as_slice()) {
            (&Method::GET, ["admin", "clients"]) => {
                return manage::list(config).map(|l| reply(StatusCode::OK, serde_json::json!({"clients": l})));
            }
            (&Method::GET, ["admin", "clients", id]) => {
                return manage::show(config, id).map(|c| reply(StatusCode::OK, serde_json::json!(c)));
            }
            (&Method::POST, ["admin", "clients"]) => {
                let spec = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return Ok(error(StatusCode::BAD_REQUEST, e)),
                };
                manage::client_from_spec(spec)
                    .and_then(|raw| manage::add(config, app.revocations.store().as_ref(), raw, &actor))
                    .map(|added| {
                        // The id (generated when none was given), the secret
                        // (this once) and valet's URLs.
                        let mut doc = manage::credentials(config, &added.client_id, &added.secret);
                        if let Some(e) = added.audit_error {
                            doc["audit_error"] = e.into();
                        }
                        reply(StatusCode::CREATED, doc)
                    })
            }
            (&Method::PATCH, ["admin", "clients", id]) => {
                let patch: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return Ok(error(StatusCode::BAD_REQUEST, e)),
                };
                let in_force = || app.follow_store() && app.config_good();
                manage::update(config, &app.revocations, id, &patch, &actor, in_force)
                    .map(|u| reply(StatusCode::OK, serde_json::json!(u)))
            }
            (&Method::DELETE, ["admin", "clients", id]) => {
                let in_force = || app.follow_store() && app.config_good();
                manage::delete(config, &app.revocations, id, &actor, in_force).map(|in_force| {
                    reply(
                        StatusCode::OK,
                        serde_json::json!({"client_id": id, "deleted": true, "tokens_revoked": true, "in_force": in_force}),
                    )
                })
            }
            (&Method::POST, ["admin", "clients", id, "regenerate-secret"]) => {
                // Following the store reloads the config with the new record.
                let in_force = || app.follow_store() && app.config_good();
                manage::regenerate_secret(config, &app.revocations, id, &actor, in_force).map(|r| {
                    let mut doc = manage::credentials(config, id, &r.secret);
                    doc["tokens_revoked"] = true.into();
                    doc["in_force"] = r.in_force.into();
                    if let Some(e) = r.audit_error {
                        doc["audit_error"] = e.into();
                    }
                    reply(StatusCode::OK, doc)
                })
            }
            (&Method::POST, ["admin", "clients", id, "revoke-tokens"]) => manage::revoke_tokens(config, &app.revocations, id, &actor)
                .map(|()| reply(StatusCode::OK, serde_json::json!({"client_id": id, "tokens_revoked": true}))),
            (_, ["admin", "oauth1", provider, "tokens", rest @ ..]) => {
                return Ok(oauth1_tokens(&app, config, &method, provider, rest, &actor));
            }
            _ => return Ok(error(StatusCode::NOT_FOUND, "no such admin endpoint")),
        };
        // Put the change in force now rather than when the follower runs.
        if out.is_ok() {
            app.metrics.set_revocation_sizes(app.revocations.current().len());
            app.follow_store();
        }
        out
    })
    .await;
    let r = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => error(status_of(&e), e),
        Err(e) => {
            tracing::error!(error = %e, "an admin request failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request failed; see valet's log",
            )
        }
    };
    // Who did what: every admin request, with the credential's name (never
    // its secret).
    if logged_method != Method::GET {
        tracing::info!(target: "valet::admin", admin = %who, method = %logged_method, path = %logged_path, status = r.status().as_u16(), "admin API change");
    }
    r
}

/// The OAuth 1.0 token endpoints of the admin API (blocking: store writes fsync).
fn oauth1_tokens(
    app: &App,
    config: &crate::config::Config,
    method: &Method,
    provider: &str,
    rest: &[&str],
    actor: &str,
) -> Response<Full<Bytes>> {
    let known = config
        .oauth1
        .as_ref()
        .is_some_and(|o| o.provider(provider).is_some());
    let (true, Some(store)) = (known, app.oauth1_store()) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no OAuth 1.0 provider is named `{provider}`"),
        );
    };
    match (method, rest) {
        (&Method::GET, []) => reply(
            StatusCode::OK,
            serde_json::json!({
                "provider": provider,
                "subjects": store.subjects(provider),
                // Tokens the provider refused: kept, never used.
                "invalid": store.invalid_subjects(provider).into_iter().map(|(subject, problem, at)| {
                    serde_json::json!({"subject": subject, "problem": problem, "at": at})
                }).collect::<Vec<_>>(),
            }),
        ),
        (&Method::DELETE, [subject]) => {
            // (Decoded once, with the rest of the path.)
            match store.remove(provider, subject) {
                Ok(had) => {
                    if had {
                        tracing::info!(provider, sub = %subject, "OAuth 1.0 token forgotten (admin API)");
                        let details = serde_json::json!({"provider": provider, "subject": subject});
                        if let Err(e) = crate::app::audit::record(
                            app.revocations.store().as_ref(),
                            actor,
                            "oauth1.token.forget",
                            None,
                            details,
                        ) {
                            return error(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("the token was forgotten, but its audit record could not be written: {e}"),
                            );
                        }
                    }
                    reply(
                        StatusCode::OK,
                        serde_json::json!({"provider": provider, "subject": subject, "forgotten": had}),
                    )
                }
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}
