#!/usr/bin/env bash
# Throughput and latency of laneway vs nginx on this machine, in one run.
#
#   benches/load/compare.sh
#
# Environment (all optional):
#   DURATION=10s    length of each measured wrk run
#   ROUNDS=3        runs per case and target (direct, nginx, laneway alternate)
#   WARMUP=3s       one unmeasured wrk run per target before the rounds
#   THREADS=2       laneway [proxy] threads = nginx worker_processes
#   WRK_THREADS=2   wrk -t
#   NGINX_ONLY=1    skip laneway (no build): direct and nginx only
#   ACCESS_LOGS=0   skip the logs-on targets (nginx-log, laneway-log)
#   SKIP_BUILD=1    use the existing target/release/laneway (LANEWAY_BIN=...)
#   OUT=file.md     also write the report there
#   KEEP_TMP=1      keep the temp dir (configs, logs, raw wrk output)
#
# One upstream nginx (1 worker) listens on two ports: "a" (baseline instance)
# and "b" (the v2 instance that lane t-1 uses). The nginx under test and
# laneway carry the same host/path rules; every wrk run uses wrk-lane.lua,
# which alternates baseline requests and X-Laneway-Lane: t-1 requests.
#
# Each proxy runs twice, side by side: with its access log off ("nginx",
# "laneway") and on ("nginx-log": access_log to a file in the temp dir, in
# laneway's fields; "laneway-log": laneway's default text access log to
# [log] access_file in the temp dir). After every run the log file's lines
# are counted against wrk's requests and the file is emptied.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
install_traps

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-3s}"
THREADS="${THREADS:-2}"
NGINX_ONLY="${NGINX_ONLY:-0}"
ACCESS_LOGS="${ACCESS_LOGS:-1}"
LW_HOST="bj.example.com"   # matches the wildcard server name *.example.com
export LW_HOST

ensure_tools
if [ "$NGINX_ONLY" != 1 ]; then
  build_laneway || die "laneway did not build (run with NGINX_ONLY=1 to measure direct and nginx only)"
fi

mk_tmp laneway-compare
mapfile -t P < <(free_ports 8)
UP_A="${P[0]}" UP_B="${P[1]}" NGX_PORT="${P[2]}" LW_PORT="${P[3]}" LW_ADMIN="${P[4]}"
NGX_LOG_PORT="${P[5]}" LW_LOG_PORT="${P[6]}" LW_LOG_ADMIN="${P[7]}"

start_upstream a="$UP_A" b="$UP_B"
start_proxy_nginx "$NGX_PORT" "$THREADS" "$UP_A" "$UP_B"

TARGETS=(direct nginx)
declare -A URL_BASE=(
  [direct]="http://127.0.0.1:$UP_A"
  [nginx]="http://127.0.0.1:$NGX_PORT"
)
declare -A CPU_PID=([direct]="" [nginx]="$PROXY_NGINX_PID")
declare -A ACCESS_FILE=()

# register_instances ADMIN_PORT: the instances and lane every laneway serves.
register_instances() {
  admin PUT "$1" /v1/agent/service/register \
    "{\"ID\":\"api-base\",\"Name\":\"api\",\"Address\":\"127.0.0.1\",\"Port\":$UP_A}"
  admin PUT "$1" /v1/agent/service/register \
    "{\"ID\":\"api-v2\",\"Name\":\"api\",\"Address\":\"127.0.0.1\",\"Port\":$UP_B,\"Meta\":{\"version\":\"v2\"}}"
  admin PUT "$1" /v1/agent/service/register \
    "{\"ID\":\"static-base\",\"Name\":\"static\",\"Address\":\"127.0.0.1\",\"Port\":$UP_A}"
  admin PUT "$1" /v1/agent/service/register \
    "{\"ID\":\"legacy-base\",\"Name\":\"legacy\",\"Address\":\"127.0.0.1\",\"Port\":$UP_A}"
  admin POST "$1" /api/v1/lanes '{"name":"t-1","services":{"api":"v2"}}'
}

if [ "$NGINX_ONLY" != 1 ]; then
  start_laneway "$LW_PORT" "$LW_ADMIN" "$THREADS"
  register_instances "$LW_ADMIN"
  TARGETS+=(laneway)
  URL_BASE[laneway]="http://127.0.0.1:$LW_PORT"
  CPU_PID[laneway]="$LANEWAY_PID"
