#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the
# end-to-end tests on loopback. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
# nginx: the differential conformance tests run it; chromium + chromedriver:
# the browser tests (tests/browser)
./scripts/setup.sh nginx chromium chromedriver:chromium-driver
# py-consul: tests/consul_agent.rs drives the embedded Consul agent API with
# a real Consul client library (tests/py_consul/test_agent.py).
PY_CONSUL_VERSION=1.8.0
if ! python3 -c "import consul, importlib.metadata as m; assert m.version('py-consul') == '$PY_CONSUL_VERSION'" 2>/dev/null; then
  python3 -m pip --version >/dev/null 2>&1 || ./scripts/setup.sh python3-pip
  python3 -m pip install --quiet "py-consul==$PY_CONSUL_VERSION"
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Library, binary and integration tests (there are no doc tests).
cargo test --locked --lib --bins --tests 2>&1 | tee "$log"
# The engine-neutral end-to-end suites again on the Pingora engine: both
# engines are one behaviour (tests/common/mod.rs `engine`).
LANEWAY_ENGINE=pingora cargo test --locked \
  --test spine --test h1 --test observability --test health --test entries --test lvs \
  --test proxy_mode --test lane_switch --test consul_agent \
  2>&1 | tee -a "$log"
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "laneway tests: %d passed, %d failed\n", p, f }' "$log"
