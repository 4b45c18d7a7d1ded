//! See `valet::fuzzing::header_scrub` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| valet::fuzzing::header_scrub(data));
