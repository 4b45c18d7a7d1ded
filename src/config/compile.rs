//! Raw YAML → validated [`Config`]: every semantic rule lives here, and every
//! violation is reported (not just the first), with file, line and column.

use super::error::{from_yaml, Collector, ConfigError, ConfigErrors};
use super::keys::{load_keys, resolve};
use super::raw::*;
use super::*;
use crate::tokens::keys::LoadedKey;
use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::Uri;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A validated configuration; cheap to share.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// What this process does.
    pub role: Role,
    /// Secret files `generate_if_missing` asks for, generated in memory and
    /// not yet written ([`Config::create_new_files`] writes them).
    pub new_files: Vec<crate::durable::NewFile>,
    pub listeners: Vec<ListenerConfig>,
    pub metrics_address: Option<SocketAddr>,
    pub tokens: TokenConfig,
    pub revocation_file: PathBuf,
    /// The embedded state store (SQLite): valet's own revocations, refresh
    /// rotations, single-use ids.
    pub store_path: PathBuf,
    /// A Redis store instead (`store.redis`): then `store_path` is unused.
    pub store_redis: Option<crate::store::redis::RedisSettings>,
    /// How long without reading the store makes revocations stale.
    pub store_stale_after: Duration,
    /// `store.single_replica`: the embedded store is meant for one pod.
    pub store_single_replica: bool,
    /// CORS for valet's own endpoints (token, revocation, OAuth 1.0).
    pub cors: Option<std::sync::Arc<super::cors::CorsPolicy>>,
    pub routes: Vec<RouteConfig>,
    pub limits: Limits,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub identity_headers: IdentityHeaderNames,
    pub logging: LoggingConfig,
    pub echo_upstream: Option<SocketAddr>,
    pub authorization_server: Option<super::AuthServerConfig>,
    pub admin: Option<AdminConfig>,
    pub oauth1: Option<super::OAuth1Config>,
}

/// The admin API listener and its credentials: (name, SHA-256 of the
/// bearer secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub credentials: Vec<(String, [u8; 32])>,
}

/// Environment variable holding the admin API secret when no file is configured.
pub const ADMIN_TOKEN_ENV: &str = "VALET_ADMIN_TOKEN";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub tls: TlsSource,
    /// How requests on this listener are read (reloadable).
    pub requests: RequestPolicy,
}

/// A listener's rules for reading requests; the defaults are the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestPolicy {
    pub paths: crate::request_target::PathPolicy,
    pub underscores: UnderscoreHeaders,
}

/// What happens to a request header whose name contains `_` (CGI, WSGI, Rack
/// and PHP read `x_user` and `x-user` as the same variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    /// Removed before forwarding (nginx's and Envoy's choice).
    #[default]
    Drop,
    /// The request is refused with 400.
    Reject,
    /// Forwarded, except names that read as a header valet sets or strips.
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Files { cert: PathBuf, key: PathBuf },
    SelfSignedForDevelopment,
}

pub use crate::tokens::TokenConfig;

/// Where a proxied request goes: `scheme://authority` plus a base path.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix on the upstream, without a trailing `/` ("" for none).
    pub base_path: String,
    /// For https:// upstreams.
    pub tls: Option<UpstreamTls>,
    pub protocol: UpstreamProtocol,
}

/// Which HTTP valet speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP.
    H2c,
    /// What ALPN picks over TLS: HTTP/2 when the upstream offers it.
    Negotiated,
}

/// TLS towards one upstream: whom to trust, which name to check, and the
/// client certificate to show.
#[derive(Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Checked (and sent as SNI) instead of the URL's host.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
    /// Identifies the settings (files' contents included), so routes with
    /// the same ones share a connection pool.
    pub id: [u8; 32],
    /// The CA, certificate and key files: a change to one reloads the
    /// config (a renewed client certificate takes effect).
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub path_prefix: String,
    /// Match `path_prefix` ignoring ASCII case.
    pub case_insensitive: bool,
    /// Lowercase, no trailing dot.
    pub host: Option<String>,
    pub upstream: Upstream,
    pub strip_prefix: bool,
    pub auth_required: bool,
    /// 503 while revocations are stale (see `Config::store_stale_after`).
    pub fail_closed_when_stale: bool,
    pub scopes: Vec<String>,
    pub forward_authorization: bool,
    pub inject: InjectIdentity,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_body_size: u64,
    /// The OAuth 1.0 provider whose token signs forwarded requests.
    pub upstream_auth_oauth1: Option<String>,
    /// The origin signed instead of the upstream's (no trailing `/`).
    pub oauth1_signed_origin: Option<String>,
    /// Tokens accepted: of these issuers only (0 is valet itself, `i + 1`
    /// is `tokens.issuers[i]`); `None`: every issuer.
    pub auth_issuers: Option<Vec<usize>>,
    /// Tokens accepted: for one of these audiences (empty: any accepted).
    pub auth_audiences: Vec<String>,
    /// `Upgrade: websocket` is spliced through (else refused).
    pub websocket: Option<WebSocketPolicy>,
    /// Validated claims injected as headers (caller copies are stripped).
    pub inject_claims: Vec<(HeaderName, String)>,
    /// Caller headers removed before forwarding, beyond valet's own list.
    pub strip_request_headers: Vec<HeaderName>,
    /// Cross-origin calls from browsers.
    pub cors: Option<std::sync::Arc<super::cors::CorsPolicy>>,
}

