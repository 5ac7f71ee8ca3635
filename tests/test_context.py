"""Context records: read in place when they are already Cedar values, converted when they hold sets or
escapes, whichever way a policy reaches them (a member, or the whole context first)."""
import json

import cedarpy
import pytest

import authz

POLICIES = """
@id("header") permit(principal, action == Action::"h", resource) when { context.http.headers["x-team"] == "a" };
@id("whole-then-set") permit(principal, action == Action::"w", resource)
  when { context == context && context.tags.contains("t") && context.http.n == 1 };
@id("set-member") permit(principal, action == Action::"s", resource)
  when { context.tags.containsAll(["t"]) && context.who == User::"u" };
@id("ext") permit(principal, action == Action::"e", resource) when { context.ip.isLoopback() };
"""

CONTEXTS = [
    {"http": {"headers": {"x-team": "a"}, "n": 1}},
    {"http": {"headers": {"x-team": "b"}, "n": 1}, "tags": ["t"]},
    {"http": {"headers": {"x-team": "a"}, "n": 1}, "tags": ["t", "u"], "who": {"__entity": {"type": "User", "id": "u"}}},
    {"http": {"headers": {}, "n": 2}, "tags": [], "ip": {"__extn": {"fn": "ip", "arg": "127.0.0.1"}}},
    {"http": {"headers": {"x-team": "a"}, "n": 1}, "tags": ["t"], "ip": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}},
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctx")
    (d / "p.cedar").write_text(POLICIES)
    (d / "e.entities.json").write_text("[]")
    authz.compile([str(d)], db=str(d / "db"))
    with authz.Engine(str(d / "db")) as e:
        yield e


@pytest.mark.parametrize("action", ["h", "w", "s", "e"])
@pytest.mark.parametrize("context", CONTEXTS, ids=range(len(CONTEXTS)))
def test_context_reads_agree_with_cedarpy(engine, action, context):
    request = {"principal": 'User::"u"', "action": f'Action::"{action}"', "resource": 'Doc::"d"', "context": context}
    before = json.dumps(context, sort_keys=True)
    ours = engine.check(**request)
    theirs = cedarpy.is_authorized(request, POLICIES, "[]")
    assert ours.allowed == theirs.allowed
    ids = ["header", "whole-then-set", "set-member", "ext"]  # cedarpy's policy{i}, in text order
    assert sorted(ours.policies) == sorted(ids[int(r[len("policy"):])] for r in theirs.diagnostics.reasons)
    assert len(ours.errors) == len(theirs.diagnostics.errors)
    assert json.dumps(context, sort_keys=True) == before  # read in place, never changed
