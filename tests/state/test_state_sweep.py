"""The store does not grow without bound: idle tasks and agents are forgotten, by sweep() and a few at a time
by every decision; a task waiting for an approval is kept."""
from statekit import T0, ask, call, make_store

from authz.state.model import AGENT_TTL_S

H = 3600


def test_an_idle_task_is_forgotten_within_an_hour_after_task_ttl(tmp_path):
    store = make_store(tmp_path / "s", task_ttl_s=7200)
    call(store, T0, labels=["pii"])
    store.sweep(T0 + 7199)                                  # the agent's record goes (its windows are empty)
    assert store.task_view("t1", T0 + 7199) is not None and store.sizes()["agents"] == 0
    store.sweep(T0 + 7200 + H)
    assert store.task_view("t1", T0 + 7200 + H) is None
    assert store.sizes()["tasks"] == 0
    with store.begin("t1", "a1", T0 + 7200 + H) as txn:     # a later call starts it afresh
        assert txn.view()["task"]["calls"] == 0 and txn.view()["task"]["labels"] == []
    store.close()


def test_a_task_called_again_lives_on(tmp_path):
    store = make_store(tmp_path / "s", task_ttl_s=7200)
    call(store, T0)
    call(store, T0 + 7000)
    store.sweep(T0 + 7200 + H)
    assert store.task_view("t1", T0 + 7200 + H)["calls"] == 2
    store.sweep(T0 + 7000 + 7200 + H)
    assert store.task_view("t1", T0 + 7000 + 7200 + H) is None
    store.close()


def test_an_idle_agent_is_forgotten_once_its_windows_are_empty(store):
    call(store, T0)
    store.sweep(T0 + AGENT_TTL_S - 1)
    assert store.sizes()["agents"] == 1
    store.sweep(T0 + AGENT_TTL_S + H)
    assert store.sizes()["agents"] == 0


def test_a_suspended_task_is_kept_until_its_approval_is_decided(tmp_path):
    store = make_store(tmp_path / "s", task_ttl_s=60, approval_ttl_s=10 * H)
    call(store, T0)
    a = ask(store, T0)
    store.sweep(T0 + 5 * H)
    assert store.task_view("t1", T0 + 5 * H)["calls"] == 1
    store.reject(a.id, "bob", "", T0 + 5 * H)
    store.sweep(T0 + 7 * H)
    assert store.task_view("t1", T0 + 7 * H) is None
    store.close()


def test_decisions_sweep_a_few_due_items_and_sweep_is_bounded(tmp_path):
    store = make_store(tmp_path / "s", task_ttl_s=60)
    for i in range(20):
        call(store, T0, task=f"t{i}")
    assert store.sweep(T0 + 2 * H, limit=3) == 3
    assert store.sizes()["tasks"] == 17
    call(store, T0 + 2 * H, task="new")                      # its batch applied up to 16 due items first
    assert store.sizes()["tasks"] == 2
    assert store.sweep(T0 + 2 * H) == 1 and store.sizes()["tasks"] == 1
    store.close()
