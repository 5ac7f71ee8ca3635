#!/usr/bin/env python3
"""Task-state benchmark: the same Engine.check decision with and without a state-store transaction around it.

    python3 bench/bench_state.py [--quick] [--json out.json]

Policies read context.task / context.agent (a call limit per label, no egress after `pii`, deploy after
tests, a spend budget, an agent rate); the request is an allowed call of Tool::"db.read" carrying the
label `pii`, so every stateful decision commits an update (calls, counts, windows, agent windows).

In-process rows, each call timed on its own with time.perf_counter_ns (p50 / p99 µs), GC off:
  plain            Engine.check with a fixed context holding a task view (the evaluator's work is the same)
  stateful         store.begin(task, agent, now) -> view() -> Engine.check -> commit_allowed (LmdbStore, sync off)
  stateful, deny   begin -> view() -> Engine.check -> commit_denied (a deny updates `denies` only)
  stateful, big    as `stateful`, on a task already holding 1,000 tools and 200 labels
  durable          as `stateful` with durable = true (an fsync per commit, on this machine's disk)
  batch of 100     one batch of 100 calls of one task (BatchCheck), per call, next to 100 plain checks
Contention rows: `stateful` decisions for a fixed time from 2 processes x 1 thread (the server's shape: each
worker decides on one asyncio thread) and 2 processes x 8 threads, on one task and on a task per thread
(LMDB has one writer per host: both serialize), next to 1 process x 1 thread; decisions/s and the
per-decision latency including the wait for the writer lock.
Ratios are against `plain` (in-process) or 1 x 1 (contention). Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

pc = time.perf_counter_ns
POLICIES = """
@id("write-limit")
forbid(principal, action == Action::"write", resource)
when { context has task && context.task.counts has write && context.task.counts.write >= 50 };
@id("no-egress-after-pii")
forbid(principal, action, resource == Tool::"webhook.post")
when { context has task && context.task.labels.contains("pii") };
@id("deploy-after-tests")
forbid(principal, action, resource == Tool::"deploy")
unless { context has task && context.task.tools.contains(Tool::"ci.run_tests") };
@id("budget")
forbid(principal, action, resource)
when { context has task && context.task.spend > 1000000000 - context.cost };
@id("agent-rate")
forbid(principal, action, resource)
when { context has agent && context.agent.rate.m1 >= 1000000000 };
@id("tools")
permit(principal is Agent, action == Action::"call", resource is Tool);
"""
REQUEST = dict(principal='Agent::"bench"', action='Action::"call"', resource='Tool::"db.read"')
RESOURCE, LABELS = ("Tool", "db.read"), ("pii",)


def stats(ns):
    ns = sorted(ns)
    return {"n": len(ns), "p50_us": ns[len(ns) // 2] / 1000, "p99_us": ns[min(len(ns) - 1, int(len(ns) * 0.99))] / 1000,
            "mean_us": statistics.fmean(ns) / 1000}


def timed(fn, n, max_s):
    out = []
    deadline = time.monotonic() + max_s
    gc.disable()
    try:
        for _ in range(n):
            t0 = pc()
            fn()
            out.append(pc() - t0)
            if time.monotonic() > deadline:
                break
    finally:
        gc.enable()
    return out


def compile_policies(tmp: pathlib.Path) -> str:
    import authz

    src = tmp / "policies"
    src.mkdir()
    (src / "p.cedar").write_text(POLICIES)
    (src / "entities.json").write_text("[]")
    db = str(tmp / "authz.lmdb")
    authz.compile([str(src)], db=db)
    return db


def stateful_step(engine, store, task, agent="bench"):
    def step():
        with store.begin(task, agent, time.time()) as txn:
            d = engine.check(context={"cost": 0, **txn.view()}, **REQUEST)
            if d.allowed:
                txn.commit_allowed(RESOURCE, LABELS, 0)
            else:
                txn.commit_denied()
        return d
    return step


def in_process(tmp: pathlib.Path, db: str, budget: dict) -> dict:
    import authz
    from authz.state import LmdbStore, StateConfig

    engine = authz.Engine(db)
    store = LmdbStore(StateConfig(path=str(tmp / "state")))
    durable = LmdbStore(StateConfig(path=str(tmp / "state-durable"), durable=True))
    big_view = None
    with store.batch(time.time()) as batch:  # a task holding 1,000 tools and 200 labels
        txn = batch.task("big", "bench")
        for i in range(1000):
            txn.allowed(("Tool", f"tool-{i:04d}"), [f"label-{i % 200}"], 1)
    with store.begin("big", "bench", time.time()) as txn:
        big_view = txn.view()
    with store.begin("fixed", "bench", time.time()) as txn:
        fixed = {"cost": 0, **txn.view()}

    def plain():
        return engine.check(context=fixed, **REQUEST)

    step, big, durable_step = (stateful_step(engine, store, "hot"), stateful_step(engine, store, "big"),
                               stateful_step(engine, durable, "hot"))

    def deny():
        with store.begin("hot", "bench", time.time()) as txn:
            d = engine.check(context={"cost": 0, **txn.view()}, **REQUEST)
            txn.commit_denied()
        return d

    for fn in (plain, step, big, deny):
        assert fn().allowed, "setup: the bench request must be allowed"
        for _ in range(budget["warm"]):
            fn()
    n = budget["n"]
    acc = {"plain": [], "stateful": [], "stateful, deny": [], "stateful, big task": []}
    for _ in range(4):  # interleaved in rounds: the machine's drift hits every row alike
        acc["plain"] += timed(plain, n // 4, budget["s"] / 4)
        acc["stateful"] += timed(step, n // 4, budget["s"] / 4)
        acc["stateful, deny"] += timed(deny, n // 4, budget["s"] / 4)
        acc["stateful, big task"] += timed(big, n // 40, budget["s"] / 4)
    rows = {k: stats(v) for k, v in acc.items()}
    rows["durable (fsync per commit)"] = stats(timed(durable_step, budget["durable_n"], budget["s"]))

    calls = [REQUEST] * 100

    def plain_batch():
        for r in calls:
            engine.check(context=fixed, **r)

    def state_batch():
        with store.batch(time.time()) as batch:
            for r in calls:
                txn = batch.task("batched", "bench")
                if engine.check(context={"cost": 0, **txn.view()}, **r).allowed:
                    txn.allowed(RESOURCE, LABELS, 0)
                else:
                    txn.denied()

    bn = budget["batches"]
    pb, sb = [], []
    for _ in range(4):
        pb += timed(plain_batch, bn // 4, budget["s"] / 4)
        sb += timed(state_batch, bn // 4, budget["s"] / 4)
    rows["batch of 100, plain (per call)"] = stats([x / 100 for x in pb])
    rows["batch of 100, stateful (per call)"] = stats([x / 100 for x in sb])
    assert store.task_view("hot", time.time())["calls"] > 0
    store.close()
    durable.close()
    engine.close()
    rows["_big_task"] = {"tools": len(big_view["task"]["tools"]), "labels": len(big_view["task"]["labels"])}
    return rows


def _contender(db, path, threads, seconds, one_task, start, conn):
    import authz
    from authz.state import LmdbStore, StateConfig

    engine = authz.Engine(db)
    store = LmdbStore(StateConfig(path=path))
    pid = os.getpid()
    results = [[] for _ in range(threads)]

    def run(i):
        step = stateful_step(engine, store, "contended" if one_task else f"task-{pid}-{i}")
        out = results[i]
        start.wait(30)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(out) < 1_000_000:
            t0 = pc()
            step()
            out.append(pc() - t0)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 60)
    conn.send([x for r in results for x in r])
    store.close()
    engine.close()


def contention(tmp: pathlib.Path, db: str, processes: int, threads: int, one_task: bool, seconds: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    path = str(tmp / f"state-{processes}x{threads}-{'one' if one_task else 'many'}")
    start = ctx.Event()
    procs = []
    for _ in range(processes):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_contender, args=(db, path, threads, seconds, one_task, start, child))
        p.start()
        procs.append((p, parent))
    time.sleep(1.0 + 0.3 * processes)  # let every process import and open its store before the start
    start.set()
    latencies = []
    for p, conn in procs:
        if not conn.poll(seconds + 120):
            raise SystemExit("a contention process did not answer")
        latencies += conn.recv()
        p.join(30)
    row = stats(latencies)
    row["decisions_per_s"] = len(latencies) / seconds
    if one_task:
        from authz.state import LmdbStore, StateConfig

        store = LmdbStore(StateConfig(path=path))
        row["calls_recorded"] = store.task_view("contended", time.time())["calls"]
        store.close()
        assert row["calls_recorded"] == len(latencies), "a decision was lost"
    return row


def report(rows: dict, contended: dict) -> str:
    base = rows["plain"]["p50_us"]
    lines = ["| in-process (µs) | p50 | p99 | p50 / plain |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        if name.startswith("_"):
            continue
        ref = rows["batch of 100, plain (per call)"]["p50_us"] if name.startswith("batch") else base
        lines.append(f"| {name} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['p50_us'] / ref:.2f} |")
    lines += ["", f"big task: {rows['_big_task']['tools']} tools, {rows['_big_task']['labels']} labels", "",
              "| contention | decisions/s | p50 µs | p99 µs | throughput / 1x1 |", "|---|---:|---:|---:|---:|"]
    one = contended["1 process x 1 thread"]["decisions_per_s"]
    for name, r in contended.items():
        lines.append(f"| {name} | {r['decisions_per_s']:.0f} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
                     f"{r['decisions_per_s'] / one:.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (~20 s)")
    ap.add_argument("--json", help="write the rows as JSON here")
    args = ap.parse_args()
    budget = (dict(n=8000, warm=500, s=8.0, durable_n=200, batches=80, contention_s=2.0) if args.quick else
              dict(n=40000, warm=2000, s=30.0, durable_n=1000, batches=400, contention_s=5.0))
    with tempfile.TemporaryDirectory(prefix="bench-state-") as d:
        tmp = pathlib.Path(d)
        db = compile_policies(tmp)
        print("in-process rows...", file=sys.stderr)
        rows = in_process(tmp, db, budget)
        contended = {}
        for name, procs, threads, one in (("1 process x 1 thread", 1, 1, True),
                                          ("2 processes x 1 thread, one task", 2, 1, True),
                                          ("2 processes x 8 threads, one task", 2, 8, True),
                                          ("2 processes x 8 threads, a task per thread", 2, 8, False)):
            print(f"contention: {name}...", file=sys.stderr)
            contended[name] = contention(tmp, db, procs, threads, one, budget["contention_s"])
    print(report(rows, contended))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"in_process": rows, "contention": contended}, f, indent=1)


if __name__ == "__main__":
    main()
