//! Fuzz target `log_entry`: its body is `baton_node::fuzzing::log_entry` (node/src/fuzzing.rs),
//! replayed on stable by that module's tests. Corpus: fuzz/corpus/log_entry/.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_node::fuzzing::log_entry(data));
