//! valet as an OAuth 1.0a client (RFC 5849) for legacy upstreams. So far:
//! request signing (§3). The three-legged flow, the token store and signed
//! forwarding build on it.

pub mod signing;
