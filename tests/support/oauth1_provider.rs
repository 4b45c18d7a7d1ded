//! A real OAuth 1.0a provider for tests, on loopback: temporary credential
//! and token endpoints over TLS (certificate from the test CA), the user
//! authorization page (approves at once and redirects to the callback), and
//! a protected API over plain HTTP.
//!
//! Every signature is verified with the `oauth1-request` crate (another
//! implementation than valet's `oauth1::signing`), rebuilt from the
//! parameters the provider itself parsed out of the request; the header is
//! parsed here too, not by valet code. Timestamps must be within 5 minutes
//! and nonces unique.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

pub const CONSUMER_KEY: &str = "dpf43f3p2l4k3l03";
/// Has characters that must be percent-encoded in the signing key.
pub const CONSUMER_SECRET: &str = "kd94hf93k&423kf44+/=";

/// One request the protected API received.
#[derive(Debug, Clone)]
pub struct ApiCall {
    pub method: String,
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub body: String,
    /// The oauth parameters, once the signature verified.
    pub verified: Result<HashMap<String, String>, String>,
}

#[derive(Default)]
pub struct State {
    /// Temporary credentials: token → (secret, callback, verifier once approved).
    temporary: HashMap<String, (String, String, Option<String>)>,
    /// Token credentials: token → secret.
    pub access: HashMap<String, String>,
    pub revoked: HashSet<String>,
    nonces: HashSet<(String, String)>,
    /// Each oauth_callback received at the temporary credential endpoint.
    pub callbacks: Vec<String>,
    /// Refusals at the token endpoints, with the reason.
    pub refusals: Vec<String>,
    pub api: Vec<ApiCall>,
    counter: u32,
    /// Set: the consumer signs with RSA-SHA1 and this public key (PKCS#1 DER).
    pub rsa_public: Option<Vec<u8>>,
    /// Set: the API's public origin, as when it sits behind a proxy (the
    /// origin signatures are checked against instead of its own address).
    pub api_origin: Option<String>,
    /// Set: the API refuses every call with this `oauth_problem` (a
    /// consumer-level one, as when valet's consumer key is revoked); `""`:
    /// a bare 401 with no problem named.
    pub consumer_problem: Option<String>,
    /// Permissions: the `x_auth_access_type` of each request-token call
    /// (signed: it is in the query the signature covers).
    pub access_asked: Vec<Option<String>>,
    /// The query of each visit to the authorization page.
    pub authorize_queries: Vec<Vec<(String, String)>>,
    /// The level each temporary, then access, token was granted: a `read`
    /// token may only GET (anything else: 403).
    temporary_access: HashMap<String, String>,
    pub granted: HashMap<String, String>,
}

/// What oauth1-request needs to rebuild the header of a received request.
struct Rebuild<'a> {
    token: Option<(&'a str, &'a str)>,
    callback: Option<&'a str>,
    verifier: Option<&'a str>,
    nonce: &'a str,
    ts: u64,
    method: &'a str,
    url: &'a str,
    list: &'a oauth1_request::request::ParameterList<String, String>,
}

impl Rebuild<'_> {
    /// The oauth parameters oauth1-request produces, signature included.
    fn header<SM>(&self, sm: SM) -> Result<HashMap<String, String>, String>
    where
        SM: oauth1_request::signature_method::SignatureMethod + Clone,
    {
        let mut b = oauth1_request::Builder::<_, String, String>::new(
            oauth1_request::Credentials::new(CONSUMER_KEY.to_string(), CONSUMER_SECRET.to_string()),
            sm,
        );
        if let Some((t, s)) = self.token {
            b.token(oauth1_request::Credentials::new(
                t.to_string(),
                s.to_string(),
            ));
        }
        b.callback(self.callback)
            .verifier(self.verifier)
            .nonce(self.nonce)
            .timestamp(std::num::NonZeroU64::new(self.ts))
            .version(true);
        let h = b.authorize(self.method, self.url, self.list);
        parse_header(&h).ok_or_else(|| "oauth1-request header unparsable".to_string())
    }
}

/// An oauth1-request signature method whose "signature" is the signature
/// base string itself, as oauth1-request builds it.
#[derive(Clone, Copy)]
struct RecordBase;
struct BaseString(String);

impl oauth1_request::signature_method::SignatureMethod for RecordBase {
    type Sign = BaseString;
    fn sign_with(self, _: &str, _: Option<&str>) -> BaseString {
        BaseString(String::new())
    }
}

