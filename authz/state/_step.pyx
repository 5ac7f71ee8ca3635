# cython: language_level=3
"""The server's task-state step, per call, compiled: the calls of one store transaction (a Check or a
BatchCheck, authz/server/taskstate.py) read their task's state, are decided with it and, when allowed,
recorded, here; what is rare goes back to Python, to the same code the rules are written in:
  * a revoked or suspended task: TaskTxn.denied() (authz/state/store.py);
  * a call the policies did not allow (approvals, tripwires): TaskState._refused (taskstate.py);
  * an allowed call that adds a tool or a label, or whose resource, labels or cost the fast path does not
    take (a resource that is not a {type, id} record, an out-of-range cost): TaskTxn.allowed().
The common allowed call (a tool and labels the task already has) is counted here, as
model.TaskState.record_allowed and model.AgentState.record_allowed count it.

The context a call is decided with is its request's context with `task` and `agent` set to
model.TaskState.view / model.AgentState.view before the call (same members, same order); the decision
log keeps that same dict, so nothing later may change it: its `tools` and `labels` lists are shared with
the views of the task's later calls until the task gains one (the next view then gets a new list), and
`counts` and the `rate` records are its own.
"""
from authz.engine._evaluator cimport Decision
from authz.state._records cimport AgentFields, TaskFields
from authz.state.windows cimport Window

from authz.state import model

cdef object LONG_MAX = model.LONG_MAX


cdef dict task_view(TaskFields state, double now):
    """model.TaskState.view(now), its `tools` and `labels` lists shared (see the module docstring)."""
    cdef double elapsed = now - <double>state.started
    cdef long long age = <long long>elapsed if elapsed > 0 else 0  # |elapsed| < 2^53: int() truncates the same
    cdef list shown = state._view_tools
    if shown is None or len(shown) != len(<list>state._tool_views):
        shown = state._view_tools = list(state._tool_views)
    cdef dict counts = state.counts
    cdef list labels = state._view_labels
    if labels is None or len(labels) != len(counts):
        labels = state._view_labels = list(counts)
    return {"id": state.id, "age_s": age, "calls": state.calls, "denies": state.denies, "tools": shown,
            "labels": labels, "counts": counts.copy(), "spend": state.spend,
            "rate": {"m1": state.m1.count(now), "h1": state.h1.count(now)}, "overflow": state.overflow}


cdef dict agent_view(AgentFields agent, double now):
    """model.AgentState.view(now)."""
    return {"rate": {"m1": agent.m1.count(now), "h1": agent.h1.count(now)}}


cdef bint counted_here(TaskFields state, tuple checked, object cost) except -1:
    """Whether the fast path counts this allowed call: a tool and labels the task has, a cost in range."""
    if type(cost) is not int or cost < 0 or cost > LONG_MAX:
        return False
    if state.revoked or state.suspended_by or checked[0] not in <set>state._tool_set:
        return False
    cdef dict counts = state.counts
    for label in <tuple>checked[1]:
        if label not in counts:
            return False
    return True


cdef int count_allowed(TaskFields state, AgentFields agent, tuple checked, object cost, double now) except -1:
    """model.TaskState.record_allowed and model.AgentState.record_allowed of a call counted_here accepted."""
    cdef dict counts = state.counts
    if now > <double>state.last:
        state.last = now
    if state.calls < LONG_MAX:
        state.calls = state.calls + 1
    if cost:
        state.spend = min(state.spend + cost, LONG_MAX)
    for label in <tuple>checked[1]:
        n = counts[label]
        if n < LONG_MAX:
            counts[label] = n + 1
    state.m1.add(now)
    state.h1.add(now)
    if now > <double>agent.last:
        agent.last = now
    agent.m1.add(now)
    agent.h1.add(now)
    return 0


cdef Py_ssize_t VALIDATED_MAX = 4096  # validated (resource, labels) pairs a memo keeps


