"""Differential tests: authz must agree exactly with cedarpy (Cedar's Rust engine).

Hypothesis generates Cedar policy sets, entity graphs and requests (tests/cedar_gen.py);
each case is compiled into ONE LMDB index (a new generation per case) and every request
is decided by both engines. Compared per request: decision, the set of determining
policy ids and the set of policy ids whose evaluation errored (messages are not compared).
Where cedarpy gives no decision (it rejected the entities or the request), authz must
reject the same input: `authz.compile` raises CompileError (entities) or
`Engine.check` raises RequestError (request).

Case counts per run (each case = 1 policy set + 1 entity graph + 2-5 requests):
core 1500 + ext 1300 + graph 1300 + all 1300 + scopes 500 + invalid entities 250 + invalid requests 250
= 6,400 cases, ~21,000 request comparisons. Set AUTHZ_DIFF_SCALE=10 for a 10x longer run.
`test_zz_case_count` asserts the total when the whole module ran.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings

import cedar_gen as cg

SCALE = float(os.environ.get("AUTHZ_DIFF_SCALE", "1"))
COUNTS = {"core": 1500, "ext": 1300, "graph": 1300, "all": 1300, "scopes": 500, "invalid_entities": 250, "invalid_requests": 250}
RAN = {}  # test name -> cases run this session
DONE = set()  # tests that ran all their cases and passed


def _settings(n):
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                               HealthCheck.function_scoped_fixture],
        print_blob=True,
    )


def _fail(why, policy_files, entities, requests, expected, got=None):
    msg = [why]
    for name, text in policy_files:
        msg += ["--- " + name, text]
    msg.append("--- scenario (cedarpy's answers frozen; paste into tests/corpus/)")
    msg.append(cg.scenario_json(policy_files, entities, requests, expected))
    if got is not None:
        msg.append("--- authz said")
        msg.append(repr(got))
    pytest.fail("\n".join(msg), pytrace=False)


def check_case(h, policy_files, entity_files, requests, as_files=False):
    """Decide `requests` with cedarpy and authz; fail on any difference.

    policy_files: [(file name, Cedar text)]; entity_files: [(file name, entities)]; compiled as a folder,
    or with `as_files` as that list of files in that order.
    """
    from authz.errors import CompileError, RequestError

    text, entities, layout = cg.combine(policy_files, entity_files)
    expected = cg.cedarpy_outcomes(text, entities, requests, layout)
    refused = [e for e in expected if isinstance(e, cg.NoDecision) and e.kind != "request"]
    if refused:
        try:
            h.load(policy_files, entity_files, as_files)
        except CompileError:
            return
        _fail("cedarpy rejects the %s (%s) but authz.compile accepted them" % (refused[0].kind, refused[0].messages[0][:400]),
              policy_files, entities, requests, expected)
    try:
        h.load(policy_files, entity_files, as_files)
    except CompileError as e:
        _fail("authz.compile raised CompileError on input cedarpy accepts: %s" % e, policy_files, entities, requests, expected)

    good = [(r, e) for r, e in zip(requests, expected) if not isinstance(e, cg.NoDecision)]
    got = h.outcomes([r for r, _ in good])
    for (req, _), batched in zip(good, got):  # Engine.check must agree with check_batch on every request
        single = cg.decision_outcome(h.check(req))
        if single != batched:
            _fail("check and check_batch disagree on %r: %r vs %r" % (req, single, batched),
                  policy_files, entities, requests, expected, got)
    for (req, exp), out in zip(good, got):
        if exp != out:
            _fail("decision mismatch for request %r\n cedarpy: %r\n authz:   %r" % (req, exp, out),
                  policy_files, entities, requests, expected, got)
    for req, exp in zip(requests, expected):
        if isinstance(exp, cg.NoDecision):
            try:
                d = h.check(req)
            except RequestError:
                continue
            _fail("cedarpy rejects request %r (%s) but authz decided %r" % (req, exp.messages[0][:300], d.decision),
                  policy_files, entities, requests, expected)


def _family_test(h, family, name=None, **kw):
    name = name or family
    RAN[name] = 0

    @_settings(COUNTS[name])
    @given(case=cg.cases(family=family, **kw))
    def run(case):
        RAN[name] += 1
        check_case(h, cg.policy_files(case), cg.entity_files(case), case["requests"])

    run()
    assert RAN[name] >= int(COUNTS[name] * SCALE)
    DONE.add(name)


def test_core(authz_harness):
    """Literals, entities, sets, records, access, has, like, comparisons, && || !, in, is, contains*, if, arithmetic."""
    _family_test(authz_harness, "core")


def test_ext(authz_harness):
    """ip / decimal / datetime / duration, their methods and bad literals."""
    _family_test(authz_harness, "ext")


def test_graph(authz_harness):
    """Scopes, deep hierarchies, `is ... in`, action groups, tags."""
    _family_test(authz_harness, "graph")


def test_all(authz_harness):
    """Everything mixed, with some `@id` annotations; half the cases spread over two policy and two entity files."""
    _family_test(authz_harness, "all", ids=True, split=True)


def test_scopes(authz_harness):
    """Many policies (up to 25) with shallow conditions: exercises the index's candidate selection by scope."""
    _family_test(authz_harness, "graph", name="scopes", max_policies=25, max_depth=1)


