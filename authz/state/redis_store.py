"""RedisStore: the Store shared by every node, on one Redis (docs/scale-out.md).

A decision is one or two round trips, whatever it decides:
  load    `batch.task(task, agent)` reads the task and the agent records with their versions in one
          LOAD script, which sends a record only when its version differs from the copy this process
          holds (a pending approval suspending the task adds one read, only then). Store.transact's
          first attempt skips it when the process holds both records and they did not conflict in the
          last HOT_S: it decides on its copies, and the commit validates them;
  commit  one EVALSHA of COMMIT (below): it checks that every record read still has the version read,
          then writes every change, all inside Redis's single-threaded script execution (atomic across
          nodes). A moved version -> Conflict, nothing written, and Store.transact decides again on
          fresh state (`conflicts` counts them, `exhausted` those that gave up).
A batch of calls (BatchCheck) shares the round trips. Read-only batches (the tokens layer asking
whether a task is suspended) always load, and never commit.

Keys (all under `key_prefix` P; records are hashes {v: version, d: the model's/approvals' encoding}):
  P t:<task>   P a:<agent>   P p:<approval id>
  P ver        the version counter: each write takes the next number; a new counter starts at the time
               in µs, so versions never repeat, not even after Redis lost its data (a worker's copy
               of a record can then never pass for current)
  P po         zset approval id by requested_at (List order; bounds max_approvals)
  P pd         zset approval id by when it falls due (expiry of a pending one, lapse of a grant)
  P g:<digest hex>:<task>   the approval id of a live grant (expires with it)
  P seq, P feed             the approval change feed: zset "<seq>|<approval>" by seq (last feed_keep)
  P rv:*       the revocation set (redis_revocations.py);  P keys:*  the signing keys (tokens/shared_keys.py)
  P ti, P ai   zsets task / agent id by when it falls idle (`due`, as LMDB's): sizes, max_tasks/max_agents,
               and the sweep, which forgets idle records on the store's clock
Retention is also Redis's own expiry (a record outlives its `due` by a minute; a settled approval
approval_keep_s after it stopped mattering), so a deployment whose sweeps stop does not grow. Redis's
`maxmemory` with `maxmemory-policy noeviction` bounds the whole; a write it refuses is Full.
"""
from __future__ import annotations

import random
import time

from authz.state import approvals as A
from authz.state import model
from authz.state.config import StateConfig
from authz.state.errors import Conflict, Full, InvalidArgument, NotFound, Unavailable
from authz.state.redis_link import RedisLink
from authz.state.resp import RespError
from authz.state.store import Batch, Changes, Store

# KEYS[1] version counter; ARGV: n_checks, then checks (kind, key index, value), then writes.
#  checks  v <i> <version>   KEYS[i]'s version is still <version> ("0": it did not exist)
#          c <i> <most>      zset KEYS[i] holds fewer than <most> members (a new approval fits)
#  writes  h <i> <data> <ttl ms>   store a record (new version); ttl 0: no expiry, -1: the expiry it has
#          s <i> <value> <ttl ms>  set a string     x <i>   delete a key
#          z <i> <score> <member>  zadd             r <i> <member>   zrem
#          f <feed i> <seq i> <raw> <keep>          append to the change feed
COMMIT = r"""
local n = tonumber(ARGV[1])
local i = 2
for _ = 1, n do
  local kind, key, want = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2]
  i = i + 3
  if kind == 'v' then
    local have = redis.call('HGET', key, 'v') or '0'
    if have ~= want then return 'conflict' end
  elseif redis.call('ZCARD', key) >= tonumber(want) then
    return 'full'
  end
end
local ver = nil
while i <= #ARGV do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if op == 'h' then
    if not ver then
      ver = redis.call('INCR', KEYS[1])
      if ver == 1 then  -- a new (or lost) counter starts at the time in µs: versions never come back
        local t = redis.call('TIME')
        ver = redis.call('INCRBY', KEYS[1], tonumber(t[1]) * 1000000 + tonumber(t[2]))
      end
    end
    redis.call('HSET', key, 'v', ver, 'd', ARGV[i + 2])
    local ttl = tonumber(ARGV[i + 3])
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) elseif ttl == 0 then redis.call('PERSIST', key) end
    i = i + 4
  elseif op == 's' then
    redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[i + 3])
    i = i + 4
  elseif op == 'x' then
    redis.call('DEL', key)
    i = i + 2
  elseif op == 'z' then
    redis.call('ZADD', key, ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'r' then
    redis.call('ZREM', key, ARGV[i + 2])
    i = i + 3
  else
    local seq = redis.call('INCR', KEYS[tonumber(ARGV[i + 2])])
    redis.call('ZADD', key, seq, seq .. '|' .. ARGV[i + 3])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', seq - tonumber(ARGV[i + 4]))
    i = i + 5
  end
end
return ver or 0
"""
# KEYS: records; ARGV: the version this process holds of each ("" none). Per record {version} when it
# still has that version (the process's decoded copy is current), else {version, data}.
LOAD = r"""
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HGET', key, 'v') or '0'
  if v == ARGV[i] then out[i] = {v} else out[i] = {v, redis.call('HGET', key, 'd') or false} end
end
return out
"""
_SCRIPTS = {"commit": COMMIT, "load": LOAD}
ATTEMPTS = 16
CONFLICT_PAUSE_S = 0.0005
HOT_S = 1.0  # after a conflict on a record, decisions load it before deciding for this long
_CACHE_MAX = 4096
_MARGIN_S = 60  # records outlive what they are needed for by this much (clock differences between nodes)