cdef tuple validated(dict memo, object stored, object labels, object cfg):
    """(tool, labels) of an allowed call on `stored` carrying `labels`, as model.check_uid and
    model.check_labels make them (InvalidArgument as they raise it), remembered in `memo`."""
    key = (stored, labels)
    checked = memo.get(key)
    if checked is None:
        checked = (model.check_uid(stored, cfg.max_uid_bytes), model.check_labels(labels, cfg))
        if len(memo) >= VALIDATED_MAX:
            memo.clear()
        memo[key] = checked
    return <tuple>checked


def run(ts, engine, batch, requests, indexes, list results, list actions, dict seen):
    """The calls `indexes` of `requests`, in order, in `batch` (TaskState._step: see taskstate.py):
    results[i] and seen[i] (the context request i was decided with) for each; `actions`: the tripwires
    TaskState._refused found, to apply once the batch is committed."""
    cdef double now = batch.now
    cfg = batch.config
    changed = batch._changed
    cdef dict checked_of = batch._checked
    # The handle of the previous call's (task, agent): the calls of a batch are mostly of one task, and
    # batch.task would give the same handle. Whether this step marked its task / agent changed already.
    txn = last_task = last_agent = None
    cdef TaskFields state = None
    cdef AgentFields agent = None
    cdef bint task_marked = False, agent_marked = False
    # The previous allowed call's labels (TaskState._call_labels for the same resource object, policies
    # and generation) and its validated (tool, labels) (Batch._checked for equal ones).
    labels_resource = labels_engine = labels_generation = labels_policies = labels = None
    last_stored = last_labels = None
    cdef tuple checked = None
    for i in indexes:
        r = requests[i]
        ctx = r.get("context") or {}
        principal, action, resource = r["principal"], r["action"], r["resource"]
        stored = (resource["type"], resource["id"]) if type(resource) is dict else resource
        task_id = ctx["token"]["task"]
        agent_id = principal["id"] if type(principal) is dict else str(principal)
        if txn is None or type(task_id) is not str or type(agent_id) is not str or task_id != last_task \
                or agent_id != last_agent:
            txn = batch.task(task_id, agent_id)
            state, agent = txn.state, txn.agent
            last_task, last_agent = task_id, agent_id
            task_marked = agent_marked = False
        if state.revoked:
            txn.denied()
            results[i] = ("task_revoked", "the task is revoked", "")
            continue
        suspended_by = state.suspended_by
        if suspended_by:
            txn.denied()
            results[i] = ("task_suspended", f"the task waits for approval {suspended_by}", "")
            continue
        if type(ctx) is dict:
            decided = (<dict>ctx).copy()
        else:
            decided = {**ctx}
        decided["task"] = task_view(state, now)
        decided["agent"] = agent_view(agent, now)
        d = engine.check(principal, action, resource, decided)
        seen[i] = decided
        results[i] = d
        if not ((<Decision>d).allowed if type(d) is Decision else d.allowed):
            ts._refused(engine, txn, principal, action, resource, stored, ctx, d, i, results, actions)
            continue
        policies = d.policies
        generation = engine.generation
        if resource is not labels_resource or engine is not labels_engine or generation != labels_generation \
                or policies != labels_policies:
            labels = ts._call_labels(engine, resource, policies)
            labels_resource, labels_engine, labels_generation, labels_policies = resource, engine, generation, policies
        cost = ctx.get("cost", 0)
        if type(stored) is not tuple or type(labels) is not tuple:
            txn.allowed(stored, labels, cost)
            continue
        if labels is not last_labels or stored != last_stored:
            checked = validated(checked_of, stored, labels, cfg)
            last_stored, last_labels = stored, labels
        if not batch._open or not counted_here(state, checked, cost):
            txn.allowed(stored, labels, cost)
            continue
        count_allowed(state, agent, checked, cost, now)
        if not task_marked:
            changed(state)
            task_marked = True
        if not agent_marked:
            changed(agent)
            agent_marked = True


def attach(requests, dict seen):
    """requests[i] with its context replaced by seen[i] (the context it was decided with), for each i."""
    for i, context in seen.items():
        r = requests[i]
        if type(r) is dict:
            r = (<dict>r).copy()
            r["context"] = context
            requests[i] = r
        else:
            requests[i] = {**r, "context": context}
