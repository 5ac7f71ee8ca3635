"""RevocationStore: revoked token ids, tasks and agents, kept in the index's LMDB environment for every worker.

Keys (own prefix; the policy generation keys `current`, `gen/...`, `crc/...` are never touched):
  rvk/gen                      u64 revocation-set generation, +1 per change
  rvk/e/<kind><sha256(value)>  <q revoked_at><q expires_at (0 = never)><value utf-8>;  kind: j (token id), t (task), a (agent)
  rvk/o/<kind><sha256(value)>  sha256(owner): the caller the entry is charged to
  rvk/x/<u64 BE expires_at><kind><sha256(value)>  (empty) the entries that lapse, in expiry order
  rvk/n                        u64 entries stored
  rvk/c/<sha256(owner)>        u64 entries charged to that owner

A worker reads `rvk/gen` once per decision made with a token (one small read transaction)
and re-reads the whole set only when it changed, so a revocation is honoured by every
worker on its next decision. Readers ignore entries past `expires_at`; every write first
deletes them (walking `rvk/x/` only as far as what has lapsed), so a lapsed entry never
takes a slot. A write is refused when it would store more than `max_entries` entries, or
charge more than `max_per_owner` to one caller; a write that adds or lengthens nothing is free.
"""
from __future__ import annotations

import hashlib
import struct
import threading
import time

import lmdb

from authz.engine.index import open_env, release_env
from authz.errors import AuthzError, IndexUnavailableError

GEN_KEY = b"rvk/gen"
ENTRY_PREFIX = b"rvk/e/"
OWNER_PREFIX = b"rvk/o/"
EXPIRY_PREFIX = b"rvk/x/"
COUNT_KEY = b"rvk/n"
HELD_PREFIX = b"rvk/c/"
KINDS = {"token": b"j", "task": b"t", "agent": b"a"}
_KIND_NAMES = {v: k for k, v in KINDS.items()}
_ENTRY = struct.Struct("<qq")
_U64 = struct.Struct("<Q")
_U64BE = struct.Struct(">Q")  # expiry index keys sort by time


class RevocationError(AuthzError):
    """The revocation set cannot be read or written."""

    code = "revocation_unavailable"


class RevocationFullError(RevocationError):
    """The revocation set holds its maximum number of live entries."""

    code = "revocation_set_full"


class RevocationQuotaError(RevocationFullError):
    """The caller holds its maximum share of the revocation set."""

    code = "revocation_quota_exceeded"


def entry_key(kind: str, value: str) -> bytes:
    return ENTRY_PREFIX + KINDS[kind] + hashlib.sha256(value.encode("utf-8")).digest()


def entry_expiry(kind: str, now: float, lifetime_s: int, leeway_s: int, token_exp: int | None = None,
                 ttl_s: int = 0) -> float:
    """When a new revocation stops mattering (0 = never). A token's: once it would have expired anyway,
    at its `exp` + leeway (named by its id alone, its `exp` is at most now + the longest token lifetime).
    A task's or an agent's: after `ttl_s` (0 = never), yet never before every token issued until now
    has expired, or such a token would be valid again when the entry lapses."""
    if kind == "token":
        return (now + lifetime_s if token_exp is None else token_exp) + leeway_s
    if not ttl_s:
        return 0
    return now + max(ttl_s, lifetime_s + leeway_s)


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
        raise RevocationQuotaError(f"`{name}` holds its maximum of {max_per_owner} revocation entries "
                                   "(tokens.max_revocations_per_caller); they come free as they lapse")
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
        suffix = key[len(EXPIRY_PREFIX) + _U64BE.size:]
        owner = txn.get(OWNER_PREFIX + suffix)
        if owner is not None:
            _add_held(txn, bytes(owner), -1)
        txn.delete(OWNER_PREFIX + suffix)
        txn.delete(ENTRY_PREFIX + suffix)
        txn.delete(key)
    txn.put(COUNT_KEY, _U64.pack(max(0, _u64(txn, COUNT_KEY) - len(lapsed))))


