//! Signing and verification keys: loading PEM files, deriving the public half
//! of a private key (so the two can never disagree), and generating a
//! development key on first start when the config asks for it.
//!
//! The algorithm belongs to the key, not to the token: validation is pinned to
//! `LoadedKey::algorithm`, whatever a token's header claims.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, KeyPair};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::fmt;
use std::path::{Path, PathBuf};

/// How one key is configured (paths already resolved).
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub id: String,
    pub algorithm: Algorithm,
    pub private_key_file: Option<PathBuf>,
    pub public_key_file: Option<PathBuf>,
    pub generate_if_missing: bool,
}

/// A usable key: always verifies, signs when it has a private half.
pub struct LoadedKey {
    pub id: String,
    pub algorithm: Algorithm,
    pub decoding: DecodingKey,
    pub encoding: Option<EncodingKey>,
    /// The public key as a JWK (RFC 7517), for the JWKS endpoint.
    pub jwk: serde_json::Value,
}

impl fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .field("private", &self.encoding.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} does not hold a usable {alg:?} key: {why}")]
    Parse {
        path: PathBuf,
        alg: Algorithm,
        why: String,
    },
    #[error("a key needs private_key_file or public_key_file (not both)")]
    NoFile,
    #[error("generate_if_missing supports EdDSA and ES256 keys only")]
    CannotGenerate,
}

/// The signature algorithms valet accepts, by their JOSE names: asymmetric
/// only (a shared HMAC key would let any holder mint tokens).
pub const ALGORITHMS: [&str; 9] = [
    "EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];

/// One of [`ALGORITHMS`] by name; anything else is `None`.
pub fn parse_algorithm(s: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match s {
        "EdDSA" => EdDSA,
        "ES256" => ES256,
        "ES384" => ES384,
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        _ => return None,
    })
}

/// Loads one key, or when allowed and absent generates it in memory and
/// adds the file to write to `new_files` (this never writes).
pub fn load(
    cfg: &KeyConfig,
    new_files: &mut Vec<crate::durable::NewFile>,
) -> Result<LoadedKey, KeyError> {
    match (&cfg.private_key_file, &cfg.public_key_file) {
        (Some(path), None) => load_private(cfg, path, new_files),
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.clone(),
                source,
            })?;
            let parse_err = |e: jsonwebtoken::errors::Error| KeyError::Parse {
                path: path.clone(),
                alg: cfg.algorithm,
                why: e.to_string(),
            };
            let decoding = match family(cfg.algorithm) {
                Family::Ed => DecodingKey::from_ed_pem(&pem),
                Family::Ec => DecodingKey::from_ec_pem(&pem),
                Family::Rsa => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(parse_err)?;
            let spki =
                rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(&pem).map_err(|e| {
                    KeyError::Parse {
                        path: path.clone(),
                        alg: cfg.algorithm,
                        why: format!("{e:?}"),
                    }
                })?;
            let jwk = jwk_from_spki(cfg, spki.as_ref()).ok_or_else(|| KeyError::Parse {
                path: path.clone(),
                alg: cfg.algorithm,
                why: "the public key does not match the algorithm".into(),
            })?;
            Ok(LoadedKey {
                id: cfg.id.clone(),
                algorithm: cfg.algorithm,
                decoding,
                encoding: None,
                jwk,
            })
        }
        _ => Err(KeyError::NoFile),
    }
}

#[derive(Clone, Copy)]
enum Family {
    Ed,
    Ec,
    Rsa,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::EdDSA => Family::Ed,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        _ => Family::Rsa,
    }
}

