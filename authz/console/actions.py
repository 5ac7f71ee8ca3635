"""What a console operator does, each a Cedar decision of Operator::"<name>" through the served policies
(the same requests the gRPC APIs make, with the operator as principal), then the same store calls:

  approve / reject   Action::"authz::Approve" / "authz::Reject" on Approval::"<id>" (approvals_api.py's
                     context: queue, task, kind, chain, principal, action, resource, reason); nobody in
                     the call's delegation chain may approve it (the store's SelfApproval)
  revoke             Action::"authz::Revoke" on Task:: / Agent:: / Token::"<value>" (tokens_api.py's
                     context: kind, target, ttl_s)
  lift a revocation  Action::"authz::LiftRevocation" on the same resource
  suspend a task     Action::"authz::SuspendTask" on Task::"<id>": a quarantine approval of the task is opened
                     (the task waits; approving it resumes the task, rejecting it or its expiry revokes it)

A refused decision raises Refused (HTTP 403); a store refusal raises the store's StateError.
"""
from __future__ import annotations

import logging
import time

from authz.server.approvals_api import APPROVE, MAX_REASON_CHARS, REJECT, decision_request
from authz.state import FailedPrecondition, InvalidArgument
from authz.state.approvals import check_id, request_digest
from authz.tokens.revocation import entry_expiry

log = logging.getLogger("authz.console")

OPERATOR = "Operator"
REVOKE = {"type": "Action", "id": "authz::Revoke"}
LIFT = {"type": "Action", "id": "authz::LiftRevocation"}
SUSPEND = {"type": "Action", "id": "authz::SuspendTask"}
API = "console"
RESOURCE_TYPES = {"task": "Task", "agent": "Agent", "token": "Token"}
MAX_VALUE_CHARS = 256


class Refused(Exception):
    """The policies do not permit the operator's action (or it could not be decided)."""

    def __init__(self, message: str, decision_id: str, unavailable: bool = False):
        super().__init__(message)
        self.decision_id, self.unavailable = decision_id, unavailable


def operator_uid(name: str) -> dict:
    return {"type": OPERATOR, "id": name}


def check_reason(reason: str, required: bool) -> str:
    reason = (reason or "").strip()
    if (required and not reason) or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise InvalidArgument(f"a reason is printable and {1 if required else 0} to {MAX_REASON_CHARS} characters")
    return reason


