//! TLS termination: rustls with the aws-lc-rs provider, TLS 1.2 and 1.3 only,
//! ALPN h2 and http/1.1. The certificate sits behind a resolver whose
//! `CertifiedKey` is swapped when the PEM files change, so renewals need no
//! restart and never interrupt open connections.

use crate::config::TlsSource;
use arc_swap::ArcSwap;
use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

pub use crate::certs::{load_certified_key, self_signed, TlsError};

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
