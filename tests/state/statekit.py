"""Helpers for the state store tests: a store on a real LMDB folder, requests, approvals, a small file system."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tokens"))  # tokenkit.py

from tokenkit import fill, mount_small_fs, unmount  # noqa: E402,F401  (re-exported for the fault tests)

from authz.state import StateConfig, request_digest  # noqa: E402

T0 = 1_700_000_000.0  # a fixed "now": every test injects its times
AGENT = {"type": "Agent", "id": "a1"}
PAY = {"type": "Action", "id": "pay"}
TOOL = {"type": "Tool", "id": "payments.send"}


def make_store(path, **cfg):
    """A store on `path` (LMDB), or on Redis when cfg has `redis` (RedisSettings)."""
    from authz.state.open import open_store
    return open_store(StateConfig(path=str(path), **cfg))


def digest(amount=5000, resource=TOOL):
    return request_digest(AGENT, PAY, resource, {"amount": amount})


def ask(store, now, task="t1", amount=5000, queue="payments", chain=("a1",), **kw):
    """A call that needs approval: opens one (suspending the task) and records the deny; returns it."""
    with store.begin(task, "a1", now) as txn:
        approval = txn.request_approval(queue, list(chain), AGENT, PAY, TOOL, digest(amount), ["pay-approval"], **kw)
        txn.commit_denied()
    return approval


def call(store, now, task="t1", agent="a1", resource=("Tool", "x"), labels=(), cost=0):
    """One allowed call recorded; returns the view it was decided on."""
    with store.begin(task, agent, now) as txn:
        view = txn.view()
        txn.commit_allowed(resource, labels, cost)
    return view
