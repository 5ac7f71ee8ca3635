"""SharedKeyStore: the task-token signing keys of a deployment whose state is shared in Redis, so a
token issued by one node verifies on every node, and `authz keys rotate` reaches them all.

Stored in one Redis hash `<key_prefix>keys`:
  doc          the key set, as keys.py's keyset.json: {"active", "max_ttl_s", "kek", "keys": [...]} with
               public halves only; "kek" is the first 16 hex digits of SHA-256 of the key-encryption key
  ver          +1 per change (rotation, creation); a new key set starts at the time in µs
  priv:<kid>   the private key of the active key: 12-byte nonce + AES-256-GCM(raw Ed25519 private key),
               the associated data binding it to "<key_prefix>" and its kid
The key-encryption key (KEK) is 32 bytes from `state.key_encryption_key_file`, a Kubernetes Secret in
practice: Redis (its RDB/AOF files, its replicas, whoever reads them) never holds a usable private
key, and a record moved to another kid or deployment does not decrypt. Every change is one
compare-and-set script on `ver` that also PUBLISHes "keys <ver>" on `<key_prefix>events`; each worker's
Fanout listener reloads at once and checks `ver` every POLL_S (fanout.py), so a rotation is honoured
by every node within the fan-out bound. A rotated-out key keeps verifying until its last token has
expired (keep_until, as in keys.py). Key material never reaches logs or messages.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from authz.tokens.config import MAX_TTL_CEILING_S
from authz.tokens.keys import ROTATION_MARGIN_S, KeyStoreError, b64url_decode, public_jwk, thumbprint

log = logging.getLogger("authz.tokens")

TOPIC = b"keys"
_ATTEMPTS = 8

# KEYS[1] the hash; ARGV: expected ver ("0": none yet), doc, new kid, sealed private key, old kid ("" none),
# channel. Returns the new ver, or 0 when `ver` moved (read again and retry).
_CAS = r"""
local have = redis.call('HGET', KEYS[1], 'ver') or '0'
if have ~= ARGV[1] then return 0 end
local ver = redis.call('HINCRBY', KEYS[1], 'ver', 1)
if ver == 1 then  -- a new (or lost) key set: start at the time in µs, past any version a worker holds
  local t = redis.call('TIME')
  ver = redis.call('HINCRBY', KEYS[1], 'ver', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
redis.call('HSET', KEYS[1], 'doc', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'priv:' .. ARGV[3], ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HDEL', KEYS[1], 'priv:' .. ARGV[5]) end
redis.call('PUBLISH', ARGV[6], 'keys ' .. ver)
return ver
"""


def kek_id(kek: bytes) -> str:
    return hashlib.sha256(kek).hexdigest()[:16]


def _aad(prefix: bytes, kid: str) -> bytes:
    return prefix + b"keys:" + kid.encode()


def _seal(kek: bytes, prefix: bytes, kid: str, private: Ed25519PrivateKey) -> bytes:
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    nonce = os.urandom(12)
    return nonce + AESGCM(kek).encrypt(nonce, raw, _aad(prefix, kid))


def _open(kek: bytes, prefix: bytes, kid: str, sealed: bytes) -> Ed25519PrivateKey:
    try:
        raw = AESGCM(kek).decrypt(sealed[:12], sealed[12:], _aad(prefix, kid))
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (InvalidTag, ValueError):
        raise KeyStoreError(f"the signing key {kid} in Redis does not decrypt with this key-encryption key "
                            "(state.key_encryption_key_file must be the same on every node)") from None


class SharedKeys:
    """Creation and rotation of the shared key set (the server's startup and `authz keys rotate`)."""

    def __init__(self, link, settings):
        if settings.kek is None:
            raise KeyStoreError("task tokens with a shared state need `state.key_encryption_key_file` "
                                "(32 random bytes, the same on every node)")
        self.link, self.settings, self.kek = link, settings, settings.kek
        self.prefix = settings.key_prefix.encode()
        self.hash = self.prefix + b"keys"
        self.channel = self.prefix + b"events"

    def call(self, fn):
        from authz.state.errors import Unavailable
        try:
            return self.link.call(fn)
        except Unavailable as e:
            raise KeyStoreError(f"signing keys unavailable: {e}") from None

    def read(self, with_private: str | None = None):
        """(ver, doc or None, sealed private key of `with_private` or None)."""
        fields = ["ver", "doc"] + ([f"priv:{with_private}"] if with_private else [])
        row = self.call(lambda c: c.hmget(self.hash, fields))
        ver = int(row[0] or 0)
        doc = None
        if row[1] is not None:
            try:
                doc = json.loads(row[1])
            except ValueError:
                raise KeyStoreError("the shared key set in Redis is not valid JSON") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) \
                    or not isinstance(doc.get("active"), str):
                raise KeyStoreError("the shared key set in Redis is not an authz key set")
            if doc.get("kek") != kek_id(self.kek):
                raise KeyStoreError("the shared key set in Redis was written with another key-encryption key "
                                    "(state.key_encryption_key_file must be the same on every node)")
        return ver, doc, (row[2] if with_private else None)

    def _cas(self, ver: int, doc: dict, new_kid: str, sealed: bytes, old_kid: str) -> int:
        def run(c):
            return c.eval(_CAS, 1, self.hash, str(ver), json.dumps(doc), new_kid, sealed, old_kid, self.channel)
        return int(self.call(run))

    def _new_key(self, now: float):
        private = Ed25519PrivateKey.generate()
        jwk = public_jwk(private.public_key())
        kid = thumbprint(jwk)
        entry = {"kid": kid, "x": jwk["x"], "created": int(now), "retired": None, "keep_until": None}
        return entry, _seal(self.kek, self.prefix, kid, private)

    def ensure(self, max_ttl_s: int, now: float | None = None) -> str:
        """Create the key set with one active key unless it exists; record a longer max_ttl_s. Active kid."""
        for _ in range(_ATTEMPTS):
            now = time.time() if now is None else now
            ver, doc, _ = self.read()
            if doc is not None and int(doc.get("max_ttl_s", 0)) >= max_ttl_s:
                return doc["active"]
            new_kid, sealed = "", b""
            if doc is None:
                entry, sealed = self._new_key(now)
                new_kid = entry["kid"]
                doc = {"active": new_kid, "max_ttl_s": max_ttl_s, "kek": kek_id(self.kek), "keys": [entry]}
            doc["max_ttl_s"] = max(int(doc.get("max_ttl_s", 0)), int(max_ttl_s))
            if self._cas(ver, doc, new_kid, sealed, ""):
                if new_kid:
                    log.info("created the shared task-token signing key %s", new_kid)
                return doc["active"]
        raise KeyStoreError("the shared key set kept changing; try again")

    def rotate(self, max_ttl_s: int, leeway_s: int, now: float | None = None) -> tuple:
        """As keys.rotate_keys, for every node: (new kid, retired kid, dropped kids)."""
        self.ensure(max_ttl_s, now)
        for _ in range(_ATTEMPTS):
            at = time.time() if now is None else now
            ver, doc, _ = self.read()
            lifetime = max(int(doc.get("max_ttl_s", 0)), int(max_ttl_s))
            old = doc["active"]
            entry, sealed = self._new_key(at)
            for k in doc["keys"]:
                if k["kid"] == old:
                    k["retired"] = int(at)
                    k["keep_until"] = int(at + lifetime + leeway_s + ROTATION_MARGIN_S)
            dropped = [k["kid"] for k in doc["keys"] if k.get("keep_until") is not None and k["keep_until"] < at]
            doc["keys"] = [k for k in doc["keys"] if k["kid"] not in dropped] + [entry]
            doc["active"], doc["max_ttl_s"] = entry["kid"], lifetime
            if self._cas(ver, doc, entry["kid"], sealed, old):
                log.info("rotated the shared task-token signing key: %s -> %s", old, entry["kid"])
                return entry["kid"], old, dropped
        raise KeyStoreError("the shared key set kept changing; try again")


class _Loaded:
    """One loaded key set, replaced whole (the listener thread reloads while the event loop reads)."""

    __slots__ = ("ver", "active_kid", "private", "public", "entries", "max_ttl_s")

    def __init__(self, ver, active_kid, private, public, entries, max_ttl_s):
        self.ver, self.active_kid, self.private = ver, active_kid, private
        self.public, self.entries, self.max_ttl_s = public, entries, max_ttl_s


_NONE = _Loaded(-1, "", None, {}, {}, MAX_TTL_CEILING_S)


class SharedKeyStore:
    """A worker's view of the shared key set, with KeyStore's interface (signing_key, public_key, jwks,
    max_ttl_s, active_kid). Kept current by the Fanout listener (`refresh`); an unknown kid makes it
    look again at once (at most 10 times a second)."""

    def __init__(self, link, settings, max_ttl_s: int, leeway_s: int, fanout=None, clock=time.time):
        self.shared = SharedKeys(link, settings)
        self.clock = clock
        self._loaded = _NONE
        self._lock = threading.Lock()  # one reload at a time (the listener's and a request's forced one)
        self._next_forced = 0.0
        self._reload_error = ""
        self._max_ttl_s = max_ttl_s
        self._try_reload()  # Redis unreachable now: tokens fail closed until the listener or a use loads them
        if fanout is not None:
            fanout.watch(TOPIC, self)

    @property
    def active_kid(self) -> str:
        return self._loaded.active_kid

    @property
    def max_ttl_s(self) -> int:
        return self._loaded.max_ttl_s

    def reload(self) -> None:
        """Read the key set (and the active private key when it changed), creating it if Redis has none
        (a fresh or flushed Redis); KeyStoreError if unusable."""
        ver, doc, _ = self.shared.read()
        if doc is None or int(doc.get("max_ttl_s", 0)) < self._max_ttl_s:
            self.shared.ensure(self._max_ttl_s)
            ver, doc, _ = self.shared.read()
        public, entries = {}, {}
        for k in doc["keys"]:
            try:
                key = Ed25519PublicKey.from_public_bytes(b64url_decode(k["x"]))
            except (KeyError, ValueError, TypeError):
                raise KeyStoreError("the shared key set holds a malformed key entry") from None
            if thumbprint(public_jwk(key)) != k.get("kid"):
                raise KeyStoreError("the shared key set: a key id does not match its key")
            public[k["kid"]], entries[k["kid"]] = key, k
        active = doc["active"]
        if active not in public:
            raise KeyStoreError("the shared key set: the active key is not in the set")
        loaded = self._loaded
        private = loaded.private
        if active != loaded.active_kid or private is None:
            _, _, sealed = self.shared.read(with_private=active)
            if sealed is None:
                raise KeyStoreError(f"the shared key set has no private key for its active key {active}")
            private = _open(self.shared.kek, self.shared.prefix, active, sealed)
            if public_jwk(private.public_key()) != public_jwk(public[active]):
                raise KeyStoreError(f"the shared signing key {active} does not match its key set entry")
        max_ttl_s = doc.get("max_ttl_s")
        if isinstance(max_ttl_s, bool) or not isinstance(max_ttl_s, int) or not 0 < max_ttl_s <= MAX_TTL_CEILING_S:
            max_ttl_s = MAX_TTL_CEILING_S
        self._loaded = _Loaded(ver, active, private, public, entries, max_ttl_s)

    def refresh(self) -> None:
        """The Fanout listener's check: reload when `ver` moved (keeps the loaded keys if unusable)."""
        ver = int(self.shared.link.client().hget(self.shared.hash, "ver") or 0)
        if ver != self._loaded.ver:
            self._try_reload()

    def _try_reload(self) -> None:
        with self._lock:
            try:
                self.reload()
            except KeyStoreError as e:
                if str(e) != self._reload_error:
                    log.error("keeping the loaded signing keys: %s", e)
                    self._reload_error = str(e)
                return
            self._reload_error = ""

    def maybe_reload(self, force: bool = False) -> None:
        if force:
            now = time.monotonic()
            if now >= self._next_forced:
                self._next_forced = now + 0.1
                self._try_reload()

    def _current(self) -> _Loaded:
        """The loaded key set; TokenError state_unavailable while none could be loaded yet (fail closed)."""
        loaded = self._loaded
        if loaded.private is None:
            self.maybe_reload(force=True)
            loaded = self._loaded
            if loaded.private is None:
                from authz.tokens.verify import TokenError
                raise TokenError("state_unavailable", f"the shared signing keys are not loaded: {self._reload_error}")
        return loaded

    def signing_key(self):
        loaded = self._current()
        return loaded.active_kid, loaded.private

    def public_key(self, kid: str):
        loaded = self._current()
        if kid not in loaded.public:
            self.maybe_reload(force=True)
            loaded = self._loaded
        key = loaded.public.get(kid)
        if key is None:
            return None
        keep_until = loaded.entries[kid].get("keep_until")
        if keep_until is not None and keep_until < self.clock():
            return None
        return key

    def jwks(self) -> dict:
        loaded = self._current()
        now = self.clock()
        keys = []
        for kid, key in loaded.public.items():
            keep_until = loaded.entries[kid].get("keep_until")
            if keep_until is not None and keep_until < now:
                continue
            keys.append({**public_jwk(key), "kid": kid, "alg": "EdDSA", "use": "sig"})
        return {"keys": keys}
