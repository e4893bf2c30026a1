//! Fuzz target `spec_proto`: its body is `baton_node::fuzzing::spec_proto` (node/src/fuzzing.rs),
//! replayed on stable by that module's tests. Corpus: fuzz/corpus/spec_proto/.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_node::fuzzing::spec_proto(data));
