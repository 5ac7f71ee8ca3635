"""authz.server._wire against protobuf: decoding must agree with the protobuf path wherever it answers, and
encoding must give exactly protobuf's bytes."""
from collections import Counter

import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz._pb import authz_pb2 as pb
from authz.server._wire import decode_batch_check, encode_check_results
from authz.server.api import _PLAIN_CODES, AuthorizerServicer, to_response
from authz.server.decider import Invalid, Outcome
from harness import engine_decisions

DEPTH = 4


def slow_requests(msg: pb.BatchCheckRequest, principal_optional: bool = True) -> list:
    """What the protobuf path makes of a batch (the reference)."""
    return AuthorizerServicer(None, max_context_depth=DEPTH)._batch_requests(msg, principal_optional)


def uid(t, i):
    return pb.EntityUid(type=t, id=i)


def struct(d):
    s = struct_pb2.Struct()
    s.update(d)
    return s


# -- decoding -------------------------------------------------------------------------------------


def test_decode_plain_batch_matches_protobuf_path():
    msg = pb.BatchCheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"),
                               context=struct({"env": "prod", "n": 3, "tags": ["x", True], "r": {"k": -2}}),
                               semantic=pb.EVALUATION_SEMANTIC_DENY_ON_FIRST_DENY)
    msg.items.add(resource=uid("Tool", "t1"))
    msg.items.add(resource=uid("Tool", "t2"), context=struct({"only": "item"}))
    msg.items.add(principal=uid("Agent", "ü\"\\"), action=uid("Action", "read"), resource=uid("Tool", "t1"))
    semantic, n, requests = decode_batch_check(msg.SerializeToString(), DEPTH, False)
    assert (semantic, n) == (pb.EVALUATION_SEMANTIC_DENY_ON_FIRST_DENY, 3)
    assert requests == slow_requests(msg)
    assert requests[0]["context"] == {"env": "prod", "n": 3, "tags": ["x", True], "r": {"k": -2}}
    # Repeated parts are decoded once and shared (the engine only reads them).
    assert requests[0]["resource"] is requests[2]["resource"]


def test_decode_large_batch_of_repeated_and_distinct_parts():
    """More distinct parts than the per-batch table remembers, with repeats among them: the same
    requests as the protobuf path, repeats shared while the table has room."""
    msg = pb.BatchCheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"))
    for i in range(1500):
        item = msg.items.add(resource=uid("Tool", f"t{i % 700}"))
        item.context.update({"i": str(i % 450)})
    semantic, n, requests = decode_batch_check(msg.SerializeToString(), DEPTH, False)
    assert n == 1500 and requests == slow_requests(msg)
    assert requests[700]["resource"] is requests[0]["resource"]
    assert requests[450]["context"] is requests[0]["context"]
    # An empty context next to items without one.
    msg = pb.BatchCheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"))
    msg.items.add(resource=uid("Tool", "t"), context=struct({}))
    msg.items.add(resource=uid("Tool", "t"))
    decoded = decode_batch_check(msg.SerializeToString(), DEPTH, False)[2]
    assert decoded == slow_requests(msg) and decoded[0]["context"] == {}


def test_decode_without_items_is_one_request():
    msg = pb.BatchCheckRequest(principal=uid("Agent", "a"), action=uid("Action", "x"), resource=uid("Tool", "t"))
    assert decode_batch_check(msg.SerializeToString(), DEPTH, False) == (0, 0, slow_requests(msg))
    assert decode_batch_check(b"", DEPTH, False) is None  # no parts at all: the protobuf path names them


