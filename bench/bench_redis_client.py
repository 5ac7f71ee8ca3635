#!/usr/bin/env python3
"""The decision path's Redis round trip three ways, side by side in one run: authz/state/resp.py (what the
decision path uses), redis-py's Connection (its protocol layer alone, no client, pool or retries) and the
redis-py client (`Redis.evalsha`), on a redis-server this bench starts on 127.0.0.1.

    python3 bench/bench_redis_client.py [--calls 5000] [--rounds 3]

Each call is one EVALSHA of a script that writes one key, with arguments shaped like a stateful
decision's COMMIT (a 200-byte record, six version checks). Per call: wall time and the process's user
and system CPU (getrusage), the three clients alternated --rounds times, medians. What it answers: how
much worker CPU the client costs on top of the round trip itself (docs/scale-out.md, "Why the decision
path calls Redis synchronously"). With the `hiredis` package installed redis-py parses replies in C
(the line says whether it is). Every loop is bounded in count.
"""
from __future__ import annotations

import argparse
import pathlib
import resource
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_scale_out import Redis  # noqa: E402

SCRIPT = "return redis.call('SET', KEYS[1], ARGV[1])"
ARGS = [b"x" * 200] + ["v", "1", b"1733540000123"] * 6


class Settings:
    """What Resp reads of a RedisSettings, for a local redis-server without password or TLS."""

    def __init__(self, port: int):
        self.url = f"redis://127.0.0.1:{port}/0"
        self.connect_timeout_s = self.command_timeout_s = 2.0
        self.tls, self.password, self.username, self.tls_ca_file = False, None, None, None


def clients(port: int) -> dict:
    import redis
    from redis.connection import Connection

    from authz.state.resp import Resp

    client = redis.Redis(port=port, socket_timeout=2)
    sha = client.script_load(SCRIPT)
    resp = Resp(Settings(port))
    conn = Connection(port=port, socket_timeout=2, socket_connect_timeout=2)
    conn.connect()

    def via_connection():
        conn.send_command("EVALSHA", sha, 1, "k", *ARGS)
        return conn.read_response()

    return {"authz resp.py": lambda: resp.execute([("EVALSHA", sha, 1, "k", *ARGS)]),
            "redis-py Connection": via_connection,
            "redis-py client (evalsha)": lambda: client.evalsha(sha, 1, "k", *ARGS)}


def measure(fn, calls: int) -> tuple:
    """(wall, user, system) µs per call over `calls` calls."""
    for _ in range(min(500, calls)):
        fn()
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(calls):
        fn()
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return ((w1 - w0) / calls * 1e6, (r1.ru_utime - r0.ru_utime) / calls * 1e6,
            (r1.ru_stime - r0.ru_stime) / calls * 1e6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000, help="calls per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the three clients")
    args = ap.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("bench_redis_client: `redis-server` not found (apt-get install -y redis-server)")
    import redis.utils

    with tempfile.TemporaryDirectory(prefix="bench-redis-client-") as d, Redis(pathlib.Path(d) / "redis") as server:
        fns = clients(server.port)
        samples = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                samples[name].append(measure(fn, args.calls))
    print(f"\nbench_redis_client: EVALSHA round trips on loopback, {args.calls} calls x {args.rounds} rounds "
          f"(medians); hiredis {'installed' if redis.utils.HIREDIS_AVAILABLE else 'not installed'}\n")
    print("| client | wall µs / call | user CPU µs | system CPU µs | CPU vs resp.py |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name, rows in samples.items():
        wall, user, system = (statistics.median(r[k] for r in rows) for k in range(3))
        base = base if base is not None else user + system
        print(f"| {name} | {wall:.1f} | {user:.1f} | {system:.1f} | {(user + system) - base:+.1f} µs |")


if __name__ == "__main__":
    main()
