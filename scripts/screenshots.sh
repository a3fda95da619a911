#!/usr/bin/env bash
# Renders the dashboard screenshots committed under docs/: laneway on the
# embedded default configuration in a temporary directory, three toy
# upstreams, two lanes, then headless Chromium on each page.
#
#   scripts/screenshots.sh [LANEWAY_BIN]     (default: target/debug/laneway)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh chromium
bin="${1:-target/debug/laneway}"
[ -x "$bin" ] || cargo build --bin laneway
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

cp config/routes.toml "$tmp/routes.toml"
sed -e 's|data_dir = "../data"|data_dir = "data"|' \
    -e 's|listen = \["127.0.0.1:8080"\]|listen = ["127.0.0.1:18080"]|' \
    -e 's|listen = "127.0.0.1:9900"|listen = "127.0.0.1:19900"|' \
    -e 's|port_pool = "20000-20099"|port_pool = "21000-21099"|' \
    config/laneway.toml > "$tmp/laneway.toml"
"$bin" run --config "$tmp/laneway.toml" > "$tmp/laneway.log" 2>&1 &
pids+=($!)
admin=http://127.0.0.1:19900
for _ in $(seq 100); do curl -sf "$admin/healthz" >/dev/null && break; sleep 0.1; done

serve() { # name port: a toy upstream that says who it is
  mkdir -p "$tmp/$1/u"; echo "$1" > "$tmp/$1/u/index.html"
  (cd "$tmp/$1" && exec python3 -m http.server "$2" --bind 127.0.0.1 >/dev/null 2>&1) &
  pids+=($!)
}
serve user-api-stable 19101; serve user-api-v2 19102; serve order-api-stable 19103
reg() { curl -sf -X PUT "$admin/v1/agent/service/register" -d "$1" >/dev/null; }
reg '{"ID":"user-1","Name":"user-api","Address":"127.0.0.1","Port":19101,"Meta":{"version":"stable"}}'
reg '{"ID":"user-2","Name":"user-api","Address":"127.0.0.1","Port":19102,"Meta":{"version":"v2"}}'
reg '{"ID":"order-1","Name":"order-api","Address":"127.0.0.1","Port":19103,"Meta":{"version":"stable"}}'
lane() { curl -sf -X POST "$admin/api/v1/lanes" -d "$1" >/dev/null; }
lane '{"name":"t-42","services":{"user-api":"v2"},"owner":"anna","description":"new sign-up flow","labels":{"team":"growth"},"ttl":"72h"}'
lane '{"name":"t-51","services":{"order-api":"v3"},"owner":"li","description":"order-api v3 (not deployed yet)"}'

shot() { # page file
  chromium --headless=new --no-sandbox --disable-gpu --disable-quic \
    --disable-background-networking --disable-component-update --disable-sync \
    --no-first-run --user-data-dir="$tmp/profile" --hide-scrollbars \
    --window-size=1280,860 --screenshot="docs/$2" "$admin$1" >/dev/null 2>&1
  echo "docs/$2"
}
shot / dashboard-lanes.png
shot /lanes/t-42 dashboard-lane.png
shot /lanes/t-51 dashboard-lane-warnings.png
shot /instances dashboard-instances.png
