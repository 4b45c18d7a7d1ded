//! Bearer token validation for proxied routes (RFC 9068 profile, RFC 6750
//! errors).
//!
//! Signature checks are the expensive part, so a verified token is cached,
//! keyed by the SHA-256 of the whole token (the token itself is never kept).
//! What can change while a token lives (time, revocations) is checked on
//! every request, cache hit or not.

use super::issuers::{claim, normalize_type, not_an_access_token, words, KeySource};
use super::jose::{self, HeaderRefusal};
use super::jwks::RemoteKeys;
use super::keys::LoadedKey;
use super::TokenConfig;
use crate::revocation::RevocationSet;
use dashmap::DashMap;
use http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
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
    #[error("not an access token")]
    NotAccessToken,
    #[error("the token's issuer is not accepted here")]
    IssuerNotAccepted,
    #[error("the token names critical header extensions (crit), which valet does not understand")]
    CriticalExtension,
}

impl TokenError {
    pub const ALL: [TokenError; 14] = [
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
        TokenError::NotAccessToken,
        TokenError::IssuerNotAccepted,
        TokenError::CriticalExtension,
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
            TokenError::NotAccessToken => "not_access_token",
            TokenError::IssuerNotAccepted => "issuer_not_accepted",
            TokenError::CriticalExtension => "critical_extension",
        }
    }
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
    /// Who vouches for the subject (its `iss`).
    pub issuer_header: HeaderValue,
    /// Short SHA-256 fingerprint for logs.
    pub fingerprint: String,
    /// Who issued it: 0 is valet itself, `i + 1` is `tokens.issuers[i]`.
    pub issuer: usize,
    /// Its `aud` values.
    pub audiences: Box<[Box<str>]>,
    /// Every claim, for routes that inject claims as headers.
    pub claims: Map<String, Value>,
    /// What the revocation map knows it by: (jti, client id, subject), in
    /// the issuer's namespace (valet's own: as they are).
    revocation_keys: Option<Box<[Box<str>; 3]>>,
}

impl VerifiedToken {
    pub fn has_scope(&self, s: &str) -> bool {
        self.scopes.iter().any(|t| &**t == s)
    }

