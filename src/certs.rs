//! Certificates and their keys from PEM files (or made for development),
//! checked to match. Shared by the config compiler, which refuses a pair
//! that does not load, and the TLS listeners, which serve it.

use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let (certs, key_der) = load_chain_and_key(cert, key)?;
    certified(certs, key_der)
}

/// A certificate chain and its private key, checked to match.
pub fn load_chain_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert(cert.to_path_buf(), format!("{e:?}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(cert.to_path_buf(), format!("{e:?}")))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.to_path_buf()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key(key.to_path_buf(), format!("{e:?}")))?;
    certified(certs.clone(), key_der.clone_key())?;
    Ok((certs, key_der))
}

fn certified(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let ck = CertifiedKey::from_der(certs, key, &aws_lc_rs::default_provider())
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    Ok(Arc::new(ck))
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
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    certified(vec![ck.cert.der().clone()], key)
}

/// A TLS client config trusting `ca_file`'s certificates, or without one the
/// public web roots (webpki-roots): for valet's own outbound calls.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    client_config_with(ca_file, None)
}

/// [`client_config`], showing a client certificate (mTLS) when given.
pub fn client_config_with(
    ca_file: Option<&Path>,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
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
        Some((certs, key)) => c
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("the client certificate cannot be used: {e}"))?,
    };
    Ok(Arc::new(c))
}