class Actions:
    """The console's actions over a worker's Decider, task-state store and token service."""

    def __init__(self, decider, store, tokens, clock=time.time):
        self.decider, self.store, self.tokens, self.clock = decider, store, tokens, clock

    def _decide(self, operator: str, request: dict, verb: str) -> str:
        o = self.decider.decide([request], API)[0]
        if not o.allowed:
            raise Refused(f"{o.reason}: operator `{operator}` may not {verb} (decision {o.decision_id})",
                          o.decision_id, o.code in ("index_unavailable", "internal_error", "state_unavailable"))
        return o.decision_id

    # -- approvals --------------------------------------------------------------------------------

    def decide_approval(self, operator: str, approval_id: str, approve: bool, reason: str):
        """Approve or reject; returns (approval, decision id)."""
        check_id(approval_id)
        reason = check_reason(reason, required=not approve)
        approval = self.store.get_approval(approval_id, self.clock())
        if approval.state != "pending":
            raise FailedPrecondition(f"approval `{approval_id}` is {approval.state}, not pending")
        request = decision_request(operator, APPROVE if approve else REJECT, approval, reason)
        request["principal"] = operator_uid(operator)
        did = self._decide(operator, request, f"{'approve' if approve else 'reject'} approval `{approval_id}`")
        if approve:
            approval = self.store.approve(approval_id, operator, self.clock())
        else:
            approval = self.store.reject(approval_id, operator, reason, self.clock())
            if approval.on_reject == "revoke_task" and self.tokens is not None:
                self._revoke_entry("task", approval.task, operator, 0)
        log.warning("console: approval %s (task `%s`, queue `%s`) %s by operator %s (decision %s): %s", approval.id,
                    approval.task, approval.queue, approval.state, operator, did, reason or "no reason given")
        return approval, did

    # -- revocations ------------------------------------------------------------------------------

    def _resource(self, kind: str, value: str) -> dict:
        if kind not in RESOURCE_TYPES:
            raise InvalidArgument("kind is task, agent or token")
        if not value or len(value) > MAX_VALUE_CHARS or not value.isprintable():
            raise InvalidArgument(f"the value is 1 to {MAX_VALUE_CHARS} printable characters")
        return {"type": RESOURCE_TYPES[kind], "id": value}

    def _revoke_entry(self, kind: str, value: str, operator: str, ttl_s: int) -> float:
        svc = self.tokens
        expires = entry_expiry(kind, self.clock(), svc.keys.max_ttl_s, svc.cfg.leeway_s, None, ttl_s)
        return svc.revocations.revoke(kind, value, expires, svc.cfg.max_revocations, f"operator:{operator}",
                                      svc.cfg.max_revocations_per_caller)

    def revoke(self, operator: str, kind: str, value: str, ttl_s: int = 0):
        """Revoke a task's, an agent's or a token's tokens; returns (expires_at, decision id)."""
        resource = self._resource(kind, value)
        if type(ttl_s) is not int or ttl_s < 0:
            raise InvalidArgument("ttl_s is a non-negative integer")
        did = self._decide(operator, {"principal": operator_uid(operator), "action": REVOKE, "resource": resource,
                                      "context": {"kind": kind, "target": value, "ttl_s": ttl_s}},
                           f"revoke {kind} `{value}`")
        expires = self._revoke_entry(kind, value, operator, ttl_s)
        log.warning("console: %s `%s` revoked by operator %s (decision %s)", kind, value, operator, did)
        return expires, did

    def lift(self, operator: str, kind: str, value: str):
        """Remove a revocation early; returns (whether there was one, decision id)."""
        resource = self._resource(kind, value)
        did = self._decide(operator, {"principal": operator_uid(operator), "action": LIFT, "resource": resource,
                                      "context": {"kind": kind, "target": value}},
                           f"lift the revocation of {kind} `{value}`")
        there = self.tokens.revocations.lift(kind, value)
        log.warning("console: the revocation of %s `%s` lifted by operator %s (decision %s)%s", kind, value,
                    operator, did, "" if there else ": there was none")
        return there, did

    def entries(self) -> list:
        return self.tokens.revocations.entries()

    # -- tasks ------------------------------------------------------------------------------------

    def suspend(self, operator: str, task: str, reason: str):
        """Suspend a task: a quarantine approval opened by the operator; returns (approval, decision id)."""
        reason = check_reason(reason, required=True)
        resource = self._resource("task", task)
        did = self._decide(operator, {"principal": operator_uid(operator), "action": SUSPEND, "resource": resource,
                                      "context": {"task": task, "reason": reason}}, f"suspend task `{task}`")

        def work(batch):
            txn = batch.task(task, task)
            if txn.revoked or txn.suspended_by:
                raise FailedPrecondition(f"task `{task}` is {'revoked' if txn.revoked else 'suspended'} already")
            # The approval's principal is the task itself: any operator the policies let approve the
            # quarantine queue may resume it, the one who suspended it included (named in `policies`).
            return txn.request_approval("quarantine", [], resource, SUSPEND, resource,
                                        request_digest(resource, SUSPEND, resource, {"reason": reason}),
                                        [f"console:{operator}"], kind="quarantine",
                                        on_reject="revoke_task")
        approval = self.store.transact(self.clock(), work)
        log.warning("console: task `%s` suspended by operator %s (decision %s, approval %s): %s", task, operator, did,
                    approval.id, reason)
        return approval, did