fi

if [ "$ACCESS_LOGS" = 1 ]; then
  start_proxy_nginx "$NGX_LOG_PORT" "$THREADS" "$UP_A" "$UP_B" proxy-log \
    "$LW_TMP/nginx-access.log laneway"
  TARGETS+=(nginx-log)
  URL_BASE[nginx-log]="http://127.0.0.1:$NGX_LOG_PORT"
  CPU_PID[nginx-log]="$PROXY_NGINX_PID"
  ACCESS_FILE[nginx-log]="$LW_TMP/nginx-access.log"
  if [ "$NGINX_ONLY" != 1 ]; then
    # laneway's default access log (text), to a file beside nginx's (not in
    # laneway's config directory, whose watcher would wake for every write)
    start_laneway "$LW_LOG_PORT" "$LW_LOG_ADMIN" "$THREADS" \
      "access_file = \"$LW_TMP/laneway-access.log\"" laneway-log
    register_instances "$LW_LOG_ADMIN"
    TARGETS+=(laneway-log)
    URL_BASE[laneway-log]="http://127.0.0.1:$LW_LOG_PORT"
    CPU_PID[laneway-log]="$LANEWAY_PID"
    ACCESS_FILE[laneway-log]="$LW_TMP/laneway-access.log"
  fi
fi

expect_status() { # url host want-status
  local got
  got="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -H "Host: $2" "$1")" || return 1
  [ "$got" = "$3" ] || { log "$1 Host=$2: status $got, want $3"; return 1; }
}

# Both proxies must route the same way before anything is measured.
for t in "${TARGETS[@]}"; do
  [ "$t" = direct ] && continue
  u="${URL_BASE[$t]}"
  expect_route "$u/api/small" "$LW_HOST" "" a || die "$t: baseline /api/small not served by upstream a"
  expect_route "$u/api/small" "$LW_HOST" t-1 b || die "$t: lane t-1 /api/small not served by upstream b"
  expect_route "$u/api/big" "$LW_HOST" "" a 65536 || die "$t: baseline /api/big"
  expect_route "$u/api/big" "$LW_HOST" t-1 b 65536 || die "$t: lane /api/big"
  expect_status "$u/" "$LW_HOST" 200 || die "$t: = / should return 200"
  expect_status "$u/nowhere" "$LW_HOST" 404 || die "$t: /nowhere should be 404"
  expect_status "$u/" admin.example.com 403 || die "$t: admin.example.com should be 403"
  expect_status "$u/api/small" www.example.com 200 || die "$t: exact server name"
  expect_status "$u/api/small" sh.example.org 200 || die "$t: regex server name"
  log "$t routes baseline -> a, lane t-1 -> b"
done

# case name, path, connections
CASES=("small-c50 /api/small 50" "small-c200 /api/small 200" "big64k-c50 /api/big 50")
RESULTS="$LW_TMP/results.jsonl"
: >"$RESULTS"
COMMANDS=()

cpu_ticks() { if [ -n "$1" ]; then python3 "$LOAD_DIR/report.py" cputicks "$1"; else echo ""; fi; }

# access_lines FILE: lines in an access log, which is then emptied (both
# proxies append, so they go on at the new end). laneway writes its lines
# within 10 ms of the request; the pause covers that.
access_lines() {
  sleep 0.2
  local n
  n="$(wc -l <"$1" 2>/dev/null || echo 0)"
  : >"$1"
  echo "$n"
}

