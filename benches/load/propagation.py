#!/usr/bin/env python3
"""How long after laneway's register call returns does a lane's traffic reach
the newly registered instance?

  python3 benches/load/propagation.py

Environment (all optional):
  COUNT=200        registrations to measure
  POOL=4           upstream servers that new instances are registered on
  TIMEOUT=5        seconds to wait for one registration to be served
  THREADS=2        laneway [proxy] threads
  SKIP_BUILD=1     use the existing target/release/laneway (LANEWAY_BIN=...)
  KEEP_TMP=1       keep the temp dir (config, data, laneway log)
  OUT=file.md      also write the report there

The script builds laneway, starts it on free loopback ports in a temp dir
(benches/load/templates/laneway.toml and routes.toml), and starts POOL + 1
small HTTP servers (a child process) that answer every request with their own
name. "base" is registered without a version (the baseline). Then, for each
i < COUNT:

  1. POST /api/v1/lanes {"name":"p-i","services":{"api":"vi"}}; a request in
     lane p-i must still be served by "base" (vi has no instance yet: fallback);
  2. PUT /v1/agent/service/register {ID "prop-i", Name "api", Port = pool[i % POOL],
     Meta.version "vi"}; the time of this call is recorded;
  3. from the moment the call returns, GET /api/small with X-Laneway-Lane: p-i
     over a keepalive connection, back to back, until the body names pool[i % POOL];
     that time is the propagation delay (it includes one request round trip).

Instances and lanes accumulate (200 of each at the end), so later snapshots
are bigger. Every process started here is stopped on exit and on Ctrl-C.
"""
import http.client
import http.server
import json
import math
import os
import platform
import shutil
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
HOST = "bj.example.com"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- upstreams

def serve(pairs):
    """Child mode: one HTTP/1.1 keepalive server per NAME:PORT, forever."""

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    def handler_for(name):
        body = name.encode()
        # One write per response, no Nagle: no 40 ms delayed-ACK stalls
        # that would be the upstream's and not laneway's.
        response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\nX-Upstream: %s\r\n\r\n%s"
                    % (len(body), name.encode(), body))

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):
                self.wfile.write(response)

            def log_message(self, *args):
                pass

        return Handler

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    servers = []
    for pair in pairs:
        name, port = pair.split(":")
        srv = Server(("127.0.0.1", int(port)), handler_for(name))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


# ---------------------------------------------------------------- helpers

def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def render(src, dst, **values):
    text = open(src).read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    open(dst, "w").write(text)


