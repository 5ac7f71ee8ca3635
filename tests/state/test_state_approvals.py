"""Approvals: suspend -> approve -> one identical call -> the next needs a new approval; digests; expiry;
reject with both on_reject settings; self-approval; errors; listing; the change feed; retention."""
import pytest
from statekit import AGENT, PAY, T0, TOOL, ask, digest, make_store

from authz.state import FailedPrecondition, Full, InvalidArgument, NotFound, SelfApproval, request_digest


def retry(store, now, amount=5000, task="t1"):
    """The agent retries the call: a grant for its digest is used, or a new approval is opened."""
    with store.begin(task, "a1", now) as txn:
        if txn.suspended_by or txn.revoked:
            txn.commit_denied()
            return "suspended" if txn.suspended_by else "revoked"
        grant = txn.consume_grant(digest(amount))
        if grant:
            txn.commit_allowed(TOOL, (), amount)
            return grant
        txn.request_approval("payments", ["a1"], AGENT, PAY, TOOL, digest(amount), ["pay-approval"])
        txn.commit_denied()
        return "approval_required"


def test_the_full_cycle_grants_exactly_one_identical_call(store):
    a = ask(store, T0)
    assert (a.state, a.queue, a.task, a.chain, a.policies) == ("pending", "payments", "t1", ["a1"], ["pay-approval"])
    assert a.principal == AGENT and a.action == PAY and a.resource == TOOL and a.digest == digest()
    assert a.expires_at == T0 + 900 and len(a.id) == 32
    assert retry(store, T0 + 1) == "suspended"              # every call of the task is refused meanwhile
    with store.begin("t1", "other-agent", T0 + 1) as txn:
        assert txn.suspended_by == a.id
    approved = store.approve(a.id, "alice", T0 + 10)
    assert (approved.state, approved.approver, approved.grant_expires_at) == ("approved", "alice", T0 + 310)
    grant = retry(store, T0 + 20)
    assert (grant.approval_id, grant.approver) == (a.id, "alice")
    assert store.get_approval(a.id, T0 + 21).state == "used"
    assert retry(store, T0 + 22) == "approval_required"     # the next identical call needs a new approval
    view = store.task_view("t1", T0 + 22)
    assert view["calls"] == 1 and view["spend"] == 5000 and view["denies"] == 3


def test_a_call_differing_in_its_digest_gets_nothing_from_the_grant(store):
    a = ask(store, T0)
    store.approve(a.id, "alice", T0 + 1)
    assert retry(store, T0 + 2, amount=5001) == "approval_required"
    assert store.get_approval(a.id, T0 + 3).state == "approved"  # still unused: the exact call may use it
    store.approve(store.list_approvals(T0 + 3, state="pending")[0].id, "alice", T0 + 3)
    assert retry(store, T0 + 4).approval_id == a.id
    with store.begin("t2", "a1", T0 + 5) as txn:              # another task has no grant for the digest
        assert txn.consume_grant(digest(5001)) is None


def test_the_digest_covers_every_part_of_the_request_but_not_the_state():
    context = {"amount": 1, "mcp": {"arguments": {"to": "x"}}}
    base = request_digest(AGENT, PAY, TOOL, context)
    assert base == request_digest(("Agent", "a1"), PAY, TOOL, {"mcp": {"arguments": {"to": "x"}}, "amount": 1,
                                                              "task": {"calls": 3}, "agent": {}})
    for other in (request_digest({"type": "Agent", "id": "a2"}, PAY, TOOL, context),
                  request_digest(AGENT, {"type": "Action", "id": "refund"}, TOOL, context),
                  request_digest(AGENT, PAY, {"type": "Tool", "id": "other"}, context),
                  request_digest(AGENT, PAY, TOOL, {"amount": 1, "mcp": {"arguments": {"to": "y"}}}),
                  request_digest(AGENT, PAY, TOOL, {"amount": 1, "mcp": {"arguments": {"to": "x", "cc": ""}}})):
        assert other != base
    with pytest.raises(InvalidArgument, match="cannot be digested"):
        request_digest(AGENT, PAY, TOOL, {"x": float("nan")})