def approval_due(approval: A.Approval) -> float | None:
    """When the sweep must look at the approval again (expiry while pending, its grant's lapse), or None."""
    if approval.state == "pending":
        return approval.expires_at
    if approval.state == "approved" and approval.kind == "call":
        return approval.grant_expires_at
    return None


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore(Store):
    """The shared Store (see the module docstring). Connected lazily; every failure is Unavailable."""

    def __init__(self, config: StateConfig, link: RedisLink | None = None):
        super().__init__(config)
        self.settings = config.redis
        self.link = link or RedisLink(self.settings)
        self.prefix = self.settings.key_prefix.encode()
        self._shas = {}
        # record key -> (version, decoded TaskState / AgentState) as last read or written by this process:
        # a record whose version did not move is neither sent again nor decoded again (LOAD)
        self._cache = {}
        self._keys = {}  # key() parts -> the key
        self._hot = {}  # record key -> time.monotonic() until which decisions load it first (it conflicted)
        self._revocations = None
        self._fanout = None
        self.conflicts = 0  # commits refused because the state moved (then decided again)
        self.exhausted = 0  # decisions that gave up after ATTEMPTS conflicts (denied state_unavailable)
        self.commits = 0

    @property
    def fanout(self):
        """The process's listener for changes made on other nodes (fanout.py), started on first use."""
        if self._fanout is None:
            from authz.state.fanout import Fanout
            self._fanout = Fanout(self.link, self.prefix + b"events")
        return self._fanout

    def key(self, *parts) -> bytes:
        """The Redis key of `parts` under this deployment's prefix (remembered: a decision names the same
        few keys again and again)."""
        key = self._keys.get(parts)
        if key is None:
            key = self.prefix + b"".join(p if type(p) is bytes else p.encode("utf-8") for p in parts)
            if len(self._keys) >= _CACHE_MAX:
                self._keys.clear()
            self._keys[parts] = key
        return key

    @property
    def revocations(self):
        if self._revocations is None:
            from authz.state.redis_revocations import RedisRevocations
            self._revocations = RedisRevocations(self.link, self.prefix, self.fanout)
        return self._revocations

    def close(self) -> None:
        if self._fanout is not None:
            self._fanout.stop()
            self._fanout = None
        self._revocations = None
        self.link.close()

    # --- decisions -------------------------------------------------------------------------------
    def batch(self, now: float) -> "RedisBatch":
        return RedisBatch(self, now)

    def transact(self, now: float, work, attempts: int = ATTEMPTS):
        """As Store.transact, counting conflicts. The first attempt decides on this process's copies of
        the records when it holds them (one round trip: the commit checks their versions); after a
        conflict the records are loaded first for HOT_S, and a random pause of up to CONFLICT_PAUSE_S x
        the attempts so far lets the writers of a hot task fall out of step."""
        for attempt in range(attempts):
            batch = RedisBatch(self, now, optimistic=attempt == 0)
            try:
                with batch:
                    result = work(batch)
                return result
            except Conflict:
                self.conflicts += 1
                if batch.optimistic:
                    deadline = time.monotonic() + HOT_S
                    for key in batch.assumed:
                        self._hot[key] = deadline
                    if len(self._hot) > _CACHE_MAX:
                        self._hot.clear()
                time.sleep(random.random() * CONFLICT_PAUSE_S * (attempt + 1))
        self.exhausted += 1
        raise Unavailable(f"the state kept changing during {attempts} attempts")

    def script(self, name: str, keys: list, args: list):
        """EVALSHA of COMMIT or LOAD on the decision path's connection (loaded again after a Redis restart)."""
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = self.link.fast([("SCRIPT", "LOAD", _SCRIPTS[name])])[0]
        try:
            return self.link.fast([("EVALSHA", sha, len(keys), *keys, *args)])[0]
        except RespError:  # NOSCRIPT: Redis restarted (scripts are not persisted)
            sha = self._shas[name] = self.link.fast([("SCRIPT", "LOAD", _SCRIPTS[name])])[0]
            return self.link.fast([("EVALSHA", sha, len(keys), *keys, *args)])[0]

    def run_commit(self, keys: list, args: list) -> bytes:
        """Run COMMIT; the version its records were written with (Conflict, Full when refused)."""
        answer = self.script("commit", keys, args)
        if answer == b"conflict":
            raise Conflict("the task state changed since it was read")
        if answer == b"full":
            raise Full(f"the state store holds its maximum of {self.config.max_approvals} approvals")
        self.commits += 1
        return str(answer).encode()

    # --- reads -----------------------------------------------------------------------------------
    def get_approval(self, approval_id: str, now: float) -> A.Approval:
        A.check_id(approval_id)
        now = model.check_now(now)
        raw = self.link.call(lambda c: c.hget(self.key("p:", approval_id), "d"))
        if raw is None:
            raise NotFound(f"no approval `{approval_id}`")
        return A.decode(raw, approval_id).effective(now)

    def list_approvals(self, now: float, state=None, queue=None, task=None, limit: int = 100) -> list:
        self._check_filters(state, queue, task, limit)
        now = model.check_now(now)
        out, start, page = [], 0, 200
        while len(out) < limit:
            ids = self.link.call(lambda c: c.zrevrange(self.key("po"), start, start + page - 1))
            if not ids:
                break

            def fetch(c):
                pipe = c.pipeline(transaction=False)
                for approval_id in ids:
                    pipe.hget(self.key(b"p:", approval_id), "d")
                return pipe.execute()
            for approval_id, raw in zip(ids, self.link.call(fetch)):
                if raw is None:
                    continue  # its retention ended (the sweep drops it from the order)
                a = A.decode(raw, approval_id.decode()).effective(now)
                if (state is None or a.state == state) and (queue is None or a.queue == queue) \
                        and (task is None or a.task == task):
                    out.append(a)
                    if len(out) == limit:
                        break
            start += page
        return out

    def changes_since(self, seq: int, limit: int = 100) -> Changes:
        if type(seq) is not int or not 0 <= seq < 1 << 63:
            raise InvalidArgument("seq must be a non-negative Long")
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be an integer from 1 to 1000")

        def read(c):
            pipe = c.pipeline(transaction=False)
            pipe.get(self.key("seq"))
            pipe.zrange(self.key("feed"), 0, 0, withscores=True)
            pipe.zrangebyscore(self.key("feed"), f"({seq}", "+inf", start=0, num=limit, withscores=True)
            return pipe.execute()
        last_raw, first, rows = self.link.call(read)
        last = int(last_raw or 0)
        oldest = int(first[0][1]) if first else last + 1
        items = [(int(score), A.decode(member.split(b"|", 1)[1])) for member, score in rows]
        return Changes(items, items[-1][0] if items else last, seq < oldest - 1 or seq > last)

    def task_view(self, task_id: str, now: float) -> dict | None:
        model.check_text(task_id, "task id", self.config.max_id_bytes)
        now = model.check_now(now)
        raw = self.link.call(lambda c: c.hget(self.key("t:", task_id), "d"))
        return None if raw is None else model.decode_task(task_id, raw).view(now)

    def sizes(self) -> dict:
        def read(c):
            pipe = c.pipeline(transaction=False)
            pipe.zcard(self.key("ti"))
            pipe.zcard(self.key("ai"))
            pipe.zcard(self.key("po"))
            pipe.get(self.key("seq"))
            return pipe.execute()
        tasks, agents, approvals, seq = self.link.call(read)
        return {"tasks": int(tasks), "agents": int(agents), "approvals": int(approvals), "changes": int(seq or 0)}

    # --- upkeep ----------------------------------------------------------------------------------
    def sweep(self, now: float, limit: int = 1000) -> int:
        now = model.check_now(now)
        due = self.link.call(lambda c: c.zrangebyscore(self.key("pd"), "-inf", now, start=0, num=limit))
        done = 0
        for raw_id in due:
            approval_id = raw_id.decode()

            def apply(batch, approval_id=approval_id):
                return batch.fall_due(approval_id)
            done += self.transact(now, apply)
        for kind in ("t", "a"):
            names = self.link.call(lambda c, kind=kind: c.zrangebyscore(self.key(kind + "i"), "-inf", now,
                                                                         start=0, num=max(0, limit - done)))
            for raw_name in names:
                done += self.transact(now, lambda batch, n=raw_name.decode("utf-8"), k=kind: batch.forget_idle(k, n))
        self._trim_order(now)
        return done

    def _trim_order(self, now: float) -> None:
        """Drop from the List order the approvals whose retention has ended (their records expired)."""
        cfg = self.config
        horizon = now - cfg.approval_ttl_s - cfg.grant_ttl_s - cfg.approval_keep_s - 2 * _MARGIN_S
        old = self.link.call(lambda c: c.zrangebyscore(self.key("po"), "-inf", horizon, start=0, num=1000))
        if not old:
            return

        def trim(c):
            pipe = c.pipeline(transaction=False)
            for approval_id in old:
                pipe.exists(self.key(b"p:", approval_id))
            gone = [a for a, alive in zip(old, pipe.execute()) if not alive]
            if gone:
                c.zrem(self.key("po"), *gone)
        self.link.call(trim)