/// How long a route's WebSocket sessions may last.
#[derive(Debug, Clone, Copy)]
pub struct WebSocketPolicy {
    pub idle_timeout: Duration,
    pub max_duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectIdentity {
    pub subject: bool,
    pub client_id: bool,
    pub scopes: bool,
    pub issuer: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_header_size: u64,
    pub max_body_size: u64,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_websockets: usize,
    pub max_websockets_per_subject: usize,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub shutdown_grace: Duration,
    /// On SIGTERM, how long valet goes on serving, not ready, before it
    /// drains: load balancers see it leave before its connections close.
    pub drain_delay: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    /// Bytes per second; 0 turns the check off.
    pub min_request_body_rate: u64,
    pub request_body_grace: Duration,
    /// Longest single wait for more of a request body.
    pub request_body_timeout: Duration,
    /// Connections per client IP and listener; `None`: no cap.
    pub max_connections_per_source: Option<usize>,
    pub http2_max_concurrent_streams: u32,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaderNames {
    pub subject: HeaderName,
    pub client_id: HeaderName,
    pub scopes: HeaderName,
    pub issuer: HeaderName,
}

impl IdentityHeaderNames {
    pub fn all(&self) -> [&HeaderName; 4] {
        [&self.subject, &self.client_id, &self.scopes, &self.issuer]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            position: None,
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    parse(path, &src)
}

impl Config {
    /// Writes the files `generate_if_missing` asked for. `Ok(false)` if
    /// another process created one first: load the config again to use it.
    pub fn create_new_files(&self) -> Result<bool, String> {
        let mut all_ours = true;
        for f in &self.new_files {
            match f.create() {
                Ok(true) => {
                    tracing::warn!(path = %f.path.display(), "generated a new {} (generate_if_missing); do not use generated secrets in production", f.what)
                }
                Ok(false) => all_ours = false,
                Err(e) => {
                    return Err(format!(
                        "cannot write the new {} {}: {e}",
                        f.what,
                        f.path.display()
                    ))
                }
            }
        }
        Ok(all_ours)
    }
}

/// Loads the config for use, creating what `generate_if_missing` asks for
/// (`valet check` uses [`load`], which writes nothing).
pub fn load_for_use(path: &Path) -> Result<Config, ConfigErrors> {
    let cfg = load(path)?;
    let io = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            position: None,
            message,
        }])
    };
    match cfg.create_new_files().map_err(io)? {
        true => Ok(cfg),
        // Someone else's files won the race: use theirs.
        false => load(path),
    }
}

/// Validates config text `src` that was read from `path`. Reads the files
/// it names; writes nothing.
pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
    parse_with(path, src, None)
}

/// [`parse`], with the managed clients read from the state store (`None`:
/// the store is not open, e.g. `valet check`; the clients file of earlier
/// versions stands in for it).
pub fn parse_with(
    path: &Path,
    src: &str,
    managed: Option<&[super::RawClient]>,
) -> Result<Config, ConfigErrors> {
    let raw: RawConfig =
        serde_yaml::from_str(src).map_err(|e| ConfigErrors(vec![from_yaml(path, &e)]))?;
    let mut c = Collector::new(path, src);
    let base = path.parent().unwrap_or(Path::new("."));
    let mut extra = Vec::new();
    let mut config = compile(raw, path, base, managed, &mut c, &mut extra);
    c.errors.append(&mut extra);
    if c.errors.is_empty() {
        config.new_files = std::mem::take(&mut c.new_files);
        Ok(config)
    } else {
        Err(ConfigErrors(c.errors))
    }
}

fn addr(c: &mut Collector<'_>, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            c.at(
                path,
                format!("`{s}` is not a socket address; write e.g. \"127.0.0.1:8443\" or \"[::1]:8443\""),
            );
            None
        }
    }
}

fn header_name(c: &mut Collector<'_>, path: &str, s: Option<String>, default: &str) -> HeaderName {
    let s = s.unwrap_or_else(|| default.to_string());
    match HeaderName::from_bytes(s.as_bytes()) {
        Ok(h) => h,
        Err(_) => {
            c.at(path, format!("`{s}` is not a valid HTTP header name"));
            HeaderName::from_static("x-invalid")
        }
    }
}

fn compile(
    raw: RawConfig,
    path: &Path,
    base: &Path,
    managed: Option<&[super::RawClient]>,
    c: &mut Collector<'_>,
    extra: &mut Vec<ConfigError>,
) -> Config {
    let listeners = compile_listeners(&raw.listeners, base, c);

    let metrics_address = if raw.metrics.enabled {
        addr(c, "metrics.address", &raw.metrics.address)
    } else {
        None
    };

    check_role(&raw, c);
    let tokens = compile_tokens(&raw.tokens, base, c);
    let limits = compile_limits(&raw.limits, c);

    let routes = compile_routes(&raw.routes, &limits, &tokens, base, c);
    let trusted_proxies = compile_trusted_proxies(&raw.forwarding.trusted_proxies, c);

    let identity_headers = compile_identity_headers(raw.identity_headers, c);
    // An injected claim never takes the place of a verified identity.
    for (i, r) in routes.iter().enumerate() {
        for (h, _) in &r.inject_claims {
            if identity_headers.all().contains(&h) {
                c.at(
                    &format!("routes[{i}].inject_claims"),
                    format!("`{h}` is an identity header valet sets from the token"),
                );
            }
        }
    }

    let logging = compile_logging(&raw.logging, c);

    let echo_upstream = raw
        .dev
        .echo_upstream
        .as_ref()
        .and_then(|a| addr(c, "dev.echo_upstream", a));

    let authorization_server = raw.authorization_server.as_ref().map(|a| {
        super::auth_server::compile(
            a,
            &tokens.issuer,
            tokens.audiences.first().map_or("", String::as_str),
            |p| resolve(base, p),
            managed,
            c,
            extra,
        )
    });
    if authorization_server.is_some() && tokens.signing_key.is_none() {
        c.at(
            "tokens.signing_key",
            "the authorization server needs a signing key (a key with private_key_file)",
        );
    }
    let admin = raw.admin.as_ref().and_then(|a| {
        compile_admin(
            a,
            base,
            authorization_server.is_some() || raw.oauth1.is_some(),
            c,
        )
    });

    let oauth1 = raw
        .oauth1
        .as_ref()
        .and_then(|o| super::oauth1::compile(o, |p| resolve(base, p), c));
    check_upstream_auth(&raw.routes, raw.oauth1.as_ref(), c);
    check_own_endpoints(&routes, authorization_server.as_ref(), oauth1.as_ref(), c);

    Config {
        role: raw.role,
        new_files: Vec::new(),
        oauth1,
        admin,
        authorization_server,
        path: path.to_path_buf(),
        listeners,
        metrics_address,
        tokens,
        revocation_file: resolve(base, &raw.revocation.file),
        store_path: store_path(&raw.store, &raw.revocation, base),
        store_redis: raw
            .store
            .redis
            .as_ref()
            .and_then(|r| store_redis(r, base, c)),
        store_stale_after: raw.store.stale_after.map_or(DEFAULT_STALE_AFTER, |d| d.0),
        store_single_replica: raw.store.single_replica,
        cors: raw
            .cors
            .as_ref()
            .and_then(|r| super::cors::compile(r, "cors", c)),
        routes,
        limits,
        trusted_proxies,
        identity_headers,
        logging,
        echo_upstream,
    }
}

