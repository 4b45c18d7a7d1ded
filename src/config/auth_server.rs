//! Validation of the `authorization_server` section, the clients file and
//! the users file; each error is positioned in the file it comes from.

use super::error::{from_yaml, Collector, ConfigError};
use super::raw::{
    ClientsFile, RawAuthServer, RawClient, RawJwtBearer, RawSaml2Bearer, RawUser, UsersFile,
};
use crate::credentials::{
    AssertionIssuer, AssertionKey, Client, Grant, JwtBearer, Registry, Saml2Bearer, Secret,
    SecretHash, User,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default token lifetimes of a client (seconds: 3600 and 86400).
pub const DEFAULT_CLIENT_ACCESS_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_CLIENT_REFRESH_TTL: Duration = Duration::from_secs(86400);
/// Longest life of a refresh-token family from its login, however often it
/// is refreshed (30 days): then the user signs in again.
pub const DEFAULT_REFRESH_TOKEN_MAX_LIFETIME: Duration = Duration::from_secs(30 * 86400);
/// A just-rotated refresh token still works this long (concurrent refreshes).
pub const DEFAULT_REFRESH_GRACE: Duration = Duration::from_secs(5);
/// Attempts per (client id, source) and per username within the window
/// before further attempts are throttled (429); the allowance refills
/// steadily over the window.
pub const DEFAULT_MAX_FAILED_AUTH: u32 = 10;
pub const DEFAULT_FAILED_AUTH_WINDOW: Duration = Duration::from_secs(60);
/// The same, per source whatever client or user it tries.
pub const DEFAULT_MAX_FAILED_AUTH_PER_SOURCE: u32 = 30;
/// Password-hash verifications waiting for a worker, all sources together
/// and from one source, and how long one may wait.
pub const DEFAULT_HASH_QUEUE: usize = 128;
pub const DEFAULT_HASH_QUEUE_PER_SOURCE: usize = 16;
pub const DEFAULT_HASH_WAIT: Duration = Duration::from_secs(2);
/// Allowances: `burst` attempts, refilled over `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub burst: u32,
    pub window: Duration,
}

/// The allowances for each kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowances {
    pub per_client_source: Allowance,
    pub per_source: Allowance,
    pub per_username: Allowance,
    /// Authorities sharing one store: while their failures cannot be
    /// shared, each allows this fraction of every allowance.
    pub expected_replicas: u32,
}

/// Queue limits; read per attempt, so a reload changes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Attempts waiting, all sources together.
    pub capacity: usize,
    /// Attempts waiting from one source.
    pub per_source: usize,
    /// How long an attempt may wait for a worker.
    pub wait: Duration,
}

/// Bounds on the durations above, so no arithmetic on them can overflow.
const MAX_SETTING_DURATION: Duration = Duration::from_secs(86400);
const MAX_HASH_WAIT: Duration = Duration::from_secs(60);
/// How long a verified argon2id client secret is remembered.
pub const DEFAULT_VERIFIED_SECRET_TTL: Duration = Duration::from_secs(300);
/// Longest accepted remaining lifetime of a JWT bearer assertion.
pub const DEFAULT_MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// Environment variable holding the pepper when no file is configured.
pub const PEPPER_ENV: &str = "VALET_SECRET_PEPPER";

/// Reserved claims a user's `claims` may not set.
const RESERVED_CLAIMS: [&str; 10] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "client_id",
    "scope",
    "fam",
];

#[derive(Debug, Clone)]
pub struct EndpointPaths {
    pub token: String,
    pub revocation: String,
    pub introspection: String,
    pub metadata: String,
    pub jwks: String,
}

#[derive(Debug)]
pub struct AuthServerConfig {
    pub registry: Registry,
    pub clients_file: Option<PathBuf>,
    pub users_file: Option<PathBuf>,
    pub paths: EndpointPaths,
    pub refresh_grace: Duration,
    /// Throttling of authentication attempts.
    pub allowances: Allowances,
    /// The password-hash queue.
    pub hash_queue: QueueLimits,
    /// Hashing threads (read at start-up only; 0: one per core).
    pub hash_workers: usize,
    pub verified_secret_ttl: Duration,
    /// Notes that do not stop valet (e.g. password grant enabled).
    pub warnings: Vec<ConfigError>,
}

