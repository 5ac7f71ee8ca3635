"""Context records: read in place when they are already Cedar values, converted when they hold sets or
escapes, whichever way a policy reaches them (a member, or the whole context first)."""
import json
import re

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


def test_batch_items_sharing_objects_decide_as_single_checks(engine):
    """check_batch reuses what it made of the previous item's principal, action, resource and context
    when the next item holds the same object (BatchCheck's items share theirs): the decisions are
    those of check() on each item."""
    principal, doc = {"type": "User", "id": "u"}, {"type": "Doc", "id": "d"}
    actions = [{"type": "Action", "id": a} for a in ("h", "w", "s", "e")]
    items = []
    for action in actions:
        for context in CONTEXTS + CONTEXTS[::-1]:
            for _ in range(2):  # the same objects twice in a row
                items.append({"principal": principal, "action": action, "resource": doc, "context": context})
    batch = engine.check_batch(items)
    assert batch == [engine.check(**item) for item in items]
    assert any(d.allowed for d in batch) and not all(d.allowed for d in batch)


class _Key(str):
    """A str subclass: equal to (and hashed as) the plain key it spells."""


def test_batch_items_read_by_their_keys_whatever_the_key_objects(engine):
    """check_batch reads an item's members in one pass, matching plain keys by their text: keys that are
    other objects than the literals (from json.loads), str subclasses, extra or non-ASCII keys and
    missing members must read as dict lookups read them."""
    base = {"principal": 'User::"u"', "action": 'Action::"h"', "resource": 'Doc::"d"', "context": CONTEXTS[0]}
    items = [
        json.loads(json.dumps(base)),
        {_Key(k): v for k, v in base.items()},
        dict(base, extra=1, **{"é": 2, "principals": 3, "contexts": {}}),
        {k: v for k, v in base.items() if k != "context"},
        {**{_Key("principal"): 'User::"u"'}, **{k: v for k, v in base.items() if k != "principal"}},
    ]
    expected = [engine.check(item.get("principal"), item.get("action"), item.get("resource"), item.get("context"))
                for item in items]
    assert engine.check_batch(items) == expected
    with pytest.raises(authz.RequestError, match="request 0: `principal`"):
        engine.check_batch([{"Principal": 'User::"u"', "action": 'Action::"h"', "resource": 'Doc::"d"'}])


def test_batch_error_names_its_item_after_shared_objects(engine):
    principal = {"type": "User", "id": "u"}
    good = {"principal": principal, "action": 'Action::"h"', "resource": 'Doc::"d"', "context": CONTEXTS[0]}
    bad_context = dict(good, context={"n": 2 ** 63})
    bad_resource = dict(good, resource={"type": "1bad", "id": "d"})
    for bad, field in ((bad_context, "integer does not fit"), (bad_resource, "`resource`")):
        with pytest.raises(authz.RequestError, match=f"request 2: .*{field}"):
            engine.check_batch([good, good, bad, good])


def _nested_sets(depth, leaf):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [1, 125, 126, 127, 128])
@pytest.mark.parametrize("leaf", ["s", 1, True, 2 ** 63, 1.5, None], ids=repr)
def test_sets_in_the_context_are_checked_as_cedarpy_checks_them(engine, depth, leaf):
    # validate_value checks a set's strings, bools and Longs itself: the same requests must be refused
    # (too deep, a Long out of range, a float, null) and accepted as cedarpy's.
    policies = 'permit(principal, action, resource) when { context has a };'
    request = {"principal": 'User::"u"', "action": 'Action::"h"', "resource": 'Doc::"d"',
               "context": {"a": _nested_sets(depth, leaf)}}
    theirs = cedarpy.is_authorized(request, policies, "[]")
    refused = any("failed to build request" in e for e in theirs.diagnostics.errors)
    try:
        engine.check(**request)
    except authz.RequestError:
        assert refused
    else:
        assert not refused


@pytest.mark.parametrize("text", ["", "a", "ab" * 30, "é😀" * 25 + "x", "a*b", "😀" * 40])
def test_like_on_the_general_path_agrees_with_cedarpy(tmp_path, text):
    # `if` keeps the value off the scalar path: the general evaluator matches `like` itself, here with
    # patterns of more segments than it keeps on the stack, and non-ASCII literals.
    policies = "".join(
        f'@id("p{i}") permit(principal, action, resource) when {{ (if true then context.s else "") like "{pattern}" }};\n'
        for i, pattern in enumerate(["*", "", "a*", "*b", "a\\*b", "*" + "a*" * 35, "é*😀*x", "*😀" * 36, "😀*" * 40]))
    (tmp_path / "p.cedar").write_text(policies)
    (tmp_path / "e.entities.json").write_text("[]")
    authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    request = {"principal": 'User::"u"', "action": 'Action::"a"', "resource": 'Doc::"d"', "context": {"s": text}}
    theirs = cedarpy.is_authorized(request, policies, "[]")
    with authz.Engine(str(tmp_path / "db")) as engine:
        ours = engine.check(**request)
    assert not theirs.diagnostics.errors and not ours.errors
    assert sorted(ours.policies) == sorted(f"p{int(r[len('policy'):])}" for r in theirs.diagnostics.reasons)


ERRORING = [
    'principal.missing == 1',                       # an attribute the entity does not have
    'resource.n == 1',                              # an entity that does not exist
    'principal.getTag("missing") == 1',             # a tag it does not have
    'resource.getTag("t") == 1',                    # ... on an entity that does not exist
    'context.missing == "a"',                       # a context member that is not there
    'context.rec.missing == "a"',                   # ... in a nested record
    'context.missing.x < 3',                        # ... on the way to a nested one
    'context.missing.contains("a")',
    'context.rec.missing.containsAny(["a"])',
    'context.s == "a" || principal.missing == 1',   # after an operand that does not short-circuit
    '1 == principal.missing',                       # on the right of a comparison
    '!(principal.missing == 1)',
    'principal.missing like "a*"',
    'context.s like "a*" && (principal.n == 1 || context.missing)',
]


@pytest.mark.parametrize("condition", ERRORING)
def test_errors_answered_on_the_scalar_path_read_as_on_the_general_path(tmp_path, condition):
    # The same condition evaluated by the scalar path and, through `if`, by the general evaluator:
    # the same policies error, with the same message, and cedarpy agrees on which.
    policies = (f'@id("scalar") permit(principal, action, resource) when {{ {condition} }};\n'
                f'@id("general") permit(principal, action, resource) when {{ if true then {condition} else false }};\n'
                '@id("guarded") permit(principal, action, resource) when { false && principal.missing == 1 };\n')
    entities = [{"uid": {"type": "User", "id": "u"}, "attrs": {"n": 0}, "parents": [], "tags": {"t": 1}}]
    (tmp_path / "p.cedar").write_text(policies)
    (tmp_path / "e.entities.json").write_text(json.dumps(entities))
    authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    request = {"principal": 'User::"u"', "action": 'Action::"a"', "resource": 'Doc::"d"',
               "context": {"s": "abc", "rec": {"x": 1, "y": 2}}}
    theirs = cedarpy.is_authorized(request, policies, json.dumps(entities))
    with authz.Engine(str(tmp_path / "db")) as engine:
        ours = engine.check(**request)
    assert {e["policy"] for e in ours.errors} == {"scalar", "general"}
    assert sorted(re.match(r"error while evaluating policy `(policy\d+)`", e).group(1)
                  for e in theirs.diagnostics.errors) == ["policy0", "policy1"]
    by_policy = {e["policy"]: e["message"] for e in ours.errors}
    assert by_policy["scalar"] == by_policy["general"]
    assert not ours.allowed