class Revocations:
    """One snapshot of the revocation set: value -> expires_at (0 = never) per kind."""

    __slots__ = ("generation", "tokens", "tasks", "agents")

    def __init__(self, generation: int, tokens: dict, tasks: dict, agents: dict):
        self.generation, self.tokens, self.tasks, self.agents = generation, tokens, tasks, agents

    @staticmethod
    def _live(table: dict, value, now: float) -> bool:
        exp = table.get(value)
        return exp is not None and (exp == 0 or exp > now)

    def token_revoked(self, jti: str, now: float) -> bool:
        return self._live(self.tokens, jti, now)

    def task_revoked(self, task: str, now: float) -> bool:
        return self._live(self.tasks, task, now)

    def agent_revoked(self, agent: str, now: float) -> bool:
        return self._live(self.agents, agent, now)

    def __len__(self):
        return len(self.tokens) + len(self.tasks) + len(self.agents)


EMPTY = Revocations(0, {}, {}, {})


class RevocationStore:
    """Reads and writes the revocation set of the index at `db` (opened lazily, shared with the engine)."""

    def __init__(self, db: str, clock=time.time):
        self.db = db
        self.clock = clock
        self._env = None
        self._snapshot = None
        self._lock = threading.Lock()

    def _environment(self):
        if self._env is None:
            try:
                self._env = open_env(self.db, create=False)
            except IndexUnavailableError as e:
                raise RevocationError(f"revocations unavailable: {e}") from None
        return self._env

    def close(self) -> None:
        if self._env is not None:
            release_env(self._env)
            self._env = None

    def current(self) -> Revocations:
        """The revocation set as of now: one read of the generation counter, the set re-read only on change."""
        env = self._environment()
        try:
            with env.begin() as txn:
                raw = txn.get(GEN_KEY)
                generation = _U64.unpack(raw)[0] if raw is not None and len(raw) == 8 else 0
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

    def revoke(self, kind: str, value: str, expires_at: float, max_entries: int, owner: str = "",
               max_per_owner: int = 0) -> int:
        """Add (or lengthen) one revocation charged to `owner`; `expires_at` 0 = never. Returns when the
        entry lapses (0 = never; in the past when it had lapsed already and nothing was stored).
        RevocationQuotaError / RevocationFullError when over `max_per_owner` (0 = none) / `max_entries`."""
        if kind not in KINDS:
            raise ValueError(kind)
        now = self.clock()
        env = self._environment()
        suffix = entry_key(kind, value)[len(ENTRY_PREFIX):]
        expires = 0 if not expires_at else int(expires_at) + 1
        who = _digest(owner)
        with self._lock:
            try:
                with env.begin(write=True) as txn:
                    if txn.get(COUNT_KEY) is None:
                        _index_unattributed(txn)
                    _sweep(txn, now)
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
                            raise RevocationFullError(f"the revocation set holds its maximum of {max_entries} "
                                                      "entries (tokens.max_revocations)")
                        txn.put(COUNT_KEY, _U64.pack(stored + 1))
                        new_expires = expires
                    txn.put(ENTRY_PREFIX + suffix, _ENTRY.pack(int(now), new_expires) + value.encode("utf-8"))
                    txn.put(OWNER_PREFIX + suffix, who)
                    if new_expires:
                        txn.put(EXPIRY_PREFIX + _U64BE.pack(new_expires) + suffix, b"")
                    txn.put(GEN_KEY, _U64.pack(_u64(txn, GEN_KEY) + 1))
            except lmdb.Error as e:
                raise RevocationError(f"cannot write revocations: {e}") from None
        return new_expires

    def held_by(self, owner: str) -> int:
        """How many entries are charged to `owner` (lapsed ones count until the next write sweeps them)."""
        with self._environment().begin() as txn:
            return _u64(txn, HELD_PREFIX + _digest(owner))

    def entries(self) -> list:
        """Every stored entry as (kind, value, revoked_at, expires_at), for tools and tests."""
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
