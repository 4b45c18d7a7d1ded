//! SAML 2.0 assertions for the SAML bearer grant (RFC 7522): a narrowly
//! scoped XML signature verifier over roxmltree (no DTDs, so no entity
//! expansion of any kind) and exclusive canonicalization.
//!
//! Why our own verifier: samael needs libxmlsec1 (a C library a newcomer
//! would have to install), and the pure-Rust XML-DSig crates pull a second
//! crypto stack (RustCrypto, including the `rsa` crate). The verifier accepts
//! one shape only, the one SAML uses: an enveloped signature on the root
//! Assertion, exclusive c14n, RSA-SHA256, SHA-256. Anything else is refused.
//! It is checked against xmlsec1-signed vectors (tests/data/saml).

pub mod assertion;
pub mod c14n;
pub mod xmldsig;