class RedisBatch(Batch):
    """Reads (with versions) now, writes at commit in one atomic script (see the module docstring)."""

    PREFETCHES = True

    def __init__(self, store: RedisStore, now: float, optimistic: bool = False):
        super().__init__(store.config, now)
        self.store = store
        # optimistic (Store.transact's first attempt, which always commits): decide on the process's copies
        # of the records without loading them; the commit's version check validates them (`assumed`)
        self.optimistic, self.assumed = optimistic, []
        self._tasks, self._agents, self._approvals = {}, {}, {}
        self._versions = {}      # record key -> version read (b"0": absent)
        self._dirty = {}         # record key -> TaskState / AgentState to write
        self._approval_writes = {}  # approval id -> (Approval, created)
        self._grants = {}        # grant key -> approval id or None (read in this batch)
        self._forgotten = []     # record keys the sweep deletes
        self._drop_due = set()   # approval ids the sweep takes off the due index

    # --- loading ---------------------------------------------------------------------------------
    def task(self, task_id: str, agent_id: str):
        if (type(task_id) is str and type(agent_id) is str and task_id not in self._tasks
                and (task_id, agent_id) not in self._handles):
            model.check_text(task_id, "task id", self.config.max_id_bytes)
            model.check_text(agent_id, "agent id", self.config.max_id_bytes)
            wanted = [("t", task_id)] + ([("a", agent_id)] if agent_id not in self._agents else [])
            if not (self.optimistic and self._assume(wanted)):
                self._load(wanted)
        return super().task(task_id, agent_id)

    def prefetch(self, pairs) -> None:
        """Read every task and agent of `pairs` not read yet in one LOAD (the optimistic first attempt
        takes the process's copies of those it holds)."""
        wanted, seen = [], set()
        for task_id, agent_id in pairs:
            for kind, name, have in (("t", task_id, self._tasks), ("a", agent_id, self._agents)):
                if type(name) is str and name not in have and (kind, name) not in seen:
                    seen.add((kind, name))
                    try:
                        model.check_text(name, "id", self.config.max_id_bytes)
                    except InvalidArgument:
                        continue  # task() refuses it, with its error
                    wanted.append((kind, name))
        if self.optimistic:
            wanted = [w for w in wanted if not self._assume([w])]
        if wanted:
            self._load(wanted)

    def _assume(self, wanted) -> bool:
        """Take the process's copies of these records as current (the commit checks it), unless one is
        missing or conflicted lately; False: load them."""
        store = self.store
        cache, hot = store._cache, store._hot
        keys = [store.key(kind + ":", name) for kind, name in wanted]
        held = [cache.get(key) for key in keys]
        if None in held or (hot and any(hot.get(key, 0) > time.monotonic() for key in keys)):
            return False
        for (kind, name), key, (version, state) in zip(wanted, keys, held):
            self._versions[key] = version
            (self._tasks if kind == "t" else self._agents)[name] = state
        self.assumed += keys
        return True

    def _load(self, wanted) -> None:
        """Read records [(kind, id)] in one pipeline, keeping their versions."""
        store = self.store
        keys = [store.key(kind + ":", name) for kind, name in wanted]

        cache = store._cache
        held = [cache.get(key) for key in keys]
        replies = store.script("load", keys, [b"" if h is None else h[0] for h in held])
        for (kind, name), key, reply, h in zip(wanted, keys, replies, held):
            version = reply[0]
            self._versions[key] = version
            if len(reply) == 1 and h is not None:
                state = h[1]  # unchanged since this process last read or wrote it
            else:
                raw = reply[1] if len(reply) > 1 else None
                if kind == "p":
                    self._approvals[name] = None if raw is None else A.decode(raw, name)
                    continue
                if kind == "t":
                    state = model.TaskState(name, self.now) if raw is None else model.decode_task(name, raw)
                else:
                    state = model.AgentState(name, self.now) if raw is None else model.decode_agent(name, raw)
                if raw is not None:
                    if len(cache) >= _CACHE_MAX:
                        cache.clear()
                    cache[key] = (version, state)
            (self._tasks if kind == "t" else self._agents)[name] = state

    def _task(self, task_id: str) -> model.TaskState:
        if task_id not in self._tasks:
            self._load([("t", task_id)])
        return self._tasks[task_id]

    def _agent(self, agent_id: str) -> model.AgentState:
        if agent_id not in self._agents:
            self._load([("a", agent_id)])
        return self._agents[agent_id]

    def _changed(self, state) -> None:
        kind = "t:" if type(state) is model.TaskState else "a:"
        self._dirty[self.store.key(kind, state.id)] = state

    def _approval(self, approval_id: str):
        if approval_id not in self._approvals:
            self._load([("p", approval_id)])
        return self._approvals[approval_id]

    def _save_approval(self, approval: A.Approval, created: bool = False) -> None:
        self._approvals[approval.id] = approval
        was = self._approval_writes.get(approval.id)
        self._approval_writes[approval.id] = (approval, created or (was is not None and was[1]))

    def _grant_key(self, task_id: str, digest: str) -> bytes:
        return self.store.key("g:", digest, ":", task_id)

    def _grant(self, task_id: str, digest: str):
        key = self._grant_key(task_id, digest)
        if key not in self._grants:
            raw = self.store.link.call(lambda c: c.get(key))
            self._grants[key] = None if raw is None else raw.decode()
        approval_id = self._grants[key]
        if approval_id is not None and approval_id not in self._approvals:
            self._approval(approval_id)  # read with its version: a grant used twice conflicts
        return approval_id

    # --- sweep -----------------------------------------------------------------------------------
    def fall_due(self, approval_id: str) -> int:
        """Apply the approval's due item (expire it, or lapse its grant); 1 if it did something."""
        approval = self._approval(approval_id)
        if approval is None:
            self._approval_writes.pop(approval_id, None)
            self._drop_due.add(approval_id)
            return 0
        due = approval_due(approval)
        if due is None or due > self.now:
            if due is None:
                self._drop_due.add(approval_id)
            return 0
        if approval.state == "pending":
            self._decide(approval, "expire")
        else:
            approval.expire(self.now)
            self._save_approval(approval)
        return 1

    def forget_idle(self, kind: str, name: str) -> int:
        """Delete an idle task ("t") or agent ("a") whose time has come (its `due` passed), unless a pending
        approval keeps the task; 1 if it did something."""
        state = self._task(name) if kind == "t" else self._agent(name)
        key = self.store.key(kind + ":", name)
        if self._versions.get(key) == b"0":  # gone already: drop its index entry
            self._forgotten.append(key)
            return 0
        if state.due > self.now:
            return 0
        if kind == "t" and state.suspended_by:
            state.last = max(state.last, self.now)  # kept while its approval is pending
            self._changed(state)
            return 1
        self._forgotten.append(key)
        return 1

    # --- commit ----------------------------------------------------------------------------------
    def _commit(self) -> None:
        store, cfg, now = self.store, self.config, self.now
        drop = self._drop_due
        if not self._dirty and not self._approval_writes and not drop and not self._forgotten:
            self._abort()  # read only: nothing to write (and what was read may have changed in memory)
            return
        keys = [store.key("ver")]
        index = {}

        def ref(key: bytes) -> str:
            i = index.get(key)
            if i is None:
                keys.append(key)
                i = index[key] = len(keys)
            return str(i)
        checks, writes = [], []
        for key, version in self._versions.items():
            checks += ["v", ref(key), version]
        for approval, created in self._approval_writes.values():
            if created:
                checks += ["c", ref(store.key("po")), str(cfg.max_approvals)]
                break
        for key, state in self._dirty.items():
            task = type(state) is model.TaskState
            ttl = cfg.task_ttl_s if task else model.AGENT_TTL_S
            idle = store.key("ti" if task else "ai")
            if self._versions.get(key) == b"0":  # a new record: within max_tasks / max_agents
                checks += ["c", ref(idle), str(cfg.max_tasks if task else cfg.max_agents)]
            due = model.due_after(state.last, ttl)
            if due == state.due:  # the common case: its expiry and its place in the idle index stand
                writes += ["h", ref(key), model.encode_task(state) if task else model.encode_agent(state), "-1"]
                continue
            state.due = due
            raw = model.encode_task(state) if task else model.encode_agent(state)
            # Redis forgets it on its own (real time); the sweep, on the store's clock (`due`, indexed)
            writes += ["h", ref(key), raw, str(_ms(max(due - now, 0) + _MARGIN_S)), "z", ref(idle), str(due), state.id]
        for key in self._forgotten:
            idle = store.key("ti" if key.startswith(store.key("t:")) else "ai")
            writes += ["x", ref(key), "r", ref(idle), key[len(store.prefix) + 2:]]
        for approval, created in self._approval_writes.values():
            raw = A.encode(approval)
            due = approval_due(approval)
            end = due if due is not None else approval.settled_at()
            writes += ["h", ref(store.key("p:", approval.id)), raw,
                       str(_ms(max(end - now, 0) + cfg.approval_keep_s + _MARGIN_S))]
            if created:
                writes += ["z", ref(store.key("po")), repr(approval.requested_at), approval.id]
            if due is not None:
                writes += ["z", ref(store.key("pd")), repr(due), approval.id]
            else:
                writes += ["r", ref(store.key("pd")), approval.id]
            grant = self._grant_key(approval.task, approval.digest)
            if approval.state == "approved" and approval.kind == "call":
                writes += ["s", ref(grant), approval.id, str(_ms(approval.grant_expires_at - now))]
            elif approval.kind == "call":
                writes += ["x", ref(grant)]
            writes += ["f", ref(store.key("feed")), ref(store.key("seq")), raw, str(cfg.feed_keep)]
        for approval_id in drop:
            writes += ["r", ref(store.key("pd")), approval_id]
        try:
            version = store.run_commit(keys, [str(len(checks) // 3)] + checks + writes)
        except BaseException:
            self._abort()
            raise
        cache = store._cache
        if len(cache) + len(self._dirty) > _CACHE_MAX:
            cache.clear()
        for key, state in self._dirty.items():
            cache[key] = (version, state)
        for key in self._forgotten:
            cache.pop(key, None)

    def _abort(self) -> None:
        """Nothing was written: drop what changed, and this process's copies of what it read (this
        batch may have changed them in memory)."""
        cache, prefix = self.store._cache, self.store.key
        for name in self._tasks:
            cache.pop(prefix("t:", name), None)
        for name in self._agents:
            cache.pop(prefix("a:", name), None)
        self._dirty.clear()
        self._approval_writes.clear()