@pytest.mark.parametrize("msg", [
    pb.BatchCheckRequest(action=uid("Action", "x"), resource=uid("Tool", "t"), items=[pb.BatchCheckItem()]),
    pb.BatchCheckRequest(principal=uid("", "a"), action=uid("Action", "x"), resource=uid("Tool", "t"),
                         items=[pb.BatchCheckItem()]),
    pb.BatchCheckRequest(principal=uid("A", "a"), action=uid("Action", "x"), items=[pb.BatchCheckItem()]),
    pb.BatchCheckRequest(principal=uid("A", "a"), action=uid("Action", "x"), resource=uid("T", "t"),
                         items=[pb.BatchCheckItem(context=struct({"f": 0.5}))]),
    pb.BatchCheckRequest(principal=uid("A", "a"), action=uid("Action", "x"), resource=uid("T", "t"),
                         items=[pb.BatchCheckItem(context=struct({"n": None}))]),
    pb.BatchCheckRequest(principal=uid("A", "a"), action=uid("Action", "x"), resource=uid("T", "t"),
                         items=[pb.BatchCheckItem(context=struct({"big": 2.0 ** 63}))]),
    pb.BatchCheckRequest(principal=uid("A", "a"), action=uid("Action", "x"), resource=uid("T", "t"),
                         items=[pb.BatchCheckItem(context=struct({"a": {"b": {"c": {"d": {"e": 1}}}}}))]),
], ids=["no-principal", "empty-type", "no-resource", "fraction", "null", "2^63", "too-deep"])
def test_decode_declines_what_the_protobuf_path_must_answer(msg):
    assert decode_batch_check(msg.SerializeToString(), DEPTH, False) is None
    assert isinstance(slow_requests(msg, False)[0], Invalid)  # the reference refuses it, naming the field


def test_decode_principal_optional():
    msg = pb.BatchCheckRequest(action=uid("Action", "x"), resource=uid("Tool", "t"), items=[pb.BatchCheckItem()])
    _, _, requests = decode_batch_check(msg.SerializeToString(), DEPTH, True)
    assert requests == slow_requests(msg, True) and requests[0]["principal"] is None


def test_decode_declines_malformed_and_merged_messages():
    good = pb.BatchCheckRequest(principal=uid("A", "a"), action=uid("Action", "x"), resource=uid("T", "t"))
    data = good.SerializeToString()
    for bad in (data[:-1], data + b"\x0a", b"\xff" * 11, b"\x0b\x00", data + b"\x0a\x03\x0a\x01\xff"):
        assert decode_batch_check(bad, DEPTH, False) is None
    # A repeated singular message field is merged by protobuf: left to it.
    twice = data + b"\x0a\x03\x0a\x01B"  # field 1 (principal) again
    assert decode_batch_check(twice, DEPTH, False) is None
    # Unknown fields are skipped, as protobuf does.
    unknown = data + b"\x78\x05" + b"\x82\x01\x02hi"  # field 15 varint, field 16 bytes
    assert decode_batch_check(unknown, DEPTH, False) == (0, 0, slow_requests(good))


_scalars = st.one_of(st.text(max_size=5), st.booleans(), st.integers(-2 ** 53, 2 ** 53),
                     st.floats(allow_nan=True, allow_infinity=True), st.none())
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                       max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(st.text(max_size=4), _values, max_size=4), min_size=1, max_size=4),
       st.booleans(), st.sampled_from(["A", "", "Agent"]))
def test_decode_agrees_with_protobuf_path(contexts, with_default, principal_type):
    msg = pb.BatchCheckRequest(action=uid("Action", "x"), resource=uid("T", "t"))
    if with_default:
        msg.principal.CopyFrom(uid(principal_type, "p"))
    for ctx in contexts:
        msg.items.add(context=struct(ctx))
    decoded = decode_batch_check(msg.SerializeToString(), DEPTH, False)
    reference = slow_requests(msg, False)
    if decoded is None:  # declined: the reference must have something to say (an Invalid)
        assert any(isinstance(r, Invalid) for r in reference)
    else:
        assert decoded[2] == reference


# -- encoding -------------------------------------------------------------------------------------


class FakeDecision:
    def __init__(self, allowed, policies, errors):
        self.allowed, self.policies, self.errors = allowed, policies, errors


