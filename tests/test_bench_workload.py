"""bench/workload.py's with_unrelated, which the bench's index-isolation rows rely on: the policies and
entities it adds reach none of the base workload's requests, so every decision stays the same, as
cedarpy confirms."""

import cedarpy
import pytest

import authz
from bench.bench_engine import authz_norm, cedar_norm
from bench.workload import generate, with_unrelated


def test_unrelated_policies_change_no_decision(tmp_path):
    base = generate(10, n_requests=300)
    wide = with_unrelated(base, 400)
    assert len(wide.policy_ids) == len(set(wide.policy_ids)) == wide.policies_text.count('@id("') == 400
    assert wide.requests is base.requests and len(wide.entities) > len(base.entities)
    assert not any("other-" in str(q) for q in base.requests)
    engines = []
    for tag, w in (("base", base), ("wide", wide)):
        authz.compile(list(w.write(tmp_path / tag)), db=str(tmp_path / f"{tag}.lmdb"))
        engines.append(authz.Engine(str(tmp_path / f"{tag}.lmdb")))
    small, large = engines
    policies = cedarpy.PolicySet.from_str(wide.policies_text)
    entities = cedarpy.Entities.from_json_str(wide.entities_json)
    outcomes = set()
    for i, q in enumerate(base.requests):
        args = (q["principal"], q["action"], q["resource"], q["context"])
        ours = authz_norm(large.check(*args))
        assert ours == authz_norm(small.check(*args)), q
        if i < 100:
            assert ours == cedar_norm(cedarpy.is_authorized(q, policies, entities), wide.policy_ids), q
        outcomes.add((ours[0], bool(ours[1]), bool(ours[2])))
    # allowed, forbidden, denied by default, and with errors all occur
    assert {(True, True), (False, True), (False, False)} <= {o[:2] for o in outcomes}
    assert any(o[2] for o in outcomes)


def test_with_unrelated_only_adds():
    with pytest.raises(ValueError, match="must exceed"):
        with_unrelated(generate(10, n_requests=0), 10)
