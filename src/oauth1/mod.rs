//! valet as an OAuth 1.0a client (RFC 5849) for legacy upstreams: request
//! signing (§3), the encrypted token store, the calls to providers, the
//! three-legged flow endpoints, and signing of forwarded requests.

pub mod client;
pub mod flow;
pub mod forward;
pub mod store;

/// Signing (§3) is a foundation the config compiles keys for; these paths
/// stay for callers outside the crate.
pub use crate::oauth1_signature::{self as signing, rsa_sha1};
