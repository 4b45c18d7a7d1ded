//! See `valet::fuzzing::oauth1_params` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| valet::fuzzing::oauth1_params(data));
