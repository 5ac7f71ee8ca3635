"""RedisLink: one process's connection to the shared Redis, with short timeouts and a circuit breaker.

Every call either answers within `command_timeout_ms` (connect: `connect_timeout_ms`) or raises
Unavailable. After a failure the link is "down" for a back-off that doubles from 50 ms to 2 s: calls
fail at once (no network wait, so a dead Redis costs a stateful decision nothing but its deny, and the
worker's event loop is never held for a timeout per call), then one call probes again. The fan-out
listener (fanout.py) probes on its own and reopens the link as soon as Redis answers.

The client is the synchronous `redis` client (redis-py): the server calls the store inside one decision
step without awaiting (docs/scale-out.md, "Why synchronous"). A forked child makes its own pool
(redis-py checks the pid). No retries inside the client: Store.transact retries conflicts, the breaker
paces reconnects. Credentials never appear in messages.
"""
from __future__ import annotations

import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from authz.state.errors import Full, Unavailable
from authz.state.resp import Resp, RespError

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0


class RedisLink:
    def __init__(self, settings, clock=time.monotonic):
        self.settings = settings
        self.clock = clock
        self._client = None
        self._resp = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._backoff = BACKOFF_MIN_S
        self.last_error = ""
        self.failures = 0  # calls refused or failed, for metrics and tests

    def client(self) -> redis.Redis:
        c = self._client
        if c is None:
            with self._lock:
                if self._client is None:
                    self._client = self.new_client()
                c = self._client
        return c

    def new_client(self, timeout_s: float | None = None) -> redis.Redis:
        """A client of its own (the fan-out listener's pub/sub needs one; `timeout_s`: its read timeout)."""
        s = self.settings
        kwargs = dict(username=s.username, password=s.password, socket_timeout=timeout_s or s.command_timeout_s,
                      socket_connect_timeout=s.connect_timeout_s, retry=Retry(NoBackoff(), 0),
                      health_check_interval=0, client_name="authz")
        if s.tls:
            kwargs.update(ssl_cert_reqs="required", ssl_ca_certs=s.tls_ca_file)
        return redis.Redis.from_url(s.url, **kwargs)

    @property
    def down(self) -> bool:
        return self.clock() < self._down_until

    def up(self) -> None:
        """Redis answered (a call or the listener's probe): calls go through again."""
        self._down_until, self._backoff = 0.0, BACKOFF_MIN_S

    def failed(self, err: Exception) -> Unavailable:
        """Mark the link down for the current back-off; the Unavailable (or Full) to raise."""
        self.failures += 1
        if isinstance(err, redis.ResponseError) and str(err).startswith("OOM"):
            return Full(f"the shared state store {self.settings.where()} is full (maxmemory): {err}")
        self._down_until = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        self.last_error = describe(err)
        return Unavailable(f"the shared state store {self.settings.where()} is unavailable: {self.last_error}")

    def call(self, fn):
        """fn(client) -> its result, or Unavailable (at once while the link is down)."""
        if self.clock() < self._down_until:
            self.failures += 1
            raise Unavailable(f"the shared state store {self.settings.where()} is unavailable "
                              f"(reconnecting): {self.last_error}")
        try:
            result = fn(self.client())
        except redis.exceptions.NoScriptError:
            raise
        except (redis.RedisError, OSError) as err:
            raise self.failed(err) from None
        if self._backoff != BACKOFF_MIN_S:
            self.up()
        return result

    def fast(self, commands) -> list:
        """The decision path's round trip on the minimal connection (resp.py): replies to `commands`, or
        Unavailable / Full as `call`; RespError NOSCRIPT is raised as is (the caller loads the script)."""
        if self.clock() < self._down_until:
            self.failures += 1
            raise Unavailable(f"the shared state store {self.settings.where()} is unavailable "
                              f"(reconnecting): {self.last_error}")
        resp = self._resp
        if resp is None:
            resp = self._resp = Resp(self.settings)
        try:
            replies = resp.execute(commands)
        except RespError as err:
            text = str(err)
            if text.startswith("NOSCRIPT"):
                raise
            if text.startswith("OOM"):
                raise Full(f"the shared state store {self.settings.where()} is full (maxmemory): {text}") from None
            raise self.failed(redis.ResponseError(text)) from None
        except OSError as err:
            raise self.failed(redis.ConnectionError(str(err) or type(err).__name__)
                              if not isinstance(err, TimeoutError) else redis.TimeoutError(str(err))) from None
        if self._backoff != BACKOFF_MIN_S:
            self.up()
        return replies

    def close(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            c.close()
        if self._resp is not None:
            self._resp.close()
            self._resp = None


def describe(err: Exception) -> str:
    """What went wrong, in words a operator can act on (never a credential)."""
    text = str(err) or type(err).__name__
    if isinstance(err, redis.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return "authentication failed (check state.username and state.password_file)"
    if "NOPERM" in text:
        return f"the Redis ACL user may not do this: {text}"
    if isinstance(err, redis.TimeoutError):
        return "timed out (state.command_timeout_ms / connect_timeout_ms)"
    if isinstance(err, redis.ConnectionError):
        return f"cannot connect: {text}"
    return text
