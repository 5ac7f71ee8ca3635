"""Bounded HTTP(S) GET for key sets and OIDC discovery documents: checked URLs, timeouts, a size limit, no redirects.

Standard library only (http.client, ssl default context: certificates and host names verified).
`http://` is accepted for loopback hosts only. The TCP connect and the TLS handshake are bounded
by `connect_timeout_s`; sending the request and reading the whole response by `read_timeout_s`
(a total, however slowly the server drips bytes). A body over `max_bytes` is an error, as is any
status but 200 (redirects are not followed). Every failure raises FetchError with a short message;
URLs appear in messages without their query.
"""
from __future__ import annotations

import email.utils
import http.client
import io
import ipaddress
import ssl
import time
import urllib.parse

MAX_URL_CHARS = 2048
DEFAULT_MAX_BYTES = 1024 * 1024
_CHUNK = 64 * 1024


class FetchError(Exception):
    """A URL that may not be fetched, or a fetch that failed."""


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url) -> urllib.parse.SplitResult:
    """The parts of a URL that may be fetched: https://, or http:// to a loopback host; no credentials, no fragment."""
    if not isinstance(url, str) or not url:
        raise FetchError("must be a URL (a string)")
    if len(url) > MAX_URL_CHARS:
        raise FetchError(f"a URL of more than {MAX_URL_CHARS} characters")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise FetchError("a URL may not hold spaces, control or non-ASCII characters")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise FetchError(f"`{shown(url)}` is not an https:// URL")
    if "@" in parts.netloc:
        raise FetchError("a URL may not carry a user name or password")
    if parts.fragment or url.endswith("#"):
        raise FetchError(f"`{shown(url)}` has a fragment")
    try:
        host, _ = parts.hostname, parts.port
    except ValueError:
        raise FetchError(f"`{shown(url)}` has an invalid port") from None
    if not host:
        raise FetchError(f"`{shown(url)}` has no host")
    if scheme == "http" and not is_loopback_host(host):
        raise FetchError(f"`{shown(url)}`: http:// is allowed only for loopback hosts "
                         "(127.0.0.0/8, ::1, localhost); use https://")
    return parts


def shown(url: str) -> str:
    """A URL as messages and logs show it: without its query (it may hold a secret), at most 200 characters."""
    text = url.split("?", 1)[0].split("#", 1)[0]
    return text if len(text) <= 200 else text[:200] + "..."


def cache_lifetime(headers, now: float | None = None):
    """Seconds a response stays fresh by its Cache-Control (max-age, no-store, no-cache) or Expires header
    (less its Age); None when it has neither."""
    directives = {}
    for value in headers.get_all("Cache-Control") or ():
        for item in value.split(","):
            name, _, arg = item.strip().partition("=")
            directives[name.strip().lower()] = arg.strip().strip('"')
    age = _seconds(headers.get("Age")) or 0
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    if "max-age" in directives:
        max_age = _seconds(directives["max-age"])
        return 0.0 if max_age is None else float(max(0, max_age - age))
    expires = headers.get("Expires")
    if expires is None:
        return None
    expires_at = _http_date(expires)
    if expires_at is None:
        return 0.0  # an invalid Expires means already expired (RFC 9111 5.3)
    date = _http_date(headers.get("Date") or "")
    base = date if date is not None else (time.time() if now is None else now)
    return float(max(0.0, expires_at - base - age))


def _seconds(text):
    if text is None or not text.isdigit() or len(text) > 12:
        return None
    return int(text)


def _http_date(text: str):
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class Response:
    """A fetched body and its freshness lifetime (seconds, None when the response gives none)."""

    __slots__ = ("body", "lifetime_s")

    def __init__(self, body: bytes, lifetime_s):
        self.body, self.lifetime_s = body, lifetime_s


class _DeadlineRaw(io.RawIOBase):
    """A socket's receiving side that raises TimeoutError once `deadline` (time.monotonic) has passed."""

    def __init__(self, sock, deadline: float):
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("read timed out")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """What http.client.HTTPResponse needs of a socket: `makefile`, reading under one deadline."""

    def __init__(self, sock, deadline: float):
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str):
        return io.BufferedReader(_DeadlineRaw(self._sock, self._deadline))


class Fetcher:
    """GETs URLs with bounded time and size; holds the TLS context (system CAs, or only those of `ca_file`)."""

    def __init__(self, connect_timeout_s: float = 3.0, read_timeout_s: float = 5.0, ca_file: str = "",
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.connect_timeout_s, self.read_timeout_s, self.max_bytes = connect_timeout_s, read_timeout_s, max_bytes
        try:
            self._tls = ssl.create_default_context(cafile=ca_file or None)
        except (OSError, ssl.SSLError) as e:
            raise FetchError(f"cannot load CA file `{ca_file}`: {getattr(e, 'strerror', None) or e}") from None

    def get(self, url: str) -> Response:
        """The body of a 200 answer to GET `url`; FetchError on anything else."""
        parts = check_url(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if parts.scheme.lower() == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.connect_timeout_s,
                                               context=self._tls)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.connect_timeout_s)
        try:
            try:
                conn.connect()
            except (OSError, ssl.SSLError) as e:
                raise FetchError(f"cannot connect to `{shown(url)}`: {_why(e)}") from None
            deadline = time.monotonic() + self.read_timeout_s
            try:
                conn.sock.settimeout(self.read_timeout_s)
                conn.request("GET", target, headers={"Accept": "application/json", "User-Agent": "authz",
                                                     "Connection": "close"})
                resp = http.client.HTTPResponse(_DeadlineSocket(conn.sock, deadline), method="GET")
                resp.begin()
                return Response(self._body(resp, url), cache_lifetime(resp.headers))
            except FetchError:
                raise
            except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as e:
                raise FetchError(f"`{shown(url)}`: {_why(e)}") from None
        finally:
            conn.close()

    def _body(self, resp, url: str) -> bytes:
        if resp.status != 200:
            if 300 <= resp.status < 400:
                raise FetchError(f"`{shown(url)}` answered HTTP {resp.status} (redirects are not followed; "
                                 "configure the final URL)")
            raise FetchError(f"`{shown(url)}` answered HTTP {resp.status}")
        if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise FetchError(f"`{shown(url)}` answered with a content encoding (only identity is read)")
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise FetchError(f"`{shown(url)}`: the body is larger than {self.max_bytes} bytes")
        chunks, size = [], 0
        while True:
            chunk = resp.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchError(f"`{shown(url)}`: the body is larger than {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError) or "timed out" in str(e):
        return "timed out"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({e.verify_message})"
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text[:200]
