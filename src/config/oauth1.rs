//! Validation of the `oauth1` section: the token store and its key, and the
//! OAuth 1.0 providers valet is a client of.

use super::error::Collector;
use super::raw::{RawOAuth1, RawProvider};
use crate::credentials::Secret;
use crate::oauth1_signature::{Consumer, Credentials, SignatureMethod};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Environment variable holding the token store key when no file is configured.
pub const STORE_KEY_ENV: &str = "VALET_OAUTH1_STORE_KEY";
/// Where the flow endpoints live unless configured.
pub const DEFAULT_OAUTH1_PREFIX: &str = "/oauth1";
/// How long a started flow waits for the provider to send the user back.
pub const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(600);
/// Time for one call to a provider's token endpoints.
pub const DEFAULT_PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct OAuth1Config {
    /// The token file of versions before the state store: imported into
    /// the store once, never written.
    pub store_file: Option<PathBuf>,
    /// AES-256 key (32 bytes) sealing the stored tokens.
    pub store_key: Secret,
    pub path_prefix: String,
    pub pending_ttl: Duration,
    pub providers: Vec<Arc<Provider>>,
}

impl OAuth1Config {
    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.name == name)
    }
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub request_token_url: String,
    pub authorize_url: String,
    pub access_token_url: String,
    /// valet's signing identity at this provider.
    pub consumer: Consumer,
    /// The URL the provider sends the user back to (valet's callback).
    pub callback_url: String,
    /// Where valet may send the user when the flow ends; the first is the default.
    pub return_urls: Vec<String>,
    pub tls: Arc<rustls::ClientConfig>,
    pub timeout: Duration,
    /// A token obtained elsewhere, used for every subject.
    pub shared_token: Option<Arc<Credentials>>,
    /// valet's URL that starts the flow (named in "authorize first" errors).
    pub start_url: String,
    /// `oauth_problem` values that invalidate the subject's token (the
    /// provider refused the token itself); any other problem is the
    /// consumer's and touches no user's token.
    pub token_problems: Vec<String>,
    /// The levels of access a user may grant; none: the provider has none.
    pub permissions: Option<Permissions>,
}

/// The problems (OAuth Problem Reporting) that always mean the user's
/// token. (`token_rejected` is not among them: providers also send it for
/// a token that is not the consumer's, which a consumer-key mix-up makes
/// true of every user's; add it to `token_problems` where it means the
/// token.)
pub const TOKEN_PROBLEMS: [&str; 2] = ["token_revoked", "token_expired"];

/// The problems counted by name; any other is counted as `other` (an
/// upstream must not mint metric series).
pub const KNOWN_PROBLEMS: [&str; 12] = [
    "version_rejected",
    "parameter_absent",
    "parameter_rejected",
    "timestamp_refused",
    "nonce_used",
    "signature_method_rejected",
    "signature_invalid",
    "consumer_key_unknown",
    "consumer_key_rejected",
    "consumer_key_refused",
    "token_used",
    "token_rejected",
];

/// An absolute http(s) URL with a host and no user info (a provider's
/// URL is called, and a return or callback URL with `user@` names another
/// host than it seems to).
fn is_http_url(s: &str) -> Option<http::Uri> {
    crate::outbound::callable_url(s).ok()
}

pub(super) fn read_secret(path: &Path, what: &str) -> Result<Secret, String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the {what} file {}: {e}", path.display()))?;
    let s = s.trim_end_matches(['\n', '\r']);
    if s.is_empty() {
        return Err(format!("the {what} file {} is empty", path.display()));
    }
    Ok(Secret::new(s.as_bytes().to_vec()))
}

fn store_key(
    path: Option<&Path>,
    generate: bool,
    new_files: &mut Vec<crate::durable::NewFile>,
) -> Result<Secret, String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = match path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
                let mut key = [0u8; 32];
                aws_lc_rs::rand::fill(&mut key).expect("system randomness");
                let t = format!("{}\n", b64.encode(key));
                new_files.push(crate::durable::NewFile::new(
                    p,
                    "OAuth 1.0 token store key",
                    t.clone(),
                ));
                t
            }
            Err(e) => {
                return Err(format!(
                    "cannot read the token store key file {}: {e}",
                    p.display()
                ))
            }
        },
        None => std::env::var(STORE_KEY_ENV)
            .map_err(|_| format!("set oauth1.token_store.key_file or {STORE_KEY_ENV}"))?,
    };
    match b64.decode(text.trim()) {
        Ok(k) if k.len() == 32 => Ok(Secret::new(k)),
        _ => Err("the token store key must be 32 random bytes, base64-encoded (e.g. `openssl rand -base64 32`)".into()),
    }
}

