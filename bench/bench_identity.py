#!/usr/bin/env python3
"""Cost of deciding with a verified bearer JWT, next to the plain Engine.check, in the same run.

    python3 bench/bench_identity.py [--policies 1000] [--quick] [--json out.json]

Per signing algorithm (RS256 2048-bit, ES256, EdDSA), on the bench workload
(bench/workload.py) compiled into an index:
  * plain       Engine.check(principal, action, resource, context) of a workload request
  * jwt first   JwtVerifier.verify of a token never seen before (full verification) +
                principal Agent::sub + context.jwt (claims as a Cedar record) + Engine.check
  * jwt cached  the same, for a token verified before (cache hit: SHA-256 of the token)
and, through the in-process Envoy ext_authz servicer (EnvoyAuthorizationServicer.check:
CheckRequest mapping, identity, decision, serialized response; decision log off):
  * no token / first token / cached token.
Each call is timed on its own (time.perf_counter_ns); p50 and mean in µs and the ratio of
each p50 to the plain (or no-token) p50. Every loop is bounded in count and in time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

from workload import generate  # noqa: E402

pc = time.perf_counter_ns
ISSUER, AUDIENCE = "https://idp.bench", "authz"
ALGORITHMS = ("RS256", "ES256", "EdDSA")


def signing_key(alg: str):
    """(private key, public JWK) for `alg`."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    if alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return key, dict(jwk, kid=f"bench-{alg.lower()}")


def sign(alg: str, key, kid: str, claims: dict) -> str:
    import jwt

    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def uid(text: str) -> dict:
    t, _, rest = text.partition('::"')
    return {"type": t, "id": rest[:-1]}


def interleaved(cases: dict, s_max: float, chunk: int = 100) -> dict:
    """Per-call ns of each case {name: (fn, items, n)}: `n` calls of fn(item) over `items` (cycled), the cases
    taking turns `chunk` calls at a time (so load drift hits them alike), stopping after `s_max` seconds."""
    out = {k: [] for k in cases}
    pos = dict.fromkeys(cases, 0)
    deadline = pc() + int(s_max * 1e9)
    while pc() < deadline:
        progressed = False
        for k, (fn, items, n) in cases.items():
            times, i = out[k], pos[k]
            for _ in range(min(chunk, n - i)):
                item = items[i % len(items)]
                t0 = pc()
                fn(item)
                times.append(pc() - t0)
                i += 1
            progressed |= i > pos[k]
            pos[k] = i
        if not progressed:
            break
    return out


