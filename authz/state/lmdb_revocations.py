"""LmdbRevocations: the revocation set in an LMDB environment shared by every worker of the host.

Where: the server keeps it in the policy index's environment (`StateConfig.index_path`), where it has
lived since task tokens came (existing revocations stay valid across the upgrade); without an index
path, in the state store's own environment. Keys (own prefix, in the environment's main database; the
policy generation keys `current`, `gen/...`, `crc/...` and named databases are never touched):
  rvk/gen                      u64 revocation-set generation, +1 per change
  rvk/e/<kind><sha256(value)>  <q revoked_at><q expires_at (0 = never)><value utf-8>
                               kind: j (token id), t (task), a (agent)
  rvk/o/<kind><sha256(value)>  sha256(owner): the caller the entry is charged to
  rvk/x/<u64 BE expires_at><kind><sha256(value)>  (empty) the entries that lapse, in expiry order
  rvk/n                        u64 entries stored
  rvk/c/<sha256(owner)>        u64 entries charged to that owner

A worker reads `rvk/gen` once per decision made with a token (one small read transaction) and re-reads
the whole set only when it changed, so a revocation is honoured by every worker on its next decision.
Every write first deletes the lapsed entries (walking `rvk/x/` only as far as what has lapsed).
"""
from __future__ import annotations

import hashlib
import struct
import threading
import time

import lmdb

from authz.state.revocations import (Revocations, RevocationError, RevocationSet, check_kind, full_error,
                                     quota_error)

GEN_KEY = b"rvk/gen"
ENTRY_PREFIX = b"rvk/e/"
OWNER_PREFIX = b"rvk/o/"
EXPIRY_PREFIX = b"rvk/x/"
COUNT_KEY = b"rvk/n"
HELD_PREFIX = b"rvk/c/"
KIND_BYTES = {"token": b"j", "task": b"t", "agent": b"a"}
_KIND_NAMES = {v: k for k, v in KIND_BYTES.items()}
_ENTRY = struct.Struct("<qq")
_U64 = struct.Struct("<Q")
_U64BE = struct.Struct(">Q")  # expiry index keys sort by time


def entry_key(kind: str, value: str) -> bytes:
    return ENTRY_PREFIX + KIND_BYTES[kind] + hashlib.sha256(value.encode("utf-8")).digest()


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _u64(txn, key: bytes) -> int:
    raw = txn.get(key)
    return _U64.unpack(raw)[0] if raw is not None and len(raw) == 8 else 0


def _add_held(txn, owner: bytes, delta: int) -> None:
    key = HELD_PREFIX + owner
    held = _u64(txn, key) + delta
    if held > 0:
        txn.put(key, _U64.pack(held))
    else:
        txn.delete(key)


def _charge(txn, owner: bytes, name: str, max_per_owner: int) -> None:
    """Charge one entry to `owner`; RevocationQuotaError when it holds its share (0 = no share limit)."""
    if max_per_owner and _u64(txn, HELD_PREFIX + owner) >= max_per_owner:
        raise quota_error(name, max_per_owner)
    _add_held(txn, owner, 1)


def _index_unattributed(txn) -> None:
    """Entries written before owners and the expiry index existed: charged to nobody (""), indexed once."""
    rows = []
    cursor = txn.cursor()
    if cursor.set_range(ENTRY_PREFIX):
        for key, value in cursor:
            if not key.startswith(ENTRY_PREFIX):
                break
            if len(value) >= _ENTRY.size:
                rows.append((bytes(key[len(ENTRY_PREFIX):]), _ENTRY.unpack_from(value)[1]))
    nobody = _digest("")
    for suffix, expires in rows:
        txn.put(OWNER_PREFIX + suffix, nobody)
        if expires > 0:
            txn.put(EXPIRY_PREFIX + _U64BE.pack(expires) + suffix, b"")
    txn.put(COUNT_KEY, _U64.pack(len(rows)))
    if rows:
        txn.put(HELD_PREFIX + nobody, _U64.pack(len(rows)))


def _remove(txn, suffix: bytes) -> None:
    """Delete one entry (its key suffix), its owner's charge and its expiry index key; not the count."""
    owner = txn.get(OWNER_PREFIX + suffix)
    if owner is not None:
        _add_held(txn, bytes(owner), -1)
    txn.delete(OWNER_PREFIX + suffix)
    txn.delete(ENTRY_PREFIX + suffix)


def _sweep(txn, now: float) -> None:
    """Delete every entry that has lapsed, and free its slot and its owner's share."""
    lapsed = []
    cursor = txn.cursor()
    if cursor.set_range(EXPIRY_PREFIX):
        for key in cursor.iternext(values=False):
            if not key.startswith(EXPIRY_PREFIX) or _U64BE.unpack_from(key, len(EXPIRY_PREFIX))[0] > now:
                break
            lapsed.append(bytes(key))
    if not lapsed:
        return
    for key in lapsed:
        _remove(txn, key[len(EXPIRY_PREFIX) + _U64BE.size:])
        txn.delete(key)
    txn.put(COUNT_KEY, _U64.pack(max(0, _u64(txn, COUNT_KEY) - len(lapsed))))


