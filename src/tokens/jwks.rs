//! A trusted issuer's remote key set (RFC 7517 JWKS), fetched over rustls
//! from its `jwks_uri` or from OpenID Connect discovery, and cached.
//!
//! - **Fresh for** the answer's `Cache-Control: max-age`, clamped between
//!   the issuer's `min_refresh` and `max_refresh` (`min_refresh` when the
//!   answer says nothing); refreshed in the background when that passes.
//! - **Stale, not dropped.** A failed fetch keeps the keys in force (the
//!   issuer may be down for a moment; tokens it signed are still good), sets
//!   `valet_jwks_stale{issuer}` and logs a warning.
//! - **Unknown `kid`.** A token naming a key the set lacks triggers one
//!   refetch. Concurrent requests wait for the same fetch (single-flight), a
//!   refetch happens at most once per `unknown_kid_interval` and at most
//!   `max_fetches_per_minute` times a minute, so a flood of random `kid`s
//!   costs the issuer almost nothing and valet a bounded wait.
//! - **What is taken from a set:** RSA, EC (P-256, P-384) and Ed25519 keys
//!   whose `use` is absent or `sig`. Symmetric (`oct`) keys, encryption
//!   keys and keys naming an algorithm valet refuses are skipped. The
//!   algorithm comes from the key (`alg`, or its type and curve; RSA without
//!   `alg` is RS256), never from a token.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Largest key-set (or discovery) answer read.
pub const MAX_ANSWER: usize = 512 * 1024;
/// Most keys taken from one set.
pub const MAX_KEYS: usize = 64;

/// Where and how a remote key set is fetched (compiled from the config).
#[derive(Debug, Clone)]
pub struct RemoteSource {
    /// The issuer, as configured (and as discovery must repeat it).
    pub issuer: String,
    /// The key set's URL; `None`: discovered from the issuer.
    pub jwks_uri: Option<String>,
    /// Where a discovered `jwks_uri` may be (lower-case host, port): the
    /// issuer's own host, and the `jwks_hosts` the config names. A
    /// compromised or mistyped discovery document cannot point valet at
    /// another (internal) https host.
    pub jwks_hosts: Vec<(String, u16)>,
    pub tls: Arc<rustls::ClientConfig>,
    /// SHA-256 of the CA file trusted (`None`: the public web roots): what
    /// tells a reload's source from the old one (each compile builds a new
    /// TLS config, so the config itself cannot).
    pub ca_digest: Option<[u8; 32]>,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub unknown_kid_interval: Duration,
    pub max_fetches_per_minute: u32,
    pub fetch_timeout: Duration,
}

impl PartialEq for RemoteSource {
    fn eq(&self, o: &Self) -> bool {
        self.issuer == o.issuer
            && self.jwks_uri == o.jwks_uri
            && self.jwks_hosts == o.jwks_hosts
            && self.ca_digest == o.ca_digest
            && self.min_refresh == o.min_refresh
            && self.max_refresh == o.max_refresh
            && self.unknown_kid_interval == o.unknown_kid_interval
            && self.max_fetches_per_minute == o.max_fetches_per_minute
            && self.fetch_timeout == o.fetch_timeout
    }
}

/// One verification key from a set.
pub struct Key {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub decoding: DecodingKey,
}

/// The keys in force and until when they are fresh.
pub struct Keys {
    pub keys: Vec<Key>,
    pub fresh_until: Option<Instant>,
}

impl Keys {
    pub fn by_kid<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
    }
}

/// The metric handles of one issuer's set.
#[derive(Clone)]
pub struct KeySetMetrics {
    pub fetched: IntCounter,
    pub failed: IntCounter,
    pub limited: IntCounter,
    pub stale: IntGauge,
    pub keys: IntGauge,
}

/// Limits how often an unknown `kid` may cause a fetch (background
/// refreshes do not count: a rotation just after one is still seen).
struct Gate {
    /// When unknown `kid`s caused fetches, over the last minute.
    recent: std::collections::VecDeque<Instant>,
    /// When the background refresh should next try after a failure.
    retry_at: Option<Instant>,
}

