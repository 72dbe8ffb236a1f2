//! `verify::static_file::TokenTable::parse`: kube's `--token-auth-file` CSV plus tokenhook's
//! hashed entries, audiences and extra columns.

use tokenhook::verify::Digest;
use tokenhook::verify::static_file::{TokenTable, hash_entry};

/// One input, from the fuzzer (fuzz/fuzz_targets/) or the corpus replay (tests/it/fuzz_corpus.rs).
pub fn run(data: &[u8]) {
    let Ok(table) = TokenTable::parse(data) else {
        return;
    };
    // One usable token per record at most.
    let records = 1 + data.iter().filter(|b| **b == b'\n' || **b == b'\r').count();
    assert!(
        table.len() <= records,
        "{} tokens from {records} lines",
        table.len()
    );
    // A plain first column from a one-line, unquoted file is found by its digest, and its
    // hashed form (what `tokenhook hash-token` prints) parses to the same entry.
    if let Ok(text) = std::str::from_utf8(data)
        && !text.contains(['\n', '\r', '"', '#'])
        && let Some((token, rest)) = text.split_once(',')
        && !token.is_empty()
        && !token.starts_with("sha256:")
        && table.len() == 1
    {
        let entry = table
            .lookup(&Digest::of(token.as_bytes()))
            .expect("a one-row file's token is in the table");
        let hashed = format!("{},{rest}", hash_entry(token));
        let again = TokenTable::parse(hashed.as_bytes()).expect("the hashed row parses too");
        assert_eq!(
            again.lookup(&Digest::of(token.as_bytes())).map(|e| &**e),
            Some(&**entry)
        );
    }
}
