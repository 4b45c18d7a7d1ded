//! The SAML 2.0 bearer grant (RFC 7522 §2.1, §3): the `assertion` parameter
//! is one base64url-encoded SAML 2.0 Assertion, verified and checked by
//! `crate::saml::assertion`, single-use until it expires (recorded in the
//! durable revocation store), then mapped to a subject, claims and scopes.

use super::error::OAuthError;
use super::jwt_bearer::Mapped;
use super::state::record_assertion_use;
use super::Call;
use crate::credentials::Client;
use crate::saml::assertion::{validate, Expect};
use serde_json::{Map, Value};

/// Largest accepted assertion (decoded).
const MAX_ASSERTION_BYTES: usize = 32 * 1024;

fn invalid(why: impl std::fmt::Display) -> OAuthError {
    OAuthError::InvalidGrant(format!("the assertion is invalid: {why}"))
}

pub async fn verify(c: Call<'_>, client: &Client) -> Result<Mapped, OAuthError> {
    let sb = client.saml2_bearer.as_ref().ok_or_else(|| {
        OAuthError::UnauthorizedClient("this client has no trusted identity provider".into())
    })?;
    let encoded = c.form.require("assertion")?;
    use base64::Engine;
    // RFC 7522 §2.1: base64url; tolerate padding.
    let xml = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| invalid("not base64url"))?;
    if xml.len() > MAX_ASSERTION_BYTES {
        return Err(invalid("too large"));
    }
    let xml = String::from_utf8(xml).map_err(|_| invalid("not UTF-8"))?;
    let tokens = &c.snap.config.tokens;
    let recipient = c.token_endpoint();
    let expect = Expect {
        idp_entity_id: &sb.idp_entity_id,
        idp_cert_der: &sb.idp_cert_der,
        audience: &sb.entity_id,
        recipient: &recipient,
        now: c.now,
        skew: tokens.clock_skew.as_secs() as i64,
    };
    let assertion = validate(&xml, &expect).map_err(invalid)?;

    // Replay: one use per (issuer, ID) until the assertion expires.
    let fresh = record_assertion_use(
        c.app,
        "saml",
        &assertion.issuer,
        &assertion.id,
        assertion.expires_at + expect.skew,
    )
    .await?;
    if !fresh {
        return Err(invalid("it was already used"));
    }

    let attr = |name: &str| {
        assertion
            .attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    };
    let subject = match &sb.subject_attribute {
        None => assertion.name_id.clone(),
        Some(name) => attr(name)
            .and_then(|v| v.first().cloned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(format!("the subject attribute `{name}` is missing")))?,
    };
    let subject = format!("{}{subject}", sb.subject_prefix);
    let mut claims = Map::new();
    for (out, name) in &sb.claims {
        match attr(name).map(|v| v.as_slice()) {
            Some([one]) => {
                claims.insert(out.clone(), Value::from(one.as_str()));
            }
            Some(many) if !many.is_empty() => {
                claims.insert(out.clone(), Value::from(many.to_vec()));
            }
            _ => {}
        }
    }
    let scopes = sb
        .scopes_attribute
        .as_ref()
        .map(|name| attr(name).cloned().unwrap_or_default());
    Ok(Mapped {
        subject,
        prefix: sb.subject_prefix.clone(),
        claims,
        scopes,
    })
}
