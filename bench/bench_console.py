#!/usr/bin/env python3
"""The operator console's costs (docs/console.md):

    python3 bench/bench_console.py [--lines 1000000] [--duration 5] [--rounds 3] [--only search|check]

search: a synthetic decision log of --lines lines (the server's line format: 5,000 agents, 20,000 tasks,
  200 tools, ~10% denies, a context on each line) is indexed by the console's DecisionIndex
  (authz/console/decisions_index.py; SQLite) from empty in its bounded steps, as the pages do; then each
  search the Decisions and Tasks pages run is timed (the median and the worst of 5 runs): by agent, by
  task, by tool and decision, by reason in a time range, everything (the newest page), a page deep in the
  results (keyset), the task list, a decision's detail.
check: `authz serve --workers 1 --http-listen` with bench_grpc's policies; h2load's ext_authz Check load
  with the console closed, then with it open and live-updating (a client holding the server-sent-events
  stream, fetching the pending approvals every second as the page does on every change, and the
  Decisions page every 5 s), alternated --rounds times; medians, the ratio (target >= 95%).
Every load is bounded by --duration seconds; every loop by a count.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from authz.console.decisions_index import DecisionIndex  # noqa: E402
from bench.bench_grpc import (Served, cpu_seconds, envoy_check_request, free_port, grpc_frame,  # noqa: E402
                              h2load_run, write_bench_policies)


# -- search -----------------------------------------------------------------------------------------


def synthetic_log(path: pathlib.Path, lines: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    t0 = 1_780_000_000
    reasons = ["forbidden_by_policy", "no_permitting_policy", "approval_required", "task_suspended"]
    with open(path, "w") as f:
        for n in range(lines):
            t = t0 + n * 0.01
            agent, task, tool = rnd.randrange(5000), rnd.randrange(20000), rnd.randrange(200)
            deny = rnd.random() < 0.1
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t))) + f".{int(t % 1 * 1e6):06d}Z"
            line = {"decision_id": f"{n:016x}", "time": stamp, "api": "envoy", "principal": f'Agent::"a{agent}"',
                    "action": 'Action::"tools/call"', "resource": f'Tool::"t{tool}"',
                    "decision": "deny" if deny else "allow", "policies": [f"p{tool % 40}"], "errors": [],
                    "latency_us": 12.3, "generation": 1,
                    "token": {"jti": f"j{n}", "task": f"task-{task}", "chain": [f"a{agent}"]},
                    "context": {"http": {"path": "/mcp", "method": "POST"}, "mcp": {"arguments": {"n": n}}}}
            if deny:
                line["reason"] = reasons[n % len(reasons)]
            f.write(json.dumps(line, separators=(",", ":")) + "\n")


def timed(fn, runs=5) -> tuple:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, max(times) * 1000, result


def bench_search(lines: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        log = tmp / "decisions.jsonl"
        t = time.perf_counter()
        synthetic_log(log, lines)
        print(f"# wrote {lines:,} lines ({log.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s",
              file=sys.stderr)
        index = DecisionIndex(str(tmp / "index.sqlite"), str(log))
        t = time.perf_counter()
        steps = 0
        while steps < 1000 and index.catch_up():
            steps += 1
        build = time.perf_counter() - t
        db_mb = (tmp / "index.sqlite").stat().st_size / 1e6
        mid_day = index.search({}, limit=1)[0]["time"][:11]  # the day of the newest decision
        deep = index.search({"decision": "deny"}, limit=50)
        for _ in range(20):  # 20 pages down
            deep = index.search({"decision": "deny"}, before=deep[-1]["id"], limit=50)
        cases = [
            ("agent", lambda: index.search({"principal": 'Agent::"a42"'})),
            ("task", lambda: index.search({"task": "task-4242"})),
            ("tool and decision", lambda: index.search({"resource": 'Tool::"t7"', "decision": "deny"})),
            ("reason in a time range", lambda: index.search({"reason": "approval_required"}, mid_day + "00:00",
                                                            mid_day + "23:59\uffff")),
            ("everything (newest page)", lambda: index.search({})),
            ("denies, page 22 (keyset)", lambda: index.search({"decision": "deny"}, before=deep[-1]["id"])),
            ("agent and task (no match)", lambda: index.search({"principal": 'Agent::"a1"', "task": "task-2"})),
            ("task list", lambda: index.tasks(100)),
            ("a decision's detail", lambda: index.line(lines // 2)),
        ]
        print(f"\n## Decision search over {lines:,} logged decisions (SQLite index, {db_mb:.0f} MB)\n")
        print(f"Index built from empty in {build:.0f} s ({lines / build:,.0f} lines/s, {steps} steps of at most "
              "100,000 lines); later pages index only what was appended since.\n")
        print("| search | rows | median ms | worst of 5 ms |\n|---|---:|---:|---:|")
        for name, fn in cases:
            med, worst, result = timed(fn)
            rows = len(result) if isinstance(result, list) else 1
            print(f"| {name} | {rows} | {med:.2f} | {worst:.2f} |")
        index.close()


# -- Check throughput with the console open ------------------------------------------------------------


class Server(Served):
    """`authz serve --workers 1` with the bench policies and the HTTP listener (the console), and an
    operator key for the console (`key`)."""

    def args(self) -> list:
        env = dict(os.environ, PYTHONPATH=str(self.root))
        self.key = subprocess.run([sys.executable, "-m", "authz", "operators", "add", "bench", "--data-dir",
                                   str(self.tmp / "data")], capture_output=True, text=True, env=env, check=True,
                                  timeout=60).stdout.strip()
        self.http_port = free_port()
        return ["--listen", "127.0.0.1:0", "--workers", "1", "--data-dir", str(self.tmp / "data"), "--policies",
                str(write_bench_policies(self.tmp / "policies")), "--http-listen", f"127.0.0.1:{self.http_port}",
                "--log-level", "warning"]


class OpenConsole:
    """A browser's traffic while the approvals page is open: the event stream held, the pending list fetched
    every second, the Decisions page every 5 s; bounded by `stop`."""

    def __init__(self, port: int, key: str, searches: bool):
        self.port, self.key, self.searches = port, key, searches
        self.stop = threading.Event()
        self.pages = 0

    def _session(self) -> str:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/console/login")
        r = c.getresponse()
        body = r.read().decode()
        pre = re.search(r"authz_console_pre=([^;]+)", r.getheader("Set-Cookie")).group(1)
        csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
        form = urllib.parse.urlencode({"csrf": csrf, "name": "bench", "key": self.key})
        c.request("POST", "/console/login", form, {"Content-Type": "application/x-www-form-urlencoded",
                                                   "Cookie": f"authz_console_pre={pre}"})
        r = c.getresponse()
        r.read()
        return re.search(r"authz_console=([^;]+)", r.getheader("Set-Cookie")).group(1)

    def __enter__(self):
        cookie = {"Cookie": f"authz_console={self._session()}"}
        events = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)  # keep-alives every 15 s
        events.request("GET", "/console/events", headers=cookie)
        self.stream = events.getresponse()
        assert self.stream.status == 200, self.stream.status

        def run():
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            n = 0
            while not self.stop.wait(1.0) and n < 100_000:
                n += 1
                paths = ["/console/approvals/pending"]
                if self.searches and n % 5 == 0:
                    paths.append("/console/decisions")
                for path in paths:
                    c.request("GET", path, headers=cookie)
                    r = c.getresponse()
                    r.read()
                    assert r.status == 200, (path, r.status)
                    self.pages += 1

        def drain():
            while not self.stop.is_set():
                if not self.stream.fp or not self.stream.fp.readline():
                    break
        self.threads = [threading.Thread(target=run, daemon=True), threading.Thread(target=drain, daemon=True)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.stream.close()
        self.threads[0].join(15)


def bench_check(duration: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        body = tmp / "check.bin"
        body.write_bytes(grpc_frame(envoy_check_request()))
        path = "/envoy.service.auth.v3.Authorization/Check"
        sides = {"closed": [], "approvals open, live-updating": [],
                 "and the Decisions page reloaded every 5 s": []}
        pages = 0

        def run(server):
            """(Check/s, worker CPU µs per Check) of one h2load run."""
            cpu = cpu_seconds(server.pids)
            rate, done = h2load_run(server.address, path, body, duration)
            return rate, (cpu_seconds(server.pids) - cpu) / done * 1e6

        idle = {}
        with Server(tmp) as server:
            for side in sides:  # what the console itself costs the worker: its CPU with no Check load
                console = OpenConsole(server.http_port, server.key, side.startswith("and")) \
                    if side != "closed" else None
                if console is not None:
                    console.__enter__()
                cpu = cpu_seconds(server.pids)
                time.sleep(duration * 2)
                idle[side] = (cpu_seconds(server.pids) - cpu) / (duration * 2) * 1000
                if console is not None:
                    console.__exit__(None, None, None)
            for _ in range(rounds):
                for side, runs in sides.items():
                    if side == "closed":
                        runs.append(run(server))
                        continue
                    with OpenConsole(server.http_port, server.key, side.startswith("and")) as console:
                        runs.append(run(server))
                    pages += console.pages
        c = statistics.median(r for r, _ in sides["closed"])
        c_cpu = statistics.median(u for _, u in sides["closed"])
        print(f"\n## ext_authz Check, 1 worker, with the console closed and open ({rounds} rounds of {duration} s "
              "alternated, medians)\n")
        print("| console | Check/s | of closed | worker CPU µs per Check (incl. warm-up) | closed / this CPU | "
              "Check/s by round |\n|---|---:|---:|---:|---:|---|")
        for side, runs in sides.items():
            m = statistics.median(r for r, _ in runs)
            u = statistics.median(u for _, u in runs)
            print(f"| {side} | {m:,.0f} | {m / c:.1%} | {u:.0f} | {c_cpu / u:.1%} | "
                  f"{', '.join(f'{r:,.0f}' for r, _ in runs)} |")
        print("\nWith no Check load, the worker's CPU: " + "; ".join(f"{side}: {ms:.1f} ms a second"
                                                                  for side, ms in idle.items()) + ".")
        print(f"\nTarget: approvals open >= 95% of closed. The console answered {pages} page loads meanwhile. "
              "The worker's CPU per Check is the steadier figure on a shared machine: the throughput a worker-bound "
              "server keeps is closed / open CPU.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("search", "check"))
    a = ap.parse_args()
    if a.only in (None, "search"):
        bench_search(a.lines)
    if a.only in (None, "check"):
        bench_check(a.duration, a.rounds)


if __name__ == "__main__":
    main()
