//! Integration tests: the real server on 127.0.0.1:0, real TLS, real HTTP clients, real kubectl.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

mod cli;
mod deploy;
mod e2e;
mod errors;
mod fuzz_corpus;
mod hostile;
mod introspection;
mod jwt;
mod mint;
mod monitoring;
mod operate;
mod registry;
mod reload;
mod review;
mod soak;
mod transport;
mod upstream;
