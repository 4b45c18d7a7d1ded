//! The authorization server's writes to the state store: revocations
//! (durable before the answer, 503 if they cannot be), refresh rotations
//! and single-use assertion ids, each off the async workers and timed.
//! Below the endpoints and the grants, which both use it.

use super::error::OAuthError;
use crate::app::{App, Snapshot};
use crate::revocation::{Change, RevokedFamily, RevokedToken};
use std::sync::Arc;

/// Revokes a refresh family until the last token it can hold has expired:
/// every token of the family was issued by now, so none outlives
/// now + the longer of the client's lifetimes (+ skew).
pub fn family_revocation(
    snap: &Snapshot,
    client: &crate::credentials::Client,
    family: &str,
    now: i64,
) -> Change {
    let horizon = client.refresh_ttl.max(client.access_ttl).as_secs() as i64
        + snap.config.tokens.clock_skew.as_secs() as i64;
    Change::Family(RevokedFamily {
        family: family.to_string(),
        expires_at: crate::revocation::time::Timestamp(now + horizon),
    })
}

/// Runs a durable revocation change off the async workers.
pub async fn apply(app: &Arc<App>, changes: Vec<Change>) -> Result<(), OAuthError> {
    let a2 = app.clone();
    let t = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || a2.revocations.apply(&changes))
        .await
        .unwrap_or_else(|e| {
            Err(crate::revocation::RevocationError {
                file: Default::default(),
                position: None,
                message: format!("the writer failed: {e}"),
            })
        });
    app.metrics
        .store_call("append", t.elapsed(), result.is_ok());
    result.map_err(|e| {
        tracing::error!(error = %e, "revocation could not be made durable; answering 503");
        OAuthError::Unavailable(
            "the revocation could not be recorded; nothing was changed, retry later".into(),
        )
    })?;
    app.metrics
        .set_revocation_sizes(app.revocations.current().len());
    Ok(())
}

/// Rotates a refresh token in the durable store (see
/// [`crate::revocation::Revocations::rotate`]), off the async workers.
pub async fn rotate(
    app: &Arc<App>,
    jti: &str,
    expires_at: i64,
    now_ms: i64,
    grace_ms: i64,
) -> Result<crate::revocation::Rotation, OAuthError> {
    let (a2, jti) = (app.clone(), jti.to_string());
    let t = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || {
        a2.revocations.rotate(&jti, expires_at, now_ms, grace_ms)
    })
    .await;
    app.metrics
        .store_call("rotate", t.elapsed(), matches!(r, Ok(Ok(_))));
    match r {
        Ok(Ok(rotation)) => {
            app.metrics
                .set_revocation_sizes(app.revocations.current().len());
            Ok(rotation)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a refresh token rotation could not be recorded; answering 503");
            Err(OAuthError::Unavailable(
                "the request could not be recorded; retry later".into(),
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, "the rotation writer failed; answering 503");
            Err(OAuthError::Unavailable(
                "the request could not be recorded; retry later".into(),
            ))
        }
    }
}

/// Records one use of an assertion (`kind`: "assertion" or "saml"), keyed by
/// its issuer and id, until `expires_at`; `Ok(false)` if it was used before.
pub async fn record_assertion_use(
    app: &Arc<App>,
    kind: &str,
    issuer: &str,
    id: &str,
    expires_at: i64,
) -> Result<bool, OAuthError> {
    let digest = crate::digest::sha256(format!("{issuer}\n{id}").as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    apply_once(
        app,
        RevokedToken {
            jti: format!("{kind}:{hex}"),
            expires_at: crate::revocation::time::Timestamp(expires_at),
            rotated_at: None,
            rotated_at_ms: None,
        },
    )
    .await
}

/// Records a single-use id durably; `Ok(false)` if it was used before.
async fn apply_once(app: &Arc<App>, t: RevokedToken) -> Result<bool, OAuthError> {
    let a2 = app.clone();
    let started = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || a2.revocations.record_once(t)).await;
    app.metrics
        .store_call("use_once", started.elapsed(), matches!(r, Ok(Ok(_))));
    match r {
        Ok(Ok(fresh)) => Ok(fresh),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a single-use id could not be recorded; answering 503");
            Err(OAuthError::Unavailable(
                "the request could not be recorded; retry later".into(),
            ))
        }
        Err(e) => Err(OAuthError::Unavailable(format!("the writer failed: {e}"))),
    }
}