pub(super) fn compile(
    raw: &RawOAuth1,
    resolve: impl Fn(&str) -> PathBuf,
    c: &mut Collector<'_>,
) -> Option<OAuth1Config> {
    let key = match store_key(
        raw.token_store.key_file.as_deref().map(&resolve).as_deref(),
        raw.token_store.generate_key_if_missing,
        &mut c.new_files,
    ) {
        Ok(k) => Some(k),
        Err(e) => {
            c.at("oauth1.token_store", e);
            None
        }
    };
    let prefix = raw
        .path_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_OAUTH1_PREFIX.to_string());
    let plain = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b));
    if !prefix.starts_with('/') || prefix.ends_with('/') || !plain {
        c.at(
            "oauth1.path_prefix",
            "path_prefix must start with `/`, not end with one, and hold only letters, digits and - . _ ~ /",
        );
    }
    let pending_ttl = raw.pending_ttl.map_or(DEFAULT_PENDING_TTL, |d| d.0);
    if pending_ttl.is_zero() {
        c.at(
            "oauth1.pending_ttl",
            "pending_ttl must be greater than zero",
        );
    }
    let mut providers: Vec<Arc<Provider>> = Vec::new();
    for (i, p) in raw.providers.iter().enumerate() {
        let at = format!("oauth1.providers[{i}]");
        if let Some(prov) = provider(p, &at, &prefix, &resolve, c) {
            if providers.iter().any(|o| o.name == prov.name) {
                c.at(
                    &format!("{at}.name"),
                    format!("provider `{}` is defined twice", prov.name),
                );
            }
            providers.push(Arc::new(prov));
        }
    }
    Some(OAuth1Config {
        store_file: raw.token_store.file.as_deref().map(&resolve),
        store_key: key?,
        path_prefix: prefix,
        pending_ttl,
        providers,
    })
}

/// A provider's levels of access (RFC 5849 leaves them to providers: e.g.
/// `x_auth_access_type=read` on the request-token call, or `scope=write`
/// on the authorization URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub default: String,
    /// By name: (request-token parameters, authorization URL parameters).
    pub levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    pub name: String,
    pub request_token: Vec<(String, String)>,
    pub authorize_url: Vec<(String, String)>,
}

impl Permissions {
    /// The level `asked` (the default when `None`).
    pub fn level(&self, asked: Option<&str>) -> Option<&Level> {
        let name = asked.unwrap_or(&self.default);
        self.levels.iter().find(|l| l.name == name)
    }

