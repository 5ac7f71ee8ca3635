"""Malformed protobuf over a real channel: every service answers INVALID_ARGUMENT with a short message naming
what it could, logs no traceback, and a burst of bad requests leaves only a few log lines."""
import logging
import time

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from authz._pb import tokens_pb2
from authz.server.logthrottle import ThrottledLog
from authz.server.pbdiagnose import explain

UNARY_METHODS = [
    "/authz.v1.Authorizer/Check", "/authz.v1.Authorizer/BatchCheck",
    "/authz.v1.Tokens/Issue", "/authz.v1.Tokens/Exchange", "/authz.v1.Tokens/Revoke", "/authz.v1.Tokens/Introspect",
    "/authz.v1.Tokens/GetJwks", "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/List",
]
WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# Bytes that no request message of these services parses from.
GARBAGE = {
    "a cut varint": b"\xff\xff\xff",
    "a length past the end": b"\x0a\x7fxxx",
    "an end-group tag": b"\x0c",
    "an 11-byte varint": b"\x08" + b"\xff" * 10 + b"\x01",
}


def _ld(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    n, length = len(payload), b""
    while True:
        low, n = n & 0x7F, n >> 7
        length += bytes([low | 0x80 if n else low])
        if not n:
            return bytes([number << 3 | 2]) + length + payload


def _nested_struct(depth: int) -> bytes:
    """A google.protobuf.Struct {"a": {"a": ... {"x": "y"}}} with `depth` levels of "a", as bytes (protobuf
    itself refuses to build one this deep)."""
    inner = _ld(1, _ld(1, b"x") + _ld(2, _ld(3, b"y")))
    for _ in range(depth):
        inner = _ld(1, _ld(1, b"a") + _ld(2, _ld(5, inner)))
    return inner


_UIDS = (_ld(1, pb.EntityUid(type="Agent", id="a1").SerializeToString())
         + _ld(2, pb.EntityUid(type="Action", id="call").SerializeToString())
         + _ld(3, pb.EntityUid(type="Tool", id="t").SerializeToString()))


def _call(channel, method: str, data: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(method)(data, timeout=10)
    return e.value


@pytest.fixture(scope="module")
def channel(shared_server):
    with shared_server.channel() as ch:
        yield ch


@pytest.mark.parametrize("garbage", list(GARBAGE))
@pytest.mark.parametrize("method", UNARY_METHODS)
def test_garbage_is_invalid_argument(channel, method, garbage):
    e = _call(channel, method, GARBAGE[garbage])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert e.details().startswith("cannot parse the ") and len(e.details()) < 200


def test_garbage_on_streaming_methods(channel):
    with pytest.raises(grpc.RpcError) as e:
        list(channel.unary_stream(WATCH)(GARBAGE["a cut varint"], timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        list(channel.stream_stream(REFLECTION)(iter([GARBAGE["an end-group tag"]]), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("cannot parse the ServerReflectionRequest")


def test_the_bad_field_is_named(channel):
    bad_type = _ld(1, _ld(1, b"\xc3\x28"))  # principal.type: not UTF-8
    e = _call(channel, "/authz.v1.Authorizer/Check", bad_type)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == "cannot parse the CheckRequest: `principal.type` is not valid UTF-8"
    e = _call(channel, "/authz.v1.Authorizer/BatchCheck", _ld(5, _ld(2, _ld(2, b"\xff"))))
    assert e.details() == "cannot parse the BatchCheckRequest: `items[0].action.id` is not valid UTF-8"


@pytest.mark.parametrize("depth", [33, 40, 200])
def test_deep_context_is_the_same_error_for_check_and_batch_check(channel, depth):
    """protobuf refuses these before the handler; the answer names the field as a shallower one's does."""
    path = "." + ".".join(["a"] * 33)
    e = _call(channel, "/authz.v1.Authorizer/Check", _UIDS + _ld(4, _nested_struct(depth)))
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                      f"`context{path}` is nested deeper than 32 levels")
    e = _call(channel, "/authz.v1.Authorizer/BatchCheck", _UIDS + _ld(4, _nested_struct(depth)))
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                      f"`context{path}` is nested deeper than 32 levels")
    e = _call(channel, "/authz.v1.Authorizer/BatchCheck", _UIDS + _ld(5, _ld(4, _nested_struct(depth))))
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                      f"`items[0].context{path}` is nested deeper than 32 levels")


def test_a_burst_of_bad_requests_logs_a_few_lines(channel, shared_server):
    from authz.server.malformed import LOG_INTERVAL_S

    before = shared_server.stderr()
    start = time.monotonic()
    methods = UNARY_METHODS
    for i in range(200):
        e = _call(channel, methods[i % len(methods)], GARBAGE["a length past the end"])
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    elapsed = time.monotonic() - start
    new = shared_server.stderr()[len(before):]
    assert "Traceback" not in new
    # One line per method and worker for each LOG_INTERVAL_S begun during the burst.
    bound = len(methods) * len(shared_server.pids) * (2 + int(elapsed // LOG_INTERVAL_S))
    lines = new.splitlines()
    assert len(lines) <= bound, new[-2000:]
    assert all("malformed request" in line for line in lines), new[-2000:]
    # The module's earlier bad requests were logged (this burst's may all be held back by them).
    assert "/authz.v1.Tokens/Issue: malformed request from " in shared_server.stderr()


def test_good_requests_after_bad_ones(channel, shared_server):
    r = pbg.AuthorizerStub(channel).Check(pb.CheckRequest(
        principal=pb.EntityUid(type="Agent", id="a1"), action=pb.EntityUid(type="Action", id="call"),
        resource=pb.EntityUid(type="Tool", id="t")), timeout=10)
    assert r.decision == pb.DECISION_ALLOW
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # a guarded streaming answer
    watch.cancel()
    assert shared_server.workers_alive()
    assert "Traceback" not in shared_server.stderr()


_VALID = [pb.CheckRequest(principal=pb.EntityUid(type="Agent", id="a"), context={"k": [1, {"x": "y"}]}),
          pb.BatchCheckRequest(items=[pb.BatchCheckItem(action=pb.EntityUid(type="Action", id="call"),
                                                        context={"a": {"b": True}})] * 2),
          tokens_pb2.IssueRequest(task="t", scope=tokens_pb2.TokenScope(actions=["a"], resources=["r"]), ttl_s=60)]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(_VALID), st.data())
def test_explain_answers_every_refused_message(message, data):
    """Random damage to a valid message: what protobuf refuses gets an answer, never an exception."""
    raw = bytearray(message.SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        type(message).FromString(bytes(raw))
        return
    except DecodeError:
        pass
    answer = explain(bytes(raw), type(message).DESCRIPTOR, 32)
    assert answer.startswith(f"cannot parse the {type(message).DESCRIPTOR.name}") or "nested deeper" in answer


def test_throttled_log_holds_back_and_counts(caplog):
    now = [100.0]
    throttled = ThrottledLog(logging.getLogger("test.throttle"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        assert throttled.log(logging.WARNING, "a", "bad %s", "x")
        assert not throttled.log(logging.WARNING, "a", "bad %s", "y")
        assert throttled.log(logging.WARNING, "b", "other")  # another kind has its own interval
        now[0] += 9.9
        assert not throttled.log(logging.WARNING, "a", "bad %s", "z")
        now[0] += 0.1
        assert throttled.log(logging.WARNING, "a", "bad %s", "w")
        now[0] += 10
        assert throttled.log(logging.WARNING, "a", "bad %s", "v")
    assert [r.getMessage() for r in caplog.records] == [
        "bad x", "other", "bad w (2 more held back since the last such line)", "bad v"]
