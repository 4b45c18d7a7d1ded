//! valet as an OAuth 1.0a client (RFC 5849) for legacy upstreams: request
//! signing (§3), the encrypted token store, the calls to providers, the
//! three-legged flow endpoints, and signing of forwarded requests.

pub mod client;
pub mod flow;

/// The token store and pending flows are state, held by `app`.
pub use crate::app::oauth1_tokens as store;
/// Signing (§3) is a foundation the config compiles keys for; these paths
/// stay for callers outside the crate.
pub use crate::oauth1_signature::{self as signing, rsa_sha1};
