"""KeyStore: the Ed25519 signing keys of task tokens in the data folder, their rotation and the JWKS.

Layout (`<data_dir>/keys/`, mode 0700):
  keyset.json   {"active": kid, "max_ttl_s": n, "keys": [{"kid", "x", "created", "retired", "keep_until"}]}
  <kid>.pem     the active key's private half (PKCS#8 PEM, mode 0600); deleted when it is rotated out
  .lock         flock serializing creation and rotation across processes

A rotated-out key no longer signs; its public half stays in the key set (and the JWKS) until
`keep_until` = rotation time + the longest token lifetime + leeway + a margin, i.e. until the
last token it signed has expired. kid = the key's RFC 7638 JWK thumbprint. Key material never
reaches logs or messages.

Each file is written whole or not at all (a temporary file in the folder, fsync, rename, fsync
of the folder): a full disk or a crash leaves the previous key set. An empty or corrupt file,
or signing keys without their key set, is refused: a new key is never made over them.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import stat
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from authz.errors import AuthzError
from authz.tokens.config import MAX_TTL_CEILING_S

log = logging.getLogger("authz.tokens")

KEYSET = "keyset.json"
ROTATION_MARGIN_S = 60  # a worker may sign with a key for up to its key-check interval after rotation


class KeyStoreError(AuthzError):
    """The signing keys cannot be created, read or rotated."""

    code = "keys_unavailable"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_jwk(public_key: Ed25519PublicKey) -> dict:
    """The public key as an OKP JWK (no kid)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def thumbprint(jwk: dict) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an OKP key: the hash of its required members in order."""
    canonical = json.dumps({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}, separators=(",", ":"),
                           sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def keys_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "keys")


@contextlib.contextmanager
def _locked(folder: str):
    fd = os.open(os.path.join(folder, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_folder(folder: str) -> None:
    """Make the folder's last renames and removals durable; a failure is logged (what is done stays done)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("cannot sync the folder `%s`: %s", folder, e.strerror)


def _write_atomic(path: str, data: bytes) -> None:
    """Make `path` (owner-only) hold all of `data`, or leave it as it was: KeyStoreError when it cannot."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeyStoreError(f"cannot write `{path}`: {e.strerror or e}") from None
    _fsync_folder(os.path.dirname(path))


def _holds_signing_keys(folder: str) -> bool:
    try:
        return any(name.endswith(".pem") for name in os.listdir(folder))
    except OSError:
        return False


def _read_keyset(folder: str) -> dict | None:
    """The key set; None when the folder has neither a key set nor signing keys; KeyStoreError when unusable."""
    path = os.path.join(folder, KEYSET)
    start_over = "restore it, or move the folder away to start over with a new key"
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except FileNotFoundError:
        if _holds_signing_keys(folder):
            raise KeyStoreError(f"the key set `{path}` is missing but `{folder}` holds signing keys: {start_over}") \
                from None
        return None
    except OSError as e:
        raise KeyStoreError(f"cannot read the key set `{path}`: {e.strerror}") from None
    if not data.strip():
        raise KeyStoreError(f"the key set `{path}` is empty: {start_over}")
    try:
        doc = json.loads(data)
    except ValueError:
        raise KeyStoreError(f"the key set `{path}` is not valid JSON: {start_over}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not isinstance(doc.get("active"), str):
        raise KeyStoreError(f"`{path}` is not an authz key set")
    return doc


def _write_keyset(folder: str, doc: dict, new_kid: str | None = None) -> None:
    """Write the key set; on failure the new key's private file (`new_kid`, not in any key set yet) goes too."""
    try:
        _write_atomic(os.path.join(folder, KEYSET), json.dumps(doc, indent=1).encode())
    except KeyStoreError:
        if new_kid is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, f"{new_kid}.pem"))
        raise


def _new_key(folder: str, now: float) -> dict:
    """Create a private key file; returns its key-set entry."""
    private = Ed25519PrivateKey.generate()
    jwk = public_jwk(private.public_key())
    kid = thumbprint(jwk)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_atomic(os.path.join(folder, f"{kid}.pem"), pem)
    return {"kid": kid, "x": jwk["x"], "created": int(now), "retired": None, "keep_until": None}


