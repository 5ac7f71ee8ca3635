"""Console sessions: a signed cookie (HMAC-SHA256 under a secret kept in DATA_DIR/console.secret, shared by
every worker), CSRF tokens bound to the session, and the sign-in attempt limit.

The cookie holds {operator name, the id of the operator's key record, session id, expiry}: it is
refused when its signature, expiry or key record does not match (removing an operator ends its
sessions). No session state is kept on the server, so every worker accepts every session.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import os
import secrets
import time

SECRET_FILE = "console.secret"
COOKIE = "authz_console"
SESSION_TTL_S = 8 * 3600
MAX_COOKIE_CHARS = 1024


def load_secret(data_dir: str) -> bytes:
    """The console's signing secret, created once (O_EXCL: the first worker wins, the others read it)."""
    path = os.path.join(data_dir, SECRET_FILE)
    os.makedirs(data_dir, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker is writing it
            with open(path, "rb") as f:
                data = f.read()
            if len(data) == 32:
                return data
            time.sleep(0.01)
        raise OSError(f"{path} does not hold a 32-byte secret")
    secret = secrets.token_bytes(32)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Session:
    __slots__ = ("name", "key_id", "sid", "expires")

    def __init__(self, name: str, key_id: str, sid: str, expires: int):
        self.name, self.key_id, self.sid, self.expires = name, key_id, sid, expires


class Sessions:
    """Signs and reads session cookies; makes and checks CSRF tokens."""

    def __init__(self, secret: bytes, ttl_s: int = SESSION_TTL_S, clock=time.time):
        self._cookie_key = hmac.new(secret, b"authz console cookie", hashlib.sha256).digest()
        self._csrf_key = hmac.new(secret, b"authz console csrf", hashlib.sha256).digest()
        self.ttl_s, self.clock = ttl_s, clock

    def issue(self, name: str, key_id: str) -> tuple:
        """(cookie value, Session) of a new session of operator `name`."""
        s = Session(name, key_id, secrets.token_urlsafe(16), int(self.clock()) + self.ttl_s)
        body = _b64(json.dumps([s.name, s.key_id, s.sid, s.expires], separators=(",", ":")).encode())
        mac = _b64(hmac.new(self._cookie_key, body.encode(), hashlib.sha256).digest())
        return f"{body}.{mac}", s

    def read(self, value: str | None) -> Session | None:
        """The session of a cookie value when its signature holds and it has not expired, else None."""
        if not value or len(value) > MAX_COOKIE_CHARS or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        expected = _b64(hmac.new(self._cookie_key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(mac, expected):
            return None
        try:
            name, key_id, sid, expires = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        if type(expires) is not int or expires <= self.clock():
            return None
        return Session(name, key_id, sid, expires)

    def csrf(self, sid: str) -> str:
        return _b64(hmac.new(self._csrf_key, sid.encode(), hashlib.sha256).digest())

    def csrf_ok(self, sid: str, token) -> bool:
        return type(token) is str and len(token) < 100 and hmac.compare_digest(token, self.csrf(sid))


class SignInLimit:
    """At most `attempts` failed sign-ins per client address (and per operator name) in `window_s`, per
    worker; a refused attempt does not even check the key."""

    def __init__(self, attempts: int = 5, window_s: float = 60.0, most_keys: int = 10_000, clock=time.monotonic):
        self.attempts, self.window_s, self.most_keys, self.clock = attempts, window_s, most_keys, clock
        self._failures: collections.OrderedDict = collections.OrderedDict()

    def _recent(self, key) -> list:
        now = self.clock()
        times = [t for t in self._failures.get(key, ()) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def allowed(self, *keys) -> bool:
        return all(len(self._recent(k)) < self.attempts for k in keys)

    def failed(self, *keys) -> None:
        now = self.clock()
        for k in keys:
            self._failures.setdefault(k, []).append(now)
            self._failures.move_to_end(k)
        while len(self._failures) > self.most_keys:
            self._failures.popitem(last=False)