/// A remote key set, shared by every snapshot that trusts the issuer with
/// the same source (a reload does not refetch or drop it).
pub struct RemoteKeys {
    pub source: RemoteSource,
    keys: arc_swap::ArcSwap<Keys>,
    /// Fetches finished (success or not): a request that waited for the
    /// single flight sees it changed and does not fetch again.
    generation: AtomicU64,
    gate: tokio::sync::Mutex<Gate>,
    /// The discovered `jwks_uri`, remembered once found.
    discovered: Mutex<Option<String>>,
    metrics: KeySetMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Outbound(#[from] crate::outbound::OutboundError),
    #[error("the {0} answered {1}")]
    Status(&'static str, http::StatusCode),
    #[error("the {0} is not valid JSON of the expected shape")]
    Shape(&'static str),
    #[error("discovery names issuer `{0}`, not the configured one")]
    IssuerMismatch(String),
    #[error("the discovered jwks_uri is not an https URL without user info")]
    InsecureJwksUri,
    #[error(
        "the discovered jwks_uri is on host `{0}`, which is neither the issuer's nor in jwks_hosts"
    )]
    JwksHostNotAllowed(String),
    #[error("the key set holds no usable signature key")]
    NoKeys,
}

impl RemoteKeys {
    pub fn new(source: RemoteSource, metrics: KeySetMetrics) -> Arc<Self> {
        Arc::new(RemoteKeys {
            source,
            keys: arc_swap::ArcSwap::from_pointee(Keys {
                keys: Vec::new(),
                fresh_until: None,
            }),
            generation: AtomicU64::new(0),
            gate: tokio::sync::Mutex::new(Gate {
                recent: Default::default(),
                retry_at: None,
            }),
            discovered: Mutex::new(None),
            metrics,
        })
    }

    /// The keys in force (lock-free).
    pub fn current(&self) -> arc_swap::Guard<Arc<Keys>> {
        self.keys.load()
    }

    /// A token named `kid`, which the set lacks: refetch (single-flight,
    /// rate-limited). True if the key is there afterwards. A request that
    /// finds a fetch in flight waits for it (at most `fetch_timeout`); one
    /// that the rate limit stops is refused at once.
    pub async fn refetch_for(&self, kid: Option<&str>) -> bool {
        let has = |k: &Keys| k.by_kid(kid).next().is_some();
        let seen = self.generation.load(Ordering::Acquire);
        let mut gate = match self.gate.try_lock() {
            Ok(g) => g,
            Err(_) => {
                let wait = self.source.fetch_timeout + Duration::from_millis(100);
                match tokio::time::timeout(wait, self.gate.lock()).await {
                    Ok(g) => g,
                    Err(_) => return has(&self.current()),
                }
            }
        };
        if self.generation.load(Ordering::Acquire) != seen {
            // A fetch finished since this request looked.
            return has(&self.current());
        }
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        while gate
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= minute)
        {
            gate.recent.pop_front();
        }
        let too_soon = gate
            .recent
            .back()
            .is_some_and(|l| now.duration_since(*l) < self.source.unknown_kid_interval);
        if too_soon || gate.recent.len() >= self.source.max_fetches_per_minute as usize {
            self.metrics.limited.inc();
            return false;
        }
        gate.recent.push_back(now);
        self.fetch_locked(&mut gate).await;
        has(&self.current())
    }

    /// When the keys are due (fresh time passed, or never fetched), fetch
    /// them; a fetch already in flight is left alone.
    pub async fn refresh_if_due(&self) {
        let now = Instant::now();
        let due = self.current().fresh_until.is_none_or(|t| now >= t);
        if !due {
            return;
        }
        let Ok(mut gate) = self.gate.try_lock() else {
            return;
        };
        if gate.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.fetch_locked(&mut gate).await;
    }

