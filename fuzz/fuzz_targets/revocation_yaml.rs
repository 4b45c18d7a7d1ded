//! See `valet::fuzzing::revocation_yaml` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| valet::fuzzing::revocation_yaml(data));