/// What each role may hold: a validator no private key and nothing that
/// issues or writes (token endpoints, admin API, the OAuth 1.0 flow and its
/// token store); an authority a signing key and the token endpoints.
fn check_role(raw: &RawConfig, c: &mut Collector<'_>) {
    match raw.role {
        Role::Both => {}
        Role::Authority => {
            if raw.authorization_server.is_none() {
                c.at(
                    "role",
                    "an authority issues tokens: configure authorization_server (or use role: both)",
                );
            }
        }
        Role::Validator => {
            for (i, k) in raw.tokens.keys.iter().enumerate() {
                if k.private_key_file.is_some() || k.generate_if_missing {
                    c.at(
                        &format!("tokens.keys[{i}]"),
                        "a validator holds public keys only (public_key_file): the signing key belongs to the authority",
                    );
                }
            }
            for (section, given) in [
                ("authorization_server", raw.authorization_server.is_some()),
                ("admin", raw.admin.is_some()),
                ("oauth1", raw.oauth1.is_some()),
            ] {
                if given {
                    c.at(
                        section,
                        format!("a validator issues and writes nothing: `{section}` belongs to the authority (role: authority or both)"),
                    );
                }
            }
        }
    }
}

/// Routes signed with an OAuth 1.0 provider: the provider exists, the route
/// authenticates its caller, the signed origin is an origin.
fn check_upstream_auth(routes: &[RawRoute], oauth1: Option<&RawOAuth1>, c: &mut Collector<'_>) {
    for (i, r) in routes.iter().enumerate() {
        let Some(u) = &r.upstream_auth else { continue };
        let p = format!("routes[{i}].upstream_auth.oauth1");
        if oauth1.is_none() {
            c.at(&p, "no `oauth1` section defines providers");
        } else if let Some(o) = oauth1 {
            if !o.providers.iter().any(|x| x.name == u.oauth1) {
                c.at(&p, format!("no OAuth 1.0 provider is named `{}`", u.oauth1));
            }
        }
        if !r.auth.required {
            c.at(&p, "signing for a subject needs auth.required: true");
        }
        if let Some(o) = &u.signed_origin {
            let ok = o.parse::<Uri>().is_ok_and(|x| {
                matches!(x.scheme_str(), Some("http" | "https"))
                    && x.authority().is_some()
                    && matches!(x.path(), "" | "/")
                    && x.query().is_none()
            });
            if !ok {
                c.at(
                    &format!("routes[{i}].upstream_auth.signed_origin"),
                    format!("`{o}` is not an origin such as https://api.example.com (scheme and host, optional port, nothing else)"),
                );
            }
        }
        if r.forward_authorization {
            c.at(
                &format!("routes[{i}].forward_authorization"),
                "forward_authorization cannot be combined with upstream_auth (valet sets Authorization itself)",
            );
        }
    }
}

/// No route may shadow valet's own endpoints (they take precedence).
fn check_own_endpoints(
    routes: &[RouteConfig],
    authorization_server: Option<&AuthServerConfig>,
    oauth1: Option<&OAuth1Config>,
    c: &mut Collector<'_>,
) {
    if let Some(a) = authorization_server {
        let own = [
            &a.paths.token,
            &a.paths.revocation,
            &a.paths.introspection,
            &a.paths.metadata,
            &a.paths.jwks,
        ];
        for (i, r) in routes.iter().enumerate() {
            if own
                .iter()
                .any(|p| crate::request_target::prefix_matches(&r.path_prefix, p))
                && r.path_prefix != "/"
            {
                c.at(
                    &format!("routes[{i}].match.path_prefix"),
                    format!(
                        "route `{}` overlaps valet's own OAuth endpoints; they take precedence",
                        r.name
                    ),
                );
            }
        }
    }
    if let Some(o) = oauth1 {
        for (i, r) in routes.iter().enumerate() {
            if r.path_prefix != "/"
                && (crate::request_target::prefix_matches(&r.path_prefix, &o.path_prefix)
                    || crate::request_target::prefix_matches(&o.path_prefix, &r.path_prefix))
            {
                c.at(
                    &format!("routes[{i}].match.path_prefix"),
                    format!(
                        "route `{}` overlaps valet's OAuth 1.0 endpoints under {}",
                        r.name, o.path_prefix
                    ),
                );
            }
        }
    }
}

/// `identity_headers`: the names valet injects, never a reserved header.
fn compile_identity_headers(ih: RawIdentityHeaders, c: &mut Collector<'_>) -> IdentityHeaderNames {
    let identity_headers = IdentityHeaderNames {
        subject: header_name(
            c,
            "identity_headers.subject",
            ih.subject,
            DEFAULT_SUBJECT_HEADER,
        ),
        client_id: header_name(
            c,
            "identity_headers.client_id",
            ih.client_id,
            DEFAULT_CLIENT_ID_HEADER,
        ),
        scopes: header_name(
            c,
            "identity_headers.scopes",
            ih.scopes,
            DEFAULT_SCOPES_HEADER,
        ),
        issuer: header_name(
            c,
            "identity_headers.issuer",
            ih.issuer,
            DEFAULT_ISSUER_HEADER,
        ),
    };
    for h in identity_headers.all() {
        if crate::header_names::is_reserved(h) {
            c.at(
                "identity_headers",
                format!("`{h}` cannot be used as an identity header"),
            );
        }
    }
    identity_headers
}

/// `logging`: the format and a filter `tracing` accepts.
fn compile_logging(raw: &RawLogging, c: &mut Collector<'_>) -> LoggingConfig {
    let format = match raw.format.as_deref() {
        None | Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.at(
                "logging.format",
                format!("unknown log format `{other}`; use human or json"),
            );
            LogFormat::Human
        }
    };
    let level = raw.level.clone().unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        c.at(
            "logging.level",
            format!("`{level}` is not a log level or filter (e.g. info, debug, valet=debug)"),
        );
    }
    LoggingConfig { format, level }
}

