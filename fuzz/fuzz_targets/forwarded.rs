//! See `valet::fuzzing::forwarded` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| valet::fuzzing::forwarded(data));
