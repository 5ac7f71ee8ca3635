#!/usr/bin/env python3
"""The shared state on Redis next to the embedded LMDB store, side by side in one run (docs/scale-out.md).

    python3 bench/bench_scale_out.py [--duration 3] [--rounds 5] [--quick] [--pin]

Two `authz serve --workers 1` with bench_state_grpc's policies and requests (Agent::"a1" calls
Tool::"db.read" with a task token; every decision is an allow that commits its task's update): one with
the default LMDB store in its data_dir, one with `[state] backend = "redis"` on a redis-server this bench
starts on 127.0.0.1 (no persistence: what is measured is the decision path, see docs/scale-out.md for
the settings to run with). Rows:
  authz.v1 Check, 1 worker (req/s): LMDB vs Redis, alternated --rounds times (h2load; target >= 70%);
  authz.v1 BatchCheck of 100 calls of one task (decisions/s; target >= 50%);
  the worker's CPU per call / decision (µs, from /proc);
  one client, one call in flight: p50 / p99 latency (µs) — the Redis round trips a decision waits for;
  the revocation fan-out: a revocation made through one store seen by another process's store (p50/p99
  over 100 trials, in-process stores, the Fanout listener of the second).
With --pin (a machine with at least 2 CPUs) each server's worker runs on CPU 0 and redis-server, h2load
and this bench on CPU 1: the worker has a CPU of its own on both sides, and Redis stops taking the
worker's CPU away while it waits for a round trip, as when Redis runs on its own host.
Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bench_state  # noqa: E402
from bench.bench_grpc import grpc_frame, ratio_text  # noqa: E402
from bench.bench_state_grpc import (BATCH, CHECK, Server, alternated, batch_request,  # noqa: E402
                                    check_request)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, folder: pathlib.Path):
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)

    def __enter__(self):
        import redis
        self.proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
                                      str(self.folder), "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.05)

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)


def pin(pid: int, cpus: set) -> None:
    """Every thread of process `pid` (and the threads they start later) on `cpus`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def probe(server, token) -> None:
    import grpc

    from authz._pb import authz_pb2 as pb
    from authz._pb import authz_pb2_grpc as pbg
    md = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(server.address) as ch:
        stub = pbg.AuthorizerStub(ch)
        assert stub.Check(check_request(False), metadata=md, timeout=10).decision == pb.DECISION_ALLOW
        r = stub.BatchCheck(batch_request(False), metadata=md, timeout=10)
        assert all(x.decision == pb.DECISION_ALLOW for x in r.results)


