//! Certificates and their keys from PEM files (or made for development),
//! checked to match. Shared by the config compiler, which refuses a pair
//! that does not load, and the TLS listeners, which serve it.

use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {0}: {1}")]
    Cert(PathBuf, String),
    #[error("cannot read private key file {0}: {1}")]
    Key(PathBuf, String),
    #[error("certificate file {0} holds no certificate")]
    NoCert(PathBuf),
    #[error("the private key does not match the certificate: {0}")]
    Mismatch(String),
    #[error("cannot make a development certificate: {0}")]
    SelfSigned(String),
}

/// Loads a certificate chain and its private key, checking that they match.
/// The key's bytes (the file's text, its base64 and the DER inside) are
/// zeroized once the signing key is made: only aws-lc's key object (freed
/// with cleansing) holds it after this returns.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert(cert.to_path_buf(), format!("{e:?}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(cert.to_path_buf(), format!("{e:?}")))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.to_path_buf()));
    }
    let pem = Zeroizing::new(
        std::fs::read(key).map_err(|e| TlsError::Key(key.to_path_buf(), e.to_string()))?,
    );
    let key_der = private_key_from_pem(&pem).map_err(|e| TlsError::Key(key.to_path_buf(), e))?;
    certified(certs, &key_der)
}

/// The first private key in PEM text (`PRIVATE KEY`, `RSA PRIVATE KEY` or
/// `EC PRIVATE KEY`), decoded into buffers sized up front and cleared on
/// drop: pki-types' PEM reader grows a base64 copy of the key that it
/// frees uncleared.
fn private_key_from_pem(pem: &[u8]) -> Result<Zeroizing<PrivateKeyDer<'static>>, String> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).map_err(|_| "the file is not PEM text".to_string())?;
    let mut rest = text;
    while let Some(i) = rest.find("-----BEGIN ") {
        rest = &rest[i + "-----BEGIN ".len()..];
        let Some((label, after)) = rest.split_once("-----") else {
            break;
        };
        let end = format!("-----END {label}-----");
        let Some(j) = after.find(&end) else {
            return Err(format!("no `{end}` line"));
        };
        let kind = match label {
            "PRIVATE KEY" => 8,
            "RSA PRIVATE KEY" => 1,
            "EC PRIVATE KEY" => 2,
            _ => {
                rest = &after[j + end.len()..];
                continue;
            }
        };
        let body = &after[..j];
        let mut b64 = Zeroizing::new(Vec::with_capacity(body.len()));
        b64.extend(body.bytes().filter(|b| !b.is_ascii_whitespace()));
        let mut der = Zeroizing::new(Vec::with_capacity(b64.len().div_ceil(4) * 3));
        base64::engine::general_purpose::STANDARD
            .decode_vec(&*b64, &mut der)
            .map_err(|_| format!("the {label} is not valid base64"))?;
        // Moved out, not copied: the bytes live on in the key alone.
        let der = std::mem::take(&mut *der);
        return Ok(Zeroizing::new(match kind {
            8 => PrivateKeyDer::Pkcs8(der.into()),
            1 => PrivateKeyDer::Pkcs1(der.into()),
            _ => PrivateKeyDer::Sec1(der.into()),
        }));
    }
    Err("no private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) found".into())
}

/// The chain with a signing key made from `key`, which the caller keeps
/// and zeroizes (by reference: no copy is made on the way).
fn certified(
    certs: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signing =
        aws_lc_rs::sign::any_supported_type(key).map_err(|e| TlsError::Mismatch(e.to_string()))?;
    let ck = CertifiedKey::new(certs, signing);
    match ck.keys_match() {
        // As rustls's `from_der`: an unknown consistency is not an error.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(ck))
        }
        Err(e) => Err(TlsError::Mismatch(e.to_string())),
    }
}

/// A self-signed certificate for localhost, made at start-up (development only).
pub fn self_signed() -> Result<Arc<CertifiedKey>, TlsError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let key = Zeroizing::new(PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()));
    certified(vec![ck.cert.der().clone()], &key)
}

/// A TLS client config trusting `ca_file`'s certificates, or without one the
/// public web roots (webpki-roots): for valet's own outbound calls.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    client_config_with(ca_file, None)
}

/// [`client_config`], showing a client certificate (mTLS) when given.
pub fn client_config_with(
    ca_file: Option<&Path>,
    client_auth: Option<Arc<CertifiedKey>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(p) => {
            let pem = std::fs::read(p)
                .map_err(|e| format!("cannot read ca_file {}: {e}", p.display()))?;
            use rustls_pki_types::pem::PemObject;
            let mut n = 0;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", p.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", p.display()))?;
                n += 1;
            }
            if n == 0 {
                return Err(format!("ca_file {} holds no certificate", p.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let c = match client_auth {
        None => c.with_no_client_auth(),
        Some(ck) => c.with_client_cert_resolver(Arc::new(ClientCert(ck))),
    };
    Ok(Arc::new(c))
}

/// Always shows the one client certificate (what rustls's
/// `with_client_auth_cert` builds, from a key made without a copy).
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    /// Our PEM reading gives the same key as pki-types' for each key kind.
    #[test]
    fn private_keys_read_as_pki_types_reads_them() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pkcs8 = ck.signing_key.serialize_pem();
        let pkcs1 = include_str!("../tests/data/oauth1-rsa-sha1-key.pkcs1.pem");
        let rsa8 = include_str!("../tests/data/oauth1-rsa-sha1-key.pem");
        for (what, pem) in [
            ("pkcs8", pkcs8.as_str()),
            ("pkcs1", pkcs1),
            ("rsa pkcs8", rsa8),
        ] {
            let ours = private_key_from_pem(pem.as_bytes()).unwrap();
            let theirs = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(*ours, theirs, "{what}");
        }
        // A certificate first, CRLF line ends: the key is still found.
        let mixed = format!("{}\r\n{}", ck.cert.pem(), pkcs8.replace('\n', "\r\n"));
        let theirs = PrivateKeyDer::from_pem_slice(pkcs8.as_bytes()).unwrap();
        assert_eq!(*private_key_from_pem(mixed.as_bytes()).unwrap(), theirs);
        for bad in [
            "",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n",
        ] {
            assert!(private_key_from_pem(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    /// The key check made without rustls's `from_der` still refuses a key
    /// of another certificate, and accepts the matching one.
    #[test]
    fn a_key_must_match_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = pair(dir.path(), "a");
        let (_, key_b) = pair(dir.path(), "b");
        assert!(load_certified_key(&cert_a, &key_a).is_ok());
        let e = load_certified_key(&cert_a, &key_b).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch(_)), "{e}");
        std::fs::write(&key_b, "not a key").unwrap();
        assert!(matches!(
            load_certified_key(&cert_a, &key_b).unwrap_err(),
            TlsError::Key(..)
        ));
    }
}
