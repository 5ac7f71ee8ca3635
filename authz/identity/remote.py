"""Key sets fetched by URL (`jwks_uri`, or OIDC discovery), refreshed by a background thread of each worker.

Network I/O happens only in the key set's refresher thread: it fetches when the key set is made
(at worker start), again when the document's HTTP cache lifetime ends (Cache-Control max-age or
Expires, kept within `cache_min_s`..`cache_max_s`), and when the request path asks for it (no keys
yet, or a token names an unknown `kid`). Fetches start at least `min_refresh_s` apart whatever
asks for them, so a flood of tokens with made-up kids costs the IdP at most one fetch per
`min_refresh_s` per worker. A request that asked for a fetch, or finds one running, waits for it,
and every request waiting for one fetch is released `fetch_wait_s` after that fetch started: the
gRPC event loop is never held longer than that per fetch.

On errors the last good keys stay in force until `max_stale_s` after their lifetime ended; from
then on, until a fetch succeeds, every token of the issuer is refused with `jwks_unavailable`
(also before the first successful fetch).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time

from authz.errors import IdentityError
from authz.identity.fetch import FetchError, Fetcher, check_url, shown
from authz.identity.jwks import KeySet, parse_jwks

log = logging.getLogger("authz.identity")

JWKS_UNAVAILABLE = "jwks_unavailable"
DISCOVERY_PATH = "/.well-known/openid-configuration"
DEFAULT_LIFETIME_S = 300.0  # a response without Cache-Control max-age or Expires
MAX_RETRY_S = 300.0         # failed fetches are retried after min_refresh_s, doubling up to this


@dataclasses.dataclass(frozen=True)
class RemoteSource:
    """Where a key set is fetched from and how (the fetch options of one `[[identity.jwt]]` table).

    `url` is the JWKS URL, or with `discovery` the issuer whose `/.well-known/openid-configuration`
    names it (that document's `issuer` must equal `url` exactly).
    """

    url: str
    discovery: bool = False
    ca_file: str = ""
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    cache_min_s: float = 60.0
    cache_max_s: float = 86400.0
    min_refresh_s: float = 10.0
    max_stale_s: float = 3600.0
    fetch_wait_s: float = 1.0

    @property
    def discovery_url(self) -> str:
        return self.url.rstrip("/") + DISCOVERY_PATH

    def fetcher(self) -> Fetcher:
        return Fetcher(self.connect_timeout_s, self.read_timeout_s, self.ca_file)


def jwks_uri_of(body: bytes, issuer: str) -> str:
    """The `jwks_uri` of an OIDC discovery document whose `issuer` is `issuer`; FetchError otherwise."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise FetchError("the discovery document is not JSON") from None
    if not isinstance(doc, dict):
        raise FetchError("the discovery document is not a JSON object")
    if doc.get("issuer") != issuer:
        raise FetchError(f"the discovery document names issuer `{str(doc.get('issuer'))[:200]}`, not `{issuer}`")
    uri = doc.get("jwks_uri")
    if not isinstance(uri, str):
        raise FetchError("the discovery document has no `jwks_uri`")
    try:
        check_url(uri)
    except FetchError as e:
        raise FetchError(f"the discovery document's `jwks_uri`: {e}") from None
    return uri


class RemoteKeySet(KeySet):
    """Keys by kid from a RemoteSource; see the module docstring. `close()` stops the refresher (tests)."""

    def __init__(self, source: RemoteSource, trust_domain: str = "", spiffe: bool | None = None,
                 clock=time.monotonic):
        self.source, self.trust_domain, self.spiffe = source, trust_domain, spiffe
        self.name = shown(source.url)
        self._fetcher = source.fetcher()
        self._clock = clock
        self._cond = threading.Condition()
        self._keys: dict = {}
        self._body = None
        self.version = 0
        self._usable_until = -math.inf   # the keys count until then (lifetime + max_stale_s)
        self._unavailable = True         # no usable keys: set before the first good fetch and past max_stale_s
        self._pending = False            # a fetch is asked for or running ...
        self._pending_deadline = -math.inf  # ... and requests may wait for it until then
        self._last_start = -math.inf
        self._next_due = -math.inf
        self._retry_s = source.min_refresh_s
        self._stop = False
        self._jwks_url = None if source.discovery else source.url
        self._discovery_until = -math.inf
        self.completed = 0               # fetches finished (good or not)
        self.lifetime_s = None           # the freshness lifetime of the keys in force
        self.last_error = "not fetched yet"
        self._thread = threading.Thread(target=self._run, name="jwks-refresh", daemon=True)
        self._thread.start()

    # -- the request path ----------------------------------------------------------------------

    def get(self, kid: str):
        """The key with this kid, None when there is none; IdentityError `jwks_unavailable` without usable keys."""
        now = self._clock()
        if now < self._usable_until:
            key = self._keys.get(kid)
            if key is not None:
                return key
        self._await_fetch(now)
        if self._clock() < self._usable_until:
            return self._keys.get(kid)
        raise IdentityError(JWKS_UNAVAILABLE, f"the key set `{self.name}` is unavailable: {self.last_error}")

    def current_version(self) -> int:
        if not self._unavailable and self._clock() >= self._usable_until:
            with self._cond:
                if not self._unavailable:
                    self._unavailable = True
                    self.version += 1
                    log.error("key set `%s`: no good fetch for %g s past its lifetime (%s); every token of "
                              "this issuer is refused (jwks_unavailable)", self.name, self.source.max_stale_s,
                              self.last_error)
        return self.version

    def kids(self) -> list:
        return sorted(self._keys)

    def _await_fetch(self, now: float) -> bool:
        """Ask for a fetch (unless one started less than min_refresh_s ago) and wait for the pending one, at most
        until `fetch_wait_s` after it started; True when it finished."""
        with self._cond:
            if not self._pending:
                if now - self._last_start < self.source.min_refresh_s:
                    return False
                self._begin(now)
                self._cond.notify_all()
            target = self.completed + 1
            while self.completed < target and not self._stop:
                remaining = self._pending_deadline - self._clock()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self.completed >= target

    def _begin(self, now: float) -> None:
        self._pending = True
        self._pending_deadline = now + self.source.fetch_wait_s
        self._last_start = now

    # -- the refresher thread ------------------------------------------------------------------

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._stop and not self._pending:
                    delay = self._next_due - self._clock()
                    if delay <= 0:
                        self._begin(self._clock())
                        break
                    cond.wait(delay)
                if self._stop:
                    return
            outcome = self._fetch()
            with cond:
                if isinstance(outcome, str):
                    self._failed(outcome)
                else:
                    self._fetched(*outcome)
                self.completed += 1
                self._pending = False
                cond.notify_all()

    def _fetch(self):
        """(body, keys, lifetime) of a good fetch, or the error message."""
        try:
            if self.source.discovery and (self._jwks_url is None or self._clock() >= self._discovery_until):
                resp = self._fetcher.get(self.source.discovery_url)
                self._jwks_url = jwks_uri_of(resp.body, self.source.url)
                self._discovery_until = self._clock() + self._lifetime(resp.lifetime_s)
            resp = self._fetcher.get(self._jwks_url)
            keys = parse_jwks(resp.body, shown(self._jwks_url), self.spiffe, self.trust_domain)
            return resp.body, keys, self._lifetime(resp.lifetime_s)
        except (FetchError, IdentityError) as e:
            if self.source.discovery:
                self._jwks_url = None  # discover again: the JWKS may have moved
            return str(e)
        except Exception as e:  # noqa: BLE001 - the refresher must outlive any surprise; fail closed
            log.exception("key set `%s`: unexpected error while fetching", self.name)
            return f"unexpected error ({type(e).__name__})"

    def _lifetime(self, lifetime_s) -> float:
        s = self.source
        return min(max(DEFAULT_LIFETIME_S if lifetime_s is None else lifetime_s, s.cache_min_s), s.cache_max_s)

    def _fetched(self, body: bytes, keys: dict, lifetime: float) -> None:
        now = self._clock()
        if body != self._body or self._unavailable:
            self._keys, self._body = keys, body
            self.version += 1
            log.info("key set `%s`: %d keys (%s), fresh for %g s", self.name, len(keys),
                     ", ".join(sorted(keys)[:20]), lifetime)
            if not keys:
                log.warning("key set `%s` has no usable key: every token of its issuer is refused", self.name)
        elif self.last_error:
            log.info("key set `%s` fetched again after an error", self.name)
        self._unavailable = False
        self.last_error = ""
        self.lifetime_s = lifetime
        self._usable_until = now + lifetime + self.source.max_stale_s
        self._next_due = max(now + lifetime, self._last_start + self.source.min_refresh_s)
        self._retry_s = self.source.min_refresh_s

    def _failed(self, error: str) -> None:
        self.last_error = error
        if self._unavailable:
            log.error("key set `%s`: %s; tokens of this issuer are refused (jwks_unavailable)", self.name, error)
        else:
            log.error("key set `%s`: %s; keeping the previous %d keys", self.name, error, len(self._keys))
        self._next_due = self._last_start + self._retry_s
        self._retry_s = min(self._retry_s * 2, max(MAX_RETRY_S, self.source.min_refresh_s))

    def close(self) -> None:
        """Stop the refresher thread (waits for a running fetch, itself bounded by the timeouts)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(self.source.connect_timeout_s + self.source.read_timeout_s + 1)