pub(super) fn compile(
    raw: &RawAuthServer,
    issuer: &str,
    default_audience: &str,
    resolve: impl Fn(&str) -> PathBuf,
    managed: Option<&[RawClient]>,
    c: &mut Collector<'_>,
    extra: &mut Vec<ConfigError>,
) -> AuthServerConfig {
    let mut warnings = Vec::new();
    let paths = endpoint_paths(raw, issuer, c);
    let pepper = pepper(raw, &resolve, c);
    let names = (issuer, default_audience);
    let sources = ClientSources {
        managed,
        resolve: &resolve,
    };
    let (clients, clients_file) = clients(raw, names, sources, c, extra, &mut warnings);
    let (users, users_file) = users(raw, &resolve, c, extra);
    let subject_prefixes = subject_namespaces(&clients, &users, c);
    check_identities(&clients, &users, pepper.is_some(), c);
    let dummy_client = if clients.values().any(|c| c.secret.is_argon2()) {
        Some(dummy_argon2())
    } else {
        Some(SecretHash::HmacSha256([0u8; 32]))
    };
    let dummy_user = (!users.is_empty()).then(dummy_argon2);
    let (allowances, hash_queue, verified_secret_ttl) = limits(raw, c);
    AuthServerConfig {
        registry: Registry {
            clients,
            users,
            pepper,
            subject_prefixes,
            dummy_client,
            dummy_user,
        },
        clients_file,
        users_file,
        paths,
        refresh_grace: raw.refresh_grace.map_or(DEFAULT_REFRESH_GRACE, |v| v.0),
        allowances,
        hash_queue,
        hash_workers: raw.password_hash_workers.unwrap_or(0),
        verified_secret_ttl,
        warnings,
    }
}

/// The endpoints' paths; metadata where RFC 8414 §3 puts it.
fn endpoint_paths(raw: &RawAuthServer, issuer: &str, c: &mut Collector<'_>) -> EndpointPaths {
    let path_of = |c: &mut Collector<'_>, key: &str, v: &Option<String>, def: &str| -> String {
        let p = v.clone().unwrap_or_else(|| def.to_string());
        if !p.starts_with('/') {
            c.at(
                &format!("authorization_server.{key}"),
                format!("`{p}` must start with `/`"),
            );
        }
        p
    };
    // RFC 8414 §3: the well-known segment goes between the host and the issuer's path.
    let issuer_path = issuer
        .split_once("://")
        .and_then(|(_, rest)| {
            rest.find('/')
                .map(|i| rest[i..].trim_end_matches('/').to_string())
        })
        .unwrap_or_default();
    if !issuer.starts_with("https://") && !issuer.starts_with("http://localhost") {
        c.at(
            "tokens.issuer",
            "the issuer of an authorization server must be an https:// URL (RFC 8414 §2)",
        );
    }
    EndpointPaths {
        token: path_of(c, "token_path", &raw.token_path, "/oauth2/token"),
        revocation: path_of(c, "revocation_path", &raw.revocation_path, "/oauth2/revoke"),
        introspection: path_of(
            c,
            "introspection_path",
            &raw.introspection_path,
            "/oauth2/introspect",
        ),
        metadata: format!("/.well-known/oauth-authorization-server{issuer_path}"),
        jwks: "/.well-known/jwks.json".to_string(),
    }
}

/// The pepper for valet-generated secrets: its file, or the environment.
fn pepper(
    raw: &RawAuthServer,
    resolve: &dyn Fn(&str) -> PathBuf,
    c: &mut Collector<'_>,
) -> Option<Secret> {
    match &raw.secret_pepper_file {
        Some(f) => {
            let path = resolve(f);
            match read_or_make_pepper(&path, raw.generate_pepper_if_missing, &mut c.new_files) {
                Ok(p) => Some(p),
                Err(e) => {
                    c.at("authorization_server.secret_pepper_file", e);
                    None
                }
            }
        }
        None => std::env::var(PEPPER_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.into_bytes())),
    }
}

/// A YAML side file (clients or users), parsed; `Ok(None)` when it is
/// missing and that is allowed.
fn side_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    missing_ok: bool,
    extra: &mut Vec<ConfigError>,
) -> Option<(T, String)> {
    match std::fs::read_to_string(path) {
        Ok(src) => match serde_yaml::from_str::<T>(&src) {
            Ok(file) => Some((file, src)),
            Err(e) => {
                extra.push(from_yaml(path, &e));
                None
            }
        },
        Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            extra.push(ConfigError {
                file: path.to_path_buf(),
                position: None,
                message: format!("cannot read the {what} file: {e}"),
            });
            None
        }
    }
}

