"""Read -> decide -> update is atomic per task across processes and threads: a limit of N admits exactly N,
and for random concurrent interleavings the final state equals a sequential replay of the allowed calls."""
import multiprocessing
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from statekit import T0

from authz.state import LmdbStore, StateConfig
from authz.state import model

THREADS = 8
LIMITS = dict(max_tools=3, max_labels=8)


def _decide(view, op, rule):
    """Allowed iff the task is under its call limit and budget, the agent under its rate, and no egress
    after a secret: a pure function of the state before the call."""
    tool, cost = op[1], op[3]
    task, agent = view["task"], view["agent"]
    return (task["calls"] < rule["limit"] and task["spend"] + cost <= rule["budget"]
            and agent["rate"]["m1"] < rule["rate"] and not (tool == "egress" and "secret" in task["labels"]))


def _run_ops(store, task, agent, ops, rule, out, errors, per_batch):
    """Decide `ops` in order, `per_batch` calls per transaction (a BatchCheck when more than one)."""
    try:
        for first in range(0, len(ops), per_batch):
            decided = []
            with store.batch(T0 + ops[first][0]) as batch:
                for op in ops[first:first + per_batch]:
                    txn = batch.task(task, agent)
                    view = txn.view()
                    allowed = _decide(view, op, rule)
                    if allowed:
                        txn.allowed(("Tool", op[1]), op[2], op[3])
                    else:
                        txn.denied()
                    decided.append((allowed, view, (ops[first][0],) + op[1:]))
            out += decided
    except Exception as err:  # reported to the test, not lost with the thread
        errors.append(repr(err))


def _worker(path, conn):
    """A separate process with its own store (its own LMDB environment on the same files)."""
    store = LmdbStore(StateConfig(path=path, **LIMITS))
    while True:
        cmd = conn.recv()
        if cmd is None:
            store.close()
            return
        task, agent, rule, per_thread, per_batch = cmd
        outs, errors = [[] for _ in per_thread], []
        threads = [threading.Thread(target=_run_ops, args=(store, task, agent, ops, rule, out, errors, per_batch))
                   for ops, out in zip(per_thread, outs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if any(t.is_alive() for t in threads):
            errors.append("a worker thread did not finish")
        conn.send(errors or [r for out in outs for r in out])


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Two worker processes on one state store."""
    path = str(tmp_path_factory.mktemp("shared") / "state")
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for _ in range(2):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(path, child), daemon=True)
        p.start()
        procs.append((p, parent))
    store = LmdbStore(StateConfig(path=path, **LIMITS))
    yield store, [c for _, c in procs]
    store.close()
    for p, c in procs:
        c.send(None)
        p.join(10)
        if p.is_alive():
            p.kill()


def _run(conns, task, agent, rule, per_process, per_batch=1):
    for conn, per_thread in zip(conns, per_process):
        conn.send((task, agent, rule, per_thread, per_batch))
    results = []
    for conn in conns:
        assert conn.poll(60), "a worker process did not answer"
        got = conn.recv()
        assert all(type(r) is tuple for r in got), got
        results += got
    return results


@pytest.mark.parametrize("per_batch", [1, 4])
def test_a_limit_of_n_admits_exactly_n_across_2_processes_and_8_threads(workers, per_batch):
    store, conns = workers
    n, per_thread = 50, 12
    rule = {"limit": n, "budget": 1 << 40, "rate": 1 << 40}
    ops = [(0.0, "pay", (), 1)] * per_thread
    task = f"limit-task-{per_batch}"
    results = _run(conns, task, "limit-agent", rule, [[ops] * THREADS] * 2, per_batch)
    assert len(results) == 2 * THREADS * per_thread
    assert sum(allowed for allowed, _, _ in results) == n
    assert sorted(view["task"]["calls"] for allowed, view, _ in results if allowed) == list(range(n))
    final = store.task_view(task, T0)
    assert (final["calls"], final["denies"], final["spend"]) == (n, len(results) - n, n)


def _comparable(task_view):
    """What a replay of the allowed calls alone determines (age_s and denies also depend on the denies)."""
    return {k: v for k, v in task_view.items() if k not in ("age_s", "denies")}


_example = iter(range(1 << 30))
OPS = st.tuples(st.floats(0, 120, allow_nan=False), st.sampled_from(["a", "b", "c", "d", "egress"]),
                st.lists(st.sampled_from(["pii", "secret", "x"]), unique=True, max_size=2).map(tuple),
                st.integers(0, 50))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(per_process=st.lists(st.lists(st.lists(OPS, max_size=30), min_size=3, max_size=3), min_size=2, max_size=2),
       limit=st.integers(0, 25), budget=st.integers(0, 600), rate=st.integers(1, 30), per_batch=st.integers(1, 4))
def test_concurrent_interleavings_equal_a_sequential_replay_of_the_allowed_calls(workers, per_process, limit,
                                                                                 budget, rate, per_batch):
    store, conns = workers
    n = next(_example)
    task, agent = f"prop-{n}", f"prop-agent-{n}"
    rule = {"limit": limit, "budget": budget, "rate": rate}
    results = _run(conns, task, agent, rule, per_process, per_batch)
    allowed = sorted((r for r in results if r[0]), key=lambda r: r[1]["task"]["calls"])
    assert [view["task"]["calls"] for _, view, _ in allowed] == list(range(len(allowed)))
    cfg = StateConfig(path="unused", **LIMITS)
    replay_task, replay_agent = model.TaskState(task, T0), model.AgentState(agent, T0)
    for _, seen, op in allowed:  # each allowed call saw exactly the state the calls before it left
        now = T0 + op[0]
        assert _comparable(seen["task"]) == _comparable(replay_task.view(now))
        assert seen["agent"] == replay_agent.view(now)
        assert _decide({"task": replay_task.view(now), "agent": replay_agent.view(now)}, op, rule)
        replay_task.record_allowed(now, ("Tool", op[1]), op[2], op[3], cfg)
        replay_agent.record_allowed(now)
    if results:
        end = T0 + 130
        final = store.task_view(task, end)
        assert _comparable(final) == _comparable(replay_task.view(end))
        assert final["denies"] == len(results) - len(allowed)
        with store.begin(task, agent, end) as txn:
            assert txn.view()["agent"] == replay_agent.view(end)
            txn.batch.abort()
    else:
        assert store.task_view(task, T0) is None