fn load_private(
    cfg: &KeyConfig,
    path: &Path,
    new_files: &mut Vec<crate::durable::NewFile>,
) -> Result<LoadedKey, KeyError> {
    let pem = match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && cfg.generate_if_missing => {
            let pem = generate(cfg.algorithm)?;
            new_files.push(crate::durable::NewFile::new(
                path,
                "signing key",
                pem.clone(),
            ));
            pem.into_bytes()
        }
        Err(source) => {
            return Err(KeyError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(pem) => pem,
    };
    let bad = |why: String| KeyError::Parse {
        path: path.to_path_buf(),
        alg: cfg.algorithm,
        why,
    };
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(format!("{e:?}")))?;
    let der_bytes = der.secret_der();
    let (decoding, encoding, jwk) = match (cfg.algorithm, &der) {
        (Algorithm::EdDSA, PrivateKeyDer::Pkcs8(_)) => {
            let kp = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der_bytes)
                .map_err(|e| bad(e.to_string()))?;
            (
                DecodingKey::from_ed_der(kp.public_key().as_ref()),
                EncodingKey::from_ed_der(der_bytes),
                okp_jwk(cfg, kp.public_key().as_ref()),
            )
        }
        (Algorithm::ES256 | Algorithm::ES384, PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Sec1(_)) => {
            let alg = if cfg.algorithm == Algorithm::ES256 {
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let kp = match der {
                PrivateKeyDer::Pkcs8(_) => sig::EcdsaKeyPair::from_pkcs8(alg, der_bytes),
                _ => sig::EcdsaKeyPair::from_private_key_der(alg, der_bytes),
            }
            .map_err(|e| bad(e.to_string()))?;
            // jsonwebtoken signs EC keys from PKCS#8.
            let pkcs8 = kp
                .to_pkcs8v1()
                .map_err(|_| bad("cannot re-encode as PKCS#8".into()))?;
            (
                DecodingKey::from_ec_der(kp.public_key().as_ref()),
                EncodingKey::from_ec_der(pkcs8.as_ref()),
                ec_jwk(cfg, kp.public_key().as_ref())
                    .ok_or_else(|| bad("unexpected EC point".into()))?,
            )
        }
        (Algorithm::EdDSA | Algorithm::ES256 | Algorithm::ES384, _) => {
            return Err(bad("expected a PKCS#8 (\"PRIVATE KEY\") PEM".into()))
        }
        (_, PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Pkcs1(_)) => {
            let kp = match der {
                PrivateKeyDer::Pkcs8(_) => sig::RsaKeyPair::from_pkcs8(der_bytes),
                _ => sig::RsaKeyPair::from_der(der_bytes),
            }
            .map_err(|e| bad(e.to_string()))?;
            let encoding = EncodingKey::from_rsa_pem(&pem).map_err(|e| bad(e.to_string()))?;
            (
                DecodingKey::from_rsa_der(kp.public_key().as_ref()),
                encoding,
                rsa_jwk(cfg, kp.public_key()),
            )
        }
        _ => return Err(bad("expected an RSA private key PEM".into())),
    };
    let key = LoadedKey {
        id: cfg.id.clone(),
        algorithm: cfg.algorithm,
        decoding,
        encoding: Some(encoding),
        jwk,
    };
    self_test(&key).map_err(bad)?;
    Ok(key)
}

fn b64u(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn alg_name(a: Algorithm) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn okp_jwk(cfg: &KeyConfig, x: &[u8]) -> serde_json::Value {
    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64u(x), "kid": cfg.id, "alg": alg_name(cfg.algorithm), "use": "sig"})
}

/// From an uncompressed SEC1 point (0x04 || x || y).
fn ec_jwk(cfg: &KeyConfig, point: &[u8]) -> Option<serde_json::Value> {
    let (crv, n) = match cfg.algorithm {
        Algorithm::ES256 => ("P-256", 32),
        Algorithm::ES384 => ("P-384", 48),
        _ => return None,
    };
    if point.len() != 1 + 2 * n || point[0] != 4 {
        return None;
    }
    Some(
        serde_json::json!({"kty": "EC", "crv": crv, "x": b64u(&point[1..1 + n]), "y": b64u(&point[1 + n..]),
        "kid": cfg.id, "alg": alg_name(cfg.algorithm), "use": "sig"}),
    )
}

fn rsa_jwk(cfg: &KeyConfig, k: &aws_lc_rs::rsa::PublicKey) -> serde_json::Value {
    serde_json::json!({"kty": "RSA", "n": b64u(k.modulus().big_endian_without_leading_zero()),
        "e": b64u(k.exponent().big_endian_without_leading_zero()), "kid": cfg.id, "alg": alg_name(cfg.algorithm), "use": "sig"})
}

/// The JWK of a SubjectPublicKeyInfo DER (RFC 5280 §4.1.2.7) of the
/// configured algorithm. The key type and curve are read from its algorithm
/// identifiers (RFC 8410, RFC 5480) by the `spki` crate, never inferred from
/// lengths, so an X25519 or P-384 key is not taken for the wrong algorithm.
fn jwk_from_spki(cfg: &KeyConfig, spki: &[u8]) -> Option<serde_json::Value> {
    use spki::{ObjectIdentifier as Oid, SubjectPublicKeyInfoRef};
    const ED25519: Oid = Oid::new_unwrap("1.3.101.112");
    const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    const P256: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
    const P384: Oid = Oid::new_unwrap("1.3.132.0.34");
    let info = SubjectPublicKeyInfoRef::try_from(spki).ok()?;
    let (alg, params) = info.algorithm.oids().ok()?;
    // RFC 8410 §3: Ed25519 parameters are absent (not even NULL), hence
    // `parameters` below rather than `params`. No unused bits: the key is
    // whole bytes.
    let key = info.subject_public_key.as_bytes()?;
    match family(cfg.algorithm) {
        Family::Ed => (alg == ED25519 && info.algorithm.parameters.is_none() && key.len() == 32)
            .then(|| okp_jwk(cfg, key)),
        Family::Ec => {
            let curve = if cfg.algorithm == Algorithm::ES256 {
                P256
            } else {
                P384
            };
            (alg == EC_PUBLIC_KEY && params == Some(curve))
                .then(|| ec_jwk(cfg, key))
                .flatten()
        }
        Family::Rsa => aws_lc_rs::rsa::PublicKey::from_der(spki)
            .ok()
            .map(|k| rsa_jwk(cfg, &k)),
    }
}

