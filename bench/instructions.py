#!/usr/bin/env python3
"""Instructions (and simulated cache misses) per decision, counted by callgrind: numbers that do not
move with the machine's phase, for engine changes too small for timings on this VM to show.

    python3 bench/instructions.py [--sizes 10,10000,100000] [--checks 20000] [--misses]

For each size, bench/workload.py's workload is compiled into a temporary index, and Engine.check
(over its 4,000 requests, each decoded from JSON just before its call, as bench_engine.py times
them) and Engine.check_batch (batches of 1,000 decoded just before the call) run under
`valgrind --tool=callgrind`, which counts only what runs inside those calls (--toggle-collect).
With --misses, callgrind also simulates a cache (a 32 KiB L1 and a 1 MiB last level: this
machine's L2 per core) and the report gives its last-level misses per decision too, for the
4,000 requests cycled ("cold": the working set of bench_engine's rows) and for their first 100
cycled ("warm"). callgrind ignores prefetch instructions: a miss it counts may be hidden on the
real machine. Needs valgrind (`apt-get install -y valgrind`); callgrind runs a program ~50x slower,
so this takes a few minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Run under callgrind: decides `decisions` requests from `requests` with check or check_batch. Only the
# calls matching --toggle-collect are counted, so decoding the JSON and starting Python are not.
HARNESS = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import authz
db, path, mode, decisions, distinct = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
lines = open(path).read().splitlines()[:distinct]
engine = authz.Engine(db, poll_interval_s=1e6)
if mode == "check":
    check, loads = engine.check, json.loads
    for i in range(decisions):
        q = loads(lines[i % len(lines)])
        check(q["principal"], q["action"], q["resource"], q["context"])
else:
    texts = ["[" + ",".join(lines[(i + k) % len(lines)] for k in range(1000)) + "]"
             for i in range(0, decisions, 1000)]
    for text in texts:
        engine.check_batch(json.loads(text))
"""

TOGGLE = {"check": "*EngineCore_*check", "check_batch": "*EngineCore_*check_batch"}


def callgrind(harness, db, requests, mode, decisions, distinct, misses):
    """(instructions, last-level read misses or None) counted inside the engine's calls."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", f"--toggle-collect={TOGGLE[mode]}"]
        if misses:
            cmd += ["--cache-sim=yes", "--D1=32768,8,64", "--LL=1048576,16,64"]
        cmd += [sys.executable, harness, ROOT, db, requests, mode, str(decisions), str(distinct)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"callgrind failed ({mode}):\n{proc.stderr[-2000:]}")
        events = summary = None
        for line in open(out):
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("summary:") or line.startswith("totals:"):
                summary = [int(x) for x in line.split()[1:]]
        if not events or not summary:
            raise SystemExit(f"callgrind wrote no totals ({mode})")
        counts = dict(zip(events, summary))
        return counts["Ir"], counts.get("DLmr") if misses else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,10000,100000")
    ap.add_argument("--checks", type=int, default=20000, help="decisions counted per measurement")
    ap.add_argument("--misses", action="store_true", help="simulate the caches too (slower)")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions.py needs valgrind: apt-get install -y valgrind")
    sys.path.insert(0, HERE)
    sys.path.insert(0, ROOT)
    import authz
    from workload import generate

    decisions = max(1000, args.checks // 1000 * 1000)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        harness = os.path.join(folder, "harness.py")
        with open(harness, "w") as f:
            f.write(HARNESS)
        for size in (int(s) for s in args.sizes.split(",")):
            w = generate(size)
            policies, entities = w.write(os.path.join(folder, f"w{size}"))
            db = os.path.join(folder, f"db{size}")
            authz.compile([policies, entities], db=db)
            requests = os.path.join(folder, f"requests{size}.jsonl")
            with open(requests, "w") as f:
                f.write("\n".join(json.dumps(r) for r in w.requests))
            row = {"policies": size}
            for mode in ("check", "check_batch"):
                ir, cold = callgrind(harness, db, requests, mode, decisions, len(w.requests), args.misses)
                row[f"{mode}_ir"] = ir / decisions
                if args.misses:
                    row[f"{mode}_cold_misses"] = cold / decisions
                    row[f"{mode}_warm_misses"] = callgrind(harness, db, requests, mode, decisions, 100, True)[1] / decisions
                print(f"[{size}] {mode}: {ir / decisions:,.0f} instructions a decision", file=sys.stderr, flush=True)
            rows.append(row)
    header = "| policies | check: instructions | check_batch: instructions a decision |"
    rule = "|---:|---:|---:|"
    if args.misses:
        header += " check: LL misses cold / warm | check_batch: LL misses cold / warm |"
        rule += "---:|---:|"
    print(f"Per decision, {decisions:,} decisions each (callgrind; python3 bench/instructions.py"
          f"{' --misses' if args.misses else ''})\n")
    print(header)
    print(rule)
    for r in rows:
        line = f"| {r['policies']:,} | {r['check_ir']:,.0f} | {r['check_batch_ir']:,.0f} |"
        if args.misses:
            line += (f" {r['check_cold_misses']:.1f} / {r['check_warm_misses']:.1f} |"
                     f" {r['check_batch_cold_misses']:.1f} / {r['check_batch_warm_misses']:.1f} |")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
