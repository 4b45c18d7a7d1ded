//! valet: an OAuth sidecar gateway.
//!
//! A TLS-terminating reverse proxy that forwards a request upstream only
//! after validating its bearer token (signature, time, issuer, audience,
//! scopes, revocations), and hands the upstream a clean request.

// No unsafe code, except the audited FFI of `oauth1::rsa_sha1`.
#![deny(unsafe_code)]

pub mod app;
pub mod bodies;
pub mod certs;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod digest;
pub mod durable;
pub mod echo;
#[doc(hidden)]
pub mod fuzzing;
pub mod header_names;
pub mod metrics;
pub mod net;
pub mod oauth1;
pub mod oauth1_signature;
pub mod oauth2;
pub mod outbound;
pub mod proxy;
pub mod refusal;
pub mod request_target;
pub mod revocation;
pub mod saml;
pub mod server;
pub mod store;
pub mod tokens;
