//! Bearer token validation for proxied routes (RFC 9068 profile, RFC 6750
//! errors).
//!
//! Signature checks are the expensive part, so a verified token is cached,
//! keyed by the SHA-256 of the whole token (the token itself is never kept).
//! What can change while a token lives (time, revocations) is checked on
//! every request, cache hit or not.

use super::keys::LoadedKey;
use super::TokenConfig;
use crate::revocation::RevocationSet;
use dashmap::DashMap;
use http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use serde::Deserialize;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Why a token was refused. `reason()` labels metrics; `description()` goes
/// into `WWW-Authenticate` and never echoes token content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token type must be at+jwt")]
    WrongType,
    #[error("signing key not recognised")]
    UnknownKey,
    #[error("algorithm not allowed for this key")]
    WrongAlgorithm,
    #[error("invalid signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("required claim missing or invalid")]
    MissingClaim,
    #[error("token revoked")]
    Revoked,
}

impl TokenError {
    pub const ALL: [TokenError; 11] = [
        TokenError::Malformed,
        TokenError::WrongType,
        TokenError::UnknownKey,
        TokenError::WrongAlgorithm,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
        TokenError::MissingClaim,
        TokenError::Revoked,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::WrongType => "wrong_type",
            TokenError::UnknownKey => "unknown_key",
            TokenError::WrongAlgorithm => "wrong_algorithm",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim => "missing_claim",
            TokenError::Revoked => "revoked",
        }
    }
}

/// The claims valet relies on; JSON types are enforced (a string `exp` fails).
#[derive(Deserialize)]
struct Claims {
    sub: String,
    client_id: String,
    jti: String,
    iat: i64,
    exp: i64,
    nbf: Option<i64>,
    #[serde(default)]
    scope: String,
    /// valet's refresh-token family, on tokens issued from a refresh grant chain.
    fam: Option<String>,
}

/// A token whose signature and static claims were verified.
#[derive(Debug)]
pub struct VerifiedToken {
    pub subject: Box<str>,
    pub client_id: Box<str>,
    pub jti: Box<str>,
    pub scopes: Box<[Box<str>]>,
    pub iat: i64,
    pub exp: i64,
    pub nbf: Option<i64>,
    /// The refresh-token family this token descends from, if any.
    pub family: Option<Box<str>>,
    /// Ready-made header values for identity injection (no per-request allocation).
    pub subject_header: HeaderValue,
    pub client_id_header: HeaderValue,
    pub scopes_header: HeaderValue,
    /// Short SHA-256 fingerprint for logs.
    pub fingerprint: String,
}

impl VerifiedToken {
    pub fn has_scope(&self, s: &str) -> bool {
        self.scopes.iter().any(|t| &**t == s)
    }
}

/// SHA-256 digests are uniform; their first 8 bytes are a fine hash.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its bytes (after no length prefix for arrays).
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

type Cache = DashMap<[u8; 32], Arc<VerifiedToken>, BuildHasherDefault<DigestHasher>>;

struct KeyEntry {
    key: Arc<LoadedKey>,
    validation: Validation,
}

/// Validates tokens against one config snapshot's keys, issuer and audiences.
pub struct Validator {
    keys: Vec<KeyEntry>,
    skew: i64,
    cache: Cache,
    cache_cap: usize,
}

impl Validator {
    pub fn new(cfg: &TokenConfig) -> Self {
        let keys = cfg
            .keys
            .iter()
            .map(|k| {
                let mut v = Validation::new(k.algorithm);
                v.set_issuer(&[&cfg.issuer]);
                v.set_audience(&cfg.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                v.leeway = cfg.clock_skew.as_secs();
                v.validate_nbf = true;
                KeyEntry {
                    key: k.clone(),
                    validation: v,
                }
            })
            .collect();
        Validator {
            keys,
            skew: cfg.clock_skew.as_secs() as i64,
            cache: Cache::default(),
            cache_cap: cfg.cache_entries,
        }
    }

    /// Validates `token` at time `now` (unix seconds) against `revoked`.
    pub fn validate(
        &self,
        token: &str,
        revoked: &RevocationSet,
        now: i64,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        let digest: [u8; 32] = crate::digest::sha256(token.as_bytes());
        let verified = match self.cache.get(&digest) {
            Some(v) => v.clone(),
            None => {
                let v = Arc::new(self.verify(token, &digest)?);
                if self.cache.len() < self.cache_cap {
                    self.cache.insert(digest, v.clone());
                }
                v
            }
        };
        // Checked on every request: time moves and revocations arrive.
        if now > verified.exp.saturating_add(self.skew) {
            return Err(TokenError::Expired);
        }
        if verified
            .nbf
            .is_some_and(|nbf| now.saturating_add(self.skew) < nbf)
        {
            return Err(TokenError::NotYetValid);
        }
        match revoked.check(
            &verified.jti,
            &verified.client_id,
            &verified.subject,
            verified.iat,
            verified.family.as_deref(),
        ) {
            Some(_) => Err(TokenError::Revoked),
            None => Ok(verified),
        }
    }

    /// Drops cached entries that expired; called periodically off the request path.
    pub fn prune(&self, now: i64) {
        self.cache
            .retain(|_, v| v.exp.saturating_add(self.skew) >= now);
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn verify(&self, token: &str, digest: &[u8; 32]) -> Result<VerifiedToken, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_failure(token))?;
        // RFC 9068 §4: the `typ` header must be at+jwt; jsonwebtoken does not check it.
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(TokenError::WrongType);
        }
        let candidates: Vec<&KeyEntry> = match &header.kid {
            Some(kid) => self.keys.iter().filter(|k| &k.key.id == kid).collect(),
            None => self.keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        // The key decides the algorithm; a token naming another one is refused
        // before any signature check (defeats alg confusion and `none`).
        let mut last = TokenError::WrongAlgorithm;
        for k in candidates.iter().filter(|k| k.key.algorithm == header.alg) {
            match jsonwebtoken::decode::<Claims>(token, &k.key.decoding, &k.validation) {
                Ok(data) => return build(data.claims, digest),
                Err(e) => {
                    last = map_error(e.kind());
                    if last != TokenError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// Why a header would not parse: an algorithm valet never accepts (`none`,
/// anything unknown) is reported as such; everything else is malformed.
fn header_failure(token: &str) -> TokenError {
    use base64::Engine;
    let alg = token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
    match alg {
        Some(_) => TokenError::WrongAlgorithm,
        None => TokenError::Malformed,
    }
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            TokenError::MissingClaim
        }
        ErrorKind::Json(_) => TokenError::MissingClaim,
        _ => TokenError::Malformed,
    }
}

fn build(c: Claims, digest: &[u8; 32]) -> Result<VerifiedToken, TokenError> {
    if c.sub.is_empty() || c.client_id.is_empty() || c.jti.is_empty() {
        return Err(TokenError::MissingClaim);
    }
    // Values become upstream headers; refuse what a header cannot carry.
    let hv = |s: &str| HeaderValue::from_str(s).map_err(|_| TokenError::MissingClaim);
    Ok(VerifiedToken {
        subject_header: hv(&c.sub)?,
        client_id_header: hv(&c.client_id)?,
        scopes_header: hv(&c.scope)?,
        scopes: c.scope.split_ascii_whitespace().map(Into::into).collect(),
        subject: c.sub.into(),
        client_id: c.client_id.into(),
        jti: c.jti.into(),
        iat: c.iat,
        exp: c.exp,
        nbf: c.nbf,
        family: c.fam.map(Into::into),
        fingerprint: super::hex4(digest),
    })
}
