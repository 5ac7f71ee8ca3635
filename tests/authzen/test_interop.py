"""The AuthZEN interop scenarios (Todo 1.0, Todo 1.1, API gateway; files in interop/) against `authz serve` over HTTP,
with our Cedar policies for them (policies/)."""
from __future__ import annotations

import json

import pytest

from authzenkit import INTEROP


def _cases(name: str, endpoint: str) -> list:
    doc = json.loads((INTEROP / name).read_text())
    return [pytest.param(c["request"], c["expected"], id=f"{name}-{endpoint}-{i}")
            for i, c in enumerate(doc.get(endpoint, ()))]


EVALUATION = [p for n in ("todo-1.0.json", "todo-1.1.json", "api-gateway.json") for p in _cases(n, "evaluation")]
EVALUATIONS = _cases("todo-1.1.json", "evaluations")


def test_scenarios_are_there():
    assert len(EVALUATION) == 105 and len(EVALUATIONS) == 3


@pytest.mark.parametrize("request_body,expected", EVALUATION)
def test_evaluation(client, request_body, expected):
    status, _, body = client.evaluation(request_body)
    assert status == 200 and body == {"decision": expected}


@pytest.mark.parametrize("request_body,expected", EVALUATIONS)
def test_evaluations(client, request_body, expected):
    status, _, body = client.evaluations(request_body)
    assert status == 200 and body == {"evaluations": expected}


def test_the_todo_1_1_payload_document_example(client):
    """The `evaluations` example of the Todo 1.1 payload document: empty top-level resource and context."""
    morty = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
    status, _, body = client.evaluations({
        "subject": {"type": "user", "id": morty}, "action": {"name": "can_update_todo"}, "resource": {},
        "context": {}, "evaluations": [
            {"resource": {"type": "todo", "id": "7240d0db-8ff0-41ec-98b2-34a096273b9f",
                          "properties": {"ownerID": "rick@the-citadel.com"}}},
            {"resource": {"type": "todo", "id": "7240d0db-8ff0-41ec-98b2-34a096273b9e",
                          "properties": {"ownerID": "morty@the-citadel.com"}}}]})
    assert status == 200 and body == {"evaluations": [{"decision": False}, {"decision": True}]}
