#!/usr/bin/env python3
"""Task-token benchmark: a decision made with a task token next to the plain decision, same run, as ratios.

    python3 bench/bench_tokens.py [--quick] [--json out.json]

Policies: the bundled examples (authz/examples/policies). The request: the researcher calls
Tool::"docs.read" (allowed by `research-docs`); with a token, the researcher's task token
whose scope is tools/call on Tool::"docs.*" decides the same request.

Rows, each timed call on its own with time.perf_counter_ns (p50 / p99 µs), GC off:
  1. in-process Envoy servicer `check(CheckRequest)` (map, bind, decide, render; MCP tools/call body):
       plain   (principal from source.principal)
       token, cached        (the same bearer token every call: cache hit)
       token, first use     (a distinct token every call: signature verified each time)
       token, cached, 1,000 revocations stored
  2. in-process authz.v1 path: Decider.decide vs TokenService.bind + Decider.decide
  3. over gRPC (loopback, `authz serve --workers 1`, decision log off, one sync client):
       authz.v1 Check plain vs with a cached token vs a first-use token
Ratios are against the plain row of the same group. Every loop is bounded in count and time.
With the bundled policies a token decision also evaluates `delegated-research-reads`, which
reads context.delegation: part of the difference is that policy's work, not the token's.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_grpc import Authz  # noqa: E402  (`authz serve` as a subprocess, shared with bench_grpc)

pc = time.perf_counter_ns
EXAMPLES = ROOT / "authz" / "examples" / "policies"


def timed(fn, args_list, max_s):
    """Call fn(*args) for each args in args_list (bounded by max_s); per-call ns list."""
    out = []
    deadline = time.monotonic() + max_s
    gc.disable()
    try:
        for args in args_list:
            t0 = pc()
            fn(*args)
            out.append(pc() - t0)
            if time.monotonic() > deadline:
                break
    finally:
        gc.enable()
    return out


def stats(ns):
    ns = sorted(ns)
    return {"n": len(ns), "p50_us": ns[len(ns) // 2] / 1000, "p99_us": ns[min(len(ns) - 1, int(len(ns) * 0.99))] / 1000,
            "mean_us": statistics.fmean(ns) / 1000}


def envoy_request(token=None):
    from envoy.service.auth.v3 import external_auth_pb2

    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    a.source.address.socket_address.address = "127.0.0.1"
    a.source.principal = "researcher"
    http = a.request.http
    http.method, http.path, http.host, http.scheme = "POST", "/mcp", "tools.example", "http"
    http.headers["content-type"] = "application/json"
    if token is not None:
        http.headers["authorization"] = f"Bearer {token}"
    http.raw_body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                "params": {"name": "docs.read", "arguments": {"q": "x"}}}).encode()
    return req


def forge_tokens(data_dir, n, ttl=900):
    """n distinct valid tokens for the researcher (signed with the server's key, as Issue would)."""
    import jwt

    from authz.tokens.keys import KeyStore
    from authz.tokens.verify import TOKEN_TYPE

    kid, key = KeyStore(data_dir).signing_key()
    now = int(time.time())
    claims = {"iss": "authz", "aud": "authz", "sub": "researcher", "task": "bench",
              "scope": {"actions": ['Action::"tools/call"'], "resources": ['Tool::"docs.*"']},
              "iat": now, "nbf": now, "exp": now + ttl}
    return [jwt.encode({**claims, "jti": f"bench-{i}"}, key, algorithm="EdDSA", headers={"kid": kid, "typ": TOKEN_TYPE})
            for i in range(n)]


def in_process(tmp, budget):
    import authz
    from authz.server.config import ServeConfig
    from authz.server.decider import Decider
    from authz.server.envoy import EnvoyAuthorizationServicer, Limits
    from authz.server.tokens_api import build_token_service

    db = str(tmp / "authz.lmdb")
    authz.compile([str(EXAMPLES)], db=db)
    decider = Decider(db)
    assert decider.open_engine()
    cfg = ServeConfig(data_dir=str(tmp / "data"), db=db)
    tokens = build_token_service(cfg, decider)
    servicer = EnvoyAuthorizationServicer(decider, Limits(), tokens)
    [token] = forge_tokens(cfg.data_dir, 1)
    first_pool = forge_tokens(cfg.data_dir, budget["first_n"])

    from envoy.service.auth.v3 import external_auth_pb2

    def allowed(raw):
        return external_auth_pb2.CheckResponse.FromString(raw).status.code == 0

    plain_req, token_req = envoy_request(), envoy_request(token)
    assert allowed(servicer.check(plain_req)) and allowed(servicer.check(token_req)), "setup: not allowed"
    first_reqs = [(envoy_request(t),) for t in first_pool]
    n = budget["n"]
    for _ in range(budget["warm"]):
        servicer.check(plain_req)
        servicer.check(token_req)
    rows = {}
    # Interleave in rounds so drift hits every row alike.
    acc = {"plain": [], "cached": []}
    for _ in range(4):
        acc["plain"] += timed(servicer.check, [(plain_req,)] * (n // 4), budget["s"] / 4)
        acc["cached"] += timed(servicer.check, [(token_req,)] * (n // 4), budget["s"] / 4)
    rows["envoy plain"] = stats(acc["plain"])
    rows["envoy token, cached"] = stats(acc["cached"])
    tokens.verifier.clear_cache()
    first = timed(servicer.check, first_reqs, budget["s"])
    assert all(allowed(servicer.check(r[0])) for r in first_reqs[:10])
    rows["envoy token, first use"] = stats(first)
    for i in range(1000):
        tokens.revocations.revoke("token", f"revoked-{i}", time.time() + 3600, 100000)
    assert allowed(servicer.check(token_req))
    rows["envoy token, cached, 1,000 revocations"] = stats(timed(servicer.check, [(token_req,)] * n, budget["s"]))

    # authz.v1: what Check does after parsing the message.
    plain = {"principal": {"type": "Agent", "id": "researcher"}, "action": {"type": "Action", "id": "tools/call"},
             "resource": {"type": "Tool", "id": "docs.read"}, "context": {}}
    unbound = {**plain, "principal": None}

    def v1_plain():
        return decider.decide([tokens.bind(None, [plain])[0]], "v1")

    def v1_token():
        return decider.decide(tokens.bind(token, [unbound]), "v1")

    assert v1_plain()[0].allowed and v1_token()[0].allowed
    acc = {"plain": [], "token": []}
    for _ in range(4):
        acc["plain"] += timed(v1_plain, [()] * (n // 4), budget["s"] / 4)
        acc["token"] += timed(v1_token, [()] * (n // 4), budget["s"] / 4)
    rows["v1 plain"] = stats(acc["plain"])
    rows["v1 token, cached"] = stats(acc["token"])
    tokens.revocations.close()
    return rows


def over_grpc(tmp, budget):
    import grpc

    from authz._pb import authz_pb2 as pb
    from authz._pb import authz_pb2_grpc as pbg

    with Authz(tmp, 1, decision_log=False, bench_policies=False) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = pbg.AuthorizerStub(ch)
        action, resource = pb.EntityUid(type="Action", id="tools/call"), pb.EntityUid(type="Tool", id="docs.read")
        plain = pb.CheckRequest(principal=pb.EntityUid(type="Agent", id="researcher"), action=action,
                                resource=resource)
        unbound = pb.CheckRequest(action=action, resource=resource)
        [token] = forge_tokens(str(tmp / "data"), 1)
        md = (("authorization", f"Bearer {token}"),)
        first_md = [((("authorization", f"Bearer {t}"),),) for t in forge_tokens(str(tmp / "data"), budget["rpc_first_n"])]
        assert stub.Check(plain).decision == pb.DECISION_ALLOW
        assert stub.Check(unbound, metadata=md).decision == pb.DECISION_ALLOW
        for _ in range(budget["warm"] // 4):
            stub.Check(plain)
            stub.Check(unbound, metadata=md)
        acc = {"plain": [], "cached": []}
        n = budget["rpc_n"]
        for _ in range(4):
            acc["plain"] += timed(lambda: stub.Check(plain), [()] * (n // 4), budget["s"] / 4)
            acc["cached"] += timed(lambda: stub.Check(unbound, metadata=md), [()] * (n // 4), budget["s"] / 4)
        first = timed(lambda m: stub.Check(unbound, metadata=m), first_md, budget["s"])
        assert stub.Check(unbound, metadata=first_md[0][0]).decision == pb.DECISION_ALLOW
        return {"grpc v1 Check plain": stats(acc["plain"]), "grpc v1 Check token, cached": stats(acc["cached"]),
                "grpc v1 Check token, first use": stats(first)}


def report(rows):
    groups = [("envoy plain", ["envoy token, cached", "envoy token, first use", "envoy token, cached, 1,000 revocations"]),
              ("v1 plain", ["v1 token, cached"]),
              ("grpc v1 Check plain", ["grpc v1 Check token, cached", "grpc v1 Check token, first use"])]
    print("| path | calls | p50 µs | p99 µs | p50 ratio to plain |")
    print("|---|---:|---:|---:|---:|")
    for base, others in groups:
        if base not in rows:
            continue
        b = rows[base]
        print(f"| {base} | {b['n']} | {b['p50_us']:.1f} | {b['p99_us']:.1f} | 1.00 |")
        for name in others:
            r = rows[name]
            print(f"| {name} | {r['n']} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['p50_us'] / b['p50_us']:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls (about 10 s)")
    ap.add_argument("--no-grpc", action="store_true", help="in-process rows only")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    q = 5 if args.quick else 1
    budget = {"n": 20000 // q, "s": 3.0 / q, "warm": 2000 // q, "first_n": 2000 // q, "rpc_n": 4000 // q,
              "rpc_first_n": 1000 // q}
    print(f"bench_tokens: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        rows = in_process(tmp / "inproc", budget)
        if not args.no_grpc:
            rows.update(over_grpc(tmp, budget))
    report(rows)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
