//! Fuzz target `commands`: its body is `baton_node::fuzzing::commands` (node/src/fuzzing.rs),
//! replayed on stable by that module's tests. Corpus: fuzz/corpus/commands/.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_node::fuzzing::commands(data));