/// `admin`: a loopback address and a token of at least 16 characters,
/// kept only as its SHA-256.
fn compile_admin(
    a: &RawAdmin,
    base: &Path,
    has_something_to_manage: bool,
    c: &mut Collector<'_>,
) -> Option<AdminConfig> {
    let address = addr(c, "admin.address", &a.address)?;
    if !address.ip().is_loopback() {
        c.at(
            "admin.address",
            "the admin API is plain HTTP: bind it to a loopback address",
        );
    }
    if !has_something_to_manage {
        c.at("admin", "the admin API manages the authorization server's clients and OAuth 1.0 tokens; configure authorization_server or oauth1");
    }
    let read = |f: &str| {
        std::fs::read_to_string(resolve(base, f))
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read {f}: {e}"))
    };
    let mut given: Vec<(String, String, Result<String, String>)> = a
        .credentials
        .iter()
        .enumerate()
        .map(|(i, cr)| {
            (
                cr.name.clone(),
                format!("admin.credentials[{i}]"),
                read(&cr.token_file),
            )
        })
        .collect();
    if given.is_empty() || a.token_file.is_some() {
        let token = match &a.token_file {
            Some(f) => read(f).map_err(|e| format!("admin.token_file: {e}")),
            None => std::env::var(ADMIN_TOKEN_ENV).map_err(|_| {
                format!("set admin.token_file, admin.credentials or {ADMIN_TOKEN_ENV}")
            }),
        };
        given.insert(0, ("admin".to_string(), "admin".to_string(), token));
    }
    let mut credentials: Vec<(String, [u8; 32])> = Vec::new();
    let before = c.errors.len();
    for (name, at, token) in given {
        let named = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !named {
            c.at(
                &at,
                "an admin credential's name is 1 to 64 of A-Z a-z 0-9 . _ -",
            );
        }
        match token {
            Ok(t) if t.len() >= 16 => {
                let d: [u8; 32] = crate::digest::sha256(t.as_bytes())
                    .as_ref()
                    .try_into()
                    .expect("32 bytes");
                if credentials.iter().any(|(n, _)| *n == name) {
                    c.at(&at, format!("admin credential `{name}` is named twice"));
                } else if credentials.iter().any(|(_, x)| *x == d) {
                    c.at(
                        &at,
                        "two admin credentials share a secret: who made a change could not be told",
                    );
                }
                credentials.push((name, d));
            }
            Ok(_) => c.at(&at, "the admin token must be at least 16 characters"),
            Err(e) => c.at(&at, e),
        }
    }
    (c.errors.len() == before).then_some(AdminConfig {
        address,
        credentials,
    })
}

/// `routes`: names, canonical prefixes, upstreams and per-route limits
/// (defaults from `limits`).
fn compile_routes(
    raw: &[RawRoute],
    limits: &Limits,
    tokens: &TokenConfig,
    base: &Path,
    c: &mut Collector<'_>,
) -> Vec<RouteConfig> {
    let d = |v: Option<units::ConfigDuration>, def: Duration| v.map_or(def, |v| v.0);
    let mut routes: Vec<RouteConfig> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let p = format!("routes[{i}]");
        if routes.iter().any(|o| o.name == r.name) {
            c.at(
                &format!("{p}.name"),
                format!("route name `{}` is used twice", r.name),
            );
        }
        route_prefix(r, &p, c);
        let host = route_host(r, &p, c);
        let mut strip_request_headers = route_strip_headers(r, &p, c);
        let inject_claims = route_inject_claims(r, &p, c);
        // Caller copies of injected claims go, in every spelling.
        strip_request_headers.extend(inject_claims.iter().map(|(h, _)| h.clone()));
        let upstream =
            compile_upstream(c, &format!("{p}.upstream"), &r.upstream).and_then(|mut u| {
                u.tls = upstream_tls(r, &u, &p, base, c)?;
                u.protocol = upstream_protocol(r, &u, &p, c)?;
                Some(u)
            });
        let inject = route_inject(r, &p, c);
        let (auth_issuers, auth_audiences) = route_auth(r, &p, tokens, c);
        let websocket = route_websocket(r, &p, c);
        // An upgrade is HTTP/1.1 (RFC 6455); HTTP/2 has no 101, so a
        // WebSocket route never speaks h2 to its upstream.
        let upstream = upstream.and_then(|mut u| {
            if websocket.is_some() {
                match u.protocol {
                    UpstreamProtocol::H2c => {
                        c.at(
                            &format!("{p}.upstream_protocol"),
                            "a websocket route speaks HTTP/1.1 to its upstream (HTTP/2 has no upgrade); drop h2c",
                        );
                        return None;
                    }
                    UpstreamProtocol::Negotiated => u.protocol = UpstreamProtocol::Http1,
                    UpstreamProtocol::Http1 => {}
                }
            }
            Some(u)
        });
        if let Some(up) = upstream {
            routes.push(RouteConfig {
                name: r.name.clone(),
                path_prefix: r.matcher.path_prefix.clone(),
                case_insensitive: r.matcher.case_insensitive,
                host,
                strip_request_headers,
                upstream: up,
                strip_prefix: r.strip_prefix,
                auth_required: r.auth.required,
                fail_closed_when_stale: r.auth.fail_closed_when_stale,
                scopes: r.auth.scopes.clone(),
                forward_authorization: r.forward_authorization,
                inject,
                auth_issuers,
                auth_audiences,
                inject_claims,
                websocket,
                connect_timeout: d(r.connect_timeout, limits.connect_timeout),
                response_timeout: d(r.response_timeout, limits.response_timeout),
                max_body_size: r.max_body_size.map_or(limits.max_body_size, |b| b.0),
                upstream_auth_oauth1: r.upstream_auth.as_ref().map(|u| u.oauth1.clone()),
                oauth1_signed_origin: r
                    .upstream_auth
                    .as_ref()
                    .and_then(|u| u.signed_origin.as_ref())
                    .map(|o| o.trim_end_matches('/').to_string()),
                cors: r
                    .cors
                    .as_ref()
                    .and_then(|raw| super::cors::compile(raw, &format!("{p}.cors"), c)),
            });
        }
    }
    routes
}

