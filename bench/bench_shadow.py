"""What shadow policies cost a worker: decisions/s of the worker's decision path (authz.server.decider.Decider
with the decision log on its asyncio loop, as `authz serve` runs them) with no shadow set, and with a shadow
set holding N shadow policies beside the enforced ones (N = 0: a shadow_policies copy of the enforced set; 10;
1,000), in the same run: every round measures each configuration for a short slice (the order rotated
from round to round), and the ratio to no shadow set is taken within each round, so that the VM's swings
cancel; the table gives medians (and the ratios' range). The worker's GC settings (app.py) apply.

The enforced set is bench/workload.py's 1,000 policies and its requests (uids as {type, id}); the N shadow
policies are more of the workload's policy shapes over the same entities (every other one a forbid), so some
decisions differ and their lines carry the "shadow" field (written by the Python formatter).

    python3 bench/bench_shadow.py [--seconds 0.3] [--rounds 15] [--policies 1000] [--no-decision-log]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import authz  # noqa: E402
from authz.compiler import compile_sources  # noqa: E402
from authz.server.decider import Decider  # noqa: E402
from authz.server.decisionlog import DecisionLog  # noqa: E402
from authz.server.metrics import NullMetrics  # noqa: E402
from authz.server.shadow import Shadow  # noqa: E402
from bench import workload  # noqa: E402

_UID = re.compile(r'^(.+)::"(.*)"$')
SHADOW_COUNTS = (0, 10, 1000)


def _uid(text: str) -> dict:
    t, i = _UID.match(text).groups()
    return {"type": t, "id": i}


def shadow_policies(n_enforced: int, n: int, seed: int = 11) -> str:
    """N policies of the workload's shapes over the entities of generate(n_enforced), @mode("shadow")."""
    rng = random.Random(seed)
    sz = workload._sizes(n_enforced)
    kinds = [k for k, _ in workload.KINDS]
    out = []
    for k in range(n):
        text, _ = workload._policy(rng, kinds[k % len(kinds)], sz, f"shadow-{k}")
        if k % 2:
            text = text.replace("permit(", "forbid(", 1)
        out.append(f'@id("shadow-{k}")\n@mode("shadow")\n{text}\n')
    return "\n".join(out)


class Setup:
    """One configuration: a Decider (its own decision log file) with or without a shadow engine."""

    def __init__(self, name, db, shadow_db, log_path, loop):
        self.name = name
        self.log = DecisionLog(log_path, loop=loop) if log_path else None
        self.decider = Decider(db, self.log)
        assert self.decider.open_engine()
        self.counting = _Differences()
        self.decider.shadow = Shadow(authz.Engine(shadow_db), self.counting) if shadow_db else None


class _Differences(NullMetrics):
    """Counts the shadow differences (no Prometheus files in process)."""

    def __init__(self):
        self.count = 0

    def shadow_differences(self, api, change, count=1):
        self.count += count


async def _run(setup: Setup, requests: list, one_by_one: bool, seconds: float) -> float:
    """Decisions per CPU second of the loop's thread (the worker's: decisions and log formatting; other
    processes on the machine barely move it) for `seconds`, yielding to the loop after each 100."""
    decider = setup.decider
    n, start, cpu = 0, time.perf_counter(), time.thread_time()
    deadline = start + seconds
    k = 0
    while time.perf_counter() < deadline:
        batch = requests[k:k + 100]
        k = (k + 100) % (len(requests) - 100)
        if one_by_one:
            for r in batch:
                decider.decide_one(r, "envoy")
        else:
            decider.decide_batch(batch, "v1")
        n += len(batch)
        await asyncio.sleep(0)
    return n / (time.thread_time() - cpu)


async def main_async(args) -> int:
    w = workload.generate(args.policies, seed=7)
    requests = [{"principal": _uid(r["principal"]), "action": _uid(r["action"]), "resource": _uid(r["resource"]),
                 "context": r.get("context") or {}} for r in w.requests]
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="authz-bench-shadow-") as tmp:
        folder = os.path.join(tmp, "policies")
        os.makedirs(folder)
        pp, ep = w.write(folder)
        db = os.path.join(tmp, "db")
        compile_sources([folder], db)
        log_in = (lambda name: os.path.join(tmp, name)) if args.decision_log else (lambda name: "")
        setups = [Setup("no shadow set", db, None, log_in("none.jsonl"), loop)]
        for n in SHADOW_COUNTS:
            extra = os.path.join(tmp, f"shadow{n}.cedar")
            with open(extra, "w") as f:
                f.write(shadow_policies(args.policies, n))
            sdb = os.path.join(tmp, f"shadow{n}")
            compile_sources([pp, ep, extra], sdb, shadow=True)
            setups.append(Setup(f"{n:,} shadow policies", db, sdb, log_in(f"s{n}.jsonl"), loop))
        gc.freeze()  # as a worker does once started (authz/server/app.py)
        gc.set_threshold(50_000, 20, 100)
        results = {(s.name, mode): [] for s in setups for mode in ("batch", "check")}
        for r in range(args.rounds):
            for mode in ("batch", "check"):
                for s in setups[r % len(setups):] + setups[:r % len(setups)]:
                    results[(s.name, mode)].append(await _run(s, requests, mode == "check", args.seconds))
        decided = {s.name: 0 for s in setups}
        for s in setups:  # the share of decisions with a shadow difference (one pass over the requests)
            s.counting.count = 0
            for k in range(0, len(requests) - 100, 100):
                s.decider.decide_batch(requests[k:k + 100], "v1")
                decided[s.name] += 100
        for s in setups:
            if s.log is not None:
                s.log.close()
    print(f"# bench_shadow: {args.policies:,} enforced policies, {len(requests):,} requests, {args.rounds} rounds "
          f"of {args.seconds} s, decision log {'on' if args.decision_log else 'off'}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| shadow set | differing decisions | BatchCheck path (decide_batch of 100), decisions per CPU s | vs none: "
          "median (range) | Check path (decide_one), decisions per CPU s | vs none: median (range) |")
    print("|---|---:|---:|---:|---:|---:|")
    base = setups[0].name
    for s in setups:
        share = s.counting.count / decided[s.name] if s.decider.shadow is not None else 0.0
        cells = []
        for mode in ("batch", "check"):
            rates = results[(s.name, mode)]
            ratios = [a / b for a, b in zip(rates, results[(base, mode)])]
            cells.append(f"{statistics.median(rates):,.0f} | {statistics.median(ratios):.0%} "
                         f"({min(ratios):.0%}–{max(ratios):.0%})")
        print(f"| {s.name} | {share:.1%} | {cells[0]} | {cells[1]} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0.3, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=15, help="rounds (each measures every configuration)")
    ap.add_argument("--policies", type=int, default=1000, help="enforced policies (bench/workload.py)")
    ap.add_argument("--no-decision-log", dest="decision_log", action="store_false",
                    help="decide without the decision log (what the shadow evaluation alone costs)")
    return asyncio.run(main_async(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
