"""LmdbStore: the embedded state store, an LMDB environment of its own in `data_dir/state`, shared by
every worker process of the host.

A Batch is one LMDB write transaction, held from `batch()` to commit: LMDB serializes writers across
processes, so read -> decide -> update is exact (a limit of N admits exactly N). Keep the decision
inside short: every other stateful decision of the host waits for it.

Databases (named, in one environment):
  meta       format, seq (last change-feed number), counts of tasks / agents / approvals
  tasks      task id -> task record (model.encode_task)        agents  agent id -> agent record
  approvals  approval id -> record (approvals.encode)           order   u64 BE requested_at µs + id -> ""
  grants     sha256 digest (32 bytes) + task id -> approval id (while its grant is live)
  feed       u64 BE seq -> the approval as it was after that change (the last feed_keep kept)
  due        u64 BE second + kind (t task, a agent, p approval) + name -> "": when each falls due.
             Entries are checked against their record when they fall due (a stale one is dropped).
"""
from __future__ import annotations

import os
import struct
import threading

import lmdb

from authz.state import _lmdb_call, model
from authz.state import approvals as A
from authz.state.config import StateConfig
from authz.state.errors import Full, InvalidArgument, NotFound, Unavailable
from authz.state.lmdb_env import mapped, open_env, release_env
from authz.state.store import Batch, Changes, Store

_U64 = struct.Struct(">Q")
_LAZY_SWEEP = 16  # due items a decision's batch applies before it starts (sweep() does the rest)
_CACHE_MAX = 4096  # decoded records kept per process (cleared when full)


def _count(txn, db, key: bytes) -> int:
    raw = txn.get(key, db=db)
    return _U64.unpack(raw)[0] if raw is not None and len(raw) == 8 else 0