    /// The subject, unique across issuers: as it is for valet's own tokens,
    /// in its issuer's namespace for a trusted issuer's. What valet keeps
    /// per subject (OAuth 1.0 tokens) is keyed by this, so the same `sub`
    /// from two issuers never names one person.
    pub fn namespaced_subject(&self) -> &str {
        match &self.revocation_keys {
            Some(k) => &k[2],
            None => &self.subject,
        }
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

/// One issuer's keys: valet's and file-configured ones, or a remote set.
enum IssuerKeys {
    Local(Vec<Arc<LoadedKey>>),
    Remote(Arc<RemoteKeys>),
}

/// What a token of one issuer must look like.
struct Issuer {
    issuer: String,
    /// `issuer` as a header value, made once (clones share its bytes).
    issuer_header: HeaderValue,
    keys: IssuerKeys,
    audiences: Vec<String>,
    /// Accepted header `typ`s, normalized.
    token_types: Vec<String>,
    required: Vec<String>,
    client_id_claims: Vec<String>,
    scope_claims: Vec<String>,
    skew: u64,
    /// valet's own tokens: `jti`, `iat` and `client_id` are required, and
    /// their claims may include anything identity mapping put there.
    own: bool,
}

/// Validates tokens of valet itself and of the trusted issuers, against one
/// config snapshot.
pub struct Validator {
    /// `[0]` is valet itself; `[i + 1]` is `tokens.issuers[i]`.
    issuers: Vec<Issuer>,
    cache: Cache,
    cache_cap: usize,
}

/// Remote key sets for a validator: one per source, shared across
/// snapshots by whoever builds them (the app), so a reload keeps the keys.
pub type RemoteResolver<'a> = dyn FnMut(&super::jwks::RemoteSource) -> Arc<RemoteKeys> + 'a;

impl Validator {
    /// A validator whose remote key sets are its own (fetched on demand).
    pub fn new(cfg: &TokenConfig) -> Self {
        Self::with_remote(cfg, &mut |src| {
            let c = |n: &str| prometheus::IntCounter::new(n, n).expect("valid metric");
            let g = |n: &str| prometheus::IntGauge::new(n, n).expect("valid metric");
            RemoteKeys::new(
                src.clone(),
                super::jwks::KeySetMetrics {
                    fetched: c("fetched"),
                    failed: c("failed"),
                    limited: c("limited"),
                    stale: g("stale"),
                    keys: g("keys"),
                },
            )
        })
    }

    pub fn with_remote(cfg: &TokenConfig, remote: &mut RemoteResolver<'_>) -> Self {
        let skew = cfg.clock_skew.as_secs();
        let header = |s: &str| {
            HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(s.as_bytes()))
                .unwrap_or(HeaderValue::from_static(""))
        };
        let mut issuers = vec![Issuer {
            issuer_header: header(&cfg.issuer),
            issuer: cfg.issuer.clone(),
            keys: IssuerKeys::Local(cfg.keys.clone()),
            audiences: cfg.audiences.clone(),
            token_types: vec!["at+jwt".into()],
            required: vec!["sub".into(), "client_id".into(), "jti".into(), "iat".into()],
            client_id_claims: vec!["client_id".into()],
            scope_claims: vec!["scope".into()],
            skew,
            own: true,
        }];
        for t in &cfg.issuers {
            issuers.push(Issuer {
                issuer_header: header(&t.issuer),
                issuer: t.issuer.clone(),
                keys: match &t.keys {
                    KeySource::Files(k) => IssuerKeys::Local(k.clone()),
                    KeySource::Remote(src) => IssuerKeys::Remote(remote(src)),
                },
                audiences: t.audiences.clone(),
                token_types: t.token_types.clone(),
                required: t.required_claims.clone(),
                client_id_claims: t.client_id_claims.clone(),
                scope_claims: t.scope_claims.clone(),
                skew: t.clock_skew.as_secs(),
                own: false,
            });
        }
        Validator {
            issuers,
            cache: Cache::default(),
            cache_cap: cfg.cache_entries,
        }
    }

    /// Validates `token` at time `now` (unix seconds) against `revoked`.
    /// `UnknownKey` from a remote issuer may pass after
    /// [`Validator::remote_keys_for`]'s set has refetched.
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
        let skew = self.issuers[verified.issuer].skew as i64;
        if now > verified.exp.saturating_add(skew) {
            return Err(TokenError::Expired);
        }
        if verified
            .nbf
            .is_some_and(|nbf| now.saturating_add(skew) < nbf)
        {
            return Err(TokenError::NotYetValid);
        }
        let hit = match &verified.revocation_keys {
            None => revoked.check(
                Some(&verified.jti),
                &verified.client_id,
                &verified.subject,
                verified.iat,
                verified.family.as_deref(),
            ),
            Some(k) => revoked.check(
                (!verified.jti.is_empty()).then_some(&*k[0]),
                &k[1],
                &k[2],
                verified.iat,
                None,
            ),
        };
        match hit {
            Some(_) => Err(TokenError::Revoked),
            None => Ok(verified),
        }
    }

    /// The remote key set a token's issuer uses, and the `kid` it names:
    /// for a caller that got `UnknownKey` and may wait for a refetch.
    pub fn remote_keys_for(&self, token: &str) -> Option<(Arc<RemoteKeys>, Option<String>)> {
        let header = jose::header(token).ok()?;
        let iss = peek_issuer(token)?;
        let i = self.issuers.iter().position(|i| i.issuer == iss)?;
        match &self.issuers[i].keys {
            IssuerKeys::Remote(r) => Some((r.clone(), header.kid)),
            IssuerKeys::Local(_) => None,
        }
    }

    /// Drops cached entries that expired; called periodically off the request path.
    pub fn prune(&self, now: i64) {
        self.cache
            .retain(|_, v| v.exp.saturating_add(self.issuers[v.issuer].skew as i64) >= now);
    }