impl oauth1_request::signature_method::Sign for BaseString {
    type Signature = String;
    fn get_signature_method_name(&self) -> &'static str {
        "RSA-SHA1"
    }
    fn request_method(&mut self, m: &str) {
        self.0.push_str(m);
        self.0.push('&');
    }
    fn uri<T: std::fmt::Display>(&mut self, uri: T) {
        use std::fmt::Write;
        let _ = write!(self.0, "{uri}&");
    }
    fn parameter<V: std::fmt::Display>(&mut self, key: &str, value: V) {
        use std::fmt::Write;
        let _ = write!(self.0, "{key}%3D{value}");
    }
    fn delimiter(&mut self) {
        self.0.push_str("%26");
    }
    /// Percent-encoded, as a signature in the header is (parse_header decodes it).
    fn end(self) -> String {
        percent_encoding::utf8_percent_encode(&self.0, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
    }
}

#[derive(Clone)]
pub struct Provider {
    pub tls_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

/// `OAuth k="v", ...` → decoded pairs (realm kept aside under "realm").
pub fn parse_header(h: &str) -> Option<HashMap<String, String>> {
    let rest = h.strip_prefix("OAuth ")?;
    let mut out = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.strip_prefix('"')?.strip_suffix('"')?;
        let v = percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .ok()?
            .into_owned();
        if out.insert(k.to_string(), v).is_some() {
            return None;
        }
    }
    Some(out)
}

