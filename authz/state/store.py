"""The Store boundary: what the server calls, whatever holds the state (LMDB or Redis).

A `Batch` is one atomic read -> decide -> update over one or more tasks; `TaskTxn` is one task's
handle in it. The rules of a decision step (validation, suspension, grants, approvals) live here, once;
a backend supplies the primitives below (load / mark changed / approvals / grants / commit).

Backends and atomicity:
  * LMDB (lmdb_store.py) holds one write transaction from `batch()` to commit: writers are serialized
    across every process of the host, so a decision sees exactly the state the previous one left.
  * A networked backend loads what `task()` needs (pipelined, with versions), buffers every change,
    and commits them in one atomic step that checks the versions (a server-side script or a
    compare-and-set). When they changed, `commit()` raises Conflict and nothing is written;
    `Store.transact` then runs the decision again on fresh state, at most `attempts` times.
Code that should work with every backend therefore decides inside `Store.transact(now, work)`, with
`work` free of side effects other than the batch (deciding is a pure function of the view).
"""
from __future__ import annotations

import abc
import collections

from authz.state import approvals as A
from authz.state import model
from authz.state.config import StateConfig
from authz.state.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, Unavailable

Grant = collections.namedtuple("Grant", "approval_id approver")
Grant.__doc__ = "A consumed single-use grant: the approval that allowed the call and who approved it."
Changes = collections.namedtuple("Changes", "items last gap")
Changes.__doc__ = """Approval changes after a sequence number: `items` [(seq, Approval)] in order, `last` the
sequence to ask after next time, `gap` True when changes were dropped (feed_keep) since: list again."""


class Store(abc.ABC):
    """Task state, approvals and grants of one deployment."""

    def __init__(self, config: StateConfig):
        self.config = config

    # --- decisions -------------------------------------------------------------------------------
    @abc.abstractmethod
    def batch(self, now: float) -> "Batch":
        """A new atomic step at time `now` (seconds). Use it as a context manager."""

    def begin(self, task_id: str, agent_id: str, now: float) -> "TaskTxn":
        """A batch of one task: `with store.begin(task, agent, now) as txn: ...`."""
        batch = self.batch(now)
        try:
            return batch.task(task_id, agent_id)
        except BaseException:
            batch.abort()
            raise

    def transact(self, now: float, work, attempts: int = 4):
        """`work(batch)` in a batch committed afterwards; run again on Conflict (networked backends),
        at most `attempts` times, then Unavailable. Returns what `work` returned."""
        for _ in range(attempts):
            try:
                with self.batch(now) as batch:
                    result = work(batch)
                return result
            except Conflict:
                continue
        raise Unavailable(f"the state kept changing during {attempts} attempts")

    def decide_call(self, ts, engine, request: dict, now: float):
        """A backend's fast path for one call made with a task token: (decision, context it was decided
        with), decided and recorded in one step, or None when the general path (a batch and the server's
        step, authz/server/taskstate.py) must take it, nothing written then. The general path decides
        every call; a backend answers here only what it answers the same way. This default answers none."""
        return None

    # --- approvals -------------------------------------------------------------------------------
    def approve(self, approval_id: str, approver: str, now: float) -> A.Approval:
        """Approve a pending approval: its task resumes; a "call" approval grants the identical call once,
        for grant_ttl_s. NotFound, FailedPrecondition (expired, decided), SelfApproval."""
        with self.batch(now) as batch:
            approval = batch.approve(approval_id, approver)
        if approval.state != "approved":
            raise FailedPrecondition(f"approval `{approval_id}` expired")
        return approval

    def reject(self, approval_id: str, approver: str, reason: str, now: float) -> A.Approval:
        """Reject a pending approval: its task resumes, or is revoked (on_reject "revoke_task")."""
        with self.batch(now) as batch:
            approval = batch.reject(approval_id, approver, reason)
        if approval.state != "rejected":
            raise FailedPrecondition(f"approval `{approval_id}` expired")
        return approval

    @abc.abstractmethod
    def get_approval(self, approval_id: str, now: float) -> A.Approval:
        """The approval as it stands at `now` (Approval.effective). NotFound."""

    @abc.abstractmethod
    def list_approvals(self, now: float, state: str | None = None, queue: str | None = None,
                       task: str | None = None, limit: int = 100) -> list:
        """Approvals as they stand at `now`, newest first, matching every filter given."""

    @abc.abstractmethod
    def changes_since(self, seq: int, limit: int = 100) -> Changes:
        """Approval changes with a sequence number above `seq` (0: from the oldest kept)."""

    # --- upkeep and inspection -------------------------------------------------------------------
    @abc.abstractmethod
    def sweep(self, now: float, limit: int = 1000) -> int:
        """Apply what fell due by `now` (expired approvals and grants, idle tasks and agents, retention);
        at most `limit` items; returns how many. Idempotent; every worker may call it."""

    @abc.abstractmethod
    def sizes(self) -> dict:
        """{"tasks", "agents", "approvals": records stored, "changes": the last change-feed number} (metrics)."""

    def task_status(self, task_id: str, now: float) -> tuple:
        """("active", "") / ("suspended", approval id) / ("revoked", "") of a task as of `now`, read only
        (Tokens Issue/Exchange: no token for a suspended or revoked task). A pending approval that
        expired by `now` counts as decided: the task is active, or revoked when the approval says so.
        A task never seen is active. This default runs a batch and aborts it; a backend may read instead."""
        batch = self.batch(now)
        try:
            txn = batch.task(task_id, task_id)
            if txn.revoked:
                return ("revoked", "")
            return ("suspended", txn.suspended_by) if txn.suspended_by else ("active", "")
        finally:
            batch.abort()

    @staticmethod
    def _status_of(task: model.TaskState | None, approval, now: float) -> tuple:
        """task_status of a stored task (None: never seen) and the approval that suspends it (or None)."""
        if task is None:
            return ("active", "")
        if task.revoked:
            return ("revoked", "")
        if task.suspended_by and approval is not None and approval.state == "pending":
            if now < approval.expires_at:
                return ("suspended", approval.id)
            if approval.on_reject == "revoke_task":
                return ("revoked", "")
        return ("active", "")

    @abc.abstractmethod
    def task_view(self, task_id: str, now: float) -> dict | None:
        """`context.task` of a stored task as of `now` (read-only), or None."""

    @property
    @abc.abstractmethod
    def revocations(self):
        """The deployment's revocation set (authz.state.revocations.RevocationSet), opened lazily."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (and its revocation set); it cannot be used afterwards."""

    # --- validation shared by backends -------------------------------------------------------------
    def _check_filters(self, state, queue, task, limit) -> None:
        if state is not None and state not in A.STATES:
            raise InvalidArgument(f"state must be one of {', '.join(A.STATES)}")
        if queue is not None:
            model.check_text(queue, "queue", self.config.max_text_bytes)
        if task is not None:
            model.check_text(task, "task", self.config.max_id_bytes)
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be an integer from 1 to 1000")


