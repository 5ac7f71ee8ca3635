"""Approval records, the request digest they are bound to, and their lifecycle rules. Pure (no storage).

Lifecycle:  pending --approve--> approved --first identical call--> used
               |                    `--grant_ttl_s passes--------> expired (reason "grant expired")
               |--reject----------> rejected
               `--ttl_s passes----> expired (reason "expired"; it acts as a reject)
A pending approval suspends its task; approving, rejecting or expiry ends the suspension. A reject or
expiry revokes the task instead when the approval's `on_reject` is "revoke_task". `kind` "call" grants
the approved call once (bound to its digest and task); "quarantine" (a tripwire) only resumes the task.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets

from authz.state.errors import FailedPrecondition, InvalidArgument, SelfApproval, Unavailable

STATES = ("pending", "approved", "rejected", "expired", "used")
KINDS = ("call", "quarantine")
_ID = re.compile(r"[0-9a-f]{32}\Z")
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
STATE_KEYS = ("task", "agent")  # context keys the server adds from the store: not part of a request's digest


def new_id() -> str:
    """128 random bits, hex: unguessable."""
    return secrets.token_hex(16)


def check_id(approval_id) -> str:
    """A well-formed approval id; InvalidArgument otherwise (a well-formed unknown id is NotFound later)."""
    if type(approval_id) is not str or not _ID.match(approval_id):
        raise InvalidArgument("an approval id is 32 lower-case hex digits")
    return approval_id


def check_digest(digest) -> str:
    if type(digest) is not str or not _DIGEST.match(digest):
        raise InvalidArgument("a request digest is 64 lower-case hex digits (SHA-256)")
    return digest


def _uid(uid) -> dict:
    if isinstance(uid, dict) and set(uid) == {"type", "id"}:
        return {"type": uid["type"], "id": uid["id"]}
    if isinstance(uid, tuple) and len(uid) == 2:
        return {"type": uid[0], "id": uid[1]}
    raise InvalidArgument("principal, action and resource must be {\"type\": …, \"id\": …}")


def request_digest(principal, action, resource, context: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of a request: {"action", "context", "principal", "resource"},
    keys sorted at every level, no spaces, UTF-8, uids as {"id", "type"}. `context` is the request's
    context as decided (MCP arguments included) without the keys the store adds (`task`, `agent`):
    they change with every call, and the retry of an approved call must match it byte for byte."""
    if not isinstance(context, dict):
        raise InvalidArgument("context must be a record")
    body = {"principal": _uid(principal), "action": _uid(action), "resource": _uid(resource),
            "context": {k: v for k, v in context.items() if k not in STATE_KEYS}}
    try:
        text = _canonical(body)
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"the request cannot be digested: {err}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass
class Approval:
    id: str
    kind: str
    queue: str
    task: str
    chain: list
    principal: dict
    action: dict
    resource: dict
    digest: str
    policies: list
    on_reject: str
    requested_at: float
    expires_at: float
    state: str = "pending"
    approver: str = ""
    reason: str = ""
    decided_at: float = 0.0
    grant_expires_at: float = 0.0
    used_at: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def effective(self, now: float) -> "Approval":
        """As it stands at `now`: a pending approval or an unused grant past its time reads as expired
        (the store writes that at its next sweep or when the task next decides)."""
        if self.state == "pending" and now >= self.expires_at:
            return dataclasses.replace(self, state="expired", reason="expired", decided_at=self.expires_at)
        if self.state == "approved" and self.kind == "call" and now >= self.grant_expires_at:
            return dataclasses.replace(self, state="expired", reason="grant expired")
        return self

    def self_approval(self, approver: str) -> bool:
        """Whether `approver` is in the call's delegation chain or is its principal's id."""
        return approver in self.chain or approver == self.principal["id"]

    def approve(self, approver: str, now: float, grant_ttl_s: int) -> None:
        """pending -> approved. FailedPrecondition if not pending; SelfApproval if in the chain."""
        self._require_pending(now)
        if self.self_approval(approver):
            raise SelfApproval(f"`{approver}` is in the delegation chain of approval `{self.id}` and cannot approve it")
        self.state, self.approver, self.decided_at = "approved", approver, now
        if self.kind == "call":
            self.grant_expires_at = now + grant_ttl_s

    def reject(self, approver: str, reason: str, now: float) -> None:
        """pending -> rejected. FailedPrecondition if not pending."""
        self._require_pending(now)
        self.state, self.approver, self.reason, self.decided_at = "rejected", approver, reason, now

    def expire(self, now: float) -> None:
        """pending -> expired (it acts as a reject), or approved -> expired (its grant lapsed unused)."""
        self.reason = "expired" if self.state == "pending" else "grant expired"
        if self.state == "pending":
            self.decided_at = now
        self.state = "expired"

    def use(self, now: float) -> None:
        self.state, self.used_at = "used", now

    def _require_pending(self, now: float) -> None:
        if self.state == "pending" and now >= self.expires_at:
            raise FailedPrecondition(f"approval `{self.id}` expired")
        if self.state != "pending":
            raise FailedPrecondition(f"approval `{self.id}` is {self.state}, not pending")

    def grant_live(self, now: float) -> bool:
        return self.state == "approved" and self.kind == "call" and now < self.grant_expires_at

    def settled_at(self) -> float:
        """When it stopped mattering to decisions (its retention counts from there), 0 while it matters."""
        if self.state in ("rejected", "used") or (self.state == "expired" and self.reason == "expired"):
            return max(self.decided_at, self.used_at)
        if self.state == "expired":
            return self.grant_expires_at
        if self.state == "approved" and self.kind == "quarantine":
            return self.decided_at
        return 0.0


_FIELDS = tuple(f.name for f in dataclasses.fields(Approval))
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_decode = json.JSONDecoder().decode


def encode(approval: Approval) -> bytes:
    return _encode([getattr(approval, name) for name in _FIELDS]).encode("utf-8")


def decode(raw, approval_id: str | None = None) -> Approval:
    """The approval stored as `raw` (stored under `approval_id`, when given); Unavailable if damaged."""
    try:
        approval = Approval(*_decode(bytes(raw).decode("utf-8")))
    except (ValueError, TypeError):
        raise Unavailable(f"a stored approval ({approval_id or 'change feed'}) is damaged") from None
    if ((approval_id is not None and approval.id != approval_id) or approval.state not in STATES
            or approval.kind not in KINDS):
        raise Unavailable(f"a stored approval ({approval_id or 'change feed'}) is damaged")
    return approval