    async fn fetch_locked(&self, gate: &mut Gate) {
        let now = Instant::now();
        // One deadline over discovery and the key set together.
        let result = match tokio::time::timeout(self.source.fetch_timeout, self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Outbound(
                crate::outbound::OutboundError::Timeout(self.source.fetch_timeout),
            )),
        };
        self.generation.fetch_add(1, Ordering::Release);
        match result {
            Ok((keys, max_age)) => {
                let life = max_age
                    .unwrap_or(self.source.min_refresh)
                    .clamp(self.source.min_refresh, self.source.max_refresh);
                self.metrics.fetched.inc();
                self.metrics.stale.set(0);
                self.metrics.keys.set(keys.len() as i64);
                gate.retry_at = None;
                let now = Instant::now();
                // `life` is at most a week (the config's cap).
                let until = now.checked_add(life).unwrap_or(now);
                self.keys.store(Arc::new(Keys {
                    keys,
                    fresh_until: Some(until),
                }));
            }
            Err(e) => {
                self.metrics.failed.inc();
                let held = self.current().keys.len();
                self.metrics.stale.set(i64::from(held > 0));
                // Background retries back off to the fresh time's floor.
                gate.retry_at = Some(now + self.source.min_refresh.min(Duration::from_secs(30)));
                tracing::warn!(issuer = %self.source.issuer, error = %e, keys_kept = held, "cannot fetch the issuer's key set; the keys held stay in force");
            }
        }
    }

    async fn fetch(&self) -> Result<(Vec<Key>, Option<Duration>), FetchError> {
        let uri = match &self.source.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let known = self.discovered.lock().expect("not poisoned").clone();
                match known {
                    Some(u) => u,
                    None => {
                        let u = self.discover().await?;
                        *self.discovered.lock().expect("not poisoned") = Some(u.clone());
                        u
                    }
                }
            }
        };
        let resp = match self.get(&uri).await {
            Ok(r) => r,
            Err(e) => {
                // The issuer may have moved its key set: discover again next time.
                *self.discovered.lock().expect("not poisoned") = None;
                return Err(e);
            }
        };
        if !resp.status().is_success() {
            *self.discovered.lock().expect("not poisoned") = None;
            return Err(FetchError::Status("key set", resp.status()));
        }
        let max_age = max_age(resp.headers());
        let keys = parse_jwks(resp.body()).ok_or(FetchError::Shape("key set"))?;
        if keys.is_empty() {
            return Err(FetchError::NoKeys);
        }
        Ok((keys, max_age))
    }

    /// OpenID Connect Discovery 1.0 §4, else RFC 8414 §3 metadata (the
    /// well-known segment between host and path): the document must name
    /// this issuer (OIDC §4.3, RFC 8414 §3.3) and an https key set.
    async fn discover(&self) -> Result<String, FetchError> {
        let issuer = self.source.issuer.trim_end_matches('/');
        let oidc = format!("{issuer}/.well-known/openid-configuration");
        let mut resp = self.get(&oidc).await?;
        if resp.status() == http::StatusCode::NOT_FOUND {
            if let Some(rfc8414) = rfc8414_url(issuer) {
                resp = self.get(&rfc8414).await?;
            }
        }
        if !resp.status().is_success() {
            return Err(FetchError::Status("discovery document", resp.status()));
        }
        let doc: serde_json::Value = serde_json::from_slice(resp.body())
            .map_err(|_| FetchError::Shape("discovery document"))?;
        let issuer = doc.get("issuer").and_then(|v| v.as_str()).unwrap_or("");
        if issuer != self.source.issuer {
            return Err(FetchError::IssuerMismatch(
                issuer.chars().take(200).collect(),
            ));
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or(FetchError::Shape("discovery document"))?;
        let parsed = crate::outbound::callable_url(uri)
            .ok()
            .filter(|u| u.scheme_str() == Some("https"))
            .ok_or(FetchError::InsecureJwksUri)?;
        let at = crate::outbound::host_and_port(&parsed).ok_or(FetchError::InsecureJwksUri)?;
        if !self.source.jwks_hosts.contains(&at) {
            let (h, p) = at;
            return Err(FetchError::JwksHostNotAllowed(
                format!("{h}:{p}").chars().take(200).collect(),
            ));
        }
        Ok(uri.to_string())
    }

    async fn get(&self, url: &str) -> Result<http::Response<bytes::Bytes>, FetchError> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Default::default())
            .map_err(|_| crate::outbound::OutboundError::BadUrl("the URL cannot be sent"))?;
        let limits = crate::outbound::Limits {
            tls: Some(&self.source.tls),
            timeout: self.source.fetch_timeout,
            max_answer: MAX_ANSWER,
        };
        Ok(crate::outbound::send(req, &limits).await?)
    }
}

