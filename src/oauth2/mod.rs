//! valet as an OAuth 2.0 authorization server: the token endpoint (RFC 6749),
//! revocation (RFC 7009), introspection (RFC 7662), metadata (RFC 8414) and
//! the JWKS, served on the same TLS listeners as the proxy.

/// Credentials moved down to a foundation module; this path stays for
/// callers outside the crate.
pub use crate::credentials as registry;

use crate::app::throttle::Source;
use crate::app::{App, Snapshot};
use crate::config::AuthServerConfig;
use std::sync::Arc;

/// One request to a token endpoint: what every endpoint and grant reads.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub app: &'a Arc<App>,
    /// Taken after the files were synced (`App::sync_files`).
    pub snap: &'a Snapshot,
    pub a: &'a AuthServerConfig,
    /// Who is asking, for the throttle and the hash queue.
    pub source: Source,
    pub headers: &'a http::HeaderMap,
    pub form: &'a form::Form,
    /// When the files were known current: the issue time of what follows.
    pub now: i64,
}

pub mod client_auth;
pub mod endpoints;
pub mod error;
pub mod form;
pub mod grants;
pub mod jwt_bearer;
pub mod manage;
pub mod saml_bearer;
pub mod state;

/// The token endpoints' shared stores live in the state layer; these paths
/// stay for callers outside the crate.
pub use crate::app::{hash_pool, throttle, verified};

impl Call<'_> {
    /// The token endpoint's URL: the audience (RFC 7523 §3) or recipient
    /// (RFC 7522 §3) an assertion must name.
    pub fn token_endpoint(&self) -> String {
        let issuer = &self.snap.config.tokens.issuer;
        format!("{}{}", endpoints::origin(issuer), self.a.paths.token)
    }
}
