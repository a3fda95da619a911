#!/usr/bin/env bash
# Runs one cargo-fuzz target for a while: scripts/fuzz.sh TARGET SECONDS
# (targets: request_head response_head chunked nginx_config routes_compile
# consul_register). Needs a nightly toolchain; installs cargo-fuzz if
# missing. New inputs go to fuzz/work/TARGET (not committed); the seeds in
# fuzz/corpus/TARGET are only read. A crash is saved under
# fuzz/artifacts/TARGET: minimise it with
#   cargo +nightly fuzz tmin TARGET fuzz/artifacts/TARGET/crash-…
# and add the result to fuzz/corpus/TARGET, so that tests/fuzz_corpus.rs
# replays it on every test run.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 TARGET SECONDS" >&2
    exit 2
fi
target="$1"
seconds="$2"
cd "$(dirname "$0")/.."
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "a nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if [ ! -d "fuzz/corpus/$target" ]; then
    echo "no such fuzz target: $target (see fuzz/fuzz_targets/)" >&2
    exit 2
fi
mkdir -p "fuzz/work/$target"
cd fuzz
exec cargo +nightly fuzz run "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1