/// `https://host/.well-known/oauth-authorization-server/path` for issuer
/// `https://host/path` (RFC 8414 §3.1).
fn rfc8414_url(issuer: &str) -> Option<String> {
    let rest = issuer.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    Some(format!(
        "https://{host}/.well-known/oauth-authorization-server{path}"
    ))
}

/// `Cache-Control: max-age=N` (RFC 9111 §5.2.2.1); `no-store`/`no-cache`
/// count as 0 (the floor applies).
fn max_age(h: &http::HeaderMap) -> Option<Duration> {
    let mut out = None;
    for v in h.get_all(http::header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',').map(str::trim) {
            let lower = d.to_ascii_lowercase();
            if lower == "no-store" || lower == "no-cache" {
                return Some(Duration::ZERO);
            }
            if let Some(n) = lower.strip_prefix("max-age=") {
                if let Ok(n) = n.trim_matches('"').parse::<u64>() {
                    out = Some(Duration::from_secs(n));
                }
            }
        }
    }
    out
}

/// The usable signature keys of a JWKS document; `None` if it is not one.
/// Keys that cannot be used are skipped, one by one.
pub fn parse_jwks(body: &[u8]) -> Option<Vec<Key>> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).ok()?;
    Some(
        set.keys
            .into_iter()
            .filter_map(|v| key_of(serde_json::from_value::<Jwk>(v).ok()?))
            .take(MAX_KEYS)
            .collect(),
    )
}

fn key_of(jwk: Jwk) -> Option<Key> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let named = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signature_algorithm(a)?),
    };
    let algorithm = match (&jwk.algorithm, named) {
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::RSA(_), Some(a)) => matches!(
            a,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
        .then_some(a)?,
        (AlgorithmParameters::EllipticCurve(p), named) => {
            let by_curve = match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            };
            // A key's `alg` must agree with its curve.
            (named.is_none() || named == Some(by_curve)).then_some(by_curve)?
        }
        (AlgorithmParameters::OctetKeyPair(p), named) => (p.curve == EllipticCurve::Ed25519
            && (named.is_none() || named == Some(Algorithm::EdDSA)))
        .then_some(Algorithm::EdDSA)?,
        // Symmetric keys never verify valet's tokens; unknown types neither.
        _ => return None,
    };
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id,
        algorithm,
        decoding,
    })
}

/// The asymmetric signature algorithm a JWK's `alg` names, if any.
fn signature_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_signature_keys_are_taken() {
        let set = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "liar", "alg": "ES384",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "RSA", "kid": "rsa", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "RSA", "kid": "rsa-hs", "alg": "HS256", "n": "sXch", "e": "AQAB"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "weird"},
            "not even an object"
        ]});
        let keys = parse_jwks(set.to_string().as_bytes()).unwrap();
        let got: Vec<(Option<&str>, Algorithm)> = keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.algorithm))
            .collect();
        assert_eq!(
            got,
            [
                (Some("ec"), Algorithm::ES256),
                (Some("rsa"), Algorithm::RS256),
                (Some("ed"), Algorithm::EdDSA),
            ]
        );
        assert!(parse_jwks(b"{\"keys\": 3}").is_none());
        assert!(parse_jwks(b"[]").is_none());
    }

    #[test]
    fn rfc_8414_puts_the_well_known_segment_before_the_path() {
        assert_eq!(
            rfc8414_url("https://as.example/tenant/1").unwrap(),
            "https://as.example/.well-known/oauth-authorization-server/tenant/1"
        );
        assert_eq!(
            rfc8414_url("https://as.example").unwrap(),
            "https://as.example/.well-known/oauth-authorization-server"
        );
    }

    #[test]
    fn cache_control_gives_the_fresh_time() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
            m
        };
        assert_eq!(
            max_age(&h("public, max-age=600")),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age(&h("no-store")), Some(Duration::ZERO));
        assert_eq!(max_age(&h("private")), None);
        assert_eq!(max_age(&http::HeaderMap::new()), None);
    }
}
