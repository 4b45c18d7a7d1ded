//! The YAML schema exactly as written by operators: serde structs with
//! `deny_unknown_fields` (a typo must never silently disable a check).
//! Nothing here is validated beyond types; see `compile.rs` for that.

use super::units::{ByteSize, ConfigDuration};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// What this process does: authority, validator or both.
    #[serde(default)]
    pub(super) role: Role,
    pub(super) listeners: Vec<RawListener>,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    pub(super) tokens: RawTokens,
    pub(super) revocation: RawRevocation,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) forwarding: RawForwarding,
    #[serde(default)]
    pub(super) identity_headers: RawIdentityHeaders,
    #[serde(default)]
    pub(super) logging: RawLogging,
    #[serde(default)]
    pub(super) dev: RawDev,
    pub(super) authorization_server: Option<RawAuthServer>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) oauth1: Option<RawOAuth1>,
    /// CORS for valet's own token, revocation and OAuth 1.0 endpoints.
    pub(super) cors: Option<super::cors::RawCors>,
}

/// valet as an OAuth 1.0a client of legacy upstreams.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth1 {
    pub(super) token_store: RawTokenStore,
    /// Where the flow endpoints live: `{path_prefix}/{provider}/authorize` etc.
    pub(super) path_prefix: Option<String>,
    /// How long a started flow waits for the provider's callback. Default 10m.
    pub(super) pending_ttl: Option<ConfigDuration>,
    pub(super) providers: Vec<RawProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokenStore {
    /// The token file of earlier versions (tokens now live in the state
    /// store): imported once if it exists, never written.
    pub(super) file: Option<String>,
    /// 32 bytes, base64; or VALET_OAUTH1_STORE_KEY.
    pub(super) key_file: Option<String>,
    #[serde(default)]
    pub(super) generate_key_if_missing: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) name: String,
    pub(super) request_token_url: String,
    pub(super) authorize_url: String,
    pub(super) access_token_url: String,
    pub(super) consumer_key: String,
    pub(super) consumer_secret_file: Option<String>,
    /// PEM RSA private key, for RSA-SHA1 (instead of a consumer secret).
    pub(super) private_key_file: Option<String>,
    pub(super) signature_method: Option<String>,
    pub(super) realm: Option<String>,
    pub(super) callback_url: String,
    #[serde(default)]
    pub(super) return_urls: Vec<String>,
    /// PEM CA certificates for the provider's HTTPS endpoints (default: the Mozilla roots).
    pub(super) ca_file: Option<String>,
    /// Time for each call to the provider's token endpoints. Default 10s.
    pub(super) timeout: Option<ConfigDuration>,
    /// A token obtained elsewhere, used for every subject on this provider's routes.
    pub(super) access_token: Option<String>,
    pub(super) access_token_secret_file: Option<String>,
    /// `oauth_problem` values meaning "this user's token is no longer
    /// good", beyond token_revoked, token_rejected and token_expired.
    #[serde(default)]
    pub(super) token_problems: Vec<String>,
    /// Levels of access a user may grant (read, write, ...), each as the
    /// parameters the provider takes for it.
    pub(super) permissions: Option<RawPermissions>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPermissions {
    /// The level asked for when a request names none.
    pub(super) default: String,
    pub(super) levels: std::collections::BTreeMap<String, RawLevel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLevel {
    /// Added to the request-token call (in its query, so signed).
    #[serde(default)]
    pub(super) request_token: std::collections::BTreeMap<String, String>,
    /// Added to the authorization URL the user is sent to (not signed:
    /// RFC 5849 sends the user there unsigned).
    #[serde(default)]
    pub(super) authorize_url: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) address: String,
    /// A file holding the admin bearer secret; or VALET_ADMIN_TOKEN (the
    /// credential named `admin`), unless `credentials` are given.
    pub(super) token_file: Option<String>,
    /// Named admin credentials, each its own secret: the name is who made
    /// a change, in the log.
    #[serde(default)]
    pub(super) credentials: Vec<RawAdminCredential>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdminCredential {
    pub(super) name: String,
    pub(super) token_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthServer {
    /// Clients managed by valet (`valet client add`, secret regeneration).
    pub(super) clients_file: Option<String>,
    /// Clients written by hand in this config (read-only for valet).
    #[serde(default)]
    pub(super) clients: Vec<RawClient>,
    #[serde(default)]
    pub(super) users: Vec<RawUser>,
    pub(super) users_file: Option<String>,
    pub(super) secret_pepper_file: Option<String>,
    #[serde(default)]
    pub(super) generate_pepper_if_missing: bool,
    pub(super) token_path: Option<String>,
    pub(super) revocation_path: Option<String>,
    pub(super) introspection_path: Option<String>,
    pub(super) refresh_grace: Option<ConfigDuration>,
    pub(super) max_failed_auth: Option<u32>,
    pub(super) max_failed_auth_per_source: Option<u32>,
    pub(super) failed_auth_window: Option<ConfigDuration>,
    pub(super) expected_replicas: Option<u32>,
    pub(super) password_hash_workers: Option<usize>,
    pub(super) password_hash_queue: Option<usize>,
    pub(super) password_hash_queue_per_source: Option<usize>,
    pub(super) password_hash_wait: Option<ConfigDuration>,
    pub(super) verified_secret_ttl: Option<ConfigDuration>,
}

/// The clients file: `clients: [...]`.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsFile {
    #[serde(default)]
    pub clients: Vec<RawClient>,
}

/// The users file: `users: [...]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsersFile {
    #[serde(default)]
    pub(super) users: Vec<RawUser>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub client_id: String,
    /// `$argon2id$...` or `hmac-sha256:<base64>` (valet-generated secrets).
    pub secret_hash: String,
    pub grant_types: Vec<String>,
    /// For client credentials: the service identity tokens are issued to (`sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_ttl: Option<ConfigDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_ttl: Option<ConfigDuration>,
    /// How long a refresh-token family lives, however often it is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_max_lifetime: Option<ConfigDuration>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_refresh_token: bool,
    /// May introspect tokens issued to other clients (resource servers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub introspect_any: bool,
    /// The JWT bearer grant (RFC 7523): trusted assertion issuers and mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_bearer: Option<RawJwtBearer>,
    /// The SAML 2.0 bearer grant (RFC 7522): the trusted IdP and mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saml2_bearer: Option<RawSaml2Bearer>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSaml2Bearer {
    /// The IdP's entity id: the assertions' `Issuer`.
    pub idp_entity_id: String,
    /// The IdP's signing certificate (PEM).
    pub idp_certificate_file: String,
    /// valet's entity id, required in every AudienceRestriction. Default: tokens.issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// Identity mapping: an attribute that becomes `sub`. Default: the NameID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_attribute: Option<String>,
    /// Identity mapping: access token claim ← SAML attribute.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claims: std::collections::BTreeMap<String, String>,
    /// Identity mapping: an attribute whose values are granted as scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_attribute: Option<String>,
    /// Identity mapping: put before every subject from this IdP (e.g.
    /// `corp-idp:`), for deployments that keep IdP users and local ones apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtBearer {
    pub issuers: Vec<RawAssertionIssuer>,
    /// Longest accepted `exp - now` of an assertion. Default: 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_assertion_lifetime: Option<ConfigDuration>,
    /// Identity mapping: which assertion claim becomes `sub`. Default: sub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_claim: Option<String>,
    /// Identity mapping: access token claim ← assertion claim.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claims: std::collections::BTreeMap<String, String>,
    /// Identity mapping: an assertion claim (string or list) whose values are
    /// granted as scopes, within the client's scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_claim: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssertionIssuer {
    pub issuer: String,
    /// A JWKS file (keys with `alg` and `kid`), or a PEM public key with `algorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Identity mapping: put before every subject this issuer asserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) username: String,
    pub(super) password_hash: String,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) claims: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Option<String>,
    pub(super) address: String,
    pub(super) tls: RawTls,
    /// The canonical-path rules (README "Canonical paths"); strict by default.
    #[serde(default)]
    pub(super) paths: crate::request_target::PathPolicy,
    /// Request headers whose name contains `_`: drop (default), reject or allow.
    #[serde(default)]
    pub(super) headers_with_underscores: super::UnderscoreHeaders,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert_file: Option<String>,
    pub(super) key_file: Option<String>,
    /// Development only: a self-signed certificate made at start-up.
    #[serde(default)]
    pub(super) self_signed_for_development: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    #[serde(default = "default_metrics_address")]
    pub(super) address: String,
    #[serde(default = "yes")]
    pub(super) enabled: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            address: default_metrics_address(),
            enabled: true,
        }
    }
}

