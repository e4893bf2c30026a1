#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_node::fuzzing::log_entry(data));
