"""context.task / context.agent: their exact shape, values before the call, what updates them, and the
bound of every field (clear errors, nothing changed)."""
import pytest
from statekit import T0, call, make_store

import authz
from authz.state import FailedPrecondition, Full, InvalidArgument, StateConfig

LONG_MAX = (1 << 63) - 1


def test_a_new_task_has_the_exact_shape(store):
    with store.begin("t1", "a1", T0) as txn:
        assert txn.view() == {
            "task": {"id": "t1", "age_s": 0, "calls": 0, "denies": 0, "tools": [], "labels": [], "counts": {},
                     "spend": 0, "rate": {"m1": 0, "h1": 0}, "overflow": False},
            "agent": {"rate": {"m1": 0, "h1": 0}}}
        assert txn.suspended_by is None and txn.revoked is False


def test_views_hold_the_state_before_each_call_and_only_allows_update_it(store):
    call(store, T0, resource={"type": "Tool", "id": "db.read"}, labels=["pii", "customer"], cost=7)
    with store.begin("t1", "a1", T0 + 1) as txn:
        txn.commit_denied()
    call(store, T0 + 2, resource=("Tool", "db.read"), labels=["pii"], cost=3)
    view = call(store, T0 + 5.5, resource=("Tool", "webhook.post"))
    assert view == {
        "task": {"id": "t1", "age_s": 5, "calls": 2, "denies": 1,
                 "tools": [{"__entity": {"type": "Tool", "id": "db.read"}}], "labels": ["pii", "customer"],
                 "counts": {"pii": 2, "customer": 1}, "spend": 10, "rate": {"m1": 2, "h1": 2}, "overflow": False},
        "agent": {"rate": {"m1": 2, "h1": 2}}}
    after = store.task_view("t1", T0 + 6)
    assert after["calls"] == 3 and after["tools"][-1] == {"__entity": {"type": "Tool", "id": "webhook.post"}}


def test_calls_of_one_task_in_a_batch_see_each_other_in_order_and_views_are_copies(store):
    views = []
    with store.batch(T0) as batch:
        for i in range(3):
            txn = batch.task("t1", f"a{i % 2}")
            views.append(txn.view())
            txn.allowed(("Tool", f"x{i}"), ["l"], 1)
    assert [v["task"]["calls"] for v in views] == [0, 1, 2]
    assert [len(v["task"]["tools"]) for v in views] == [0, 1, 2]
    assert [v["task"]["counts"] for v in views] == [{}, {"l": 1}, {"l": 2}]
    assert [v["agent"]["rate"]["m1"] for v in views] == [0, 0, 1]  # a0, a1, a0


def test_agent_rate_counts_its_allowed_calls_across_tasks(store):
    call(store, T0, task="t1")
    call(store, T0, task="t2")
    with store.begin("t3", "a1", T0) as txn:
        assert txn.view()["agent"] == {"rate": {"m1": 2, "h1": 2}}
        assert txn.view()["task"]["calls"] == 0
    with store.begin("t3", "other", T0) as txn:
        assert txn.view()["agent"] == {"rate": {"m1": 0, "h1": 0}}


POLICIES = """
@id("no-egress-after-pii")
forbid(principal, action, resource == Tool::"webhook.post")
when { context has task && context.task.labels.contains("pii") };
@id("deploy-after-tests")
forbid(principal, action, resource == Tool::"deploy")
unless { context has task && context.task.tools.contains(Tool::"ci.run_tests") };
@id("budget")
forbid(principal, action, resource)
when { context has task && context.task.spend > 100 - context.cost };
@id("pii-reads")
forbid(principal, action, resource == Tool::"db.read")
when { context has task && context.task.counts has pii && context.task.counts.pii >= 2 };
@id("agent-rate")
forbid(principal, action, resource)
when { context has agent && (context.agent.rate.m1 >= 5 || context.task.overflow) };
@id("all") permit(principal, action, resource);
"""


def test_views_decide_in_the_real_engine(tmp_path, store):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "p.cedar").write_text(POLICIES)
    (tmp_path / "p" / "entities.json").write_text("[]")
    authz.compile([str(tmp_path / "p")], db=str(tmp_path / "db"))
    engine = authz.Engine(str(tmp_path / "db"))

    def decide(now, tool, labels=(), cost=0):
        with store.begin("t1", "a1", now) as txn:
            d = engine.check(principal='Agent::"a1"', action='Action::"call"', resource=f'Tool::"{tool}"',
                             context={"cost": cost, **txn.view()})
            assert d.errors == []
            if d.allowed:
                txn.commit_allowed(("Tool", tool), labels, cost)
            else:
                txn.commit_denied()
        return d.allowed, d.policies

    try:
        assert decide(T0, "deploy") == (False, ["deploy-after-tests"])
        assert decide(T0, "ci.run_tests") == (True, ["all"])
        assert decide(T0, "deploy", cost=60) == (True, ["all"])
        assert decide(T0 + 1, "webhook.post") == (True, ["all"])
        assert decide(T0 + 2, "db.read", labels=["pii"], cost=41) == (False, ["budget"])
        assert decide(T0 + 61, "db.read", labels=["pii"], cost=10) == (True, ["all"])
        assert decide(T0 + 62, "webhook.post") == (False, ["no-egress-after-pii"])
        assert decide(T0 + 200, "db.read", labels=["pii"]) == (True, ["all"])
        assert decide(T0 + 201, "db.read", labels=["pii"]) == (False, ["pii-reads"])  # counts.pii >= 2
        assert [decide(T0 + 300, "x")[0] for _ in range(6)] == [True] * 5 + [False]  # agent m1 >= 5
        assert store.task_view("t1", T0 + 300)["denies"] == 5
    finally:
        engine.close()


