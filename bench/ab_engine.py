#!/usr/bin/env python3
"""Same-time A/B of two authz builds: which is faster, measured so that the machine's phases cancel.

    python3 bench/ab_engine.py A_ROOT B_ROOT [--sizes 10,10000,100000] [--rounds 16]

A_ROOT and B_ROOT are checkouts with the extension built in place (`python3 setup.py build_ext
--inplace`), e.g. `git worktree add /tmp/a <commit>` for the old side. For each size, each build
compiles the workload of bench/workload.py into its own index (the formats may differ), then in
every round both time the same work at the same time, each pinned to its own CPU, the CPUs swapped
from round to round: p50 of Engine.check over the 4,000 requests (each decoded from JSON just
before its call, three passes) and check_batch throughput (batches of 1,000, five passes).
Printed per size: the geometric mean over the rounds of B/A for the p50 (below 1: B is faster)
and for the batch throughput (above 1: B is faster), with each round's numbers.

On a shared VM absolute timings swing by up to 2x from minute to minute; two builds measured at
the same moment see the same swing, so their ratio is what this reports. Needs 2 CPUs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(root: str, folder: str, cpu: int) -> None:
    """One side of one round: prints {"p50_ns": ..., "batch_dps": ...} on stdout."""
    os.sched_setaffinity(0, {cpu})
    sys.path.insert(0, os.path.abspath(root))
    import gc

    import authz

    db = os.path.join(folder, "db-" + os.path.basename(os.path.abspath(root)))
    lines = open(os.path.join(folder, "requests.jsonl")).read().splitlines()
    engine = authz.Engine(db, poll_interval_s=3600)
    loads, pc = json.loads, time.perf_counter_ns
    gc.collect()
    gc.disable()
    lat = []
    for _ in range(3):
        for line in lines:
            q = loads(line)
            p, a, r, c = q["principal"], q["action"], q["resource"], q["context"]
            t0 = pc()
            engine.check(p, a, r, c)
            lat.append(pc() - t0)
    lat.sort()
    batches = ["[" + ",".join(lines[i:i + 1000]) + "]" for i in range(0, len(lines), 1000)]
    total = decided = 0
    for _ in range(5):
        for text in batches:
            batch = loads(text)
            t0 = pc()
            engine.check_batch(batch)
            total += pc() - t0
            decided += len(batch)
    print(json.dumps({"p50_ns": lat[len(lat) // 2], "batch_dps": decided / (total / 1e9)}))


def prepare(size: int, folder: str, roots: list) -> None:
    """The workload's sources and requests in `folder`, and each build's index of them."""
    sys.path.insert(0, HERE)
    from workload import generate

    w = generate(size)
    policies, entities = w.write(folder)
    with open(os.path.join(folder, "requests.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in w.requests))
    for root in roots:
        db = os.path.join(folder, "db-" + os.path.basename(os.path.abspath(root)))
        code = f"import sys; sys.path.insert(0, {os.path.abspath(root)!r}); import authz; " \
               f"authz.compile([{policies!r}, {entities!r}], {db!r})"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a_root")
    ap.add_argument("b_root")
    ap.add_argument("--sizes", default="10,10000,100000")
    ap.add_argument("--rounds", type=int, default=16)
    args = ap.parse_args()
    if os.path.basename(os.path.abspath(args.a_root)) == os.path.basename(os.path.abspath(args.b_root)):
        raise SystemExit("ab_engine: the two roots need different folder names (their indexes are named after them)")
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("ab_engine: needs 2 CPUs")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            prepare(size, folder, [args.a_root, args.b_root])
            p50_ratios, batch_ratios = [], []
            for k in range(args.rounds):
                cpu_a, cpu_b = (cpus[0], cpus[1]) if k % 2 == 0 else (cpus[1], cpus[0])
                procs = [subprocess.Popen([sys.executable, __file__, "--worker", root, folder, str(cpu)],
                                          stdout=subprocess.PIPE, text=True)
                         for root, cpu in ((args.a_root, cpu_a), (args.b_root, cpu_b))]
                a, b = (json.loads(p.communicate(timeout=900)[0]) for p in procs)
                p50_ratios.append(b["p50_ns"] / a["p50_ns"])
                batch_ratios.append(b["batch_dps"] / a["batch_dps"])
                print(f"[{size}] round {k + 1}: p50 A {a['p50_ns'] / 1000:.2f} µs, B {b['p50_ns'] / 1000:.2f} µs; "
                      f"check_batch A {a['batch_dps']:,.0f}/s, B {b['batch_dps']:,.0f}/s", file=sys.stderr, flush=True)

            def geomean(xs):
                return math.exp(sum(math.log(x) for x in xs) / len(xs))

            print(f"{size} policies: B/A p50 {geomean(p50_ratios):.3f}, B/A check_batch {geomean(batch_ratios):.3f} "
                  f"(geometric means of {args.rounds} rounds)", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