impl State {
    /// Verifies an OAuth 1.0 request; returns its oauth parameters.
    fn verify(
        &mut self,
        method: &str,
        url_without_query: &str,
        params: &[(String, String)],
        authorization: Option<&str>,
        token_secret: Option<&str>,
    ) -> Result<HashMap<String, String>, String> {
        use oauth1_request::signature_method::HmacSha1;
        let o = parse_header(authorization.ok_or("no Authorization header")?)
            .ok_or("Authorization is not an OAuth header")?;
        let get = |k: &str| o.get(k).map(String::as_str);
        if get("oauth_consumer_key") != Some(CONSUMER_KEY) {
            return Err("unknown consumer key".into());
        }
        let want = if self.rsa_public.is_some() {
            "RSA-SHA1"
        } else {
            "HMAC-SHA1"
        };
        if get("oauth_signature_method") != Some(want) {
            return Err(format!("signature method is not {want}"));
        }
        if get("oauth_version") != Some("1.0") {
            return Err("oauth_version is not 1.0".into());
        }
        let ts: u64 = get("oauth_timestamp")
            .and_then(|t| t.parse().ok())
            .ok_or("bad timestamp")?;
        let now = super::now() as u64;
        if ts + 300 < now || ts > now + 300 {
            return Err("timestamp out of range".into());
        }
        let nonce = get("oauth_nonce").ok_or("no nonce")?;
        if nonce.len() < 16 || !self.nonces.insert((ts.to_string(), nonce.to_string())) {
            return Err("nonce reused or too short".into());
        }
        let token = match get("oauth_token") {
            Some(t) => Some((t, token_secret.ok_or("token not expected")?)),
            None => None,
        };
        let list = oauth1_request::request::ParameterList::new(params.to_vec());
        let input = Rebuild {
            token,
            callback: get("oauth_callback"),
            verifier: get("oauth_verifier"),
            nonce,
            ts,
            method,
            url: url_without_query,
            list: &list,
        };
        let got = get("oauth_signature").ok_or("no signature")?;
        if let Some(public) = &self.rsa_public {
            // oauth1-request builds the base string (RecordBase); aws-lc-rs
            // verifies the RSA-SHA1 signature over it with the public key.
            let base = input
                .header(RecordBase)?
                .remove("oauth_signature")
                .ok_or("no base string")?;
            let sig = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, got)
                .map_err(|_| "signature is not base64")?;
            aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
                public,
            )
            .verify(base.as_bytes(), &sig)
            .map_err(|_| format!("RSA-SHA1 signature does not verify over {base}"))?;
            return Ok(o);
        }
        let expected = input.header(HmacSha1::new())?;
        if expected.get("oauth_signature").map(String::as_str) != Some(got) {
            return Err(format!(
                "signature mismatch: got {got:?}, expected {:?}",
                expected.get("oauth_signature")
            ));
        }
        Ok(o)
    }

    fn next(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{}-{}", self.counter, super::now())
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn token_endpoints(
    state: Arc<Mutex<State>>,
    base: String,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, _body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let mut st = state.lock().unwrap();
    let url = format!("{base}{path}");
    let refuse = |st: &mut State, why: String| {
        st.refusals.push(why.clone());
        Ok(reply(
            StatusCode::UNAUTHORIZED,
            form(&[("oauth_problem", &why)]),
        ))
    };
    match (parts.method.as_str(), path.as_str()) {
        ("POST", "/oauth/request_token") => {
            let o = match st.verify("POST", &url, &query, auth, None) {
                Ok(o) => o,
                Err(e) => return refuse(&mut st, e),
            };
            let Some(cb) = o.get("oauth_callback").cloned() else {
                return refuse(&mut st, "no oauth_callback".into());
            };
            st.callbacks.push(cb.clone());
            let asked = query
                .iter()
                .find(|(k, _)| k == "x_auth_access_type")
                .map(|(_, v)| v.clone());
            st.access_asked.push(asked.clone());
            let (t, s) = (st.next("rt"), st.next("rts&/"));
            st.temporary.insert(t.clone(), (s.clone(), cb, None));
            if let Some(a) = asked {
                st.temporary_access.insert(t.clone(), a);
            }
            Ok(reply(
                StatusCode::OK,
                form(&[
                    ("oauth_token", &t),
                    ("oauth_token_secret", &s),
                    ("oauth_callback_confirmed", "true"),
                ]),
            ))
        }
        ("GET", "/oauth/authorize") => {
            // The user approves at once; the browser goes back to the callback.
            let t = query
                .iter()
                .find(|(k, _)| k == "oauth_token")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            st.authorize_queries.push(query);
            let verifier = st.next("verifier");
            let Some(entry) = st.temporary.get_mut(&t) else {
                return Ok(reply(StatusCode::BAD_REQUEST, "unknown token".into()));
            };
            entry.2 = Some(verifier.clone());
            let to = format!(
                "{}?{}",
                entry.1,
                form(&[("oauth_token", &t), ("oauth_verifier", &verifier)])
            );
            Ok(Response::builder()
                .status(StatusCode::FOUND)
                .header("location", to)
                .body(Full::new(Bytes::new()))
                .unwrap())
        }
        ("POST", "/oauth/access_token") => {
            let o = match parse_header(auth.unwrap_or("")) {
                Some(o) => o,
                None => return refuse(&mut st, "no OAuth header".into()),
            };
            let t = o.get("oauth_token").cloned().unwrap_or_default();
            let Some((secret, _, Some(verifier))) = st.temporary.get(&t).cloned() else {
                return refuse(&mut st, "unknown or unapproved temporary token".into());
            };
            if let Err(e) = st.verify("POST", &url, &query, auth, Some(&secret)) {
                return refuse(&mut st, e);
            }
            if o.get("oauth_verifier") != Some(&verifier) {
                return refuse(&mut st, "wrong verifier".into());
            }
            st.temporary.remove(&t);
            let (at, ats) = (st.next("at"), st.next("ats+%"));
            st.access.insert(at.clone(), ats.clone());
            if let Some(a) = st.temporary_access.remove(&t) {
                st.granted.insert(at.clone(), a);
            }
            Ok(reply(
                StatusCode::OK,
                form(&[("oauth_token", &at), ("oauth_token_secret", &ats)]),
            ))
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, String::new())),
    }
}

