//! Access tokens (RFC 9068 JWTs): keys, validation with a verified-token
//! cache, and minting.

pub mod issue;
pub mod issuers;
pub mod jose;
pub mod jwks;
pub mod keys;
pub mod validate;

pub use validate::{TokenError, Validator, VerifiedToken};

use keys::LoadedKey;
use std::sync::Arc;
use std::time::Duration;

/// How tokens are validated and minted (the `tokens` section, compiled).
#[derive(Debug)]
pub struct TokenConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub clock_skew: Duration,
    pub keys: Vec<Arc<LoadedKey>>,
    /// Index into `keys` of the key that signs new tokens, if any.
    pub signing_key: Option<usize>,
    pub access_token_ttl: Duration,
    pub cache_entries: usize,
    /// Trusted external issuers, whose tokens are validated beside valet's.
    pub issuers: Vec<Arc<issuers::TrustedIssuer>>,
}

impl TokenConfig {
    pub fn signer(&self) -> Option<&LoadedKey> {
        self.signing_key.map(|i| &*self.keys[i])
    }
}

/// A short, non-reversible token fingerprint for logs: 8 hex digits of SHA-256.
pub fn fingerprint(token: &str) -> String {
    let d = crate::digest::sha256(token.as_bytes());
    hex4(d.as_ref())
}

pub(crate) fn hex4(d: &[u8]) -> String {
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

pub use crate::credentials::random_id;
