"""The work of one decision is bounded: comparing nested values costs in proportion to their size, and a
policy that would take more than its step budget fails with an evaluation error (skipped, listed in the
decision's errors, as Cedar treats any error) instead of hanging a worker.

Nothing here is timed: the budget counts steps, so a test that lowers it proves what a hang would be.
"""

import cedarpy
import pytest

import authz
from authz.engine import _evaluator
from cedar_gen import deep_text, deep_value

REQUEST = dict(principal='Agent::"a"', action='Action::"x"', resource='Tool::"t"')


@pytest.fixture
def small_budget():
    """A budget of 200,000 steps: far more than the linear cost of the cases below, far less than 2^depth."""
    previous = _evaluator.set_eval_budget(200_000)
    yield
    _evaluator.set_eval_budget(previous)


def _decide(tmp_path, text, context):
    (tmp_path / "p.cedar").write_text(text)
    db = str(tmp_path / "db")
    authz.compile([str(tmp_path / "p.cedar")], db=db)
    engine = authz.Engine(db)
    try:
        d = engine.check(context=context, **REQUEST)
    finally:
        engine.close()
    expected = cedarpy.is_authorized(dict(context=context, **REQUEST), text, "[]")
    return d, expected


@pytest.mark.parametrize("depth", [22, 26, 55, 200])
@pytest.mark.parametrize("form", ["{a} == {a}", "[{a}].contains({a})", "{a}.contains({a})", "[{a}, {a}].containsAll([{a}])"])
def test_nested_literals_cost_their_size_not_two_to_their_depth(tmp_path, small_budget, depth, form):
    lit = "[" * depth + "1" + "]" * depth
    text = "permit(principal, action, resource) when { %s };\n" % form.format(a=lit)
    d, expected = _decide(tmp_path, text, {})
    assert d.errors == []
    assert d.decision == ("allow" if expected.decision == cedarpy.Decision.Allow else "deny")


def test_nested_context_against_a_nested_literal(tmp_path, small_budget):
    text = ("permit(principal, action, resource) when { context.deep == %s };\n"
            "forbid(principal, action, resource) when { context.deep != %s };\n") % (deep_text(30, "1"), deep_text(30, "1"))
    d, expected = _decide(tmp_path, text, {"deep": deep_value(30, 1)})
    assert expected.decision == cedarpy.Decision.Allow
    assert (d.decision, d.errors) == ("allow", [])


def test_large_sets_of_records_compare_in_linear_steps(tmp_path, small_budget):
    """3,000 records a side, in another order and with duplicates: pairwise comparison would take ~10^7 steps."""
    a = [{"k": i, "s": [i, str(i)]} for i in range(3000)]
    b = [{"k": i, "s": [str(i), i, i]} for i in reversed(range(3000))] + a[:10]
    text = "permit(principal, action, resource) when { context.a == context.b && context.b.containsAll(context.a) };\n"
    d, expected = _decide(tmp_path, text, {"a": a, "b": b})
    assert expected.decision == cedarpy.Decision.Allow
    assert (d.decision, d.errors) == ("allow", [])


def test_a_policy_over_budget_is_that_policys_error(tmp_path):
    """With a budget of 50 steps, the long policy errors (a forbid is then skipped, as any erroring Cedar
    policy is), the short ones still decide, and the next decision has its full budget again."""
    long_condition = " && ".join(["{a: context.n} == {a: 1}"] * 40)
    text = ('@id("short-permit")\npermit(principal, action, resource) when { context.n == 1 };\n'
            f'@id("long-forbid")\nforbid(principal, action, resource) when {{ {long_condition} }};\n')
    previous = _evaluator.set_eval_budget(50)
    try:
        d, _ = _decide(tmp_path, text, {"n": 1})
    finally:
        _evaluator.set_eval_budget(previous)
    assert d.decision == "allow" and d.policies == ["short-permit"]
    assert [e["policy"] for e in d.errors] == ["long-forbid"]
    assert "evaluation budget exhausted" in d.errors[0]["message"]
    d, _ = _decide(tmp_path, text, {"n": 1})
    assert (d.decision, d.policies, d.errors) == ("deny", ["long-forbid"], [])


def test_the_budget_must_be_positive():
    with pytest.raises(ValueError):
        _evaluator.set_eval_budget(0)
