//! TLS termination: rustls with the aws-lc-rs provider, TLS 1.2 and 1.3 only,
//! ALPN h2 and http/1.1. The certificate sits behind a resolver whose
//! `CertifiedKey` is swapped when the PEM files change, so renewals need no
//! restart and never interrupt open connections.

use crate::config::TlsSource;
use arc_swap::ArcSwap;
use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
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
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert(cert.to_path_buf(), format!("{e:?}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(cert.to_path_buf(), format!("{e:?}")))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.to_path_buf()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key(key.to_path_buf(), format!("{e:?}")))?;
    certified(certs, key_der)
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

/// Serves the current certificate of one listener; swapped on reload.
#[derive(Debug)]
pub struct CertResolver {
    source: TlsSource,
    current: ArcSwap<CertifiedKey>,
    digest: std::sync::Mutex<Vec<u8>>,
}

impl CertResolver {
    pub fn new(source: TlsSource) -> Result<Arc<Self>, TlsError> {
        let current = match &source {
            TlsSource::Files { cert, key } => load_certified_key(cert, key)?,
            TlsSource::SelfSignedForDevelopment => self_signed()?,
        };
        let digest = files_digest(&source);
        Ok(Arc::new(CertResolver {
            source,
            current: ArcSwap::new(current),
            digest: std::sync::Mutex::new(digest),
        }))
    }

    pub fn source(&self) -> &TlsSource {
        &self.source
    }

    /// Re-reads the PEM files if they changed. `Ok(false)`: nothing to do.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let TlsSource::Files { cert, key } = &self.source else {
            return Ok(false);
        };
        let d = files_digest(&self.source);
        if *self.digest.lock().expect("not poisoned") == d {
            return Ok(false);
        }
        let ck = load_certified_key(cert, key)?;
        self.current.store(ck);
        *self.digest.lock().expect("not poisoned") = d;
        Ok(true)
    }
}

fn files_digest(source: &TlsSource) -> Vec<u8> {
    match source {
        TlsSource::Files { cert, key } => {
            let mut ctx = ::aws_lc_rs::digest::Context::new(&::aws_lc_rs::digest::SHA256);
            ctx.update(&std::fs::read(cert).unwrap_or_default());
            ctx.update(&std::fs::read(key).unwrap_or_default());
            ctx.finish().as_ref().to_vec()
        }
        TlsSource::SelfSignedForDevelopment => Vec::new(),
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server config for a listener.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<rustls::ServerConfig> {
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("aws-lc-rs supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}