def test_an_unused_grant_expires(store):
    a = ask(store, T0)
    store.approve(a.id, "alice", T0 + 1)
    assert store.get_approval(a.id, T0 + 301).state == "expired"    # as it stands, before any sweep
    assert retry(store, T0 + 301) == "approval_required"
    stored = store.get_approval(a.id, T0 + 301)
    assert (stored.state, stored.reason) == ("expired", "grant expired")


def test_a_pending_approval_expires_as_a_reject_when_the_task_next_decides(store):
    a = ask(store, T0)
    assert retry(store, T0 + 899) == "suspended"
    assert retry(store, T0 + 900) == "approval_required"    # expired first: the task resumed
    expired = store.get_approval(a.id, T0 + 901)
    assert (expired.state, expired.reason, expired.decided_at) == ("expired", "expired", T0 + 900)


def test_sweep_expires_pending_approvals_and_resumes_their_tasks(store):
    a = ask(store, T0)
    b = ask(store, T0, task="t2", on_reject="revoke_task")
    assert store.sweep(T0 + 899) == 0
    assert store.sweep(T0 + 900) >= 2
    assert [store.get_approval(x.id, T0 + 900).state for x in (a, b)] == ["expired", "expired"]
    with store.batch(T0 + 900) as batch:
        t1, t2 = batch.task("t1", "a1"), batch.task("t2", "a1")
        assert (t1.suspended_by, t1.revoked) == (None, False)
        assert (t2.suspended_by, t2.revoked) == (None, True)


@pytest.mark.parametrize("on_reject,revoked", [("resume", False), ("revoke_task", True)])
def test_reject_resumes_or_revokes_the_task(tmp_path, on_reject, revoked):
    store = make_store(tmp_path / "s", on_reject=on_reject)
    a = ask(store, T0)
    rejected = store.reject(a.id, "bob", "too much", T0 + 5)
    assert (rejected.state, rejected.approver, rejected.reason) == ("rejected", "bob", "too much")
    with store.begin("t1", "a1", T0 + 6) as txn:
        assert txn.suspended_by is None and txn.revoked is revoked
        assert txn.consume_grant(digest()) is None           # the call stays denied
    with pytest.raises(FailedPrecondition, match="is rejected, not pending"):
        store.approve(a.id, "alice", T0 + 7)
    store.close()


def test_nobody_in_the_delegation_chain_may_approve(store):
    a = ask(store, T0, chain=("root-user", "planner", "a1"))
    for who in ("root-user", "planner", "a1"):
        with pytest.raises(SelfApproval, match="cannot approve"):
            store.approve(a.id, who, T0 + 1)
    assert store.get_approval(a.id, T0 + 1).state == "pending"
    assert retry(store, T0 + 1) == "suspended"
    assert store.approve(a.id, "security-lead", T0 + 2).state == "approved"


def test_unknown_malformed_expired_and_decided_approvals_are_refused(store):
    with pytest.raises(NotFound):
        store.approve("0" * 32, "alice", T0)
    with pytest.raises(NotFound):
        store.get_approval("f" * 32, T0)
    with pytest.raises(NotFound):
        store.reject("0" * 32, "alice", "no", T0)
    for bad in ("x" * 33, "A" * 32, "", 5, "0" * 31):
        with pytest.raises(InvalidArgument, match="32 lower-case hex"):
            store.approve(bad, "alice", T0)
    a = ask(store, T0)
    with pytest.raises(FailedPrecondition, match="expired"):
        store.approve(a.id, "alice", T0 + 900)
    assert store.get_approval(a.id, T0 + 900).state == "expired"
    with pytest.raises(FailedPrecondition, match="expired"):
        store.reject(a.id, "alice", "late", T0 + 901)
    b = ask(store, T0 + 901)
    store.approve(b.id, "alice", T0 + 902)
    with pytest.raises(FailedPrecondition, match="is approved, not pending"):
        store.approve(b.id, "carol", T0 + 903)
    with pytest.raises(InvalidArgument, match="approver is longer"):
        store.approve(b.id, "x" * 1025, T0 + 903)


