//! valet as an OAuth 2.0 authorization server: the token endpoint (RFC 6749),
//! revocation (RFC 7009), introspection (RFC 7662), metadata (RFC 8414) and
//! the JWKS, served on the same TLS listeners as the proxy.

/// Credentials moved down to a foundation module; this path stays for
/// callers outside the crate.
pub use crate::credentials as registry;

pub mod client_auth;
pub mod endpoints;
pub mod error;
pub mod form;
pub mod grants;
pub mod jwt_bearer;
pub mod manage;
pub mod saml_bearer;

/// The token endpoints' shared stores live in the state layer; these paths
/// stay for callers outside the crate.
pub use crate::app::{hash_pool, throttle, verified};
