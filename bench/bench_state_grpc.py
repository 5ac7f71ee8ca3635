#!/usr/bin/env python3
"""Task state over gRPC: a decision made with a task token (decided with its task's state, one store
transaction a request or a batch) next to the same decision made statelessly, side by side in one run.

    python3 bench/bench_state_grpc.py [--duration 3] [--rounds 5] [--quick] [--baseline-root PATH] [--profile PREFIX]

One `authz serve --workers 1` (decision log on, as by default; state store in its data_dir, sync off, as
by default) serves policies that read `context.task` / `context.agent` (each guarded by `context has
task`, so a request without a task skips them). The request: Agent::"a1" calls Tool::"db.read" (labels
["pii"]); every stateful decision is an allow that commits an update (calls, tools, labels, counts, rate
windows, the agent's windows). Every request with a task token goes through the state, so the stateless
side is the same request naming its principal with no token; the token's own cost is measured apart
(in-process rows) so the state's share is visible.

Rows:
  in-process (each call timed on its own, GC off, 4 interleaved rounds, p50/p99):
    Engine.check with a fixed task view vs inside a store transaction (bench_state's `plain`/`stateful`);
    Decider.decide of the authz.v1 request: plain (principal, no token), with the token but a Decider
    without task state (the token's cost alone), with the token and the task state (the server's path);
    and a BatchCheck of 100 calls of one task, the same three ways (per call).
  over gRPC, 1 worker (h2load, stateless and stateful alternated --rounds times, medians; the worker's CPU
  per request from /proc):
    authz.v1 Check: principal, no token vs task token (targets: >= 80%);
    authz.v1 BatchCheck of 100 calls of one task: principal vs task token (target: >= 50%);
  over gRPC latency: one sync client, one call in flight, the two sides alternated in 4 rounds (p50/p99).
With --baseline-root PATH, a second server from that checkout (one whose Decider skips task state: a copy
of this one, built .so files included, with `self.task_state is not None` replaced by `False` in
authz/server/decider.py, see bench/README.md) is loaded with the same token requests as a third side: the
stateless path with the token's full cost, so the state's own share is visible over gRPC too.
With --profile PREFIX, py-spy samples the worker under stateful Checks, then stateful BatchChecks (and the
baseline's token BatchChecks), and writes its collapsed stacks to PREFIX-check.txt, PREFIX-batch.txt
(PREFIX-baseline-batch.txt) (py-spy from PyPI). Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bench_state  # noqa: E402
from bench.bench_grpc import Served, cpu_seconds, grpc_frame, ratio_text  # noqa: E402

POLICIES = r'''
@id("issue")
permit(principal, action == Action::"authz::IssueToken", resource is Task);
@id("tools")
@labels("called")
permit(principal is Agent, action == Action::"call", resource is Tool);
@id("write-limit")
forbid(principal, action == Action::"call", resource)
when { context has task && context.task.counts has write && context.task.counts.write >= 1000000000 };
@id("no-egress-after-pii")
forbid(principal, action == Action::"call", resource == Tool::"webhook.post")
when { context has task && context.task.labels.contains("pii") };
@id("deploy-after-tests")
forbid(principal, action == Action::"call", resource == Tool::"deploy")
unless { context has task && context.task.tools.contains(Tool::"ci.run_tests") };
@id("budget")
forbid(principal, action == Action::"call", resource)
when { context has task && context.task.spend > 1000000000 };
@id("agent-rate")
forbid(principal, action == Action::"call", resource)
when { context has agent && context.agent.rate.m1 >= 1000000000 };
'''
ENTITIES = '''[
 {"uid": {"type": "Agent", "id": "a1"}, "attrs": {}, "parents": []},
 {"uid": {"type": "Tool", "id": "db.read"}, "attrs": {"labels": ["pii"]}, "parents": []}
]'''
AGENT, TASK = "a1", "bench-task"
CHECK, BATCH = "/authz.v1.Authorizer/Check", "/authz.v1.Authorizer/BatchCheck"


def write_policies(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.cedar").write_text(POLICIES)
    (folder / "entities.json").write_text(ENTITIES)
    return folder


# -- requests ------------------------------------------------------------------------------------------


def check_request(with_principal: bool):
    from authz._pb import authz_pb2 as pb

    req = pb.CheckRequest(action=pb.EntityUid(type="Action", id="call"),
                          resource=pb.EntityUid(type="Tool", id="db.read"))
    if with_principal:
        req.principal.CopyFrom(pb.EntityUid(type="Agent", id=AGENT))
    return req


def batch_request(with_principal: bool, n=100):
    from authz._pb import authz_pb2 as pb

    req = pb.BatchCheckRequest(action=pb.EntityUid(type="Action", id="call"))
    if with_principal:
        req.principal.CopyFrom(pb.EntityUid(type="Agent", id=AGENT))
    for _ in range(n):
        req.items.add(resource=pb.EntityUid(type="Tool", id="db.read"))
    return req


# -- the server ----------------------------------------------------------------------------------------


class Server(Served):
    """`authz serve --workers 1` on 127.0.0.1 with this bench's policies (development mode on loopback), and
    a config file when given (bench_scale_out: the Redis backend)."""

    def __init__(self, tmp: pathlib.Path, decision_log=True, root=ROOT, config: pathlib.Path | None = None):
        super().__init__(tmp, root)
        self.decision_log, self.config = decision_log, config

    def args(self) -> list:
        args = ["--listen", "127.0.0.1:0", "--workers", "1", "--policies", str(write_policies(self.tmp / "policies")),
                "--data-dir", str(self.tmp / "data"), "--log-level", "warning"]
        if not self.decision_log:
            args += ["--decision-log", ""]
        if self.config is not None:
            args += ["--config", str(self.config)]
        return args

    def issue(self, task=TASK, ttl_s=3600) -> str:
        """A task token for Agent::"a1" from the server's Tokens/Issue (caller named as in development mode)."""
        import grpc

        from authz._pb import tokens_pb2 as tpb
        from authz._pb import tokens_pb2_grpc as tpbg

        with grpc.insecure_channel(self.address) as ch:
            return tpbg.TokensStub(ch).Issue(
                tpb.IssueRequest(task=task, scope=tpb.TokenScope(actions=['Action::"call"'], resources=['Tool::"*"']),
                                 ttl_s=ttl_s), metadata=(("x-authz-caller", AGENT),), timeout=10).token.access_token


