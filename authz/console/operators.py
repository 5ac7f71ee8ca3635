"""Operator API keys: `authz operators add NAME` creates one (shown once), stored hashed in
DATA_DIR/operators.json (scrypt with a random salt per key, file mode 0600, written atomically).

An operator signs in to the console with its name and key; the console's principal is then
Operator::"<name>" and what it may do is decided by the policies (docs/console.md).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time

FILE = "operators.json"
KEY_PREFIX = "azop_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_KEY_CHARS = 128
MAX_OPERATORS = 1000
# scrypt cost: ~16 MiB and a few tens of ms per check (sign-in is rate limited as well).
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


class OperatorError(ValueError):
    """A bad name, a duplicate, an unknown operator, or an unreadable key file."""


def check_name(name: str) -> str:
    if type(name) is not str or not NAME_RE.match(name):
        raise OperatorError("an operator name is 1 to 64 characters: letters, digits and . _ @ - "
                            "(starting with a letter or digit)")
    return name


def _hash(key: str, salt: bytes) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, **SCRYPT)


class OperatorKeys:
    """The operator key file of a data folder. Reads are cached by the file's mtime and size."""

    def __init__(self, data_dir: str):
        self.path = os.path.join(data_dir, FILE)
        self._cache = (None, {})

    def _stamp(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> dict:
        """name -> {"salt", "hash", "created", "id"}; {} when there is no file. OperatorError when unreadable."""
        stamp = self._stamp()
        if stamp is None:
            return {}
        if self._cache[0] == stamp:
            return self._cache[1]
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
            operators = doc["operators"]
            if not isinstance(operators, dict):
                raise TypeError("`operators` is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise OperatorError(f"cannot read {self.path}: {e}") from None
        self._cache = (stamp, operators)
        return operators

    def _save(self, operators: dict) -> None:
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".operators.", dir=folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"operators": operators}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def add(self, name: str, now: float | None = None) -> str:
        """Create operator `name`; returns its key (not stored: only its hash is)."""
        check_name(name)
        operators = dict(self.load())
        if name in operators:
            raise OperatorError(f"operator `{name}` exists; remove it first to give it a new key")
        if len(operators) >= MAX_OPERATORS:
            raise OperatorError(f"at most {MAX_OPERATORS} operators")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        operators[name] = {"salt": salt.hex(), "hash": _hash(key, salt).hex(),
                           "created": int(time.time() if now is None else now), "id": secrets.token_hex(8)}
        self._save(operators)
        return key

    def remove(self, name: str) -> None:
        operators = dict(self.load())
        if name not in operators:
            raise OperatorError(f"no operator `{name}`")
        del operators[name]
        self._save(operators)

    def names(self) -> list:
        return sorted(self.load().items())

    def verify(self, name: str, key: str) -> str | None:
        """The operator's record id when `key` is its key, else None (same work whether or not `name` exists)."""
        try:
            operators = self.load()
        except OperatorError:
            return None
        record = operators.get(name) if type(name) is str else None
        if type(key) is not str or len(key) > MAX_KEY_CHARS:
            return None
        salt = bytes.fromhex(record["salt"]) if record else b"\0" * 16
        digest = _hash(key, salt)
        if record is None:
            return None
        return record["id"] if hmac.compare_digest(digest.hex(), record["hash"]) else None

    def record_id(self, name: str) -> str | None:
        """The id of operator `name`'s current key (a session names it: removing the operator ends its sessions)."""
        try:
            record = self.load().get(name)
        except OperatorError:
            return None
        return record["id"] if record else None
