"""The revocation set behind the Store boundary (`store.revocations`), on every backend: add with expiry and
owner quotas, lift, the generation moving once per change, a snapshot re-read only when it moved."""
import pytest

from authz.state import RevocationFullError, RevocationQuotaError


def test_revoke_lift_and_generation(any_store, now):
    rv = any_store.revocations
    g0 = rv.generation()
    assert rv.revoke("task", "t1", 0, 10, "alice", 5) == 0
    g1 = rv.generation()
    assert g1 > g0  # Redis starts a new set's generation at the time in µs (LMDB: at 1)
    snap = rv.current()
    assert snap.task_revoked("t1", now()) and not snap.task_revoked("t2", now())
    assert rv.current() is snap  # unchanged generation: the same snapshot, not re-read
    assert rv.held_by("alice") == 1
    assert rv.lift("task", "t1") is True and rv.lift("task", "t1") is False
    assert rv.held_by("alice") == 0 and not rv.current().task_revoked("t1", now())
    assert rv.generation() == g1 + 1


def test_expiry_and_lengthening(any_store, now):
    rv = any_store.revocations
    t = now()
    first = rv.revoke("token", "j1", t + 100, 10, "a", 1)
    assert first == int(t + 100) + 1
    g = rv.generation()
    assert rv.revoke("token", "j1", t + 50, 10, "b", 1) == first  # shorter: nothing changes, free
    assert rv.generation() == g and rv.held_by("b") == 0
    assert rv.revoke("token", "j1", t + 200, 10, "b", 1) == int(t + 200) + 1  # lengthened: b's now
    assert (rv.held_by("a"), rv.held_by("b")) == (0, 1)
    assert rv.revoke("agent", "old", t - 1, 10, "a", 1) <= t  # already lapsed: nothing stored
    assert sorted((e[0], e[1]) for e in rv.entries()) == [("token", "j1")]


def test_bounds(any_store):
    rv = any_store.revocations
    for i in range(3):
        rv.revoke("task", f"t{i}", 0, 4, "a", 3)
    with pytest.raises(RevocationQuotaError):
        rv.revoke("task", "t3", 0, 4, "a", 3)
    rv.revoke("task", "t3", 0, 4, "b", 3)
    with pytest.raises(RevocationFullError):
        rv.revoke("task", "t4", 0, 4, "c", 3)
    rv.lift("task", "t0")
    rv.revoke("task", "t4", 0, 4, "c", 3)
    assert len(rv.current()) == 4
