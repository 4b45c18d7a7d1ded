//! Arbitrary (mostly mutated, seeded with xmlsec1-signed) assertions through
//! the whole SAML validation; see `valet::fuzzing::saml_assertion`.
#![no_main]

use rustls_pki_types::pem::PemObject;
use std::sync::OnceLock;

fn cert() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    CERT.get_or_init(|| {
        let pem = include_bytes!("../../tests/data/saml/idp-cert.pem");
        rustls_pki_types::CertificateDer::from_pem_slice(pem)
            .unwrap()
            .as_ref()
            .to_vec()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| valet::fuzzing::saml_assertion(data, cert()));
