//! See `valet::fuzzing::rfc3339` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| valet::fuzzing::rfc3339(data));