/// Signs and verifies a throwaway token, so a key that cannot work (say an
/// ES384 entry holding a P-256 key) fails at load time, not on traffic.
fn self_test(key: &LoadedKey) -> Result<(), String> {
    let enc = key.encoding.as_ref().expect("private key");
    let header = jsonwebtoken::Header::new(key.algorithm);
    let token = jsonwebtoken::encode(&header, &serde_json::json!({"exp": u32::MAX}), enc)
        .map_err(|e| format!("cannot sign with it: {e}"))?;
    let mut v = jsonwebtoken::Validation::new(key.algorithm);
    v.required_spec_claims.clear();
    v.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(&token, &key.decoding, &v)
        .map(|_| ())
        .map_err(|e| format!("its signatures do not verify: {e}"))
}

/// A new private key as a PKCS#8 PEM.
pub fn generate(alg: Algorithm) -> Result<String, KeyError> {
    let rng = SystemRandom::new();
    let doc = match alg {
        Algorithm::EdDSA => sig::Ed25519KeyPair::generate_pkcs8(&rng),
        Algorithm::ES256 => {
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        }
        _ => return Err(KeyError::CannotGenerate),
    }
    .map_err(|_| KeyError::CannotGenerate)?;
    Ok(pem_encode("PRIVATE KEY", doc.as_ref()))
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(alg: Algorithm, path: PathBuf) -> KeyConfig {
        KeyConfig {
            id: "k".into(),
            algorithm: alg,
            private_key_file: Some(path),
            public_key_file: None,
            generate_if_missing: true,
        }
    }

    #[test]
    fn generated_keys_are_written_0600_and_reload_identically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            let path = dir.path().join(format!("{alg:?}.pem"));
            let mut new_files = Vec::new();
            let generated = load(&cfg(alg, path.clone()), &mut new_files).unwrap();
            // Loading writes nothing; creating the listed file does.
            assert!(!path.exists());
            assert_eq!(new_files.len(), 1);
            assert!(new_files[0].create().unwrap());
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let before = std::fs::read(&path).unwrap();
            let mut again = Vec::new();
            let loaded = load(&cfg(alg, path.clone()), &mut again).unwrap();
            assert!(again.is_empty(), "must not regenerate");
            assert_eq!(before, std::fs::read(&path).unwrap());
            assert_eq!(
                generated.jwk, loaded.jwk,
                "the key in memory is the key written"
            );
            // A second creation finds the file and leaves it.
            assert!(!new_files[0].create().unwrap());
        }
    }

    #[test]
    fn every_accepted_algorithm_name_parses_and_nothing_else() {
        for name in ALGORITHMS {
            let alg = parse_algorithm(name).unwrap();
            assert_eq!(format!("{alg:?}"), name);
        }
        for bad in ["HS256", "none", "eddsa", "RS1", ""] {
            assert!(parse_algorithm(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_key_of_the_wrong_curve_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p256.pem");
        std::fs::write(&path, generate(Algorithm::ES256).unwrap()).unwrap();
        let mut c = cfg(Algorithm::ES384, path);
        c.generate_if_missing = false;
        assert!(matches!(
            load(&c, &mut Vec::new()),
            Err(KeyError::Parse { .. })
        ));
    }

    #[test]
    fn missing_key_without_generate_is_an_error() {
        let mut c = cfg(Algorithm::EdDSA, "/nonexistent/k.pem".into());
        c.generate_if_missing = false;
        assert!(matches!(
            load(&c, &mut Vec::new()),
            Err(KeyError::Read { .. })
        ));
    }

    /// A generated ES256 key: its PEM and the key pair.
    fn p256() -> (String, sig::EcdsaKeyPair) {
        let pem = generate(Algorithm::ES256).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let kp =
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_der())
                .unwrap();
        (pem, kp)
    }

    /// A private key (RS256 PKCS#8, ES256, EdDSA) signs; a verification-only
    /// entry holding just its SPKI public key verifies what it signed.
    #[test]
    fn rsa_and_ec_public_key_entries_verify_tokens_of_their_private_keys() {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
        let dir = tempfile::tempdir().unwrap();
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_priv: Pkcs8V1Der<'_> = rsa.as_der().unwrap();
        let rsa_pub: PublicKeyX509Der<'_> = rsa.public_key().as_der().unwrap();
        let (ec_pem, ec) = p256();
        let ec_pub: PublicKeyX509Der<'_> = ec.public_key().as_der().unwrap();
        let ed_pem = generate(Algorithm::EdDSA).unwrap();
        let ed_der = rustls_pki_types::PrivateKeyDer::from_pem_slice(ed_pem.as_bytes()).unwrap();
        let ed = sig::Ed25519KeyPair::from_pkcs8(ed_der.secret_der()).unwrap();
        let ed_pub: PublicKeyX509Der<'_> = ed.public_key().as_der().unwrap();
        for (alg, private_pem, public_pem) in [
            (
                Algorithm::RS256,
                pem_encode("PRIVATE KEY", rsa_priv.as_ref()),
                pem_encode("PUBLIC KEY", rsa_pub.as_ref()),
            ),
            (
                Algorithm::ES256,
                ec_pem,
                pem_encode("PUBLIC KEY", ec_pub.as_ref()),
            ),
            (
                Algorithm::EdDSA,
                ed_pem,
                pem_encode("PUBLIC KEY", ed_pub.as_ref()),
            ),
        ] {
            let (pp, qp) = (
                dir.path().join(format!("{alg:?}.key")),
                dir.path().join(format!("{alg:?}.pub")),
            );
            std::fs::write(&pp, private_pem).unwrap();
            std::fs::write(&qp, public_pem).unwrap();
            let private = load(
                &KeyConfig {
                    id: "p".into(),
                    algorithm: alg,
                    private_key_file: Some(pp),
                    public_key_file: None,
                    generate_if_missing: false,
                },
                &mut Vec::new(),
            )
            .unwrap();
            let public = load(
                &KeyConfig {
                    id: "p".into(),
                    algorithm: alg,
                    private_key_file: None,
                    public_key_file: Some(qp),
                    generate_if_missing: false,
                },
                &mut Vec::new(),
            )
            .unwrap();
            assert!(public.encoding.is_none());
            assert_eq!(private.jwk, public.jwk, "both halves publish the same JWK");
            assert_eq!(private.jwk["kid"], "p");
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(alg),
                &serde_json::json!({"exp": u32::MAX}),
                private.encoding.as_ref().unwrap(),
            )
            .unwrap();
            let mut v = jsonwebtoken::Validation::new(alg);
            v.validate_aud = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, &public.decoding, &v).unwrap();
        }
    }

    /// A public key is read by its algorithm identifiers: an X25519 key (as
    /// long as an Ed25519 one) or a P-256 key under ES384 is refused.
    #[test]
    fn a_public_key_of_another_type_or_curve_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut x25519 = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
        ];
        x25519.extend([7u8; 32]);
        let mut ed25519 = x25519.clone();
        ed25519[8] = 0x70;
        // The same key with NULL parameters, which RFC 8410 §3 rules out.
        let mut ed25519_null = vec![
            0x30, 0x2c, 0x30, 0x07, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x05, 0x00, 0x03, 0x21, 0x00,
        ];
        ed25519_null.extend([7u8; 32]);
        let (_, ec) = p256();
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        let p256: PublicKeyX509Der<'_> = ec.public_key().as_der().unwrap();
        let public = |alg: Algorithm, der: &[u8]| {
            let path = dir.path().join(format!("{alg:?}-{}.pub", der.len()));
            std::fs::write(&path, pem_encode("PUBLIC KEY", der)).unwrap();
            let c = KeyConfig {
                id: "k".into(),
                algorithm: alg,
                private_key_file: None,
                public_key_file: Some(path),
                generate_if_missing: false,
            };
            load(&c, &mut Vec::new()).map(|k| k.jwk)
        };
        assert_eq!(
            public(Algorithm::EdDSA, &ed25519).unwrap()["crv"],
            "Ed25519"
        );
        assert!(matches!(
            public(Algorithm::EdDSA, &x25519),
            Err(KeyError::Parse { .. })
        ));
        assert!(matches!(
            public(Algorithm::EdDSA, &ed25519_null),
            Err(KeyError::Parse { .. })
        ));
        assert_eq!(
            public(Algorithm::ES256, p256.as_ref()).unwrap()["crv"],
            "P-256"
        );
        assert!(matches!(
            public(Algorithm::ES384, p256.as_ref()),
            Err(KeyError::Parse { .. })
        ));
    }
}
