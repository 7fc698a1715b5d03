#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nerve::fuzzing::check_config_nerve(data));