fn default_metrics_address() -> String {
    super::DEFAULT_METRICS_ADDRESS.to_string()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    pub(super) issuer: String,
    pub(super) audiences: Vec<String>,
    pub(super) clock_skew: Option<ConfigDuration>,
    /// The `id` of the key used to sign new tokens.
    pub(super) signing_key: Option<String>,
    pub(super) keys: Vec<RawKey>,
    pub(super) access_token_ttl: Option<ConfigDuration>,
    pub(super) cache_entries: Option<usize>,
    /// Trusted external issuers.
    #[serde(default)]
    pub(super) issuers: Vec<RawIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    pub(super) issuer: String,
    pub(super) name: Option<String>,
    /// Keys from this URL, from discovery, or from files: exactly one.
    pub(super) jwks_uri: Option<String>,
    #[serde(default)]
    pub(super) discovery: bool,
    /// Hosts besides the issuer's own where a discovered `jwks_uri` may be.
    pub(super) jwks_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub(super) keys: Vec<RawKey>,
    pub(super) ca_file: Option<String>,
    pub(super) audiences: Option<Vec<String>>,
    pub(super) token_types: Option<Vec<String>>,
    pub(super) required_claims: Option<Vec<String>>,
    pub(super) client_id_claims: Option<Vec<String>>,
    pub(super) scope_claims: Option<Vec<String>>,
    pub(super) clock_skew: Option<ConfigDuration>,
    pub(super) min_refresh: Option<ConfigDuration>,
    pub(super) max_refresh: Option<ConfigDuration>,
    pub(super) unknown_kid_interval: Option<ConfigDuration>,
    pub(super) max_fetches_per_minute: Option<u32>,
    pub(super) fetch_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) id: String,
    pub(super) algorithm: String,
    pub(super) private_key_file: Option<String>,
    pub(super) public_key_file: Option<String>,
    #[serde(default)]
    pub(super) generate_if_missing: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRevocation {
    pub(super) file: String,
}

