"""The bundled agents-and-tools example compiles, and authz decides its sample requests exactly as cedarpy does."""

import json
from pathlib import Path

import cedarpy

import authz

EXAMPLES = Path(authz.__file__).parent / "examples"


def test_bundled_example_agrees_with_cedarpy(tmp_path):
    db = str(tmp_path / "db")
    authz.compile([str(EXAMPLES / "policies")], db=db)
    text = (EXAMPLES / "policies" / "agents.cedar").read_text()
    entities = (EXAMPLES / "policies" / "entities.json").read_text()
    # cedarpy names policies by position; map them to the `@id`s every example policy carries.
    order = [p["annotations"]["id"] for p in json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].values()]
    requests = [json.loads(line) for line in (EXAMPLES / "requests.jsonl").read_text().splitlines() if line.strip()]
    outcomes = set()
    with authz.Engine(db) as engine:
        for request in requests:
            ours = engine.check(**request)
            theirs = cedarpy.is_authorized(request, text, entities)
            assert ours.allowed == theirs.allowed, request
            assert set(ours.policies) == {order[int(r[len("policy"):])] for r in theirs.diagnostics.reasons}
            assert not ours.errors and not theirs.diagnostics.errors
            outcomes.add((ours.decision, bool(ours.policies)))
    assert outcomes == {("allow", True), ("deny", True), ("deny", False)}
