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
/// The key's bytes (the file's PEM and the DER inside) are zeroized once
/// the signing key is made: only aws-lc's key object (freed with cleansing)
/// holds it after this returns.
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
    let key_der = Zeroizing::new(
        PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| TlsError::Key(key.to_path_buf(), format!("{e:?}")))?,
    );
    certified(certs, &key_der)
}

/// The chain with a signing key made from `key`, which the caller keeps
/// (and zeroizes): rustls's own `from_der` takes the key by value and
/// drops it without clearing it.
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
/// `with_client_auth_cert` builds, from a key already made).
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