def test_invalid_entities(authz_harness):
    """Entity files cedarpy rejects must be refused by authz.compile (CompileError)."""
    RAN["invalid_entities"] = 0

    @_settings(COUNTS["invalid_entities"])
    @given(case=cg.invalid_entity_cases())
    def run(case):
        RAN["invalid_entities"] += 1
        check_case(authz_harness, cg.policy_files(case), cg.entity_files(case), case["requests"])

    run()
    assert RAN["invalid_entities"] >= int(COUNTS["invalid_entities"] * SCALE)
    DONE.add("invalid_entities")


INVALID_REQ_POLICIES = 'permit(principal, action, resource) when { context has n };\nforbid(principal == User::"b", action, resource);\n'
INVALID_REQ_ENTITIES = [{"uid": {"type": "User", "id": "a"}, "attrs": {"n": 1}, "parents": []}]


def test_invalid_requests(authz_harness):
    """Requests cedarpy rejects (bad uid, bad context values) must raise RequestError."""
    RAN["invalid_requests"] = 0
    authz_harness.load(INVALID_REQ_POLICIES, INVALID_REQ_ENTITIES)

    @_settings(COUNTS["invalid_requests"])
    @given(req=cg.invalid_requests())
    def run(req):
        from authz.errors import RequestError

        RAN["invalid_requests"] += 1
        [exp] = cg.cedarpy_outcomes(INVALID_REQ_POLICIES, INVALID_REQ_ENTITIES, [req])
        if isinstance(exp, cg.NoDecision):
            try:
                d = authz_harness.check(req)
            except RequestError:
                return
            _fail("cedarpy rejects request (%s) but authz decided %r" % (exp.messages[0][:300], d.decision),
                  [(cg.POLICY_FILE, INVALID_REQ_POLICIES)], INVALID_REQ_ENTITIES, [req], [exp])
        out = cg.decision_outcome(authz_harness.check(req))
        if out != exp:
            _fail("decision mismatch\n cedarpy: %r\n authz:   %r" % (exp, out),
                  [(cg.POLICY_FILE, INVALID_REQ_POLICIES)], INVALID_REQ_ENTITIES, [req], [exp], out)

    run()
    assert RAN["invalid_requests"] >= int(COUNTS["invalid_requests"] * SCALE)
    DONE.add("invalid_requests")


def test_generator_health():
    """The generators make valid Cedar and a useful mix of outcomes (cedarpy only; no authz needed)."""
    import collections
    import json

    import cedarpy

    seen = collections.Counter()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=cg.cases(family="all", ids=True, split=True))
    def run(case):
        for _, text in cg.policy_files(case):
            if text.strip():
                cedarpy.policies_to_json_str(text)  # raises on invalid Cedar
        text, entities, layout = cg.combine(cg.policy_files(case), cg.entity_files(case))
        for out in cg.cedarpy_outcomes(text, entities, case["requests"], layout):
            assert not isinstance(out, cg.NoDecision), out  # valid cases never get NoDecision
            seen[out["decision"]] += 1
            seen["with reasons"] += bool(out["reasons"])
            seen["with errors"] += bool(out["errors"])
        json.dumps(case)  # plain JSON data

    run()
    total = seen["allow"] + seen["deny"]
    for key in ("allow", "deny", "with reasons", "with errors"):
        assert seen[key] >= total // 20, (key, dict(seen))


def test_compile_with_open_engine(tmp_path):
    """The API contract the harness relies on: compile a new generation while an Engine is open, refresh, see it."""
    import authz
    db = str(tmp_path / "x.lmdb")
    src = tmp_path / "policies.cedar"
    src.write_text("permit(principal, action, resource);")
    authz.compile([str(src)], db=db)
    engine = authz.Engine(db)
    req = dict(principal='User::"a"', action='Action::"read"', resource='Doc::"d"', context={})
    assert engine.check(**req).decision == "allow"
    src.write_text("forbid(principal, action, resource);")
    authz.compile([str(src)], db=db)
    engine.refresh()
    d = engine.check(**req)
    assert (d.decision, d.policies) == ("deny", ["policies.cedar:0"])


def test_zz_case_count():
    """When the whole module ran and passed, at least 5,000 generated cases were compared."""
    if DONE != set(COUNTS):
        pytest.skip("only part of the module ran (or passed)")
    assert sum(RAN.values()) >= 5000 * SCALE
