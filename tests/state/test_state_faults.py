"""Real faults fail closed: a full disk, a read-only or unreadable store, a damaged record, a full map, the
store's bounds. A decision is an allow only when its commit returned: never an allow the store lost."""
import subprocess

import lmdb
import pytest
from statekit import T0, call, fill, make_store

from authz.state import Full, StateError, Unavailable


def decide(store, task="t1", limit=1 << 40, resource=("Tool", "x"), now=T0):
    """The server's rule: allow iff calls < limit AND the commit returned; any state error is a deny."""
    try:
        with store.begin(task, "a1", now) as txn:
            if txn.view()["task"]["calls"] >= limit:
                txn.commit_denied()
                return False
            txn.commit_allowed(resource)
            return True
    except StateError:
        return False


def grow(store, n=300, now=T0):
    """One batch writing `n` new tasks with long tool ids (needs new pages)."""
    with store.batch(now) as batch:
        for i in range(n):
            batch.task(f"grow-{i}", "a1").allowed(("Tool", f"{i}-" + "x" * 400))


def test_a_full_disk_denies_writes_nothing_and_recovers_once_freed(small_fs):
    store = make_store(small_fs / "state")
    limit = 3
    assert [decide(store, limit=limit) for _ in range(2)] == [True, True]
    filler = fill(small_fs)
    with pytest.raises(Unavailable, match="No space left on device"):
        grow(store)
    assert store.sizes()["tasks"] == 1
    results = []
    for i in range(40):  # new tasks and big records until the disk refuses them: each refusal a deny
        results.append(decide(store, task=f"new-{i}", resource=("Tool", "y" * 500)))
    assert False in results
    assert store.sizes()["tasks"] == 1 + sum(results)
    more = [decide(store, limit=limit) for _ in range(3)]
    assert store.task_view("t1", T0)["calls"] == 2 + sum(more) <= limit  # every allow committed, none over
    filler.unlink()
    grow(store, 100)                                             # the same store recovers, no reopening
    assert store.sizes()["tasks"] == 101 + sum(results)
    store.close()


def test_a_store_on_a_read_only_file_system_fails_closed_until_writable(small_fs):
    store = make_store(small_fs / "state")
    assert decide(store)
    store.close()  # a file system cannot turn read-only under an open store's files (busy): at a restart
    r = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    try:
        store = make_store(small_fs / "state")
        with pytest.raises(Unavailable, match="Read-only file system"):
            store.batch(T0)
        assert decide(store) is False
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], capture_output=True, timeout=30)
    assert decide(store) is True and store.task_view("t1", T0)["calls"] == 2
    store.close()


def test_an_unreadable_store_is_unavailable_on_every_operation_and_opens_once_repaired(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    store = make_store(path)
    for op in (lambda: store.batch(T0), lambda: store.task_view("t1", T0), lambda: store.list_approvals(T0),
               lambda: store.approve("0" * 32, "alice", T0), lambda: store.changes_since(0),
               lambda: store.sweep(T0), lambda: store.sizes()):
        with pytest.raises(Unavailable, match="cannot open the state store"):
            op()
    assert decide(store) is False
    (path / "data.mdb").unlink()
    (path / "lock.mdb").unlink(missing_ok=True)
    assert decide(store) is True                                  # opened afresh on the next use
    store.close()


def test_a_store_path_that_is_a_file_is_unavailable(tmp_path):
    (tmp_path / "state").write_text("x")
    store = make_store(tmp_path / "state")
    with pytest.raises(Unavailable, match="cannot open the state store"):
        store.batch(T0)
    assert decide(store) is False


def test_a_store_written_by_another_version_is_refused(tmp_path):
    path = tmp_path / "state"
    make_store(path).close()
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"9", db=env.open_db(b"meta", txn=txn))
    env.close()
    store = make_store(path)
    with pytest.raises(Unavailable, match="another version"):
        store.batch(T0)


def test_a_damaged_record_makes_its_task_unavailable_and_others_decide(tmp_path):
    path = tmp_path / "state"
    store = make_store(path)
    assert decide(store, task="t1") and decide(store, task="t2")
    store.close()
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        raw = bytearray(txn.get(b"t1", db=env.open_db(b"tasks", txn=txn)))
        raw[0] = 99  # an unknown format
        txn.put(b"t1", bytes(raw), db=env.open_db(b"tasks", txn=txn))
        txn.put(b"t3", b"\x01short", db=env.open_db(b"tasks", txn=txn))
        raw[0] = 1
        txn.put(b"t4", bytes(raw[:-8]), db=env.open_db(b"tasks", txn=txn))  # a record cut short
    env.close()
    store = make_store(path)
    for task in ("t1", "t3", "t4"):
        with pytest.raises(Unavailable, match=f"task `{task}` is damaged"):
            store.begin(task, "a1", T0)
        assert decide(store, task=task) is False
    assert decide(store, task="t2") is True
    store.close()


def test_a_full_map_is_full_and_writes_nothing(tmp_path):
    store = make_store(tmp_path / "s", map_size=1 << 17)
    assert decide(store)
    with pytest.raises(Full, match="is full"):
        grow(store, 300)
    assert store.sizes()["tasks"] == 1 and decide(store)
    store.close()


def test_the_task_and_agent_bounds_are_full(tmp_path):
    store = make_store(tmp_path / "s", max_tasks=2, max_agents=2)
    assert decide(store, task="t1") and decide(store, task="t2")
    with pytest.raises(Full, match="maximum of 2 tasks"):
        call(store, T0, task="t3")
    assert decide(store, task="t3") is False and decide(store, task="t1") is True
    with pytest.raises(Full, match="maximum of 2 agents"):
        with store.batch(T0) as batch:
            for agent in ("b1", "b2"):
                batch.task("t1", agent).allowed(("Tool", "x"))
    assert store.task_view("t1", T0)["calls"] == 2 and store.sizes() == {"tasks": 2, "agents": 1, "approvals": 0,
                                                                          "changes": 0}
    store.close()