def latency(servers, tokens, n, max_s) -> list:
    import grpc

    from authz._pb import authz_pb2_grpc as pbg
    req = check_request(False)
    out = [[] for _ in servers]
    channels = [grpc.insecure_channel(s.address) for s in servers]
    try:
        stubs = [pbg.AuthorizerStub(ch) for ch in channels]
        for _ in range(200):
            for stub, tok in zip(stubs, tokens):
                stub.Check(req, metadata=(("authorization", f"Bearer {tok}"),), timeout=10)
        for _ in range(4):
            for k, (stub, tok) in enumerate(zip(stubs, tokens)):
                md = (("authorization", f"Bearer {tok}"),)
                out[k] += bench_state.timed(lambda: stub.Check(req, metadata=md, timeout=10), n // 4, max_s / 8)
    finally:
        for ch in channels:
            ch.close()
    return out


def _watcher(port, ready, go, seen):
    """Another process's store: reports when each revoked task shows up in its snapshot."""
    from authz.state import StateConfig
    from authz.state.open import open_store
    from authz.state.redis_config import RedisSettings
    store = open_store(StateConfig(path="/nonexistent", redis=RedisSettings(f"redis://127.0.0.1:{port}/0",
                                                                            key_prefix="fan:", kek=b"k" * 32)))
    rv = store.revocations
    rv.current()
    ready.set()
    for i in range(100):
        go.get(timeout=30)
        deadline = time.monotonic() + 10
        while not rv.current().task_revoked(f"t{i}", time.time()) and time.monotonic() < deadline:
            time.sleep(0.0002)
        seen.put(time.time())
    store.close()


def fanout(port) -> list:
    """Seconds from a revoke's return to another process seeing it, 100 trials."""
    from authz.state import StateConfig
    from authz.state.open import open_store
    from authz.state.redis_config import RedisSettings
    ctx = multiprocessing.get_context("spawn")
    ready, go, seen = ctx.Event(), ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_watcher, args=(port, ready, go, seen))
    p.start()
    ready.wait(30)
    store = open_store(StateConfig(path="/nonexistent", redis=RedisSettings(f"redis://127.0.0.1:{port}/0",
                                                                            key_prefix="fan:", kek=b"k" * 32)))
    lags = []
    for i in range(100):
        go.put(i)
        time.sleep(0.005)  # the watcher is polling
        store.revocations.revoke("task", f"t{i}", 0, 1000)
        done = time.time()
        lags.append(max(0.0, seen.get(timeout=30) - done))
    p.join(30)
    store.close()
    return sorted(lags)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per gRPC measurement")
    ap.add_argument("--rounds", type=int, default=5, help="alternating LMDB/Redis measurements per row")
    ap.add_argument("--quick", action="store_true", help="1-second measurements, 1 round")
    ap.add_argument("--pin", action="store_true", help="workers on CPU 0; redis-server, h2load and the bench on CPU 1")
    args = ap.parse_args()
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("bench_scale_out: --pin needs 2 CPUs")
    duration, rounds = (1, 1) if args.quick else (int(args.duration), args.rounds)
    for tool in ("h2load", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_scale_out: `{tool}` not found (apt-get install -y nghttp2-client redis-server)")
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as d, contextlib.ExitStack() as stack:
        tmp = pathlib.Path(d)
        redis = stack.enter_context(Redis(tmp / "redis"))
        (tmp / "kek").write_bytes(os.urandom(32))
        config = tmp / "redis.toml"
        config.write_text(f'[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:{redis.port}/0"\n'
                          f'key_prefix = "bench:"\nkey_encryption_key_file = "{tmp / "kek"}"\n')
        lmdb_srv = stack.enter_context(Server(tmp / "lmdb"))
        redis_srv = stack.enter_context(Server(tmp / "redis-node", config=config))
        tokens = [lmdb_srv.issue(), redis_srv.issue()]
        for srv, tok in zip((lmdb_srv, redis_srv), tokens):
            probe(srv, tok)
        if args.pin:
            for pid in lmdb_srv.pids + redis_srv.pids:
                pin(pid, {0})
            pin(redis.proc.pid, {1})
            os.sched_setaffinity(0, {1})  # this bench, and the h2load it starts
        check_body, batch_body = tmp / "check.bin", tmp / "batch.bin"
        check_body.write_bytes(grpc_frame(check_request(False)))
        batch_body.write_bytes(grpc_frame(batch_request(False)))
        rows = []
        for label, path, body, conns, streams, per in (
                ("authz.v1 Check, 1 worker (req/s)", CHECK, check_body, 4, 16, 1),
                ("authz.v1 BatchCheck of 100 calls of one task, 1 worker (decisions/s)", BATCH, batch_body, 2, 4, 100)):
            print(f"{label}...", file=sys.stderr)
            sides = [(srv, path, body, (f"authorization: Bearer {tok}",))
                     for srv, tok in zip((lmdb_srv, redis_srv), tokens)]
            rps, cpu, ratios = alternated(sides, duration, rounds, conns, streams)
            rows.append((label, f"{rps[0] * per:,.0f}", f"{rps[1] * per:,.0f}", ratio_text(ratios[1])))
            unit = "call" if per == 1 else "decision"
            rows.append((f"{label.split(' (')[0]}: worker CPU per {unit} (µs)", f"{cpu[0] / per:,.1f}",
                         f"{cpu[1] / per:,.1f}", f"{cpu[1] / cpu[0]:.0%}"))
        print("latency, one client...", file=sys.stderr)
        lat = latency((lmdb_srv, redis_srv), tokens, 1000 if args.quick else 4000, 16.0)
        print("revocation fan-out...", file=sys.stderr)
        lags = fanout(redis.port)
    a, b = bench_state.stats(lat[0]), bench_state.stats(lat[1])
    print(f"\nbench_scale_out: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {duration}s per "
          f"measurement, LMDB and Redis alternated {rounds}x (medians; ratio range over rounds)"
          f"{'; workers pinned to CPU 0, redis-server and h2load to CPU 1' if args.pin else ''}\n")
    print("| stateful decisions, task token | LMDB (embedded) | Redis (shared) | Redis / LMDB |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"| authz.v1 Check, one client, p50 / p99 (µs) | {a['p50_us']:.0f} / {a['p99_us']:.0f} | "
          f"{b['p50_us']:.0f} / {b['p99_us']:.0f} | {b['p50_us'] - a['p50_us']:+.0f} / "
          f"{b['p99_us'] - a['p99_us']:+.0f} µs |")
    print(f"\nrevocation fan-out to another process (100 trials): p50 {lags[50] * 1000:.1f} ms, "
          f"p99 {lags[98] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
