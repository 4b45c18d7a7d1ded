//! Bearer tokens against a validator with one fixed Ed25519 key: whatever
//! validates must carry a signature an independent verifier accepts. See
//! `valet::fuzzing::BearerOracle`.
#![no_main]

use std::sync::OnceLock;
use valet::fuzzing::BearerOracle;

fn oracle() -> &'static BearerOracle {
    static O: OnceLock<BearerOracle> = OnceLock::new();
    O.get_or_init(|| BearerOracle::new(include_str!("../keys/fuzz-only-ed25519.pem")))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle().check(data));
