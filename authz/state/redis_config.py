"""RedisSettings: where the shared state lives when `[state] backend = "redis"` (see docs/scale-out.md).

    [state]
    backend = "redis"
    url = "redis://127.0.0.1:6379/0"      # or rediss:// (TLS); no password in the URL: password_file
    username = "authz"                     # ACL user (optional)
    password_file = "/run/secrets/redis"   # its password, first line (optional)
    tls_ca_file = "/etc/ssl/redis-ca.pem"  # rediss://: the CA to verify the server with (default: system CAs)
    key_prefix = "authz:prod:"             # every key of this deployment starts with it
    key_encryption_key_file = "/run/secrets/authz-kek"  # 32 random bytes (raw, or 64 hex digits / base64)
    connect_timeout_ms = 200
    command_timeout_ms = 100
    max_staleness_ms = 2000                # past it without news from Redis: token checks fail closed

Secrets are read when the settings are parsed (a missing or unreadable file is a config error naming
the file, never showing its content) and never appear in repr() or messages.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import urllib.parse

_PREFIX = re.compile(r"[A-Za-z0-9:_.\-{}]{1,64}\Z")
KEYS = ("url", "username", "password_file", "tls_ca_file", "key_prefix", "key_encryption_key_file",
        "connect_timeout_ms", "command_timeout_ms", "max_staleness_ms")
PATH_KEYS = ("password_file", "tls_ca_file", "key_encryption_key_file")
_SECRET_MAX = 4096


class RedisConfigError(ValueError):
    """A `[state]` Redis setting is missing or malformed (the message names it)."""


def _read_secret(path, what: str) -> bytes:
    if not isinstance(path, str) or not path:
        raise RedisConfigError(f"`state.{what}` must be a file path")
    try:
        with open(path, "rb") as f:
            data = f.read(_SECRET_MAX + 1)
    except OSError as e:
        raise RedisConfigError(f"cannot read `state.{what}` `{path}`: {e.strerror}") from None
    if len(data) > _SECRET_MAX:
        raise RedisConfigError(f"`state.{what}` `{path}` is larger than {_SECRET_MAX} bytes")
    return data


def parse_kek(data: bytes, path: str) -> bytes:
    """32 bytes of key-encryption key from a file holding them raw, as 64 hex digits or as base64."""
    text = data.strip()
    if len(data) == 32:
        return data
    try:
        if len(text) == 64:
            return binascii.unhexlify(text)
        raw = base64.b64decode(text, validate=True)
        if len(raw) == 32:
            return raw
    except (binascii.Error, ValueError):
        pass
    raise RedisConfigError(f"`state.key_encryption_key_file` `{path}` must hold 32 bytes (raw, 64 hex digits or "
                           "base64): make one with `head -c 32 /dev/urandom > FILE`")


@dataclasses.dataclass(frozen=True)
class RedisSettings:
    url: str
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls_ca_file: str | None = None
    key_prefix: str = "authz:"
    kek: bytes | None = dataclasses.field(default=None, repr=False)  # the key-encryption key (32 bytes)
    connect_timeout_s: float = 0.2
    command_timeout_s: float = 0.1
    max_staleness_s: float = 2.0

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    def where(self) -> str:
        """host:port/db of the URL, for messages (never credentials)."""
        u = urllib.parse.urlsplit(self.url)
        return f"{u.scheme}://{u.hostname}:{u.port or 6379}{u.path or '/0'}"

    @classmethod
    def from_table(cls, doc: dict) -> "RedisSettings":
        url = doc.get("url")
        if not isinstance(url, str) or not url:
            raise RedisConfigError('`state.url` is required with backend = "redis" (redis://HOST:PORT/DB)')
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("redis", "rediss") or not u.hostname:
            raise RedisConfigError(f"`state.url` must be redis://HOST:PORT/DB or rediss://HOST:PORT/DB, not `{url}`")
        if u.password or u.username:
            raise RedisConfigError("`state.url` must not carry credentials: use `state.username` and "
                                   "`state.password_file`")
        try:
            u.port  # noqa: B018 - validates it
        except ValueError:
            raise RedisConfigError(f"`state.url` has a bad port: `{url}`") from None
        if u.path not in ("", "/") and not re.fullmatch(r"/\d{1,2}", u.path):
            raise RedisConfigError(f"`state.url` database must be a number (redis://HOST:PORT/0), not `{u.path}`")
        if u.query or u.fragment:
            raise RedisConfigError("`state.url` takes no query: use the [state] options")
        username = doc.get("username")
        if username is not None and (not isinstance(username, str) or not username.isprintable() or not username):
            raise RedisConfigError("`state.username` must be a non-empty string")
        password = None
        if doc.get("password_file") is not None:
            raw = _read_secret(doc["password_file"], "password_file")
            password = raw.decode("utf-8", "replace").splitlines()[0] if raw.strip() else ""
            if not password:
                raise RedisConfigError(f"`state.password_file` `{doc['password_file']}` is empty")
        ca = doc.get("tls_ca_file")
        if ca is not None:
            if u.scheme != "rediss":
                raise RedisConfigError("`state.tls_ca_file` needs a rediss:// url")
            if not isinstance(ca, str) or not os.path.isfile(ca):
                raise RedisConfigError(f"`state.tls_ca_file` `{ca}` is not a readable file")
        prefix = doc.get("key_prefix", "authz:")
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise RedisConfigError("`state.key_prefix` must be 1 to 64 characters of A-Z a-z 0-9 : _ . - { }")
        path = doc.get("key_encryption_key_file")
        if path is None:
            raise RedisConfigError("`state.key_encryption_key_file` is required with backend = \"redis\": the "
                                   "task-token signing keys are shared in Redis, encrypted with it (32 random bytes, "
                                   "the same file on every node: `head -c 32 /dev/urandom > FILE`)")
        kek = parse_kek(_read_secret(path, "key_encryption_key_file"), path)
        times = {}
        for key, default, low, high in (("connect_timeout_ms", 200, 1, 60_000), ("command_timeout_ms", 100, 1, 60_000),
                                        ("max_staleness_ms", 2000, 100, 600_000)):
            value = doc.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise RedisConfigError(f"`state.{key}` must be an integer from {low} to {high}")
            times[key] = value / 1000
        return cls(url, username, password, ca, prefix, kek, times["connect_timeout_ms"],
                   times["command_timeout_ms"], times["max_staleness_ms"])


def resolve_paths(doc, base) -> dict:
    """`[state]` with its file paths made absolute against `base` (the config file's folder)."""
    if not isinstance(doc, dict):
        return doc
    out = dict(doc)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and out[key] and not os.path.isabs(out[key]):
            out[key] = os.path.join(str(base), out[key])
    return out
