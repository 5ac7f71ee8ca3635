"""RedisRevocations: the revocation set shared by every node, in Redis under the deployment's prefix P.

  P rv:gen   generation, +1 per change (a new one starts at the time in µs: never one a worker holds)
  P rv:e     hash "<kind>|<value>" -> "<revoked_at> <expires_at> <owner>"
  P rv:x     zset "<kind>|<value>" by expires_at (the entries that lapse)
  P rv:c     hash sha256(owner) hex -> entries charged to it
Writes are one Lua script each (sweep the lapsed, check the bounds, write, +1 generation, PUBLISH
"rvk <generation>" on P events), so quotas hold across nodes exactly as on one host.

Reads never wait on Redis in the steady state: the process's Fanout listener (fanout.py) refreshes the
snapshot when a message arrives and checks the generation every POLL_S. `current()` returns the
snapshot while the listener has reached Redis within `max_staleness_s`; past that (Redis unreachable)
it tries one direct read (at once refused while the link is down) and otherwise raises
StaleRevocations: decisions made with a task token are denied `state_unavailable` (fail closed).
"""
from __future__ import annotations

import hashlib
import threading

from authz.state.errors import Unavailable
from authz.state.revocations import (Revocations, RevocationError, RevocationSet, check_kind, full_error,
                                     quota_error)

TOPIC = b"rvk"

# KEYS: gen, e, x, c, channel-less; ARGV: now, op ("add" | "lift"), field, expires, owner, max_entries,
# max_per_owner, channel. Returns {status, expires}: status ok | same | lapsed | full | quota | none.
SCRIPT = r"""
local gen, e, x, c = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, op, field = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local lapsed = redis.call('ZRANGEBYSCORE', x, '-inf', now)
for _, f in ipairs(lapsed) do
  local row = redis.call('HGET', e, f)
  if row then
    local owner = string.match(row, '^%S+ %S+ (%S+)$')
    if owner and redis.call('HINCRBY', c, owner, -1) <= 0 then redis.call('HDEL', c, owner) end
    redis.call('HDEL', e, f)
  end
  redis.call('ZREM', x, f)
end
local function bump()
  local g = redis.call('INCR', gen)
  if g == 1 then  -- a new (or lost) set: start at the time in µs, past any generation a worker holds
    local t = redis.call('TIME')
    g = redis.call('INCRBY', gen, tonumber(t[1]) * 1000000 + tonumber(t[2]))
  end
  redis.call('PUBLISH', ARGV[8], 'rvk ' .. g)
end
local old = redis.call('HGET', e, field)
if op == 'lift' then
  if not old then return {'none', '0'} end
  local owner = string.match(old, '^%S+ %S+ (%S+)$')
  if owner and redis.call('HINCRBY', c, owner, -1) <= 0 then redis.call('HDEL', c, owner) end
  redis.call('HDEL', e, field)
  redis.call('ZREM', x, field)
  bump()
  return {'ok', '0'}
end
local expires, who = tonumber(ARGV[4]), ARGV[5]
local most, per = tonumber(ARGV[6]), tonumber(ARGV[7])
if expires > 0 and expires <= now then return {'lapsed', tostring(expires)} end
local new = expires
if old then
  local old_exp, holder = string.match(old, '^%S+ (%S+) (%S+)$')
  old_exp = tonumber(old_exp)
  if old_exp == 0 or expires == 0 then new = 0 else new = math.max(old_exp, expires) end
  if new == old_exp then return {'same', tostring(old_exp)} end
  if holder ~= who then
    if per > 0 and tonumber(redis.call('HGET', c, who) or '0') >= per then return {'quota', '0'} end
    redis.call('HINCRBY', c, who, 1)
    if redis.call('HINCRBY', c, holder, -1) <= 0 then redis.call('HDEL', c, holder) end
  end
else
  if per > 0 and tonumber(redis.call('HGET', c, who) or '0') >= per then return {'quota', '0'} end
  if redis.call('HLEN', e) >= most then return {'full', '0'} end
  redis.call('HINCRBY', c, who, 1)
end
redis.call('HSET', e, field, string.format('%d %d %s', math.floor(now), new, who))
if new > 0 then redis.call('ZADD', x, new, field) else redis.call('ZREM', x, field) end
bump()
return {'ok', tostring(new)}
"""


class StaleRevocations(RevocationError):
    """The revocation set could not be confirmed current within the staleness bound: fail closed."""

    code = "state_unavailable"


def _owner(owner: str) -> str:
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()