/// A route's path prefix: absolute, and in the canonical form requests are
/// routed on (a prefix in another spelling would never match).
fn route_prefix(r: &RawRoute, p: &str, c: &mut Collector<'_>) {
    if !r.matcher.path_prefix.starts_with('/') {
        c.at(
            &format!("{p}.match.path_prefix"),
            format!(
                "path_prefix `{}` must start with `/`",
                r.matcher.path_prefix
            ),
        );
    }
    if r.matcher.path_prefix.contains(['?', '#']) {
        c.at(
            &format!("{p}.match.path_prefix"),
            "path_prefix cannot contain `?` or `#`",
        );
    } else if r.matcher.path_prefix.starts_with('/') {
        // Requests are routed on their canonical form; a prefix in
        // another spelling would never match.
        match crate::request_target::canonical_path(&r.matcher.path_prefix, &Default::default()) {
            Ok(canon) if canon != r.matcher.path_prefix => c.at(
                &format!("{p}.match.path_prefix"),
                format!(
                    "path_prefix `{}` is not in canonical form; write `{canon}`",
                    r.matcher.path_prefix
                ),
            ),
            Ok(_) => {}
            Err(e) => c.at(
                &format!("{p}.match.path_prefix"),
                format!("path_prefix `{}`: {e}", r.matcher.path_prefix),
            ),
        }
    }
}

/// A route's host: a name or IP without a port, lower-cased.
fn route_host(r: &RawRoute, p: &str, c: &mut Collector<'_>) -> Option<String> {
    r.matcher
        .host
        .as_ref()
        .and_then(|h| match crate::request_target::parse_host(h.as_bytes()) {
            Ok(a) if a.port_u16().is_none() && !a.as_str().ends_with(':') => {
                Some(crate::request_target::host_name(&a).to_ascii_lowercase())
            }
            _ => {
                c.at(
                    &format!("{p}.match.host"),
                    format!("`{h}` is not a host name or IP (without a port)"),
                );
                None
            }
        })
}

/// Caller headers a route removes beyond valet's own list.
fn route_strip_headers(r: &RawRoute, p: &str, c: &mut Collector<'_>) -> Vec<HeaderName> {
    let mut strip_request_headers = Vec::new();
    for (j, h) in r.strip_request_headers.iter().enumerate() {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => strip_request_headers.push(n),
            Err(_) => c.at(
                &format!("{p}.strip_request_headers[{j}]"),
                format!("`{h}` is not a valid header name"),
            ),
        }
    }
    strip_request_headers
}

/// Which identity headers a route injects (all three unless listed).
fn route_inject(r: &RawRoute, p: &str, c: &mut Collector<'_>) -> InjectIdentity {
    let mut inject = InjectIdentity {
        subject: true,
        client_id: true,
        scopes: true,
        issuer: true,
    };
    if let Some(list) = &r.inject_identity {
        inject = InjectIdentity {
            subject: false,
            client_id: false,
            scopes: false,
            issuer: false,
        };
        for v in list {
            match v.as_str() {
                "subject" => inject.subject = true,
                "client_id" => inject.client_id = true,
                "scopes" => inject.scopes = true,
                "issuer" => inject.issuer = true,
                other => c.at(
                    &format!("{p}.inject_identity"),
                    format!("unknown identity `{other}`; use subject, client_id, scopes or issuer"),
                ),
            }
        }
    }
    inject
}

/// `websocket`: both limits positive and at most a day.
fn route_websocket(r: &RawRoute, p: &str, c: &mut Collector<'_>) -> Option<WebSocketPolicy> {
    let w = r.websocket.as_ref()?;
    let d = |v: Option<units::ConfigDuration>, def: Duration| v.map_or(def, |v| v.0);
    let policy = WebSocketPolicy {
        idle_timeout: d(w.idle_timeout, DEFAULT_WEBSOCKET_IDLE),
        max_duration: d(w.max_duration, DEFAULT_WEBSOCKET_MAX),
    };
    let day = Duration::from_secs(86400);
    for v in [policy.idle_timeout, policy.max_duration] {
        if v.is_zero() || v > day {
            c.at(
                &format!("{p}.websocket"),
                "idle_timeout and max_duration must be positive and at most 1d",
            );
            return None;
        }
    }
    Some(policy)
}

/// A route's scopes, and the settings that need a token.
fn route_auth(
    r: &RawRoute,
    p: &str,
    tokens: &TokenConfig,
    c: &mut Collector<'_>,
) -> (Option<Vec<usize>>, Vec<String>) {
    for s in &r.auth.scopes {
        if s.is_empty() || s.contains(' ') {
            c.at(
                &format!("{p}.auth.scopes"),
                format!("scope `{s}` is empty or contains a space"),
            );
        }
    }
    if !r.auth.required && !r.auth.scopes.is_empty() {
        c.at(
            &format!("{p}.auth"),
            "scopes are listed but auth.required is false; scopes can only be checked on a token",
        );
    }
    if !r.auth.required && r.forward_authorization {
        c.at(
            &format!("{p}.forward_authorization"),
            "forward_authorization needs auth.required: true",
        );
    }
    let needs_token = r.auth.issuers.is_some() || !r.auth.audiences.is_empty();
    if !r.auth.required && (needs_token || !r.inject_claims.is_empty()) {
        c.at(
            &format!("{p}.auth"),
            "auth.issuers, auth.audiences and inject_claims need auth.required: true",
        );
    }
    let issuers = r.auth.issuers.as_ref().map(|names| {
        names
            .iter()
            .filter_map(|n| {
                if *n == tokens.issuer {
                    return Some(0);
                }
                let i = tokens
                    .issuers
                    .iter()
                    .position(|t| t.name == *n || t.issuer == *n);
                if i.is_none() {
                    c.at(
                        &format!("{p}.auth.issuers"),
                        format!(
                            "`{n}` is neither tokens.issuer nor the name of one of tokens.issuers"
                        ),
                    );
                }
                i.map(|i| i + 1)
            })
            .collect()
    });
    (issuers, r.auth.audiences.clone())
}

/// `inject_claims`: header names valet may set, each from a claim.
fn route_inject_claims(r: &RawRoute, p: &str, c: &mut Collector<'_>) -> Vec<(HeaderName, String)> {
    let mut out = Vec::new();
    for (h, claim) in &r.inject_claims {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) if !crate::header_names::is_reserved(&n) && !claim.is_empty() => {
                out.push((n, claim.clone()))
            }
            _ => c.at(
                &format!("{p}.inject_claims"),
                format!("`{h}: {claim}` cannot be injected: the header name is invalid or one valet manages, or the claim is empty"),
            ),
        }
    }
    out
}

