# Shared helpers for benches/load/*.sh (sourced, not run).
#
# Every process started through start_bg is recorded and stopped by
# lw_cleanup, which the scripts install as their EXIT/INT/TERM trap.
# Addresses: 127.0.0.1 only. Ports: free ephemeral ports picked at run time.

LOAD_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$LOAD_DIR/../.." && pwd)"
TEMPLATES="$LOAD_DIR/templates"
NGINX="${NGINX:-/usr/sbin/nginx}"
WRK="${WRK:-wrk}"
LANEWAY_BIN="${LANEWAY_BIN:-$REPO_DIR/target/release/laneway}"

LW_PIDS=()        # pids started by this script, in start order
LW_PID_NAMES=()   # what each one is (for messages)
LW_TMP=""
LW_CLEANED=0

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Installs nginx, wrk, curl, python3 when missing (apt-get; sudo only when not root).
ensure_tools() {
  local need=()
  [ -x "$NGINX" ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
  command -v "$WRK" >/dev/null 2>&1 || need+=(wrk)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  if ((${#need[@]})); then
    log "installing ${need[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${need[@]}"
  fi
  [ -x "$NGINX" ] || NGINX="$(command -v nginx)"
  command -v "$WRK" >/dev/null 2>&1 || die "wrk not found after install"
}

# Builds laneway (unless SKIP_BUILD=1) and checks the binary exists.
build_laneway() {
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building laneway: cargo build --release --bin laneway"
    if [ -x "$REPO_DIR/scripts/setup.sh" ]; then
      (cd "$REPO_DIR" && ./scripts/setup.sh) || return 1
    fi
    (cd "$REPO_DIR" && cargo build --release --bin laneway) || return 1
  fi
  [ -x "$LANEWAY_BIN" ] || { log "no laneway binary at $LANEWAY_BIN"; return 1; }
}

# mk_tmp PREFIX: a private temp dir (world-readable so that nginx workers,
# which run as 'nobody' when nginx is started as root, can read the files).
mk_tmp() {
  LW_TMP="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  chmod 755 "$LW_TMP"
}

# free_ports N: prints N distinct free TCP ports on 127.0.0.1, one per line.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
PY
}

# render TEMPLATE OUT KEY=VALUE...: replaces @KEY@ with VALUE.
render() {
  python3 - "$@" <<'PY'
import sys
src, dst, *pairs = sys.argv[1:]
text = open(src).read()
for p in pairs:
    k, v = p.split("=", 1)
    text = text.replace("@" + k + "@", v)
if "@" in text:
    import re
    left = set(re.findall(r"@[A-Z_]+@", text))
    if left:
        sys.exit(f"render {src}: unreplaced {sorted(left)}")
open(dst, "w").write(text)
PY
}

# start_bg NAME LOGFILE CMD...: starts CMD in the background, records its pid.
start_bg() {
  local name="$1" logf="$2"; shift 2
  "$@" >"$logf" 2>&1 &
  LW_PIDS+=("$!")
  LW_PID_NAMES+=("$name")
  log "started $name (pid $!): $*"
}

# stop_pid PID NAME [SIGNAL]: signal, wait up to 10 s, then SIGKILL.
stop_pid() {
  local pid="$1" name="$2" sig="${3:-TERM}" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) still running after SIG$sig; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# Stops everything start_bg started (newest first), removes the temp dir
# unless KEEP_TMP=1. Idempotent; installed as the trap.
lw_cleanup() {
  local rc=$?
  [ "$LW_CLEANED" = 1 ] && return 0
  LW_CLEANED=1
  trap - EXIT INT TERM
  local i
  for ((i = ${#LW_PIDS[@]} - 1; i >= 0; i--)); do
    local name="${LW_PID_NAMES[$i]}" sig=TERM
    # laneway: SIGINT is Pingora's fast stop (SIGTERM waits for the drain period).
    [[ "$name" == laneway* ]] && sig=INT
    stop_pid "${LW_PIDS[$i]}" "$name" "$sig"
  done
  if [ -n "$LW_TMP" ] && [ -d "$LW_TMP" ]; then
    if [ "${KEEP_TMP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
      log "kept $LW_TMP (logs and configs)"
    else
      rm -rf "$LW_TMP"
    fi
  fi
  return "$rc"
}

install_traps() {
  trap lw_cleanup EXIT
  trap 'log "interrupted"; exit 130' INT
  trap 'log "terminated"; exit 143' TERM
}

# wait_http URL [SECONDS] [PID] [EXTRA CURL ARGS...]: waits for a 2xx; fails
# early when PID has exited.
wait_http() {
  local url="$1" secs="${2:-30}" pid="${3:-}" i
  shift 3 || shift $#
  for ((i = 0; i < secs * 20; i++)); do
    if curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null; then return 0; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      log "process $pid exited while waiting for $url"
      return 1
    fi
    sleep 0.05
  done
  log "timeout waiting for $url"
  return 1
}

# start_upstream NAME=PORT...: one nginx (1 worker) with one server block per
# port, each answering /api/small, /api/big (64 KiB), /whoami = NAME.
start_upstream() {
  mkdir -p "$LW_TMP/www/api" "$LW_TMP/upstream-tmp"
  head -c 65536 /dev/urandom >"$LW_TMP/www/api/big"
  chmod -R a+rX "$LW_TMP/www"
  local servers="" pair
  for pair in "$@"; do
    render "$TEMPLATES/upstream-server.nginx.conf" "$LW_TMP/srv.part" \
      DIR="$LW_TMP" NAME="${pair%%=*}" PORT="${pair#*=}"
    servers+="$(cat "$LW_TMP/srv.part")"$'\n'
  done
  rm -f "$LW_TMP/srv.part"
  render "$TEMPLATES/upstream.nginx.conf" "$LW_TMP/upstream.nginx.conf" \
    DIR="$LW_TMP" SERVERS="$servers"
  "$NGINX" -t -q -e "$LW_TMP/upstream-error.log" -c "$LW_TMP/upstream.nginx.conf" \
    || die "upstream nginx config rejected (see $LW_TMP/upstream-error.log)"
  start_bg "upstream-nginx" "$LW_TMP/upstream.out" \
    "$NGINX" -e "$LW_TMP/upstream-error.log" -c "$LW_TMP/upstream.nginx.conf"
  UPSTREAM_PID="${LW_PIDS[-1]}"
  for pair in "$@"; do
    wait_http "http://127.0.0.1:${pair#*=}/whoami" 10 "$UPSTREAM_PID" || die "upstream ${pair%%=*} did not start"
  done
}

# write_upstreams_conf BASELINE_PORT LANE_PORT: the nginx-under-test's upstream include.
write_upstreams_conf() {
  render "$TEMPLATES/upstreams.conf" "$LW_TMP/upstreams.conf.new" \
    BASELINE_PORT="$1" LANE_PORT="$2"
  mv -f "$LW_TMP/upstreams.conf.new" "$LW_TMP/upstreams.conf"
}

# start_proxy_nginx PORT WORKERS BASELINE_PORT LANE_PORT [NAME] [ACCESS_LOG]
#   NAME (default proxy): the files $LW_TMP/NAME.nginx.conf, NAME.pid,
#   NAME-error.log and NAME-tmp/, so that two instances can run side by side
#   ACCESS_LOG (default off): the arguments of nginx's access_log directive
start_proxy_nginx() {
  local name="${5:-proxy}" access="${6:-off}"
  mkdir -p "$LW_TMP/$name-tmp"
  write_upstreams_conf "$3" "$4"
  render "$TEMPLATES/proxy.nginx.conf" "$LW_TMP/$name.nginx.conf" \
    DIR="$LW_TMP" PORT="$1" WORKERS="$2" NAME="$name" ACCESS_LOG="$access"
  "$NGINX" -t -q -e "$LW_TMP/$name-error.log" -c "$LW_TMP/$name.nginx.conf" \
    || die "nginx-under-test config rejected (see $LW_TMP/$name-error.log)"
  start_bg "nginx-under-test ($name)" "$LW_TMP/$name.out" \
    "$NGINX" -e "$LW_TMP/$name-error.log" -c "$LW_TMP/$name.nginx.conf"
  PROXY_NGINX_PID="${LW_PIDS[-1]}"
  wait_http "http://127.0.0.1:$1/" 10 "$PROXY_NGINX_PID" -H "Host: www.example.com" \
    || die "nginx under test did not start"
}

# reload_proxy_nginx: the classic way (nginx -s reload with the same -c).
reload_proxy_nginx() {
  "$NGINX" -e "$LW_TMP/proxy-error.log" -c "$LW_TMP/proxy.nginx.conf" -s reload
}

# start_laneway PORT ADMIN_PORT THREADS [LOG_KEYS] [NAME]: config + routes in
# $LW_TMP/NAME/ (default laneway/); LOG_KEYS (default "access_log = false")
# are appended to the [log] section, e.g. 'access_file = "access.log"'.
start_laneway() {
  local name="${5:-laneway}"
  local d="$LW_TMP/$name"
  mkdir -p "$d"
  render "$TEMPLATES/laneway.toml" "$d/laneway.toml" PORT="$1" ADMIN_PORT="$2" THREADS="$3"
  printf '%s\n' "${4:-access_log = false}" >>"$d/laneway.toml"
  cp "$TEMPLATES/routes.toml" "$d/routes.toml"
  start_bg "$name" "$d/laneway.log" "$LANEWAY_BIN" run --config "$d/laneway.toml"
  LANEWAY_PID="${LW_PIDS[-1]}"
  # ready: the admin API answers and the data listener serves its health path
  { wait_http "http://127.0.0.1:$2/healthz" 60 "$LANEWAY_PID" \
    && wait_http "http://127.0.0.1:$1/__laneway/health" 60 "$LANEWAY_PID"; } \
    || { tail -n 30 "$d/laneway.log" >&2 || true; die "$name did not become ready"; }
}

# admin METHOD ADMIN_PORT PATH [JSON]: calls the admin API, fails on non-2xx.
admin() {
  local method="$1" port="$2" path="$3" body="${4:-}" code
  local args=(-sS --max-time 10 -o "$LW_TMP/admin.last" -w '%{http_code}' -X "$method")
  [ -z "$body" ] || args+=(-H 'Content-Type: application/json' --data "$body")
  code="$(curl "${args[@]}" "http://127.0.0.1:$port$path")" || return 1
  if [[ "$code" != 2* ]]; then
    log "admin $method $path -> $code: $(cat "$LW_TMP/admin.last")"
    return 1
  fi
}

# expect_route URL HOST LANE WANT_UPSTREAM [WANT_BYTES]: checks that a request
# is answered 200 by the expected upstream (X-Upstream header) and size.
expect_route() {
  local url="$1" host="$2" lane="$3" want="$4" bytes="${5:-}"
  local hdr got size
  hdr="$LW_TMP/check.headers"
  local args=(-sS --max-time 5 -o /dev/null -D "$hdr" -w '%{size_download}' -H "Host: $host")
  [ -z "$lane" ] || args+=(-H "X-Laneway-Lane: $lane")
  size="$(curl "${args[@]}" "$url")" || return 1
  got="$(tr -d '\r' <"$hdr" | awk -F': ' 'tolower($1)=="x-upstream"{print $2}')"
  local status
  status="$(head -n1 "$hdr" | awk '{print $2}')"
  if [ "$status" != 200 ] || [ "$got" != "$want" ]; then
    log "route check failed: $url Host=$host lane=${lane:-none}: status $status upstream '${got}' (want 200 '$want')"
    return 1
  fi
  if [ -n "$bytes" ] && [ "$size" != "$bytes" ]; then
    log "route check failed: $url body $size bytes, want $bytes"
    return 1
  fi
}

# run_wrk OUTFILE CONNS DURATION URL [ALTERNATE]: one wrk run (-t2, --latency,
# wrk-lane.lua); wrk's full output goes to OUTFILE, the LWRESULT json to stdout.
run_wrk() {
  local out="$1" conns="$2" dur="$3" url="$4" alt="${5:-1}"
  LW_HOST="${LW_HOST:-bj.example.com}" LW_ALTERNATE="$alt" \
    "$WRK" -t"${WRK_THREADS:-2}" -c"$conns" -d"$dur" --timeout 10s --latency \
    -s "$LOAD_DIR/wrk-lane.lua" "$url" >"$out" 2>&1 \
    || { cat "$out" >&2; die "wrk failed: $url"; }
  grep '^LWRESULT ' "$out" | sed 's/^LWRESULT //' | tail -n1 | grep . \
    || { cat "$out" >&2; die "no LWRESULT in wrk output"; }
}

machine_description() {
  echo "- nproc: $(nproc)"
  echo "- CPU: $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
  echo "- kernel: $(uname -sr)"
  echo "- memory: $(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "- nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
  echo "- wrk: $("$WRK" -v 2>&1 | head -n1 | awk '{print $1, $2}')"
}
