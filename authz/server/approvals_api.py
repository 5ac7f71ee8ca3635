"""authz.v1.Approvals: list, read, approve, reject and watch the approvals of the task-state store.

Who asks: the caller's verified identity (bearer JWT or mTLS peer); in development mode the
`x-authz-caller` metadata, from loopback peers only (as the Tokens admin calls). Approving and
rejecting are Cedar decisions of the approver: Action::"authz::Approve" / Action::"authz::Reject" on
Approval::"<id>", context {queue, task, chain (Agent entities), principal, action, resource (the call's,
as entities), kind, reason} (the approver's reason; required to reject). A deny is PERMISSION_DENIED naming the decision id;
nobody in the call's delegation chain may approve it (PERMISSION_DENIED `self_approval`, the store's rule).
A rejected or expired approval whose on_reject is "revoke_task" also revokes the task's tokens: at once
for a reject, and by each worker's upkeep (sweep + change feed, every UPKEEP_S) for an expiry.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc

from authz._pb import approvals_pb2 as pb
from authz._pb import approvals_pb2_grpc as pbg
from authz._pb import authz_pb2
from authz.server.callers import is_loopback_peer
from authz.server.malformed import add_guarded
from authz.state import FailedPrecondition, InvalidArgument, NotFound, SelfApproval, StateError, Unavailable
from authz.tokens.caller import caller_identity
from authz.tokens.verify import agent_entity, agent_uid

log = logging.getLogger("authz.server")

API = "approvals"
SERVICE = "authz.v1.Approvals"
APPROVE = {"type": "Action", "id": "authz::Approve"}
REJECT = {"type": "Action", "id": "authz::Reject"}
MAX_LIMIT = 1000
MAX_REASON_CHARS = 1024
WATCH_POLL_S = 0.1
UPKEEP_S = 2.0
_STATUS = ((NotFound, grpc.StatusCode.NOT_FOUND), (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
           (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT), (SelfApproval, grpc.StatusCode.PERMISSION_DENIED),
           (Unavailable, grpc.StatusCode.UNAVAILABLE))
# A change-feed entry's approval state -> the change it reports ("created" for a pending one).
_CHANGE = {"pending": "created", "approved": "approved", "rejected": "rejected", "expired": "expired", "used": "used"}


def approval_pb(a) -> pb.Approval:
    return pb.Approval(
        id=a.id, kind=a.kind, queue=a.queue, task=a.task, chain=list(a.chain),
        principal=authz_pb2.EntityUid(**a.principal), action=authz_pb2.EntityUid(**a.action),
        resource=authz_pb2.EntityUid(**a.resource), digest=a.digest, policies=list(a.policies), state=a.state,
        approver=a.approver, reason=a.reason, requested_at=a.requested_at, expires_at=a.expires_at,
        decided_at=a.decided_at, grant_expires_at=a.grant_expires_at, used_at=a.used_at)


def decision_request(approver: str, action: dict, approval, reason: str | None = None) -> dict:
    """The Cedar request of `approver` approving or rejecting `approval`."""
    ctx = {"queue": approval.queue, "task": approval.task, "kind": approval.kind,
           "chain": [agent_entity(a) for a in approval.chain],
           "principal": {"__entity": dict(approval.principal)}, "action": {"__entity": dict(approval.action)},
           "resource": {"__entity": dict(approval.resource)}}
    if reason is not None:
        ctx["reason"] = reason
    return {"principal": agent_uid(approver), "action": action, "resource": {"type": "Approval", "id": approval.id},
            "context": ctx}


class ApprovalsServicer(pbg.ApprovalsServicer):
    """authz.v1.Approvals over a worker's TaskState (its store and token revoker) and Decider."""

    def __init__(self, task_state, decider, development_mode: bool, draining=lambda: False, clock=time.time):
        """`draining()`: true once the worker drains (Watch streams then end, so the drain need not wait)."""
        self.store, self.revoker = task_state.store, task_state.revoker
        self.decider, self.development_mode, self.draining, self.clock = decider, development_mode, draining, clock
        self._upkeep = None

    def add_to_server(self, server) -> None:
        """Register on `server` (malformed requests answered INVALID_ARGUMENT) and start the upkeep."""
        add_guarded(pbg.add_ApprovalsServicer_to_server, self, server)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside a worker's loop (tests): no upkeep
            return
        self._upkeep = loop.create_task(self.upkeep())

    # -- helpers ---------------------------------------------------------------------------------

    async def _fail(self, context, err: StateError):
        for kind, status in _STATUS:
            if isinstance(err, kind):
                code = "state_unavailable" if status == grpc.StatusCode.UNAVAILABLE else err.code
                await context.abort(status, f"{code}: {err}")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal_error: {err}")

    async def _loopback_only(self, context) -> None:
        if self.development_mode and not is_loopback_peer(context.peer()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "unauthenticated: development mode (no identity configured) takes approvals calls "
                                "from loopback peers only; configure [[identity.jwt]] or [identity.mtls] "
                                "(docs/identity.md)")

    async def _reader(self, context) -> None:
        """Reading needs a verified caller (development mode: a loopback peer)."""
        await self._loopback_only(context)
        if not self.development_mode and caller_identity(context) is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "unauthenticated: no verified caller identity (mTLS certificate or bearer token)")

    async def _approver(self, context) -> str:
        await self._loopback_only(context)
        caller = caller_identity(context)
        if caller is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "unauthenticated: no caller identity (mTLS certificate, bearer token, or in "
                                "development mode `x-authz-caller`)")
        return caller

    def _revoke_task(self, approval) -> None:
        if approval.on_reject != "revoke_task" or approval.state not in ("rejected", "expired") \
                or approval.reason == "grant expired" or self.revoker is None:
            return
        try:
            self.revoker("task", approval.task)
        except Exception:
            log.exception("revoking the tokens of task `%s` (approval %s) failed", approval.task, approval.id)
        else:
            log.warning("task `%s` revoked: approval %s %s", approval.task, approval.id, approval.state)

    async def _decide(self, context, approval_id: str, action: dict, reason: str | None = None):
        """The approval, after the caller's Cedar decision allowed `action` on it (else the call is aborted)."""
        caller = await self._approver(context)
        try:
            approval = self.store.get_approval(approval_id, self.clock())
        except StateError as e:
            await self._fail(context, e)
        if approval.state != "pending":
            self._revoke_task(approval)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"failed_precondition: approval `{approval_id}` is {approval.state}, not pending")
        o = self.decider.decide([decision_request(caller, action, approval, reason)], API)[0]
        if not o.allowed:
            status = grpc.StatusCode.UNAVAILABLE if o.code in ("index_unavailable", "internal_error") \
                else grpc.StatusCode.PERMISSION_DENIED
            await context.abort(status, f"{o.reason}: `{caller}` may not {action['id'][len('authz::'):].lower()} "
                                        f"approval `{approval_id}` (decision {o.decision_id})")
        return caller, o.decision_id

    # -- RPCs ------------------------------------------------------------------------------------

    async def List(self, request, context):  # noqa: N802 - gRPC method name
        await self._reader(context)
        limit = request.limit or MAX_LIMIT
        if limit > MAX_LIMIT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid_argument: limit is at most {MAX_LIMIT}")
        try:
            found = self.store.list_approvals(self.clock(), state=request.state or None, queue=request.queue or None,
                                              task=request.task or None, limit=limit)
        except StateError as e:
            await self._fail(context, e)
        return pb.ApprovalsListResponse(approvals=[approval_pb(a) for a in found])

    async def Get(self, request, context):  # noqa: N802 - gRPC method name
        await self._reader(context)
        try:
            approval = self.store.get_approval(request.id, self.clock())
        except StateError as e:
            await self._fail(context, e)
        return pb.ApprovalsGetResponse(approval=approval_pb(approval))

    async def Approve(self, request, context):  # noqa: N802 - gRPC method name
        reason = request.reason.strip()
        if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"invalid_argument: a reason is printable and at most {MAX_REASON_CHARS} characters")
        caller, decision_id = await self._decide(context, request.id, APPROVE, reason)
        try:
            approval = self.store.approve(request.id, caller, self.clock())
        except StateError as e:
            if isinstance(e, FailedPrecondition):
                self._after_expiry(request.id)
            await self._fail(context, e)
        log.warning("approval %s (task `%s`, queue `%s`) approved by %s (decision %s): %s", approval.id,
                    approval.task, approval.queue, caller, decision_id, reason or "no reason given")
        return pb.ApprovalsApproveResponse(approval=approval_pb(approval))

    async def Reject(self, request, context):  # noqa: N802 - gRPC method name
        reason = request.reason.strip()
        if not reason or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"invalid_argument: a reject needs a printable reason of 1 to {MAX_REASON_CHARS} "
                                "characters")
        caller, decision_id = await self._decide(context, request.id, REJECT, reason)
        try:
            approval = self.store.reject(request.id, caller, reason, self.clock())
        except StateError as e:
            if isinstance(e, FailedPrecondition):
                self._after_expiry(request.id)
            await self._fail(context, e)
        log.warning("approval %s (task `%s`, queue `%s`) rejected by %s (decision %s): %s", approval.id,
                    approval.task, approval.queue, caller, decision_id, reason)
        self._revoke_task(approval)
        return pb.ApprovalsRejectResponse(approval=approval_pb(approval))

    async def Watch(self, request, context):  # noqa: N802 - gRPC method name
        await self._reader(context)
        queue = request.queue or None
        try:
            seq = self.store.sizes()["changes"]
        except StateError as e:
            await self._fail(context, e)
        await context.send_initial_metadata(())  # the client knows every later change will reach it
        while not self.draining():
            try:
                changes = self.store.changes_since(seq)
                if changes.gap:  # changes were dropped: start again from what stands now
                    seq = changes.last
                    for a in reversed(self.store.list_approvals(self.clock(), queue=queue, limit=MAX_LIMIT)):
                        yield pb.ApprovalsWatchResponse(change=_CHANGE[a.state], approval=approval_pb(a))
                    continue
            except StateError as e:
                await self._fail(context, e)
            for _, a in changes.items:
                if queue is None or a.queue == queue:
                    yield pb.ApprovalsWatchResponse(change=_CHANGE[a.state], approval=approval_pb(a))
            seq = changes.last
            if not changes.items:
                await asyncio.sleep(WATCH_POLL_S)  # cancelled when the client goes or the server stops

    # -- upkeep ----------------------------------------------------------------------------------

    def _after_expiry(self, approval_id: str) -> None:
        try:
            self._revoke_task(self.store.get_approval(approval_id, self.clock()))
        except StateError:
            pass

    async def upkeep(self) -> None:
        """Every UPKEEP_S: apply what fell due (expiries), and revoke the tokens of tasks whose approval
        expired with on_reject "revoke_task" (every worker does it; revoking twice is harmless)."""
        seq, failing = None, ""
        while True:
            try:
                self.store.sweep(self.clock())
                if seq is None:
                    seq = self.store.sizes()["changes"]
                changes = self.store.changes_since(seq, MAX_LIMIT)
                for _, a in changes.items:
                    if a.state == "expired":
                        self._revoke_task(a)
                seq, failing = changes.last, ""
            except StateError as e:
                if str(e) != failing:  # once per distinct failure, not every UPKEEP_S
                    failing = str(e)
                    log.warning("approvals upkeep: %s", e)
            except Exception:
                log.exception("approvals upkeep failed")
            await asyncio.sleep(UPKEEP_S)
