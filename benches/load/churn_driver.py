#!/usr/bin/env python3
"""Changes the baseline upstream set of one proxy RATE times per second.

  churn_driver.py laneway ADMIN_PORT PORT_A PORT_B SECONDS RATE
  churn_driver.py nginx   NGINX_BIN PROXY_CONF UPSTREAMS_CONF LANE_PORT PORT_A PORT_B SECONDS RATE

Each change moves service api's baseline from the instance on one port to the
instance on the other (a -> b -> a ...), so the set really changes:
  laneway: register the new instance, then deregister the old one
           (make-before-break, as deploy tooling does through Consul's API);
  nginx:   rewrite the upstream include file and run `nginx -s reload`.
Changes are scheduled on a fixed 1/RATE grid; a change that takes longer
delays the next one (the achieved rate is reported).

Prints one JSON line: changes, failures, rate, call_p50_ms, call_p99_ms,
call_max_ms, final (the upstream name that should now serve: "a" or "b").
"""
import http.client
import json
import os
import statistics
import subprocess
import sys
import time


class Laneway:
    def __init__(self, admin_port, port_a, port_b):
        self.admin_port = admin_port
        self.ports = {"a": port_a, "b": port_b}
        self.conn = None

    def _call(self, method, path, body=None):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
                self.conn.request(method, path, body=body,
                                  headers={"Content-Type": "application/json"} if body else {})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.status // 100 != 2:
                    raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
                return
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn = None
                if attempt:
                    raise

    def change(self, old, new):
        body = json.dumps({"ID": f"api-{new}", "Name": "api", "Address": "127.0.0.1",
                           "Port": self.ports[new]})
        self._call("PUT", "/v1/agent/service/register", body)
        self._call("PUT", f"/v1/agent/service/deregister/api-{old}")


class Nginx:
    def __init__(self, nginx_bin, proxy_conf, upstreams_conf, lane_port, port_a, port_b):
        self.nginx_bin = nginx_bin
        self.proxy_conf = proxy_conf
        self.upstreams_conf = upstreams_conf
        self.lane_port = lane_port
        self.ports = {"a": port_a, "b": port_b}
        self.template = open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "templates", "upstreams.conf")).read()
        self.error_log = os.path.join(os.path.dirname(proxy_conf), "proxy-error.log")

    def change(self, old, new):
        text = (self.template.replace("@BASELINE_PORT@", str(self.ports[new]))
                .replace("@LANE_PORT@", str(self.lane_port)))
        tmp = self.upstreams_conf + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.upstreams_conf)
        subprocess.run([self.nginx_bin, "-e", self.error_log, "-c", self.proxy_conf, "-s", "reload"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    if args[0] == "laneway" and len(args) == 6:
        target = Laneway(int(args[1]), int(args[2]), int(args[3]))
        seconds, rate = float(args[4]), float(args[5])
    elif args[0] == "nginx" and len(args) == 9:
        target = Nginx(args[1], args[2], args[3], int(args[4]), int(args[5]), int(args[6]))
        seconds, rate = float(args[7]), float(args[8])
    else:
        sys.exit(__doc__)

    cur = "a"
    calls = []
    failures = 0
    errors = []
    start = time.monotonic()
    k = 0
    while True:
        due = start + k / rate
        now = time.monotonic()
        if due - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        new = "b" if cur == "a" else "a"
        t0 = time.monotonic()
        try:
            target.change(cur, new)
            cur = new
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures += 1
            if len(errors) < 5:
                errors.append(str(e))
        calls.append((time.monotonic() - t0) * 1000)
        k += 1
    elapsed = time.monotonic() - start
    calls.sort()
    out = {
        "changes": len(calls) - failures,
        "failures": failures,
        "rate": (len(calls) - failures) / elapsed,
        "call_p50_ms": statistics.median(calls) if calls else 0,
        "call_p99_ms": calls[min(len(calls) - 1, int(len(calls) * 0.99))] if calls else 0,
        "call_max_ms": calls[-1] if calls else 0,
        "final": cur,
        "errors": errors,
    }
    print(json.dumps(out))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
