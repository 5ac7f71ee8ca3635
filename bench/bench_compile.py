"""What the compiler's publish-time check (authz/compiler/verify.py) costs: a whole `authz.compile` of the
workload, and the share of it spent checking every compiled record against its policy's own parse.

    python3 bench/bench_compile.py [--sizes 10000,100000] [--rounds 3] [--files 40]

The workload's policies are written as one file, or with --files N spread over N files (a repository's
shape). Each round compiles into a fresh index; the check's time is measured inside the same compile.
Reports the median compile, the median check and their ratio (the check over the rest of the compile).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import authz  # noqa: E402
import authz.compiler as compiler  # noqa: E402
from bench.workload import generate  # noqa: E402


def write_files(workload, folder, n_files):
    policies, entities = workload.write(folder)
    if n_files <= 1:
        return
    text = open(policies, encoding="utf-8").read()
    chunks = [c + ";\n" for c in text.split(";\n") if c.strip()]
    os.remove(policies)
    per = -(-len(chunks) // n_files)
    for f in range(n_files):
        with open(os.path.join(folder, f"p{f:03d}.cedar"), "w", encoding="utf-8") as fh:
            fh.writelines(chunks[f * per:(f + 1) * per])


def measure(n, rounds, n_files):
    checked = []
    real = compiler.verify_policies

    def timed(*args):
        start = time.perf_counter()
        real(*args)
        checked.append(time.perf_counter() - start)

    compiler.verify_policies = timed
    totals = []
    try:
        with tempfile.TemporaryDirectory() as root:
            src = os.path.join(root, "src")
            os.makedirs(src)
            write_files(generate(n, n_requests=1), src, n_files)
            for r in range(rounds):
                start = time.perf_counter()
                authz.compile([src], db=os.path.join(root, f"db{r}"))
                totals.append(time.perf_counter() - start)
    finally:
        compiler.verify_policies = real
    total, check = statistics.median(totals), statistics.median(checked)
    return total, check


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=1)
    args = ap.parse_args()
    print("| policies | files | compile (median s) | check (median s) | check ÷ rest of compile |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        total, check = measure(n, args.rounds, args.files)
        print(f"| {n:,} | {args.files} | {total:.2f} | {check:.2f} | {check / (total - check):.1%} |", flush=True)


if __name__ == "__main__":
    main()
