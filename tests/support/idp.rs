//! A test identity provider: TLS under its own test CA, an OpenID Connect
//! discovery document and a JWKS endpoint that counts its hits. Keys can be
//! added, published, rotated out, and the whole provider switched off
//! (connections are then dropped at once, as a dead host's would fail).

use super::TestCa;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

pub struct IdpKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: serde_json::Value,
    /// The public key as PEM (an attacker can read it from the JWKS).
    pub public_pem: String,
}

#[derive(Default)]
struct State {
    keys: Vec<Arc<IdpKey>>,
    /// Kids served in the JWKS.
    published: Vec<String>,
    cache_control: Option<String>,
    /// Metadata at RFC 8414's place only (no OpenID Connect discovery).
    rfc8414_only: bool,
    /// The `jwks_uri` discovery names, when not the provider's own.
    discovered_jwks_uri: Option<String>,
    /// When each key-set request arrived.
    jwks_hit_times: Vec<std::time::Instant>,
}

pub struct Idp {
    pub addr: SocketAddr,
    /// `https://localhost:PORT{path}`.
    pub issuer: String,
    pub jwks_uri: String,
    pub ca_file: PathBuf,
    pub jwks_hits: Arc<AtomicUsize>,
    pub discovery_hits: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    _dir: tempfile::TempDir,
}

/// A new RSA 2048 key named `kid`.
pub fn rsa_key(kid: &str) -> IdpKey {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
    use aws_lc_rs::signature::KeyPair;
    use base64::Engine;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der: Pkcs8V1Der<'_> = kp.as_der().unwrap();
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    let public: PublicKeyX509Der<'_> = kp.public_key().as_der().unwrap();
    let b64u = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let pk = kp.public_key();
    IdpKey {
        kid: kid.to_string(),
        encoding: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes()).unwrap(),
        jwk: serde_json::json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64u(pk.modulus().big_endian_without_leading_zero()),
            "e": b64u(pk.exponent().big_endian_without_leading_zero()),
        }),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    }
}

impl Idp {
    /// Starts a provider whose issuer is `https://localhost:PORT{path}`,
    /// with one published key `k1`.
    pub async fn start(path: &str) -> Idp {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let ca_file = dir.path().join("idp-ca.pem");
        ca.write_ca_pem(&ca_file);
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let issuer = format!("https://localhost:{}{path}", addr.port());
        let jwks_uri = format!("{issuer}/protocol/openid-connect/certs");
        let idp = Idp {
            addr,
            issuer: issuer.clone(),
            jwks_uri: jwks_uri.clone(),
            ca_file,
            jwks_hits: Default::default(),
            discovery_hits: Default::default(),
            up: Arc::new(AtomicBool::new(true)),
            state: Default::default(),
            _dir: dir,
        };
        idp.add_key("k1");
        idp.publish(&["k1"]);
        let (up, state) = (idp.up.clone(), idp.state.clone());
        let (jh, dh) = (idp.jwks_hits.clone(), idp.discovery_hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    break;
                };
                if !up.load(Ordering::SeqCst) {
                    drop(tcp);
                    continue;
                }
                let (acceptor, state, jh, dh) =
                    (acceptor.clone(), state.clone(), jh.clone(), dh.clone());
                let (issuer, jwks_uri) = (issuer.clone(), jwks_uri.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |r: Request<Incoming>| {
                        let answer = serve(&state, &issuer, &jwks_uri, &jh, &dh, r.uri().path());
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        idp
    }

    /// Makes a key `kid` the provider can sign with (not yet published).
    pub fn add_key(&self, kid: &str) -> Arc<IdpKey> {
        let k = Arc::new(rsa_key(kid));
        self.state.lock().unwrap().keys.push(k.clone());
        k
    }

    /// Serves exactly these kids in the JWKS.
    pub fn publish(&self, kids: &[&str]) {
        self.state.lock().unwrap().published = kids.iter().map(|s| s.to_string()).collect();
    }

    /// Serves metadata at RFC 8414's place only.
    pub fn rfc8414_only(&self) {
        self.state.lock().unwrap().rfc8414_only = true;
    }

    pub fn set_cache_control(&self, v: &str) {
        self.state.lock().unwrap().cache_control = Some(v.to_string());
    }

    /// Discovery names `uri` as the key set (the key set itself is served
    /// at any path ending like the real one).
    pub fn set_discovered_jwks_uri(&self, uri: &str) {
        self.state.lock().unwrap().discovered_jwks_uri = Some(uri.to_string());
    }

    /// When each key-set request arrived, in order.
    pub fn hit_times(&self) -> Vec<std::time::Instant> {
        self.state.lock().unwrap().jwks_hit_times.clone()
    }

    /// Off: every connection is dropped at once.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    pub fn key(&self, kid: &str) -> Arc<IdpKey> {
        let st = self.state.lock().unwrap();
        st.keys.iter().find(|k| k.kid == kid).unwrap().clone()
    }

    /// A token signed with key `kid` (RS256), header `typ`, these claims.
    pub fn sign(&self, kid: &str, typ: &str, claims: &serde_json::Value) -> String {
        sign_rs256(&self.key(kid).encoding, kid, typ, claims)
    }

    pub fn hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
}

/// An RS256 token with header `kid` and `typ`, signed with `key`.
pub fn sign_rs256(key: &EncodingKey, kid: &str, typ: &str, claims: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    h.typ = Some(typ.into());
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn serve(
    state: &Mutex<State>,
    issuer: &str,
    jwks_uri: &str,
    jwks_hits: &AtomicUsize,
    discovery_hits: &AtomicUsize,
    path: &str,
) -> Response<Full<Bytes>> {
    let json = |v: serde_json::Value, cc: Option<&str>| {
        let mut b = Response::builder().header("content-type", "application/json");
        if let Some(cc) = cc {
            b = b.header("cache-control", cc);
        }
        b.body(Full::new(Bytes::from(v.to_string()))).unwrap()
    };
    let issuer_path = issuer
        .splitn(4, '/')
        .nth(3)
        .map_or(String::new(), |p| format!("/{p}"));
    let (rfc8414_only, discovered) = {
        let st = state.lock().unwrap();
        (st.rfc8414_only, st.discovered_jwks_uri.clone())
    };
    let oidc = path == format!("{issuer_path}/.well-known/openid-configuration");
    let rfc8414 = path == format!("/.well-known/oauth-authorization-server{issuer_path}");
    if (oidc && !rfc8414_only) || (rfc8414 && rfc8414_only) {
        discovery_hits.fetch_add(1, Ordering::SeqCst);
        return json(
            serde_json::json!({"issuer": issuer, "jwks_uri": discovered.as_deref().unwrap_or(jwks_uri)}),
            None,
        );
    }
    if jwks_uri.ends_with(path) {
        let mut st = state.lock().unwrap();
        st.jwks_hit_times.push(std::time::Instant::now());
        jwks_hits.fetch_add(1, Ordering::SeqCst);
        let keys: Vec<&serde_json::Value> = st
            .keys
            .iter()
            .filter(|k| st.published.contains(&k.kid))
            .map(|k| &k.jwk)
            .collect();
        return json(
            serde_json::json!({ "keys": keys }),
            st.cache_control.as_deref(),
        );
    }
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(Full::new(Bytes::new()))
        .unwrap()
}
