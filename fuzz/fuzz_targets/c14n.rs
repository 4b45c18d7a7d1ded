//! Exclusive c14n on arbitrary XML; see `valet::fuzzing::c14n`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| valet::fuzzing::c14n(data));