def task_calls(data_dir: pathlib.Path, task=TASK) -> int:
    """The calls the store recorded for `task` (read after the server stopped: proof the state was written)."""
    from authz.server.config import ServeConfig
    from authz.state import LmdbStore

    store = LmdbStore(ServeConfig(data_dir=str(data_dir)).state_config())
    try:
        return store.task_view(task, time.time())["calls"]
    finally:
        store.close()


# -- loads ---------------------------------------------------------------------------------------------


def h2load(address, path, body_file, duration, conns, streams, headers=()):
    """(requests/s, requests done) of h2load replaying one gRPC request with extra `headers`; fails unless
    every request got HTTP 200 (gRPC status is in trailers: the allow is checked apart, by `probe`)."""
    cmd = ["h2load", "-t", "1", "-c", str(conns), "-m", str(streams), "-D", str(duration),
           "-d", str(body_file), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [f"http://{address}{path}"], capture_output=True, text=True,
                         timeout=duration + 60).stdout
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and done and codes) or int(done.group(3)) or int(done.group(4)) or int(codes.group(3)) or \
            int(codes.group(4)):
        raise SystemExit(f"h2load failed:\n{out}")
    return float(m.group(1)), int(done.group(1))


def h2load_n(address, path, body_file, n, headers=()):
    """`n` requests of one gRPC request from one h2load connection (8 in flight); fails unless all got HTTP 200."""
    cmd = ["h2load", "-n", str(n), "-c", "1", "-m", "8", "-d", str(body_file), "-H", "content-type: application/grpc",
           "-H", "te: trailers"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [f"http://{address}{path}"], capture_output=True, text=True, timeout=3600).stdout
    if f"{n} succeeded" not in out or not re.search(r"status codes: \d+ 2xx, 0 3xx, 0 4xx, 0 5xx", out):
        raise SystemExit(f"h2load failed:\n{out}")


def alternated(sides, duration, rounds, conns, streams):
    """Each side (server, path, body_file, headers) loaded in turn, `rounds` times: the median requests/s
    and worker CPU per request (µs) of each, and per side the sorted per-round ratios to side 0."""
    for server, path, body, headers in sides:  # warm-up, not measured
        h2load(server.address, path, body, 1, conns, streams, headers)
    rps, cpu = [[] for _ in sides], [[] for _ in sides]
    for _ in range(rounds):
        for k, (server, path, body, headers) in enumerate(sides):
            before = cpu_seconds(server.pids)
            r, done = h2load(server.address, path, body, duration, conns, streams, headers)
            cpu[k].append((cpu_seconds(server.pids) - before) / done * 1e6)
            rps[k].append(r)
    ratios = [sorted(b / a for a, b in zip(rps[0], x)) for x in rps]
    return [statistics.median(x) for x in rps], [statistics.median(x) for x in cpu], ratios