def test_a_quarantine_approval_resumes_on_approve_and_revokes_on_reject(store):
    with store.begin("t1", "a1", T0) as txn:
        q = txn.request_approval("quarantine", ["a1"], AGENT, PAY, TOOL, digest(), ["tripwire"], kind="quarantine",
                                 on_reject="revoke_task")
        txn.commit_denied()
    assert store.approve(q.id, "alice", T0 + 1).state == "approved"
    with store.begin("t1", "a1", T0 + 2) as txn:
        assert txn.suspended_by is None and txn.consume_grant(digest()) is None  # it grants no call
        txn.commit_denied()
    with store.begin("t1", "a1", T0 + 3) as txn:
        q2 = txn.request_approval("quarantine", ["a1"], AGENT, PAY, TOOL, digest(), ["tripwire"], kind="quarantine",
                                  on_reject="revoke_task")
        txn.commit_denied()
    store.reject(q2.id, "alice", "exfiltration", T0 + 4)
    with store.begin("t1", "a1", T0 + 5) as txn:
        assert txn.revoked


def test_a_suspended_task_cannot_open_a_second_approval(store):
    ask(store, T0)
    with pytest.raises(FailedPrecondition, match="suspended"):
        ask(store, T0 + 1)
    assert len(store.list_approvals(T0 + 1)) == 1


def test_list_filters_newest_first(store):
    a = ask(store, T0, task="t1")
    b = ask(store, T0 + 1, task="t2", queue="ops")
    c = ask(store, T0 + 2, task="t3")
    store.reject(c.id, "bob", "", T0 + 3)
    assert [x.id for x in store.list_approvals(T0 + 3)] == [c.id, b.id, a.id]
    assert [x.id for x in store.list_approvals(T0 + 3, state="pending")] == [b.id, a.id]
    assert [x.id for x in store.list_approvals(T0 + 3, queue="ops")] == [b.id]
    assert [x.id for x in store.list_approvals(T0 + 3, task="t1")] == [a.id]
    assert [x.id for x in store.list_approvals(T0 + 3, limit=1)] == [c.id]
    assert [x.id for x in store.list_approvals(T0 + 900, state="expired")] == [a.id]  # as it stands
    for bad in (dict(state="open"), dict(limit=0), dict(limit=1001), dict(queue="q" * 1025), dict(task="")):
        with pytest.raises(InvalidArgument):
            store.list_approvals(T0, **bad)


def test_the_change_feed_streams_every_change_in_order(tmp_path):
    store = make_store(tmp_path / "s", feed_keep=4)
    start = store.changes_since(0)
    assert start.items == [] and start.last == 0 and not start.gap
    a = ask(store, T0)
    store.approve(a.id, "alice", T0 + 1)
    retry(store, T0 + 2)
    changes = store.changes_since(0)
    assert [(seq, x.id, x.state) for seq, x in changes.items] == [(1, a.id, "pending"), (2, a.id, "approved"),
                                                                    (3, a.id, "used")]
    assert changes.last == 3 and not changes.gap
    assert store.changes_since(3).items == [] and store.changes_since(3).last == 3
    assert [seq for seq, _ in store.changes_since(1, limit=1).items] == [2]
    for i in range(3):
        ask(store, T0 + 10 + i, task=f"x{i}")
    late = store.changes_since(1)                              # change 2 was pushed out (feed_keep 4)
    assert late.gap and [seq for seq, _ in late.items] == [3, 4, 5, 6]
    assert not store.changes_since(2).gap
    assert store.changes_since(99).gap                         # a number from another store: list again
    store.close()


