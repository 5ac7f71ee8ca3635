"""A local identity provider for the fetched-key-set tests: a JWKS and an OIDC discovery document served over
HTTP or HTTPS on 127.0.0.1, with faults on demand and a count of the requests of each path."""
from __future__ import annotations

import collections
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import material as m

JWKS_PATH = "/jwks"
DISCOVERY_PATH = "/.well-known/openid-configuration"
HANG_LIMIT_S = 30.0  # a hanging handler answers nothing and returns when released, or after this
# Faults a path can be given: what the handler does instead of answering with the document.
FAULTS = ("500", "hang", "drip", "huge", "huge_streamed", "invalid", "redirect")
DRIP_BYTES, DRIP_INTERVAL_S = 1000, 0.05  # "drip": one byte per interval, each well within a read timeout


class Idp:
    """Serves `jwks` (a JWKS dict) at /jwks and a discovery document naming `issuer` and /jwks.

    `faults[path]` (one of FAULTS), `cache_control[path]` and `discovery_overrides` (members of the
    discovery document) change the answers; `counts[path]`
    counts the requests. With `ca`, a CertificateAuthority, it serves HTTPS with a certificate
    for 127.0.0.1 issued by that CA.
    """

    def __init__(self, jwks: dict, ca: m.CertificateAuthority | None = None, folder=None):
        self.jwks = jwks
        self.discovery_overrides: dict = {}
        self.faults: dict = {}
        self.cache_control: dict = {}
        self.counts: collections.Counter = collections.Counter()
        self.released = threading.Event()
        self._lock = threading.Lock()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server method name
                path = self.path.split("?", 1)[0]
                with idp._lock:
                    idp.counts[path] += 1
                idp.answer(self, path)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if ca is not None:
            cert, key = ca.issue(ips=["127.0.0.1"], dns=["localhost"])
            cert_file, key_file = folder / "idp.pem", folder / "idp-key.pem"
            cert_file.write_bytes(m.cert_pem(cert))
            key_file.write_bytes(m.key_pem(key))
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(cert_file), str(key_file))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.url = f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"
        self.issuer = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def jwks_url(self) -> str:
        return self.url + JWKS_PATH

    def document(self, path: str):
        if path == JWKS_PATH:
            return self.jwks
        if path == DISCOVERY_PATH:
            return {"issuer": self.issuer, "jwks_uri": self.jwks_url, "id_token_signing_alg_values_supported": ["ES256"],
                    **self.discovery_overrides}
        return None

    def answer(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        fault, doc = self.faults.get(path), self.document(path)
        if doc is None or fault == "500":
            handler.send_error(404 if doc is None else 500)
            return
        if fault == "hang":
            self.released.wait(HANG_LIMIT_S)
            return
        if fault == "drip":
            handler.send_response(200)
            handler.send_header("Content-Length", str(DRIP_BYTES))
            handler.end_headers()
            try:
                for _ in range(DRIP_BYTES):
                    handler.wfile.write(b" ")
                    handler.wfile.flush()
                    if self.released.wait(DRIP_INTERVAL_S):
                        return
            except OSError:
                pass  # the client gave up
            return
        if fault == "redirect":
            handler.send_response(302)
            handler.send_header("Location", self.url + "/elsewhere")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        body = json.dumps(doc).encode()
        if fault == "invalid":
            body = body[: len(body) // 2]
        elif fault in ("huge", "huge_streamed"):
            body = b" " * (1024 * 1024 + 1)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if fault != "huge_streamed":  # without a length the body ends when the connection closes
            handler.send_header("Content-Length", str(len(body)))
        if path in self.cache_control:
            handler.send_header("Cache-Control", self.cache_control[path])
        handler.end_headers()
        try:
            handler.wfile.write(body)
        except OSError:
            pass  # the client stopped reading (a body over its limit)

    def count(self, path: str = JWKS_PATH) -> int:
        with self._lock:
            return self.counts[path]

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
