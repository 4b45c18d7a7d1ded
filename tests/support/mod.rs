//! Test support: real parts on loopback. A test CA made at test time, a
//! recording upstream, the real gateway started on port 0, an independent
//! token signer, and an HTTP/1.1 + HTTP/2 client over real TLS.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod client;
pub mod idp;
pub mod oauth1_provider;
pub mod process;
pub mod redis_server;
pub mod upstream;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use client::{Client, Proto};
#[allow(unused_imports)]
pub use upstream::Upstream;

/// A CA and a leaf certificate for localhost / 127.0.0.1, as PEM files.
pub struct TestCa {
    pub ca_der: rustls_pki_types::CertificateDer<'static>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(dir: &Path) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "valet test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = rcgen::Issuer::new(params, ca_key);
        let t = TestCa {
            ca_der: ca_cert.der().clone(),
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            ca,
        };
        t.issue_leaf("leaf-1");
        t
    }

    /// (Re)writes the leaf certificate files with a new certificate named `cn`.
    pub fn issue_leaf(&self, cn: &str) {
        let (cert, key) = self.leaf(cn);
        // Write via rename, as cert managers do.
        let tmp_c = self.cert_file.with_extension("tmp1");
        let tmp_k = self.key_file.with_extension("tmp2");
        std::fs::write(&tmp_c, cert).unwrap();
        std::fs::write(&tmp_k, key).unwrap();
        std::fs::rename(tmp_k, &self.key_file).unwrap();
        std::fs::rename(tmp_c, &self.cert_file).unwrap();
    }

    /// A certificate for `cn`, localhost and 127.0.0.1 signed by this CA,
    /// and its key, as PEM.
    fn leaf(&self, cn: &str) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate as PEM to `path`.
    pub fn write_ca_pem(&self, path: &Path) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.ca_der.as_ref());
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        std::fs::write(path, pem).unwrap();
    }

    /// A certificate for `cn` (and localhost, 127.0.0.1) signed by this CA,
    /// written as `{name}.pem` and `{name}-key.pem` in `dir`.
    pub fn issue_to(&self, dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(cn);
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    /// [`TestCa::server_config`], demanding a client certificate this CA
    /// signed (mTLS).
    pub fn server_config_requiring_clients(&self) -> Arc<rustls::ServerConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        self.server_config_with(Some(verifier))
    }

    /// A TLS server config serving the current leaf certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server_config_with(None)
    }

    fn server_config_with(
        &self,
        clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Arc<rustls::ServerConfig> {
        let certs: Vec<_> = rustls_pki_types::pem::PemObject::pem_file_iter(&self.cert_file)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key =
            <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_file(
                &self.key_file,
            )
            .unwrap();
        let b = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap();
        let b = match clients {
            Some(v) => b.with_client_cert_verifier(v),
            None => b.with_no_client_auth(),
        };
        Arc::new(b.with_single_cert(certs, key).unwrap())
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// An Ed25519 signing key used by tests to mint tokens independently of valet.
pub struct TestKey {
    pub pem: String,
    pub pkcs8: Vec<u8>,
    pub public_raw: Vec<u8>,
}

impl TestKey {
    pub fn new() -> Self {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
        TestKey {
            pem: format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
            pkcs8: doc.as_ref().to_vec(),
            public_raw: kp.public_key().as_ref().to_vec(),
        }
    }

    /// The public key as an SPKI PEM (what an attacker would find in a JWKS).
    pub fn public_pem(&self) -> String {
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(&self.public_raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }
}

pub const ISSUER: &str = "https://valet.test";
pub const AUDIENCE: &str = "test-api";
pub const KID: &str = "test-key";

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a valid token; tests mutate them to make invalid ones.
pub fn claims(sub: &str, scope: &str) -> serde_json::Value {
    let n = now();
    serde_json::json!({
        "iss": ISSUER, "sub": sub, "aud": AUDIENCE, "exp": n + 300, "iat": n, "nbf": n,
        "jti": format!("jti-{}", valet::tokens::random_id()), "client_id": "test-client", "scope": scope,
    })
}

/// Signs `claims` with the test key as a proper `at+jwt`.
pub fn sign(key: &TestKey, claims: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = Some(KID.into());
    sign_with(&h, claims, &EncodingKey::from_ed_der(&key.pkcs8))
}

pub fn sign_with(h: &Header, claims: &serde_json::Value, k: &EncodingKey) -> String {
    jsonwebtoken::encode(h, claims, k).unwrap()
}

/// A token with an arbitrary raw header and an empty or given signature.
pub fn raw_token(header: &serde_json::Value, claims: &serde_json::Value, sig: &str) -> String {
    let e = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!("{}.{}.{sig}", e(header), e(claims))
}

/// Config knobs for a test gateway.
pub struct Options {
    pub routes_yaml: String,
    pub extra_yaml: String,
}

/// A gateway started in-process on loopback, with its files in a temp dir.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub key: TestKey,
    pub config_path: PathBuf,
    pub revocation_path: PathBuf,
    pub running: Option<valet::server::Running>,
    pub addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub admin_addr: Option<std::net::SocketAddr>,
}

/// A standard route to `upstream` at /api requiring scope `read`, plus a
/// public route at /public.
pub fn default_routes(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"  - name: api
    match: {{ path_prefix: /api }}
    upstream: "http://{upstream}"
    strip_prefix: true
    auth: {{ scopes: [read] }}
  - name: public
    match: {{ path_prefix: /public }}
    upstream: "http://{upstream}/base"
    auth: {{ required: false }}
  - name: fwd
    match: {{ path_prefix: /fwd }}
    upstream: "http://{upstream}"
    forward_authorization: true
"#
    )
}

impl Gateway {
    pub fn config_text(&self, routes: &str, extra: &str) -> String {
        config_text(&self.ca, &self.dir, routes, extra)
    }

    pub async fn start(routes: &str, extra: &str) -> Gateway {
        Self::start_with_listener("", routes, extra).await
    }

    /// As `start`, with `listener` (YAML keys, one per line, unindented)
    /// added to the listener.
    pub async fn start_with_listener(listener: &str, routes: &str, extra: &str) -> Gateway {
        let listener = listener.to_string();
        Self::start_with(routes, extra, move |text| {
            if listener.is_empty() {
                return text;
            }
            let indented: String = listener.lines().map(|l| format!("    {l}\n")).collect();
            text.replacen("metrics:\n", &format!("{indented}metrics:\n"), 1)
        })
        .await
    }

    /// As `start`, with the config text passed through `edit` first.
    pub async fn start_with(
        routes: &str,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let key = TestKey::new();
        std::fs::write(dir.path().join("signing.pem"), &key.pem).unwrap();
        let config_path = dir.path().join("valet.yaml");
        let text = edit(config_text(&ca, &dir, routes, extra));
        std::fs::write(&config_path, text).unwrap();
        let config = valet::config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let running = valet::server::start(config).await.unwrap();
        Gateway {
            addr: running.listeners[0],
            metrics_addr: running.metrics.unwrap(),
            admin_addr: running.admin,
            revocation_path: dir.path().join("revocations.yaml"),
            running: Some(running),
            config_path,
            key,
            ca,
            dir,
        }
    }

    pub fn client(&self, proto: Proto) -> Client {
        Client::new(self.addr, self.ca.client_config(proto.alpn()), proto)
    }

    pub fn token(&self, sub: &str, scope: &str) -> String {
        sign(&self.key, &claims(sub, scope))
    }

    /// The metrics page as text.
    pub async fn metrics(&self) -> String {
        client::plain_get(self.metrics_addr, "/metrics").await.1
    }

    /// The value of one metric sample (name with labels, exactly as printed).
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }
}

/// The `jti` claim of a JWT (payload read, signature not checked).
pub fn jti_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["jti"].as_str().unwrap().to_string()
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("metric {sample} not found"))
}

pub fn config_text(ca: &TestCa, dir: &tempfile::TempDir, routes: &str, extra: &str) -> String {
    format!(
        r#"listeners:
  - address: "127.0.0.1:0"
    tls:
      cert_file: "{cert}"
      key_file: "{key}"
metrics:
  address: "127.0.0.1:0"
tokens:
  issuer: "{ISSUER}"
  audiences: ["{AUDIENCE}"]
  clock_skew: 5s
  keys:
    - id: {KID}
      algorithm: EdDSA
      private_key_file: signing.pem
revocation:
  file: {rev}
routes:
{routes}{extra}"#,
        cert = ca.cert_file.display(),
        key = ca.key_file.display(),
        rev = dir.path().join("revocations.yaml").display(),
    )
}

/// How long a test waits for something to propagate (a reload, another
/// process, a watcher): generous, because a busy 2-core CI machine is slow;
/// the wait ends as soon as the thing is seen.
pub const PICKUP: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls `f` every 20 ms until it is true or `limit` passes; returns whether it became true.
pub async fn eventually<F, Fut>(limit: std::time::Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
