"""authz.v1 Authorizer through its generated stubs over real gRPC: Check, BatchCheck order and semantics, limits."""
import grpc
import pytest

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from google.protobuf import struct_pb2


def uid(t, i):
    return pb.EntityUid(type=t, id=i)


@pytest.fixture(scope="module")
def stub(shared_server):
    with grpc.insecure_channel(shared_server.address) as ch:
        yield pbg.AuthorizerStub(ch)


def test_check_allow_and_deny(stub):
    r = stub.Check(pb.CheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"),
                                   resource=uid("Tool", "search")))
    assert r.decision == pb.DECISION_ALLOW
    assert list(r.policies) == ["agent-call"]
    assert r.decision_id and r.generation >= 1
    r = stub.Check(pb.CheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"),
                                   resource=uid("Tool", "rm")))
    assert r.decision == pb.DECISION_DENY
    assert list(r.policies) == ["no-rm"]
    r = stub.Check(pb.CheckRequest(principal=uid("Agent", "a2"), action=uid("Action", "call"),
                                   resource=uid("Tool", "search")))
    assert r.decision == pb.DECISION_DENY and list(r.policies) == []


def test_check_context_struct(stub):
    ctx = struct_pb2.Struct()
    ctx.update({"http": {"path": "/public/x", "headers": {}}, "n": 3})
    r = stub.Check(pb.CheckRequest(principal=uid("Agent", "z"), action=uid("Action", "GET"),
                                   resource=uid("Route", "/public/x"), context=ctx))
    assert r.decision == pb.DECISION_ALLOW and list(r.policies) == ["public-get"]


@pytest.mark.parametrize("request_, field", [
    (pb.CheckRequest(action=uid("Action", "call"), resource=uid("Tool", "t")), "principal"),
    (pb.CheckRequest(principal=uid("", "a"), action=uid("Action", "call"), resource=uid("Tool", "t")),
     "principal.type"),
])
def test_check_invalid_argument_names_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as e:
        stub.Check(request_)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"`{field}" in e.value.details()


def test_check_float_context_is_invalid(stub):
    ctx = struct_pb2.Struct()
    ctx.update({"ratio": 0.5})
    with pytest.raises(grpc.RpcError) as e:
        stub.Check(pb.CheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"),
                                   resource=uid("Tool", "t"), context=ctx))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context.ratio" in e.value.details()


def _batch(resources, semantic=pb.EVALUATION_SEMANTIC_UNSPECIFIED):
    return pb.BatchCheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"),
                                items=[pb.BatchCheckItem(resource=uid("Tool", r)) for r in resources],
                                semantic=semantic)


def _decisions(resp):
    return ["allow" if r.decision == pb.DECISION_ALLOW else "deny" for r in resp.results]


def test_batch_answers_in_request_order(stub):
    tools = ["t0", "rm", "t2", "rm", "t4", "t5"]
    resp = stub.BatchCheck(_batch(tools))
    assert _decisions(resp) == ["allow", "deny", "allow", "deny", "allow", "allow"]
    assert [list(r.policies) for r in resp.results][:2] == [["agent-call"], ["no-rm"]]
    assert len({r.decision_id for r in resp.results}) == len(tools)
    assert len({r.generation for r in resp.results}) == 1


def test_batch_item_overrides_defaults(stub):
    req = pb.BatchCheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"),
                               resource=uid("Tool", "t"),
                               items=[pb.BatchCheckItem(), pb.BatchCheckItem(principal=uid("Agent", "other")),
                                      pb.BatchCheckItem(resource=uid("Tool", "rm"))])
    assert _decisions(stub.BatchCheck(req)) == ["allow", "deny", "deny"]


def test_batch_without_items_is_one_request(stub):
    req = pb.BatchCheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"), resource=uid("Tool", "t"))
    assert _decisions(stub.BatchCheck(req)) == ["allow"]


def test_batch_deny_on_first_deny(stub):
    resp = stub.BatchCheck(_batch(["t0", "t1", "rm", "t3"], pb.EVALUATION_SEMANTIC_DENY_ON_FIRST_DENY))
    assert _decisions(resp) == ["allow", "allow", "deny"]
    resp = stub.BatchCheck(_batch(["t0", "t1"], pb.EVALUATION_SEMANTIC_DENY_ON_FIRST_DENY))
    assert _decisions(resp) == ["allow", "allow"]


def test_batch_permit_on_first_permit(stub):
    resp = stub.BatchCheck(_batch(["rm", "rm", "t2", "t3"], pb.EVALUATION_SEMANTIC_PERMIT_ON_FIRST_PERMIT))
    assert _decisions(resp) == ["deny", "deny", "allow"]
    resp = stub.BatchCheck(_batch(["rm", "rm"], pb.EVALUATION_SEMANTIC_PERMIT_ON_FIRST_PERMIT))
    assert _decisions(resp) == ["deny", "deny"]


def test_batch_execute_all_explicit(stub):
    resp = stub.BatchCheck(_batch(["rm", "t1"], pb.EVALUATION_SEMANTIC_EXECUTE_ALL))
    assert _decisions(resp) == ["deny", "allow"]


def test_batch_malformed_item_is_answered_in_place(stub):
    req = pb.BatchCheckRequest(action=uid("Action", "call"), resource=uid("Tool", "t"),
                               items=[pb.BatchCheckItem(principal=uid("Agent", "a1")), pb.BatchCheckItem(),
                                      pb.BatchCheckItem(principal=uid("Agent", "a1"))])
    resp = stub.BatchCheck(req)
    assert _decisions(resp) == ["allow", "deny", "allow"]
    err = resp.results[1].request_error
    assert err.code == "request_parse_error" and "items[1].principal" in err.message
    # deny_on_first_deny stops at a malformed item.
    req.semantic = pb.EVALUATION_SEMANTIC_DENY_ON_FIRST_DENY
    assert _decisions(stub.BatchCheck(req)) == ["allow", "deny"]


def test_batch_over_the_maximum_is_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.BatchCheck(_batch([f"t{i}" for i in range(101)]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum batch size 100" in e.value.details()
    assert len(stub.BatchCheck(_batch([f"t{i}" for i in range(100)])).results) == 100


def test_health_and_reflection(shared_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(shared_server.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "envoy.service.auth.v3.Authorization", "authz.v1.Authorizer"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == \
                health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answers[0].list_services_response.service}
        assert {"authz.v1.Authorizer", "envoy.service.auth.v3.Authorization", "grpc.health.v1.Health"} <= names
