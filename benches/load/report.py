#!/usr/bin/env python3
"""Helpers for the load scripts (stdlib only).

  report.py cputicks PID...      CPU ticks (user+system) used so far by each
                                 PID and all its descendants, summed
  report.py line JSON            one wrk result (LWRESULT json) as text
  report.py annotate JSON K=V... adds keys (values are JSON) to a result
  report.py compare RESULTS      Markdown table from compare.sh's results
                                 (one JSON object per line)
  report.py churn RESULTS        Markdown table from churn.sh's results
"""
import json
import os
import statistics
import sys


def _proc_stats():
    """pid -> (ppid, utime+stime ticks) for every process we can read."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        # comm may contain spaces; fields after the closing parenthesis.
        rest = data[data.rindex(")") + 2:].split()
        ppid = int(rest[1])
        ticks = int(rest[11]) + int(rest[12])  # utime, stime
        out[int(name)] = (ppid, ticks)
    return out


def cputicks(pids):
    stats = _proc_stats()
    children = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total = 0
    seen = set()
    todo = list(pids)
    while todo:
        p = todo.pop()
        if p in seen or p not in stats:
            continue
        seen.add(p)
        total += stats[p][1]
        todo.extend(children.get(p, []))
    return total


def _load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def _ms(us):
    return f"{us / 1000:.2f}"


def _errors(r):
    return r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]


# What each target is compared with in the ratio columns.
PAIRS = {"laneway": "nginx", "laneway-log": "nginx-log"}
TARGETS = ["direct", "nginx", "laneway", "nginx-log", "laneway-log"]


def compare(path):
    rows = _load(path)
    tick = os.sysconf("SC_CLK_TCK")
    cases = []
    for r in rows:
        if r["case"] not in cases:
            cases.append(r["case"])
    with_logs = any(r.get("log_lines") is not None for r in rows)
    head = "| case | target | req/s | p50 ms | p99 ms | errors | proxy CPU ms / 1k req | rounds | req/s laneway/nginx | p99 laneway/nginx |"
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if with_logs:
        head += " log lines/req |"
        rule += "---:|"
    print(head)
    print(rule)
    for case in cases:
        med = {}
        for t in TARGETS:
            rs = [r for r in rows if r["case"] == case and r["target"] == t]
            if not rs:
                continue
            rps = [r["requests"] / (r["duration_us"] / 1e6) for r in rs]
            cpu = [
                (r["cpu_ticks"] / tick * 1000) / (r["requests"] / 1000)
                for r in rs
                if r.get("cpu_ticks") is not None and r["requests"]
            ]
            lines = [
                r["log_lines"] / r["requests"]
                for r in rs
                if r.get("log_lines") is not None and r["requests"]
            ]
            med[t] = {
                "rps": statistics.median(rps),
                "p50": statistics.median(r["p50_us"] for r in rs),
                "p99": statistics.median(r["p99_us"] for r in rs),
                "errors": sum(_errors(r) for r in rs),
                "cpu": statistics.median(cpu) if cpu else None,
                "lines": statistics.median(lines) if lines else None,
                "n": len(rs),
                "all_rps": rps,
            }
        for t in TARGETS:
            if t not in med:
                continue
            m = med[t]
            ratio_rps = ratio_p99 = ""
            other = PAIRS.get(t)
            if other in med:
                ratio_rps = f"{m['rps'] / med[other]['rps']:.2f}"
                ratio_p99 = f"{m['p99'] / med[other]['p99']:.2f}"
            cpu = "" if m["cpu"] is None else f"{m['cpu']:.1f}"
            row = (
                f"| {case} | {t} | {m['rps']:.0f} | {_ms(m['p50'])} | {_ms(m['p99'])} | "
                f"{m['errors']} | {cpu} | {m['n']} | {ratio_rps} | {ratio_p99} |"
            )
            if with_logs:
                row += "" if m["lines"] is None else f" {m['lines']:.3f}"
                row += " |"
            print(row)
    print()
    print("Per-round req/s (in run order):")
    print()
    for case in cases:
        for t in TARGETS:
            rs = [r for r in rows if r["case"] == case and r["target"] == t]
            if rs:
                vals = ", ".join(f"{r['requests'] / (r['duration_us'] / 1e6):.0f}" for r in rs)
                print(f"- {case} / {t}: {vals}")


def churn(path):
    rows = _load(path)
    print("| target | changes made | changes/s | change call p50 ms | change call max ms | requests | req/s | non-2xx/3xx | socket errors (connect/read/write/timeout) | failed total | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        sock = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
        secs = r["duration_us"] / 1e6
        d = r.get("driver") or {}
        if d:
            drv = (f"{d['changes']} | {d['rate']:.1f} | {d['call_p50_ms']:.2f} | "
                   f"{d['call_max_ms']:.2f}")
        else:
            drv = "0 | – | – | –"
        print(
            f"| {r['target']} | {drv} | "
            f"{r['requests']} | {r['requests'] / secs:.0f} | {r['err_status']} | "
            f"{sock} ({r['err_connect']}/{r['err_read']}/{r['err_write']}/{r['err_timeout']}) | "
            f"{r['err_status'] + sock} | {_ms(r['p99_us'])} | {_ms(r['max_us'])} |"
        )


def line(r):
    return (
        f"{r['requests'] / (r['duration_us'] / 1e6):.0f} req/s, p50 {_ms(r['p50_us'])} ms, "
        f"p99 {_ms(r['p99_us'])} ms, max {_ms(r['max_us'])} ms, errors {_errors(r)}"
    )


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "line":
        print(line(json.loads(sys.argv[2])))
    elif cmd == "annotate":
        r = json.loads(sys.argv[2])
        for kv in sys.argv[3:]:
            k, v = kv.split("=", 1)
            r[k] = json.loads(v)
        print(json.dumps(r))
    elif cmd == "cputicks":
        print(cputicks([int(p) for p in sys.argv[2:]]))
    elif cmd == "compare":
        compare(sys.argv[2])
    elif cmd == "churn":
        churn(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
