"""The decision log's lines of requests made with a task token, decided with task state or not
(authz.server._jsonl): their contexts share member objects (the calls of one token: the same `token` and
`delegation`; a task's views share their `tools` and `labels` lists), whose text the writer copies from the
previous line; each line's context is exactly
encode_json's text of that context (the lines of unshared copies are the same bytes), and the same JSON as
the Python formatter's."""
import copy
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.server._jsonl import encode_json, format_decisions
from authz.server.decider import DecisionBatch
from authz.server.decisionlog import DecisionLog
from authz.server.requestlog import MAX_CONTEXT_CHARS, _redacted
from harness import engine_decisions

T, API, LATENCY_NS, GENERATION = 1767225600.25, "v1", 1_460, 7
_text = st.text(alphabet=st.characters(codec=None), max_size=6)  # quotes, controls, lone surrogates
_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(), _text),
                      lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3),
                                              st.dictionaries(st.integers(0, 2), inner, min_size=1, max_size=1)),
                      max_leaves=8)
_member = st.sampled_from(["token", "delegation", "task", "agent", "http", "cost", "x"])


def _token(task="t1"):
    return {"task": task, "scope": {"actions": ['Action::"call"']}, "jti": "j1", "exp": 2}


def _delegation():
    return {"chain": [{"__entity": {"type": "Agent", "id": "a1"}}], "depth": 0}


@st.composite
def _contexts(draw):
    """Contexts as the task-state step makes them: members drawn from a small pool of objects (shared) or
    made anew; odd values among them (what the writer leaves to the Python encoder, or refuses)."""
    pool = {"token": [_token(), _token("t\n2")], "delegation": [_delegation()],
            "task": [{"id": "t1", "tools": [{"__entity": {"type": "Tool", "id": "x"}}], "labels": ["pii"],
                      "counts": {"pii": 1}, "rate": {"m1": 1}}],
            "agent": [{"rate": {"m1": 1, "h1": 1}}],
            "http": [{"headers": {"authorization": "secret", "x": "1"}}, {"method": "GET"}]}
    out = []
    for _ in range(draw(st.integers(1, 6))):
        ctx = {}
        for key in draw(st.lists(_member, min_size=1, max_size=5, unique=True)):
            shared = pool.get(key)
            if shared and draw(st.booleans()):
                ctx[key] = draw(st.sampled_from(shared))
            elif draw(st.integers(0, 4)) == 0:
                ctx[key] = draw(_value)
            else:
                ctx[key] = copy.deepcopy(shared[0]) if shared else draw(st.integers(0, 9))
        if draw(st.integers(0, 3)):  # most with task state; the others made with a token alone, or neither
            ctx.setdefault("task", pool["task"][0])
        if draw(st.integers(0, 9)) == 0:
            ctx["big"] = "é" * (MAX_CONTEXT_CHARS // 2 + draw(st.integers(-10, 10)))
        out.append(ctx)
    return out


def _lines(folder, contexts):
    decision = engine_decisions()[0]
    requests = [{"principal": {"type": "Agent", "id": "a1"}, "action": {"type": "Action", "id": "call"},
                 "resource": {"type": "Tool", "id": "x"}, "context": c} for c in contexts]
    batch = DecisionBatch("0a1b2c3d4e5f", 1, requests, [decision] * len(requests))
    log = DecisionLog(str(folder / "d.jsonl"), flush_interval_s=3600)
    try:
        def fallback(i):
            return log._format_event(*log._batch_fields(T, API, LATENCY_NS, GENERATION, ""), batch.event(i),
                                     requests[i])
        fast = format_decisions(batch.prefix, 1, requests, batch.results, T, API, LATENCY_NS, GENERATION, fallback)
        reference = "".join(fallback(i) for i in range(len(requests))).encode("utf-8", "replace")
    finally:
        log.close()
    return fast.splitlines(keepends=True), reference.splitlines(keepends=True)


@settings(max_examples=300, deadline=None)
@given(_contexts())
def test_shared_members_are_written_as_encode_json_writes_them(tmp_path_factory, contexts):
    folder = tmp_path_factory.mktemp("log")
    fast, reference = _lines(folder, contexts)
    assert [json.loads(x) for x in fast] == [json.loads(x) for x in reference]
    unshared = [copy.deepcopy(c) for c in contexts]  # nothing shared: every member written anew
    assert fast == _lines(folder, unshared)[0]
    for line, ctx in zip(fast, contexts):
        text = encode_json(_redacted(ctx), 4 * MAX_CONTEXT_CHARS)
        if text and len(text) <= MAX_CONTEXT_CHARS:
            assert line.endswith(b',"context":' + text.encode("utf-8") + b"}\n")
