//! Credentials (a foundation: no handler needed to read them): registered
//! clients and password-grant users, with their secrets stored
//! hashed: argon2id (PHC strings) for anything a human chose, HMAC-SHA256
//! under a per-installation pepper for the 256-bit secrets valet generates
//! (fast, so the token endpoint cannot be made to burn CPU on argon2).

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::PasswordHasher;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A secret held in memory; never printed, and overwritten with zeros when
/// dropped (`zeroize`, whose writes the compiler may not elide).
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut *self.0);
    }
}

impl Secret {
    pub fn new(b: impl Into<Box<[u8]>>) -> Self {
        Secret(b.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A stored secret hash.
#[derive(Clone)]
pub enum SecretHash {
    Argon2id(Arc<Argon2Hash>),
    HmacSha256([u8; 32]),
}

/// The largest argon2 memory cost a stored hash may ask for (256 MiB): every
/// verification holds this much, so it bounds what one attempt can cost.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
/// The largest argon2 time cost a stored hash may ask for.
pub const MAX_ARGON2_PASSES: u32 = 16;

/// An argon2id hash, parsed once at load so a verification only hashes.
pub struct Argon2Hash {
    params: argon2::Params,
    version: argon2::Version,
    salt: Box<[u8]>,
    expected: Box<[u8]>,
}

impl Argon2Hash {
    /// Memory blocks (1 KiB each) one verification needs.
    pub fn blocks(&self) -> usize {
        self.params.block_count()
    }

    /// Verifies with the caller's memory, grown if it is too small, so a
    /// worker that verifies all day allocates once.
    pub fn verify_with(&self, candidate: &[u8], memory: &mut Vec<argon2::Block>) -> bool {
        let n = self.blocks();
        if memory.len() < n {
            memory.resize(n, argon2::Block::new());
        }
        let mut out = [0u8; 64];
        let Some(out) = out.get_mut(..self.expected.len()) else {
            return false;
        };
        let ctx = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            self.version,
            self.params.clone(),
        );
        ctx.hash_password_into_with_memory(candidate, &self.salt, out, &mut memory[..n])
            .is_ok()
            && aws_lc_rs::constant_time::verify_slices_are_equal(out, &self.expected).is_ok()
    }

    /// A fingerprint of the stored hash (not of the secret): a cache keyed
    /// with it forgets entries when the secret changes.
    pub fn fingerprint(&self) -> &[u8] {
        &self.expected
    }

    fn parse(s: &str) -> Result<Argon2Hash, String> {
        let parsed =
            PasswordHash::new(s).map_err(|e| format!("not an argon2id PHC string: {e}"))?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(format!(
                "hash algorithm `{}` is not allowed; use argon2id",
                parsed.algorithm
            ));
        }
        let params =
            argon2::Params::try_from(&parsed).map_err(|e| format!("argon2id parameters: {e}"))?;
        if params.m_cost() > MAX_ARGON2_MEMORY_KIB || params.t_cost() > MAX_ARGON2_PASSES {
            return Err(format!(
                "argon2id cost m={} KiB, t={} is above valet's bound (m <= {MAX_ARGON2_MEMORY_KIB}, \
                 t <= {MAX_ARGON2_PASSES}): every attempt, even a wrong one, would cost that much",
                params.m_cost(),
                params.t_cost()
            ));
        }
        let version = match parsed.version {
            None => argon2::Version::default(),
            Some(v) => argon2::Version::try_from(v)
                .map_err(|_| format!("argon2id version {v} is not supported"))?,
        };
        let salt = parsed.salt.ok_or("the argon2id hash has no salt")?;
        let expected = parsed.hash.ok_or("the argon2id hash has no output")?;
        if expected.len() < 16 || expected.len() > 64 {
            return Err("the argon2id output must be 16 to 64 bytes".into());
        }
        Ok(Argon2Hash {
            params,
            version,
            salt: salt.as_ref().into(),
            expected: expected.as_bytes().into(),
        })
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretHash::Argon2id(_) => f.write_str("argon2id([redacted])"),
            SecretHash::HmacSha256(_) => f.write_str("hmac-sha256([redacted])"),
        }
    }
}

pub const HMAC_PREFIX: &str = "hmac-sha256:";