class RedisRevocations(RevocationSet):
    def __init__(self, link, prefix: bytes, fanout=None, clock=None):
        import time
        self.link, self.prefix = link, prefix
        self.clock = clock or time.time
        self.keys = [prefix + b"rv:gen", prefix + b"rv:e", prefix + b"rv:x", prefix + b"rv:c"]
        self.channel = prefix + b"events"
        self.fanout = fanout
        self._snapshot = None
        self._sha = None
        self._lock = threading.Lock()

    def _fanout(self):
        if self.fanout is None:
            from authz.state.fanout import Fanout
            self.fanout = Fanout(self.link, self.channel)
        if TOPIC not in self.fanout.watchers:
            self.fanout.watch(TOPIC, self)
        return self.fanout

    # --- reads -----------------------------------------------------------------------------------
    def generation(self) -> int:
        try:
            return int(self.link.call(lambda c: c.get(self.keys[0])) or 0)
        except Unavailable as e:
            raise RevocationError(str(e)) from None

    def refresh(self) -> None:
        """Re-read the set if its generation moved (the Fanout listener calls it; Redis errors propagate)."""
        client = self.link.client()
        generation = int(client.get(self.keys[0]) or 0)
        snap = self._snapshot
        if snap is not None and snap.generation == generation:
            return
        pipe = client.pipeline(transaction=True)
        pipe.get(self.keys[0])
        pipe.hgetall(self.keys[1])
        generation, rows = pipe.execute()
        self._snapshot = self._parse(int(generation or 0), rows)

    @staticmethod
    def _parse(generation: int, rows: dict) -> Revocations:
        tables = {"token": {}, "task": {}, "agent": {}}
        for field, row in rows.items():
            kind, _, value = field.decode("utf-8", "replace").partition("|")
            parts = row.split(b" ")
            if kind in tables and len(parts) == 3:
                tables[kind][value] = int(parts[1])
        return Revocations(generation, tables["token"], tables["task"], tables["agent"])

    def current(self) -> Revocations:
        fanout = self._fanout()
        snap = self._snapshot
        if snap is not None and not fanout.stale(self.link.settings.max_staleness_s):
            return snap
        try:
            self.link.call(lambda c: self.refresh())
        except Unavailable as e:
            raise StaleRevocations(f"the revocation set cannot be confirmed current: {e}") from None
        return self._snapshot

    # --- writes ----------------------------------------------------------------------------------
    def _run(self, op: str, kind: str, value: str, expires: int = 0, owner: str = "", most: int = 0,
             per: int = 0):
        check_kind(kind)
        args = [repr(self.clock()), op, f"{kind}|{value}", str(expires), _owner(owner), str(most), str(per),
                self.channel]

        def run(c):
            if self._sha is None:
                self._sha = c.script_load(SCRIPT)
            try:
                return c.evalsha(self._sha, len(self.keys), *self.keys, *args)
            except Exception as e:  # noqa: BLE001 - NoScriptError after a Redis restart
                if "NOSCRIPT" not in str(e):
                    raise
                self._sha = c.script_load(SCRIPT)
                return c.evalsha(self._sha, len(self.keys), *self.keys, *args)
        try:
            status, when = self.link.call(run)
        except Unavailable as e:
            raise RevocationError(f"cannot write revocations: {e}") from None
        return status.decode(), int(when)

    def revoke(self, kind: str, value: str, expires_at: float, max_entries: int, owner: str = "",
               max_per_owner: int = 0) -> int:
        expires = 0 if not expires_at else int(expires_at) + 1
        status, when = self._run("add", kind, value, expires, owner, max_entries, max_per_owner)
        if status == "quota":
            raise quota_error(owner, max_per_owner)
        if status == "full":
            raise full_error(max_entries)
        if status == "ok":
            self._refresh_now()
        return when

    def lift(self, kind: str, value: str) -> bool:
        status, _ = self._run("lift", kind, value)
        if status == "ok":
            self._refresh_now()
        return status == "ok"

    def _refresh_now(self) -> None:
        """This process sees its own write at once (others within the fan-out bound)."""
        try:
            self.link.call(lambda c: self.refresh())
        except Unavailable:
            pass  # the listener catches up

    def held_by(self, owner: str) -> int:
        try:
            return int(self.link.call(lambda c: c.hget(self.keys[3], _owner(owner))) or 0)
        except Unavailable as e:
            raise RevocationError(str(e)) from None

    def entries(self) -> list:
        try:
            rows = self.link.call(lambda c: c.hgetall(self.keys[1]))
        except Unavailable as e:
            raise RevocationError(str(e)) from None
        out = []
        for field, row in rows.items():
            kind, _, value = field.decode("utf-8", "replace").partition("|")
            revoked, expires, _ = row.split(b" ")
            out.append((kind, value, int(revoked), int(expires)))
        return out

    def close(self) -> None:
        """The store owns the listener and the link: nothing of its own to release."""
