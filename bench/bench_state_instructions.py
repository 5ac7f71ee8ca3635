#!/usr/bin/env python3
"""Task state over gRPC, counted in instructions: the worker of `authz serve --workers 1` run under
valgrind's callgrind, its counters zeroed before and dumped after N authz.v1 Checks of each kind, so the
instructions a request costs are counted exactly — the ratio this 2-vCPU machine's timings swing around.

    python3 bench/bench_state_instructions.py [--requests 2000] [--baseline-root PATH]

The server, policies and requests are bench_state_grpc.py's: a stateless Check (principal, no token) and
a stateful one (a task token: decided with the task's state, one store transaction). With --baseline-root
PATH (a checkout whose Decider skips task state; see bench/README.md), its worker is counted on the same
token request too: the same decision without task state. Each kind is counted twice (h2load -n N -c 1
-m 8 after 300 warm-up requests); the worker's instructions only (its threads included: the decision log
writer), not the kernel's. Needs valgrind and h2load (apt-get install -y valgrind nghttp2-client).
Instructions are not time (cache misses and system calls are not in them), so the timed ratios of
bench_state_grpc.py stay the measure of the targets; this one says where a change moved the work.
"""
from __future__ import annotations

import argparse
import glob
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bench_state_grpc as S  # noqa: E402
from bench.bench_grpc import grpc_frame  # noqa: E402


class CountedServer:
    """`authz serve --workers 1` of checkout `root` under callgrind (children traced: the worker)."""

    def __init__(self, tmp: pathlib.Path, root: pathlib.Path):
        self.tmp, self.root = tmp, root
        self.served = S.Server(tmp / "server", root=root)  # its arguments and token issuing
        self.out = tmp / "callgrind"

    def __enter__(self):
        self.out.mkdir(parents=True)
        env = dict(os.environ, PYTHONPATH=str(self.root), PYTHONHASHSEED="0")
        python = os.path.realpath(sys.executable)  # not a shim script: valgrind must run the interpreter
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={self.out}/cg.%p",
             python, "-m", "authz.server", *self.served.args()],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=self.tmp)
        line = self.proc.stdout.readline().decode()
        m = re.match(r"authz: serving on (\S+) \(workers \d+, pids ([\d ]+),", line)
        if not m:
            raise SystemExit(f"authz did not start under valgrind: {line!r}")
        self.address, self.worker = m.group(1), int(m.group(2).split()[0])
        self.served.address = self.address
        import grpc

        deadline = time.monotonic() + 300
        while True:
            try:
                self.token = self.served.issue()
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise SystemExit("authz under valgrind did not answer in 300 s") from None
                time.sleep(2)
        return self

    def count(self, body: pathlib.Path, headers, n: int) -> float:
        """Instructions per request of `n` Checks of `body` (after 300 not counted)."""
        S.h2load_n(self.address, S.CHECK, body, 300, headers)
        time.sleep(1)
        subprocess.run(["callgrind_control", "-z", str(self.worker)], capture_output=True, timeout=120, check=True)
        S.h2load_n(self.address, S.CHECK, body, n, headers)
        time.sleep(0.5)
        before = set(glob.glob(f"{self.out}/cg.{self.worker}.*"))
        subprocess.run(["callgrind_control", "-d", str(self.worker)], capture_output=True, timeout=120, check=True)
        deadline = time.monotonic() + 120
        while True:
            new = set(glob.glob(f"{self.out}/cg.{self.worker}.*")) - before
            if new:
                text = pathlib.Path(new.pop()).read_text()
                m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
                if m:
                    return int(m.group(1)) / n
            if time.monotonic() > deadline:
                raise SystemExit("callgrind wrote no dump")
            time.sleep(0.5)

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(300)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="Checks counted per measurement")
    ap.add_argument("--baseline-root", metavar="PATH",
                    help="a checkout whose server decides without task state (see bench/README.md), counted too")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_state_instructions: `{tool}` not found (apt-get install -y valgrind nghttp2-client)")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-state-instructions-") as d:
        tmp = pathlib.Path(d)
        plain, token = tmp / "plain.bin", tmp / "token.bin"
        plain.write_bytes(grpc_frame(S.check_request(True)))
        token.write_bytes(grpc_frame(S.check_request(False)))
        sides = [("this checkout", ROOT)]
        if args.baseline_root:
            sides.append(("baseline", pathlib.Path(args.baseline_root)))
        for name, root in sides:
            print(f"counting {name} under callgrind (minutes)...", file=sys.stderr)
            with CountedServer(tmp / name.replace(" ", "-"), root) as server:
                auth = (f"authorization: Bearer {server.token}",)
                kinds = [("stateless", plain, ()), ("token", token, auth)] if name != "baseline" else \
                    [("token", token, auth)]
                for kind, body, headers in kinds * 2:
                    rows.setdefault((name, kind), []).append(server.count(body, headers, args.requests))
    print(f"\nbench_state_instructions: {args.requests} authz.v1 Checks a measurement, 2 measurements each\n")
    print("| worker instructions per Check | counted | vs stateless |")
    print("|---|---:|---:|")
    stateless = min(rows[("this checkout", "stateless")])
    labels = {("this checkout", "stateless"): "stateless: principal, no token",
              ("this checkout", "token"): "stateful: task token",
              ("baseline", "token"): "baseline build: task token, no task state"}
    for key, label in labels.items():
        if key in rows:
            v = min(rows[key])
            print(f"| {label} | {v:,.0f} ({', '.join(f'{x:,.0f}' for x in rows[key])}) | {stateless / v:.0%} |")
    if ("baseline", "token") in rows:
        print(f"\nstateful vs baseline: {min(rows[('baseline', 'token')]) / min(rows[('this checkout', 'token')]):.0%}")


if __name__ == "__main__":
    main()