impl SecretHash {
    /// Parses a stored hash; `Err` says what is wrong in a sentence.
    pub fn parse(s: &str) -> Result<SecretHash, String> {
        use base64::Engine;
        if let Some(b64) = s.strip_prefix(HMAC_PREFIX) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "the hmac-sha256 hash is not valid base64".to_string())?;
            let arr: [u8; 32] = bytes
                .try_into()
                .map_err(|_| "the hmac-sha256 hash must be 32 bytes".to_string())?;
            return Ok(SecretHash::HmacSha256(arr));
        }
        Argon2Hash::parse(s).map(|h| SecretHash::Argon2id(Arc::new(h)))
    }

    /// Checks `candidate` in constant time with respect to its content.
    /// Allocates argon2's memory on every call: the token endpoint uses
    /// the hash pool of the token endpoints instead.
    pub fn verify(&self, candidate: &[u8], pepper: Option<&Secret>) -> bool {
        match self {
            // Off the token endpoint (which goes through the hash pool): the
            // CLI and tests, where a fresh buffer per call is fine.
            SecretHash::Argon2id(h) => h.verify_with(candidate, &mut Vec::new()),
            SecretHash::HmacSha256(expected) => {
                let Some(pepper) = pepper else { return false };
                let got = hmac(pepper, candidate);
                aws_lc_rs::constant_time::verify_slices_are_equal(&got, expected).is_ok()
            }
        }
    }

    /// Whether two stored hashes are the same (the same secret, stored once).
    pub fn same(&self, other: &SecretHash) -> bool {
        match (self, other) {
            (SecretHash::Argon2id(a), SecretHash::Argon2id(b)) => {
                a.fingerprint() == b.fingerprint() && a.salt == b.salt
            }
            (SecretHash::HmacSha256(a), SecretHash::HmacSha256(b)) => a == b,
            _ => false,
        }
    }

    pub fn is_argon2(&self) -> bool {
        matches!(self, SecretHash::Argon2id(_))
    }
}

fn hmac(pepper: &Secret, msg: &[u8]) -> [u8; 32] {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, pepper.expose());
    aws_lc_rs::hmac::sign(&key, msg)
        .as_ref()
        .try_into()
        .expect("32 bytes")
}

/// The stored form of a valet-generated secret.
pub fn hmac_hash(pepper: &Secret, secret: &str) -> String {
    use base64::Engine;
    format!(
        "{HMAC_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(hmac(pepper, secret.as_bytes()))
    )
}

/// An argon2id PHC string for a password or human-chosen secret.
pub fn argon2id_hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).expect("system randomness");
    argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

/// 128 random bits, base64url: token ids, request ids, OAuth 1.0 nonces.
pub fn random_id() -> String {
    use base64::Engine;
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A new client secret: 256 random bits, base64url.
pub fn generate_secret() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Grant types, as named on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grant {
    ClientCredentials,
    Password,
    RefreshToken,
    JwtBearer,
    Saml2Bearer,
}

/// RFC 7522 §2.1.
pub const SAML2_BEARER: &str = "urn:ietf:params:oauth:grant-type:saml2-bearer";

/// RFC 7523 §2.1.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

impl Grant {
    pub fn parse(s: &str) -> Option<Grant> {
        match s {
            "client_credentials" => Some(Grant::ClientCredentials),
            "password" => Some(Grant::Password),
            "refresh_token" => Some(Grant::RefreshToken),
            JWT_BEARER => Some(Grant::JwtBearer),
            SAML2_BEARER => Some(Grant::Saml2Bearer),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::Password => "password",
            Grant::RefreshToken => "refresh_token",
            Grant::JwtBearer => JWT_BEARER,
            Grant::Saml2Bearer => SAML2_BEARER,
        }
    }
}

#[derive(Debug)]
pub struct Client {
    pub id: String,
    pub secret: SecretHash,
    pub grants: Vec<Grant>,
    pub operator: Option<String>,
    pub scopes: Vec<String>,
    pub default_scopes: Vec<String>,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// A refresh-token family ends this long after its login.
    pub family_max_lifetime: Duration,
    pub use_refresh_token: bool,
    pub introspect_any: bool,
    pub jwt_bearer: Option<JwtBearer>,
    pub saml2_bearer: Option<Saml2Bearer>,
    /// Defined in the clients file (valet may rewrite it) rather than the config.
    pub managed: bool,
}

impl Client {
    pub fn allows(&self, g: Grant) -> bool {
        match g {
            Grant::RefreshToken => self.use_refresh_token,
            g => self.grants.contains(&g),
        }
    }
}

/// One trusted key of an assertion issuer; the algorithm is the key's.
pub struct AssertionKey {
    pub kid: Option<String>,
    pub algorithm: jsonwebtoken::Algorithm,
    pub key: jsonwebtoken::DecodingKey,
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssertionKey({:?}, {:?})", self.kid, self.algorithm)
    }
}

#[derive(Debug)]
pub struct AssertionIssuer {
    pub issuer: String,
    pub keys: Vec<AssertionKey>,
    /// Put before every subject it asserts ("" for none).
    pub subject_prefix: String,
}