def test_tools_stop_growing_at_their_bound_and_overflow_says_so(tmp_path):
    store = make_store(tmp_path / "s", max_tools=3)
    for i in range(5):
        call(store, T0, resource=("Tool", f"t{i}"))
    call(store, T0, resource=("Tool", "t0"))
    view = store.task_view("t1", T0)
    assert [t["__entity"]["id"] for t in view["tools"]] == ["t0", "t1", "t2"]
    assert view["overflow"] is True and view["calls"] == 6
    store.close()


def test_a_call_over_the_labels_bound_is_refused_and_changes_nothing(tmp_path):
    store = make_store(tmp_path / "s", max_labels=2)
    call(store, T0, labels=["a", "b"])
    call(store, T0, labels=["a"])
    before = store.task_view("t1", T0)
    with pytest.raises(Full, match="more than 2 labels"):
        call(store, T0, labels=["a", "c"])
    assert store.task_view("t1", T0) == before
    assert before["calls"] == 2 and before["counts"] == {"a": 2, "b": 1}
    store.close()


def test_spend_saturates_at_long_max(store):
    call(store, T0, cost=LONG_MAX - 1)
    call(store, T0, cost=5)
    assert store.task_view("t1", T0)["spend"] == LONG_MAX


BAD_CALLS = [
    (dict(task="t" * 257), "task id is longer than 256 bytes"),
    (dict(task="é" * 129), "task id is longer than 256 bytes"),  # 258 UTF-8 bytes
    (dict(task=""), "task id must not be empty"),
    (dict(task=7), "task id must be a string"),
    (dict(task="\ud800"), "task id is not valid UTF-8"),
    (dict(agent="a" * 300), "agent id is longer"),
    (dict(resource="Tool::x"), "resource must be"),
    (dict(resource={"type": "Tool"}), "resource must be"),
    (dict(resource=("Tool", 3)), "must be strings"),
    (dict(resource=("", "x")), "type not empty"),
    (dict(resource=("Tool", "x" * 510)), "longer than 512 bytes"),
    (dict(labels="pii"), "labels must be a collection"),
    (dict(labels=[1]), "a label must be a string"),
    (dict(labels=[""]), "a label must not be empty"),
    (dict(labels=["x" * 129]), "a label is longer than 128 bytes"),
    (dict(labels=[f"l{i}" for i in range(65)]), "more than 64 labels"),
    (dict(cost=-1), "cost must be a non-negative Long"),
    (dict(cost=1.5), "cost must be a non-negative Long"),
    (dict(cost=True), "cost must be a non-negative Long"),
    (dict(cost="3"), "cost must be a non-negative Long"),
    (dict(cost=LONG_MAX + 1), "cost must be a non-negative Long"),
]


@pytest.mark.parametrize("bad,message", BAD_CALLS)
def test_bad_input_is_invalid_argument_and_changes_nothing(store, bad, message):
    call(store, T0)
    before = store.task_view("t1", T0)
    args = dict(task="t1", agent="a1", resource=("Tool", "y"), labels=("ok",), cost=1)
    args.update(bad)
    with pytest.raises(InvalidArgument, match=message):
        call(store, T0 + 1, **args)
    assert store.task_view("t1", T0) == before
    assert store.sizes()["tasks"] == 1


def test_bad_times_are_refused(store):
    for now in (float("nan"), float("inf"), -1.0, "1"):
        with pytest.raises(InvalidArgument, match="now must be"):
            store.batch(now)


def test_config_bounds_are_checked(tmp_path):
    with pytest.raises(ValueError, match="max_tools must be a positive integer"):
        StateConfig(path=str(tmp_path), max_tools=0)
    with pytest.raises(ValueError, match="on_reject"):
        StateConfig(path=str(tmp_path), on_reject="ignore")
    with pytest.raises(ValueError, match="max_id_bytes must be at most 400"):
        StateConfig(path=str(tmp_path), max_id_bytes=500)


def test_an_exception_inside_writes_nothing_and_an_ended_transaction_refuses_use(store):
    with pytest.raises(RuntimeError):
        with store.begin("t1", "a1", T0) as txn:
            txn.allowed(("Tool", "x"))
            raise RuntimeError("decision failed")
    assert store.task_view("t1", T0) is None and store.sizes()["tasks"] == 0
    with store.begin("t1", "a1", T0) as txn:
        txn.commit_allowed(("Tool", "x"))
        with pytest.raises(FailedPrecondition, match="has ended"):
            txn.view()
        with pytest.raises(FailedPrecondition, match="has ended"):
            txn.allowed(("Tool", "x"))
    assert store.task_view("t1", T0)["calls"] == 1


def test_a_revoked_task_cannot_record_an_allow(store):
    with store.begin("t1", "a1", T0) as txn:
        txn.revoke_task()
    with store.begin("t1", "a1", T0) as txn:
        assert txn.revoked
        with pytest.raises(FailedPrecondition, match="revoked"):
            txn.allowed(("Tool", "x"))
        txn.commit_denied()
    assert store.task_view("t1", T0)["denies"] == 1


def test_state_survives_closing_and_reopening(tmp_path):
    store = make_store(tmp_path / "s")
    call(store, T0, labels=["pii"], cost=4)
    before = store.task_view("t1", T0 + 1)
    store.close()
    again = make_store(tmp_path / "s")
    assert again.task_view("t1", T0 + 1) == before
    again.close()
