"""AuthZEN over HTTP: malformed payloads are 400s with a JSON message; a bad item of a batch is that item's deny;
the bounds (body size, batch length, nesting) hold; the short-circuit semantics; X-Request-ID; the metadata."""
from __future__ import annotations

import json

import pytest

RICK = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
BETH = "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
GOOD = {"subject": {"type": "identity", "id": RICK}, "action": {"name": "PUT"},
        "resource": {"type": "route", "id": "/todos/{todoId}"}}


def _nested(depth: int):
    v = "x"
    for _ in range(depth):
        v = {"k": v}
    return v


@pytest.mark.parametrize("body,field", [
    (b"{", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"text"', "must be a JSON object"),
    ({"action": GOOD["action"], "resource": GOOD["resource"]}, "`subject`: is missing"),
    ({**GOOD, "subject": {"id": RICK}}, "`subject.type`: is missing"),
    ({**GOOD, "subject": {"type": "identity"}}, "`subject.id`: is missing"),
    ({**GOOD, "subject": {"type": 7, "id": RICK}}, "`subject.type`: must be a string"),
    ({**GOOD, "subject": "identity:rick"}, "`subject`: must be an object"),
    ({**GOOD, "action": {"name": ""}}, "`action.name`: must not be empty"),
    ({**GOOD, "action": {"method": "PUT"}}, "`action.name`: is missing"),
    ({**GOOD, "resource": {"type": "route", "id": ["/todos"]}}, "`resource.id`: must be a string"),
    ({**GOOD, "context": []}, "`context`: must be an object"),
    ({**GOOD, "context": {"n": 1.5}}, "`context.n`: 1.5 is not an integer"),
    ({**GOOD, "context": {"n": 2**64}}, "outside Cedar's 64-bit integer range"),
    ({**GOOD, "context": {"list": [1, None]}}, "`context.list[1]`: null is not a Cedar value"),
    ({**GOOD, "subject": {**GOOD["subject"], "properties": "admin"}}, "`subject.properties`: must be an object"),
    ({**GOOD, "context": _nested(40)}, "nested deeper than 32 levels"),
    ({**GOOD, "action": {"name": "PUT", "properties": {"m": 1}}, "context": {"action": 1}},
     "`context.action`: is set from `action.properties`"),
    ({**GOOD, "context": {"token": {"task": "t"}}}, "`context.token` is set by task tokens only"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_malformed_single_evaluation_is_400(client, body, field):
    status, headers, doc = client.evaluation(body)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert field in doc["message"], doc


def test_a_body_nested_beyond_the_parser_is_400(client):
    status, _, doc = client.evaluation(b"[" * 200_000 + b"]" * 200_000)
    assert status == 400 and "nested too deeply" in doc["message"]


def test_unknown_fields_are_ignored(client):
    body = {**GOOD, "subject": {**GOOD["subject"], "_note": "x"}, "extra": {"deep": [1, 2]}}
    assert client.evaluation(body)[2] == {"decision": True}


def test_not_json_content_type_is_415(client):
    status, _, doc = client.post("/access/v1/evaluation", json.dumps(GOOD).encode(),
                                 {"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in doc["message"]


def test_too_big_a_body_is_413(dev_server):
    c = dev_server.client()
    try:
        big = {**GOOD, "context": {"pad": "x" * (4 * 1024 * 1024)}}
        status, _, doc = c.evaluation(big)
        assert status == 413 and "larger than" in doc["message"]
    finally:
        c.close()


def test_too_many_items_is_400(client):
    status, _, doc = client.evaluations({**GOOD, "evaluations": [{}] * 101})
    assert status == 400 and "101 items, more than the maximum batch size 100" in doc["message"]


@pytest.mark.parametrize("options,message", [
    ({"evaluations_semantic": "first_wins"}, "`options.evaluations_semantic`: must be one of"),
    ({"evaluations_semantic": 1}, "`options.evaluations_semantic`: must be one of"),
    ("deny_on_first_deny", "`options`: must be an object"),
])
def test_unknown_semantic_is_400(client, options, message):
    status, _, doc = client.evaluations({**GOOD, "options": options, "evaluations": [{}]})
    assert status == 400 and message in doc["message"]


def test_evaluations_must_be_an_array(client):
    status, _, doc = client.evaluations({**GOOD, "evaluations": {"0": {}}})
    assert status == 400 and "`evaluations`: must be an array" in doc["message"]


def test_a_bad_item_is_a_deny_with_its_reason(client):
    status, _, doc = client.evaluations({**GOOD, "evaluations": [
        {}, {"action": {"name": 3}}, {"resource": {"type": "route"}}, {"context": {"x": 0.5}}, "item",
        {"action": {"name": "GET"}, "resource": {"type": "route", "id": "/todos"}}]})
    assert status == 200
    items = doc["evaluations"]
    assert items[0] == {"decision": True} and items[5] == {"decision": True}
    for i, field in ((1, "evaluations[1].action.name"), (2, "evaluations[2].resource.id"),
                     (3, "evaluations[3].context.x"), (4, "evaluations[4]")):
        assert items[i]["decision"] is False and items[i]["context"]["reason"] == "request_parse_error"
        assert f"`{field}`" in items[i]["context"]["message"], items[i]


def test_a_missing_part_without_a_default_is_that_items_deny(client):
    status, _, doc = client.evaluations({"subject": GOOD["subject"], "evaluations": [
        {"action": {"name": "GET"}, "resource": {"type": "route", "id": "/todos"}}, {"action": {"name": "GET"}}]})
    assert status == 200 and doc["evaluations"][0] == {"decision": True}
    assert "`evaluations[1].resource`: is missing" in doc["evaluations"][1]["context"]["message"]


def test_a_bad_default_fails_only_the_items_that_use_it(client):
    status, _, doc = client.evaluations({**GOOD, "context": [], "evaluations": [{}, {"context": {}}]})
    assert status == 200
    assert doc["evaluations"][0]["context"]["message"].startswith("`context`: must be an object")
    assert doc["evaluations"][1] == {"decision": True}


def test_an_items_part_replaces_the_default_whole(client):
    """The default subject is Rick (an editor); an item's subject without `id` does not inherit Rick's id."""
    status, _, doc = client.evaluations({**GOOD, "evaluations": [
        {"subject": {"type": "identity", "id": BETH}}, {}]})
    assert doc["evaluations"] == [{"decision": False}, {"decision": True}]


def test_without_evaluations_the_body_is_one_evaluation(client):
    assert client.evaluations(GOOD)[2] == {"evaluations": [{"decision": True}]}
    assert client.evaluations({**GOOD, "evaluations": []})[2] == {"evaluations": [{"decision": True}]}


SEMANTIC_ITEMS = [{"action": {"name": "GET"}}, {"action": {"name": "POST"}}, {"action": 7},
                  {"action": {"name": "DELETE"}}]


@pytest.mark.parametrize("semantic,expected", [
    # Beth is a viewer: GET allowed, POST and DELETE denied; item 2 is malformed (a deny).
    (None, [True, False, None, False]),
    ("execute_all", [True, False, None, False]),
    ("deny_on_first_deny", [True, False]),
    ("permit_on_first_permit", [True]),
])
def test_semantics(client, semantic, expected):
    body = {"subject": {"type": "identity", "id": BETH}, "resource": {"type": "route", "id": "/todos"},
            "evaluations": SEMANTIC_ITEMS}
    if semantic is not None:
        body["options"] = {"evaluations_semantic": semantic}
    status, _, doc = client.evaluations(body)
    assert status == 200
    assert [None if "context" in d else d["decision"] for d in doc["evaluations"]] == expected


def test_a_bad_item_counts_as_a_deny_for_the_short_circuit(client):
    body = {"subject": {"type": "identity", "id": BETH}, "resource": {"type": "route", "id": "/todos"},
            "options": {"evaluations_semantic": "deny_on_first_deny"},
            "evaluations": [{"action": 7}, {"action": {"name": "GET"}}]}
    doc = client.evaluations(body)[2]
    assert len(doc["evaluations"]) == 1 and doc["evaluations"][0]["context"]["reason"] == "request_parse_error"
    body["options"]["evaluations_semantic"] = "permit_on_first_permit"
    assert client.evaluations(body)[2]["evaluations"][1] == {"decision": True}


def test_request_id_is_echoed(client):
    for status_body in (GOOD, {"subject": 1}):
        _, headers, _ = client.evaluation(status_body, {"X-Request-ID": "bfe9eb29-ab87"})
        assert headers["x-request-id"] == "bfe9eb29-ab87"
    _, headers, _ = client.evaluations(GOOD, {"X-Request-ID": "r-2"})
    assert headers["x-request-id"] == "r-2"
    _, headers, _ = client.evaluation(GOOD)
    assert "x-request-id" not in headers
    status, _, _ = client.evaluation(GOOD, {"X-Request-ID": "r" * 300})
    assert status == 400


def test_nothing_leaks_into_the_next_request(client):
    """An evaluation's context does not reach the next one (the engine sees a fresh request each time)."""
    route = {"type": "route", "id": "/todos"}
    body = {"subject": {"type": "identity", "id": BETH}, "action": {"name": "GET"}, "resource": route,
            "context": {"a": 1}}
    assert client.evaluation(body)[2] == {"decision": True}
    assert client.evaluation({**body, "context": {}})[2] == {"decision": True}


def test_configuration(dev_server, client):
    status, headers, doc = client.request("GET", "/.well-known/authzen-configuration")
    base = f"http://{dev_server.http_address}"
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert doc == {"policy_decision_point": base, "access_evaluation_endpoint": base + "/access/v1/evaluation",
                   "access_evaluations_endpoint": base + "/access/v1/evaluations"}
    # The base URL is the one the caller used (its Host).
    _, _, doc = client.request("GET", "/.well-known/authzen-configuration", headers={"Host": "pdp.example:8080"})
    assert doc["access_evaluation_endpoint"] == "http://pdp.example:8080/access/v1/evaluation"


def test_unknown_paths_and_methods(client):
    assert client.request("GET", "/access/v1/evaluation")[0] == 405
    assert client.post("/access/v1/search/subject", GOOD)[0] == 404
