//! The TOML configuration: figment (built-in defaults < the TOML text, in memory, as
//! `config::load` layers a file) into `FileConfig`, then `config::validate::validate`. A
//! parsed configuration must also survive `render_commented` (the commented template
//! `tokenhook config` prints) unchanged.

use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use tokenhook::config::FileConfig;
use tokenhook::config::file::render_commented;
use tokenhook::config::validate::validate;

// figment's own error type, as tokenhook's loader returns it: its size is not ours to change.
#[allow(clippy::result_large_err)]
fn extract(text: &str) -> Result<FileConfig, figment::Error> {
    Figment::from(Serialized::defaults(FileConfig::default()))
        .merge(Toml::string(text))
        .extract()
}

/// One input, from the fuzzer (fuzz/fuzz_targets/) or the corpus replay (tests/it/fuzz_corpus.rs).
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let raw = match extract(text) {
        Ok(raw) => raw,
        Err(e) => {
            if std::env::var_os("FUZZ_DEBUG").is_some() {
                eprintln!("extract: {e}");
            }
            return;
        }
    };
    let valid = validate(&raw, Path::new("/etc/tokenhook"));
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("validate: {:?}", valid.as_ref().map(|_| "ok"));
    }
    let rendered = render_commented(&raw);
    match extract(&rendered) {
        Ok(back) => assert_eq!(
            back, raw,
            "render_commented changed the configuration:\n{rendered}"
        ),
        Err(e) => panic!("render_commented output does not parse: {e}\n{rendered}"),
    }
}
