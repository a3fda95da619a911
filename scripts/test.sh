#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the
# end-to-end tests on loopback. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh nginx   # nginx: the differential conformance tests run it
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Library, binary and integration tests (there are no doc tests).
cargo test --locked --lib --bins --tests 2>&1 | tee "$log"
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "laneway tests: %d passed, %d failed\n", p, f }' "$log"
