//! libFuzzer entry point of `targets/config.rs`, which says what it feeds and checks (shared with
//! the corpus replay in tests/it/fuzz_corpus.rs).
#![no_main]

#[path = "../targets/config.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