/// A client's JWT bearer grant settings (RFC 7523) and identity mapping.
#[derive(Debug)]
pub struct JwtBearer {
    pub issuers: Vec<AssertionIssuer>,
    pub max_lifetime: Duration,
    pub subject_claim: String,
    /// Access token claim ← assertion claim.
    pub claims: Vec<(String, String)>,
    pub scopes_claim: Option<String>,
}

/// A client's SAML bearer grant settings (RFC 7522) and identity mapping.
#[derive(Debug)]
pub struct Saml2Bearer {
    pub idp_entity_id: String,
    pub idp_cert_der: Vec<u8>,
    /// valet's entity id (the required audience).
    pub entity_id: String,
    pub subject_attribute: Option<String>,
    /// Access token claim ← SAML attribute.
    pub claims: Vec<(String, String)>,
    pub scopes_attribute: Option<String>,
    /// Put before every subject the IdP asserts ("" for none).
    pub subject_prefix: String,
}

#[derive(Debug)]
pub struct User {
    pub username: String,
    pub password: SecretHash,
    pub scopes: Vec<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Everything the authorization server knows, for one config snapshot.
#[derive(Debug, Default)]
pub struct Registry {
    pub clients: HashMap<String, Arc<Client>>,
    pub users: HashMap<String, Arc<User>>,
    pub pepper: Option<Secret>,
    /// Hashed when a client id or username is unknown, so that costs what a
    /// wrong secret costs.
    pub dummy_client: Option<SecretHash>,
    pub dummy_user: Option<SecretHash>,
    /// Every assertion issuer's subject prefix (namespaces that do not overlap).
    pub subject_prefixes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_verify_only_with_the_right_input() {
        let pepper = Secret::new(b"pepper".to_vec());
        let h = SecretHash::parse(&hmac_hash(&pepper, "s3cret")).unwrap();
        assert!(h.verify(b"s3cret", Some(&pepper)));
        assert!(!h.verify(b"s3cret!", Some(&pepper)));
        assert!(!h.verify(b"s3cret", Some(&Secret::new(b"other".to_vec()))));
        let a = SecretHash::parse(&argon2id_hash("pw:%+")).unwrap();
        assert!(a.verify(b"pw:%+", None));
        assert!(!a.verify(b"pw", None));
    }

    /// Our verification (parsed once, caller's memory) agrees with the
    /// crate's own `PasswordVerifier` on hashes with other costs, lanes and
    /// versions, and on wrong candidates.
    #[test]
    fn argon2_verification_agrees_with_the_crate() {
        use argon2::password_hash::{CustomizedPasswordHasher, PasswordVerifier};
        let mut memory = Vec::new();
        for (m, t, p, v) in [(19456, 2, 1, 0x13), (4096, 3, 2, 0x13), (2048, 1, 4, 0x10)] {
            let params = argon2::Params::new(m, t, p, Some(32)).unwrap();
            let phc = argon2::Argon2::default()
                .hash_password_customized(b"pw", b"saltsaltsalt", None, Some(v), params)
                .unwrap()
                .to_string();
            let parsed = argon2::PasswordHash::new(&phc).unwrap();
            let SecretHash::Argon2id(ours) = SecretHash::parse(&phc).unwrap() else {
                panic!("an argon2id hash")
            };
            for cand in [&b"pw"[..], b"pW", b"", b"pw\0"] {
                let crate_says = argon2::Argon2::default()
                    .verify_password(cand, &parsed)
                    .is_ok();
                assert_eq!(
                    ours.verify_with(cand, &mut memory),
                    crate_says,
                    "{phc} {cand:?}"
                );
            }
            assert!(ours.verify_with(b"pw", &mut memory));
        }
        // The buffer grew to the largest hash and was reused.
        assert_eq!(memory.len(), 19456);
    }

    #[test]
    fn argon2_costs_above_the_bound_are_refused() {
        let big = "$argon2id$v=19$m=1048576,t=2,p=1$c2FsdHNhbHQ$fQ0J0Vf3JjN8cGwZ5x0bUwfQ0J0Vf3JjN8cGwZ5x0bU";
        let e = SecretHash::parse(big).err().unwrap();
        assert!(e.contains("above valet's bound"), "{e}");
        let slow = "$argon2id$v=19$m=19456,t=100,p=1$c2FsdHNhbHQ$fQ0J0Vf3JjN8cGwZ5x0bUwfQ0J0Vf3JjN8cGwZ5x0bU";
        assert!(SecretHash::parse(slow).is_err());
    }

    #[test]
    fn weak_or_malformed_hashes_are_refused() {
        assert!(SecretHash::parse("plaintext").is_err());
        assert!(SecretHash::parse("hmac-sha256:AAAA").is_err());
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$fQ0J0Vf3JjN8cGwZ5x0bUw";
        assert!(SecretHash::parse(argon2i).is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new(b"x".to_vec())), "[redacted]");
    }
}