def stats(ns: list) -> dict:
    return {"n": len(ns), "p50_us": statistics.median(ns) / 1000, "mean_us": statistics.fmean(ns) / 1000}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="fewer calls (a few seconds)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    q = 5 if args.quick else 1
    n_calls, s_max, n_fresh = 20000 // q, 3.0 / q, 2000 // q

    import authz
    from authz.identity import FileKeySet, Issuer, JwtVerifier
    from authz.server.callers import Callers
    from authz.server.config import IdentitySettings, JwtIssuerSettings

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    work = tempfile.mkdtemp(prefix="bench-identity-")
    w = generate(args.policies)
    ppath, epath = w.write(os.path.join(work, "src"))
    db = os.path.join(work, "authz.lmdb")
    authz.compile([ppath, epath], db=db)
    engine = authz.Engine(db)
    requests = [{"principal": uid(r["principal"]), "action": uid(r["action"]), "resource": uid(r["resource"]),
                 "context": r["context"]} for r in w.requests]
    log(f"workload: {args.policies} policies, {len(requests)} requests")

    def plain(r):
        engine.check(principal=r["principal"], action=r["action"], resource=r["resource"], context=r["context"])

    for r in requests[:2000]:  # warm-up
        plain(r)
    results = {"policies": args.policies, "algorithms": {}}

    now = int(time.time())
    for alg in ALGORITHMS:
        key, jwk = signing_key(alg)
        jwks_path = os.path.join(work, f"jwks-{alg}.json")
        with open(jwks_path, "w") as f:
            json.dump({"keys": [jwk]}, f)
        settings = IdentitySettings(jwt=(JwtIssuerSettings(jwks_path, (AUDIENCE,), issuer=ISSUER),))
        callers = Callers(settings)
        verifier = callers.verifier
        # Tokens never seen (a first verification each) and tokens verified once before (cache hits);
        # signing is not timed.
        t0 = time.perf_counter()
        fresh, seen = [], []
        for i, r in enumerate(requests[:2 * n_fresh]):
            claims = {"iss": ISSUER, "sub": r["principal"]["id"], "aud": AUDIENCE, "iat": now, "exp": now + 900,
                      "jti": f"j-{i}", "task": f"task-{i % 97}", "scope": "tools:call tools:read"}
            (fresh if i % 2 else seen).append((sign(alg, key, jwk["kid"], claims), r))
        log(f"{alg}: signed {len(fresh) + len(seen)} tokens in {time.perf_counter() - t0:.1f}s "
            f"({len(fresh[0][0])} bytes each)")
        verifier.cache.size = len(fresh) + len(seen) + 1  # the cache holds every token
        for token, _ in seen:
            verifier.verify(token)
        bare = JwtVerifier([Issuer(FileKeySet(jwks_path), (AUDIENCE,), issuer=ISSUER)], cache_size=0)

        def with_jwt(pair):
            token, r = pair
            vt = verifier.verify(token)
            ctx = {**r["context"], "jwt": callers.claims_record(vt)}
            engine.check(principal={"type": "Agent", "id": vt.subject}, action=r["action"], resource=r["resource"],
                         context=ctx)

        hits = verifier.cache.hits
        t = interleaved({
            "plain": (plain, requests, n_calls),
            "first": (with_jwt, fresh, len(fresh)),
            "cached": (with_jwt, seen, n_calls),
            "verify_uncached": (lambda p: bare.verify(p[0]), fresh, len(fresh)),
            "verify_cached": (lambda p: verifier.verify(p[0]), seen, n_calls),
        }, s_max * 3)
        assert verifier.cache.hits - hits == len(t["cached"]) + len(t["verify_cached"])  # `first`: never a hit
        a = results["algorithms"][alg] = {k: stats(v) for k, v in t.items()}
        a["token_bytes"] = len(fresh[0][0])
        log(f"{alg}: plain p50 {a['plain']['p50_us']:.1f} µs, first {a['first']['p50_us']:.1f} µs, "
            f"cached {a['cached']['p50_us']:.1f} µs")
        if alg == "EdDSA":
            results["envoy"] = envoy_path(db, callers, fresh, n_calls, s_max)

    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def envoy_path(db, callers, pairs, n_calls, s_max) -> dict:
    """In-process EnvoyAuthorizationServicer.check: no token, first token, cached token."""
    from envoy.service.auth.v3 import external_auth_pb2

    from authz.server.decider import Decider
    from authz.server.envoy import EnvoyAuthorizationServicer, Limits

    decider = Decider(db)
    assert decider.open_engine()
    servicer = EnvoyAuthorizationServicer(decider, Limits(), None, callers)

    def check_request(token=None, tool="t1"):
        req = external_auth_pb2.CheckRequest()
        http = req.attributes.request.http
        http.method, http.path, http.host, http.scheme = "GET", f"/tools/{tool}", "api.local", "http"
        headers = {":method": "GET", ":path": http.path, ":authority": "api.local", "user-agent": "bench",
                   "x-request-id": "9f0c", "accept": "application/json"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        http.headers.update(headers)
        req.attributes.source.address.socket_address.address = "127.0.0.1"
        return req

    plain = [check_request(tool=f"t{i % 50}") for i in range(500)]
    fresh = [check_request(token) for token, _ in pairs]  # never verified by this verifier
    callers.verifier.cache.clear()
    seen = [check_request(token) for token, _ in pairs[:200]]
    for r in seen:
        servicer.check(r)
    bare = EnvoyAuthorizationServicer(decider, Limits())  # no identity layer (development mode)
    for r in plain[:200]:
        servicer.check(r)
        bare.check(r)
    t = interleaved({"no_identity": (bare.check, plain, n_calls), "no_token": (servicer.check, plain, n_calls),
                     "first": (servicer.check, fresh[200:], len(fresh) - 200),
                     "cached": (servicer.check, seen, n_calls)}, s_max * 3)
    return {k: stats(v) for k, v in t.items()}


def report(R: dict) -> None:
    print(f"## Deciding with a bearer JWT ({R['policies']} policies; p50 / mean µs per decision; "
          f"ratio = p50 / plain p50 of the same run)\n")
    print("| path | RS256 | ES256 | EdDSA |")
    print("|---|---|---|---|")
    for row, key in (("plain `Engine.check`", "plain"), ("verify (first time) + check", "first"),
                     ("verify (cached) + check", "cached"),
                     ("verify only, first time", "verify_uncached"), ("verify only, cached", "verify_cached")):
        cells = []
        for alg in ALGORITHMS:
            s = R["algorithms"][alg][key]
            base = R["algorithms"][alg]["plain"]["p50_us"]
            cells.append(f"{s['p50_us']:.1f} / {s['mean_us']:.1f} ({s['p50_us'] / base:.1f}×)")
        print(f"| {row} | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{alg} {R['algorithms'][alg]['token_bytes']} B" for alg in ALGORITHMS)
    print(f"\nToken sizes: {sizes}.")
    e = R.get("envoy")
    if e:
        b = e["no_identity"]["p50_us"]
        print("\n## Envoy ext_authz Check in process (EdDSA token; mapping + identity + decision + response; "
              "ratio = p50 / development-mode p50)\n")
        print("| request | p50 µs | mean µs | ratio |")
        print("|---|---|---|---|")
        for row, key in (("no token, no identity configured (development mode)", "no_identity"),
                         ("no token, identity configured", "no_token"), ("bearer token, first time", "first"),
                         ("bearer token, cached", "cached")):
            print(f"| {row} | {e[key]['p50_us']:.1f} | {e[key]['mean_us']:.1f} | {e[key]['p50_us'] / b:.2f}× |")


if __name__ == "__main__":
    sys.exit(main())
