#!/usr/bin/env python3
"""Server A/B: two authz builds served side by side and loaded in turn, as bench_grpc loads a row.

    python3 bench/ab_grpc.py A_ROOT B_ROOT [--rpc batch|check] [--rounds 5] [--duration 3] [--metrics | --no-log]

A_ROOT and B_ROOT are checkouts with the extensions built in place (`python3 setup.py build_ext
--inplace`), e.g. `git worktree add /tmp/a <commit>` for the old side. Each serves bench_grpc's
policies with 1 worker and the decision log on (off with --no-log; the Prometheus endpoint on with
--metrics); h2load
replays one BatchCheck of 100 items (`--rpc batch`) or one Envoy CheckRequest (`--rpc check`),
A and B alternating `--rounds` times. Printed: each one's median decisions/s, the per-round
ratios B/A (above 1: B is faster), and each one's median worker CPU per decision from /proc,
which other jobs on a shared machine disturb less than throughput. Needs h2load.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_grpc import Authz, batch_request, envoy_check_request, grpc_frame, interleaved  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a_root")
    ap.add_argument("b_root")
    ap.add_argument("--rpc", choices=("batch", "check"), default="batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=3, help="seconds per measurement")
    ap.add_argument("--metrics", action="store_true", help="serve with the Prometheus endpoint on")
    ap.add_argument("--no-log", action="store_true", help="serve without the decision log")
    args = ap.parse_args()
    items = 100 if args.rpc == "batch" else 1
    with tempfile.TemporaryDirectory(prefix="authz-ab-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        body = tmp / "request.bin"
        body.write_bytes(grpc_frame(batch_request(100) if args.rpc == "batch" else envoy_check_request()))
        path = "/authz.v1.Authorizer/BatchCheck" if args.rpc == "batch" else "/envoy.service.auth.v3.Authorization/Check"
        conns, streams = (2, 4) if args.rpc == "batch" else (4, 16)
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        log = not args.no_log
        with Authz(tmp / "a", 1, log, metrics=args.metrics, root=os.path.abspath(args.a_root)) as a, \
                Authz(tmp / "b", 1, log, metrics=args.metrics, root=os.path.abspath(args.b_root)) as b:
            rps_a, rps_b, ratios, cpu_a, cpu_b = interleaved(a, b, path, body, args.duration, args.rounds, conns, streams)
    print(f"{args.rpc}{' (metrics on)' if args.metrics else ''}{' (no log)' if args.no_log else ''}: A {rps_a * items:,.0f}/s, B {rps_b * items:,.0f}/s; "
          f"B/A per round {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"worker CPU per decision A {cpu_a / items:.2f} µs, B {cpu_b / items:.2f} µs")


if __name__ == "__main__":
    main()