def _second(at: float) -> int:
    """The whole second an item falls due at (rounded up: it is never applied early)."""
    return max(0, int(-(-at // 1)))


def _due_key(at: float, kind: bytes, name: str) -> bytes:
    return _U64.pack(_second(at)) + kind + name.encode("utf-8")


def _approval_due(approval: A.Approval, keep_s: int) -> float:
    """When the approval next needs the sweep: its expiry, its grant's expiry, or the end of its retention."""
    if approval.state == "pending":
        return approval.expires_at
    if approval.state == "approved" and approval.kind == "call":
        return approval.grant_expires_at
    return approval.settled_at() + keep_s


class LmdbStore(Store):
    """The embedded Store. Opened lazily (and again after a failure), so a damaged or missing store
    makes stateful decisions fail closed (Unavailable) without stopping the server."""

    CACHE_MAX = _CACHE_MAX

    def __init__(self, config: StateConfig):
        super().__init__(config)
        self._env = None
        self._dbs = None
        self._pid = None
        self._opening = threading.Lock()
        # (b"t" | b"a", id) -> (stored bytes, decoded state): a record read again unchanged (the same
        # bytes) is not decoded again. Touched only inside write transactions (one at a time).
        self._cache = {}
        self._checked = {}  # (resource, labels) -> validated (tool, labels), for decide_call (bounded there)
        self._revocations = None

    @property
    def revocations(self):
        if self._revocations is None:
            from authz.state.lmdb_revocations import LmdbRevocations, index_revocations
            cfg = self.config
            if cfg.index_path:
                self._revocations = index_revocations(cfg.index_path)
            else:
                self._revocations = LmdbRevocations(lambda: open_env(cfg.path, cfg.map_size, cfg.durable)[0],
                                                    release_env, cfg.path)
        return self._revocations

    def _environment(self):
        env = self._env
        if env is not None and self._pid == os.getpid():
            return env, self._dbs
        with self._opening:
            if self._env is not None and self._pid != os.getpid():
                self._env = None  # inherited across fork: LMDB forbids using (or closing) it here
            if self._env is None:
                cfg = self.config
                self._env, self._dbs = open_env(cfg.path, cfg.map_size, cfg.durable)
                self._pid = os.getpid()
            return self._env, self._dbs

    def _failed(self, err: lmdb.Error, doing: str) -> Unavailable:
        if isinstance(err, lmdb.PanicError) and self._env is not None:
            release_env(self._env, broken=True)
            self._env = None
        return mapped(err, self.config.path, doing)

    def close(self) -> None:
        if self._revocations is not None:
            self._revocations.close()
            self._revocations = None
        if self._env is not None and self._pid == os.getpid():
            release_env(self._env)
        self._env = None

    def _begin(self, now: float) -> "LmdbBatch":
        env, dbs = self._environment()
        batch = LmdbBatch(self, dbs, now)
        try:
            batch.txn = env.begin(write=True)
        except lmdb.Error as err:
            raise self._failed(err, "write") from None
        return batch

    def batch(self, now: float) -> "LmdbBatch":
        batch = self._begin(now)
        try:
            batch.sweep(_LAZY_SWEEP)
        except BaseException:
            batch.abort()
            raise
        return batch

    # Store.decide_call: the common call in one write transaction, compiled (authz/state/_lmdb_call.pyx).
    decide_call = _lmdb_call.decide_call

    def sweep(self, now: float, limit: int = 1000) -> int:
        with self._begin(now) as batch:
            return batch.sweep(limit)

    def sizes(self) -> dict:
        def read(txn, dbs):
            meta = dbs["meta"]
            return {"tasks": _count(txn, meta, b"tasks"), "agents": _count(txn, meta, b"agents"),
                    "approvals": _count(txn, meta, b"approvals"), "changes": _count(txn, meta, b"seq")}
        return self._read("read", read)

    def _read(self, doing: str, fn):
        env, dbs = self._environment()
        try:
            with env.begin() as txn:
                return fn(txn, dbs)
        except lmdb.Error as err:
            raise self._failed(err, doing) from None

    def get_approval(self, approval_id: str, now: float) -> A.Approval:
        A.check_id(approval_id)
        now = model.check_now(now)

        def get(txn, dbs):
            raw = txn.get(approval_id.encode(), db=dbs["approvals"])
            if raw is None:
                raise NotFound(f"no approval `{approval_id}`")
            return A.decode(raw, approval_id).effective(now)
        return self._read("read", get)

    def list_approvals(self, now: float, state=None, queue=None, task=None, limit: int = 100) -> list:
        self._check_filters(state, queue, task, limit)
        now = model.check_now(now)

        def scan(txn, dbs):
            out = []
            cursor = txn.cursor(db=dbs["order"])
            if not cursor.last():
                return out
            for key in cursor.iterprev(values=False):
                approval_id = bytes(key[8:]).decode()
                raw = txn.get(key[8:], db=dbs["approvals"])
                if raw is None:
                    continue
                a = A.decode(raw, approval_id).effective(now)
                if (state is None or a.state == state) and (queue is None or a.queue == queue) \
                        and (task is None or a.task == task):
                    out.append(a)
                    if len(out) == limit:
                        break
            return out
        return self._read("read", scan)

    def changes_since(self, seq: int, limit: int = 100) -> Changes:
        if type(seq) is not int or not 0 <= seq < 1 << 63:
            raise InvalidArgument("seq must be a non-negative Long")
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be an integer from 1 to 1000")

        def read(txn, dbs):
            last = _count(txn, dbs["meta"], b"seq")
            cursor = txn.cursor(db=dbs["feed"])
            oldest = _U64.unpack(cursor.key())[0] if cursor.first() else last + 1
            items = []
            if seq < last and cursor.set_range(_U64.pack(seq + 1)):
                for key, raw in cursor:
                    n = _U64.unpack(key)[0]
                    items.append((n, A.decode(raw)))
                    if len(items) == limit:
                        break
            return Changes(items, items[-1][0] if items else last, seq < oldest - 1 or seq > last)
        return self._read("read", read)

    def task_status(self, task_id: str, now: float) -> tuple:
        """Store.task_status in a read transaction: no write lock taken."""
        model.check_text(task_id, "task id", self.config.max_id_bytes)
        now = model.check_now(now)

        def read(txn, dbs):
            raw = txn.get(task_id.encode("utf-8"), db=dbs["tasks"])
            task = None if raw is None else model.decode_task(task_id, raw)
            approval = None
            if task is not None and task.suspended_by:
                found = txn.get(task.suspended_by.encode(), db=dbs["approvals"])
                approval = None if found is None else A.decode(found, task.suspended_by)
            return self._status_of(task, approval, now)
        return self._read("read", read)

    def task_view(self, task_id: str, now: float) -> dict | None:
        model.check_text(task_id, "task id", self.config.max_id_bytes)
        now = model.check_now(now)

        def read(txn, dbs):
            raw = txn.get(task_id.encode("utf-8"), db=dbs["tasks"])
            return None if raw is None else model.decode_task(task_id, raw).view(now)
        return self._read("read", read)


class LmdbBatch(Batch):
    """A Batch held as one LMDB write transaction."""

    def __init__(self, store: LmdbStore, dbs: dict, now: float):
        super().__init__(store.config, now)
        self.store, self.dbs, self.txn = store, dbs, None
        self._tasks, self._agents, self._dirty, self._new = {}, {}, {}, set()

    def _fail(self, err: lmdb.Error, doing: str = "write"):
        return self.store._failed(err, doing)

    # --- primitives ------------------------------------------------------------------------------
    def _task(self, task_id: str) -> model.TaskState:
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = self._load(b"t", task_id, self.dbs["tasks"], model.TaskState,
                                                     model.decode_task)
        return task

    def _agent(self, agent_id: str) -> model.AgentState:
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = self._load(b"a", agent_id, self.dbs["agents"], model.AgentState,
                                                        model.decode_agent)
        return agent

    def _load(self, kind: bytes, name: str, db, new, decode):
        try:
            raw = self.txn.get(name.encode("utf-8"), db=db)
        except lmdb.Error as err:
            raise self._fail(err, "read") from None
        if raw is None:
            self._new.add((kind, name))
            return new(name, self.now)
        cached = self.store._cache.get((kind, name))
        if cached is not None and cached[0] == raw:
            return cached[1]
        return decode(name, raw)

    def _changed(self, state) -> None:
        self._dirty[(b"t" if type(state) is model.TaskState else b"a", state.id)] = state

    def _approval(self, approval_id: str):
        try:
            raw = self.txn.get(approval_id.encode(), db=self.dbs["approvals"])
        except lmdb.Error as err:
            raise self._fail(err, "read") from None
        return None if raw is None else A.decode(raw, approval_id)

    def _grant(self, task_id: str, digest: str):
        try:
            raw = self.txn.get(bytes.fromhex(digest) + task_id.encode("utf-8"), db=self.dbs["grants"])
        except lmdb.Error as err:
            raise self._fail(err, "read") from None
        return None if raw is None else bytes(raw).decode()

    def _save_approval(self, approval: A.Approval, created: bool = False) -> None:
        txn, dbs, cfg = self.txn, self.dbs, self.config
        key = approval.id.encode()
        raw = A.encode(approval)
        try:
            if created:
                self._bump(b"approvals", 1, cfg.max_approvals, "approvals")
                txn.put(_U64.pack(int(approval.requested_at * 1e6)) + key, b"", db=dbs["order"])
            txn.put(key, raw, db=dbs["approvals"])
            grant = bytes.fromhex(approval.digest) + approval.task.encode("utf-8")
            if approval.state == "approved" and approval.kind == "call":
                txn.put(grant, key, db=dbs["grants"])
            else:
                txn.delete(grant, db=dbs["grants"])
            txn.put(_due_key(_approval_due(approval, cfg.approval_keep_s), b"p", approval.id), b"", db=dbs["due"])
            seq = _count(txn, dbs["meta"], b"seq") + 1
            txn.put(b"seq", _U64.pack(seq), db=dbs["meta"])
            txn.put(_U64.pack(seq), raw, db=dbs["feed"])
            if seq > cfg.feed_keep:
                txn.delete(_U64.pack(seq - cfg.feed_keep), db=dbs["feed"])
        except lmdb.Error as err:
            raise self._fail(err) from None

    def _bump(self, counter: bytes, delta: int, most: int = 0, what: str = "") -> None:
        meta = self.dbs["meta"]
        n = _count(self.txn, meta, counter) + delta
        if delta > 0 and n > most:
            raise Full(f"the state store holds its maximum of {most} {what}")
        self.txn.put(counter, _U64.pack(max(0, n)), db=meta)

    def _commit(self) -> None:
        txn, dbs, cfg = self.txn, self.dbs, self.config
        written = []
        try:
            for (kind, name), state in self._dirty.items():
                if kind == b"t":
                    due = model.due_after(state.last, cfg.task_ttl_s)
                    db, counter, most, encode = dbs["tasks"], b"tasks", cfg.max_tasks, model.encode_task
                else:
                    due = model.due_after(state.last, model.AGENT_TTL_S)
                    db, counter, most, encode = dbs["agents"], b"agents", cfg.max_agents, model.encode_agent
                if (kind, name) in self._new:
                    self._bump(counter, 1, most, counter.decode())
                if state.due != due:
                    if state.due:
                        txn.delete(_due_key(state.due, kind, name), db=dbs["due"])
                    txn.put(_due_key(due, kind, name), b"", db=dbs["due"])
                    state.due = due
                raw = encode(state)
                txn.put(name.encode("utf-8"), raw, db=db)
                written.append(((kind, name), raw, state))
            txn.commit()
        except lmdb.Error as err:
            self._abort()
            raise self._fail(err) from None
        except BaseException:
            self._abort()
            raise
        cache = self.store._cache
        if len(cache) + len(written) > _CACHE_MAX:
            cache.clear()
        for key, raw, state in written:
            cache[key] = (raw, state)

    def _abort(self) -> None:
        if self.txn is not None:
            self.txn.abort()
        cache = self.store._cache  # states of this batch may have changed in memory: not as stored
        for name in self._tasks:
            cache.pop((b"t", name), None)
        for name in self._agents:
            cache.pop((b"a", name), None)

    # --- sweep -----------------------------------------------------------------------------------
    def sweep(self, limit: int) -> int:
        """Apply at most `limit` due items (see LmdbStore.sweep)."""
        due_db = self.dbs["due"]
        now = self.now
        try:
            cursor = self.txn.cursor(db=due_db)
            if not cursor.first() or _U64.unpack_from(cursor.key())[0] > now:
                return 0
            entries = []
            for key in cursor.iternext(values=False):
                if _U64.unpack_from(key)[0] > now or len(entries) == limit:
                    break
                entries.append(bytes(key))
            for key in entries:
                self.txn.delete(key, db=due_db)
                self._fall_due(_U64.unpack_from(key)[0], key[8:9], key[9:].decode("utf-8"))
        except lmdb.Error as err:
            raise self._fail(err) from None
        return len(entries)

    def _fall_due(self, at: int, kind: bytes, name: str) -> None:
        """Apply one due entry (its key already deleted), unless it is stale (its record moved on).
        LMDB errors are mapped by sweep()."""
        if kind == b"p":
            approval = self._approval(name)
            if approval is None or _second(_approval_due(approval, self.config.approval_keep_s)) != at:
                return
            if approval.state == "pending":
                self._decide(approval, "expire")
            elif approval.state == "approved" and approval.kind == "call":
                self._lapse(approval)
            else:
                self._drop_approval(approval)
            return
        state = self._task(name) if kind == b"t" else self._agent(name)
        if (kind, name) in self._new or state.due != at:
            return
        if kind == b"t" and state.suspended_by:
            state.last = max(state.last, self.now)  # kept while its approval is pending
            self._changed(state)
            return
        self.txn.delete(name.encode("utf-8"), db=self.dbs["tasks" if kind == b"t" else "agents"])
        self._bump(b"tasks" if kind == b"t" else b"agents", -1)
        (self._tasks if kind == b"t" else self._agents).pop(name)
        self._dirty.pop((kind, name), None)
        self.store._cache.pop((kind, name), None)

    def _drop_approval(self, approval: A.Approval) -> None:
        """Its retention is over: forget it (its changes stay in the feed until pushed out)."""
        key = approval.id.encode()
        self.txn.delete(key, db=self.dbs["approvals"])
        self.txn.delete(_U64.pack(int(approval.requested_at * 1e6)) + key, db=self.dbs["order"])
        self._bump(b"approvals", -1)

    def _lapse(self, approval: A.Approval) -> None:
        """An approved call's grant expired unused."""
        approval.expire(self.now)
        self._save_approval(approval)
