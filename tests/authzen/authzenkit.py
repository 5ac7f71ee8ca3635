"""What the AuthZEN tests share: the interop policies and scenarios, a real `authz serve` with --http-listen on
127.0.0.1 (HttpAuthzServer, serve_args) and a JSON-over-HTTP client."""
from __future__ import annotations

import http.client
import json
import pathlib
import ssl
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "server"))
sys.path.insert(0, str(HERE.parent / "identity"))
from harness import AuthzServer  # noqa: E402

POLICIES = HERE / "policies"
INTEROP = HERE / "interop"
TIMEOUT_S = 10.0


class HttpAuthzServer(AuthzServer):
    """AuthzServer with a client for its HTTP listener."""

    def client(self, ssl_context: ssl.SSLContext | None = None) -> "Client":
        assert self.http_address, "the server has no HTTP listener"
        host, _, port = self.http_address.rpartition(":")
        return Client(host, int(port), ssl_context)


class Client:
    """One keep-alive HTTP/1.1 connection; `post` sends JSON (or raw bytes) and returns (status, headers, body)."""

    def __init__(self, host: str, port: int, ssl_context=None):
        if ssl_context is not None:
            self.conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT_S, context=ssl_context)
        else:
            self.conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)

    def request(self, method: str, path: str, body=None, headers=None):
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.conn.request(method, path, body=body, headers=h)
        r = self.conn.getresponse()
        raw = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(raw) if raw else None

    def post(self, path: str, body, headers=None):
        return self.request("POST", path, body, headers)

    def evaluation(self, body, headers=None):
        return self.post("/access/v1/evaluation", body, headers)

    def evaluations(self, body, headers=None):
        return self.post("/access/v1/evaluations", body, headers)

    def close(self):
        self.conn.close()


def serve_args(tmp: pathlib.Path, *extra) -> list:
    return ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--policies", str(POLICIES),
            "--data-dir", str(tmp / "data"), *extra]
