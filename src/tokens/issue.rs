//! Minting valet's tokens with the configured signing key: access tokens
//! (RFC 9068 `at+jwt`) and refresh tokens (`rt+jwt`, audience = valet itself,
//! so a refresh token is never accepted where an access token is expected),
//! and decoding them back for revocation and introspection.

use super::TokenConfig;
use jsonwebtoken::{Header, Validation};
use serde_json::{Map, Value};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no signing key is configured (a key with private_key_file)")]
    NoSigningKey,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// What to put in a new token.
#[derive(Default)]
pub struct TokenRequest<'a> {
    pub subject: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
    /// Lifetime; the configured default when `None`.
    pub ttl: Option<Duration>,
    /// `aud`; the first configured audience when `None`.
    pub audience: Option<&'a str>,
    /// The refresh-token family the token belongs to (`fam`).
    pub family: Option<&'a str>,
    /// When the family ends (`fexp`, unix seconds): a refresh token never
    /// outlives it, however often the family is refreshed.
    pub family_expires: Option<i64>,
    /// Extra claims (identity mapping). Reserved names are refused by config validation.
    pub extra: Option<&'a Map<String, Value>>,
}

/// A minted token and its id.
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub expires_in: u64,
    pub expires_at: i64,
}

/// The `typ` of valet's refresh tokens.
pub const REFRESH_TYP: &str = "rt+jwt";

/// Signs a new access token at time `now` (unix seconds).
pub fn mint(cfg: &TokenConfig, req: &TokenRequest<'_>, now: i64) -> Result<Minted, IssueError> {
    let aud = req
        .audience
        .or(cfg.audiences.first().map(String::as_str))
        .unwrap_or_default();
    sign(
        cfg,
        req,
        aud,
        "at+jwt",
        req.ttl.unwrap_or(cfg.access_token_ttl),
        false,
        now,
    )
}

/// Signs a new refresh token; its audience is valet's issuer.
pub fn mint_refresh(
    cfg: &TokenConfig,
    req: &TokenRequest<'_>,
    ttl: Duration,
    now: i64,
) -> Result<Minted, IssueError> {
    sign(cfg, req, &cfg.issuer, REFRESH_TYP, ttl, true, now)
}

fn sign(
    cfg: &TokenConfig,
    req: &TokenRequest<'_>,
    aud: &str,
    typ: &str,
    ttl: Duration,
    refresh: bool,
    now: i64,
) -> Result<Minted, IssueError> {
    let key = cfg.signer().ok_or(IssueError::NoSigningKey)?;
    let ttl = ttl.as_secs();
    let jti = super::random_id();
    let mut claims = Map::new();
    if let Some(extra) = req.extra {
        if refresh {
            // Carried so that refreshed access tokens keep the mapped identity.
            claims.insert("ext".into(), Value::Object(extra.clone()));
        } else {
            claims.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let mut exp = now + ttl as i64;
    if refresh {
        if let Some(fexp) = req.family_expires {
            exp = exp.min(fexp);
            claims.insert("fexp".into(), Value::from(fexp));
        }
    }
    for (k, v) in [
        ("iss", Value::from(cfg.issuer.as_str())),
        ("sub", Value::from(req.subject)),
        ("aud", Value::from(aud)),
        ("exp", Value::from(exp)),
        ("iat", Value::from(now)),
        ("nbf", Value::from(now)),
        ("jti", Value::from(jti.as_str())),
        ("client_id", Value::from(req.client_id)),
        ("scope", Value::from(req.scope)),
    ] {
        claims.insert(k.into(), v);
    }
    if let Some(f) = req.family {
        claims.insert("fam".into(), Value::from(f));
    }
    let mut header = Header::new(key.algorithm);
    header.typ = Some(typ.into());
    header.kid = Some(key.id.clone());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        key.encoding.as_ref().ok_or(IssueError::NoSigningKey)?,
    )?;
    Ok(Minted {
        token,
        jti,
        expires_in: exp.saturating_sub(now).max(0) as u64,
        expires_at: exp,
    })
}

/// Which of valet's tokens a string is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Access,
    Refresh,
}

/// The claims of one of valet's own tokens, after its signature was checked.
#[derive(Debug, Clone)]
pub struct Own {
    pub kind: Kind,
    pub sub: String,
    pub client_id: String,
    pub jti: String,
    pub scope: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: Option<i64>,
    pub aud: Value,
    pub family: Option<String>,
    /// When the family ends (refresh tokens).
    pub family_expires: Option<i64>,
    pub ext: Option<Map<String, Value>>,
}

/// Verifies that `token` was signed by one of valet's keys and issued by
/// valet; `check_exp` decides whether an expired token still decodes.
/// Revocations are not consulted here.
pub fn decode_own(cfg: &TokenConfig, token: &str, check_exp: bool) -> Option<Own> {
    let header = super::jose::header(token).ok()?;
    let kind = match header.typ.as_deref() {
        Some(t)
            if t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt") =>
        {
            Kind::Access
        }
        Some(REFRESH_TYP) => Kind::Refresh,
        _ => return None,
    };
    let key = cfg
        .keys
        .iter()
        .find(|k| header.kid.as_deref() == Some(k.id.as_str()) && k.algorithm == header.alg)?;
    let mut v = Validation::new(key.algorithm);
    v.set_issuer(&[&cfg.issuer]);
    v.validate_aud = false;
    v.validate_exp = check_exp;
    v.validate_nbf = check_exp;
    v.leeway = cfg.clock_skew.as_secs();
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &v).ok()?;
    let c = data.claims;
    let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
    let i = |k: &str| c.get(k).and_then(Value::as_i64);
    let aud = c.get("aud").cloned().unwrap_or(Value::Null);
    if kind == Kind::Refresh && aud != cfg.issuer.as_str() {
        return None;
    }
    Some(Own {
        kind,
        sub: s("sub")?,
        client_id: s("client_id")?,
        jti: s("jti")?,
        scope: s("scope").unwrap_or_default(),
        exp: i("exp")?,
        iat: i("iat")?,
        nbf: i("nbf"),
        aud,
        family: s("fam"),
        family_expires: i("fexp"),
        ext: c.get("ext").and_then(Value::as_object).cloned(),
    })
}
