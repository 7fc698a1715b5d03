#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::fuzzing::check_key_parse(data));