type Clients = HashMap<String, Arc<Client>>;
type Users = HashMap<String, Arc<User>>;

/// Clients from the config, then from the clients file (whose relative
/// paths are its own folder's).
///
/// Where managed clients come from: the state store's records when the
/// caller has it open, else the clients file of earlier versions.
struct ClientSources<'a> {
    managed: Option<&'a [RawClient]>,
    resolve: &'a dyn Fn(&str) -> PathBuf,
}

fn clients(
    raw: &RawAuthServer,
    names: (&str, &str),
    sources: ClientSources<'_>,
    c: &mut Collector<'_>,
    extra: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> (Clients, Option<PathBuf>) {
    let resolve = sources.resolve;
    let mut clients = HashMap::new();
    for (i, rc) in raw.clients.iter().enumerate() {
        let p = format!("authorization_server.clients[{i}]");
        compile_client(
            rc,
            false,
            true,
            names,
            resolve,
            &p,
            c,
            &mut clients,
            warnings,
        );
    }
    let clients_file = raw.clients_file.as_deref().map(resolve);
    if let Some(managed) = sources.managed {
        // From the state store (the clients file was imported into it).
        let src = String::new();
        let mut sc = Collector::new(Path::new("the state store"), &src);
        for rc in managed {
            let p = format!("clients[{}]", rc.client_id);
            compile_client(
                rc,
                true,
                false,
                names,
                resolve,
                &p,
                &mut sc,
                &mut clients,
                warnings,
            );
        }
        extra.append(&mut sc.errors);
        return (clients, clients_file);
    }
    // A missing clients file is an empty registry.
    let file = clients_file.as_deref().and_then(|path| {
        Some((
            path,
            side_file::<ClientsFile>(path, "clients", true, extra)?,
        ))
    });
    if let Some((path, (file, src))) = file {
        let mut fc = Collector::new(path, &src);
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let resolve_here = |f: &str| dir.join(f);
        for (i, rc) in file.clients.iter().enumerate() {
            let p = format!("clients[{i}]");
            compile_client(
                rc,
                true,
                false,
                names,
                &resolve_here,
                &p,
                &mut fc,
                &mut clients,
                warnings,
            );
        }
        extra.append(&mut fc.errors);
    }
    (clients, clients_file)
}

/// Password-grant users from the config, then from the users file.
fn users(
    raw: &RawAuthServer,
    resolve: &dyn Fn(&str) -> PathBuf,
    c: &mut Collector<'_>,
    extra: &mut Vec<ConfigError>,
) -> (Users, Option<PathBuf>) {
    let mut users = HashMap::new();
    for (i, u) in raw.users.iter().enumerate() {
        let p = format!("authorization_server.users[{i}]");
        compile_user(u, &p, c, &mut users);
    }
    let users_file = raw.users_file.as_deref().map(resolve);
    let file = users_file
        .as_deref()
        .and_then(|path| Some((path, side_file::<UsersFile>(path, "users", false, extra)?)));
    if let Some((path, (file, src))) = file {
        let mut fc = Collector::new(path, &src);
        for (i, u) in file.users.iter().enumerate() {
            compile_user(u, &format!("users[{i}]"), &mut fc, &mut users);
        }
        extra.append(&mut fc.errors);
    }
    (users, users_file)
}

/// Subject namespaces: an issuer's prefix is its own. No prefix may start
/// another (their namespaces would overlap), and no login or operator may
/// live inside one. Returns the prefixes, sorted.
fn subject_namespaces(clients: &Clients, users: &Users, c: &mut Collector<'_>) -> Vec<String> {
    let mut subject_prefixes: Vec<String> = clients
        .values()
        .flat_map(|cl| {
            let jwt = cl
                .jwt_bearer
                .iter()
                .flat_map(|j| j.issuers.iter().map(|i| &i.subject_prefix));
            jwt.chain(cl.saml2_bearer.iter().map(|s| &s.subject_prefix))
        })
        .filter(|p| !p.is_empty())
        .cloned()
        .collect();
    subject_prefixes.sort();
    subject_prefixes.dedup();
    for p in &subject_prefixes {
        if let Some(q) = subject_prefixes
            .iter()
            .find(|q| *q != p && q.starts_with(p.as_str()))
        {
            c.at(
                "authorization_server",
                format!("subject prefixes `{p}` and `{q}` overlap; give each issuer a namespace of its own (e.g. end them with `:`)"),
            );
        }
        let inside = users
            .keys()
            .map(|u| (u.as_str(), "user"))
            .chain(
                clients
                    .values()
                    .filter_map(|cl| Some((cl.operator.as_deref()?, "operator"))),
            )
            .find(|(name, _)| name.starts_with(p.as_str()));
        if let Some((name, what)) = inside {
            c.at(
                "authorization_server",
                format!(
                    "{what} `{name}` is inside the subject namespace `{p}` of an assertion issuer"
                ),
            );
        }
    }
    subject_prefixes
}

/// A service identity is never a person's login, and HMAC secret hashes
/// need a pepper.
fn check_identities(clients: &Clients, users: &Users, has_pepper: bool, c: &mut Collector<'_>) {
    for cl in clients.values() {
        if let Some(op) = &cl.operator {
            if users.contains_key(op) {
                c.at(
                    "authorization_server",
                    format!("client `{}`: operator `{op}` is also a user's login; an operator must be a service identity", cl.id),
                );
            }
        }
        if matches!(cl.secret, SecretHash::HmacSha256(_)) && !has_pepper {
            c.at(
                "authorization_server",
                format!("client `{}` has an hmac-sha256 secret hash, which needs a pepper: set secret_pepper_file or {PEPPER_ENV}", cl.id),
            );
        }
    }
}

/// The throttle's allowances, the hash queue's limits, and how long a
/// verified secret is remembered.
fn limits(raw: &RawAuthServer, c: &mut Collector<'_>) -> (Allowances, QueueLimits, Duration) {
    let d = |v: Option<super::units::ConfigDuration>, def: Duration| v.map_or(def, |v| v.0);
    let window = d(raw.failed_auth_window, DEFAULT_FAILED_AUTH_WINDOW);
    let max = raw.max_failed_auth.unwrap_or(DEFAULT_MAX_FAILED_AUTH);
    let per_source = raw
        .max_failed_auth_per_source
        .unwrap_or(DEFAULT_MAX_FAILED_AUTH_PER_SOURCE);
    if max == 0 || per_source == 0 || window.is_zero() || window > MAX_SETTING_DURATION {
        c.at(
            "authorization_server.max_failed_auth",
            "max_failed_auth, max_failed_auth_per_source and failed_auth_window must be positive (the window at most 1d)",
        );
    }
    let a = |burst| Allowance { burst, window };
    let allowances = Allowances {
        per_client_source: a(max),
        per_source: a(per_source),
        per_username: a(max),
        expected_replicas: raw.expected_replicas.unwrap_or(1),
    };
    if !(1..=1000).contains(&allowances.expected_replicas) {
        c.at(
            "authorization_server.expected_replicas",
            "expected_replicas must be between 1 and 1000",
        );
    }
    let q = QueueLimits {
        capacity: raw.password_hash_queue.unwrap_or(DEFAULT_HASH_QUEUE),
        per_source: raw
            .password_hash_queue_per_source
            .unwrap_or(DEFAULT_HASH_QUEUE_PER_SOURCE),
        wait: d(raw.password_hash_wait, DEFAULT_HASH_WAIT),
    };
    if q.capacity == 0 || q.per_source == 0 || q.wait.is_zero() || q.wait > MAX_HASH_WAIT {
        c.at(
            "authorization_server.password_hash_queue",
            "password_hash_queue, password_hash_queue_per_source and password_hash_wait must be positive (the wait at most 1m)",
        );
    }
    let ttl = d(raw.verified_secret_ttl, DEFAULT_VERIFIED_SECRET_TTL);
    if ttl > MAX_SETTING_DURATION {
        c.at(
            "authorization_server.verified_secret_ttl",
            "verified_secret_ttl must be at most 1d",
        );
    }
    (allowances, q, ttl)
}

/// An argon2id hash of nothing in particular, made once per process (argon2
/// is slow on purpose; config reloads should not pay for it every time).
fn dummy_argon2() -> SecretHash {
    static DUMMY: std::sync::OnceLock<SecretHash> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            SecretHash::parse(&crate::credentials::argon2id_hash("dummy"))
                .expect("a fresh argon2id hash parses")
        })
        .clone()
}

