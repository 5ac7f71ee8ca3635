#!/usr/bin/env python3
"""What request entities cost: Engine.check on bench/workload.py's requests without entities, with the
request's principal and resource sent as request entities (their stored attributes and parents, as an
AuthZEN gateway overlaying `properties` sends them: Engine.entity read back), with those prepared once
(Engine.request_entities), and with the principal's group replaced (its stored members' ancestry then
recomputed through the direct parents). Every decision with entities that do not change anything must
equal the one without.

    python3 bench/bench_request_entities.py [--sizes 10,10000] [--requests 2000] [--rounds 5]

Per size: p50 of each way, in alternating rounds (this VM's speed changes by up to 2x between minutes),
and the ratio to the p50 without entities. Every loop is bounded in count.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import authz  # noqa: E402

from workload import generate  # noqa: E402

pc = time.perf_counter_ns


def _p50(engine, calls) -> float:
    times = []
    for args, kw in calls:
        t0 = pc()
        engine.check(*args, **kw)
        times.append(pc() - t0)
    return statistics.median(times) / 1000


def run(size: int, n_requests: int, rounds: int) -> dict:
    wl = generate(size, n_requests=n_requests)
    with tempfile.TemporaryDirectory(prefix="authz-bench-entities-") as root:
        wl.write(root)
        db = os.path.join(root, "db")
        authz.compile([root], db=db)
        engine = authz.Engine(db, poll_interval_s=1e6)
        reqs = [(r["principal"], r["action"], r["resource"], r["context"]) for r in wl.requests]
        plain, same, prepared, regroup = [], [], [], []
        for args in reqs:
            ents = [e for e in (engine.entity(args[0]), engine.entity(args[2])) if e is not None]
            plain.append((args, {}))
            same.append((args, {"entities": ents}))
            prepared.append((args, {"entities": engine.request_entities(ents)}))
            groups = [p for p in (ents[0]["parents"] if ents and ents[0]["uid"]["type"] != "Tool" else [])]
            moved = [{"uid": g, "attrs": {}, "parents": []} for g in groups[:1]]
            regroup.append((args, {"entities": moved}))
        for (args, _), (_, kw) in zip(plain, same):
            assert engine.check(*args, **kw) == engine.check(*args), args
        rows = {"none": [], "principal+resource": [], "prepared once": [], "a group replaced": []}
        for _ in range(rounds):
            for name, calls in (("none", plain), ("principal+resource", same), ("prepared once", prepared),
                                ("a group replaced", regroup)):
                rows[name].append(_p50(engine, calls))
        engine.close()
    return {name: statistics.median(v) for name, v in rows.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,10000")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    print("| policies | entities sent | p50 µs | / none |")
    print("|---:|---|---:|---:|")
    for size in [int(s) for s in args.sizes.split(",")]:
        res = run(size, args.requests, args.rounds)
        for name, p50 in res.items():
            print(f"| {size:,} | {name} | {p50:.2f} | {p50 / res['none']:.1f}x |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
