"""Resp: a minimal RESP2 connection for the decision path's round trips (the LOAD and COMMIT scripts),
where redis-py's generality costs more CPU than the decision itself (bench/README.md, "Results: shared
state on Redis"): one socket, commands encoded in one buffer, replies read through a buffered
file. Everything else (approvals API, sweep, revocation writes, pub/sub) uses redis-py.

One connection per process (reconnected after fork or after any failure: a timeout leaves a reply
half-read, so the connection is dropped), used under a lock. Authenticates (AUTH [user] password),
selects the URL's database, speaks TLS for rediss:// (verifying the server against tls_ca_file or the
system CAs). Errors: OSError (connect, timeout, closed) and RespError (an error reply).
"""
from __future__ import annotations

import os
import socket
import ssl
import threading
import urllib.parse


class RespError(Exception):
    """An error reply from Redis (its text, e.g. NOSCRIPT, WRONGPASS, OOM)."""


def encode(commands) -> bytes:
    """The RESP encoding of commands whose arguments are bytes, str or numbers."""
    out = []
    add = out.append
    for args in commands:
        add(b"*%d\r\n" % len(args))
        for a in args:
            if type(a) is not bytes:
                a = a.encode("utf-8") if type(a) is str else str(a).encode("ascii")
            add(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


class Resp:
    def __init__(self, settings):
        u = urllib.parse.urlsplit(settings.url)
        self.settings = settings
        self.host, self.port = u.hostname, u.port or 6379
        self.db = int(u.path.strip("/") or 0)
        self._sock = self._file = None
        self._pid = None
        self._lock = threading.Lock()

    def _connect(self) -> None:
        s = self.settings
        sock = socket.create_connection((self.host, self.port), timeout=s.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if s.tls:
                ctx = ssl.create_default_context(cafile=s.tls_ca_file)
                sock = ctx.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(s.command_timeout_s)
            self._sock, self._file, self._pid = sock, sock.makefile("rb"), os.getpid()
            hello = []
            if s.password is not None:
                hello.append(("AUTH", s.username, s.password) if s.username else ("AUTH", s.password))
            if self.db:
                hello.append(("SELECT", self.db))
            if hello:
                self._roundtrip(hello)
        except BaseException:
            self.close()
            raise

    def _read(self):
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the connection to Redis closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self._file.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("the connection to Redis closed")
            return data[:-2]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        if kind == b"-":
            return RespError(rest.decode("utf-8", "replace"))
        raise ConnectionError(f"unexpected reply from Redis: {line[:20]!r}")

    def _roundtrip(self, commands) -> list:
        self._sock.sendall(encode(commands))
        replies = [self._read() for _ in commands]
        for r in replies:
            if isinstance(r, RespError):
                raise r
        return replies

    def execute(self, commands) -> list:
        """The replies to `commands` (tuples of arguments), sent in one write; RespError for the first
        error reply (after every reply is read), OSError when the connection fails."""
        with self._lock:
            if self._sock is None or self._pid != os.getpid():
                self._sock = self._file = None  # inherited across fork: never shared with the parent
                self._connect()
            try:
                return self._roundtrip(commands)
            except RespError:
                raise
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        sock, f = self._sock, self._file
        self._sock = self._file = None
        for x in (f, sock):
            if x is not None:
                try:
                    x.close()
                except OSError:
                    pass
