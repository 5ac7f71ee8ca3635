"""Bad input over the wire: each is answered (a deny or INVALID_ARGUMENT), no worker dies, and normal answers follow."""
import json

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as eag

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg

PERMISSION_DENIED = 7


def _http(method="GET", path="/public/x", headers=None, body=None, raw_body=None, ctype=None):
    req = ea.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path = method, path
    for k, v in (headers or {}).items():
        http.headers[k] = v
    if ctype:
        http.headers["content-type"] = ctype
    if body is not None:
        http.body = body
    if raw_body is not None:
        http.raw_body = raw_body
    return req


def _reason(resp):
    assert resp.status.code == PERMISSION_DENIED
    assert resp.denied_response.status.code == 403
    return json.loads(resp.denied_response.body)["reason"]


@pytest.fixture(scope="module")
def stubs(shared_server):
    opts = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
    with grpc.insecure_channel(shared_server.address, options=opts) as ch:
        yield eag.AuthorizationStub(ch), pbg.AuthorizerStub(ch)


BAD_ENVOY = {
    "empty CheckRequest": (ea.CheckRequest(), "request_parse_error"),
    "10,000 headers": (_http(headers={f"x-h{i}": "v" for i in range(10_000)}), "request_too_large"),
    "1 MiB header value": (_http(headers={"x-big": "v" * (1 << 20)}), "request_too_large"),
    "non-UTF-8 JSON body": (_http("POST", "/mcp", raw_body=b'{"method": "tools/call\xff\xfe"}', ctype="application/json"),
                            "request_parse_error"),
    "deeply nested JSON body": (_http("POST", "/mcp", raw_body=b"[" * 200_000 + b"]" * 200_000,
                                      ctype="application/json"), "request_parse_error"),
    "deeply nested MCP arguments": (_http("POST", "/mcp", ctype="application/json", raw_body=json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": "search", "arguments": {"a": json.loads("[" * 500 + "]" * 500)}}}).encode()),
        "request_parse_error"),
    "tools/call without a name": (_http("POST", "/mcp", ctype="application/json",
                                        body='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}'),
                                  "request_parse_error"),
    "JSON-RPC batch larger than the maximum": (_http("POST", "/mcp", ctype="application/json", body=json.dumps(
        [{"jsonrpc": "2.0", "id": i, "method": "tools/list"} for i in range(101)])), "request_too_large"),
    "unknown entity types": (_http("FROB", "/public/x"), "no_permitting_policy"),
}


@pytest.mark.parametrize("name", list(BAD_ENVOY))
def test_bad_envoy_request_is_denied(stubs, shared_server, name):
    envoy, _ = stubs
    request, reason = BAD_ENVOY[name]
    assert _reason(envoy.Check(request, timeout=30)) == reason
    assert shared_server.workers_alive()


def test_unknown_entity_types_over_v1(stubs, shared_server):
    _, v1 = stubs
    r = v1.Check(pb.CheckRequest(principal=pb.EntityUid(type="Nobody::Knows", id="x"),
                                 action=pb.EntityUid(type="Weird", id="y"), resource=pb.EntityUid(type="Z", id="")))
    assert r.decision == pb.DECISION_DENY
    with pytest.raises(grpc.RpcError) as e:
        v1.Check(pb.CheckRequest(principal=pb.EntityUid(type="not a type!", id="x"),
                                 action=pb.EntityUid(type="Action", id="y"), resource=pb.EntityUid(type="Z", id="")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert shared_server.workers_alive()


def test_oversized_batch_and_message(stubs, shared_server):
    _, v1 = stubs
    item = pb.BatchCheckItem(principal=pb.EntityUid(type="Agent", id="a1"))
    with pytest.raises(grpc.RpcError) as e:
        v1.BatchCheck(pb.BatchCheckRequest(items=[item] * 5000))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Over the 4 MiB message bound: refused by gRPC itself, the worker lives on.
    with pytest.raises(grpc.RpcError) as e:
        v1.BatchCheck(pb.BatchCheckRequest(items=[pb.BatchCheckItem(principal=pb.EntityUid(type="A", id="x" * 1000))]
                                           * 5000))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert shared_server.workers_alive()


def test_normal_answers_after_bad_input(stubs, shared_server):
    envoy, v1 = stubs
    for _ in range(20):  # new requests on both workers' connections
        assert envoy.Check(_http()).status.code == 0
    r = v1.Check(pb.CheckRequest(principal=pb.EntityUid(type="Agent", id="a1"), action=pb.EntityUid(type="Action", id="call"),
                                 resource=pb.EntityUid(type="Tool", id="t")))
    assert r.decision == pb.DECISION_ALLOW
    assert shared_server.workers_alive()
    assert "Traceback" not in shared_server.stderr()
