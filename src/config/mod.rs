//! Configuration: the YAML schema (`raw`), units, positioned errors, and the
//! compile step that turns raw YAML into a validated, typed [`Config`].
//!
//! Pipeline: file text → `RawConfig` (serde, unknown keys rejected) →
//! `compile` (every semantic error collected, each with its position) →
//! `Config` (durations, addresses, parsed keys). A `Config` is only ever
//! built whole; reload keeps the old one unless the new one compiles.

mod auth_server;
mod compile;
pub mod cors;
mod error;
mod issuers;
mod keys;
mod oauth1;
mod raw;
pub mod units;

pub use auth_server::*;
pub use compile::*;
pub use error::{locate, ConfigError, ConfigErrors};
pub use issuers::*;
pub use oauth1::*;
pub use raw::{ClientsFile, RawClient, Role};

use std::time::Duration;

/// Metrics and health listener; loopback so it is not exposed by accident.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9090";
/// Allowed clock difference when checking `exp` and `nbf`.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Lifetime of access tokens minted by valet (seconds: 3600).
pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Entries in the verified-token cache.
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 100_000;
/// Largest request head (request line plus headers), bytes. Above it: 431.
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 16 * 1024;
/// Largest request body, bytes, unless a route says otherwise. Above it: 413.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 10 * 1024 * 1024;
/// Time a client has to send a complete request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to complete the TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent client connections per listener; beyond it, accepting pauses.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Open WebSocket sessions, all routes together (each holds two sockets).
pub const DEFAULT_MAX_WEBSOCKETS: usize = 1_024;
/// Open WebSocket sessions of one subject: one token cannot take them all.
pub const DEFAULT_MAX_WEBSOCKETS_PER_SUBJECT: usize = 32;
/// A WebSocket session with no data either way for this long is closed.
pub const DEFAULT_WEBSOCKET_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest a WebSocket session lasts: what bounds a revoked token's
/// open socket.
pub const DEFAULT_WEBSOCKET_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
/// Time to establish a TCP connection to an upstream. Beyond it: 504.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time from sending a request upstream to its response head. Beyond it: 504.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// On SIGTERM, time in-flight requests get to finish before valet exits.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Identity header names injected towards upstreams.
pub const DEFAULT_SUBJECT_HEADER: &str = "x-valet-subject";
/// Which issuer vouched for the identity (a subject is only unique within
/// its issuer).
pub const DEFAULT_ISSUER_HEADER: &str = "x-valet-issuer";
pub const DEFAULT_CLIENT_ID_HEADER: &str = "x-valet-client-id";
pub const DEFAULT_SCOPES_HEADER: &str = "x-valet-scopes";
/// Time a connection may sit with no request in progress (also the wait for
/// the first request after the TLS handshake). Then it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a client may accept no response bytes while valet has some to send.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Slowest accepted request body, bytes per second (after the grace period).
pub const DEFAULT_MIN_REQUEST_BODY_RATE: u64 = 1024;
/// Longest single wait for more of a request body (nginx's client_body_timeout).
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a request body may take before its rate is enforced.
pub const DEFAULT_REQUEST_BODY_GRACE: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Interval of HTTP/2 PINGs that find dead peers.
pub const DEFAULT_HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Time to wait for a PING's answer before closing the connection.
pub const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
