"""The errors of the state store, each with a stable code (what the server answers or logs).

How the server maps them (coming with the integration):
  InvalidArgument   -> INVALID_ARGUMENT (a decision: deny `invalid_argument`)
  NotFound          -> NOT_FOUND
  FailedPrecondition-> FAILED_PRECONDITION (approving an expired or decided approval)
  SelfApproval      -> PERMISSION_DENIED, reason `self_approval`
  Unavailable, Full -> a decision is denied `state_unavailable` (fail closed); an API call UNAVAILABLE
  Conflict          -> never seen by callers of Store.transact (it retries); see authz/state/store.py
"""
from authz.errors import AuthzError


class StateError(AuthzError):
    """Base of every state store error."""

    code = "state_error"


class InvalidArgument(StateError):
    """An id, label, cost, uid or filter is malformed or over its bound; nothing was changed."""

    code = "invalid_argument"


class NotFound(StateError):
    """No approval with that id (never created, or dropped after its retention)."""

    code = "not_found"


class FailedPrecondition(StateError):
    """The approval is not pending any more (expired, approved, rejected, used), or the task is suspended."""

    code = "failed_precondition"


class SelfApproval(StateError):
    """The approver is in the delegation chain of the call waiting for approval."""

    code = "self_approval"


class Unavailable(StateError):
    """The store cannot be read or written (LMDB error, disk full, damaged record): fail closed."""

    code = "state_unavailable"


class Full(Unavailable):
    """A bound of the store is reached (tasks, agents, approvals, labels of a task, map size)."""

    code = "state_full"


class Conflict(StateError):
    """A networked backend's commit found the state changed since it was read: decide again.

    The LMDB backend never raises it (it holds the write lock across the decision)."""

    code = "state_conflict"