_policies = st.lists(st.text(min_size=0, max_size=6), max_size=3)
_errors = st.lists(st.fixed_dictionaries({"policy": st.text(max_size=5), "message": st.text(max_size=8)}), max_size=2)
_results = st.one_of(
    st.integers(0, 3).map(lambda i: engine_decisions()[i]),  # the encoder's C path
    st.builds(FakeDecision, st.booleans(), _policies, _errors),
    st.tuples(st.sampled_from(["request_parse_error", "index_unavailable", "out_of_scope", "token_alg_none"]),
              st.text(max_size=8), st.text(max_size=5)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_results, max_size=5), st.integers(0, 2 ** 40), st.integers(0, 2 ** 64 - 1))
def test_encode_is_protobufs_bytes(results, first, generation):
    prefix = "0123456789ab"
    reference = pb.BatchCheckResponse()
    for k, r in enumerate(results):
        did = f"{prefix}{first + k:010x}"
        if isinstance(r, tuple):
            o = Outcome(did, False, (), (), generation, r[0], r[1], r[2])
        else:
            o = Outcome(did, r.allowed, r.policies, r.errors, generation)
        to_response(o, reference.results.add())
    assert encode_check_results(results, prefix, first, generation, _PLAIN_CODES) == reference.SerializeToString()


def test_encode_nothing():
    assert encode_check_results([], "p", 1, 0, _PLAIN_CODES) == b""


# -- Envoy CheckRequest -----------------------------------------------------------------------------

from envoy.service.auth.v3 import external_auth_pb2  # noqa: E402

from authz.server._wire import decode_envoy_check  # noqa: E402
from authz.server.envoy import Limits, check_view  # noqa: E402

_short = st.text(max_size=6)
_header_names = st.sampled_from([":path", ":method", "x-team", "X-Team", "content-type", "authorization", "é"])


@st.composite
def check_requests(draw):
    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    for peer in (a.source, a.destination):
        if draw(st.booleans()):
            peer.address.socket_address.address = draw(_short)
            peer.address.socket_address.port_value = draw(st.integers(0, 65535))
            peer.principal = draw(_short)
            peer.certificate = draw(_short)
            peer.service = draw(_short)
            for k, v in draw(st.dictionaries(_short, _short, max_size=2)).items():
                peer.labels[k] = v
    for k, v in draw(st.dictionaries(_short, _short, max_size=3)).items():
        a.context_extensions[k] = v
    h = a.request.http
    h.method, h.path, h.host, h.scheme = (draw(_short) for _ in range(4))
    h.id, h.query, h.protocol = draw(_short), draw(_short), draw(_short)
    h.size = draw(st.integers(-1, 10 ** 6))
    for k, v in draw(st.dictionaries(_header_names, _short, max_size=4)).items():
        h.headers[k] = v
    for k, v, raw in draw(st.lists(st.tuples(_header_names, _short, st.binary(max_size=4)), max_size=4)):
        h.header_map.headers.add(key=k, value=v, raw_value=raw)
    body = draw(st.one_of(st.none(), _short, st.binary(max_size=8)))
    if isinstance(body, str):
        h.body = body
    elif isinstance(body, bytes):
        h.raw_body = body
    return req


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(check_requests())
def test_envoy_decode_agrees_with_the_message(req):
    limits = Limits(max_headers=3)
    view = decode_envoy_check(req.SerializeToString(), limits.max_headers)
    reference = check_view(req, limits)
    if view is None:  # declined: only beyond the header limit here (in either header form)
        http = req.attributes.request.http
        assert max(len(http.headers), len(http.header_map.headers)) > limits.max_headers
    else:
        assert view == reference


def test_envoy_decode_declines_what_protobuf_handles():
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.method = "GET"
    data = req.SerializeToString()
    assert decode_envoy_check(data, 10) is not None
    assert decode_envoy_check(data[:-1], 10) is None  # truncated
    assert decode_envoy_check(data + data, 10) is None  # attributes twice: protobuf merges them
    pipe = external_auth_pb2.CheckRequest()
    pipe.attributes.source.address.pipe.path = "/sock"
    assert decode_envoy_check(pipe.SerializeToString(), 10) is None
    meta = external_auth_pb2.CheckRequest()
    meta.attributes.metadata_context.filter_metadata["f"].update({"k": "v"})
    assert decode_envoy_check(meta.SerializeToString(), 10) is None
    bad_utf8 = b"\x0a\x07\x22\x05\x12\x03\x12\x01\xff"  # attributes.request.http.method = b"\xff"
    assert decode_envoy_check(bad_utf8, 10) is None