/// `forwarding.trusted_proxies`: the networks whose forwarding headers are believed.
fn compile_trusted_proxies(raw: &[String], c: &mut Collector<'_>) -> Vec<ipnet::IpNet> {
    let mut trusted_proxies = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        match crate::net::parse_cidr(t) {
            Ok(n) => trusted_proxies.push(n),
            Err(e) => c.at(&format!("forwarding.trusted_proxies[{i}]"), e),
        }
    }
    trusted_proxies
}

/// `listeners`: addresses, TLS (the certificate and key must load and
/// match) and each listener's request policy.
fn compile_listeners(
    raw: &[RawListener],
    base: &Path,
    c: &mut Collector<'_>,
) -> Vec<ListenerConfig> {
    if raw.is_empty() {
        c.at("listeners", "at least one listener is needed");
    }
    let mut listeners = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let p = format!("listeners[{i}]");
        let address = addr(c, &format!("{p}.address"), &l.address);
        let tls = match (
            &l.tls.cert_file,
            &l.tls.key_file,
            l.tls.self_signed_for_development,
        ) {
            (Some(cert), Some(key), false) => {
                let (cert, key) = (resolve(base, cert), resolve(base, key));
                if let Err(e) = crate::certs::load_certified_key(&cert, &key) {
                    c.at(&format!("{p}.tls"), e.to_string());
                }
                Some(TlsSource::Files { cert, key })
            }
            (None, None, true) => Some(TlsSource::SelfSignedForDevelopment),
            (_, _, true) => {
                c.at(
                    &format!("{p}.tls"),
                    "self_signed_for_development cannot be combined with cert_file/key_file",
                );
                None
            }
            _ => {
                c.at(
                    &format!("{p}.tls"),
                    "a listener needs both tls.cert_file and tls.key_file (or, for development only, self_signed_for_development: true)",
                );
                None
            }
        };
        if let (Some(address), Some(tls)) = (address, tls) {
            listeners.push(ListenerConfig {
                name: l.name.clone().unwrap_or_else(|| format!("listener{i}")),
                address,
                tls,
                requests: RequestPolicy {
                    paths: l.paths,
                    underscores: l.headers_with_underscores,
                },
            });
        }
    }
    listeners
}

