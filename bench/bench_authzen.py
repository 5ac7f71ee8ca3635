"""AuthZEN over HTTP, side by side in one run: single evaluations vs a no-op endpoint on the same aiohttp stack and
worker (the floor), and `evaluations` batches of 100 (decisions/s per worker).

    python bench/bench_authzen.py [--duration 3] [--rounds 3] [--conns 16] [--no-decision-log]

One worker process, built as `authz serve --http-listen` builds it (its Decider with the decision
log on, as by default, the callers and task-state step of build_server, the same HTTP listener and
the worker's GC settings), with one extra route, `POST /bench/noop`, that reads the body and
answers a constant decision: what the HTTP stack costs with no AuthZEN work at all. Load: wrk
(Debian `wrk`), 1 thread, --conns keep-alive connections, each row bounded by --duration seconds;
the rows alternate --rounds times and the medians are reported, with the worker's CPU per request
from /proc (steadier than throughput on a shared machine). Policies: the interop scenarios'
(tests/authzen/policies). Rows:
  1. floor: POST /bench/noop with the single evaluation's body
  2. POST /access/v1/evaluation: the API gateway scenario (stored identity in a role hierarchy, route in an API)
  3. POST /access/v1/evaluations of 100 items (gateway routes and methods, defaults from the top level)
  4. POST /access/v1/evaluations of 100 items with resource properties (Todo: each todo's owner as a
     request entity, decided one by one)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_grpc import cpu_seconds, wrk_run  # noqa: E402

POLICIES = ROOT / "tests" / "authzen" / "policies"
RICK = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
MORTY = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
BETH = "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
SINGLE = {"subject": {"type": "identity", "id": RICK}, "action": {"name": "PUT"},
          "resource": {"type": "route", "id": "/todos/{todoId}"}}
ROUTES = ["/users/{userId}", "/todos", "/todos/{todoId}"]
METHODS = ["GET", "POST", "PUT", "DELETE"]
BATCH = {"subject": {"type": "identity", "id": BETH},  # a viewer: GETs allowed, writes denied
         "evaluations": [{"action": {"name": METHODS[i % 4]}, "resource": {"type": "route", "id": ROUTES[i % 3]}}
                         for i in range(100)]}
OWNERS = ["rick@the-citadel.com", "morty@the-citadel.com", "summer@the-smiths.com"]
BATCH_PROPERTIES = {"subject": {"type": "user", "id": MORTY}, "action": {"name": "can_update_todo"},
                    "evaluations": [{"resource": {"type": "todo", "id": f"todo-{i}",
                                                  "properties": {"ownerID": OWNERS[i % 3]}}} for i in range(100)]}


# -- the worker ------------------------------------------------------------------------------------

async def _noop(request):
    from aiohttp import web

    await request.read()
    return web.Response(body=b'{"decision":true}', content_type="application/json")


async def _serve(data_dir: str, db: str, decision_log: bool) -> None:
    import gc

    from aiohttp import web

    from authz.server.app import build_server
    from authz.server.authzen import build_http_listener
    from authz.server.config import load_config
    from authz.server.decider import Decider
    from authz.server.decisionlog import DecisionLog
    from authz.server.metrics import NullMetrics

    cfg = load_config(None, {"db": db, "data_dir": data_dir, "http_listen": "127.0.0.1:0",
                             "decision_log": None if decision_log else ""})
    loop = asyncio.get_running_loop()
    dlog = DecisionLog(cfg.decision_log_path, cfg.decision_log_queue, loop=loop, max_bytes=cfg.decision_log_max_bytes,
                       keep=cfg.decision_log_keep) if cfg.decision_log_path else None
    decider = Decider(cfg.db_path, dlog, NullMetrics())
    parts: dict = {}
    build_server(cfg, decider, parts)  # the worker's callers and tokens (its gRPC server is not started here)
    if not decider.open_engine():
        raise SystemExit(decider.last_error)
    listener = build_http_listener(cfg, decider, parts["callers"], parts["tokens"],
                                   extra_routes=[web.post("/bench/noop", _noop)])
    port = await listener.start()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)  # as serve_worker
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(port, flush=True)
    await stop.wait()
    await listener.stop()
    if dlog is not None:
        dlog.close()


# -- the load --------------------------------------------------------------------------------------

def _post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _script(tmp: pathlib.Path, name: str, body: dict) -> pathlib.Path:
    path = tmp / f"{name}.lua"
    path.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = {json.dumps(json.dumps(body, separators=(',', ':')))}\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=3, help="seconds per row and round (wrk takes whole seconds)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--no-decision-log", action="store_true", help="the worker without its decision log")
    ap.add_argument("--worker", nargs=2, metavar=("DATA_DIR", "DB"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(_serve(*args.worker, not args.no_decision_log))
        return
    import authz

    with tempfile.TemporaryDirectory(prefix="bench-authzen-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        authz.compile([str(POLICIES)], str(tmp / "db"))
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(tmp / "data"), str(tmp / "db")]
                                + (["--no-decision-log"] if args.no_decision_log else []),
                                stdout=subprocess.PIPE, text=True)
        try:
            port = int(proc.stdout.readline())
            # Probes: a broken server must not look fast.
            assert _post(port, "/access/v1/evaluation", SINGLE) == {"decision": True}
            batch = _post(port, "/access/v1/evaluations", BATCH)["evaluations"]
            assert len(batch) == 100 and {"decision": True} in batch and {"decision": False} in batch
            owned = _post(port, "/access/v1/evaluations", BATCH_PROPERTIES)["evaluations"]
            assert [d["decision"] for d in owned[:3]] == [False, True, False]
            rows = [("floor: POST /bench/noop (1 request)", "/bench/noop", SINGLE, 1),
                    ("evaluation (1 decision)", "/access/v1/evaluation", SINGLE, 1),
                    ("evaluations of 100", "/access/v1/evaluations", BATCH, 100),
                    ("evaluations of 100 with resource properties", "/access/v1/evaluations", BATCH_PROPERTIES, 100)]
            scripts = {name: _script(tmp, f"row{i}", body) for i, (name, _p, body, _n) in enumerate(rows)}
            results: dict = {name: [] for name, *_ in rows}
            for _ in range(args.rounds):
                for name, path, _body, n in rows:
                    cpu0 = cpu_seconds([proc.pid])
                    rps, p50, p99, done = wrk_run(f"http://127.0.0.1:{port}{path}", args.duration, args.conns,
                                                  script=scripts[name])
                    cpu = cpu_seconds([proc.pid]) - cpu0
                    results[name].append((rps, rps * n, p50, p99, cpu / max(done, 1) * 1e6))
                    time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    floor_rps = statistics.median(r[0] for r in results[rows[0][0]])
    floor_cpu = statistics.median(r[4] for r in results[rows[0][0]])
    print(f"AuthZEN over HTTP, 1 worker (decision log {'off' if args.no_decision_log else 'on'}), wrk 1 thread "
          f"{args.conns} keep-alive connections, {args.rounds} x {args.duration} s each, medians "
          f"(cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f})")
    # vs floor: the throughput ratio (the target's); cpu vs floor: the floor's worker CPU a request over the row's
    # (steadier on a shared machine). Both per request, so only the single evaluation's compare.
    print(f"{'row':48} {'req/s':>9} {'decisions/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'cpu us/req':>10} {'vs floor':>8} "
          f"{'cpu vs floor':>12}")
    for name, *_ in rows:
        rs = results[name]
        rps = statistics.median(r[0] for r in rs)
        cpu = statistics.median(r[4] for r in rs)
        print(f"{name:48} {rps:9.0f} {statistics.median(r[1] for r in rs):12.0f} "
              f"{statistics.median(r[2] for r in rs):7.2f} {statistics.median(r[3] for r in rs):7.2f} "
              f"{cpu:10.1f} {rps / floor_rps:8.2f} {floor_cpu / cpu:12.2f}")


if __name__ == "__main__":
    main()
