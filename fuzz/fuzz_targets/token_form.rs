//! See `valet::fuzzing::token_form` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| valet::fuzzing::token_form(data));