    /// The levels' names, for a refusal.
    pub fn names(&self) -> String {
        self.levels
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn permissions(
    raw: Option<&super::raw::RawPermissions>,
    at: &str,
    c: &mut Collector<'_>,
) -> Option<Permissions> {
    let raw = raw?;
    let at = format!("{at}.permissions");
    if raw.levels.is_empty() {
        c.at(&format!("{at}.levels"), "name at least one level of access");
    }
    let mut levels = Vec::new();
    for (name, l) in &raw.levels {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            c.at(
                &format!("{at}.levels"),
                format!("level `{name}`: a level is 1 to 64 letters, digits, `-`, `_` or `.` (it is chosen in a URL)"),
            );
        }
        for (part, params) in [
            ("request_token", &l.request_token),
            ("authorize_url", &l.authorize_url),
        ] {
            for k in params.keys() {
                // The protocol's own parameters are valet's to set.
                if k.is_empty() || k.starts_with("oauth_") {
                    c.at(
                        &format!("{at}.levels.{name}.{part}"),
                        format!("parameter `{k}`: the oauth_ parameters are the protocol's own; name the provider's extension parameter"),
                    );
                }
            }
        }
        if l.request_token.is_empty() && l.authorize_url.is_empty() {
            c.at(
                &format!("{at}.levels.{name}"),
                "a level adds at least one parameter to request_token or authorize_url",
            );
        }
        levels.push(Level {
            name: name.clone(),
            request_token: l.request_token.clone().into_iter().collect(),
            authorize_url: l.authorize_url.clone().into_iter().collect(),
        });
    }
    if !raw.levels.contains_key(&raw.default) {
        c.at(
            &format!("{at}.default"),
            format!("`{}` is not one of the levels", raw.default),
        );
    }
    Some(Permissions {
        default: raw.default.clone(),
        levels,
    })
}

fn provider(
    p: &RawProvider,
    at: &str,
    prefix: &str,
    resolve: &impl Fn(&str) -> PathBuf,
    c: &mut Collector<'_>,
) -> Option<Provider> {
    let errors_before = c.errors.len();
    if p.name.is_empty()
        || !p
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        c.at(
            &format!("{at}.name"),
            "a provider name is made of letters, digits, `-`, `_` and `.` (it appears in URLs)",
        );
    }
    let method = match p.signature_method.as_deref() {
        None => SignatureMethod::HmacSha1,
        Some(s) => SignatureMethod::parse(s).unwrap_or_else(|| {
            c.at(
                &format!("{at}.signature_method"),
                format!("unknown signature method `{s}`; use HMAC-SHA1, HMAC-SHA256, RSA-SHA1 or PLAINTEXT"),
            );
            SignatureMethod::HmacSha1
        }),
    };
    let start_url = provider_urls(p, at, prefix, method, c);
    let consumer = consumer(p, at, method, resolve, c);
    let shared_token = shared_token(p, at, resolve, c);
    let tls = match crate::certs::client_config(p.ca_file.as_deref().map(resolve).as_deref()) {
        Ok(t) => Some(t),
        Err(e) => {
            c.at(&format!("{at}.ca_file"), e);
            None
        }
    };
    let permissions = permissions(p.permissions.as_ref(), at, c);
    if permissions.is_some() && shared_token.is_some() {
        c.at(
            &format!("{at}.permissions"),
            "a provider with a pre-provisioned access_token has no flow to ask for a level in",
        );
    }
    let timeout = p.timeout.map_or(DEFAULT_PROVIDER_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        c.at(
            &format!("{at}.timeout"),
            "timeout must be greater than zero",
        );
    }
    if c.errors.len() != errors_before {
        return None;
    }
    Some(Provider {
        name: p.name.clone(),
        request_token_url: p.request_token_url.clone(),
        authorize_url: p.authorize_url.clone(),
        access_token_url: p.access_token_url.clone(),
        consumer: consumer?,
        callback_url: p.callback_url.clone(),
        return_urls: p.return_urls.clone(),
        tls: tls?,
        timeout,
        shared_token,
        start_url,
        token_problems: TOKEN_PROBLEMS
            .iter()
            .map(|s| s.to_string())
            .chain(p.token_problems.iter().cloned())
            .collect(),
        permissions,
    })
}

/// The provider's endpoints, valet's callback and the return URLs; returns
/// valet's URL that starts the flow.
fn provider_urls(
    p: &RawProvider,
    at: &str,
    prefix: &str,
    method: SignatureMethod,
    c: &mut Collector<'_>,
) -> String {
    for (key, url) in [
        ("request_token_url", &p.request_token_url),
        ("authorize_url", &p.authorize_url),
        ("access_token_url", &p.access_token_url),
    ] {
        match is_http_url(url) {
            None => c.at(
                &format!("{at}.{key}"),
                format!("`{url}` is not an absolute http(s) URL without user info"),
            ),
            Some(u) if method == SignatureMethod::Plaintext && u.scheme_str() != Some("https") => c
                .at(
                    &format!("{at}.{key}"),
                    "PLAINTEXT sends the secrets themselves; RFC 5849 §3.4.4 requires https",
                ),
            Some(_) => {}
        }
    }
    let mut start_url = String::new();
    match is_http_url(&p.callback_url) {
        None => c.at(
            &format!("{at}.callback_url"),
            format!(
                "`{}` is not an absolute http(s) URL without user info",
                p.callback_url
            ),
        ),
        Some(u) => {
            let want = format!("{prefix}/{}/callback", p.name);
            if u.path() != want || u.query().is_some() {
                c.at(
                    &format!("{at}.callback_url"),
                    format!(
                        "the callback URL must be valet's own callback for this provider: its path must be `{want}` (no query)"
                    ),
                );
            }
            start_url = format!(
                "{}://{}{prefix}/{}/authorize",
                u.scheme_str().unwrap_or("https"),
                u.authority().map_or("", |a| a.as_str()),
                p.name
            );
        }
    }
    if p.return_urls.is_empty() {
        c.at(
            &format!("{at}.return_urls"),
            "list at least one URL the user may be sent back to when the flow ends",
        );
    }
    for (j, r) in p.return_urls.iter().enumerate() {
        if is_http_url(r).is_none() || r.contains('#') {
            c.at(
                &format!("{at}.return_urls[{j}]"),
                format!("`{r}` is not an absolute http(s) URL without user info or a fragment"),
            );
        }
    }
    start_url
}

