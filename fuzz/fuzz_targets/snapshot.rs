//! Fuzz target `snapshot`: its body is `baton_node::fuzzing::snapshot` (node/src/fuzzing.rs),
//! replayed on stable by that module's tests. Corpus: fuzz/corpus/snapshot/.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_node::fuzzing::snapshot(data));
