"""Processes: a store inherited across fork opens its own environment in the child (LMDB forbids using the
parent's), and a reader killed with SIGKILL does not keep its slot once the store is opened again."""
import multiprocessing
import os
import signal

from statekit import T0, call, make_store


def _decide_in_child(store, conn):
    """Runs in a forked child with the parent's LmdbStore object."""
    try:
        call(store, T0, task="t1")
        conn.send(store.task_view("t1", T0)["calls"])
    except Exception as err:
        conn.send(repr(err))


def test_a_store_inherited_across_fork_works_in_the_child_and_the_parent(store):
    call(store, T0, task="t1")
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_decide_in_child, args=(store, child))
    p.start()
    assert parent.poll(30), "the child did not answer"
    assert parent.recv() == 2
    p.join(10)
    assert p.exitcode == 0
    call(store, T0, task="t1")
    assert store.task_view("t1", T0)["calls"] == 3


def _hold_a_reader(path, conn, read):
    """Opens the store in a fresh process (with a read transaction open when `read`) and waits."""
    store = make_store(path)
    env, _ = store._environment()
    txn = env.begin() if read else None
    if txn is not None:
        txn.get(b"format")
    conn.send(os.getpid())
    conn.recv()


def test_a_killed_readers_slot_is_cleared_when_another_worker_opens_the_store(tmp_path):
    """Another worker keeps the store open (so LMDB does not reset its reader table): the killed
    reader's slot stays until a process opening the store clears it."""
    path = str(tmp_path / "state")
    make_store(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for read in (False, True):  # a worker that stays, and a reader that is killed
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_hold_a_reader, args=(path, child, read))
        p.start()
        assert parent.poll(60), "a helper process did not start"
        procs.append((p, parent, parent.recv()))
    (holder, holder_conn, _), (reader, _, reader_pid) = procs
    try:
        os.kill(reader_pid, signal.SIGKILL)
        reader.join(10)
        store = make_store(path)
        env, _ = store._environment()
        assert f"{reader_pid} " not in env.readers()
        call(store, T0)
        store.close()
    finally:
        holder_conn.send("stop")
        holder.join(10)
        if holder.is_alive():
            holder.kill()
