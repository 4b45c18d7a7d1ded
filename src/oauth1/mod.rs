//! valet as an OAuth 1.0a client (RFC 5849) for legacy upstreams. So far:
//! request signing (§3) and the encrypted token store. The three-legged
//! flow and signed forwarding build on them.

pub mod signing;
pub mod store;
