//! valet as an OAuth 1.0a client (RFC 5849) for legacy upstreams: request
//! signing (§3), the encrypted token store, the calls to providers, the
//! three-legged flow endpoints, and signing of forwarded requests.

pub mod client;
pub mod flow;
pub mod forward;
pub mod rsa_sha1;
pub mod signing;
pub mod store;
