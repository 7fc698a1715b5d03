#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::fuzzing::check_registration_decode(data));
