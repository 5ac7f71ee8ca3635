"""Property: no chain of exchanges can widen scope, extend expiry or exceed the depth limit."""
import itertools

import pytest
from tokenkit import Clock, Kit, make_index
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from authz.tokens.verify import TokenError

MAX_DEPTH = 3
ACTIONS = ["read", "write", "call"]
IDS = ["".join(p) for n in range(5) for p in itertools.product("abc", repeat=n)]  # c: in no pattern
pattern = st.text(alphabet="ab*", max_size=4)
side = st.lists(pattern, max_size=3)
step = st.fixed_dictionaries({
    "actor": st.sampled_from(["b", "c", "d", "e"]),
    "actions": st.lists(st.sampled_from(ACTIONS + ["*", "re*"]), max_size=2),
    "resources": st.one_of(st.just([]), side),  # empty = keep the parent's
    "ttl": st.integers(min_value=0, max_value=2000),
    "advance": st.integers(min_value=0, max_value=20),
})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prop")
    clock = Clock()
    kit = Kit(tmp / "data", make_index(tmp), clock, max_delegation_depth=MAX_DEPTH)
    yield kit, clock
    kit.revocations.close()


def _allowed(vt):
    return {(a, i) for a in ACTIONS for i in IDS
            if vt.scope.allows({"type": "Action", "id": a}, {"type": "Tool", "id": i})}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(root_actions=st.lists(st.sampled_from(ACTIONS + ["*"]), min_size=1, max_size=2),
       root_resources=st.lists(pattern, min_size=1, max_size=3),
       root_ttl=st.integers(min_value=1, max_value=2000),
       steps=st.lists(step, max_size=MAX_DEPTH + 2))
def test_exchanges_never_widen_extend_or_deepen(world, root_actions, root_resources, root_ttl, steps):
    kit, clock = world
    token = kit.issue(caller="a", actions=[f'Action::"{a}"' for a in root_actions],
                      resources=[f'Tool::"{r}"' for r in root_resources], ttl=root_ttl)
    vt = kit.verifier.verify(token.token)
    allowed, exp, depth = _allowed(vt), vt.exp, 0
    for s in steps:
        clock.now += s["advance"]
        try:
            child = kit.exchange(s["actor"], token, actions=[f'Action::"{a}"' for a in s["actions"]],
                                 resources=[f'Tool::"{r}"' for r in s["resources"]], ttl=s["ttl"])
        except TokenError as e:
            # Refusals are for a reason the properties allow: depth, no overlap, or an expired parent.
            assert e.code in {"delegation_too_deep", "out_of_scope", "token_expired"}, e.code
            event(e.code)
            if e.code == "delegation_too_deep":
                assert depth == MAX_DEPTH
            break
        cvt = kit.verifier.verify(child.token)
        child_allowed = _allowed(cvt)
        assert child_allowed <= allowed                    # never wider
        assert cvt.scope.within(vt.scope)
        assert cvt.exp <= exp                              # never later
        assert cvt.depth == depth + 1 <= MAX_DEPTH         # one deeper, bounded
        assert cvt.chain[:-1] == vt.chain and cvt.chain[-1] == s["actor"]
        assert cvt.task == vt.task
        token, vt, allowed, exp, depth = child, cvt, child_allowed, cvt.exp, cvt.depth
        event(f"depth {depth}")