fn compile_upstream(c: &mut Collector<'_>, path: &str, s: &str) -> Option<Upstream> {
    let uri: Uri = match s.parse() {
        Ok(u) => u,
        Err(_) => {
            c.at(path, format!("`{s}` is not a URL"));
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        c.at(
            path,
            format!("upstream `{s}` must be an absolute URL such as http://127.0.0.1:8080"),
        );
        return None;
    };
    if scheme != &Scheme::HTTP && scheme != &Scheme::HTTPS {
        c.at(
            path,
            format!("upstream scheme `{scheme}` is not supported; use http:// or https://"),
        );
        return None;
    }
    if uri.query().is_some() || authority.as_str().contains('@') {
        c.at(path, "an upstream URL cannot carry a query or user info");
        return None;
    }
    Some(Upstream {
        scheme: scheme.clone(),
        authority: authority.clone(),
        base_path: uri.path().trim_end_matches('/').to_string(),
        tls: None,
        protocol: if scheme == &Scheme::HTTPS {
            UpstreamProtocol::Negotiated
        } else {
            UpstreamProtocol::Http1
        },
    })
}

/// `upstream_protocol`: `h2c` for http:// upstreams, `http1` for either.
fn upstream_protocol(
    r: &RawRoute,
    up: &Upstream,
    p: &str,
    c: &mut Collector<'_>,
) -> Option<UpstreamProtocol> {
    match (r.upstream_protocol.as_deref(), up.scheme == Scheme::HTTPS) {
        (None, _) => Some(up.protocol),
        (Some("http1"), _) => Some(UpstreamProtocol::Http1),
        (Some("h2c"), false) => Some(UpstreamProtocol::H2c),
        (Some("h2c"), true) => {
            c.at(
                &format!("{p}.upstream_protocol"),
                "h2c is HTTP/2 over plain TCP; an https:// upstream negotiates HTTP/2 by ALPN",
            );
            None
        }
        (Some(other), _) => {
            c.at(
                &format!("{p}.upstream_protocol"),
                format!("unknown upstream_protocol `{other}`; use h2c or http1"),
            );
            None
        }
    }
}

/// `upstream_tls` of an https:// upstream (the defaults when absent):
/// `Some(None)` for http://, `None` when the settings are invalid.
fn upstream_tls(
    r: &RawRoute,
    up: &Upstream,
    p: &str,
    base: &Path,
    c: &mut Collector<'_>,
) -> Option<Option<UpstreamTls>> {
    let at = format!("{p}.upstream_tls");
    if up.scheme != Scheme::HTTPS {
        if r.upstream_tls.is_some() {
            c.at(&at, "upstream_tls is for https:// upstreams");
            return None;
        }
        return Some(None);
    }
    let none = RawUpstreamTls {
        ca_file: None,
        server_name: None,
        client_cert_file: None,
        client_key_file: None,
    };
    let t = r.upstream_tls.as_ref().unwrap_or(&none);
    let file = |f: &Option<String>| f.as_deref().map(|f| resolve(base, f));
    let mut id = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for f in [&t.ca_file, &t.client_cert_file, &t.client_key_file] {
        // The key file's bytes too: cleared once digested.
        let bytes = file(f).map(|f| zeroize::Zeroizing::new(std::fs::read(f).unwrap_or_default()));
        id.update(&(bytes.as_ref().map_or(0, |b| b.len() + 1) as u64).to_le_bytes());
        id.update(bytes.as_ref().map_or(&[][..], |b| b.as_slice()));
    }
    id.update(t.server_name.as_deref().unwrap_or("").as_bytes());
    let client_auth = match (file(&t.client_cert_file), file(&t.client_key_file)) {
        (Some(cert), Some(key)) => match crate::certs::load_certified_key(&cert, &key) {
            Ok(pair) => Some(pair),
            Err(e) => {
                c.at(&format!("{at}.client_cert_file"), e.to_string());
                return None;
            }
        },
        (None, None) => None,
        _ => {
            c.at(&at, "client_cert_file and client_key_file go together");
            return None;
        }
    };
    let config = match crate::certs::client_config_with(file(&t.ca_file).as_deref(), client_auth) {
        Ok(cfg) => cfg,
        Err(e) => {
            c.at(&format!("{at}.ca_file"), e);
            return None;
        }
    };
    let server_name = match &t.server_name {
        None => None,
        Some(n) => match rustls_pki_types::ServerName::try_from(n.clone()) {
            Ok(n) => Some(n),
            Err(_) => {
                c.at(
                    &format!("{at}.server_name"),
                    format!("`{n}` is not a DNS name or IP address"),
                );
                return None;
            }
        },
    };
    // `[::1]` is the IP ::1 to TLS.
    let host = crate::request_target::host_name(&up.authority)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if server_name.is_none() && rustls_pki_types::ServerName::try_from(host).is_err() {
        c.at(
            &at,
            "the upstream's host is not a valid TLS server name; set server_name",
        );
        return None;
    }
    let files = [&t.ca_file, &t.client_cert_file, &t.client_key_file]
        .into_iter()
        .filter_map(file)
        .collect();
    Some(Some(UpstreamTls {
        config,
        server_name,
        id: id.finish().as_ref().try_into().expect("32 bytes"),
        files,
    }))
}

fn compile_limits(l: &RawLimits, c: &mut Collector<'_>) -> Limits {
    let d = |v: Option<units::ConfigDuration>, def: Duration| v.map_or(def, |v| v.0);
    let limits = Limits {
        max_header_size: l.max_header_size.map_or(DEFAULT_MAX_HEADER_SIZE, |b| b.0),
        max_body_size: l.max_body_size.map_or(DEFAULT_MAX_BODY_SIZE, |b| b.0),
        header_read_timeout: d(l.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT),
        tls_handshake_timeout: d(l.tls_handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT),
        max_connections: l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        max_websockets: l.max_websockets.unwrap_or(DEFAULT_MAX_WEBSOCKETS),
        max_websockets_per_subject: l
            .max_websockets_per_subject
            .unwrap_or(DEFAULT_MAX_WEBSOCKETS_PER_SUBJECT),
        connect_timeout: d(l.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
        response_timeout: d(l.response_timeout, DEFAULT_RESPONSE_TIMEOUT),
        shutdown_grace: d(l.shutdown_grace, DEFAULT_SHUTDOWN_GRACE),
        drain_delay: d(l.drain_delay, Duration::ZERO),
        idle_timeout: d(l.idle_timeout, DEFAULT_IDLE_TIMEOUT),
        send_timeout: d(l.send_timeout, DEFAULT_SEND_TIMEOUT),
        min_request_body_rate: l
            .min_request_body_rate
            .map_or(DEFAULT_MIN_REQUEST_BODY_RATE, |b| b.0),
        request_body_grace: d(l.request_body_grace, DEFAULT_REQUEST_BODY_GRACE),
        request_body_timeout: d(l.request_body_timeout, DEFAULT_REQUEST_BODY_TIMEOUT),
        max_connections_per_source: l.max_connections_per_source,
        http2_max_concurrent_streams: l
            .http2_max_concurrent_streams
            .unwrap_or(DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS),
        http2_keepalive_interval: d(l.http2_keepalive_interval, DEFAULT_HTTP2_KEEPALIVE_INTERVAL),
        http2_keepalive_timeout: d(l.http2_keepalive_timeout, DEFAULT_HTTP2_KEEPALIVE_TIMEOUT),
    };
    if limits.drain_delay > Duration::from_secs(600) {
        c.at("limits.drain_delay", "drain_delay must be at most 10m");
    }
    if limits.max_connections_per_source == Some(0) {
        c.at(
            "limits.max_connections_per_source",
            "max_connections_per_source must be at least 1 (leave it out for no cap)",
        );
    }
    if limits.http2_max_concurrent_streams == 0 {
        c.at(
            "limits.http2_max_concurrent_streams",
            "http2_max_concurrent_streams must be at least 1",
        );
    }
    // hyper's HTTP/1 reader needs at least 8 KiB of buffer.
    if !(8192..=1 << 20).contains(&limits.max_header_size) {
        c.at(
            "limits.max_header_size",
            "max_header_size must be between 8KiB and 1MiB",
        );
    }
    if limits.max_websockets == 0 || limits.max_websockets_per_subject == 0 {
        c.at(
            "limits.max_websockets",
            "max_websockets and max_websockets_per_subject must be at least 1",
        );
    }
    if limits.max_websockets > MAX_WEBSOCKETS_CAP {
        // Each session holds two sockets; shutdown counts them in a u32.
        c.at(
            "limits.max_websockets",
            format!("max_websockets is at most {MAX_WEBSOCKETS_CAP}"),
        );
    }
    if limits.max_connections == 0 {
        c.at(
            "limits.max_connections",
            "max_connections must be at least 1",
        );
    }
    for (name, v) in [
        ("header_read_timeout", limits.header_read_timeout),
        ("tls_handshake_timeout", limits.tls_handshake_timeout),
        ("connect_timeout", limits.connect_timeout),
        ("response_timeout", limits.response_timeout),
        ("idle_timeout", limits.idle_timeout),
        ("send_timeout", limits.send_timeout),
        ("request_body_timeout", limits.request_body_timeout),
        ("http2_keepalive_interval", limits.http2_keepalive_interval),
        ("http2_keepalive_timeout", limits.http2_keepalive_timeout),
    ] {
        if v.is_zero() {
            c.at(
                &format!("limits.{name}"),
                format!("{name} must be greater than zero"),
            );
        }
    }
    limits
}

/// Which loaded key signs: the one named, or the only one with a private key.
fn signing_key(t: &RawTokens, loaded: &[Arc<LoadedKey>], c: &mut Collector<'_>) -> Option<usize> {
    match &t.signing_key {
        Some(id) => match loaded.iter().position(|k| &k.id == id) {
            Some(i) if loaded[i].encoding.is_some() => Some(i),
            Some(_) => {
                c.at(
                    "tokens.signing_key",
                    format!("key `{id}` has no private key, so it cannot sign"),
                );
                None
            }
            None => {
                if t.keys.iter().all(|k| &k.id != id) {
                    c.at("tokens.signing_key", format!("no key has id `{id}`"));
                }
                None
            }
        },
        None => {
            let private: Vec<usize> = (0..loaded.len())
                .filter(|&i| loaded[i].encoding.is_some())
                .collect();
            if private.len() > 1 {
                c.at(
                    "tokens.signing_key",
                    "several keys have a private key; say which one signs with tokens.signing_key",
                );
            }
            private.first().copied()
        }
    }
}

/// `store.path`, or `valet-state.db` beside the revocation file.
fn store_path(store: &RawStore, revocation: &RawRevocation, base: &Path) -> PathBuf {
    match &store.path {
        Some(p) => resolve(base, p),
        None => {
            let rev = resolve(base, &revocation.file);
            rev.parent()
                .unwrap_or(Path::new("."))
                .join(DEFAULT_STORE_FILE)
        }
    }
}

/// `store.stale_after` by default.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);

/// The environment variable that may hold the Redis ACL password.
pub const REDIS_PASSWORD_ENV: &str = "VALET_REDIS_PASSWORD";

/// `store.redis`, its password read.
fn store_redis(
    r: &super::raw::RawRedisStore,
    base: &Path,
    c: &mut Collector<'_>,
) -> Option<crate::store::redis::RedisSettings> {
    let ok_scheme = r.url.starts_with("redis://") || r.url.starts_with("rediss://");
    if !ok_scheme {
        c.at(
            "store.redis.url",
            "a Redis URL starts with redis:// (or rediss:// for TLS)",
        );
        return None;
    }
    if r.url.contains('#') {
        c.at(
            "store.redis.url",
            "a fragment (such as #insecure, which turns certificate checks off) is not accepted",
        );
        return None;
    }
    let rest = &r.url[r.url.find("://").map_or(0, |i| i + 3)..];
    if rest
        .split('/')
        .next()
        .is_some_and(|auth| auth.contains('@'))
    {
        c.at(
            "store.redis.url",
            "put no user or password in the URL: use store.redis.username and password_file",
        );
        return None;
    }
    let ca_pem = match &r.ca_file {
        Some(_) if !r.url.starts_with("rediss://") => {
            c.at(
                "store.redis.ca_file",
                "a CA file is for TLS: the URL must start with rediss://",
            );
            return None;
        }
        Some(f) => match std::fs::read(resolve(base, f)) {
            Ok(pem) => Some(pem),
            Err(e) => {
                c.at("store.redis.ca_file", format!("cannot read {f}: {e}"));
                return None;
            }
        },
        None => None,
    };
    let client_identity = match (&r.client_cert_file, &r.client_key_file) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            c.at(
                "store.redis.client_cert_file",
                "client_cert_file and client_key_file go together",
            );
            return None;
        }
        (Some(_), Some(_)) if !r.url.starts_with("rediss://") => {
            c.at(
                "store.redis.client_cert_file",
                "a client certificate is for TLS: the URL must start with rediss://",
            );
            return None;
        }
        (Some(cert), Some(key)) => {
            match redis_identity(&resolve(base, cert), &resolve(base, key)) {
                Ok(id) => Some(id),
                Err(e) => {
                    c.at("store.redis.client_cert_file", e);
                    return None;
                }
            }
        }
    };
    let password = match &r.password_file {
        Some(f) => match super::oauth1::read_secret(&resolve(base, f), "Redis password") {
            Ok(s) => Some(s),
            Err(e) => {
                c.at("store.redis.password_file", e);
                return None;
            }
        },
        None => std::env::var(REDIS_PASSWORD_ENV)
            .ok()
            .map(|p| crate::credentials::Secret::new(p.into_bytes())),
    };
    Some(crate::store::redis::RedisSettings {
        url: r.url.clone(),
        username: r.username.clone(),
        password,
        prefix: r.key_prefix.clone().unwrap_or_else(|| "valet:".into()),
        wait_replicas: r.wait_replicas,
        wait_timeout: r.wait_timeout.map_or(Duration::from_secs(1), |d| d.0),
        ca_pem,
        client_identity,
    })
}

