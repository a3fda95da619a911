#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the
# end-to-end tests on loopback. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
