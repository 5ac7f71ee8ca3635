"""The worker's HTTP listener: an aiohttp server on the worker's own asyncio loop, sharing `http_listen` with the other
workers (SO_REUSEPORT, the port proved free and held by the supervisor as for gRPC), TLS with client
certificates when [identity.mtls] is configured, and the adapter that lets Callers read an HTTP caller."""
from __future__ import annotations

import asyncio
import logging
import os
import ssl

from authz.server.config import parse_hostport

log = logging.getLogger("authz.server")

MAX_LINE_BYTES = 8190       # request line and each header line (aiohttp's default)
MAX_HEADER_COUNT = 128      # headers in one request
KEEPALIVE_TIMEOUT_S = 75.0  # an idle keep-alive connection is closed after this


class HttpPeer:
    """An aiohttp request as the gRPC context Callers reads: its `authorization` values as metadata and
    the TLS client certificate (PEM) as the auth context."""

    __slots__ = ("request",)

    def __init__(self, request):
        self.request = request

    def invocation_metadata(self):
        return [("authorization", v) for v in self.request.headers.getall("Authorization", ())]

    def auth_context(self):
        transport = self.request.transport
        tls = transport.get_extra_info("ssl_object") if transport is not None else None
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        return {"x509_pem_cert": [ssl.DER_cert_to_PEM_cert(der).encode()]} if der else {}


def server_ssl_context(mtls) -> ssl.SSLContext:
    """TLS 1.2+ with the server's certificate, requiring a client certificate that chains to `client_ca`
    (the SPIFFE id it carries is checked per request by Callers, as on gRPC)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(mtls.cert, mtls.key)
    ctx.load_verify_locations(cafile=mtls.client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class TlsFiles:
    """Follows the TLS files of an SSLContext (SVIDs are short-lived and rotated on disk): checked at most once
    a second, a changed certificate and key are loaded into the context for the next handshakes, and a
    changed CA bundle's certificates are added to the trusted ones (OpenSSL cannot remove them from a
    context: a CA taken out of the bundle stays trusted until the workers restart)."""

    def __init__(self, ctx: ssl.SSLContext, mtls):
        self.ctx, self.mtls = ctx, mtls
        self.stamp = self._stamp()

    def _stamp(self):
        try:
            return tuple(os.stat(p).st_mtime_ns for p in (self.mtls.cert, self.mtls.key, self.mtls.client_ca))
        except OSError:
            return None

    def check(self) -> bool:
        """Reload what changed; True when something was loaded."""
        current = self._stamp()
        if current is None or current == self.stamp:
            return False
        try:
            if current[:2] != self.stamp[:2]:
                self.ctx.load_cert_chain(self.mtls.cert, self.mtls.key)
            if current[2] != self.stamp[2]:
                self.ctx.load_verify_locations(cafile=self.mtls.client_ca)
        except (OSError, ssl.SSLError) as e:
            log.error("HTTP listener: cannot re-read the TLS files: %s; keeping the current ones", e)
            return False
        self.stamp = current
        log.info("HTTP listener: TLS certificate, key or client CA changed: new handshakes use the new files")
        return True

    async def follow(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.check()


class HttpListener:
    """An aiohttp Application served on `address` in the running loop; `start()` returns the bound port."""

    def __init__(self, app, address: str, mtls=None, drain_s: float = 5.0):
        self.app, self.address, self.mtls, self.drain_s = app, address, mtls, drain_s
        self._runner = None
        self._tls_task = None

    async def start(self) -> int:
        from aiohttp import web

        host, port = parse_hostport(self.address, "http_listen")
        # shutdown_timeout: what requests in flight get at stop() (the worker's drain).
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=max(self.drain_s, 0.1),
                                     keepalive_timeout=KEEPALIVE_TIMEOUT_S,
                                     max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES,
                                     max_headers=MAX_HEADER_COUNT)
        await self._runner.setup()
        ctx = server_ssl_context(self.mtls) if self.mtls is not None else None
        site = web.TCPSite(self._runner, host, port, reuse_port=True, reuse_address=True, ssl_context=ctx,
                           backlog=1024)
        await site.start()
        if ctx is not None:
            self._tls_task = asyncio.ensure_future(TlsFiles(ctx, self.mtls).follow())
        addresses = self._runner.addresses
        return addresses[0][1] if addresses else port

    async def stop(self) -> None:
        """Stop accepting; requests in flight get `drain_s`, then the connections close."""
        if self._tls_task is not None:
            self._tls_task.cancel()
            self._tls_task = None
        if self._runner is None:
            return
        await self._runner.cleanup()
        self._runner = None
