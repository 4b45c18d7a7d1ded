//! Minting access tokens (RFC 9068 `at+jwt`) with the configured signing key.

use crate::config::TokenConfig;
use jsonwebtoken::Header;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct AccessClaims<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub aud: &'a str,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: &'a str,
    pub scope: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no signing key is configured (a key with private_key_file)")]
    NoSigningKey,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// What to put in a new token.
pub struct TokenRequest<'a> {
    pub subject: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
    pub ttl: Option<Duration>,
}

/// A minted token and its id.
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub expires_in: u64,
}

/// Signs a new access token at time `now` (unix seconds).
pub fn mint(cfg: &TokenConfig, req: &TokenRequest<'_>, now: i64) -> Result<Minted, IssueError> {
    let key = cfg.signer().ok_or(IssueError::NoSigningKey)?;
    let ttl = req.ttl.unwrap_or(cfg.access_token_ttl).as_secs();
    let jti = super::random_id();
    let claims = AccessClaims {
        iss: &cfg.issuer,
        sub: req.subject,
        aud: &cfg.audiences[0],
        exp: now + ttl as i64,
        iat: now,
        nbf: now,
        jti: jti.clone(),
        client_id: req.client_id,
        scope: req.scope,
    };
    let mut header = Header::new(key.algorithm);
    header.typ = Some("at+jwt".into());
    header.kid = Some(key.id.clone());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        key.encoding.as_ref().ok_or(IssueError::NoSigningKey)?,
    )?;
    Ok(Minted {
        token,
        jti,
        expires_in: ttl,
    })
}
