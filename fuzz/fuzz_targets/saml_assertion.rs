//! Arbitrary (mostly mutated, seeded with xmlsec1-signed) assertions through
//! the whole SAML validation. Oracle: whatever validates carries exactly the
//! identity the IdP signed; the fuzzer is searching for a forgery.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::pem::PemObject;
use std::sync::OnceLock;
use valet::saml::assertion::{validate, Expect};

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

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let expect = Expect {
        idp_entity_id: "https://idp.test",
        idp_cert_der: cert(),
        audience: "https://valet.test",
        recipient: "https://valet.test/oauth2/token",
        now: 1_800_000_000,
        skew: 30,
    };
    if let Ok(a) = validate(xml, &expect) {
        assert_eq!(a.issuer, "https://idp.test");
        assert_eq!(a.name_id, "dave@idp.test", "a forged subject validated");
        assert!(
            a.id == "_grant-valid" || a.id == "_grant-valid-2",
            "an unsigned ID validated: {}",
            a.id
        );
    }
});
