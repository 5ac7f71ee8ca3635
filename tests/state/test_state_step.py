"""The compiled per-call step (authz/state/_step.pyx, driven by authz.server.taskstate.TaskState) against the
Python rules it replaces: each call decided with `{**context, **TaskTxn.view()}` (real engine, real store),
then TaskTxn.allowed / TaskTxn.denied. Same decisions, same contexts (values and member order, unchanged by
later calls: the decision log keeps them), same stored state (the encoded records), same errors."""
import contextlib
import json
import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from statekit import T0, make_store

import authz
from authz.server import taskstate
from authz.state import StateError, model

LONG_MAX = (1 << 63) - 1
POLICIES = r'''
@id("tools")
@labels("called")
permit(principal is Agent, action == Action::"call", resource is Tool);
@id("tagged")
@labels("audit, called,x")
permit(principal is Agent, action == Action::"call", resource == Tool::"t2");
@id("no")
forbid(principal, action, resource) when { context has no && context.no };
@id("busy")
forbid(principal, action, resource == Tool::"t3") when { context has task && context.task.calls >= 5 };
@id("noisy-agent")
forbid(principal, action, resource == Tool::"t1") when { context has agent && context.agent.rate.m1 >= 9 };
@id("after-pii")
forbid(principal, action, resource == Tool::"t0")
  when { context has task && context.task.labels.contains("pii") && context.task.tools.contains(Tool::"t2") };
'''
ENTITIES = '''[
 {"uid": {"type": "Agent", "id": "a1"}, "attrs": {}, "parents": []},
 {"uid": {"type": "Agent", "id": "a2"}, "attrs": {}, "parents": []},
 {"uid": {"type": "Tool", "id": "t0"}, "attrs": {}, "parents": []},
 {"uid": {"type": "Tool", "id": "t1"}, "attrs": {"labels": ["pii"]}, "parents": []},
 {"uid": {"type": "Tool", "id": "t2"}, "attrs": {"labels": ["pii", "y", "pii"]}, "parents": []},
 {"uid": {"type": "Tool", "id": "t3"}, "attrs": {"labels": ["z"]}, "parents": []}
]'''
TOOLS = [{"type": "Tool", "id": f"t{k}"} for k in range(5)]  # t4 is not a stored entity
CALL = {"type": "Action", "id": "call"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("policies")
    (folder / "p.cedar").write_text(POLICIES)
    (folder / "entities.json").write_text(ENTITIES)
    db = str(folder.parent / "step.lmdb")
    authz.compile([str(folder)], db=db)
    e = authz.Engine(db)
    yield e
    e.close()


def requests_of(calls):
    """Request dicts as the tokens layer makes them, one per (task, agent, tool, no, cost); the calls of one
    task and agent share their context object, as the items of a BatchCheck do."""
    shared = {}
    out = []
    for task, agent, tool, no, cost in calls:
        key = (task, agent, no, cost)
        if key not in shared:
            ctx = {"token": {"task": task, "jti": "j"},
                   "delegation": {"chain": [{"__entity": {"type": "Agent", "id": agent}}], "depth": 0}}
            if no:
                ctx["no"] = True
            if cost is not None:
                ctx["cost"] = cost
            shared[key] = ctx
        out.append({"principal": {"type": "Agent", "id": agent}, "action": CALL, "resource": TOOLS[tool],
                    "context": shared[key]})
    return out


def reference(engine, store, requests, now):
    """The Python rules: (outcomes, contexts decided with) or (StateError type, None)."""
    results, seen = [], {}
    many = len(requests) > 1
    try:
        with store.batch(now) as batch:
            for i, r in enumerate(requests):
                ctx, resource = r["context"], r["resource"]
                stored = (resource["type"], resource["id"]) if many else resource
                txn = batch.task(ctx["token"]["task"], r["principal"]["id"])
                if txn.revoked or txn.suspended_by:
                    raise AssertionError("these tests neither revoke nor suspend")
                decided = {**ctx, **txn.view()}
                d = engine.check(r["principal"], r["action"], resource, decided)
                seen[i] = json.dumps(decided)
                results.append((d.allowed, tuple(d.policies)))
                if d.allowed:
                    txn.allowed(stored, taskstate._labels(engine, resource, d.policies), ctx.get("cost", 0))
                else:
                    txn.denied()
    except StateError as e:
        return type(e), None
    return results, seen


def compiled(engine, store, requests, now):
    """The server's step (TaskState.decide): as reference()."""
    requests = list(requests)
    results = [None] * len(requests)
    taskstate.TaskState(store, clock=lambda: now).decide(engine, requests, range(len(requests)), results)
    if all(type(r) is tuple and r[0] == "state_unavailable" for r in results):
        return "unavailable", None
    assert not any(type(r) is tuple for r in results)
    return [(d.allowed, tuple(d.policies)) for d in results], {i: json.dumps(r["context"]) for i, r in
                                                               enumerate(requests)}


def stored_state(store, now, tasks=("t1", "t2"), agents=("a1", "a2")):
    """The encoded task and agent records, and their views at `now` (a batch that writes nothing)."""
    batch = store.batch(now)
    try:
        out = [(model.encode_task(batch._task(t)), batch.task(t, "a1").state.view(now)) for t in tasks]
        out += [(model.encode_agent(batch._agent(a)), batch._agent(a).view(now)) for a in agents]
    finally:
        batch.abort()
    return out


def same(engine, subject, oracle, batches):
    """Every batch decided both ways: same outcomes, contexts and stored state after each."""
    for at, calls in batches:
        requests = requests_of(calls)
        want = reference(engine, oracle, requests, at)
        got = compiled(engine, subject, requests, at)
        assert got == (("unavailable", None) if want[1] is None else want), (want, got)
        assert stored_state(subject, at) == stored_state(oracle, at)


@contextlib.contextmanager
def two_stores(bounds):
    """(subject, oracle): two stores with the same bounds, in a folder removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        subject = make_store(pathlib.Path(tmp) / "subject", **bounds)
        oracle = make_store(pathlib.Path(tmp) / "oracle", **bounds)
        try:
            yield subject, oracle
        finally:
            subject.close()
            oracle.close()


CALLS = st.tuples(st.sampled_from(["t1", "t2"]), st.sampled_from(["a1", "a2"]), st.integers(0, 4), st.booleans(),
                  st.sampled_from([None, 0, 1, 7, LONG_MAX, LONG_MAX - 3]))
BATCHES = st.lists(st.tuples(st.sampled_from([0.0, 0.25, 1.5, 59.0, 61.5, 3600.0, 3725.0, -2.0]),
                             st.lists(CALLS, min_size=1, max_size=30)), min_size=1, max_size=5)


BOUNDS = st.sampled_from([{}, {"max_tools": 2}, {"max_labels": 3}, {"max_call_labels": 2}])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=BATCHES, bounds=BOUNDS)
def test_the_compiled_step_is_the_python_rules(engine, batches, bounds):
    with two_stores(bounds) as (subject, oracle):
        same(engine, subject, oracle, [(T0 + dt, calls) for dt, calls in batches])


def test_each_backend_steps_as_the_python_rules(engine, store, tmp_path):
    """A fixed run on each backend (Redis too), against the Python rules on LMDB: new tools and labels, the
    tools bound, a cost that saturates the spend, denies, rate windows across minutes and hours."""
    oracle = make_store(tmp_path / "oracle")
    calls = [("t1", "a1", k % 5, k % 7 == 3, [None, 1, 0, LONG_MAX][k % 4]) for k in range(40)]
    calls += [("t2", "a2", k % 3, False, 2) for k in range(10)] + [("t1", "a2", 2, False, None)]
    try:
        same(engine, store, oracle, [(T0, calls), (T0 + 0.5, calls[:3]), (T0 + 61.5, calls[5:30]),
                                     (T0 + 3700, calls[::-1]), (T0 + 3700, calls[:1])])
    finally:
        oracle.close()


def test_a_kept_context_is_not_changed_by_later_calls(engine, tmp_path):
    """The contexts the step decided with (and the decision log keeps) hold the view before their call
    after the batch's later calls changed the task: tools, labels, counts and rates are their own."""
    store = make_store(tmp_path / "s")
    try:
        requests = requests_of([("t1", "a1", (4, 1, 2)[k % 3], False, 1) for k in range(9)])
        results = [None] * len(requests)
        taskstate.TaskState(store, clock=lambda: T0).decide(engine, requests, range(len(requests)), results)
        assert all(d.allowed for d in results)
        views = [r["context"]["task"] for r in requests]
        assert [v["calls"] for v in views] == [v["spend"] for v in views] == list(range(9))
        assert [len(v["tools"]) for v in views] == [0, 1, 2] + [3] * 6
        assert views[1]["labels"] == ["called"] and views[1]["counts"] == {"called": 1}
        assert views[2]["labels"] == ["called", "pii"] and views[8]["counts"]["called"] == 8
        assert [r["context"]["agent"]["rate"]["m1"] for r in requests] == list(range(9))
    finally:
        store.close()


class Counted:
    """A store whose decide_call answers are counted (the fast path's answers; None: the general path's)."""

    def __init__(self, store):
        self.store, self.fast, self.general = store, 0, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def decide_call(self, ts, engine, request, now):
        done = self.store.decide_call(ts, engine, request, now)
        if done is None:
            self.general += 1
        else:
            self.fast += 1
        return done


def same_one_by_one(engine, subject, oracle, calls):
    """Each (time, call) decided alone (a Check: the store's single-call path when it takes it) and by the
    Python rules: same outcomes, contexts and stored state after each."""
    same(engine, subject, oracle, [(at, [call]) for at, call in calls])


SINGLES = st.lists(st.tuples(st.sampled_from([0.0, 0.001, 0.5, 59.0, 61.5, 3599.5, 3600.0, 3725.0]), CALLS),
                   min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=SINGLES, bounds=BOUNDS)
def test_the_single_call_path_is_the_python_rules(engine, calls, bounds):
    """Single calls in time order (the store's fast path for the common allowed call, the general path for the
    rest: new tasks, agents, tools and labels, denies, costs out of range, an hour passed), against the rules."""
    with two_stores(bounds) as (subject, oracle):
        same_one_by_one(engine, subject, oracle, [(T0 + dt, call) for dt, call in sorted(calls, key=lambda c: c[0])])


def test_the_single_call_path_answers_the_common_call(engine, tmp_path):
    """A fixed run of Checks: after a task's first calls (new records, tools and labels: the general path),
    the repeated allowed call is answered by the store's single-call path, and everything else is not:
    denies, a cost out of range, a new tool, the hour the records' sweep entries move."""
    subject, oracle = Counted(make_store(tmp_path / "subject")), make_store(tmp_path / "oracle")
    try:
        warm = [(T0, ("t1", "a1", 2, False, None)), (T0 + 0.1, ("t1", "a1", 2, False, 2))]
        same_one_by_one(engine, subject, oracle, warm)
        subject.fast = subject.general = 0
        repeated = [(T0 + 0.2 + k / 100, ("t1", "a1", 2, False, k % 3)) for k in range(20)]
        same_one_by_one(engine, subject, oracle, repeated)
        assert (subject.fast, subject.general) == (20, 0)
        rare = [(T0 + 1, ("t1", "a1", 2, True, None)),        # denied by `no`
                (T0 + 1.05, ("t1", "a1", 1, False, None)),    # denied by `noisy-agent` (9 calls this minute)
                (T0 + 1.1, ("t1", "a1", 2, False, -1)),       # a cost out of range: refused by the rules
                (T0 + 1.2, ("t1", "a1", 4, False, None)),     # a new tool
                (T0 + 1.3, ("t1", "a2", 2, False, None)),     # a new agent
                (T0 + 7200, ("t1", "a1", 2, False, None))]    # two hours on: the sweep entries move
        for call in rare:
            subject.fast = subject.general = 0
            same_one_by_one(engine, subject, oracle, [call])
            assert (subject.fast, subject.general) == (0, 1), call
        subject.fast = 0
        same_one_by_one(engine, subject, oracle, [(T0 + 7200.5, ("t1", "a1", 2, False, None))])
        assert subject.fast == 1
    finally:
        subject.store.close()
        oracle.close()


def test_another_process_s_write_is_read_by_the_single_call_path(engine, tmp_path):
    """Two stores on one folder (two workers): each call sees the other's last commit, whichever path took it."""
    from authz.state.lmdb_store import LmdbStore

    a = Counted(make_store(tmp_path / "s"))
    b = LmdbStore(a.store.config)  # a second handle: its own record cache, the same environment and file
    oracle = make_store(tmp_path / "oracle")
    try:
        for k in range(12):
            at, call = T0 + k / 10, ("t1", "a1", 2, False, 1)
            requests = requests_of([call])
            want = reference(engine, oracle, requests, at)
            assert compiled(engine, a if k % 2 else b, requests, at) == want
        assert a.fast > 0
        assert stored_state(a.store, T0 + 2) == stored_state(oracle, T0 + 2)
    finally:
        b.close()
        a.store.close()
        oracle.close()