fn read_or_make_pepper(
    path: &Path,
    generate: bool,
    new_files: &mut Vec<crate::durable::NewFile>,
) -> Result<Secret, String> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 16 => Ok(Secret::new(s.trim().as_bytes().to_vec())),
        Ok(_) => Err(format!(
            "the pepper in {} is shorter than 16 characters",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
            let pepper = crate::credentials::generate_secret();
            new_files.push(crate::durable::NewFile::new(
                path,
                "secret pepper",
                format!("{pepper}\n"),
            ));
            Ok(Secret::new(pepper.into_bytes()))
        }
        Err(e) => Err(format!(
            "cannot read the pepper file {}: {e}",
            path.display()
        )),
    }
}

/// The client id alphabet: RFC 3986's unreserved characters, 1 to 128 of
/// them. An id then travels unencoded and unchanged in URL paths (the admin
/// API's per-client endpoints), forms, Basic credentials (no `:`), headers
/// (`x-valet-client-id`) and logs, and looks like nothing else: no spaces,
/// no look-alike, invisible or bidi characters.
pub const CLIENT_ID_RULE: &str =
    "a client_id is 1 to 128 characters from A-Z a-z 0-9 . _ ~ - (it travels unencoded in URLs, forms, headers and logs)";

pub fn valid_client_id(id: &str) -> bool {
    // (`.` and `..` would be rewritten in URL paths.)
    (1..=128).contains(&id.len())
        && !id.bytes().all(|b| b == b'.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

#[allow(clippy::too_many_arguments)]
fn compile_client(
    rc: &RawClient,
    managed: bool,
    strict_id: bool,
    (issuer, default_audience): (&str, &str),
    resolve: &dyn Fn(&str) -> PathBuf,
    p: &str,
    c: &mut Collector<'_>,
    clients: &mut HashMap<String, Arc<Client>>,
    warnings: &mut Vec<ConfigError>,
) {
    // Written by hand, or new: the alphabet is the rule. Already in the
    // store from an earlier version: kept working, and `valet check` says
    // so (ids with `:` or control characters never worked).
    if rc.client_id.is_empty()
        || rc.client_id.contains(':')
        || rc.client_id.chars().any(char::is_control)
        || (strict_id && !valid_client_id(&rc.client_id))
    {
        c.at(&format!("{p}.client_id"), CLIENT_ID_RULE);
    } else if !valid_client_id(&rc.client_id) {
        warnings.push(ConfigError {
            file: c.file().to_path_buf(),
            position: c.position(&format!("{p}.client_id")),
            message: format!(
                "client {:?} (in the state store) is outside the client id alphabet: {CLIENT_ID_RULE}; it keeps working, but move it to a valid id",
                rc.client_id
            ),
        });
    }
    if clients.contains_key(&rc.client_id) {
        c.at(
            &format!("{p}.client_id"),
            format!("client_id `{}` is defined twice", rc.client_id),
        );
    } else if let Some(other) = clients
        .keys()
        .find(|k| k.eq_ignore_ascii_case(&rc.client_id))
    {
        let m = format!(
            "client_id `{}` differs from `{other}` only by case: ids must be told apart by more",
            rc.client_id
        );
        if strict_id {
            c.at(&format!("{p}.client_id"), m);
        } else {
            // Stored by an earlier version: kept, said.
            warnings.push(ConfigError {
                file: c.file().to_path_buf(),
                position: c.position(&format!("{p}.client_id")),
                message: m,
            });
        }
    }
    let secret = SecretHash::parse(&rc.secret_hash)
        .map_err(|e| c.at(&format!("{p}.secret_hash"), e))
        .ok();
    let grants = client_grants(rc, p, c, warnings);
    let default_scopes = client_scopes(rc, p, c);
    let jwt_bearer = grant_section(
        rc.jwt_bearer.as_ref(),
        grants.contains(&Grant::JwtBearer),
        (&format!("{p}.jwt_bearer"), crate::credentials::JWT_BEARER),
        "the JWT bearer grant needs jwt_bearer.issuers",
        c,
        |j, at, c| compile_jwt_bearer(j, resolve, at, c),
    );
    let saml2_bearer = grant_section(
        rc.saml2_bearer.as_ref(),
        grants.contains(&Grant::Saml2Bearer),
        (
            &format!("{p}.saml2_bearer"),
            crate::credentials::SAML2_BEARER,
        ),
        "the SAML bearer grant needs saml2_bearer (the IdP's entity id and certificate)",
        c,
        |sb, at, c| compile_saml(sb, issuer, resolve, at, c),
    );
    let Some(secret) = secret else { return };
    let ttl = |v: Option<super::units::ConfigDuration>, def: Duration| v.map_or(def, |d| d.0);
    clients.insert(
        rc.client_id.clone(),
        Arc::new(Client {
            id: rc.client_id.clone(),
            secret,
            grants,
            operator: rc.operator.clone(),
            scopes: rc.scopes.clone(),
            default_scopes,
            audience: rc
                .audience
                .clone()
                .unwrap_or_else(|| default_audience.to_string()),
            access_ttl: ttl(rc.access_token_ttl, DEFAULT_CLIENT_ACCESS_TTL),
            refresh_ttl: ttl(rc.refresh_token_ttl, DEFAULT_CLIENT_REFRESH_TTL),
            family_max_lifetime: ttl(
                rc.refresh_token_max_lifetime,
                DEFAULT_REFRESH_TOKEN_MAX_LIFETIME,
            ),
            use_refresh_token: rc.use_refresh_token,
            introspect_any: rc.introspect_any,
            jwt_bearer,
            saml2_bearer,
            managed,
        }),
    );
}

/// A client's grants, and the settings they require or rule out.
fn client_grants(
    rc: &RawClient,
    p: &str,
    c: &mut Collector<'_>,
    warnings: &mut Vec<ConfigError>,
) -> Vec<Grant> {
    let mut grants = Vec::new();
    for g in &rc.grant_types {
        match Grant::parse(g) {
            Some(Grant::RefreshToken) => c.at(
                &format!("{p}.grant_types"),
                "refresh_token is not a grant to list; set use_refresh_token: true",
            ),
            Some(g) => grants.push(g),
            None => c.at(
                &format!("{p}.grant_types"),
                format!(
                    "unknown or unsupported grant type `{g}`; use client_credentials or password"
                ),
            ),
        }
    }
    if grants.is_empty() {
        c.at(
            &format!("{p}.grant_types"),
            "a client needs at least one grant type",
        );
    }
    if grants.contains(&Grant::ClientCredentials)
        && rc.operator.as_deref().is_none_or(str::is_empty)
    {
        c.at(
            &format!("{p}.operator"),
            "client_credentials needs an operator: the service identity its tokens are issued to",
        );
    }
    if grants.contains(&Grant::Password) {
        warnings.push(ConfigError {
            file: c.file().to_path_buf(),
            position: c.position(&format!("{p}.grant_types")),
            message: format!(
                "client `{}` enables the password grant, which RFC 9700 §2.4 says must not be used; keep it for legacy systems only",
                rc.client_id
            ),
        });
    }
    if rc.use_refresh_token && !grants.contains(&Grant::Password) {
        c.at(
            &format!("{p}.use_refresh_token"),
            "refresh tokens are issued by the password grant only (client credentials never gets one)",
        );
    }
    grants
}

/// A client's scopes checked; returns its default scopes.
fn client_scopes(rc: &RawClient, p: &str, c: &mut Collector<'_>) -> Vec<String> {
    let default_scopes = rc
        .default_scopes
        .clone()
        .unwrap_or_else(|| rc.scopes.clone());
    for s in &default_scopes {
        if !rc.scopes.contains(s) {
            c.at(
                &format!("{p}.default_scopes"),
                format!("default scope `{s}` is not among the client's scopes"),
            );
        }
    }
    for s in &rc.scopes {
        if s.is_empty() || s.contains(' ') || s.contains('"') || s.contains('\\') {
            c.at(
                &format!("{p}.scopes"),
                format!("scope `{s}` is empty or contains a space, quote or backslash"),
            );
        }
    }
    default_scopes
}

/// A grant's own section (`jwt_bearer`, `saml2_bearer`): compiled when the
/// grant is listed, required by it, refused without it. `at` is the
/// section's key and the grant's name.
fn grant_section<R, T>(
    raw: Option<&R>,
    listed: bool,
    (at, grant): (&str, &str),
    needed: &str,
    c: &mut Collector<'_>,
    compile: impl FnOnce(&R, &str, &mut Collector<'_>) -> Option<T>,
) -> Option<T> {
    match (raw, listed) {
        (Some(r), true) => compile(r, at, c),
        (None, true) => {
            c.at(at, needed);
            None
        }
        (Some(_), false) => {
            let key = at.rsplit('.').next().unwrap_or(at);
            c.at(at, format!("{key} is set but grant_types lacks {grant}"));
            None
        }
        (None, false) => None,
    }
}

use crate::tokens::keys::parse_algorithm as parse_alg;

fn compile_jwt_bearer(
    j: &RawJwtBearer,
    resolve: &dyn Fn(&str) -> PathBuf,
    p: &str,
    c: &mut Collector<'_>,
) -> Option<JwtBearer> {
    if j.issuers.is_empty() {
        c.at(
            &format!("{p}.issuers"),
            "at least one trusted issuer is needed",
        );
    }
    for out in j.claims.keys() {
        if RESERVED_CLAIMS.contains(&out.as_str()) {
            c.at(
                &format!("{p}.claims"),
                format!("claim `{out}` is set by valet and cannot be mapped"),
            );
        }
    }
    let mut issuers = Vec::new();
    for (i, ri) in j.issuers.iter().enumerate() {
        let ip = format!("{p}.issuers[{i}]");
        let keys = match (&ri.jwks_file, &ri.public_key_file) {
            (Some(f), None) => load_jwks(&resolve(f)),
            (None, Some(f)) => match ri.algorithm.as_deref().map(parse_alg) {
                Some(Some(alg)) => load_pem_key(&resolve(f), alg).map(|k| vec![k]),
                Some(None) => Err("algorithm must be one of EdDSA, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512 (no HMAC)".into()),
                None => Err("a public_key_file needs its algorithm".into()),
            },
            _ => Err("give either jwks_file or public_key_file (with algorithm)".into()),
        };
        match keys {
            Ok(keys) if !keys.is_empty() => issuers.push(AssertionIssuer {
                issuer: ri.issuer.clone(),
                keys,
                subject_prefix: ri.subject_prefix.clone().unwrap_or_default(),
            }),
            Ok(_) => c.at(&ip, "the JWKS holds no usable signing key"),
            Err(e) => c.at(&ip, e),
        }
    }
    Some(JwtBearer {
        issuers,
        max_lifetime: j
            .max_assertion_lifetime
            .map_or(DEFAULT_MAX_ASSERTION_LIFETIME, |d| d.0),
        subject_claim: j.subject_claim.clone().unwrap_or_else(|| "sub".into()),
        claims: j
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        scopes_claim: j.scopes_claim.clone(),
    })
}

fn compile_saml(
    sb: &RawSaml2Bearer,
    default_entity_id: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
    p: &str,
    c: &mut Collector<'_>,
) -> Option<Saml2Bearer> {
    use rustls_pki_types::pem::PemObject;
    let path = resolve(&sb.idp_certificate_file);
    let der = match rustls_pki_types::CertificateDer::from_pem_file(&path) {
        Ok(d) => d,
        Err(e) => {
            c.at(
                &format!("{p}.idp_certificate_file"),
                format!(
                    "cannot read a PEM certificate from {}: {e:?}",
                    path.display()
                ),
            );
            return None;
        }
    };
    if let Err(e) = webpki::EndEntityCert::try_from(&der) {
        c.at(
            &format!("{p}.idp_certificate_file"),
            format!(
                "{} is not a usable X.509 certificate: {e:?}",
                path.display()
            ),
        );
        return None;
    }
    for out in sb.claims.keys() {
        if RESERVED_CLAIMS.contains(&out.as_str()) {
            c.at(
                &format!("{p}.claims"),
                format!("claim `{out}` is set by valet and cannot be mapped"),
            );
        }
    }
    Some(Saml2Bearer {
        idp_entity_id: sb.idp_entity_id.clone(),
        idp_cert_der: der.as_ref().to_vec(),
        entity_id: sb
            .entity_id
            .clone()
            .unwrap_or_else(|| default_entity_id.to_string()),
        subject_attribute: sb.subject_attribute.clone(),
        claims: sb
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        scopes_attribute: sb.scopes_attribute.clone(),
        subject_prefix: sb.subject_prefix.clone().unwrap_or_default(),
    })
}

fn load_pem_key(path: &Path, alg: jsonwebtoken::Algorithm) -> Result<AssertionKey, String> {
    use jsonwebtoken::{Algorithm::*, DecodingKey};
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = match alg {
        EdDSA => DecodingKey::from_ed_pem(&pem),
        ES256 | ES384 => DecodingKey::from_ec_pem(&pem),
        _ => DecodingKey::from_rsa_pem(&pem),
    }
    .map_err(|e| format!("{} is not a {alg:?} public key: {e}", path.display()))?;
    Ok(AssertionKey {
        kid: None,
        algorithm: alg,
        key,
    })
}

fn load_jwks(path: &Path) -> Result<Vec<AssertionKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a JWKS: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        // The key's own `alg` pins the algorithm; keys without one are refused
        // rather than guessed at.
        let Some(alg) = jwk
            .common
            .key_algorithm
            .and_then(|a| parse_alg(&a.to_string()))
        else {
            return Err(format!(
                "every key in {} needs an asymmetric `alg`",
                path.display()
            ));
        };
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        keys.push(AssertionKey {
            kid: jwk.common.key_id.clone(),
            algorithm: alg,
            key,
        });
    }
    Ok(keys)
}

fn compile_user(
    u: &RawUser,
    p: &str,
    c: &mut Collector<'_>,
    users: &mut HashMap<String, Arc<User>>,
) {
    if users.contains_key(&u.username) {
        c.at(
            &format!("{p}.username"),
            format!("user `{}` is defined twice", u.username),
        );
    }
    for k in u.claims.keys() {
        if RESERVED_CLAIMS.contains(&k.as_str()) {
            c.at(
                &format!("{p}.claims"),
                format!("claim `{k}` is set by valet and cannot be configured"),
            );
        }
    }
    match SecretHash::parse(&u.password_hash) {
        Ok(h) if h.is_argon2() => {
            users.insert(
                u.username.clone(),
                Arc::new(User {
                    username: u.username.clone(),
                    password: h,
                    scopes: u.scopes.clone(),
                    claims: u.claims.clone(),
                }),
            );
        }
        Ok(_) => c.at(
            &format!("{p}.password_hash"),
            "user passwords must be argon2id hashes (valet hash-password)",
        ),
        Err(e) => c.at(&format!("{p}.password_hash"), e),
    }
}

/// Validates clients about to be added to the clients file, against the
/// clients already registered; `Err` lists the problems in sentences.
/// `replacing`: the id of a client `file` replaces (an update), left out
/// of the registry it is checked against. Returns `file`'s clients compiled.
pub fn check_clients_file(
    config: &super::Config,
    file: &ClientsFile,
    replacing: Option<&str>,
) -> Result<Vec<Arc<Client>>, String> {
    let a = config
        .authorization_server
        .as_ref()
        .ok_or("no authorization_server")?;
    let src = serde_yaml::to_string(file).map_err(|e| e.to_string())?;
    let mut c = Collector::new(Path::new("new client"), &src);
    let mut clients: HashMap<String, Arc<Client>> = a.registry.clients.clone();
    if let Some(id) = replacing {
        clients.remove(id);
    }
    let mut warnings = Vec::new();
    let aud = config.tokens.audiences.first().map_or("", String::as_str);
    let dir = a
        .clients_file
        .as_ref()
        .and_then(|f| f.parent())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let resolve = |f: &str| dir.join(f);
    for (i, rc) in file.clients.iter().enumerate() {
        // The config load's own rule (see `compile`): refused here rather
        // than written into a file that would fail the next reload.
        if let Some(op) = rc
            .operator
            .as_deref()
            .filter(|op| a.registry.users.contains_key(*op))
        {
            c.at(
                &format!("clients[{i}].operator"),
                format!("operator `{op}` is also a user's login; an operator must be a service identity"),
            );
        }
        if let Some((op, p)) = rc.operator.as_deref().and_then(|op| {
            let p = a
                .registry
                .subject_prefixes
                .iter()
                .find(|p| op.starts_with(p.as_str()))?;
            Some((op, p))
        }) {
            c.at(
                &format!("clients[{i}].operator"),
                format!(
                    "operator `{op}` is inside the subject namespace `{p}` of an assertion issuer"
                ),
            );
        }
        compile_client(
            rc,
            true,
            true,
            (config.tokens.issuer.as_str(), aud),
            &resolve,
            &format!("clients[{i}]"),
            &mut c,
            &mut clients,
            &mut warnings,
        );
    }
    if c.errors.is_empty() {
        Ok(file
            .clients
            .iter()
            .filter_map(|rc| clients.get(&rc.client_id).cloned())
            .collect())
    } else {
        Err(c
            .errors
            .iter()
            .map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join("; "))
    }
}
