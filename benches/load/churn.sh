#!/usr/bin/env bash
# Failed requests and tail latency while the upstream set changes 10 times a
# second under steady load: laneway (registration API, in-memory swap) vs
# nginx (rewrite the upstream include file + nginx -s reload).
#
#   benches/load/churn.sh
#
# Environment (all optional):
#   DURATION=30s    length of each wrk run (whole seconds, "30" or "30s")
#   RATE=10         upstream-set changes per second
#   CONNS=50        wrk connections (wrk -t2, keepalive, GET /api/small)
#   CONTROL=1       also run each target once without changes (0: skip)
#   THREADS=2       laneway [proxy] threads = nginx worker_processes
#   NGINX_ONLY=1    skip laneway (no build)
#   SKIP_BUILD=1    use the existing target/release/laneway (LANEWAY_BIN=...)
#   OUT=file.md     also write the report there
#   KEEP_TMP=1      keep the temp dir
#
# Each change moves service api's baseline between two upstream ports ("a"
# and "b", one upstream nginx): laneway registers the instance on the other
# port, then deregisters the old one; nginx gets its upstream include file
# rewritten and is reloaded. Traffic is baseline only (no lane header).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
install_traps

DURATION="${DURATION:-30s}"
SECS="${DURATION%s}"
[[ "$SECS" =~ ^[0-9]+$ ]] && [ "$SECS" -ge 3 ] || die "DURATION must be whole seconds >= 3 (got $DURATION)"
RATE="${RATE:-10}"
CONNS="${CONNS:-50}"
CONTROL="${CONTROL:-1}"
THREADS="${THREADS:-2}"
NGINX_ONLY="${NGINX_ONLY:-0}"
LW_HOST="bj.example.com"
export LW_HOST

ensure_tools
if [ "$NGINX_ONLY" != 1 ]; then
  build_laneway || die "laneway did not build (run with NGINX_ONLY=1 to measure nginx only)"
fi

mk_tmp laneway-churn
mapfile -t P < <(free_ports 6)
UP_A="${P[0]}" UP_B="${P[1]}" UP_LANE="${P[2]}" NGX_PORT="${P[3]}" LW_PORT="${P[4]}" LW_ADMIN="${P[5]}"

start_upstream a="$UP_A" b="$UP_B" lane="$UP_LANE"
start_proxy_nginx "$NGX_PORT" "$THREADS" "$UP_A" "$UP_LANE"
expect_route "http://127.0.0.1:$NGX_PORT/api/small" "$LW_HOST" "" a || die "nginx: baseline not on a"

TARGETS=(nginx)
if [ "$NGINX_ONLY" != 1 ]; then
  start_laneway "$LW_PORT" "$LW_ADMIN" "$THREADS"
  admin PUT "$LW_ADMIN" /v1/agent/service/register \
    "{\"ID\":\"api-a\",\"Name\":\"api\",\"Address\":\"127.0.0.1\",\"Port\":$UP_A}"
  expect_route "http://127.0.0.1:$LW_PORT/api/small" "$LW_HOST" "" a || die "laneway: baseline not on a"
  TARGETS+=(laneway)
fi

RESULTS="$LW_TMP/results.jsonl"
: >"$RESULTS"
COMMANDS=()

port_of() { if [ "$1" = nginx ]; then echo "$NGX_PORT"; else echo "$LW_PORT"; fi; }