def _prune(doc: dict, now: float) -> list:
    """Drop retired keys whose tokens have all expired; returns the dropped kids."""
    dropped = [k["kid"] for k in doc["keys"] if k.get("keep_until") is not None and k["keep_until"] < now]
    doc["keys"] = [k for k in doc["keys"] if k["kid"] not in dropped]
    return dropped


def ensure_keys(data_dir: str, max_ttl_s: int = 900, now: float | None = None) -> str:
    """Create the key set with one active key unless it exists (safe to call from several processes);
    record `max_ttl_s` if it is longer than any recorded. Returns the active kid."""
    now = time.time() if now is None else now
    folder = keys_dir(data_dir)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    with _locked(folder):
        doc = _read_keyset(folder)
        if doc is not None and doc.get("max_ttl_s", 0) >= max_ttl_s:
            return doc["active"]
        new_kid = None
        if doc is None:
            entry = _new_key(folder, now)
            new_kid = entry["kid"]
            doc = {"active": new_kid, "max_ttl_s": max_ttl_s, "keys": [entry]}
        doc["max_ttl_s"] = max(int(doc.get("max_ttl_s", 0)), int(max_ttl_s))
        _write_keyset(folder, doc, new_kid)
        if new_kid is not None:
            log.info("created task-token signing key %s", new_kid)
        return doc["active"]


def rotate_keys(data_dir: str, max_ttl_s: int = 900, leeway_s: int = 5, now: float | None = None) -> tuple:
    """Make a new active key; the old one stops signing and its public half is kept until its last
    token has expired. Returns (new kid, retired kid, dropped kids)."""
    now = time.time() if now is None else now
    ensure_keys(data_dir, max_ttl_s, now)
    folder = keys_dir(data_dir)
    with _locked(folder):
        doc = _read_keyset(folder)
        lifetime = max(int(doc.get("max_ttl_s", 0)), int(max_ttl_s))
        old = doc["active"]
        entry = _new_key(folder, now)
        for k in doc["keys"]:
            if k["kid"] == old:
                k["retired"] = int(now)
                k["keep_until"] = int(now + lifetime + leeway_s + ROTATION_MARGIN_S)
        doc["keys"].append(entry)
        doc["active"] = entry["kid"]
        doc["max_ttl_s"] = lifetime
        dropped = _prune(doc, now)
        _write_keyset(folder, doc, entry["kid"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, f"{old}.pem"))
        _fsync_folder(folder)
        log.info("rotated task-token signing key: %s -> %s", old, entry["kid"])
        return entry["kid"], old, dropped