measure() { # round case path conns target duration record
  local round="$1" case="$2" path="$3" conns="$4" t="$5" dur="$6" record="$7"
  local url="${URL_BASE[$t]}$path" out="$LW_TMP/wrk-$case-$t-r$round.txt" json before after cpu
  local lines="null" file="${ACCESS_FILE[$t]:-}"
  [ -z "$file" ] || : >"$file"
  before="$(cpu_ticks "${CPU_PID[$t]}")"
  json="$(run_wrk "$out" "$conns" "$dur" "$url" 1)"
  after="$(cpu_ticks "${CPU_PID[$t]}")"
  cpu="null"
  [ -z "$before" ] || cpu=$((after - before))
  [ -z "$file" ] || lines="$(access_lines "$file")"
  if [ "$record" = 1 ]; then
    python3 "$LOAD_DIR/report.py" annotate "$json" case="\"$case\"" target="\"$t\"" \
      round="$round" cpu_ticks="$cpu" log_lines="$lines" >>"$RESULTS"
  fi
  log "$case $t round $round: $(python3 "$LOAD_DIR/report.py" line "$json")${file:+, $lines access lines}"
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for t in "${TARGETS[@]}"; do
  log "warm-up $t ($WARMUP)"
  measure 0 warmup /api/small 50 "$t" "$WARMUP" 0
done

for ((round = 1; round <= ROUNDS; round++)); do
  for c in "${CASES[@]}"; do
    read -r case path conns <<<"$c"
    for t in "${TARGETS[@]}"; do
      measure "$round" "$case" "$path" "$conns" "$t" "$DURATION" 1
    done
  done
done

for c in "${CASES[@]}"; do
  read -r case path conns <<<"$c"
  for t in "${TARGETS[@]}"; do
    COMMANDS+=("$case / $t: LW_HOST=$LW_HOST LW_ALTERNATE=1 $WRK -t${WRK_THREADS:-2} -c$conns -d$DURATION --timeout 10s --latency -s benches/load/wrk-lane.lua ${URL_BASE[$t]}$path")
  done
done

report() {
  echo "## laneway vs nginx: throughput and latency"
  echo
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ); medians of $ROUNDS rounds of $DURATION per case and target;"
  echo "runs alternate ${TARGETS[*]} within each round. Half of the requests carry"
  echo "X-Laneway-Lane: t-1 (lane upstream b), half none (baseline upstream a). Host: $LW_HOST."
  echo "laneway threads = nginx worker_processes = $THREADS; wrk -t${WRK_THREADS:-2}; nothing pinned."
  echo
  echo "Machine:"
  machine_description
  echo "- load average (1, 5, 15 min) before the runs: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
  if [ "$NGINX_ONLY" != 1 ]; then
    echo "- laneway: $LANEWAY_BIN ($(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo 'no commit'))"
  else
    echo "- laneway: not measured (NGINX_ONLY=1)"
  fi
  echo
  python3 "$LOAD_DIR/report.py" compare "$RESULTS"
  echo
  echo "errors = non-2xx/3xx responses + socket errors (connect, read, write, timeout), summed over rounds."
  echo "proxy CPU = user+system CPU of the proxy's process tree during the run, per 1000 requests."
  if [ "$ACCESS_LOGS" = 1 ]; then
    echo "nginx-log / laneway-log: the access log on, to a file in the temp dir (nginx: access_log with"
    echo "laneway's fields, one write per request; laneway: its default text line to [log] access_file);"
    echo "the ratios of a -log row compare it with the other proxy's -log row. log lines/req = lines"
    echo "in the file after the run / requests wrk counted (wrk does not count requests still in flight"
    echo "when it stops, so a little over 1 is expected)."
    if [ -n "${ACCESS_FILE[laneway-log]:-}" ]; then
      echo "laneway-log $(curl -sS --max-time 5 "http://127.0.0.1:$LW_LOG_ADMIN/metrics" \
        | grep '^laneway_access_log_dropped_total' || echo 'laneway_access_log_dropped_total: not read')"
    fi
  fi
  echo
  echo "Commands:"
  echo
  echo '```'
  echo "upstream:         $NGINX -e ... -c $LW_TMP/upstream.nginx.conf   (ports a=$UP_A b=$UP_B)"
  echo "nginx under test: $NGINX -e ... -c $LW_TMP/proxy.nginx.conf   (port $NGX_PORT)"
  [ "$NGINX_ONLY" = 1 ] || echo "laneway:          $LANEWAY_BIN run --config $LW_TMP/laneway/laneway.toml   (port $LW_PORT, admin $LW_ADMIN)"
  if [ "$ACCESS_LOGS" = 1 ]; then
    echo "nginx-log:        $NGINX -e ... -c $LW_TMP/proxy-log.nginx.conf   (port $NGX_LOG_PORT)"
    [ "$NGINX_ONLY" = 1 ] || echo "laneway-log:      $LANEWAY_BIN run --config $LW_TMP/laneway-log/laneway.toml   (port $LW_LOG_PORT, admin $LW_LOG_ADMIN)"
  fi
  printf '%s\n' "${COMMANDS[@]}"
  echo '```'
}

if [ -n "${OUT:-}" ]; then
  report | tee "$OUT"
else
  report
fi
