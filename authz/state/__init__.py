"""Task state, approvals, grants and revocations behind one `Store` boundary: LMDB is the embedded backend
(lmdb_store.py), Redis the one shared by several nodes (redis_store.py, docs/scale-out.md); `open_store`
(open.py) picks the configured one.

Nothing here imports grpc, the server or the HTTP layer, and the engine never imports this package:
the server reads `context.task` / `context.agent` from the store and passes them in as context.

Opening (once per worker process, after fork; the environment is opened lazily and again after a
failure, so a broken store fails stateful decisions closed instead of stopping the server):

    from authz.state import LmdbStore, StateConfig, state_path
    store = LmdbStore(StateConfig(path=state_path(cfg.data_dir), approval_ttl_s=..., grant_ttl_s=...,
                                  on_reject=...))

One stateful decision (a request whose token carries a task; requests without a task never touch the
store). Everything between begin and commit runs without awaiting: the LMDB backend holds the host's
write lock for it.

    def step(batch):
        txn = batch.task(task_id, agent_id)          # agent_id: the acting principal's id
        if txn.revoked:       txn.denied(); return deny("task_revoked")
        if txn.suspended_by:  txn.denied(); return deny("task_suspended")   # the pending approval's id
        context = {**request_context, **txn.view()}  # {"task": …, "agent": …}: state before this call
        d = engine.check(principal, action, resource, context)
        if <every satisfied forbid carries @approval and a permit is satisfied>:
            digest = request_digest(principal, action, resource, request_context)
            grant = txn.consume_grant(digest)        # single use; log grant.approval_id, grant.approver
            if grant:  txn.allowed(resource, labels, cost); return allow(grant)
            a = txn.request_approval(queue, chain, principal, action, resource, digest, policy_ids)
            txn.denied(); return approval_required(a.id, a.queue)       # the task is now suspended
        if d.allowed: txn.allowed(resource, labels, cost)  # labels: resource `labels` + permits' @labels
        else:         txn.denied()                         # tripwires: txn.revoke_task(), or request_approval(
        return d                                           #   kind="quarantine", on_reject="revoke_task")
    try:
        outcome = store.transact(time.time(), step)        # commits; retries on Conflict (networked backends)
    except Unavailable:                                    # Full included: fail closed
        outcome = deny("state_unavailable")
    except StateError as err:                              # InvalidArgument (a bad id, label or cost), ...
        outcome = deny(err.code)
`step` may run more than once (Conflict): it only decides and records; log and answer after transact.
Never answer an allow before the commit returned: a failed commit (disk full) wrote nothing, and the
decision is a deny. BatchCheck: one `transact` whose `step` walks every request of the batch (calls of
one task see each other's updates, in request order); a failure denies every allow of the batch.
`store.begin(task, agent, now)` is the one-call form (`txn.commit_allowed(...)` / `txn.commit_denied()`).
`chain`: the identities of the call's delegation chain (the token's subject and every actor), in the
form the server will also give approvers; `labels`: strings; `resource`: (type, id) or {"type", "id"}.

Approvals API (authz.v1.Approvals, the console, the CLI): `store.list_approvals(now, state=, queue=,
task=, limit=)`, `get_approval(id, now)`, `approve(id, approver, now)` (the server first makes its Cedar
`authz::Approve` decision; the store refuses the call's own delegation chain: SelfApproval),
`reject(id, approver, reason, now)`. Watch: each stream remembers a sequence number and polls
`changes_since(seq)` (a read transaction, cheap) every ~100 ms; `gap` means re-list. Upkeep: every
worker may call `store.sweep(time.time())` every few seconds (expiries, idle tasks, retention); each
decision also applies a few due items first. A rejected or expired approval with on_reject
"revoke_task" leaves the task revoked in the store: the server also revokes the task's tokens.
`store.sizes()` gives the records stored, for metrics.

Revocations (revocations.py): `store.revocations` is the deployment's revocation set of token ids,
tasks and agents (the tokens layer's Verifier and Revoke use it): `generation()` one cheap read,
`current()` a snapshot re-read only when the generation moved, `revoke(...)` with owner quotas and
expiry, `lift(kind, value)`. LMDB keeps it in the policy index's environment (`index_path`, where it
has always been) or, without one, in the state environment; Redis under the deployment's key prefix.

Errors (errors.py): InvalidArgument, NotFound, FailedPrecondition, SelfApproval, Unavailable, Full.
docs/tasks.md describes the model, the windows and their error bound, and the approval lifecycle.
"""
from authz.state.approvals import Approval, request_digest
from authz.state.config import StateConfig, state_path
from authz.state.errors import (Conflict, FailedPrecondition, Full, InvalidArgument, NotFound, SelfApproval,
                                StateError, Unavailable)
from authz.state.lmdb_store import LmdbStore
from authz.state.revocations import (RevocationError, RevocationFullError, RevocationQuotaError, Revocations,
                                     RevocationSet)
from authz.state.store import Batch, Changes, Grant, Store, TaskTxn

__all__ = ["Approval", "Batch", "Changes", "Conflict", "FailedPrecondition", "Full", "Grant", "InvalidArgument",
           "LmdbStore", "NotFound", "RevocationError", "RevocationFullError", "RevocationQuotaError", "RevocationSet",
           "Revocations", "SelfApproval", "StateConfig", "StateError", "Store", "TaskTxn", "Unavailable",
           "request_digest", "state_path"]