# -- damaged bytes ----------------------------------------------------------------------------------
# The decoders read untrusted bytes. Whatever they are given (a valid message cut short, bytes
# flipped, inserted or deleted, or noise), they must not crash, and when they answer at all,
# protobuf must accept the same bytes and the protobuf path must make the same of them. Declining
# is always correct, so declining everything would pass that: each test also counts what the fast
# path accepted, over a fixed set of inputs (derandomized), and requires a minimum share of them.


@st.composite
def damaged(draw, data: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["cut", "flip", "insert", "delete"]))
        i = draw(st.integers(0, len(data)))
        if op == "cut":
            data = data[:i]
        elif op == "flip" and i < len(data):
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
        elif op == "insert":
            data = data[:i] + draw(st.binary(min_size=1, max_size=6)) + data[i:]
        elif op == "delete":
            data = data[:i] + data[i + draw(st.integers(1, 4)):]
    return data


def parsed_or_none(message_type, data: bytes):
    message = message_type()
    try:
        message.ParseFromString(data)
    except Exception:
        return None
    return message


DAMAGED_EXAMPLES = 600


def count_answers(inputs, answer, examples=DAMAGED_EXAMPLES) -> Counter:
    """Draws `examples` inputs, the same ones every run, and counts what `answer` (which asserts the
    property) says of each."""
    counts = Counter()

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(inputs)
    def answer_each(data):
        counts[answer(data)] += 1

    answer_each()
    assert sum(counts.values()) == examples, counts
    return counts


def envoy_answer(data: bytes) -> str:
    """"accepted" (after checking it agrees with the protobuf path), "declined" (the protobuf path
    would answer it), or "refused" (protobuf rejects the bytes, or the header limit does)."""
    limits = Limits(max_headers=3)
    view = decode_envoy_check(data, limits.max_headers)
    message = parsed_or_none(external_auth_pb2.CheckRequest, data)
    if view is None:
        http = message.attributes.request.http if message is not None else None
        within = http is not None and max(len(http.headers), len(http.header_map.headers)) <= limits.max_headers
        return "declined" if within else "refused"
    assert message is not None, "accepted bytes that protobuf rejects"
    reference = check_view(message, limits)
    # Header bytes (6) count the wire, where a repeated field counts each time; protobuf's size
    # counts the value it kept. The wire's is never the smaller, so its limit is never looser.
    assert view[:6] + view[7:] == reference[:6] + reference[7:]
    assert view[6] >= reference[6]
    return "accepted"


def test_envoy_decode_of_damaged_bytes_declines_or_agrees():
    answers = count_answers(st.one_of(check_requests().map(lambda r: r.SerializeToString()),
                                      check_requests().map(lambda r: r.SerializeToString()).flatmap(damaged),
                                      st.binary(max_size=64)), envoy_answer)
    # Of the inputs the protobuf path answers (whole ones, and damaged ones it still parses), the
    # fast path takes most: it declines only what protobuf merges or what it leaves to protobuf.
    assert answers["accepted"] >= DAMAGED_EXAMPLES // 6, answers
    assert answers["accepted"] >= 3 * answers["declined"], answers


# Context values the protobuf path takes (no fractions, no null, integers within 2^53).
_valid_values = st.recursive(st.one_of(st.text(max_size=5), st.booleans(), st.integers(-2 ** 53, 2 ** 53)),
                             lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                             max_leaves=6)


def _batches(values=_valid_values):
    contexts = st.lists(st.dictionaries(st.text(max_size=4), values, max_size=3), min_size=1, max_size=3)

    def build(ctxs):
        msg = pb.BatchCheckRequest(principal=uid("Agent", "a"), action=uid("Action", "x"), resource=uid("T", "t"))
        for ctx in ctxs:
            msg.items.add(context=struct(ctx), resource=uid("T", "u"))
        return msg.SerializeToString()

    return contexts.map(build)


