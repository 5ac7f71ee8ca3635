"""authz.server._jsonl (the decision log's line writer) against the Python formatter it stands in for."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.server._jsonl import format_checks, format_decisions, format_events
from authz.server.decider import DecisionBatch, Invalid
from authz.server.decisionlog import DecisionLog
from harness import engine_decisions

T, API, LATENCY_NS, GENERATION = 1767225600.25, "v1", 1_460, 7  # 2026-01-01T00:00:00.250000Z, 1.5 µs
DIGEST = "9f86d081884c7d65"  # the generation's policy digest as logged (its first 16 hex digits)

_text = st.text(alphabet=st.characters(codec=None), max_size=8)  # includes quotes, controls, surrogates
_uid = st.one_of(st.none(), st.fixed_dictionaries({"type": _text, "id": _text}),
                 st.fixed_dictionaries({"type": st.just("T"), "id": st.integers()}), st.just("Raw::\"x\""))
_event = st.tuples(
    _text, _uid, _uid, _uid, st.sampled_from(["allow", "deny"]),
    st.lists(_text, max_size=3),
    st.lists(st.fixed_dictionaries({"policy": _text, "message": _text}), max_size=2),
    st.one_of(st.none(), st.just(""), _text),
    st.one_of(st.none(), st.tuples(_text, _text, st.lists(_text, max_size=2))))


def _python_line(log, event, request=None):
    return log._format_event(*log._batch_fields(T, API, LATENCY_NS, GENERATION, DIGEST), event, request)


def _python_lines(log, events, requests=None):
    requests = requests or [None] * len(events)
    return "".join(_python_line(log, e, r) for e, r in zip(events, requests)).encode("utf-8", "replace")


@settings(max_examples=400, deadline=None)
@given(st.lists(_event, max_size=6))
def test_same_json_as_the_python_formatter(tmp_path_factory, events):
    log = DecisionLog(str(tmp_path_factory.mktemp("log") / "d.jsonl"), flush_interval_s=3600)
    try:
        fast = format_events(events, T, API, LATENCY_NS, GENERATION, lambda e: _python_line(log, e), DIGEST)
        reference = _python_lines(log, events)
    finally:
        log.close()
    assert fast.count(b"\n") == len(events)
    assert [json.loads(x) for x in fast.splitlines()] == [json.loads(x) for x in reference.splitlines()]


def test_plain_event_bytes():
    ev = ("id1", {"type": "Agent", "id": 'a"1\\'}, {"type": "Action", "id": "call"}, None, "deny", ["p\n"],
          [], "no_permitting_policy", None)
    line = format_events([ev], T, API, LATENCY_NS, GENERATION, None, DIGEST).decode()
    assert json.loads(line) == {
        "decision_id": "id1", "time": "2026-01-01T00:00:00.250000Z", "api": "v1",
        "principal": 'Agent::"a\\"1\\\\"', "action": 'Action::"call"', "resource": None, "decision": "deny",
        "policies": ["p\n"], "errors": [], "latency_us": 1.5, "generation": 7,
        "policy_digest": DIGEST, "reason": "no_permitting_policy"}


def test_lone_surrogate_takes_the_fallback():
    ev = ("id2", {"type": "Agent", "id": "a\ud800"}, None, None, "allow", [], [], None, None)
    calls = []

    def fallback(e):
        calls.append(e)
        return '{"decision_id":"id2"}\n'

    assert format_events([ev], T, API, LATENCY_NS, GENERATION, fallback) == b'{"decision_id":"id2"}\n'
    assert calls == [ev]


class FakeDecision:
    def __init__(self, allowed, policies, errors):
        self.allowed, self.policies, self.errors = allowed, policies, errors


_entity = st.fixed_dictionaries({"__entity": st.fixed_dictionaries({"type": st.just("Agent"), "id": _text})})
# A task token's context as the server sets it (written by _jsonl), and shapes it leaves to the fallback.
_token_context = st.one_of(
    st.builds(lambda jti, task, chain: {"delegation": {"chain": chain, "depth": len(chain)},
                                        "token": {"jti": jti, "task": task, "exp": 1}},
              _text, _text, st.lists(_entity, max_size=3)),
    st.builds(lambda jti, task, chain: {"delegation": {"chain": chain}, "token": {"jti": jti, "task": task}},
              st.one_of(_text, st.none(), st.integers()), st.one_of(_text, st.none()),
              st.lists(st.one_of(_entity, _text, st.just({"__entity": {"id": 3}}), st.just({})), max_size=3)),
    st.just({"delegation": "x", "token": {"jti": "j", "task": "t"}}),
    st.just({"delegation": {}, "token": None}))
_request = st.one_of(
    st.fixed_dictionaries({"principal": _uid, "action": _uid, "resource": _uid,
                           "context": st.one_of(st.just({}), st.just({"delegation": {"chain": []},
                                                                     "token": {"jti": "j", "task": "t"}}),
                                                _token_context)}),
    st.builds(lambda code, p: Invalid(code, "m", "f", p, None, None, None), st.sampled_from(["c1", "c2"]), _uid))


_decision = st.integers(0, 3).map(lambda i: engine_decisions()[i])
_result = st.one_of(_decision,
                    st.builds(FakeDecision, st.booleans(), st.lists(_text, max_size=2),
                              st.lists(st.fixed_dictionaries({"policy": _text, "message": _text}), max_size=1)),
                    st.tuples(st.sampled_from(["index_unavailable", "request_parse_error"]), _text, _text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_request, _result), max_size=6), st.integers(0, 2 ** 44))
def test_decided_batch_same_json_as_its_events(tmp_path_factory, items, first):
    batch = DecisionBatch("0a1b2c3d4e5f", first, [r for r, _ in items], [d for _, d in items])
    fast, reference = _formatted_both_ways(tmp_path_factory, batch)
    assert [json.loads(x) for x in fast.splitlines()] == [json.loads(x) for x in reference.splitlines()]


def _formatted_both_ways(tmp_path_factory, batch) -> tuple:
    """(format_decisions' bytes, the Python formatter's bytes) of a DecisionBatch."""
    log = DecisionLog(str(tmp_path_factory.mktemp("log") / "d.jsonl"), flush_interval_s=3600)
    try:
        fast = format_decisions(batch.prefix, batch.first, batch.requests, batch.results, T, API, LATENCY_NS,
                                GENERATION, lambda i: _python_line(log, batch.event(i), batch.requests[i]), DIGEST)
        return fast, _python_lines(log, [batch.event(i) for i in range(len(batch))], batch.requests)
    finally:
        log.close()


# A policy digest as logged (16 hex digits, "" for an index without one), and odd text it must escape alike.
_digest = st.one_of(st.just(""), st.text("0123456789abcdef", min_size=16, max_size=16),
                    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=16))


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 4e9), st.integers(0, 10 ** 13), st.integers(0, 2 ** 64 - 1), st.sampled_from(["v1", "envoy", 'a"b']),
       _digest)
def test_batch_fields_as_python_writes_them(tmp_path_factory, t, latency_ns, generation, api, digest):
    log = DecisionLog(str(tmp_path_factory.mktemp("log") / "d.jsonl"), flush_interval_s=3600)
    ev = ("id", None, None, None, "allow", [], [], None, None)
    try:
        fast = format_events([ev], t, api, latency_ns, generation, None, digest)
        reference = log._format_event(*log._batch_fields(t, api, latency_ns, generation, digest), ev).encode()
    finally:
        log.close()
    assert json.loads(fast) == json.loads(reference)
    assert json.loads(fast)["policy_digest"] == digest


_shared_uids = [{"type": "Agent", "id": 'a"1'}, {"type": "Action", "id": "call\n"}, None, {"type": "T", "id": "\ud800"}]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(len(_shared_uids))), st.sampled_from(range(len(_shared_uids))),
                          _uid, st.one_of(st.just({}), _token_context), _result), max_size=8))
def test_batch_items_sharing_uid_objects(tmp_path_factory, items):
    """Items sharing their principal / action objects (as BatchCheck's do) write each line in full,
    also after an item whose line was cut short (a lone surrogate) and taken by the fallback."""
    requests = [{"principal": _shared_uids[p], "action": _shared_uids[a], "resource": r, "context": c}
                for p, a, r, c, _ in items]
    fast, reference = _formatted_both_ways(tmp_path_factory, DecisionBatch("0a1b2c3d4e5f", 1, requests,
                                                                           [d for *_, d in items]))
    assert fast == reference


_check = st.tuples(st.floats(0, 4e9), st.integers(0, 10 ** 13), st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 44),
                   _request, _decision)


@settings(max_examples=300, deadline=None)
@given(st.lists(_check, max_size=6), st.sampled_from(["envoy", 'a"b']))
def test_check_run_same_json_as_its_events(tmp_path_factory, checks, api):
    """format_checks (a run of single decisions, each with its own time, latency and generation) writes
    what the Python formatter writes for each event."""
    log = DecisionLog(str(tmp_path_factory.mktemp("log") / "d.jsonl"), flush_interval_s=3600)
    prefix = "0a1b2c3d4e5f"

    def digest_of(generation):  # each generation its own digest
        return format(generation * 2654435761 % 2 ** 64, "016x")

    def python_line(k):
        t, latency_ns, generation, seq, request, result = checks[k]
        event = DecisionBatch(prefix, seq, [request], [result]).event(0)
        return log._format_event(*log._batch_fields(t, api, latency_ns, generation, digest_of(generation)), event,
                                 request)

    try:
        fast = format_checks(prefix, api, checks, python_line, digest_of)
        reference = "".join(python_line(k) for k in range(len(checks))).encode("utf-8", "replace")
    finally:
        log.close()
    assert fast.count(b"\n") == len(checks)
    assert [json.loads(x) for x in fast.splitlines()] == [json.loads(x) for x in reference.splitlines()]
    assert [json.loads(x)["policy_digest"] for x in fast.splitlines()] == [digest_of(c[2]) for c in checks]


def test_record_check_on_a_loop_queues_one_run_and_keeps_the_order(tmp_path):
    """Consecutive checks are one queued item; a batch recorded between them keeps its place in the file."""
    import asyncio

    allow, forbid, _, _ = engine_decisions()
    agent, call = {"type": "Agent", "id": "a"}, {"type": "Action", "id": "call"}
    path = tmp_path / "d.jsonl"

    def request(tool):
        return {"principal": agent, "action": call, "resource": {"type": "Tool", "id": tool}, "context": {}}

    async def main():
        log = DecisionLog(str(path), flush_interval_s=3600, loop=asyncio.get_running_loop())
        log.digest_of = {3: "00000000000000d3", 4: "00000000000000d4"}.get
        log.record_check("envoy", 1_000, 3, "p", 1, request("y"), allow)
        log.record_check("envoy", 2_000, 3, "p", 2, request("x"), forbid)
        assert len(log._queue) == 1
        log.record_batch("v1", 3_000, 3, DecisionBatch("p", 3, [request("y")], [allow]))
        log.record_check("envoy", 4_000, 4, "p", 4, request("y"), allow)
        assert len(log._queue) == 3
        log.close()

    asyncio.run(main())
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["decision_id"], x["api"], x["decision"], x["latency_us"], x["generation"]) for x in lines] == [
        ("p0000000001", "envoy", "allow", 1.0, 3), ("p0000000002", "envoy", "deny", 2.0, 3),
        ("p0000000003", "v1", "allow", 3.0, 3), ("p0000000004", "envoy", "allow", 4.0, 4)]
    assert [x["policy_digest"] for x in lines] == ["00000000000000d3"] * 3 + ["00000000000000d4"]
    assert lines[1]["policies"] == ["forbid\nx"] and lines[1]["resource"] == 'Tool::"x"'


def test_record_check_counts_what_the_queue_has_no_room_for(tmp_path):
    allow = engine_decisions()[0]
    dropped = []
    log = DecisionLog(str(tmp_path / "d.jsonl"), max_queue=2, flush_interval_s=3600, on_drop=dropped.append)
    r = {"principal": {"type": "Agent", "id": "a"}, "action": {"type": "Action", "id": "call"},
         "resource": {"type": "Tool", "id": "y"}, "context": {}}
    for seq in range(1, 5):
        log.record_check("envoy", 1_000, 1, "p", seq, r, allow)
    log.close()
    assert log.dropped == 2 and dropped == [1, 1]
    assert [json.loads(x)["decision_id"] for x in (tmp_path / "d.jsonl").read_text().splitlines()] == [
        "p0000000001", "p0000000002"]


def test_task_token_lines_written_without_the_fallback():
    """A request made with a task token, as the server binds it, is written by _jsonl itself (the
    fallback, many times slower, is for unusual shapes only)."""
    ctx = {"token": {"jti": "j-1", "task": 't"1', "exp": 2}, "delegation": {"chain": [
        {"__entity": {"type": "Agent", "id": "root"}}, {"__entity": {"type": "Agent", "id": "sub\n"}}], "depth": 2}}
    request = {"principal": {"type": "Agent", "id": "sub\n"}, "action": {"type": "Action", "id": "call"},
               "resource": {"type": "Tool", "id": "db"}, "context": ctx}
    decision = engine_decisions()[0]

    def fallback(_):
        raise AssertionError("the fallback was asked")

    line = format_decisions("0a1b2c3d4e5f", 1, [request], [decision], T, API, LATENCY_NS, GENERATION, fallback)
    assert json.loads(line)["token"] == {"jti": "j-1", "task": 't"1', "chain": ["root", "sub\n"]}
    run = format_checks("0a1b2c3d4e5f", API, [(T, LATENCY_NS, GENERATION, 1, request, decision)], fallback)
    assert run == line


_PY_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False,
                              allow_nan=False).encode
_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2 ** 80, 2 ** 80), st.floats(), _text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.lists(inner, max_size=3).map(tuple),
                            st.dictionaries(_text, inner, max_size=4),
                            st.dictionaries(st.integers(0, 3), inner, min_size=1, max_size=2),
                            st.frozensets(st.integers(), min_size=1, max_size=2)),
    max_leaves=20)


@settings(max_examples=600, deadline=None)
@given(_json_values, st.sampled_from([40, 200, 1 << 20]))
def test_encode_json_writes_what_the_python_encoder_writes(value, max_bytes):
    """encode_json (the decision log's request contexts) gives the Python encoder's text, "" exactly when
    that encoder refuses the value (a float that is not finite) or the text is longer than max_bytes, and
    None (leave it to the Python encoder) only for what it does not take."""
    from authz.server._jsonl import encode_json

    fast = encode_json(value, max_bytes)
    try:
        reference = _PY_ENCODE(value)
    except (TypeError, ValueError):
        reference = None
    if fast is None:
        return  # left to the Python encoder, whose answer is then the answer
    if fast == "":
        assert reference is None or len(reference.encode("utf-8", "surrogatepass")) > max_bytes
    else:
        assert fast == reference


def test_encode_json_takes_deep_values_no_deeper_than_64():
    from authz.server._jsonl import encode_json

    deep = 0
    for _ in range(64):
        deep = [deep]
    assert encode_json(deep, 1 << 20) == _PY_ENCODE(deep)
    assert encode_json([deep], 1 << 20) is None
    assert encode_json({"a": {"__entity": {"type": "T", "id": "x\n"}}, "n": -3, "f": 1.5, "big": 2 ** 70},
                       1 << 20) == '{"a":{"__entity":{"type":"T","id":"x\\n"}},"n":-3,"f":1.5,"big":1180591620717411303424}'
