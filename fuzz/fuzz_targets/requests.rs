//! Fuzz target `requests`: its body is `baton_node::fuzzing::requests` (node/src/fuzzing.rs),
//! replayed on stable by that module's tests. Corpus: fuzz/corpus/requests/.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_node::fuzzing::requests(data));
