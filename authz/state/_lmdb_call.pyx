# cython: language_level=3
"""The embedded store's single-call path, compiled: one call made with a task token (an authz.v1 Check,
an Envoy Check, an AuthZEN evaluation) read, decided and recorded in one LMDB write transaction without the
Batch machinery (LmdbStore.batch, Batch.task, TaskTxn, LmdbBatch._commit), for the common case alone:

  the task and the agent have records (in this process's record cache, or read and decoded here), the task
  is neither revoked nor suspended, the policies allow the call, the call adds no tool and no label, its
  cost is a Long in range, and the task's and the agent's places in the sweep index stay where they are
  (they move once an hour).

Unlike a batch, this path does not apply what fell due in the sweep index first: nothing due can change
its call (an idle task or agent past its time moves its place, a suspended task is left to the general
path, and grants are only used there), and every worker's upkeep sweeps every 2 s (UPKEEP_S).

Anything else is left to the general path (authz/server/taskstate.py: TaskState._step over a Batch) with
nothing written: decide_call returns None before it changes a record. The view the call is decided with
and the counting are _step.pyx's own (task_view, agent_view, counted_here, count_allowed); the records are
written as LmdbBatch._commit writes them (model.encode_task / encode_agent), and the record cache is kept
the same way (a record whose commit failed is dropped from it, so the general path reads it again).
"""
import os

import lmdb

from authz.engine._evaluator cimport Decision
from authz.state._records cimport AgentFields, TaskFields
from authz.state._records cimport due_after
from authz.state._step cimport agent_view, count_allowed, counted_here, task_view, validated

from authz.state import model
from authz.state.errors import InvalidArgument

cdef object AGENT_TTL_S = model.AGENT_TTL_S
cdef double TIME_MAX = 9007199254740992.0  # 2^53: model.check_now's bound

# This process's id, for LmdbStore's environment check (an environment is never used across fork) without
# a system call per decision.
cdef object _pid = os.getpid()


def _forked():
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


cdef object call_labels(object ts, object engine, dict resource, object policies):
    """ts._call_labels(engine, resource, policies) (authz/server/taskstate.py), its cache read here."""
    held, generation, cache = ts._labels_of
    if held is engine and generation == engine.generation:
        found = (<dict>cache).get((resource.get("type"), resource.get("id"), *policies))
        if found is not None:
            return found
    return ts._call_labels(engine, resource, policies)


cdef object record(dict cache, Py_ssize_t most, tuple key, object raw, object decode):
    """The record stored as `raw` under cache key `key`: the cached object when `raw` is what the cache
    holds, else decoded (model.decode_task / decode_agent) and cached; None when there is no record."""
    if raw is None:
        return None
    cached = cache.get(key)
    if cached is not None and (<tuple>cached)[0] == raw:
        return (<tuple>cached)[1]
    found = decode(key[1], raw)
    if len(cache) >= most:
        cache.clear()
    cache[key] = (raw, found)
    return found


def decide_call(store, ts, engine, dict request, double now):
    """LmdbStore.decide_call (Store.decide_call): (decision, context) of `request` (a request dict made with
    a task token) decided with its task's state and recorded, or None: the general path must take it, and
    nothing was written. `ts` is the server's TaskState (its labels cache), `now` the decision's time.
    Raises what engine.check raises (nothing written then)."""
    if not 0 <= now < TIME_MAX:  # (NaN too) the general path refuses it
        return None
    ctx = request.get("context")
    if type(ctx) is not dict:
        return None
    token = (<dict>ctx).get("token")
    principal, action, resource = request["principal"], request["action"], request["resource"]
    if type(token) is not dict or type(resource) is not dict:
        return None
    task_id = (<dict>token).get("task")
    agent_id = principal.get("id") if type(principal) is dict else None
    if type(task_id) is not str or type(agent_id) is not str:
        return None
    cfg = store.config
    try:
        task_key = (<str>task_id).encode("utf-8")
        agent_key = (<str>agent_id).encode("utf-8")
    except UnicodeEncodeError:
        return None
    if not task_key or not agent_key or len(task_key) > cfg.max_id_bytes or len(agent_key) > cfg.max_id_bytes:
        return None
    stored = ((<dict>resource).get("type"), (<dict>resource).get("id"))
    cost = (<dict>ctx).get("cost", 0)

    cdef dict cache = store._cache
    cdef Py_ssize_t most = store.CACHE_MAX
    cdef TaskFields state
    cdef AgentFields agent
    cdef bint written = False
    env = store._env
    if env is not None and store._pid == _pid:
        dbs = store._dbs
    else:
        env, dbs = store._environment()
    try:
        txn = env.begin(write=True)
    except lmdb.Error:
        return None  # the general path meets the same failure and answers state_unavailable
    t_key, a_key = (b"t", task_id), (b"a", agent_id)
    try:
        found = record(cache, most, t_key, txn.get(task_key, db=dbs["tasks"]), model.decode_task)
        if found is None:
            return None
        state = <TaskFields?>found
        found = record(cache, most, a_key, txn.get(agent_key, db=dbs["agents"]), model.decode_agent)
        if found is None:
            return None
        agent = <AgentFields?>found
        if state.revoked or state.suspended_by:
            return None
        decided = (<dict>ctx).copy()
        decided["task"] = task_view(state, now)
        decided["agent"] = agent_view(agent, now)
        d = engine.check(principal, action, resource, decided)
        if not ((<Decision>d).allowed if type(d) is Decision else d.allowed):
            return None
        labels = call_labels(ts, engine, <dict>resource, d.policies)
        if type(labels) is not tuple:
            return None
        try:
            checked = validated(store._checked, stored, labels, cfg)
        except InvalidArgument:
            return None  # the general path refuses it
        if not counted_here(state, <tuple>checked, cost):
            return None
        task_due = due_after(max(<double>state.last, now), cfg.task_ttl_s)
        agent_due = due_after(max(<double>agent.last, now), AGENT_TTL_S)
        if task_due != state.due or agent_due != agent.due:
            return None  # the general path moves their entries in the sweep index
        count_allowed(state, agent, <tuple>checked, cost, now)
        written = True  # from here on the records in memory are ahead of the stored ones
        task_raw, agent_raw = model.encode_task(state), model.encode_agent(agent)
        txn.put(task_key, task_raw, db=dbs["tasks"])
        txn.put(agent_key, agent_raw, db=dbs["agents"])
        txn.commit()
        txn = None
    except lmdb.Error:
        if written:  # not as stored: read again by the general path
            cache.pop(t_key, None)
            cache.pop(a_key, None)
        return None
    except BaseException:
        if written:
            cache.pop(t_key, None)
            cache.pop(a_key, None)
        raise
    finally:
        if txn is not None:
            txn.abort()
    if len(cache) + 2 > most:
        cache.clear()
    cache[t_key] = (task_raw, state)
    cache[a_key] = (agent_raw, agent)
    return d, decided
