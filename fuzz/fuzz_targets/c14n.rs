//! Exclusive c14n on arbitrary XML: never panics; its output is XML whose
//! own canonical form is itself (c14n is idempotent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use valet::saml::c14n::canonicalize;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = valet::saml::xmldsig::parse(xml) else {
        return;
    };
    let once = canonicalize(xml, doc.root_element(), None, &[]);
    let again_doc = roxmltree::Document::parse(&once).expect("canonical XML parses");
    let twice = canonicalize(&once, again_doc.root_element(), None, &[]);
    assert_eq!(once, twice, "c14n is not idempotent");
});
