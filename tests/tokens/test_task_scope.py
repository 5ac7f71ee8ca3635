"""Token scopes: uid pattern syntax, matching, containment and intersection (checked against brute force)."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.tokens.scope import STAR, Scope, ScopeError, glob_match, parse_pattern


@pytest.mark.parametrize("text, uid, expected", [
    ('Tool::"web.search"', ("Tool", "web.search"), True),
    ('Tool::"web.search"', ("Tool", "web.searcH"), False),
    ('Tool::"github.*"', ("Tool", "github.create_issue"), True),
    ('Tool::"github.*"', ("Tool", "github."), True),
    ('Tool::"github.*"', ("Tool", "gitlab.x"), False),
    ('Tool::"github.*"', ("ToolSet", "github.x"), False),
    ('Tool::"*.read"', ("Tool", "docs.read"), True),
    ('Tool::"a*b*c"', ("Tool", "a-b-c"), True),
    ('Tool::"a*b*c"', ("Tool", "a-c-b"), False),
    ('Tool::"lit\\*"', ("Tool", "lit*"), True),
    ('Tool::"lit\\*"', ("Tool", "litx"), False),
    ('Acme::Tool::"x"', ("Acme::Tool", "x"), True),
    ('Route::"/public/*"', ("Route", "/public/a/b"), True),
    ('Tool::"q\\"uote"', ("Tool", 'q"uote'), True),
    ('Tool::"\\u{e9}t\\u{e9}"', ("Tool", "été"), True),
])
def test_pattern_matches(text, uid, expected):
    assert parse_pattern(text).matches(*uid) is expected


@pytest.mark.parametrize("text", [
    'Tool', 'Tool::x', 'Tool::"x', '::"x"', '1Tool::"x"', 'Tool::"a"b"', 'Tool::"\\q"', 'Tool::"\\"',
    'Tool::"' + "x" * 300 + '"', 'Tool::"*a*b*c*d*e"', 'Tool::"\\u{d800}"', 7,
])
def test_malformed_patterns_are_refused(text):
    with pytest.raises(ScopeError):
        parse_pattern(text)


def test_canonical_text_round_trips():
    for text in ('Tool::"github.*"', 'Tool::"lit\\*x"', 'Tool::"q\\"\\\\"', 'Tool::"a\\nb"'):
        p = parse_pattern(text)
        assert parse_pattern(p.text) == p and p.text == text
    assert parse_pattern('Tool::"a**"').text == 'Tool::"a*"'


def test_scope_bounds():
    with pytest.raises(ScopeError):
        Scope.parse(['Action::"a%d"' % i for i in range(5)], ['Tool::"t"'], max_entries=4)
    s = Scope.parse(['Action::"a"', 'Action::"a"'], ['Tool::"x.y"', 'Tool::"x.*"'], 4)
    assert s.to_claim() == {"actions": ['Action::"a"'], "resources": ['Tool::"x.*"']}


def test_narrow_keeps_the_narrower_side_and_drops_partial_overlaps():
    parent = Scope.parse(['Action::"call"', 'Action::"GET"'], ['Tool::"github.*"', 'Tool::"web.search"'], 8)
    child = Scope.parse(['Action::"call"', 'Action::"POST"'], ['Tool::"*"', 'Tool::"github.issues.*"'], 8)
    got = child.narrow(parent)
    assert got.to_claim() == {"actions": ['Action::"call"'],
                              "resources": ['Tool::"github.*"', 'Tool::"web.search"']}
    assert Scope.parse([], ['Tool::"web.search"'], 8).narrow(parent).to_claim() == {
        "actions": ['Action::"call"', 'Action::"GET"'], "resources": ['Tool::"web.search"']}
    # `a*` and `*b` overlap only partly: neither is kept, so the result can only be narrower.
    assert Scope.parse(['Action::"x"'], ['Tool::"*b"'], 8).narrow(Scope.parse(['Action::"x"'], ['Tool::"a*"'], 8)).empty


# -- properties, against brute force over a small alphabet ------------------------------------------

ALPHABET = "ab*"
ids = st.text(alphabet="ab", max_size=5)
pattern_ids = st.text(alphabet=ALPHABET, max_size=5).filter(lambda s: s.count("*") <= 4)
# Ids over a, b and a character no pattern uses: replacing each `*` of p by `c` gives a string in
# L(p) that is in L(q) only if L(p) <= L(q), so ids up to the longest pattern decide containment.
UNIVERSE = ["".join(p) for n in range(6) for p in itertools.product("abc", repeat=n)]


def _pat(body):
    return parse_pattern(f'Tool::"{body}"')


@settings(max_examples=300, deadline=None)
@given(pattern_ids, ids)
def test_glob_agrees_with_fnmatch(body, subject):
    import fnmatch

    assert _pat(body).matches("Tool", subject) == fnmatch.fnmatchcase(subject, body)


@settings(max_examples=300, deadline=None)
@given(pattern_ids, pattern_ids)
def test_within_is_language_containment(p_body, q_body):
    p, q = _pat(p_body), _pat(q_body)
    brute = all(q.matches("Tool", s) for s in UNIVERSE if p.matches("Tool", s))
    assert p.within(q) == brute


@settings(max_examples=200, deadline=None)
@given(st.lists(pattern_ids, min_size=1, max_size=3), st.lists(pattern_ids, max_size=3))
def test_narrow_never_widens(parent_bodies, child_bodies):
    parent = Scope.parse(['Action::"x"'], [f'Tool::"{b}"' for b in parent_bodies], 8)
    child = Scope.parse([], [f'Tool::"{b}"' for b in child_bodies], 8).narrow(parent)
    for s in UNIVERSE:
        uid = {"type": "Tool", "id": s}
        if child.allows({"type": "Action", "id": "x"}, uid):
            assert parent.allows({"type": "Action", "id": "x"}, uid)
    assert child.within(parent)


def test_glob_match_treats_subject_stars_as_opaque():
    assert glob_match(["a", STAR], ["a", STAR, "b"])
    assert not glob_match(["a", "b"], ["a", STAR])