async fn api(
    state: Arc<Mutex<State>>,
    base: String,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut params: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let is_form = parts.headers.get("content-type").is_some_and(|v| {
        v.as_bytes()
            .starts_with(b"application/x-www-form-urlencoded")
    });
    if is_form {
        params.extend(form_urlencoded::parse(body.as_bytes()).into_owned());
    }
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut st = state.lock().unwrap();
    let base = st.api_origin.clone().unwrap_or(base);
    let token = auth
        .as_deref()
        .and_then(parse_header)
        .and_then(|o| o.get("oauth_token").cloned())
        .unwrap_or_default();
    let verified = match st.access.get(&token).cloned() {
        _ if st.consumer_problem.is_some() => Err("consumer refused".to_string()),
        _ if st.revoked.contains(&token) => Err("token revoked".to_string()),
        None => Err("unknown token".to_string()),
        Some(secret) => st.verify(
            parts.method.as_str(),
            &format!("{base}{}", parts.uri.path()),
            &params,
            auth.as_deref(),
            Some(&secret),
        ),
    };
    let read_only = st.granted.get(&token).is_some_and(|a| a == "read");
    let status = match &verified {
        Ok(_) if read_only && !matches!(parts.method.as_str(), "GET" | "HEAD") => {
            StatusCode::FORBIDDEN
        }
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::UNAUTHORIZED,
    };
    st.api.push(ApiCall {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: auth,
        body,
        verified,
    });
    // The OAuth Problem Reporting extension's WWW-Authenticate.
    let problem = match (&st.api.last().unwrap().verified, &st.consumer_problem) {
        (Ok(_), _) => None,
        (Err(_), Some(p)) => Some(p.clone()).filter(|p| !p.is_empty()),
        (Err(e), None) if e == "token revoked" => Some("token_revoked".to_string()),
        (Err(e), None) if e == "unknown token" => Some("token_rejected".to_string()),
        (Err(_), None) => Some("signature_invalid".to_string()),
    };
    let mut b = Response::builder().status(status);
    if let Some(p) = problem {
        b = b.header(
            "www-authenticate",
            format!("OAuth realm=\"api\", oauth_problem=\"{p}\""),
        );
    }
    Ok(b.header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            "{{\"token\":\"{token}\",\"ok\":{}}}",
            status == StatusCode::OK
        ))))
        .unwrap())
}

impl Provider {
    /// Starts both listeners; the TLS one serves `ca`'s leaf certificate.
    pub async fn start(ca: &super::TestCa) -> Provider {
        let state = Arc::new(Mutex::new(State::default()));
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let tls_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tls_addr, api_addr) = (tls_l.local_addr().unwrap(), api_l.local_addr().unwrap());
        let st = state.clone();
        let base = format!("https://localhost:{}", tls_addr.port());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = tls_l.accept().await else {
                    break;
                };
                let (acceptor, st, base) = (acceptor.clone(), st.clone(), base.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // The token endpoints, and the API over https too.
                    let svc = service_fn(move |r: Request<Incoming>| {
                        let (st, base) = (st.clone(), base.clone());
                        async move {
                            if r.uri().path().starts_with("/oauth/") {
                                token_endpoints(st, base, r).await
                            } else {
                                api(st, base, r).await
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let st = state.clone();
        let base = format!("http://{api_addr}");
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = api_l.accept().await else {
                    break;
                };
                let (st, base) = (st.clone(), base.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |r| api(st.clone(), base.clone(), r));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Provider {
            tls_addr,
            api_addr,
            state,
        }
    }

    /// The entry for a consumer signing with RSA-SHA1 and `key_pem`, whose
    /// public key (PKCS#1 DER) the provider then verifies with.
    pub fn config_yaml_rsa(
        &self,
        dir: &std::path::Path,
        ca_file: &std::path::Path,
        key_pem: &std::path::Path,
        public_der: Vec<u8>,
    ) -> String {
        self.state.lock().unwrap().rsa_public = Some(public_der);
        self.config_yaml(dir, ca_file).replace(
            &format!(
                "      consumer_secret_file: \"{}\"\n",
                dir.join("consumer.secret").display()
            ),
            &format!(
                "      signature_method: RSA-SHA1\n      private_key_file: \"{}\"\n",
                key_pem.display()
            ),
        )
    }

    /// The `oauth1.providers[]` entry for this provider (HMAC-SHA1); the
    /// consumer secret is written into `dir`.
    pub fn config_yaml(&self, dir: &std::path::Path, ca_file: &std::path::Path) -> String {
        let secret = dir.join("consumer.secret");
        std::fs::write(&secret, format!("{CONSUMER_SECRET}\n")).unwrap();
        let base = format!("https://localhost:{}", self.tls_addr.port());
        format!(
            r#"    - name: legacy
      request_token_url: "{base}/oauth/request_token"
      authorize_url: "{base}/oauth/authorize"
      access_token_url: "{base}/oauth/access_token"
      consumer_key: "{CONSUMER_KEY}"
      consumer_secret_file: "{secret}"
      realm: "Legacy API"
      callback_url: "https://valet.example:8443/oauth1/legacy/callback"
      return_urls: ["https://app.example/done", "https://app.example/other?x=1"]
      ca_file: "{ca}"
"#,
            ca = ca_file.display(),
            secret = secret.display(),
        )
    }
}