/// The consumer's key, realm, and its secret or RSA key (one, by method).
fn consumer(
    p: &RawProvider,
    at: &str,
    method: SignatureMethod,
    resolve: &impl Fn(&str) -> PathBuf,
    c: &mut Collector<'_>,
) -> Option<Consumer> {
    if let Some(r) = &p.realm {
        if !r.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            c.at(
                &format!("{at}.realm"),
                "realm must be printable ASCII (it goes into the Authorization header)",
            );
        }
    }
    if p.consumer_key.is_empty() {
        c.at(
            &format!("{at}.consumer_key"),
            "consumer_key cannot be empty",
        );
    }
    let rsa = method == SignatureMethod::RsaSha1;
    let rsa_key = rsa_key(p, at, rsa, resolve, c);
    let consumer_secret = match &p.consumer_secret_file {
        Some(_) if rsa => {
            c.at(
                &format!("{at}.consumer_secret_file"),
                "RSA-SHA1 uses no consumer secret; remove consumer_secret_file",
            );
            None
        }
        None if rsa => Some(Secret::new(Vec::new())),
        Some(f) => match read_secret(&resolve(f), "consumer secret") {
            Ok(s) if std::str::from_utf8(s.expose()).is_ok() => Some(s),
            Ok(_) => {
                c.at(
                    &format!("{at}.consumer_secret_file"),
                    "the consumer secret is not UTF-8 text",
                );
                None
            }
            Err(e) => {
                c.at(&format!("{at}.consumer_secret_file"), e);
                None
            }
        },
        None => {
            c.at(
                at,
                "consumer_secret_file is required (the secret the provider issued with the consumer key)",
            );
            None
        }
    };
    Some(Consumer {
        key: p.consumer_key.clone(),
        secret: consumer_secret?,
        method,
        rsa_key,
        realm: p.realm.clone(),
    })
}

/// The consumer's RSA private key: required for RSA-SHA1, refused otherwise.
fn rsa_key(
    p: &RawProvider,
    at: &str,
    rsa: bool,
    resolve: &impl Fn(&str) -> PathBuf,
    c: &mut Collector<'_>,
) -> Option<Arc<crate::oauth1_signature::rsa_sha1::RsaSha1Key>> {
    match (&p.private_key_file, rsa) {
        (Some(f), true) => {
            let path = resolve(f);
            match std::fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|pem| crate::oauth1_signature::rsa_sha1::RsaSha1Key::from_pem(&pem))
            {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    c.at(&format!("{at}.private_key_file"), e);
                    None
                }
            }
        }
        (None, true) => {
            c.at(
                at,
                "RSA-SHA1 signs with the consumer's RSA private key: set private_key_file",
            );
            None
        }
        (Some(_), false) => {
            c.at(
                &format!("{at}.private_key_file"),
                "private_key_file is for signature_method: RSA-SHA1 only",
            );
            None
        }
        (None, false) => None,
    }
}

/// A token obtained elsewhere, used for every subject.
fn shared_token(
    p: &RawProvider,
    at: &str,
    resolve: &impl Fn(&str) -> PathBuf,
    c: &mut Collector<'_>,
) -> Option<Arc<Credentials>> {
    match (&p.access_token, &p.access_token_secret_file) {
        (None, None) => None,
        (Some(t), Some(f)) => match read_secret(&resolve(f), "access token secret") {
            Ok(secret) => Some(Arc::new(Credentials {
                token: t.clone(),
                secret,
            })),
            Err(e) => {
                c.at(&format!("{at}.access_token_secret_file"), e);
                None
            }
        },
        _ => {
            c.at(
                at,
                "a pre-provisioned token needs both access_token and access_token_secret_file",
            );
            None
        }
    }
}