/// What a valet process does (`role`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Issues and revokes tokens (token endpoints, admin API, OAuth 1.0
    /// flow); holds the signing key; writes the state store.
    Authority,
    /// Validates and proxies: public keys only; reads the state store and
    /// follows its changes; never writes.
    Validator,
    /// Both, in one process (one host).
    #[default]
    Both,
}

/// Where valet keeps its own state (the embedded store).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) path: Option<String>,
    /// The store not read for this long makes revocations stale (a metric;
    /// routes with `auth.fail_closed_when_stale` answer 503). Default: 30s.
    pub(super) stale_after: Option<ConfigDuration>,
    /// A Redis shared by a fleet, instead of the embedded store.
    pub(super) redis: Option<RawRedisStore>,
    /// One pod is intended: the embedded store may be used under
    /// Kubernetes (where each replica would otherwise keep its own).
    #[serde(default)]
    pub(super) single_replica: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedisStore {
    /// redis://host:port/db or rediss:// (TLS); no password in it.
    pub(super) url: String,
    /// The ACL user.
    pub(super) username: Option<String>,
    /// The ACL user's password, in a file (or VALET_REDIS_PASSWORD).
    pub(super) password_file: Option<String>,
    /// Put before every key. Default: `valet:`.
    pub(super) key_prefix: Option<String>,
    /// Replicas a write must reach before it is acknowledged (WAIT).
    /// Default: 0.
    #[serde(default)]
    pub(super) wait_replicas: u32,
    /// How long a write waits for them. Default: 1s.
    pub(super) wait_timeout: Option<ConfigDuration>,
    /// PEM CA certificates the server's (rediss://) must chain to. Default:
    /// the system's roots.
    pub(super) ca_file: Option<String>,
    /// A client certificate (PEM chain) and its key, for a server that
    /// asks for one (`tls-auth-clients yes`): both or neither.
    pub(super) client_cert_file: Option<String>,
    pub(super) client_key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: String,
    #[serde(rename = "match")]
    pub(super) matcher: RawMatch,
    pub(super) upstream: String,
    #[serde(default)]
    pub(super) strip_prefix: bool,
    #[serde(default)]
    pub(super) auth: RawRouteAuth,
    #[serde(default)]
    pub(super) forward_authorization: bool,
    /// Which identity headers to inject; all three by default.
    pub(super) inject_identity: Option<Vec<String>>,
    pub(super) connect_timeout: Option<ConfigDuration>,
    pub(super) response_timeout: Option<ConfigDuration>,
    pub(super) max_body_size: Option<ByteSize>,
    /// How valet authenticates to the upstream itself.
    pub(super) upstream_auth: Option<RawUpstreamAuth>,
    /// More caller headers to remove before forwarding.
    #[serde(default)]
    pub(super) strip_request_headers: Vec<String>,
    /// TLS towards an https:// upstream.
    pub(super) upstream_tls: Option<RawUpstreamTls>,
    /// `h2c` (HTTP/2 with prior knowledge, http:// only) or `http1`; by
    /// default http:// speaks HTTP/1.1 and https:// what ALPN picks.
    pub(super) upstream_protocol: Option<String>,
    /// Allow `Upgrade: websocket` on this route.
    pub(super) websocket: Option<RawWebSocket>,
    /// Cross-origin calls from browsers: preflights answered by valet.
    pub(super) cors: Option<super::cors::RawCors>,
    /// Validated claims sent upstream as headers: header name → claim.
    #[serde(default)]
    pub(super) inject_claims: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebSocket {
    pub(super) idle_timeout: Option<ConfigDuration>,
    pub(super) max_duration: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    /// CA certificates to trust (PEM); default: the public web roots.
    pub(super) ca_file: Option<String>,
    /// The name the certificate must carry (and SNI), for IP upstreams or
    /// names that differ from the URL's host.
    pub(super) server_name: Option<String>,
    /// A client certificate and key (PEM) for upstreams that demand mTLS.
    pub(super) client_cert_file: Option<String>,
    pub(super) client_key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamAuth {
    /// Sign forwarded requests with the subject's token of this OAuth 1.0 provider.
    pub(super) oauth1: String,
    /// The origin (`https://api.example.com`) the provider sees, when valet
    /// reaches it through a proxy: it replaces the upstream's scheme, host
    /// and port in the signature base string.
    pub(super) signed_origin: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    pub(super) path_prefix: String,
    pub(super) host: Option<String>,
    /// Match the prefix ignoring ASCII case, for upstreams that ignore it.
    #[serde(default)]
    pub(super) case_insensitive: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouteAuth {
    #[serde(default = "yes")]
    pub(super) required: bool,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    /// Only tokens of these issuers (names from `tokens.issuers`, or
    /// valet's own `tokens.issuer`); all by default.
    pub(super) issuers: Option<Vec<String>>,
    /// Only tokens for one of these audiences; any accepted one by default.
    #[serde(default)]
    pub(super) audiences: Vec<String>,
    /// Answer 503 while the state store has not been read for longer than
    /// `store.stale_after` (revocations not known current). Default: serve
    /// from the revocations held.
    #[serde(default)]
    pub(super) fail_closed_when_stale: bool,
}

impl Default for RawRouteAuth {
    fn default() -> Self {
        RawRouteAuth {
            required: true,
            scopes: Vec::new(),
            issuers: None,
            audiences: Vec::new(),
            fail_closed_when_stale: false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_header_size: Option<ByteSize>,
    pub(super) max_body_size: Option<ByteSize>,
    pub(super) header_read_timeout: Option<ConfigDuration>,
    pub(super) tls_handshake_timeout: Option<ConfigDuration>,
    pub(super) max_connections: Option<usize>,
    /// Open WebSocket sessions, all routes together.
    pub(super) max_websockets: Option<usize>,
    /// Open WebSocket sessions of one subject (or, without a token, one
    /// source address).
    pub(super) max_websockets_per_subject: Option<usize>,
    pub(super) connect_timeout: Option<ConfigDuration>,
    pub(super) response_timeout: Option<ConfigDuration>,
    pub(super) shutdown_grace: Option<ConfigDuration>,
    pub(super) drain_delay: Option<ConfigDuration>,
    pub(super) idle_timeout: Option<ConfigDuration>,
    pub(super) send_timeout: Option<ConfigDuration>,
    pub(super) min_request_body_rate: Option<ByteSize>,
    pub(super) request_body_grace: Option<ConfigDuration>,
    pub(super) request_body_timeout: Option<ConfigDuration>,
    pub(super) max_connections_per_source: Option<usize>,
    pub(super) http2_max_concurrent_streams: Option<u32>,
    pub(super) http2_keepalive_interval: Option<ConfigDuration>,
    pub(super) http2_keepalive_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwarding {
    /// Peers (IPs or CIDRs) whose X-Forwarded-* headers are trusted and appended to.
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentityHeaders {
    pub(super) subject: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) scopes: Option<String>,
    pub(super) issuer: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDev {
    /// Address for the built-in echo upstream (development and demos only).
    pub(super) echo_upstream: Option<String>,
}
