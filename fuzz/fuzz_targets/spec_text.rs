//! Fuzz target `spec_text`: its body is `baton_node::fuzzing::spec_text` (node/src/fuzzing.rs),
//! replayed on stable by that module's tests. Corpus: fuzz/corpus/spec_text/.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_node::fuzzing::spec_text(data));