class Client:
    """A keepalive HTTP/1.1 client to one port (reconnects when needed)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                self.conn.request(method, path, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, data, resp
            except (ConnectionError, http.client.HTTPException, OSError):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt:
                    raise


def wait_healthy(port, proc, secs=60):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = math.ceil(p / 100 * len(sorted_vals)) - 1  # nearest rank
    return sorted_vals[max(0, min(len(sorted_vals) - 1, k))]


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [f"- nproc: {os.cpu_count()}", f"- CPU: {cpu}",
            f"- kernel: {platform.system()} {platform.release()}",
            f"- python: {platform.python_version()}"]


# ---------------------------------------------------------------- main

def run(procs, tmp):
    count = int(os.environ.get("COUNT", "200"))
    pool = int(os.environ.get("POOL", "4"))
    timeout = float(os.environ.get("TIMEOUT", "5"))
    threads = int(os.environ.get("THREADS", "2"))
    binary = os.environ.get("LANEWAY_BIN", os.path.join(REPO, "target", "release", "laneway"))

    if os.environ.get("SKIP_BUILD") != "1":
        if os.access(os.path.join(REPO, "scripts", "setup.sh"), os.X_OK):
            subprocess.run([os.path.join(REPO, "scripts", "setup.sh")], cwd=REPO, check=True)
        log("building laneway: cargo build --release --bin laneway")
        subprocess.run(["cargo", "build", "--release", "--bin", "laneway"], cwd=REPO, check=True)
    if not os.access(binary, os.X_OK):
        sys.exit(f"no laneway binary at {binary}")

    ports = free_ports(pool + 3)
    base_port, pool_ports, lw_port, admin_port = ports[0], ports[1:pool + 1], ports[-2], ports[-1]
    names = ["base"] + [f"u{k}" for k in range(pool)]

    # Upstream servers (one child process).
    pairs = [f"{n}:{p}" for n, p in zip(names, [base_port] + pool_ports)]
    up = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", *pairs],
                          stdout=subprocess.PIPE, text=True)
    procs.append(("upstreams", up, signal.SIGTERM))
    if up.stdout.readline().strip() != "ready":
        sys.exit("upstream servers did not start")

    # laneway.
    d = os.path.join(tmp, "laneway")
    os.makedirs(d)
    render(os.path.join(HERE, "templates", "laneway.toml"), os.path.join(d, "laneway.toml"),
           PORT=lw_port, ADMIN_PORT=admin_port, THREADS=threads)
    with open(os.path.join(d, "laneway.toml"), "a") as f:
        f.write("access_log = false\n")  # appended to [log], which comes last
    shutil.copy(os.path.join(HERE, "templates", "routes.toml"), os.path.join(d, "routes.toml"))
    cmd = [binary, "run", "--config", os.path.join(d, "laneway.toml")]
    lw_log = open(os.path.join(d, "laneway.log"), "w")
    lw = subprocess.Popen(cmd, stdout=lw_log, stderr=subprocess.STDOUT)
    procs.append(("laneway", lw, signal.SIGINT))
    log(f"started laneway (pid {lw.pid}): {' '.join(cmd)}")
    if not wait_healthy(admin_port, lw):
        sys.exit(f"laneway did not become ready; see {d}/laneway.log")

    admin = Client(admin_port)
    proxy = Client(lw_port)

    def admin_ok(method, path, body):
        status, data, _ = admin.request(method, path, json.dumps(body))
        if status // 100 != 2:
            sys.exit(f"{method} {path} -> {status}: {data[:300]!r}")

    def get(lane):
        status, data, _ = proxy.request("GET", "/api/small",
                                        headers={"Host": HOST, "X-Laneway-Lane": lane})
        return status, data.decode(errors="replace")

    admin_ok("PUT", "/v1/agent/service/register",
             {"ID": "prop-base", "Name": "api", "Address": "127.0.0.1", "Port": base_port})
    status, body = get("baseline")
    if (status, body) != (200, "base"):
        sys.exit(f"baseline request answered {status} {body!r}, want 200 'base'")

    delays, reg_calls, lane_calls, polls, first_hit, stale = [], [], [], [], 0, 0
    seconds = []
    failures = []
    log(f"measuring {count} registrations (pool of {pool} upstreams)")
    for i in range(count):
        lane, version, target = f"p-{i}", f"v{i}", names[1 + i % pool]
        port = pool_ports[i % pool]
        t = time.perf_counter()
        admin_ok("POST", "/api/v1/lanes", {"name": lane, "services": {"api": version}})
        lane_calls.append((time.perf_counter() - t) * 1000)
        status, body = get(lane)
        if (status, body) != (200, "base"):
            failures.append(f"{lane}: before registration answered {status} {body!r}, want 'base'")
            continue
        t = time.perf_counter()
        admin_ok("PUT", "/v1/agent/service/register",
                 {"ID": f"prop-{i}", "Name": "api", "Address": "127.0.0.1", "Port": port,
                  "Meta": {"version": version}})
        t0 = time.perf_counter()
        reg_calls.append((t0 - t) * 1000)
        n = 0
        while True:
            status, body = get(lane)
            n += 1
            now = time.perf_counter()
            if status == 200 and body == target:
                break
            stale += 1
            if now - t0 > timeout:
                failures.append(f"{lane}: not served by {target} after {timeout}s (last {status} {body!r})")
                break
        if status == 200 and body == target:
            delays.append((now - t0) * 1000)
            polls.append(n)
            first_hit += n == 1
            # The next request to the same instance, for comparison (the
            # first one may have had to open the upstream connection).
            t = time.perf_counter()
            status, body = get(lane)
            if status == 200 and body == target:
                seconds.append((time.perf_counter() - t) * 1000)
            else:
                failures.append(f"{lane}: second request answered {status} {body!r}, want {target!r}")
        if (i + 1) % 50 == 0:
            log(f"{i + 1}/{count} done")

    # Cost of one request round trip through laneway, for scale.
    rtts = []
    for _ in range(200):
        t = time.perf_counter()
        get("baseline")
        rtts.append((time.perf_counter() - t) * 1000)

    delays.sort()
    reg_sorted = sorted(reg_calls)
    lane_sorted = sorted(lane_calls)
    rtts.sort()
    lines = []
    lines.append("## Registration propagation (laneway)")
    lines.append("")
    lines.append(f"Measured {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}: {count} registrations, "
                 f"each a new version on one of {pool} upstreams with its own lane; laneway threads = {threads}.")
    lines.append("")
    lines.append("Machine:")
    lines.extend(machine())
    lines.append("")
    lines.append("| measure | n | p50 ms | p99 ms | max ms |")
    lines.append("|---|---:|---:|---:|---:|")

    def row(name, vals):
        if vals:
            lines.append(f"| {name} | {len(vals)} | {pct(vals, 50):.3f} | {pct(vals, 99):.3f} | {vals[-1]:.3f} |")
        else:
            lines.append(f"| {name} | 0 | – | – | – |")

    row("register call returned → first response from the new instance", delays)
    row("the request after that one (same lane, same instance)", sorted(seconds))
    row("register call (PUT /v1/agent/service/register)", reg_sorted)
    row("lane create call (POST /api/v1/lanes)", lane_sorted)
    row("one GET through laneway (reference round trip)", rtts)
    lines.append("")
    lines.append(f"- first request after the register call already served by the new instance: "
                 f"{first_hit}/{len(delays)}")
    lines.append(f"- stale responses (served by the old table after the call returned): {stale}")
    lines.append(f"- polls per registration: max {max(polls) if polls else '–'}")
    first = statistics.median(reg_calls[:20]) if reg_calls else float("nan")
    last = statistics.median(reg_calls[-20:]) if reg_calls else float("nan")
    lines.append(f"- register call median, first 20 vs last 20 registrations: {first:.3f} ms vs {last:.3f} ms "
                 f"(the table grows to {count} instances and {count} lanes)")
    lines.append(f"- failures: {len(failures)}")
    for f in failures[:10]:
        lines.append(f"  - {f}")
    lines.append("")
    lines.append("Command: `python3 benches/load/propagation.py` "
                 f"(COUNT={count} POOL={pool} TIMEOUT={timeout:g} THREADS={threads}); laneway: `{' '.join(cmd)}`")
    report = "\n".join(lines)
    print(report)
    if os.environ.get("OUT"):
        with open(os.environ["OUT"], "w") as f:
            f.write(report + "\n")
    return 1 if failures else 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
        return 0
    procs = []
    tmp = tempfile.mkdtemp(prefix="laneway-propagation.")
    rc = 1

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        rc = run(procs, tmp)
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except SystemExit as e:
        if isinstance(e.code, str):
            log(f"error: {e.code}")
            rc = 1
        else:
            rc = e.code if e.code is not None else 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for name, p, sig in reversed(procs):
            if p.poll() is None:
                p.send_signal(sig)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    log(f"{name} (pid {p.pid}) did not stop; SIGKILL")
                    p.kill()
                    p.wait()
        if os.environ.get("KEEP_TMP") == "1" or rc not in (0,):
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
