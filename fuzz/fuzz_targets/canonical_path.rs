//! See `valet::fuzzing::canonical_path` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| valet::fuzzing::canonical_path(data));
