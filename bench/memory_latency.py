#!/usr/bin/env python3
"""What one cache miss costs on this machine, by working-set size: the context of bench_engine's size rows.

    python3 bench/memory_latency.py [--sizes 256K,1M,4M,16M,64M] [--accesses 4000000]

A decision at 100,000 policies reads records, index slots, lists and policy bodies spread over a
15 MB index, each read depending on the one before, so its cost is set by how long one dependent read
takes when the data is not in cache. This measures that, with a small C program built by the system's
C compiler (the one that builds the extensions), for each working-set size:

- dependent: a random pointer chase (each read's address comes from the previous read), as a
  decision's chain of reads is;
- prefetched: random reads each depending on the previous one as well, but with every address
  prefetched 16 reads ahead, as a batch could do if it knew its next reads early enough;
- page-spread: the same number of lines as the smallest size (fits in L2), one line per 4 KiB page
  over the size's span: what the TLB alone adds.

Reported in ns per read. Nothing here touches authz.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile

SOURCE = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

/* A random cycle over `n` slots, `stride` words apart: slot i holds the word index of the next one. */
static uint64_t *cycle(size_t n, size_t stride) {
    uint64_t *a = aligned_alloc(4096, ((n * stride * 8 + 4095) / 4096) * 4096);
    size_t *perm = malloc(n * sizeof(size_t));
    for (size_t i = 0; i < n; i++) perm[i] = i;
    for (size_t i = n - 1; i > 0; i--) { size_t j = next() % (i + 1), t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
    for (size_t i = 0; i < n; i++) a[perm[i] * stride] = perm[(i + 1) % n] * stride;
    free(perm);
    return a;
}

static double chase(uint64_t *a, long reads) {
    uint64_t p = 0;
    for (long i = 0; i < reads; i++) p = a[p];
    double t0 = now();
    for (long i = 0; i < reads; i++) p = a[p];
    double t = (now() - t0) / reads;
    if (p == 1) puts("");  /* keeps p alive */
    return t;
}

int main(int argc, char **argv) {
    size_t bytes = strtoull(argv[1], 0, 10), small = strtoull(argv[2], 0, 10);
    long reads = atol(argv[3]);
    size_t n = bytes / 64;
    uint64_t *a = cycle(n, 8);
    double dependent = chase(a, reads);
    /* random reads, each address also depending on the previous read (v >> 63 is 0), prefetched ahead */
    uint32_t *idx = malloc((reads + 16) * sizeof(uint32_t));
    for (long i = 0; i < reads + 16; i++) idx[i] = (uint32_t)(next() % n) * 8;
    uint64_t v = 0;
    double t0 = now();
    for (long i = 0; i < reads; i++) { __builtin_prefetch(&a[idx[i + 16]]); v += a[idx[i] + (v >> 63)]; }
    double prefetched = (now() - t0) / reads;
    free(a);
    /* as many lines as the smallest size has, one per page over this size's span */
    size_t pages = bytes / 4096, lines = small / 64;
    double spread = 0;
    if (pages >= lines) {
        uint64_t *b = cycle(lines, (bytes / lines) / 8);
        spread = chase(b, reads);
        free(b);
    }
    printf("%.1f %.1f %.1f %lu\n", dependent, prefetched, spread, (unsigned long)(v & 1));
    return 0;
}
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256K,1M,4M,16M,64M")
    ap.add_argument("--accesses", type=int, default=4_000_000)
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    with tempfile.TemporaryDirectory() as folder:
        src, exe = os.path.join(folder, "latency.c"), os.path.join(folder, "latency")
        with open(src, "w") as f:
            f.write(SOURCE)
        subprocess.run([cc, "-O2", "-o", exe, src], check=True)
        print("| working set | dependent read (ns) | prefetched 16 ahead (ns) | one line per page, L2-sized data (ns) |")
        print("|---:|---:|---:|---:|")
        for size in sizes:
            out = subprocess.run([exe, str(size), str(min(sizes)), str(args.accesses)], check=True,
                                 capture_output=True, text=True, timeout=600).stdout.split()
            dependent, prefetched, spread = (float(x) for x in out[:3])
            print(f"| {size >> 10:,} KiB | {dependent:.1f} | {prefetched:.1f} | "
                  f"{f'{spread:.1f}' if spread else '–'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
