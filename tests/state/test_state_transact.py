"""Store.transact: the form every backend shares. Its work is committed once; an error writes nothing; a
Conflict (what a networked backend's commit reports when the state moved) runs the work again on fresh
state, at most `attempts` times, then Unavailable."""
import pytest
from statekit import T0

from authz.state import Conflict, LmdbStore, StateConfig, Unavailable


class ConflictingStore(LmdbStore):
    """A real LMDB store whose first `conflicts` commits report a Conflict and write nothing, as a
    compare-and-set backend's would when another node changed the task first."""

    def __init__(self, config, conflicts):
        super().__init__(config)
        self.conflicts = conflicts

    def _begin(self, now):
        batch = super()._begin(now)
        commit = batch._commit

        def conflicting_commit():
            if self.conflicts:
                self.conflicts -= 1
                batch._abort()
                raise Conflict("the task changed since it was read")
            commit()
        batch._commit = conflicting_commit
        return batch


def limited(limit, seen):
    def work(batch):
        txn = batch.task("t1", "a1")
        view = txn.view()
        seen.append(view["task"]["calls"])
        if view["task"]["calls"] < limit:
            txn.allowed(("Tool", "x"))
            return True
        txn.denied()
        return False
    return work


def test_transact_commits_its_work_once(tmp_path):
    store = LmdbStore(StateConfig(path=str(tmp_path / "s")))
    seen = []
    assert [store.transact(T0, limited(2, seen)) for _ in range(3)] == [True, True, False]
    assert seen == [0, 1, 2] and store.task_view("t1", T0)["denies"] == 1
    store.close()


def test_an_error_in_the_work_writes_nothing(tmp_path):
    store = LmdbStore(StateConfig(path=str(tmp_path / "s")))

    def failing(batch):
        batch.task("t1", "a1").allowed(("Tool", "x"))
        raise RuntimeError("the engine failed")
    with pytest.raises(RuntimeError):
        store.transact(T0, failing)
    assert store.task_view("t1", T0) is None
    store.close()


def test_a_conflict_runs_the_work_again_and_commits_once(tmp_path):
    store = ConflictingStore(StateConfig(path=str(tmp_path / "s")), conflicts=3)
    seen = []
    assert store.transact(T0, limited(5, seen)) is True
    assert seen == [0, 0, 0, 0]
    assert store.task_view("t1", T0)["calls"] == 1
    store.close()


def test_conflicts_past_the_attempts_are_unavailable_and_write_nothing(tmp_path):
    store = ConflictingStore(StateConfig(path=str(tmp_path / "s")), conflicts=10)
    seen = []
    with pytest.raises(Unavailable, match="kept changing during 4 attempts"):
        store.transact(T0, limited(5, seen))
    assert len(seen) == 4 and store.task_view("t1", T0) is None
    store.close()
