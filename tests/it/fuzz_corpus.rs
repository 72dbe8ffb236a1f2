//! The fuzz targets' committed seeds (fuzz/corpus/), and fixed mutations of them, run through the targets' own code on every `cargo test`.
//!
//! The targets (fuzz/targets/) are compiled in here as they are into the libFuzzer binaries,
//! so that a target that no longer builds, a seed that breaks an invariant, or a fixed crash
//! that comes back fails the test suite. This is regression replay, not fuzzing: coverage-guided
//! runs are `fuzz/run.sh` (see fuzz/README.md).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../../fuzz/targets/authn_config.rs"]
mod authn_config;
#[path = "../../fuzz/targets/config.rs"]
mod config;
#[path = "../../fuzz/targets/jwt.rs"]
mod jwt;
#[path = "../../fuzz/targets/protobuf.rs"]
mod protobuf;
#[path = "../../fuzz/targets/review_json.rs"]
mod review_json;
#[path = "../../fuzz/targets/token_file.rs"]
mod token_file;

/// Mutants made of each seed: about 12,000 inputs in all, 3 s in the unoptimised test build.
const MUTANTS_PER_SEED: u64 = 256;

/// xorshift64*: the mutations are the same on every run, so that a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One of libFuzzer's simpler mutations of `seed`: a flipped bit, a byte set to a value that
/// matters to the parsers, a range removed or repeated, a truncation.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    const SPECIAL: &[u8] = b"\0\xff\"{}[].,:\n\\=-0 ";
    let mut v = seed.to_vec();
    if v.is_empty() {
        v.push(rng.next() as u8);
        return v;
    }
    let at = rng.below(v.len());
    match rng.next() % 5 {
        0 => v[at] ^= 1 << (rng.next() % 8),
        1 => v[at] = SPECIAL[rng.below(SPECIAL.len())],
        2 => {
            let end = (at + 1 + rng.below(16)).min(v.len());
            v.drain(at..end);
        }
        3 => {
            let end = (at + 1 + rng.below(16)).min(v.len());
            let copy = v[at..end].to_vec();
            v.splice(at..at, copy);
        }
        _ => v.truncate(at),
    }
    v
}

/// Runs `target` on every seed of `fuzz/corpus/<name>/` and its mutants. A failing input is
/// written to target/tmp/fuzz-replay/ for `fuzz/target/…/<name> FILE` to reproduce.
fn replay(name: &str, target: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    let mut ran = 0;
    for (i, path) in seeds.iter().enumerate() {
        let seed = std::fs::read(path).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
        let inputs = std::iter::once(seed.clone())
            .chain((0..MUTANTS_PER_SEED).map(|_| mutate(&seed, &mut rng)));
        for (m, input) in inputs.enumerate() {
            if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
                let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-replay");
                std::fs::create_dir_all(&out).unwrap();
                let file = out.join(format!("{name}-seed{i}-mutant{m}"));
                std::fs::write(&file, &input).unwrap();
                panic!(
                    "fuzz target {name} failed on {} (mutant {m}; 0 is the seed itself), input written to {}",
                    path.display(),
                    file.display()
                );
            }
            ran += 1;
        }
    }
    assert_eq!(ran, seeds.len() * (MUTANTS_PER_SEED as usize + 1));
}

#[test]
fn review_json_corpus() {
    replay("review_json", review_json::run);
}

#[test]
fn protobuf_corpus() {
    replay("protobuf", protobuf::run);
}

#[test]
fn jwt_corpus() {
    replay("jwt", jwt::run);
}

#[test]
fn token_file_corpus() {
    replay("token_file", token_file::run);
}

#[test]
fn config_corpus() {
    replay("config", config::run);
}

#[test]
fn authn_config_corpus() {
    replay("authn_config", authn_config::run);
}
