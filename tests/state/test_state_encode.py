"""The records' compiled encoders (authz/state/_records.pyx) against the stored form written out with `struct`
(the layout model.py's decoders read): the same bytes for every record shape, and decode(encode(x)) keeps
every field."""
import json
import struct
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.state import model, windows

LONG_MAX = (1 << 63) - 1
TASK = struct.Struct("<BddqqqBqqqII32s")
AGENT = struct.Struct("<BdBqqq")
_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode


def reference_task(task) -> bytes:
    m1, h1 = task.m1.stored(), task.h1.stored()
    flags = (1 if task.overflow else 0) | (2 if task.revoked else 0) | (4 if m1 else 0) | (8 if h1 else 0)
    tools, labels = _json(task.tools).encode(), _json(list(task.counts)).encode()
    return b"".join((TASK.pack(1, task.started, task.last, task.calls, task.denies, task.spend, flags, task.due,
                               task.m1.head, task.h1.head, len(tools), len(labels), task.suspended_by.encode("ascii")),
                     m1, h1, tools, labels, array("Q", task.counts.values()).tobytes()))


def reference_agent(agent) -> bytes:
    m1, h1 = agent.m1.stored(), agent.h1.stored()
    return b"".join((AGENT.pack(1, agent.last, (4 if m1 else 0) | (8 if h1 else 0), agent.due, agent.m1.head,
                                agent.h1.head), m1, h1))


TIMES = st.floats(0, 2e9, allow_nan=False)
LONGS = st.integers(0, LONG_MAX)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def tasks(draw):
    started = draw(TIMES)
    task = model.TaskState(draw(TEXT), started)
    task.last = started + draw(st.floats(0, 1e6))
    task.calls, task.denies, task.spend, task.due = draw(LONGS), draw(LONGS), draw(LONGS), draw(LONGS)
    task.overflow, task.revoked = draw(st.booleans()), draw(st.booleans())
    task.suspended_by = draw(st.sampled_from(["", "a" * 32, "0123456789abcdef" * 2]))
    for tool in draw(st.lists(st.tuples(TEXT, TEXT), max_size=5, unique=True)):
        task._add_tool(tool)
    task.counts = {label: draw(LONGS) for label in draw(st.lists(TEXT, max_size=6, unique=True))}
    task._labels_json = None
    for w in (task.m1, task.h1):
        for at in draw(st.lists(st.floats(0, 1e5), max_size=4)):
            w.add(started + at)
    return task


@settings(max_examples=300, deadline=None)
@given(task=tasks())
def test_a_task_record_is_encoded_as_the_struct_layout_says(task):
    raw = model.encode_task(task)
    assert raw == reference_task(task)
    again = model.decode_task(task.id, raw)
    assert model.encode_task(again) == raw
    assert again.view(task.last) == task.view(task.last)
    assert (again.started, again.last, again.due, again.revoked, again.suspended_by) == \
        (task.started, task.last, task.due, task.revoked, task.suspended_by)


@settings(max_examples=200, deadline=None)
@given(last=TIMES, due=LONGS, at=st.lists(st.floats(0, 1e5), max_size=4))
def test_an_agent_record_is_encoded_as_the_struct_layout_says(last, due, at):
    agent = model.AgentState("a1", last)
    agent.due = due
    for t in at:
        agent.m1.add(last + t)
        agent.h1.add(last + t)
    raw = model.encode_agent(agent)
    assert raw == reference_agent(agent)
    again = model.decode_agent("a1", raw)
    assert model.encode_agent(again) == raw and again.view(last + 1) == agent.view(last + 1)


def test_a_value_outside_the_layout_is_refused_not_written():
    task = model.TaskState("t", 1.0)
    task.calls = LONG_MAX + 1
    try:
        model.encode_task(task)
    except OverflowError:
        pass
    else:
        raise AssertionError("a count beyond a Long was encoded")
    task.calls, task.suspended_by = 0, "short"
    try:
        model.encode_task(task)
    except ValueError:
        pass
    else:
        raise AssertionError("a malformed approval id was encoded")
    assert windows.SLOTS_BYTES == 4 * windows.SLOTS
