"""RevocationStore: revoked token ids, tasks and agents, kept in the index's LMDB environment for every worker.

Keys (own prefix; the policy generation keys `current`, `gen/...`, `crc/...` are never touched):
  rvk/gen                      u64 revocation-set generation, +1 per change
  rvk/e/<kind><sha256(value)>  <q revoked_at><q expires_at (0 = never)><value utf-8>;  kind: j (token id), t (task), a (agent)

A worker reads `rvk/gen` once per decision made with a token (one small read transaction)
and re-reads the whole set only when it changed, so a revocation is honoured by every
worker on its next decision. Entries past `expires_at` no longer apply and are pruned by
the next write.
"""
from __future__ import annotations

import hashlib
import struct
import threading
import time

import lmdb

from authz.compiler.writer import open_env, release_env
from authz.errors import AuthzError, IndexUnavailableError

GEN_KEY = b"rvk/gen"
ENTRY_PREFIX = b"rvk/e/"
KINDS = {"token": b"j", "task": b"t", "agent": b"a"}
_KIND_NAMES = {v: k for k, v in KINDS.items()}
_ENTRY = struct.Struct("<qq")
_U64 = struct.Struct("<Q")


class RevocationError(AuthzError):
    """The revocation set cannot be read or written."""

    code = "revocation_unavailable"


class RevocationFullError(RevocationError):
    """The revocation set holds its maximum number of live entries."""

    code = "revocation_set_full"


def entry_key(kind: str, value: str) -> bytes:
    return ENTRY_PREFIX + KINDS[kind] + hashlib.sha256(value.encode("utf-8")).digest()


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

    def revoke(self, kind: str, value: str, expires_at: float, max_entries: int) -> int:
        """Add (or extend) one revocation; `expires_at` 0 = never. Prunes expired entries.
        Returns the new revocation-set generation."""
        if kind not in KINDS:
            raise ValueError(kind)
        now = self.clock()
        env = self._environment()
        key = entry_key(kind, value)
        expires = 0 if not expires_at else int(expires_at) + 1
        with self._lock:
            try:
                with env.begin(write=True) as txn:
                    live, expired = 0, []
                    cursor = txn.cursor()
                    if cursor.set_range(ENTRY_PREFIX):
                        for k, v in cursor:
                            if not k.startswith(ENTRY_PREFIX):
                                break
                            e = _ENTRY.unpack_from(v)[1] if len(v) >= _ENTRY.size else 0
                            if e and e <= now:
                                expired.append(bytes(k))
                            else:
                                live += 1
                    for k in expired:
                        txn.delete(k)
                    old = txn.get(key)
                    if old is not None and len(old) >= _ENTRY.size:
                        old_revoked, old_exp = _ENTRY.unpack_from(old)
                        if old_exp and old_exp > now:  # extend, never shorten
                            expires = 0 if (old_exp == 0 or expires == 0) else max(expires, old_exp)
                        elif old_exp == 0:
                            expires = 0
                    elif live >= max_entries:
                        raise RevocationFullError(f"the revocation set holds its maximum of {max_entries} entries")
                    txn.put(key, _ENTRY.pack(int(now), expires) + value.encode("utf-8"))
                    raw = txn.get(GEN_KEY)
                    generation = (_U64.unpack(raw)[0] if raw is not None and len(raw) == 8 else 0) + 1
                    txn.put(GEN_KEY, _U64.pack(generation))
            except lmdb.Error as e:
                raise RevocationError(f"cannot write revocations: {e}") from None
        return generation

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