# one_run TARGET churn|control
one_run() {
  local t="$1" mode="$2" port out json driver="{}" wrk_pid wrk_rc=0
  port="$(port_of "$t")"
  out="$LW_TMP/wrk-$t-$mode.txt"
  local wrk_cmd=("$WRK" -t2 -c"$CONNS" -d"${SECS}s" --timeout 10s --latency
    -s "$LOAD_DIR/wrk-lane.lua" "http://127.0.0.1:$port/api/small")
  COMMANDS+=("$t $mode: LW_HOST=$LW_HOST LW_ALTERNATE=0 ${wrk_cmd[*]}")
  log "$t ($mode): wrk ${SECS}s, $CONNS connections"
  LW_ALTERNATE=0 "${wrk_cmd[@]}" >"$out" 2>&1 &
  wrk_pid=$!
  LW_PIDS+=("$wrk_pid"); LW_PID_NAMES+=("wrk")
  if [ "$mode" = churn ]; then
    sleep 0.5
    local drv=(python3 "$LOAD_DIR/churn_driver.py")
    if [ "$t" = nginx ]; then
      drv+=(nginx "$NGINX" "$LW_TMP/proxy.nginx.conf" "$LW_TMP/upstreams.conf" "$UP_LANE" "$UP_A" "$UP_B")
    else
      drv+=(laneway "$LW_ADMIN" "$UP_A" "$UP_B")
    fi
    drv+=("$((SECS - 1))" "$RATE")
    COMMANDS+=("$t $mode (during wrk): ${drv[*]}")
    driver="$("${drv[@]}")" || { log "churn driver failed: $driver"; die "churn driver for $t failed"; }
    log "$t driver: $driver"
  fi
  wait "$wrk_pid" || wrk_rc=$?
  [ "$wrk_rc" -eq 0 ] || { cat "$out" >&2; die "wrk failed for $t"; }
  json="$(grep '^LWRESULT ' "$out" | sed 's/^LWRESULT //' | tail -n1)"
  [ -n "$json" ] || { cat "$out" >&2; die "no LWRESULT from wrk"; }
  python3 "$LOAD_DIR/report.py" annotate "$json" target="\"$t ($mode)\"" driver="$driver" >>"$RESULTS"
  log "$t ($mode): $(python3 "$LOAD_DIR/report.py" line "$json")"
  if [ "$mode" = churn ]; then
    # After the last change every request must reach the final upstream only.
    local final i
    final="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["final"])' "$driver")"
    sleep 0.5   # nginx -s reload returns before the new workers serve
    for i in 1 2 3 4; do
      expect_route "http://127.0.0.1:$port/api/small" "$LW_HOST" "" "$final" \
        || die "$t: after churn, baseline should be served by $final only"
    done
    log "$t: after churn, baseline is served by upstream $final"
  fi
}

for t in "${TARGETS[@]}"; do
  [ "$CONTROL" = 1 ] && one_run "$t" control
  one_run "$t" churn
done

report() {
  echo "## Upstream churn under load: laneway vs nginx reload"
  echo
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ). wrk -t2 -c$CONNS for ${SECS}s per run (GET /api/small, keepalive);"
  echo "during the churn runs the baseline upstream set of service api changes $RATE times a second"
  echo "(a -> b -> a ...). laneway threads = nginx worker_processes = $THREADS."
  echo
  echo "Machine:"
  machine_description
  echo
  python3 "$LOAD_DIR/report.py" churn "$RESULTS"
  echo
  echo "failed total = non-2xx/3xx responses + socket errors. wrk counts a connection the server"
  echo "closes while a request is outstanding as a read error (wrk then reconnects and goes on)."
  echo "Change call = laneway: register + deregister round trips; nginx: file rewrite + nginx -s reload"
  echo "(which returns before the new workers serve)."
  echo
  echo "Commands:"
  echo
  echo '```'
  echo "upstream:         $NGINX -e ... -c $LW_TMP/upstream.nginx.conf   (a=$UP_A b=$UP_B lane=$UP_LANE)"
  echo "nginx under test: $NGINX -e ... -c $LW_TMP/proxy.nginx.conf   (port $NGX_PORT)"
  [ "$NGINX_ONLY" = 1 ] || echo "laneway:          $LANEWAY_BIN run --config $LW_TMP/laneway/laneway.toml   (port $LW_PORT, admin $LW_ADMIN)"
  printf '%s\n' "${COMMANDS[@]}"
  echo '```'
}

if [ -n "${OUT:-}" ]; then
  report | tee "$OUT"
else
  report
fi
