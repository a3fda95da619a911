#!/usr/bin/env bash
# Runs laneway on its embedded default configuration (loopback only, no
# Consul): data plane on 127.0.0.1:8080, admin API on 127.0.0.1:9900.
# Extra arguments go to `laneway run` (e.g. --config other.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --bin laneway
exec ./target/release/laneway run --config config/laneway.toml "$@"