def probe(address, token):
    """One Check and one BatchCheck each way through grpc: both allowed, or the bench measures nothing."""
    import grpc

    from authz._pb import authz_pb2 as pb
    from authz._pb import authz_pb2_grpc as pbg

    md = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(address) as ch:
        stub = pbg.AuthorizerStub(ch)
        for req, meta in ((check_request(True), ()), (check_request(False), md)):
            r = stub.Check(req, metadata=meta, timeout=10)
            assert r.decision == pb.DECISION_ALLOW, r
        for req, meta in ((batch_request(True), ()), (batch_request(False), md)):
            r = stub.BatchCheck(req, metadata=meta, timeout=10)
            assert all(x.decision == pb.DECISION_ALLOW for x in r.results), r


def latency(address, token, n, max_s):
    """Per-call latency (ns) of one sync client, one Check in flight, plain and with the token in 4 rounds."""
    import grpc

    from authz._pb import authz_pb2_grpc as pbg

    md = (("authorization", f"Bearer {token}"),)
    plain, unbound = check_request(True), check_request(False)
    with grpc.insecure_channel(address) as ch:
        stub = pbg.AuthorizerStub(ch)
        for _ in range(200):
            stub.Check(plain, timeout=10)
            stub.Check(unbound, metadata=md, timeout=10)
        acc = {"plain": [], "token": []}
        for _ in range(4):
            acc["plain"] += bench_state.timed(lambda: stub.Check(plain, timeout=10), n // 4, max_s / 8)
            acc["token"] += bench_state.timed(lambda: stub.Check(unbound, metadata=md, timeout=10), n // 4, max_s / 8)
    return acc


def profile(server, path, body, headers, conns, streams, duration, out):
    """py-spy's collapsed stacks of the worker while h2load runs `path` for `duration` s."""
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pids[0]), "--format", "raw", "--rate", "250",
                            "--duration", str(duration), "--output", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    h2load(server.address, path, body, duration, conns, streams, headers)
    spy.wait(duration + 60)


# -- in-process ----------------------------------------------------------------------------------------


def in_process(tmp: pathlib.Path, budget: dict) -> dict:
    """bench_state's Engine.check rows, and the authz.v1 request through Decider.decide three ways."""
    import authz
    from authz.server.app import build_task_state
    from authz.server.config import ServeConfig
    from authz.server.decider import Decider
    from authz.server.tokens_api import build_token_service

    (tmp / "engine").mkdir(parents=True)
    state_db = bench_state.compile_policies(tmp / "engine")
    engine_rows = bench_state.in_process(tmp / "engine", state_db, dict(
        n=budget["n"], warm=budget["warm"], s=budget["s"], durable_n=budget["durable_n"], batches=budget["batches"]))

    db = str(tmp / "authz.lmdb")
    authz.compile([str(write_policies(tmp / "policies"))], db=db)
    cfg = ServeConfig(data_dir=str(tmp / "data"), db=db)
    decider = Decider(db)
    assert decider.open_engine()
    tokens = build_token_service(cfg, decider)
    state = build_task_state(cfg, tokens)
    token = forge_token(cfg.data_dir)

    def uid(t, i):
        return {"type": t, "id": i}

    plain = {"principal": uid("Agent", AGENT), "action": uid("Action", "call"), "resource": uid("Tool", "db.read"),
             "context": {}}
    unbound = {**plain, "principal": None}
    plain_batch, unbound_batch = [plain] * 100, [unbound] * 100

    def v1_plain():
        decider.task_state = None
        return decider.decide(tokens.bind(None, [plain]), "v1")

    def v1_token():
        decider.task_state = None
        return decider.decide(tokens.bind(token, [unbound]), "v1")

    def v1_state():
        decider.task_state = state
        return decider.decide(tokens.bind(token, [unbound]), "v1")

    def batch_plain():
        decider.task_state = None
        return decider.decide(tokens.bind(None, plain_batch), "v1")

    def batch_token():
        decider.task_state = None
        return decider.decide(tokens.bind(token, unbound_batch), "v1")

    def batch_state():
        decider.task_state = state
        return decider.decide(tokens.bind(token, unbound_batch), "v1")

    singles = {"v1 Check: principal, no token": v1_plain, "v1 Check: task token, no task state": v1_token,
               "v1 Check: task token + task state": v1_state}
    batches = {"v1 BatchCheck of 100: principal, no token": batch_plain,
               "v1 BatchCheck of 100: task token, no task state": batch_token,
               "v1 BatchCheck of 100: task token + task state": batch_state}
    for fn in list(singles.values()) + list(batches.values()):
        assert all(o.allowed for o in fn()), "setup: the bench request must be allowed"
        for _ in range(budget["warm"] // 10):
            fn()
    acc = {name: [] for name in list(singles) + list(batches)}
    for _ in range(4):
        for name, fn in singles.items():
            acc[name] += bench_state.timed(fn, budget["n"] // 4, budget["s"] / 8)
        for name, fn in batches.items():
            acc[name] += [x / 100 for x in bench_state.timed(fn, budget["batches"] // 4, budget["s"] / 8)]
    calls = state.store.task_view(TASK, time.time())["calls"]
    assert calls > 0, "the stateful rows recorded nothing"
    state.store.close()
    tokens.revocations.close()
    rows = {"Engine.check: fixed task view (bench_state `plain`)": engine_rows["plain"],
            "Engine.check in a store transaction (bench_state `stateful`)": engine_rows["stateful"],
            "Engine.check, batch of 100 (per call): fixed view": engine_rows["batch of 100, plain (per call)"],
            "Engine.check, batch of 100 (per call): one transaction": engine_rows["batch of 100, stateful (per call)"]}
    rows.update({name: bench_state.stats(v) for name, v in acc.items()})
    return rows


def forge_token(data_dir: str) -> str:
    """A task token for Agent::"a1" in task TASK signed with the data_dir's key, as Tokens/Issue signs one."""
    import jwt

    from authz.tokens.keys import KeyStore
    from authz.tokens.verify import TOKEN_TYPE

    kid, key = KeyStore(data_dir).signing_key()
    now = int(time.time())
    claims = {"iss": "authz", "aud": "authz", "sub": AGENT, "task": TASK, "jti": "bench-state",
              "scope": {"actions": ['Action::"call"'], "resources": ['Tool::"*"']},
              "iat": now, "nbf": now, "exp": now + 3600}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": TOKEN_TYPE})


# -- main ----------------------------------------------------------------------------------------------


def over_grpc(tmp: pathlib.Path, duration, rounds, budget, profile_out=None, baseline_root=None) -> tuple:
    """The gRPC rows: (rows, latencies, calls recorded). With `baseline_root` (a checkout whose server
    decides without task state), its server is loaded with the same token requests as a third side."""
    check_plain, check_token = tmp / "check-plain.bin", tmp / "check-token.bin"
    check_plain.write_bytes(grpc_frame(check_request(True)))
    check_token.write_bytes(grpc_frame(check_request(False)))
    batch_plain, batch_token = tmp / "batch-plain.bin", tmp / "batch-token.bin"
    batch_plain.write_bytes(grpc_frame(batch_request(True)))
    batch_token.write_bytes(grpc_frame(batch_request(False)))
    rows, lat = [], {}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(Server(tmp / "server"))
        token = server.issue()
        auth = (f"authorization: Bearer {token}",)
        probe(server.address, token)
        base = base_auth = None
        if baseline_root:
            base = stack.enter_context(Server(tmp / "baseline", root=pathlib.Path(baseline_root)))
            base_token = base.issue()
            base_auth = (f"authorization: Bearer {base_token}",)
            probe(base.address, base_token)
        for label, path, plain_body, token_body, conns, streams, per in (
                ("authz.v1 Check, 1 worker (req/s)", CHECK, check_plain, check_token, 4, 16, 1),
                ("authz.v1 BatchCheck of 100 calls of one task, 1 worker (decisions/s)", BATCH, batch_plain,
                 batch_token, 2, 4, 100)):
            print(f"{label}...", file=sys.stderr)
            sides = [(server, path, plain_body, ()), (server, path, token_body, auth)]
            if base is not None:
                sides.append((base, path, token_body, base_auth))
            rps, cpu, ratios = alternated(sides, duration, rounds, conns, streams)
            unit = "call" if per == 1 else "decision"
            no_state = (f"{rps[2] * per:,.0f}", f"{rps[1] / rps[2]:.0%}") if base is not None else ("", "")
            rows.append((label, f"{rps[0] * per:,.0f}", f"{rps[1] * per:,.0f}", ratio_text(ratios[1])) + no_state)
            no_state = (f"{cpu[2] / per:,.1f}", f"{cpu[2] / cpu[1]:.0%}") if base is not None else ("", "")
            rows.append((f"{label.split(' (')[0]}: worker CPU per {unit} (µs; ratios: the other's CPU / stateful's)",
                         f"{cpu[0] / per:,.1f}", f"{cpu[1] / per:,.1f}", f"{cpu[0] / cpu[1]:.0%}") + no_state)
        print("latency, one client...", file=sys.stderr)
        lat = latency(server.address, token, budget["rpc_n"], budget["s"])
        if profile_out:
            loads = [("check", server, CHECK, check_token, auth, 4, 16), ("batch", server, BATCH, batch_token, auth, 2, 4)]
            if base is not None:
                loads.append(("baseline-batch", base, BATCH, batch_token, base_auth, 2, 4))
            for name, srv, path, body, headers, conns, streams in loads:
                out = f"{profile_out}-{name}.txt"
                print(f"profiling the worker under {name} with a task token (py-spy) -> {out}...", file=sys.stderr)
                profile(srv, path, body, headers, conns, streams, max(duration * 2, 4), out)
    calls = task_calls(tmp / "server" / "data")
    return rows, lat, calls


def report(inproc: dict, rows: list, lat: dict, calls: int, duration, rounds) -> None:
    print(f"\nbench_state_grpc: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"gRPC: {duration}s per measurement, stateless and stateful alternated {rounds}x (medians)\n")
    print("| in-process (µs) | p50 | p99 | p50 / stateless |")
    print("|---|---:|---:|---:|")
    base = None
    for name, r in inproc.items():
        if name.endswith(("fixed task view (bench_state `plain`)", ": fixed view", "principal, no token")):
            base = r["p50_us"]
        print(f"| {name} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['p50_us'] / base:.2f} |")
    baseline = bool(rows and rows[0][4])
    print("\n| over gRPC | stateless: principal, no token | stateful: task token | stateful vs stateless |"
          + (" baseline build: task token, no task state | stateful vs baseline |" if baseline else ""))
    print("|---|---:|---:|---:|" + ("---:|---:|" if baseline else ""))
    for row in rows:
        print("| " + " | ".join(row if baseline else row[:4]) + " |")
    p, t = bench_state.stats(lat["plain"]), bench_state.stats(lat["token"])
    print(f"| authz.v1 Check, one client, p50 / p99 (µs) | {p['p50_us']:.0f} / {p['p99_us']:.0f} | "
          f"{t['p50_us']:.0f} / {t['p99_us']:.0f} | {t['p50_us'] - p['p50_us']:+.0f} / "
          f"{t['p99_us'] - p['p99_us']:+.0f} µs |")
    print(f"\ncalls the server's store recorded for the bench task: {calls:,}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per gRPC measurement")
    ap.add_argument("--rounds", type=int, default=5, help="alternating stateless/stateful measurements per row")
    ap.add_argument("--baseline-root", metavar="PATH",
                    help="a checkout whose server decides without task state (see bench/README.md), loaded too")
    ap.add_argument("--quick", action="store_true", help="1-second measurements, 1 round, fewer samples")
    ap.add_argument("--profile", metavar="PREFIX",
                    help="py-spy collapsed stacks of the worker under stateful loads -> PREFIX-check.txt, PREFIX-batch.txt")
    args = ap.parse_args()
    duration = 1 if args.quick else int(args.duration)
    rounds = 1 if args.quick else args.rounds
    budget = (dict(n=4000, warm=500, s=4.0, durable_n=50, batches=40, rpc_n=1000) if args.quick else
              dict(n=20000, warm=2000, s=16.0, durable_n=200, batches=200, rpc_n=4000))
    if shutil.which("h2load") is None:
        raise SystemExit("bench_state_grpc: `h2load` not found (apt-get install -y nghttp2-client)")
    if args.profile and shutil.which("py-spy") is None:
        raise SystemExit("bench_state_grpc: `py-spy` not found (pip install py-spy)")
    with tempfile.TemporaryDirectory(prefix="bench-state-grpc-") as d:
        tmp = pathlib.Path(d)
        print("in-process rows...", file=sys.stderr)
        inproc = in_process(tmp / "inproc", budget)
        rows, lat, calls = over_grpc(tmp, duration, rounds, budget, args.profile, args.baseline_root)
    report(inproc, rows, lat, calls, duration, rounds)


if __name__ == "__main__":
    main()