class KeyStore:
    """A process's view of the key set: the active signing key and every public key still trusted.

    Re-reads the key set when its file changes, checked at most every `check_interval_s`
    (and at once, rate-limited, when a token names an unknown kid).
    """

    def __init__(self, data_dir: str, check_interval_s: float = 1.0, clock=time.time):
        self.folder = keys_dir(data_dir)
        self.check_interval_s = check_interval_s
        self.clock = clock
        self._stamp = None
        self._next_check = 0.0
        self._next_forced = 0.0
        self.active_kid = ""
        self.max_ttl_s = MAX_TTL_CEILING_S  # the longest token lifetime the key set has recorded
        self._private = None
        self._public: dict = {}     # kid -> Ed25519PublicKey
        self._entries: dict = {}    # kid -> key-set entry
        self._reload_error = ""     # the last reload failure, logged once
        self.reload()

    def _file_stamp(self):
        st = os.stat(os.path.join(self.folder, KEYSET))
        return st.st_mtime_ns, st.st_ino, st.st_size

    def reload(self) -> None:
        """Read the key set and the active private key now; KeyStoreError if unusable."""
        try:
            stamp = self._file_stamp()
        except OSError:
            stamp = None
        doc = _read_keyset(self.folder)
        if doc is None:
            raise KeyStoreError(f"no key set in `{self.folder}`: start `authz serve` once or run `authz keys rotate`")
        public, entries = {}, {}
        for k in doc["keys"]:
            try:
                raw = b64url_decode(k["x"])
                key = Ed25519PublicKey.from_public_bytes(raw)
            except (KeyError, ValueError, TypeError):
                raise KeyStoreError(f"`{self.folder}/{KEYSET}`: a malformed key entry") from None
            if thumbprint(public_jwk(key)) != k.get("kid"):
                raise KeyStoreError(f"`{self.folder}/{KEYSET}`: key id does not match its key")
            public[k["kid"]] = key
            entries[k["kid"]] = k
        max_ttl_s = doc.get("max_ttl_s")
        if isinstance(max_ttl_s, bool) or not isinstance(max_ttl_s, int) or not 0 < max_ttl_s <= MAX_TTL_CEILING_S:
            max_ttl_s = MAX_TTL_CEILING_S  # unknown: the longest any token can live
        active = doc["active"]
        if active not in public:
            raise KeyStoreError(f"`{self.folder}/{KEYSET}`: the active key is not in the set")
        if active != self.active_kid or self._private is None:
            self._private = self._load_private(active, public[active])
        self.active_kid, self.max_ttl_s = active, max_ttl_s
        self._public, self._entries, self._stamp = public, entries, stamp

    def _load_private(self, kid: str, public: Ed25519PublicKey):
        path = os.path.join(self.folder, f"{kid}.pem")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise KeyStoreError(f"cannot read the signing key `{path}`: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyStoreError(f"the signing key `{path}` is accessible by others "
                                    f"(mode {stat.S_IMODE(st.st_mode):04o}); `chmod 600` it")
            data = os.read(fd, 65536)
        except OSError as e:
            raise KeyStoreError(f"cannot read the signing key `{path}`: {e.strerror}") from None
        finally:
            os.close(fd)
        if not data.strip():
            raise KeyStoreError(f"the signing key `{path}` is empty: restore it, or rotate to a new key")
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise KeyStoreError(f"the signing key `{path}` is not a PEM private key") from None
        if not isinstance(private, Ed25519PrivateKey) or public_jwk(private.public_key()) != public_jwk(public):
            raise KeyStoreError(f"the signing key `{path}` does not match its key set entry")
        return private

    def maybe_reload(self, force: bool = False) -> None:
        """Re-read the key set if its file changed (checked at most every check_interval_s; `force`
        checks now, at most 10 times a second). Keeps the loaded keys when the new set is unusable."""
        now = time.monotonic()
        if force:
            if now < self._next_forced:
                return
            self._next_forced = now + 0.1
        elif now < self._next_check:
            return
        self._next_check = now + self.check_interval_s
        try:
            if self._file_stamp() == self._stamp:
                return
        except OSError:
            pass  # reload() says what is wrong
        try:
            self.reload()
        except KeyStoreError as e:
            if str(e) != self._reload_error:  # once per condition, not once per check
                log.error("keeping the loaded signing keys: %s", e)
                self._reload_error = str(e)
            return
        if self._reload_error:
            log.warning("the key set is usable again")
            self._reload_error = ""

    def signing_key(self):
        """(kid, private key) of the active key."""
        self.maybe_reload()
        return self.active_kid, self._private

    def public_key(self, kid: str):
        """The public key `kid` while it is trusted, else None."""
        self.maybe_reload()
        key = self._public.get(kid)
        if key is None:
            self.maybe_reload(force=True)
            key = self._public.get(kid)
        if key is None:
            return None
        keep_until = self._entries[kid].get("keep_until")
        if keep_until is not None and keep_until < self.clock():
            return None
        return key

    def jwks(self) -> dict:
        """{"keys": [...]}: every trusted public key as a JWK with kid, alg and use."""
        self.maybe_reload()
        now = self.clock()
        keys = []
        for kid, key in self._public.items():
            keep_until = self._entries[kid].get("keep_until")
            if keep_until is not None and keep_until < now:
                continue
            keys.append({**public_jwk(key), "kid": kid, "alg": "EdDSA", "use": "sig"})
        return {"keys": keys}