    /// Whether this validator uses the remote key set `k`.
    pub fn uses(&self, k: &Arc<RemoteKeys>) -> bool {
        self.issuers
            .iter()
            .any(|i| matches!(&i.keys, IssuerKeys::Remote(r) if Arc::ptr_eq(r, k)))
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn verify(&self, token: &str, digest: &[u8; 32]) -> Result<VerifiedToken, TokenError> {
        let header = jose::header(token).map_err(|r| match r {
            HeaderRefusal::Malformed => TokenError::Malformed,
            HeaderRefusal::Algorithm => TokenError::WrongAlgorithm,
            HeaderRefusal::Critical => TokenError::CriticalExtension,
        })?;
        // The issuer picks the keys and the shape; a token claiming another
        // issuer than its signer's fails the signature or the `iss` check.
        let iss = peek_issuer(token);
        let index = match iss.as_deref() {
            Some(iss) => self
                .issuers
                .iter()
                .position(|i| i.issuer == iss)
                .ok_or(TokenError::WrongIssuer)?,
            None => 0,
        };
        let issuer = &self.issuers[index];
        // RFC 9068 §4: the `typ` header (jsonwebtoken does not check it).
        let typ = normalize_type(header.typ.as_deref().unwrap_or(""));
        if !issuer.token_types.contains(&typ) {
            return Err(TokenError::WrongType);
        }
        let kid = header.kid.as_deref();
        let remote;
        let candidates: Vec<(Algorithm, &DecodingKey)> = match &issuer.keys {
            IssuerKeys::Local(keys) => keys
                .iter()
                .filter(|k| kid.is_none() || Some(k.id.as_str()) == kid)
                .map(|k| (k.algorithm, &k.decoding))
                .collect(),
            IssuerKeys::Remote(r) => {
                remote = r.current();
                remote
                    .by_kid(kid)
                    .map(|k| (k.algorithm, &k.decoding))
                    .collect()
            }
        };
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        // The key decides the algorithm; a token naming another one is refused
        // before any signature check (defeats alg confusion and `none`).
        let mut last = TokenError::WrongAlgorithm;
        for (alg, key) in candidates.into_iter().filter(|(a, _)| *a == header.alg) {
            let mut v = Validation::new(alg);
            v.set_issuer(&[&issuer.issuer]);
            v.set_audience(&issuer.audiences);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v.leeway = issuer.skew;
            v.validate_nbf = true;
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &v) {
                Ok(data) => return build(issuer, index, data.claims, digest),
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

/// The `iss` of a token's payload, unverified: it only picks which keys
/// verify the token, and the signature and the `iss` check decide.
fn peek_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
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

fn build(
    issuer: &Issuer,
    index: usize,
    claims: Map<String, Value>,
    digest: &[u8; 32],
) -> Result<VerifiedToken, TokenError> {
    if !issuer.own && not_an_access_token(&claims) {
        return Err(TokenError::NotAccessToken);
    }
    if issuer
        .required
        .iter()
        .any(|c| claim(&claims, c).is_none_or(Value::is_null))
    {
        return Err(TokenError::MissingClaim);
    }
    // JSON types are enforced: a string `iat` or a numeric `sub` fails.
    let text = |name: &str| -> Result<Option<&str>, TokenError> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(TokenError::MissingClaim),
        }
    };
    let int = |name: &str| -> Result<Option<i64>, TokenError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or(TokenError::MissingClaim),
        }
    };
    let sub = text("sub")?.unwrap_or("");
    let jti = text("jti")?.unwrap_or("");
    let exp = int("exp")?.ok_or(TokenError::MissingClaim)?;
    // No `iat`: issued at an unknown time, so any cut-off applies.
    let iat = int("iat")?.unwrap_or(i64::MIN);
    let nbf = int("nbf")?;
    let family = if issuer.own { text("fam")? } else { None };
    let client_id = match issuer
        .client_id_claims
        .iter()
        .find_map(|c| claim(&claims, c))
    {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(TokenError::MissingClaim),
    };
    let mut scopes: Vec<&str> = Vec::new();
    for c in &issuer.scope_claims {
        if let Some(v) = claim(&claims, c) {
            for w in words(v) {
                if !scopes.contains(&w) {
                    scopes.push(w);
                }
            }
        }
    }
    // Every token names a subject: the identity headers and what valet
    // keeps per subject need one.
    if sub.is_empty() || (issuer.own && jti.is_empty()) {
        return Err(TokenError::MissingClaim);
    }
    let audiences: Box<[Box<str>]> = match claims.get("aud") {
        Some(Value::String(a)) => Box::new([a.as_str().into()]),
        Some(v) => words(v).into_iter().map(Into::into).collect(),
        None => Box::new([]),
    };
    // Values become upstream headers; refuse what a header cannot carry.
    let hv = |s: &str| HeaderValue::from_str(s).map_err(|_| TokenError::MissingClaim);
    let scope_text = scopes.join(" ");
    let revocation_keys = (!issuer.own).then(|| {
        let scoped = |k: &str| crate::revocation::scoped(&issuer.issuer, k).into_boxed_str();
        Box::new([scoped(jti), scoped(&client_id), scoped(sub)])
    });
    Ok(VerifiedToken {
        subject_header: hv(sub)?,
        client_id_header: hv(&client_id)?,
        scopes_header: hv(&scope_text)?,
        issuer_header: issuer.issuer_header.clone(),
        scopes: scopes.iter().map(|s| (*s).into()).collect(),
        subject: sub.into(),
        client_id: client_id.into(),
        jti: jti.into(),
        iat,
        exp,
        nbf,
        family: family.map(Into::into),
        fingerprint: super::hex4(digest),
        issuer: index,
        audiences,
        revocation_keys,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::issuers::TrustedIssuer;
    use crate::tokens::keys::{self, KeyConfig};
    use std::time::Duration;

    fn key(dir: &std::path::Path, id: &str) -> Arc<LoadedKey> {
        let cfg = KeyConfig {
            id: id.into(),
            algorithm: Algorithm::EdDSA,
            private_key_file: Some(dir.join(format!("{id}.pem"))),
            public_key_file: None,
            generate_if_missing: true,
        };
        Arc::new(keys::load(&cfg, &mut Vec::new()).unwrap())
    }

    fn sign(k: &LoadedKey, typ: &str, claims: serde_json::Value) -> String {
        let mut h = jsonwebtoken::Header::new(Algorithm::EdDSA);
        h.kid = Some(k.id.clone());
        h.typ = Some(typ.into());
        jsonwebtoken::encode(&h, &claims, k.encoding.as_ref().unwrap()).unwrap()
    }

    /// The same `sub` from valet and from a trusted issuer are two people:
    /// what valet keeps per subject is keyed apart. A token without a
    /// subject is refused whatever the issuer's required claims.
    #[test]
    fn subjects_are_unique_only_within_their_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let (own, idp) = (key(dir.path(), "own"), key(dir.path(), "idp"));
        let cfg = TokenConfig {
            issuer: "https://valet.test".into(),
            audiences: vec!["api".into()],
            clock_skew: Duration::from_secs(5),
            keys: vec![own.clone()],
            signing_key: Some(0),
            access_token_ttl: Duration::from_secs(60),
            cache_entries: 10,
            issuers: vec![Arc::new(TrustedIssuer {
                name: "idp".into(),
                issuer: "https://idp.test".into(),
                keys: KeySource::Files(vec![idp.clone()]),
                audiences: vec!["api".into()],
                token_types: vec!["jwt".into()],
                required_claims: vec![],
                client_id_claims: vec!["azp".into()],
                scope_claims: vec!["scope".into()],
                clock_skew: Duration::from_secs(5),
            })],
        };
        let v = Validator::new(&cfg);
        let revoked = RevocationSet::default();
        let now = crate::revocation::now();
        let mine = sign(
            &own,
            "at+jwt",
            serde_json::json!({"iss": "https://valet.test", "sub": "alice", "aud": "api",
                "exp": now + 60, "iat": now, "jti": "j1", "client_id": "c", "scope": "read"}),
        );
        let theirs = sign(
            &idp,
            "JWT",
            serde_json::json!({"iss": "https://idp.test", "sub": "alice", "aud": "api",
                "exp": now + 60, "azp": "c"}),
        );
        let a = v.validate(&mine, &revoked, now).unwrap();
        let b = v.validate(&theirs, &revoked, now).unwrap();
        assert_eq!((&*a.subject, &*b.subject), ("alice", "alice"));
        assert_ne!(a.namespaced_subject(), b.namespaced_subject());
        assert_eq!((a.issuer, b.issuer), (0, 1));
        let nobody = sign(
            &idp,
            "JWT",
            serde_json::json!({"iss": "https://idp.test", "aud": "api", "exp": now + 60, "azp": "c"}),
        );
        assert_eq!(
            v.validate(&nobody, &revoked, now).unwrap_err(),
            TokenError::MissingClaim
        );
    }
}
