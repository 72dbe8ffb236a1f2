#!/usr/bin/env bash
# Builds the libFuzzer targets and runs each for a bounded time.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#   fuzz/run.sh 5                                      (a smoke run: a few seconds each)
#
# Stable Rust only: no cargo-fuzz and no nightly. The crate is built with the coverage
# instrumentation libFuzzer needs (what `cargo fuzz build -s none` passes) and no sanitizer;
# libfuzzer-sys compiles libFuzzer itself with the system C++ compiler.
#
# New inputs go to fuzz/corpus-out/<target>/ (gitignored; reused by later local runs); the
# committed seeds in fuzz/corpus/<target>/ are only read. Crashes, timeouts and OOMs are
# written to fuzz/artifacts/<target>/ and make the script exit non-zero.
# Env: FUZZ_TIMEOUT (seconds one input may take, default 10), FUZZ_RSS_MB (default 2048),
# FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")"

ALL=(review_json protobuf jwt token_file config authn_config)
secs=60
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  secs=$1
  shift
fi
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL[@]}")
for t in "${targets[@]}"; do
  [[ " ${ALL[*]} " == *" $t "* ]] || { echo "fuzz: unknown target $t (have: ${ALL[*]})" >&2; exit 2; }
done

command -v cargo >/dev/null || { echo "fuzz: cargo is required" >&2; exit 1; }
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null ||
  { echo "fuzz: a C++ compiler is required to build libFuzzer (apt-get install g++)" >&2; exit 1; }

host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the instrumentation off build scripts and proc macros, as cargo-fuzz does.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cforce-frame-pointers"
# Not --locked: when the main crate gains a dependency, cargo adds it to fuzz/Cargo.lock
# (keeping every version already there) instead of failing; commit the refreshed lock file.
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
echo "== fuzz: building ${targets[*]}"
cargo build --release --target "$host" --target-dir target "${bins[@]}"

export RUST_BACKTRACE=1
failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus-out/$t" "artifacts/$t"
  log="target/fuzz-$t.log"
  echo "== fuzz: $t for ${secs}s"
  set +e
  # shellcheck disable=SC2086
  "target/$host/release/$t" "corpus-out/$t" "corpus/$t" \
    -max_total_time="$secs" -print_final_stats=1 \
    -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
    -artifact_prefix="artifacts/$t/" ${FUZZ_ARGS:-} >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$done_line")
  line=$(printf '%-13s execs=%-10s cov=%-6s ft=%-7s corpus=%-10s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
  if [[ $rc -ne 0 ]]; then
    failed+=("$t")
    line+=" FAILED (exit $rc)"
    echo "-- fuzz: $t failed (exit $rc); log $PWD/$log:" >&2
    grep -E -A40 'panicked at|==[0-9]+== ERROR|deadly signal|Timeout|out-of-memory' "$log" | head -80 >&2 || tail -40 "$log" >&2
    ls -1 "artifacts/$t" >&2
  fi
  summary+=("$line")
done

echo "== fuzz: summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: FAILED: ${failed[*]}; reproduce with: fuzz/target/$host/release/<target> fuzz/artifacts/<target>/<file>" >&2
  exit 1
fi