def test_decided_approvals_are_dropped_after_their_retention(tmp_path):
    store = make_store(tmp_path / "s", approval_keep_s=100)
    a = ask(store, T0)
    store.reject(a.id, "bob", "", T0 + 10)
    assert store.sizes()["approvals"] == 1
    store.sweep(T0 + 109)
    assert store.get_approval(a.id, T0 + 109).state == "rejected"
    store.sweep(T0 + 110)
    with pytest.raises(NotFound):
        store.get_approval(a.id, T0 + 110)
    assert store.sizes()["approvals"] == 0 and store.list_approvals(T0 + 110) == []
    store.close()


def test_the_approvals_bound_is_full_and_frees_up_after_retention(tmp_path):
    store = make_store(tmp_path / "s", max_approvals=2, approval_keep_s=10)
    a = ask(store, T0, task="t1")
    ask(store, T0, task="t2")
    with pytest.raises(Full, match="maximum of 2 approvals"):
        ask(store, T0, task="t3")
    with store.begin("t3", "a1", T0) as txn:
        assert txn.suspended_by is None                        # nothing of the refused call was written
    store.reject(a.id, "bob", "", T0 + 1)
    assert ask(store, T0 + 11, task="t3").state == "pending"   # the decision's batch swept the retention
    store.close()


def test_bad_approval_requests_are_refused(store):
    with store.begin("t1", "a1", T0) as txn:
        for kw, message in ((dict(digest="abc"), "64 lower-case hex"), (dict(chain="a1"), "list of strings"),
                            (dict(chain=["x"] * 17), "more than 16"), (dict(queue=""), "queue must not be empty"),
                            (dict(kind="other"), "kind must be"), (dict(on_reject="ignore"), "on_reject"),
                            (dict(policies=[None]), "must be a string"), (dict(principal="a1"), "principal must be")):
            args = dict(queue="q", chain=["a1"], principal=AGENT, action=PAY, resource=TOOL, digest=digest(),
                        policies=["p"])
            args.update(kw)
            with pytest.raises(InvalidArgument, match=message):
                txn.request_approval(**args)
        assert txn.suspended_by is None


@pytest.mark.parametrize("on_reject", ["resume", "revoke_task"])
def test_task_status_reads_what_a_decision_would_see(store, on_reject):
    """task_status (Tokens Issue/Exchange ask it, read only) agrees with what a decision's batch finds:
    never seen, suspended, expired (resumed or revoked by on_reject), approved, rejected, revoked."""
    def batch_status(now, task="t1"):
        batch = store.batch(now)
        try:
            txn = batch.task(task, "a1")
            return ("revoked", "") if txn.revoked else (("suspended", txn.suspended_by) if txn.suspended_by
                                                         else ("active", ""))
        finally:
            batch.abort()

    assert store.task_status("t1", T0) == ("active", "") == batch_status(T0)
    a = ask(store, T0, on_reject=on_reject)
    for now in (T0 + 1, T0 + 899.9, T0 + 900, T0 + 5000):
        expected = ("suspended", a.id) if now < T0 + 900 else (
            ("revoked", "") if on_reject == "revoke_task" else ("active", ""))
        assert store.task_status("t1", now) == expected == batch_status(now), now
    assert store.get_approval(a.id, T0 + 1).state == "pending"  # reading expired nothing
    b = ask(store, T0, task="t2", on_reject=on_reject)
    store.reject(b.id, "alice", "no", T0 + 1)
    assert store.task_status("t2", T0 + 2) == (("revoked", "") if on_reject == "revoke_task" else ("active", ""))
    c = ask(store, T0, task="t3", on_reject=on_reject)
    store.approve(c.id, "alice", T0 + 1)
    assert store.task_status("t3", T0 + 2) == ("active", "") == batch_status(T0 + 2, "t3")
    with store.begin("t4", "a1", T0) as txn:
        txn.revoke_task()
        txn.commit_denied()
    assert store.task_status("t4", T0 + 1) == ("revoked", "")
    with pytest.raises(InvalidArgument):
        store.task_status("", T0)
