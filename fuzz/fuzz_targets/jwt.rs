//! libFuzzer entry point of `targets/jwt.rs`, which says what it feeds and checks (shared with
//! the corpus replay in tests/it/fuzz_corpus.rs).
#![no_main]

#[path = "../targets/jwt.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