class Batch(abc.ABC):
    """One atomic step. Ends by commit() (also on leaving a `with` block normally) or abort()
    (on leaving it by an exception); then it cannot be used."""

    def __init__(self, config: StateConfig, now: float):
        self.config = config
        self.now = model.check_now(now)
        self._open = True
        self._handles = {}  # (task id, agent id) -> TaskTxn: the calls of a batch reuse their handle
        self._checked = {}  # (resource, labels) tuples already validated in this batch -> (tool, labels)

    # --- primitives a backend supplies -----------------------------------------------------------
    @abc.abstractmethod
    def _task(self, task_id: str) -> model.TaskState:
        """The task's state in this batch (one object per id; a new TaskState at `now` when none is stored)."""

    @abc.abstractmethod
    def _agent(self, agent_id: str) -> model.AgentState:
        """As `_task`, for an agent."""

    @abc.abstractmethod
    def _changed(self, state) -> None:
        """A TaskState or AgentState of this batch changed: store it at commit (Full when it is new and
        the store holds its maximum of tasks or agents)."""

    @abc.abstractmethod
    def _approval(self, approval_id: str) -> A.Approval | None:
        """The stored approval (as stored, not `effective`), or None."""

    @abc.abstractmethod
    def _save_approval(self, approval: A.Approval, created: bool = False) -> None:
        """Store it (Full when `created` and the store holds max_approvals), record a change in the feed,
        keep its grant (task, digest) -> id while it is live, and schedule its expiry and retention."""

    @abc.abstractmethod
    def _grant(self, task_id: str, digest: str) -> str | None:
        """The id of the approval whose grant is bound to (task, digest), if any."""

    @abc.abstractmethod
    def _commit(self) -> None:
        """Write what changed, atomically (Conflict when a networked backend's versions moved)."""

    @abc.abstractmethod
    def _abort(self) -> None:
        """Drop what changed."""

    # --- the step --------------------------------------------------------------------------------
    PREFETCHES = False  # whether prefetch() does anything (the caller may skip building its list)

    def prefetch(self, pairs) -> None:
        """The (task id, agent id) pairs this batch is about to decide: a networked backend reads them all
        in one round trip (a BatchCheck over several tasks); the embedded one reads as it goes."""

    def task(self, task_id: str, agent_id: str) -> "TaskTxn":
        """The handle of `task_id` decided for `agent_id` (the acting agent: its rate windows span tasks).
        A pending approval of the task that expired by `now` is expired here, first."""
        self._check_open()
        handle = self._handles.get((task_id, agent_id)) if type(task_id) is str and type(agent_id) is str else None
        if handle is not None:
            return handle
        cfg = self.config
        model.check_text(task_id, "task id", cfg.max_id_bytes)
        model.check_text(agent_id, "agent id", cfg.max_id_bytes)
        task = self._task(task_id)
        if task.suspended_by:
            approval = self._approval(task.suspended_by)
            if approval is None or approval.state != "pending":
                task.suspended_by = ""  # its approval was decided: nothing suspends the task
                self._changed(task)
            elif self.now >= approval.expires_at:
                self._decide(approval, "expire")
        handle = self._handles[(task_id, agent_id)] = TaskTxn(self, task, self._agent(agent_id))
        return handle

    def commit(self) -> None:
        self._check_open()
        self._open = False
        self._commit()

    def abort(self) -> None:
        if self._open:
            self._open = False
            self._abort()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if not self._open:
            return
        if kind is None:
            self.commit()
        else:
            self.abort()

    def _check_open(self) -> None:
        if not self._open:
            raise FailedPrecondition("this state transaction has ended")

    # --- approvals -------------------------------------------------------------------------------
    def approve(self, approval_id: str, approver: str) -> A.Approval:
        """As Store.approve, inside this batch; an approval found expired is expired and returned."""
        approval = self._pending(approval_id, approver)
        if approval.state == "pending":
            approval.approve(approver, self.now, self.config.grant_ttl_s)
            self._decide(approval, None)
        return approval

    def reject(self, approval_id: str, approver: str, reason: str) -> A.Approval:
        model.check_text(reason, "reason", self.config.max_text_bytes, empty_ok=True)
        approval = self._pending(approval_id, approver)
        if approval.state == "pending":
            approval.reject(approver, reason, self.now)
            self._decide(approval, "reject")
        return approval

    def _pending(self, approval_id: str, approver: str) -> A.Approval:
        """The approval to decide (expired here if its time has come); NotFound, FailedPrecondition."""
        self._check_open()
        A.check_id(approval_id)
        model.check_text(approver, "approver", self.config.max_text_bytes)
        approval = self._approval(approval_id)
        if approval is None:
            raise NotFound(f"no approval `{approval_id}`")
        if approval.state == "pending" and self.now >= approval.expires_at:
            self._decide(approval, "expire")
        elif approval.state != "pending":
            raise FailedPrecondition(f"approval `{approval_id}` is {approval.effective(self.now).state}, not pending")
        return approval

    def _decide(self, approval: A.Approval, how: str | None) -> None:
        """Store the approval's new state and end its task's suspension: on "reject" or "expire", the
        task is revoked instead when the approval says so (on_reject = "revoke_task")."""
        if how == "expire":
            approval.expire(self.now)
        self._save_approval(approval)
        task = self._task(approval.task)
        if task.suspended_by == approval.id:
            task.suspended_by = ""
        if how is not None and approval.on_reject == "revoke_task":
            task.revoked = True
        self._changed(task)


