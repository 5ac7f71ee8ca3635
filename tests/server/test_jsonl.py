"""authz._jsonl (the decision log's line writer) against the Python formatter it stands in for."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from authz._jsonl import format_events
from authz.server.decisionlog import DecisionLog

SHARED = '"time":"2026-01-01T00:00:00.000001Z","api":"v1",'
TAIL = '"latency_us":1.5,"generation":7'

_text = st.text(alphabet=st.characters(codec=None), max_size=8)  # includes quotes, controls, surrogates
_uid = st.one_of(st.none(), st.fixed_dictionaries({"type": _text, "id": _text}),
                 st.fixed_dictionaries({"type": st.just("T"), "id": st.integers()}), st.just("Raw::\"x\""))
_event = st.tuples(
    _text, _uid, _uid, _uid, st.sampled_from(["allow", "deny"]),
    st.lists(_text, max_size=3),
    st.lists(st.fixed_dictionaries({"policy": _text, "message": _text}), max_size=2),
    st.one_of(st.none(), st.just(""), _text),
    st.one_of(st.none(), st.tuples(_text, _text, st.lists(_text, max_size=2))))


def _python_lines(log, events):
    return "".join(log._format_event(SHARED, TAIL, e) for e in events).encode("utf-8", "replace")


@settings(max_examples=400, deadline=None)
@given(st.lists(_event, max_size=6))
def test_same_json_as_the_python_formatter(tmp_path_factory, events):
    log = DecisionLog(str(tmp_path_factory.mktemp("log") / "d.jsonl"), flush_interval_s=3600)
    try:
        fast = format_events(events, SHARED, TAIL, lambda e: log._format_event(SHARED, TAIL, e))
        reference = _python_lines(log, events)
    finally:
        log.close()
    assert fast.count(b"\n") == len(events)
    assert [json.loads(x) for x in fast.splitlines()] == [json.loads(x) for x in reference.splitlines()]


def test_plain_event_bytes():
    ev = ("id1", {"type": "Agent", "id": 'a"1\\'}, {"type": "Action", "id": "call"}, None, "deny", ["p\n"],
          [], "no_permitting_policy", None)
    line = format_events([ev], SHARED, TAIL, None).decode()
    assert json.loads(line) == {
        "decision_id": "id1", "time": "2026-01-01T00:00:00.000001Z", "api": "v1",
        "principal": 'Agent::"a\\"1\\\\"', "action": 'Action::"call"', "resource": None, "decision": "deny",
        "policies": ["p\n"], "errors": [], "latency_us": 1.5, "generation": 7, "reason": "no_permitting_policy"}


def test_lone_surrogate_takes_the_fallback():
    ev = ("id2", {"type": "Agent", "id": "a\ud800"}, None, None, "allow", [], [], None, None)
    calls = []

    def fallback(e):
        calls.append(e)
        return '{"decision_id":"id2"}\n'

    assert format_events([ev], SHARED, TAIL, fallback) == b'{"decision_id":"id2"}\n' and calls == [ev]
