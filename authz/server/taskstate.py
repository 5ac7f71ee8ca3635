"""The task-state step of the request pipeline: a request made with a task token is decided with what its
task already did (`context.task`, `context.agent`), and what it does is recorded, atomically per task
across every worker (authz.state: the store holds the host's write lock from read to commit).

Per call, in one store transaction with the other calls of its batch:
- a revoked task is denied `task_revoked`, a suspended one `task_suspended` (an approval is pending);
- the policies decide with `context.task` / `context.agent` set to the state before the call;
- approvals: when every satisfied forbid carries `@approval("<queue>")` and some permit is satisfied,
  the call is allowed only with a live single-use grant for its exact request digest; otherwise an
  approval is opened (the task is suspended) and the answer is `approval_required`;
- tripwires: a forbid annotated `@on_deny("suspend_task" | "revoke_task" | "revoke_agent")` that
  determines a deny takes that action (suspend: an approval in queue `quarantine`; approving it resumes
  the task, rejecting revokes it);
- an allowed call adds its resource to `tools`, its labels (the resource's `labels` attribute and each
  determining permit's `@labels("a,b")`) to `labels`/`counts`, `context.cost` to `spend`, and counts in
  the rate windows; a denied one counts in `denies`.
Nothing is answered as allowed before the commit returned: a store that fails denies `state_unavailable`.
"""
from __future__ import annotations

import logging
import time

from authz.state import StateError, _step, request_digest

log = logging.getLogger("authz.server")

STATE_KEYS = ("task", "agent")      # context keys only the server sets
TOKEN_KEYS = ("token", "delegation")  # context keys a task token sets
PER_SENDING_KEYS = TOKEN_KEYS + ("source", "destination")  # left out of a request's digest (see _digest)
QUARANTINE = "quarantine"
ON_DENY = ("suspend_task", "revoke_task", "revoke_agent")
LABELS_CACHED = 4096  # (resource, determining permits) pairs whose labels a worker remembers
STATE_CODES = frozenset({"task_revoked", "task_suspended", "approval_required", "state_unavailable"})


class Granted:
    """An approved call's allow: what the engine's Decision would say, and which approval allowed it
    (read by the decision log, the tracer and the wire encoder as a Decision is: allowed, policies, errors)."""

    __slots__ = ("allowed", "policies", "errors", "approval_id", "approver")

    def __init__(self, policies, approval_id: str, approver: str):
        self.allowed, self.policies, self.errors = True, list(policies), []
        self.approval_id, self.approver = approval_id, approver


def task_of(request) -> str | None:
    """The task of a request made with a task token (its context's `token.task`), else None."""
    if type(request) is not dict:
        return None
    ctx = request.get("context")
    tok = ctx.get("token") if ctx else None
    return tok.get("task") if type(tok) is dict else None


def _agent_id(uid) -> str:
    return uid["id"] if type(uid) is dict else str(uid)


def _chain(ctx) -> list:
    dlg = ctx.get("delegation")
    chain = dlg.get("chain", ()) if type(dlg) is dict else ()
    return [e["__entity"]["id"] if type(e) is dict and "__entity" in e else str(e) for e in chain]


def _digest(principal, action, resource, ctx) -> str:
    """The request's digest: its principal, action, resource and context, without what changes from one
    sending of the same call to the next: what the token adds (a retry with another token of the task is
    the same call), the connection (`source`, `destination`) and, for a request Envoy mapped, its HTTP
    headers (request ids, trace context); the method, path, query, host and the MCP call stay in."""
    kept = {k: v for k, v in ctx.items() if k not in PER_SENDING_KEYS}
    http = kept.get("http")
    if type(http) is dict and "headers" in http:
        kept["http"] = {k: v for k, v in http.items() if k != "headers"}
    return request_digest(principal, action, resource, kept)


def _labels(engine, resource, policies) -> tuple:
    """A call's labels: its resource's `labels` attribute, then each determining permit's `@labels`."""
    out = list(engine.string_set_attribute(resource, "labels"))
    for pid in policies:
        for label in (engine.annotations(pid).get("labels") or "").split(","):
            label = label.strip()
            if label and label not in out:
                out.append(label)
    return tuple(out)