def batch_answer(data: bytes) -> str:
    """"accepted" (after checking it agrees with the protobuf path), "declined" (the protobuf path
    answers every item), or "refused" (protobuf rejects the bytes, or the protobuf path an item)."""
    decoded = decode_batch_check(data, DEPTH, False)
    message = parsed_or_none(pb.BatchCheckRequest, data)
    if decoded is None:
        answerable = message is not None and not any(isinstance(r, Invalid) for r in slow_requests(message, False))
        return "declined" if answerable else "refused"
    assert message is not None, "accepted bytes that protobuf rejects"
    assert decoded[2] == slow_requests(message, False)
    return "accepted"


def test_batch_decode_of_damaged_bytes_declines_or_agrees():
    answers = count_answers(st.one_of(_batches(), _batches().flatmap(damaged), _batches(_values).flatmap(damaged),
                                      st.binary(max_size=64)), batch_answer)
    assert answers["accepted"] >= DAMAGED_EXAMPLES // 6, answers
    assert answers["accepted"] >= 3 * answers["declined"], answers


def _len_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (payloads here are under 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


# A map entry with a field beside its key (1) and value (2): protobuf keeps such an entry out of the
# map (upb files it with the message's unknown fields), so the fast decoders must not take it either.
_ODD_ENTRY_EXTRA = b"\x1a\x00"  # field 3, empty


def test_batch_decode_of_a_struct_entry_with_another_field_declines_or_agrees():
    base = pb.BatchCheckRequest(principal=uid("Agent", "a"), action=uid("Action", "x"),
                                resource=uid("T", "t")).SerializeToString()
    value = _len_field(2, _len_field(3, b"v"))  # Value.string_value "v"
    for entry in (_len_field(1, b"k") + value + _ODD_ENTRY_EXTRA, _ODD_ENTRY_EXTRA + _len_field(1, b"k") + value):
        context = _len_field(1, entry) + _len_field(1, _len_field(1, b"j") + value)
        data = base + _len_field(5, _len_field(4, context))
        message = pb.BatchCheckRequest.FromString(data)
        assert dict(message.items[0].context.fields) == {"j": struct_pb2.Value(string_value="v")}
        decoded = decode_batch_check(data, DEPTH, False)
        assert decoded is None or decoded[2] == slow_requests(message, False)
    # The same request with plain entries is the fast path's: declining is not all it does here.
    context = _len_field(1, _len_field(1, b"k") + value) + _len_field(1, _len_field(1, b"j") + value)
    data = base + _len_field(5, _len_field(4, context))
    decoded = decode_batch_check(data, DEPTH, False)
    assert decoded is not None and decoded[2] == slow_requests(pb.BatchCheckRequest.FromString(data), False)
    assert decoded[2][0]["context"] == {"k": "v", "j": "v"}


def test_envoy_decode_of_a_map_entry_with_another_field_declines_or_agrees():
    request_fields = external_auth_pb2.CheckRequest.DESCRIPTOR.fields_by_name
    attributes = request_fields["attributes"].message_type.fields_by_name
    http_request = attributes["request"].message_type.fields_by_name["http"]
    headers = http_request.message_type.fields_by_name["headers"].number
    extensions = attributes["context_extensions"].number
    plain = _len_field(1, b"x-team") + _len_field(2, b"red")
    limits = Limits(max_headers=3)
    for entry in (plain + _ODD_ENTRY_EXTRA, plain):
        in_headers = _len_field(attributes["request"].number,
                                _len_field(http_request.number, _len_field(headers, entry)))
        for attrs in (in_headers, _len_field(extensions, entry)):
            data = _len_field(request_fields["attributes"].number, attrs)
            message = external_auth_pb2.CheckRequest.FromString(data)
            kept = bool(message.attributes.request.http.headers or message.attributes.context_extensions)
            assert kept == (entry == plain)
            view = decode_envoy_check(data, limits.max_headers)
            # The plain entry is the fast path's: declining is not all it does here.
            assert view is not None or entry != plain
            if view is not None:
                reference = check_view(message, limits)
                assert view[:6] + view[7:] == reference[:6] + reference[7:]