/// A client certificate chain and its key (PEM), read and parsed: a file
/// that is not what it should be is a config error here, not a failed
/// handshake later.
fn redis_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<u8>, crate::credentials::Secret), String> {
    use rustls_pki_types::pem::PemObject;
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    let key_pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: no PEM private key in it ({e})", key.display()))?;
    Ok((cert_pem, crate::credentials::Secret::new(key_pem)))
}

/// The store's file name when `store.path` is not set.
pub const DEFAULT_STORE_FILE: &str = "valet-state.db";

/// The most WebSocket sessions a config may allow (two sockets each).
pub const MAX_WEBSOCKETS_CAP: usize = 1 << 20;

fn compile_tokens(t: &RawTokens, base: &Path, c: &mut Collector<'_>) -> TokenConfig {
    if t.issuer.trim().is_empty() {
        c.at("tokens.issuer", "issuer cannot be empty");
    }
    if t.audiences.is_empty() {
        c.at(
            "tokens.audiences",
            "at least one accepted audience is needed",
        );
    }
    if t.keys.is_empty() {
        c.at("tokens.keys", "at least one key is needed");
    }
    let loaded = load_keys(&t.keys, "tokens.keys", base, c);
    let signing_key = signing_key(t, &loaded, c);
    let cache_entries = t.cache_entries.unwrap_or(DEFAULT_TOKEN_CACHE_ENTRIES);
    let access_token_ttl = t.access_token_ttl.map_or(DEFAULT_ACCESS_TOKEN_TTL, |d| d.0);
    if access_token_ttl.is_zero() {
        c.at(
            "tokens.access_token_ttl",
            "access_token_ttl must be greater than zero",
        );
    }
    TokenConfig {
        issuer: t.issuer.clone(),
        audiences: t.audiences.clone(),
        clock_skew: t.clock_skew.map_or(DEFAULT_CLOCK_SKEW, |d| d.0),
        keys: loaded,
        signing_key,
        access_token_ttl,
        cache_entries,
        issuers: super::issuers::compile(&t.issuers, &t.issuer, &t.audiences, base, c),
    }
}