class TaskState:
    """Decides the requests of a batch that carry a task, with the worker's Store; `revoker` revokes a
    task's or an agent's tokens (the tokens layer's revocation set) when a tripwire says so."""

    def __init__(self, store, revoker=None, clock=time.time):
        self.store, self.revoker, self.clock = store, revoker, clock
        # A call's labels depend on the resource and the determining permits alone, for one generation
        # of one engine: (engine, generation) -> {(type, id, policies): labels}, at most LABELS_CACHED.
        self._labels_of = (None, None, {})

    def _call_labels(self, engine, resource, policies) -> tuple:
        held, generation, cache = self._labels_of
        if held is not engine or generation != engine.generation:
            cache = {}
            self._labels_of = (engine, engine.generation, cache)
        key = (resource["type"], resource["id"], *policies) if type(resource) is dict else None
        labels = cache.get(key) if key is not None else None
        if labels is None:
            labels = _labels(engine, resource, policies)
            if key is not None:
                if len(cache) >= LABELS_CACHED:
                    cache.clear()
                cache[key] = labels
        return labels

    def decide(self, engine, requests, indexes, results) -> None:
        """results[i] for each i in `indexes` (requests with a task): the engine's Decision, a Granted, or
        (code, message, field[, approval_id, queue]) for a deny the task state made."""
        actions = []  # tripwires to apply to the tokens once the state is committed
        seen = {}  # i -> the context request i was decided with, for the decision log (authz replay)
        try:
            if len(indexes) == 1 and type(requests[indexes[0]]) is dict:  # a single call: the store's fast path
                i = indexes[0]
                done = self.store.decide_call(self, engine, requests[i], self.clock())
                if done is not None:
                    results[i], seen[i] = done
                    if type(requests) is list:
                        _step.attach(requests, seen)
                    return
            self.store.transact(self.clock(), lambda batch: self._step(engine, batch, requests, indexes, results,
                                                                       actions, seen))
        except StateError as e:
            log.warning("task state unavailable, denying: %s", e)
            for i in indexes:
                results[i] = ("state_unavailable", str(e), "")
            return
        if type(requests) is list:
            _step.attach(requests, seen)
        for kind, subject in actions:
            self._revoke(kind, subject)

    def _step(self, engine, batch, requests, indexes, results, actions, seen) -> None:
        actions.clear()  # a retried transaction starts over
        seen.clear()
        if len(indexes) > 1 and batch.PREFETCHES:  # a networked store reads every task and agent of the batch at once
            batch.prefetch([(requests[i]["context"]["token"]["task"], _agent_id(requests[i]["principal"]))
                            for i in indexes])
        # Per call (compiled, authz/state/_step.pyx): a revoked or suspended task is denied; the call is
        # decided with `context.task` / `context.agent` as they were before it (that context is the one
        # logged); an allowed call is recorded; any other goes to _refused.
        _step.run(self, engine, batch, requests, indexes, results, actions, seen)

    def _refused(self, engine, txn, principal, action, resource, stored, ctx, d, i, results, actions) -> None:
        """A call the policies did not allow (results[i] is its Decision `d`): allowed with an approval's
        grant, or an approval opened (the task suspended), or denied (and its tripwires noted in `actions`)."""
        notes = [engine.annotations(p) for p in d.policies]
        if d.policies and d.permitted and all(n.get("approval") for n in notes):
            digest = _digest(principal, action, resource, ctx)
            grant = txn.consume_grant(digest)
            if grant is not None:
                results[i] = Granted(d.policies, grant.approval_id, grant.approver)
                txn.allowed(stored, self._call_labels(engine, resource, ()), ctx.get("cost", 0))
                return
            queue = notes[0]["approval"]
            a = txn.request_approval(queue, _chain(ctx) or [_agent_id(principal)], principal, action, resource,
                                     digest, d.policies)
            txn.denied()
            results[i] = ("approval_required", f"approval {a.id} is pending in queue `{queue}`", "", a.id, queue)
            return
        txn.denied()
        for pid, note in zip(d.policies, notes):
            tripwire = note.get("on_deny")
            if tripwire not in ON_DENY:
                continue
            log.warning("tripwire %s of policy `%s` on task `%s`", tripwire, pid, txn.task_id)
            if tripwire == "suspend_task" and not txn.suspended_by:
                txn.request_approval(QUARANTINE, _chain(ctx) or [_agent_id(principal)], principal, action,
                                     resource, _digest(principal, action, resource, ctx), [pid],
                                     kind="quarantine", on_reject="revoke_task")
            elif tripwire == "revoke_task":
                if not txn.revoked:
                    txn.revoke_task()
                actions.append(("task", txn.task_id))
            elif tripwire == "revoke_agent":
                actions.append(("agent", _agent_id(principal)))

    def _revoke(self, kind, subject) -> None:
        if self.revoker is None:
            return
        try:
            self.revoker(kind, subject)
        except Exception:
            log.exception("tripwire: revoking %s `%s` failed", kind, subject)
