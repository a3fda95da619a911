#!/usr/bin/env python3
"""Lane store at scale: lanes created one by one through the admin API, then
a restart with all of them and as many registered instances.

  lanes_scale.py LANEWAY_BIN [LANES] [INSTANCES]
  lanes_scale.py LANEWAY_BIN --restart DIR    (restarts of a run's directory, SIGKILL each time)

Starts LANEWAY_BIN in a fresh data directory (a VIP pool of 16,384 loopback
addresses, entries not bound, access log off), then:
  1. creates LANES lanes (default 10,000) one at a time over one keep-alive
     connection, each acknowledged (200/201) before the next is sent, and
     reports the rate of every block of 1,000 and of the whole run;
  2. registers INSTANCES instances (default 10,000), 8 clients at once;
  3. stops laneway with SIGKILL (the journal is replayed, as after a crash)
     and restarts it, timing exec -> GET /healthz answering 200 (polled
     every 2 ms); then SIGTERM and the same again (a clean stop);
  4. checks that every lane and instance came back.

Prints one JSON line with every figure. Not a pass/fail test: figures
depend on the machine and its disk (fsync).
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Admin:
    def __init__(self, port):
        self.port = port
        self.conn = None

    def call(self, method, path, body=None):
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn = None
                if attempt == 2:
                    raise
        raise RuntimeError("unreachable")


def start(binary, config):
    log = open(os.path.join(os.path.dirname(config), "laneway.log"), "ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary, "run", "-c", config], stdout=log, stderr=log)
    return proc, t0


def wait_ready(port, proc, t0, deadline_s=60):
    while time.perf_counter() - t0 < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"laneway exited with {proc.returncode} during start")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError("laneway did not become ready")


def restart_only(binary, work, runs=3):
    """Times restarts of an existing run's directory (left by a run above)."""
    config = os.path.join(work, "laneway.toml")
    admin_port = int(open(config).read().split('[admin]\nlisten = "127.0.0.1:')[1].split('"')[0])
    out = {"dir": work, "restarts_s": []}
    for _ in range(runs):
        proc, t0 = start(binary, config)
        out["restarts_s"].append(round(wait_ready(admin_port, proc, t0), 3))
        admin = Admin(admin_port)
        for what, path in (("lanes", "/api/v1/lanes"), ("instances", "/api/v1/instances")):
            status, data = admin.call("GET", path)
            out[what] = len(json.loads(data))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    print(json.dumps(out))


def main():
    if len(sys.argv) > 3 and sys.argv[2] == "--restart":
        return restart_only(sys.argv[1], sys.argv[3])
    binary = sys.argv[1]
    lanes = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    instances = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    work = tempfile.mkdtemp(prefix="laneway-lanes-scale-")
    admin_port, data_port = free_port(), free_port()
    config = os.path.join(work, "laneway.toml")
    with open(os.path.join(work, "routes.toml"), "w") as f:
        f.write('[[server]]\nnames = ["shop.example.com"]\n'
                '[[server.location]]\nmatch = "/"\nservice = "svc-0"\n')
    with open(config, "w") as f:
        f.write(f"""
[proxy]
listen = ["127.0.0.1:{data_port}"]
threads = 1
[admin]
listen = "127.0.0.1:{admin_port}"
[lanes]
domain = "lanes.test"
vip_pool = ["127.64.0.0/18"]
auto_lanes = false
[store]
data_dir = "{work}/data"
[routes]
file = "routes.toml"
watch = false
[log]
level = "warn"
access_log = false
""")
    out = {"lanes": lanes, "instances": instances, "dir": work}
    proc, t0 = start(binary, config)
    wait_ready(admin_port, proc, t0)
    admin = Admin(admin_port)
    try:
        blocks = []
        started = block_start = time.perf_counter()
        for i in range(lanes):
            body = json.dumps({"name": f"lane-{i}", "services": {f"svc-{i % 100}": f"v{i}"}})
            status, data = admin.call("POST", "/api/v1/lanes", body)
            if status not in (200, 201):
                raise RuntimeError(f"create lane-{i}: {status} {data[:200]!r}")
            if (i + 1) % 1000 == 0:
                now = time.perf_counter()
                blocks.append(round(1000 / (now - block_start)))
                block_start = now
        elapsed = time.perf_counter() - started
        out["create_per_s"] = round(lanes / elapsed)
        out["create_per_s_by_1000"] = blocks
        out["create_min_block_per_s"] = min(blocks) if blocks else None

        # Instances only set the stage for the restart: 8 clients at once.
        started = time.perf_counter()
        failures = []

        def register(worker):
            client = Admin(admin_port)
            for i in range(worker, instances, 8):
                body = json.dumps({"ID": f"svc-{i % 100}-{i}", "Name": f"svc-{i % 100}",
                                   "Address": "127.0.0.1", "Port": 10000 + i % 50000,
                                   "Meta": {"version": f"v{i}"}})
                status, data = client.call("PUT", "/v1/agent/service/register", body)
                if status != 200:
                    failures.append(f"register {i}: {status} {data[:200]!r}")
                    return

        threads = [threading.Thread(target=register, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise RuntimeError(failures[0])
        out["register_per_s_8_clients"] = round(instances / (time.perf_counter() - started))

        for how, sig in (("sigkill", signal.SIGKILL), ("sigterm", signal.SIGTERM)):
            admin.conn = None
            proc.send_signal(sig)
            proc.wait(timeout=60)
            proc, t0 = start(binary, config)
            out[f"restart_after_{how}_s"] = round(wait_ready(admin_port, proc, t0), 3)
            status, data = admin.call("GET", "/api/v1/lanes")
            listed = json.loads(data)
            n = len(listed["lanes"] if isinstance(listed, dict) else listed)
            status, data = admin.call("GET", "/api/v1/instances")
            listed = json.loads(data)
            m = len(listed["instances"] if isinstance(listed, dict) else listed)
            if n != lanes + 1 or m != instances:
                raise RuntimeError(f"after {how}: {n} lanes (want {lanes + 1}), {m} instances")
        du = subprocess.run(["du", "-sk", f"{work}/data"], capture_output=True, text=True)
        out["data_dir_kib"] = int(du.stdout.split()[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
