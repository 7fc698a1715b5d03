#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    synapse::fuzzing::check_render(data);
});