class LmdbRevocations(RevocationSet):
    """The revocation set of one LMDB environment. `opener()` returns the (shared, reference-counted)
    environment, `release(env)` drops the reference; `where` names it in errors."""

    def __init__(self, opener, release, where: str, clock=time.time):
        self._opener, self._release, self.where = opener, release, where
        self.clock = clock
        self._env = None
        self._snapshot = None
        self._lock = threading.Lock()

    def _environment(self):
        if self._env is None:
            try:
                self._env = self._opener()
            except RevocationError:
                raise
            except Exception as e:  # noqa: BLE001 - the opener's own error types (index, state store)
                raise RevocationError(f"revocations unavailable: {e}") from None
        return self._env

    def close(self) -> None:
        if self._env is not None:
            self._release(self._env)
            self._env = None

    def generation(self) -> int:
        try:
            with self._environment().begin() as txn:
                return _u64(txn, GEN_KEY)
        except lmdb.Error as e:
            raise RevocationError(f"cannot read revocations: {e}") from None

    def current(self) -> Revocations:
        env = self._environment()
        try:
            with env.begin() as txn:
                generation = _u64(txn, GEN_KEY)
                snap = self._snapshot
                if snap is not None and snap.generation == generation:
                    return snap
                snap = self._read(txn, generation)
        except lmdb.Error as e:
            raise RevocationError(f"cannot read revocations: {e}") from None
        self._snapshot = snap
        return snap

    @staticmethod
    def _read(txn, generation: int) -> Revocations:
        tables = {b"j": {}, b"t": {}, b"a": {}}
        cursor = txn.cursor()
        if cursor.set_range(ENTRY_PREFIX):
            for key, value in cursor:
                if not key.startswith(ENTRY_PREFIX):
                    break
                kind = key[len(ENTRY_PREFIX):len(ENTRY_PREFIX) + 1]
                if kind not in tables or len(value) < _ENTRY.size:
                    continue  # written by a newer version: ignored, never fatal
                _, expires = _ENTRY.unpack_from(value)
                tables[kind][bytes(value[_ENTRY.size:]).decode("utf-8", "replace")] = expires
        return Revocations(generation, tables[b"j"], tables[b"t"], tables[b"a"])

    def _write(self, fn):
        now = self.clock()
        env = self._environment()
        with self._lock:
            try:
                with env.begin(write=True) as txn:
                    if txn.get(COUNT_KEY) is None:
                        _index_unattributed(txn)
                    _sweep(txn, now)
                    return fn(txn, now)
            except lmdb.Error as e:
                raise RevocationError(f"cannot write revocations: {e}") from None

    def revoke(self, kind: str, value: str, expires_at: float, max_entries: int, owner: str = "",
               max_per_owner: int = 0) -> int:
        check_kind(kind)
        suffix = entry_key(kind, value)[len(ENTRY_PREFIX):]
        expires = 0 if not expires_at else int(expires_at) + 1
        who = _digest(owner)

        def write(txn, now):
            if expires and expires <= now:
                return expires  # it no longer matters: no entry
            old = txn.get(ENTRY_PREFIX + suffix)
            if old is not None and len(old) >= _ENTRY.size:
                old_expires = _ENTRY.unpack_from(old)[1]
                new_expires = 0 if (old_expires == 0 or expires == 0) else max(old_expires, expires)
                if new_expires == old_expires:
                    return old_expires  # extends nothing: free
                holder = bytes(txn.get(OWNER_PREFIX + suffix) or who)
                if holder != who:
                    _charge(txn, who, owner, max_per_owner)
                    _add_held(txn, holder, -1)
                if old_expires > 0:
                    txn.delete(EXPIRY_PREFIX + _U64BE.pack(old_expires) + suffix)
            else:
                stored = _u64(txn, COUNT_KEY)
                _charge(txn, who, owner, max_per_owner)
                if stored >= max_entries:
                    raise full_error(max_entries)
                txn.put(COUNT_KEY, _U64.pack(stored + 1))
                new_expires = expires
            txn.put(ENTRY_PREFIX + suffix, _ENTRY.pack(int(now), new_expires) + value.encode("utf-8"))
            txn.put(OWNER_PREFIX + suffix, who)
            if new_expires:
                txn.put(EXPIRY_PREFIX + _U64BE.pack(new_expires) + suffix, b"")
            txn.put(GEN_KEY, _U64.pack(_u64(txn, GEN_KEY) + 1))
            return new_expires
        return self._write(write)

    def lift(self, kind: str, value: str) -> bool:
        check_kind(kind)
        suffix = entry_key(kind, value)[len(ENTRY_PREFIX):]

        def write(txn, now):
            old = txn.get(ENTRY_PREFIX + suffix)
            if old is None:
                return False
            if len(old) >= _ENTRY.size and _ENTRY.unpack_from(old)[1] > 0:
                txn.delete(EXPIRY_PREFIX + _U64BE.pack(_ENTRY.unpack_from(old)[1]) + suffix)
            _remove(txn, suffix)
            txn.put(COUNT_KEY, _U64.pack(max(0, _u64(txn, COUNT_KEY) - 1)))
            txn.put(GEN_KEY, _U64.pack(_u64(txn, GEN_KEY) + 1))
            return True
        return self._write(write)

    def held_by(self, owner: str) -> int:
        with self._environment().begin() as txn:
            return _u64(txn, HELD_PREFIX + _digest(owner))

    def entries(self) -> list:
        env = self._environment()
        out = []
        with env.begin() as txn:
            cursor = txn.cursor()
            if cursor.set_range(ENTRY_PREFIX):
                for key, value in cursor:
                    if not key.startswith(ENTRY_PREFIX):
                        break
                    kind = _KIND_NAMES.get(key[len(ENTRY_PREFIX):len(ENTRY_PREFIX) + 1])
                    revoked, expires = _ENTRY.unpack_from(value)
                    out.append((kind, bytes(value[_ENTRY.size:]).decode("utf-8", "replace"), revoked, expires))
        return out


def index_revocations(db: str, clock=time.time) -> LmdbRevocations:
    """The revocation set kept in the policy index's environment at `db` (the server's)."""
    from authz.engine.index import open_env, release_env
    return LmdbRevocations(lambda: open_env(db, create=False), release_env, db, clock)
