#!/usr/bin/env python3
"""authz engine benchmark: Engine.check vs cedarpy vs a hand-written floor.

    python3 bench/bench_engine.py [--sizes 10,1000,10000,100000] [--quick] [--json out.json]

For each policy-set size, in the same process and run:
  * per-decision latency (p50/p99, µs; each call timed on its own with
    time.perf_counter_ns after a warm-up) of
      - authz.Engine.check
      - cedarpy.is_authorized with a PolicySet and Entities parsed once and reused
      - the floor (bench/floor.py): a dict index hand-specialised to this workload
  * batch throughput (decisions/s) of Engine.check_batch in batches of 1,000, next to
    the floor looping over the same batch and cedarpy.is_authorized_batch
  * authz.compile time vs cedarpy's own parse of the same text
    (PolicySet.from_str and policies_to_json_str), and the LMDB index size on disk
  * agreement: authz vs cedarpy (decision, determining policies, erroring
    policies) on every request cedarpy decided, and authz vs floor on more.
Then, when size 10 is among the sizes, for each larger size N:
  * size scaling: the N-policy index on its own requests against the 10-policy index
    on its own, timed in alternating rounds (the rows are measured minutes apart, and
    this VM's speed changes by up to 2x between minutes); the p50 @100,000 <= 1.5x
    p50 @10 target is judged on this ratio; and the same with each side cycling its first
    100 requests (cache-warm), which separates the work per request from the cache misses;
  * index isolation: the 10-policy workload's requests against its own index and against the same
workload plus N-10 unrelated policies and their entities (workload.with_unrelated),
timed in alternating rounds; every decision must be the same on both.
Every loop is bounded in count and time. If authz cannot be imported the
cedarpy and floor columns are still measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cedarpy  # noqa: E402

from floor import Floor  # noqa: E402
from workload import generate, with_unrelated  # noqa: E402

pc = time.perf_counter_ns

authz = None
_AUTHZ_ERR = "not imported yet"


def import_authz(path):
    """Imports authz from `path` (default: this repository's root)."""
    global authz, _AUTHZ_ERR
    sys.path.insert(1, os.path.abspath(path or os.path.dirname(HERE)))
    try:
        import authz as mod
    except Exception as e:  # noqa: BLE001
        authz, _AUTHZ_ERR = None, f"{type(e).__name__}: {e}"
        return
    if hasattr(mod, "Engine") and hasattr(mod, "compile"):
        authz, _AUTHZ_ERR = mod, None
    else:
        authz, _AUTHZ_ERR = None, f"{getattr(mod, '__file__', mod)} has no Engine/compile"


# ---------------------------------------------------------------------------
# budgets (count, seconds); --quick divides the seconds and counts

class Budget:
    def __init__(self, quick: bool):
        q = 5 if quick else 1
        self.lat_n = 20000 // q          # authz / floor timed calls per size
        self.lat_s = 3.0 / q             # ... and seconds (each)
        self.warm_n = 2000 // q
        self.ced_n = 200 // q            # cedarpy timed calls per size
        self.ced_s = 10.0 / q
        self.batch = 1000                # requests per check_batch call
        self.batch_n = 1000 // q         # batches
        self.batch_s = 2.0 / q
        self.ced_batch_s = 2.0 / q       # cedarpy is_authorized_batch budget
        self.rep_n = 5 // q or 1         # compile / parse repeats (min taken) ...
        self.rep_s = 3.0 / q             # ... while the total stays under this
        self.agree_n = 4000 // q         # authz vs floor agreement requests
        self.rounds = 4                  # authz/floor latency interleaved in rounds
        self.agree_ced_n = 1000 // q     # cedarpy decisions for the agreement check ...
        self.agree_ced_s = 3.0 / q       # ... (untimed extra ones stop after this)
        self.reuse = False               # --reuse-requests


def pct(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def timer_overhead_ns() -> float:
    xs = []
    for _ in range(20000):
        t0 = pc()
        t1 = pc()
        xs.append(t1 - t0)
    return statistics.median(xs)


def repeat_min(fn, budget: Budget):
    """Runs fn() at least once, repeating (min taken) while count and time allow."""
    best, n, start, out = None, 0, time.perf_counter(), None
    while True:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
        n += 1
        spent = time.perf_counter() - start
        if n >= budget.rep_n or spent + dt > budget.rep_s:
            return best, n, out


def disk_size(db: str):
    """(allocated bytes, apparent bytes) of the LMDB environment at `db`."""
    paths = []
    if os.path.isdir(db):
        for name in os.listdir(db):
            paths.append(os.path.join(db, name))
    else:
        for p in (db, db + "-lock"):
            if os.path.exists(p):
                paths.append(p)
    alloc = app = 0
    data_alloc = data_app = 0
    for p in paths:
        st = os.stat(p)
        alloc += st.st_blocks * 512
        app += st.st_size
        if not p.endswith("lock") and not p.endswith("lock.mdb"):
            data_alloc += st.st_blocks * 512
            data_app += st.st_size
    return data_alloc, data_app, alloc, app


# ---------------------------------------------------------------------------
# normalising decisions to (allowed, sorted determining ids, sorted errored ids)

_POLICY_RE = re.compile(r"`policy(\d+)`")


def cedar_norm(res, ids):
    reasons = sorted(ids[int(x[len("policy"):])] if x.startswith("policy") and x[6:].isdigit() else x
                     for x in res.diagnostics.reasons)
    errs = []
    for e in res.diagnostics.errors:
        m = _POLICY_RE.search(e)
        errs.append(ids[int(m.group(1))] if m else e)
    return bool(res.allowed), reasons, sorted(errs)


def _err_policy(e):
    if isinstance(e, dict):
        return e.get("policy", e.get("policy_id", str(e)))
    for attr in ("policy", "policy_id", "id"):
        if hasattr(e, attr):
            return getattr(e, attr)
    if isinstance(e, (tuple, list)) and e:
        return e[0]
    return str(e)


def authz_norm(d):
    return bool(d.allowed), sorted(d.policies), sorted(_err_policy(e) for e in d.errors)


def floor_norm(t):
    return t[0], sorted(t[1]), sorted(t[2])


# ---------------------------------------------------------------------------
# timed loops (each call timed on its own; no wrapper call inside the timed region)

# Each request is decoded from its JSON line just before it is timed (outside the
# timed region), so its objects are fresh and cache-warm as in a server that has
# just parsed it; the index and entities are whatever the engine left in cache.
# With --reuse-requests the same long-lived request objects are cycled instead.

def _source(lines, reuse):
    """get(i) -> the JSON line i decoded (a request, or a batch's list of them): fresh each call, or reused."""
    if reuse:
        objs = [json.loads(x) for x in lines]
        return lambda i: objs[i]
    loads = json.loads
    return lambda i: loads(lines[i])


def lat_check(check, lines, reuse, n_max, s_max, out):
    """Times check(principal, action, resource, context) once per request (authz's and the floor's)."""
    get = _source(lines, reuse)
    m = len(lines)
    deadline = pc() + int(s_max * 1e9)
    i = 0
    while i < n_max:
        q = get(i % m)
        p, a, r, c = q["principal"], q["action"], q["resource"], q["context"]
        t0 = pc()
        check(p, a, r, c)
        t1 = pc()
        out.append(t1 - t0)
        i += 1
        if t1 > deadline:
            break


def lat_cedar(ps, ents, lines, reuse, n_max, s_max, out, results):
    is_auth = cedarpy.is_authorized
    get = _source(lines, reuse)
    m = len(lines)
    deadline = pc() + int(s_max * 1e9)
    i = 0
    while i < n_max:
        q = get(i % m)
        t0 = pc()
        res = is_auth(q, ps, ents)
        t1 = pc()
        out.append(t1 - t0)
        results.append((i % m, res))
        i += 1
        if t1 > deadline:
            break


def batch_authz(engine, batch_lines, reuse, n_max, s_max):
    cb = engine.check_batch
    get = _source(batch_lines, reuse)
    deadline = pc() + int(s_max * 1e9)
    total_ns = dec = 0
    per = []
    i = 0
    while i < n_max:
        b = get(i % len(batch_lines))
        t0 = pc()
        cb(b)
        t1 = pc()
        total_ns += t1 - t0
        dec += len(b)
        per.append(len(b) / ((t1 - t0) / 1e9))
        i += 1
        if t1 > deadline:
            break
    return dec / (total_ns / 1e9), statistics.median(per), i


def batch_floor(floor, batch_lines, reuse, n_max, s_max):
    check = floor.check
    get = _source(batch_lines, reuse)
    deadline = pc() + int(s_max * 1e9)
    total_ns = dec = 0
    i = 0
    while i < n_max:
        b = get(i % len(batch_lines))
        t0 = pc()
        for q in b:
            check(q["principal"], q["action"], q["resource"], q["context"])
        t1 = pc()
        total_ns += t1 - t0
        dec += len(b)
        i += 1
        if t1 > deadline:
            break
    return dec / (total_ns / 1e9), i


# ---------------------------------------------------------------------------

def run_size(n, budget: Budget, seed: int, workdir: str, log):
    R = {"policies": n}
    t0 = time.perf_counter()
    w = generate(n, seed=seed)
    R["gen_s"] = time.perf_counter() - t0
    R.update({k: w.counts[k] for k in ("entities", "agents", "tools", "policy_bytes")})
    folder = os.path.join(workdir, f"src-{n}")
    ppath, epath = w.write(folder)
    ents_json = w.entities_json
    text = w.policies_text
    log(f"[{n}] generated {n} policies, {w.counts['entities']} entities, "
        f"{len(w.requests)} requests in {R['gen_s']:.2f}s")

    # --- parse / compile --------------------------------------------------------
    gc.collect()
    R["ced_from_str_s"], _, ps = repeat_min(lambda: cedarpy.PolicySet.from_str(text), budget)
    R["ced_to_json_s"], _, _ = repeat_min(lambda: cedarpy.policies_to_json_str(text), budget)
    R["ced_entities_s"], _, ents = repeat_min(lambda: cedarpy.Entities.from_json_str(ents_json), budget)
    log(f"[{n}] cedarpy PolicySet.from_str {R['ced_from_str_s']:.3f}s, policies_to_json_str "
        f"{R['ced_to_json_s']:.3f}s, Entities.from_json_str {R['ced_entities_s']:.3f}s")

    engine = None
    if authz is not None:
        k = [0]

        def do_compile():
            k[0] += 1
            db = os.path.join(workdir, f"db-{n}-{k[0]}.lmdb")
            authz.compile([ppath, epath], db=db)
            return db

        R["authz_compile_s"], reps, db = repeat_min(do_compile, budget)
        # keep only the last db
        for j in range(1, k[0]):
            old = os.path.join(workdir, f"db-{n}-{j}.lmdb")
            if os.path.isdir(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                for p in (old, old + "-lock"):
                    if os.path.exists(p):
                        os.remove(p)
        R["db"] = db
        (R["db_alloc"], R["db_apparent"], R["db_alloc_all"], R["db_apparent_all"]) = disk_size(db)
        engine = authz.Engine(db)
        log(f"[{n}] authz.compile {R['authz_compile_s']:.3f}s (best of {reps}), "
            f"index {R['db_alloc'] / 1e6:.2f} MB on disk ({R['db_apparent'] / 1e6:.2f} MB apparent)")

    floor = Floor(w)
    reqs = w.requests
    lines = [json.dumps(q) for q in reqs]
    reuse = budget.reuse

    # --- cedarpy latency (and its decisions, for the agreement check) ------------
    ced_lat, ced_res = [], []
    warm = 3 if n >= 10000 else 20
    lat_cedar(ps, ents, lines[-warm:], reuse, warm, budget.ced_s / 4, [], [])
    gc.collect()
    gc.disable()
    try:
        lat_cedar(ps, ents, lines, reuse, budget.ced_n, budget.ced_s, ced_lat, ced_res)
    finally:
        gc.enable()
    R["ced_n"] = len(ced_lat)
    R["ced_p50"] = pct(ced_lat, 50) / 1e3
    R["ced_p99"] = pct(ced_lat, 99) / 1e3
    log(f"[{n}] cedarpy: {len(ced_lat)} decisions, p50 {R['ced_p50']:.1f}µs p99 {R['ced_p99']:.1f}µs")
    # more cedarpy decisions (untimed) for the agreement check, bounded
    decided = {i: res for i, res in ced_res}
    deadline = time.perf_counter() + budget.agree_ced_s
    i = 0
    while len(decided) < min(len(reqs), budget.agree_ced_n) and time.perf_counter() < deadline:
        if i not in decided:
            decided[i] = cedarpy.is_authorized(reqs[i], ps, ents)
        i += 1

    # --- authz / floor latency, interleaved in rounds -------------------------------
    lat_check(floor.check, lines, reuse, budget.warm_n, 1.0, [])
    if engine is not None:
        lat_check(engine.check, lines, reuse, budget.warm_n, 1.0, [])
    a_lat, f_lat = [], []
    per_round_n = budget.lat_n // budget.rounds
    per_round_s = budget.lat_s / budget.rounds
    for rnd in range(budget.rounds):
        # rotate the request list start so rounds see different requests
        off = (rnd * per_round_n) % len(lines)
        tr = lines[off:] + lines[:off]
        gc.collect()
        gc.disable()
        try:
            if engine is not None:
                lat_check(engine.check, tr, reuse, per_round_n, per_round_s, a_lat)
            lat_check(floor.check, tr, reuse, per_round_n, per_round_s, f_lat)
        finally:
            gc.enable()
    R["floor_n"] = len(f_lat)
    R["floor_p50"] = pct(f_lat, 50) / 1e3
    R["floor_p99"] = pct(f_lat, 99) / 1e3
    if engine is not None:
        R["authz_n"] = len(a_lat)
        R["authz_p50"] = pct(a_lat, 50) / 1e3
        R["authz_p99"] = pct(a_lat, 99) / 1e3
        log(f"[{n}] authz.check: {len(a_lat)} decisions, p50 {R['authz_p50']:.2f}µs p99 {R['authz_p99']:.2f}µs")
    log(f"[{n}] floor: {len(f_lat)} decisions, p50 {R['floor_p50']:.2f}µs p99 {R['floor_p99']:.2f}µs")

    # --- batch throughput -------------------------------------------------------------
    B = budget.batch
    batches = [reqs[i:i + B] for i in range(0, len(reqs) - B + 1, B)] or [reqs]
    batch_lines = [json.dumps(b) for b in batches]
    gc.collect()
    gc.disable()
    try:
        R["floor_batch_dps"], _ = batch_floor(floor, batch_lines, reuse, budget.batch_n, budget.batch_s)
        if engine is not None:
            batch_authz(engine, batch_lines[:1], reuse, 3, 1.0)  # warm-up
            R["authz_batch_dps"], R["authz_batch_med_dps"], R["authz_batches"] = batch_authz(
                engine, batch_lines, reuse, budget.batch_n, budget.batch_s)
    finally:
        gc.enable()
    # cedarpy batch: size the batch to its measured latency so it fits the budget
    p50s = max(R["ced_p50"], 1.0) / 1e6
    cb = max(1, min(B, int(budget.ced_batch_s / 2 / p50s)))
    cbatch = json.loads(json.dumps(reqs[:cb]))
    t0 = pc()
    cedarpy.is_authorized_batch(cbatch, ps, ents)
    R["ced_batch_dps"] = cb / ((pc() - t0) / 1e9)
    R["ced_batch_size"] = cb
    if engine is not None:
        log(f"[{n}] check_batch: {R['authz_batch_dps']:,.0f} decisions/s over {R['authz_batches']} "
            f"batches of {B} (median batch {R['authz_batch_med_dps']:,.0f}/s)")
    log(f"[{n}] floor loop: {R['floor_batch_dps']:,.0f}/s; cedarpy is_authorized_batch "
        f"({cb} requests): {R['ced_batch_dps']:,.0f}/s")

    # --- agreement ------------------------------------------------------------------------
    mism = []
    ced_pairs = [(reqs[i], cedar_norm(res, w.policy_ids)) for i, res in sorted(decided.items())]
    R["agree_ced_n"] = len(ced_pairs)
    R["floor_vs_ced_mismatch"] = 0
    outcome = {"allow": 0, "forbid": 0, "default": 0, "with_errors": 0}
    for q in reqs:   # the workload's outcome mix, over all its requests (floor == cedarpy)
        fa, fr, fe = floor.check(q["principal"], q["action"], q["resource"], q["context"])
        outcome["allow" if fa else ("forbid" if fr else "default")] += 1
        outcome["with_errors"] += bool(fe)
    for q, cn in ced_pairs:
        fnm = floor_norm(floor.check(q["principal"], q["action"], q["resource"], q["context"]))
        if fnm != cn:
            R["floor_vs_ced_mismatch"] += 1
            mism.append(("floor", "cedarpy", q, fnm, cn))
    R["outcomes"] = outcome
    if engine is not None:
        R["authz_vs_ced_mismatch"] = 0
        for q, cn in ced_pairs:
            try:
                an = authz_norm(engine.check(principal=q["principal"], action=q["action"],
                                             resource=q["resource"], context=q["context"]))
            except Exception as e:  # noqa: BLE001
                an = ("exception", f"{type(e).__name__}: {e}")
            if an != cn:
                R["authz_vs_ced_mismatch"] += 1
                mism.append(("authz", "cedarpy", q, an, cn))
        # authz vs floor on more requests (the floor agrees with cedarpy above)
        R["authz_vs_floor_mismatch"] = 0
        k = min(len(reqs), budget.agree_n)
        for q in reqs[:k]:
            try:
                an = authz_norm(engine.check(principal=q["principal"], action=q["action"],
                                             resource=q["resource"], context=q["context"]))
            except Exception as e:  # noqa: BLE001
                an = ("exception", f"{type(e).__name__}: {e}")
            fnm = floor_norm(floor.check(q["principal"], q["action"], q["resource"], q["context"]))
            if an != fnm:
                R["authz_vs_floor_mismatch"] += 1
                mism.append(("authz", "floor", q, an, fnm))
        R["agree_floor_n"] = k
        # check_batch agrees with check, in order
        R["batch_vs_check_mismatch"] = 0
        b = batches[0]
        try:
            out = engine.check_batch(b)
            for q, d in zip(b, out):
                one = authz_norm(engine.check(principal=q["principal"], action=q["action"],
                                              resource=q["resource"], context=q["context"]))
                if authz_norm(d) != one:
                    R["batch_vs_check_mismatch"] += 1
                    mism.append(("check_batch", "check", q, authz_norm(d), one))
            if len(out) != len(b):
                R["batch_vs_check_mismatch"] += abs(len(b) - len(out))
        except Exception as e:  # noqa: BLE001
            R["batch_vs_check_mismatch"] = f"exception: {type(e).__name__}: {e}"
    R["mismatch_examples"] = [
        {"a": a, "b": b, "request": q, a: list(x), b: list(y),
         "policies": {pid: _policy_text(w, pid) for pid in set(_ids(x)) ^ set(_ids(y))}}
        for a, b, q, x, y in mism[:5]]
    R["_mismatch_total"] = len(mism)
    log(f"[{n}] agreement: floor vs cedarpy {R['floor_vs_ced_mismatch']}/{len(ced_pairs)} mismatches"
        + (f", authz vs cedarpy {R['authz_vs_ced_mismatch']}/{len(ced_pairs)}, authz vs floor "
           f"{R['authz_vs_floor_mismatch']}/{R['agree_floor_n']}, check_batch vs check "
           f"{R['batch_vs_check_mismatch']}" if engine is not None else ""))
    del ps, ents, engine
    gc.collect()
    return R


def _ids(x):
    out = []
    for part in x[1:]:
        if isinstance(part, (list, tuple)):
            out.extend(p for p in part if isinstance(p, str))
    return out


def _policy_text(w, pid):
    try:
        i = w.policy_ids.index(pid)
    except ValueError:
        return None
    return w.policies_text.split("\n\n")[i]


ROUND_WARM_N = 1000  # untimed checks before each side's timed share of a round
HOT_REQUESTS = 100   # size scaling with a cache-warm working set: each side cycles this many requests


def alternate(sides, budget: Budget):
    """Times two engines' check, each on its own request lines, in alternating rounds (the order swapped
    each round), so that both see the machine's same phases. `sides`: {tag: (engine, lines)}, two of them.
    Returns ({tag: latencies in ns}, per-round p50 ratios second / first)."""
    (ta, (ea, la)), (tb, (eb, lb)) = sides.items()
    reuse = budget.reuse
    for e, lines in ((ea, la), (eb, lb)):
        lat_check(e.check, lines, reuse, budget.warm_n, 1.0, [])
    lat = {ta: [], tb: []}
    ratios = []
    # Twice the rounds of the main rows, half as long each: the machine's phases last seconds.
    rounds = 2 * budget.rounds
    per_round_n = budget.lat_n // rounds
    per_round_s = budget.lat_s / rounds
    for rnd in range(rounds):
        order = ((ta, ea, la), (tb, eb, lb))
        got = {}
        gc.collect()
        gc.disable()
        try:
            for tag, e, lines in (order if rnd % 2 == 0 else order[::-1]):
                off = (rnd * per_round_n) % len(lines)
                rotated = lines[off:] + lines[:off]
                # The other side's round has just pushed this one's index out of cache: warm it again,
                # untimed, as the main rows are warm, so that a larger working set is not timed cold.
                lat_check(e.check, rotated[-ROUND_WARM_N:], reuse, ROUND_WARM_N, per_round_s, [])
                got[tag] = []
                lat_check(e.check, rotated, reuse, per_round_n, per_round_s, got[tag])
        finally:
            gc.enable()
        ratios.append(pct(got[tb], 50) / pct(got[ta], 50))
        for tag in got:
            lat[tag].extend(got[tag])
    return lat, ratios


def run_scaling(n, small_db: str, large_db: str, seed: int, budget: Budget, log):
    """p50 of the main workload at n policies against the 10-policy one, each on its own requests,
    timed in alternating rounds: the rows above are measured minutes apart, in whatever phase the
    machine was in then (the same 10-policy workload has measured 1.0 and 2.0 µs within one run)."""
    sides = {}
    for tag, size, db in (("10", 10, small_db), ("n", n, large_db)):
        lines = [json.dumps(q) for q in generate(size, seed=seed).requests]
        sides[tag] = (authz.Engine(db), lines)
    lat, ratios = alternate(sides, budget)
    R = {"policies": n, "round_ratios": ratios}
    for tag, xs in lat.items():
        R[f"p50_{tag}"], R[f"p99_{tag}"] = pct(xs, 50) / 1e3, pct(xs, 99) / 1e3
    # The same with each side cycling its first HOT_REQUESTS requests: what the index and entities they
    # reach cost once in cache, so that the two parts of the growth show apart (more work per request at
    # N, and cache misses over a working set ~500 times as large: bench/memory_latency.py).
    lat, R["hot_round_ratios"] = alternate({tag: (e, lines[:HOT_REQUESTS]) for tag, (e, lines) in sides.items()},
                                           budget)
    for tag, xs in lat.items():
        R[f"hot_p50_{tag}"] = pct(xs, 50) / 1e3
    log(f"[scaling {n}] p50 {R['p50_n']:.2f}µs vs {R['p50_10']:.2f}µs at 10 policies in alternating rounds "
        f"({R['p50_n'] / R['p50_10']:.2f}x; median round {statistics.median(ratios):.2f}x); "
        f"{HOT_REQUESTS} requests cycled: {R['hot_p50_n']:.2f}µs vs {R['hot_p50_10']:.2f}µs "
        f"({R['hot_p50_n'] / R['hot_p50_10']:.2f}x)")
    for engine, _ in sides.values():
        engine.close()
    return R


def run_isolation(n, budget: Budget, seed: int, workdir: str, log):
    """p50/p99 of the 10-policy workload's requests with and without n-10 unrelated policies added."""
    base = generate(10, seed=seed)
    w = with_unrelated(base, n)
    engines = []
    for tag, wl in (("base", base), ("unrelated", w)):
        ppath, epath = wl.write(os.path.join(workdir, f"iso-{n}-{tag}"))
        db = os.path.join(workdir, f"iso-{n}-{tag}.lmdb")
        authz.compile([ppath, epath], db=db)
        engines.append(authz.Engine(db))
    small, large = engines
    R = {"policies": n, "entities": w.counts["entities"], "base_entities": base.counts["entities"]}
    # Unrelated policies never apply: every decision is the 10-policy index's.
    R["mismatch"] = sum(
        authz_norm(small.check(q["principal"], q["action"], q["resource"], q["context"]))
        != authz_norm(large.check(q["principal"], q["action"], q["resource"], q["context"]))
        for q in base.requests)
    lines = [json.dumps(q) for q in base.requests]
    lat, ratios = alternate({"base": (small, lines), "unrelated": (large, lines)}, budget)
    for tag, xs in lat.items():
        R[f"{tag}_p50"], R[f"{tag}_p99"] = pct(xs, 50) / 1e3, pct(xs, 99) / 1e3
    R["round_ratios"] = ratios
    log(f"[isolation {n}] p50 {R['unrelated_p50']:.2f}µs vs {R['base_p50']:.2f}µs with 10 policies "
        f"({R['unrelated_p50'] / R['base_p50']:.2f}x; median round {statistics.median(ratios):.2f}x), "
        f"{R['mismatch']} decisions differ")
    del small, large, engines
    gc.collect()
    return R


# ---------------------------------------------------------------------------
# report

def fmt_us(x):
    if x != x:  # nan
        return "–"
    if x >= 1000:
        return f"{x / 1000:,.1f} ms"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}"


def fmt_dps(x):
    if x is None or x != x:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M/s"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k/s"
    return f"{x:.1f}/s"


def _table(title, columns, rows, intro=None, left=()):
    """A report section: `## title`, an optional paragraph, and a table of `rows` (lists of cells) under
    `columns`, right-aligned but for the column numbers in `left`."""
    out = [f"## {title}", ""]
    if intro:
        out += [intro, ""]
    out.append("| " + " | ".join(columns) + " |")
    out.append("|" + "|".join("---" if i in left else "---:" for i in range(len(columns))) + "|")
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


def report(results, timer_ns, authz_err, total_s, load, isolation=(), scaling=()):
    L = []
    have = authz_err is None
    rows = []
    for R in results:
        ap50, ap99 = R.get("authz_p50", float("nan")), R.get("authz_p99", float("nan"))
        rows.append([f"{R['policies']:,}", f"{R['entities']:,}", fmt_us(ap50), fmt_us(ap99),
                     fmt_us(R['ced_p50']), fmt_us(R['ced_p99']), fmt_us(R['floor_p50']), fmt_us(R['floor_p99']),
                     f"{R['ced_p50'] / ap50 if have else float('nan'):,.0f}x",
                     f"{ap50 / R['floor_p50'] if have else float('nan'):.2f}x",
                     f"{R.get('authz_n', 0)}/{R['ced_n']}/{R['floor_n']}"])
    L += _table("Per-decision latency (µs, each call timed individually)",
                ["policies", "entities", "authz p50", "authz p99", "cedarpy p50", "cedarpy p99", "floor p50",
                 "floor p99", "cedarpy / authz (p50)", "authz / floor (p50)", "samples a/c/f"], rows)
    rows = []
    for R in results:
        c = R.get("authz_compile_s")
        rows.append([f"{R['policies']:,}", fmt_dps(R.get('authz_batch_dps')), fmt_dps(R['floor_batch_dps']),
                     fmt_dps(R['ced_batch_dps']), f"{c:.3f} s" if c is not None else "–",
                     f"{R['ced_from_str_s']:.3f} s", f"{R['ced_to_json_s']:.3f} s",
                     f"{c / R['ced_from_str_s']:.2f}x" if c is not None else "–",
                     f"{c / R['ced_to_json_s']:.2f}x" if c is not None else "–",
                     f"{R['ced_entities_s']:.3f} s",
                     f"{R['db_alloc'] / 1e6:.2f} MB" if "db_alloc" in R else "–",
                     f"{R['policy_bytes'] / 1e6:.2f} MB"])
    L += _table("Batch throughput, compile, index size",
                ["policies", "check_batch", "floor loop", "cedarpy batch", "authz compile", "cedarpy from_str",
                 "cedarpy to_json", "compile / from_str", "compile / to_json", "cedarpy Entities", "LMDB on disk",
                 "policy text"], rows)
    rows = []
    for R in results:
        o = R["outcomes"]
        rows.append([f"{R['policies']:,}", f"{R['agree_ced_n']}",
                     f"{o['allow']} / {o['forbid']} / {o['default']} / {o['with_errors']}",
                     f"{R.get('authz_vs_ced_mismatch', '–')}", f"{R['floor_vs_ced_mismatch']}",
                     f"{R.get('authz_vs_floor_mismatch', '–')}"
                     f"{('/' + str(R['agree_floor_n'])) if 'agree_floor_n' in R else ''}",
                     f"{R.get('batch_vs_check_mismatch', '–')}"])
    L += _table("Agreement (decision, determining policies, erroring policies)",
                ["policies", "requests (cedarpy)", "all requests: allow / forbid / default deny / with errors",
                 "authz≠cedarpy", "floor≠cedarpy", "authz≠floor", "check_batch≠check"], rows, left=(2,))
    if scaling:
        rows = []
        for R in scaling:
            rr = R["round_ratios"]
            hr = R["hot_round_ratios"]
            rows.append([f"{R['policies']:,}", fmt_us(R['p50_10']), fmt_us(R['p50_n']), fmt_us(R['p99_10']),
                         fmt_us(R['p99_n']), f"{R['p50_n'] / R['p50_10']:.2f}x",
                         f"{statistics.median(rr):.2f}x ({min(rr):.2f}–{max(rr):.2f})",
                         f"{fmt_us(R['hot_p50_10'])} / {fmt_us(R['hot_p50_n'])}",
                         f"{statistics.median(hr):.2f}x ({min(hr):.2f}–{max(hr):.2f})"])
        L += _table("Size scaling: each size's workload against the 10-policy one, in alternating rounds",
                    ["policies", "p50 at 10", "p50 at N", "p99 at 10", "p99 at N", "p50 N / 10",
                     "per round: median (range)", f"{HOT_REQUESTS} requests cycled: p50 at 10 / at N",
                     f"{HOT_REQUESTS} cycled, per round: median (range)"], rows,
                    intro="The rows above are measured minutes apart, and this machine's speed changes by up "
                          "to 2x from one minute to the next; here both indexes, each with its own requests, "
                          f"are timed in turn within each round. The last two columns time each side on its "
                          f"first {HOT_REQUESTS} requests only, cycled, so that what they read stays in cache: "
                          "the growth left there is the work per request, the rest is cache misses.")
    if isolation:
        rows = []
        for R in isolation:
            rr = R["round_ratios"]
            rows.append([f"{R['policies']:,}", f"{R['entities']:,}", fmt_us(R['base_p50']),
                         fmt_us(R['unrelated_p50']), fmt_us(R['base_p99']), fmt_us(R['unrelated_p99']),
                         f"{R['unrelated_p50'] / R['base_p50']:.2f}x",
                         f"{statistics.median(rr):.2f}x ({min(rr):.2f}–{max(rr):.2f})", f"{R['mismatch']}"])
        L += _table("Index isolation: the 10-policy workload's requests, with unrelated policies added",
                    ["policies", "entities", "p50 with 10", "p50 with N", "p99 with 10", "p99 with N", "p50 N / 10",
                     "per round: median (range)", "decisions ≠ 10-policy"], rows,
                    intro="Its own index, and the same plus N-10 policies (and their agents, groups, tools) that "
                          "no request reaches, timed in alternating rounds.")
    L.append(f"timer overhead (back-to-back perf_counter_ns, median): {timer_ns:.0f} ns, included in every "
             f"latency above. Total run {total_s:.0f} s. Python {sys.version.split()[0]}, cedarpy "
             f"{getattr(cedarpy, '__version__', _cedarpy_version())}, {os.cpu_count()} CPUs, load average "
             f"{load[0]:.2f} at start, {load[1]:.2f} at end (other processes on the machine skew the numbers).")
    if not have:
        L.append(f"authz not measured: {authz_err}")
    L.append("")

    # targets
    by = {R["policies"]: R for R in results}
    T = []

    def verdict(ok):
        return "MET" if ok else "NOT MET"

    if not have:
        T.append("targets: not evaluated (authz not importable)")
    else:
        if 10000 in by:
            v = by[10000]["authz_p50"]
            T.append(f"target p50 Engine.check @10,000 <= 3 µs: {verdict(v <= 3.0)} ({v:.2f} µs)")
        else:
            T.append("target p50 Engine.check @10,000 <= 3 µs: not measured (size 10000 not run)")
        at_100k = [R for R in scaling if R["policies"] == 100000]
        if at_100k:
            R = at_100k[0]
            a, b = R["p50_10"], R["p50_n"]
            rows_ratio = by[100000]["authz_p50"] / by[10]["authz_p50"]
            T.append(f"target p50 @100,000 <= 1.5x p50 @10: {verdict(b <= 1.5 * a)} "
                     f"({b:.2f} µs vs {a:.2f} µs = {b / a:.2f}x in alternating rounds; "
                     f"{rows_ratio:.2f}x between the rows, measured apart)")
        else:
            T.append("target p50 @100,000 <= 1.5x p50 @10: not measured (needs sizes 10 and 100000)")
        worst = min(results, key=lambda R: R["authz_batch_dps"])
        T.append(f"target check_batch >= 1,000,000 decisions/s (every size): "
                 f"{verdict(worst['authz_batch_dps'] >= 1e6)} (worst {worst['authz_batch_dps']:,.0f}/s "
                 f"@{worst['policies']:,}; " + ", ".join(
                     f"{R['policies']:,}: {R['authz_batch_dps'] / 1e6:.2f}M" for R in results) + ")")
        if 100000 in by:
            R = by[100000]
            c = R["authz_compile_s"]
            T.append(f"target compile @100,000 <= 2x cedarpy parse: vs PolicySet.from_str "
                     f"{verdict(c <= 2 * R['ced_from_str_s'])} ({c:.2f} s vs {R['ced_from_str_s']:.2f} s = "
                     f"{c / R['ced_from_str_s']:.2f}x); vs policies_to_json_str "
                     f"{verdict(c <= 2 * R['ced_to_json_s'])} ({R['ced_to_json_s']:.2f} s = "
                     f"{c / R['ced_to_json_s']:.2f}x)")
        else:
            T.append("target compile @100,000 <= 2x cedarpy parse: not measured (size 100000 not run)")
        bad = sum((R.get("authz_vs_ced_mismatch") or 0) + (R.get("authz_vs_floor_mismatch") or 0)
                  + (R.get("batch_vs_check_mismatch") if isinstance(R.get("batch_vs_check_mismatch"), int) else 1)
                  for R in results)
        if isolation:
            R = isolation[-1]
            T.append(f"index isolation (no target of its own): p50 with "
                     f"{R['policies'] - 10:,} unrelated policies added to the 10-policy workload "
                     f"{R['unrelated_p50'] / R['base_p50']:.2f}x its p50 with 10 "
                     f"({R['unrelated_p50']:.2f} µs vs {R['base_p50']:.2f} µs, same requests and rounds)")
        bad += sum(R["mismatch"] for R in isolation)
        T.append(f"agreement authz vs cedarpy/floor: {'OK' if bad == 0 else f'{bad} MISMATCHES (bug)'}")
    fb = sum(R["floor_vs_ced_mismatch"] for R in results)
    T.append(f"floor vs cedarpy agreement: {'OK' if fb == 0 else f'{fb} MISMATCHES (bench bug)'}")
    L.append("## Targets")
    L.append("")
    L.extend(f"- {t}" for t in T)
    examples = [e for R in results for e in R["mismatch_examples"]]
    if examples:
        L.append("")
        L.append("## Mismatch examples (first few per size)")
        for e in examples[:10]:
            L.append("```json")
            L.append(json.dumps(e, indent=1, default=str))
            L.append("```")
    return "\n".join(L)


def _cedarpy_version():
    try:
        from importlib.metadata import version
        return version("cedarpy")
    except Exception:  # noqa: BLE001
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=None, help="comma-separated policy counts "
                    "(default 10,1000,10000,100000; with --quick 10,1000,10000)")
    ap.add_argument("--quick", action="store_true", help="smaller sample counts and time budgets")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--keep", action="store_true", help="keep the generated sources and LMDB files")
    ap.add_argument("--authz-path", default=None,
                    help="folder holding the authz package to measure (default: this repository)")
    ap.add_argument("--reuse-requests", action="store_true",
                    help="cycle long-lived request objects instead of decoding each request "
                         "(from its JSON line, untimed) just before its call")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in (args.sizes or ("10,1000,10000" if args.quick else "10,1000,10000,100000")).split(",")]
    budget = Budget(args.quick)
    budget.reuse = args.reuse_requests

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    import_authz(args.authz_path)
    if authz is not None:
        log(f"measuring authz from {os.path.dirname(os.path.dirname(os.path.abspath(authz.__file__)))}")

    if authz is None:
        log(f"authz not available ({_AUTHZ_ERR}); measuring cedarpy and the floor only")
    start = time.perf_counter()
    load0 = os.getloadavg()[0]
    timer_ns = timer_overhead_ns()
    workdir = tempfile.mkdtemp(prefix="authz-bench-")
    results = []
    isolation = []
    scaling = []
    try:
        for n in sizes:
            results.append(run_size(n, budget, args.seed, workdir, log))
        if authz is not None and 10 in sizes:
            small_db = results[sizes.index(10)]["db"]
            for R in results:
                if R["policies"] > 10:
                    scaling.append(run_scaling(R["policies"], small_db, R["db"], args.seed, budget, log))
            for n in sizes:
                if n > 10:
                    isolation.append(run_isolation(n, budget, args.seed, workdir, log))
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    load = (load0, os.getloadavg()[0])
    out = report(results, timer_ns, _AUTHZ_ERR, time.perf_counter() - start, load, isolation, scaling)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "scaling": scaling, "isolation": isolation, "timer_ns": timer_ns,
                       "authz_error": _AUTHZ_ERR, "loadavg": load}, f, indent=1, default=str)
    bad = any((R.get("authz_vs_ced_mismatch") or 0) or (R.get("authz_vs_floor_mismatch") or 0)
              or R["floor_vs_ced_mismatch"] for R in results) or any(R["mismatch"] for R in isolation)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