class TaskTxn:
    """One task inside a Batch: read its state (before the call), then record the call's outcome.

    The server's step, per call:  if txn.revoked -> deny task_revoked; if txn.suspended_by -> deny
    task_suspended; context = {**request_context, **txn.view()}; decide; then txn.allowed(...),
    txn.denied(), and for approvals txn.consume_grant(digest) / txn.request_approval(...).
    The single-call form (`Store.begin`) ends its batch with commit_allowed / commit_denied."""

    __slots__ = ("batch", "state", "agent")

    def __init__(self, batch: Batch, state: model.TaskState, agent: model.AgentState):
        self.batch, self.state, self.agent = batch, state, agent

    @property
    def task_id(self) -> str:
        return self.state.id

    @property
    def suspended_by(self) -> str | None:
        """The id of the pending approval that suspends the task, or None."""
        return self.state.suspended_by or None

    @property
    def revoked(self) -> bool:
        return self.state.revoked

    def view(self) -> dict:
        """{"task": context.task, "agent": context.agent}: the state before the call being decided."""
        self.batch._check_open()
        now = self.batch.now
        return {"task": self.state.view(now), "agent": self.agent.view(now)}

    def allowed(self, resource, labels=(), cost: int = 0) -> None:
        """Record an allowed call on `resource` ({"type","id"} or (type, id)) carrying `labels`, costing
        `cost`. InvalidArgument / Full (labels bound) leave the state unchanged. (The server's step,
        authz/state/_step.pyx, records the common allowed call itself, by these same rules.)"""
        batch = self.batch
        cfg = batch.config
        key = (resource, labels) if type(resource) is tuple and type(labels) is tuple else None
        checked = batch._checked.get(key) if key is not None else None
        if checked is None:
            checked = (model.check_uid(resource, cfg.max_uid_bytes), model.check_labels(labels, cfg))
            if key is not None:
                batch._checked[key] = checked
        if type(cost) is not int or not 0 <= cost <= model.LONG_MAX:
            model.check_cost(cost)
        state = self.state
        if not batch._open or state.revoked or state.suspended_by:
            self._check_active()
        now = batch.now
        state.record_allowed(now, checked[0], checked[1], cost, cfg)
        self.agent.record_allowed(now)
        batch._changed(state)
        batch._changed(self.agent)

    def denied(self) -> None:
        """Record a denied call (any reason, task_suspended and task_revoked included)."""
        self.batch._check_open()
        self.state.record_denied(self.batch.now)
        self.batch._changed(self.state)

    def consume_grant(self, digest: str) -> Grant | None:
        """The task's live grant for the request with this digest, used up now (at most once ever), or None."""
        batch = self.batch
        batch._check_open()
        A.check_digest(digest)
        approval_id = batch._grant(self.state.id, digest)
        if approval_id is None:
            return None
        approval = batch._approval(approval_id)
        if approval is None or not approval.grant_live(batch.now):
            return None
        approval.use(batch.now)
        batch._save_approval(approval)
        return Grant(approval.id, approval.approver)

    def request_approval(self, queue: str, chain, principal, action, resource, digest: str, policies,
                         kind: str = "call", on_reject: str | None = None) -> A.Approval:
        """Open a pending approval for this call and suspend the task. `chain`: the identities of the
        call's delegation chain (none of them may approve); `policies`: the ids that asked.
        A tripwire's `suspend_task` is kind "quarantine" with on_reject "revoke_task"."""
        batch = self.batch
        cfg = batch.config
        model.check_text(queue, "queue", cfg.max_text_bytes)
        chain = self._texts(chain, "chain", cfg.max_chain)
        policies = self._texts(policies, "policies", cfg.max_policies)
        principal, action, resource = (dict(zip(("type", "id"), model.check_uid(uid, cfg.max_uid_bytes, what)))
                                       for uid, what in ((principal, "principal"), (action, "action"),
                                                         (resource, "resource")))
        A.check_digest(digest)
        if kind not in A.KINDS:
            raise InvalidArgument(f"kind must be one of {', '.join(A.KINDS)}")
        on_reject = cfg.on_reject if on_reject is None else on_reject
        if on_reject not in ("resume", "revoke_task"):
            raise InvalidArgument("on_reject must be resume or revoke_task")
        self._check_active()
        now = batch.now
        approval = A.Approval(A.new_id(), kind, queue, self.state.id, chain, principal, action, resource, digest,
                              policies, on_reject, now, now + cfg.approval_ttl_s)
        batch._save_approval(approval, created=True)
        self.state.suspended_by = approval.id
        batch._changed(self.state)
        return approval

    def revoke_task(self) -> None:
        """Mark the task revoked (a tripwire): every later decision of it is refused by the server."""
        self.batch._check_open()
        self.state.revoked = True
        self.batch._changed(self.state)

    def commit_allowed(self, resource, labels=(), cost: int = 0) -> None:
        self.allowed(resource, labels, cost)
        self.batch.commit()

    def commit_denied(self) -> None:
        self.denied()
        self.batch.commit()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.batch.__exit__(kind, value, tb)

    def _check_active(self) -> None:
        self.batch._check_open()
        if self.state.revoked:
            raise FailedPrecondition(f"task `{self.state.id}` is revoked")
        if self.state.suspended_by:
            raise FailedPrecondition(f"task `{self.state.id}` is suspended by approval `{self.state.suspended_by}`")

    def _texts(self, values, what: str, most: int) -> list:
        if isinstance(values, (str, bytes)) or values is None:
            raise InvalidArgument(f"{what} must be a list of strings")
        out = [model.check_text(v, f"an entry of {what}", self.batch.config.max_text_bytes) for v in values]
        if len(out) > most:
            raise InvalidArgument(f"{what} has more than {most} entries")
        return out
