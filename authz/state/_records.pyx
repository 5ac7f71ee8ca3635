# cython: language_level=3
"""The fields of the task and agent records, declared in _records.pxd: model.TaskState and model.AgentState
(the records, their rules and their stored form: authz/state/model.py) subclass these, so that compiled
code (authz/state/_step.pyx) reads and writes the fields of a record as C struct members; and the records'
encoders (model.encode_task / encode_agent), which every commit runs (model.py decodes)."""


cdef class TaskFields:
    """model.TaskState's fields (see model.py)."""


cdef class AgentFields:
    """model.AgentState's fields (see model.py)."""


# --- the stored form, compiled (model.py decodes it; tests/state/test_state_encode.py holds the two to one
# another and to the struct layout they name) -------------------------------------------------------------
import json
import sys

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from authz.state.windows cimport Window

if sys.byteorder != "little":  # the headers below are written as the host lays them out
    raise ImportError("authz.state._records writes little-endian records: this host is big-endian")

cdef uint8_t FORMAT = 1
cdef uint8_t OVERFLOW = 1, REVOKED = 2, M1 = 4, H1 = 8
cdef object _json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode


cdef packed struct TaskHeader:  # struct "<BddqqqBqqqII32s": format, started, last, calls, denies, spend, flags,
    uint8_t format              # due, m1 head, h1 head, tools length, labels length, suspended_by
    double started, last
    int64_t calls, denies, spend
    uint8_t flags
    int64_t due, m1_head, h1_head
    uint32_t n_tools, n_labels
    char suspended_by[32]


cdef packed struct AgentHeader:  # struct "<BdBqqq": format, last, flags, due, m1 head, h1 head
    uint8_t format
    double last
    uint8_t flags
    int64_t due, m1_head, h1_head


cdef inline Py_ssize_t slots_size(Window w):
    """The bytes of a window's stored slots (none before its first call)."""
    return 0 if w.slots is None else len(w.slots) * w.slots.itemsize


cdef inline char* put_slots(char* at, Window w):
    cdef Py_ssize_t n = slots_size(w)
    if n:
        memcpy(at, w.slots.data.as_chars, n)
    return at + n


cpdef object due_after(double last, object ttl_s):
    """When a record that last changed at `last` falls due in a backend's sweep (idle) index: the end of
    that hour, plus `ttl_s` (its place moves once an hour, not on every call)."""
    return (int(last // 3600.0) + 1) * 3600 + ttl_s


def encode_task(TaskFields task) -> bytes:
    """The stored form of a task record (model.py, "A task record"): the header, the windows' slots, the tools
    and the label names as JSON (kept encoded on the record until one is added), then the counts as u64s in
    label order."""
    tools, labels = task._tools_json, task._labels_json
    if tools is None:
        tools = task._tools_json = _json(task.tools).encode("utf-8")
    if labels is None:
        labels = task._labels_json = _json(list(task.counts)).encode("utf-8")
    suspended = (<str>task.suspended_by).encode("ascii")
    if len(suspended) not in (0, 32):
        raise ValueError("suspended_by is an approval id (32 characters) or empty")
    cdef dict counts = task.counts
    cdef Py_ssize_t n1 = slots_size(task.m1), n2 = slots_size(task.h1)
    cdef Py_ssize_t nt = len(<bytes>tools), nl = len(<bytes>labels)
    cdef Py_ssize_t size = sizeof(TaskHeader) + n1 + n2 + nt + nl + 8 * len(counts)
    cdef TaskHeader h
    memset(&h, 0, sizeof(h))
    h.format, h.started, h.last = FORMAT, task.started, task.last
    h.calls, h.denies, h.spend = task.calls, task.denies, task.spend
    h.flags = (OVERFLOW if task.overflow else 0) | (REVOKED if task.revoked else 0) | (M1 if n1 else 0) | \
        (H1 if n2 else 0)
    h.due, h.m1_head, h.h1_head = task.due, task.m1.head, task.h1.head
    h.n_tools, h.n_labels = nt, nl
    if suspended:
        memcpy(h.suspended_by, PyBytes_AS_STRING(suspended), 32)
    out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* at = PyBytes_AS_STRING(out)
    memcpy(at, &h, sizeof(h))
    at = put_slots(put_slots(at + sizeof(h), task.m1), task.h1)
    memcpy(at, PyBytes_AS_STRING(tools), nt)
    memcpy(at + nt, PyBytes_AS_STRING(labels), nl)
    at += nt + nl
    cdef uint64_t n
    for value in counts.values():
        n = value
        memcpy(at, &n, 8)
        at += 8
    return out


def encode_agent(AgentFields agent) -> bytes:
    """The stored form of an agent record: the header, then the windows' slots."""
    cdef Py_ssize_t n1 = slots_size(agent.m1), n2 = slots_size(agent.h1)
    cdef AgentHeader h
    memset(&h, 0, sizeof(h))
    h.format, h.last, h.flags = FORMAT, agent.last, (M1 if n1 else 0) | (H1 if n2 else 0)
    h.due, h.m1_head, h.h1_head = agent.due, agent.m1.head, agent.h1.head
    out = PyBytes_FromStringAndSize(NULL, sizeof(h) + n1 + n2)
    cdef char* at = PyBytes_AS_STRING(out)
    memcpy(at, &h, sizeof(h))
    put_slots(at + sizeof(h), agent.m1)
    put_slots(at + sizeof(h) + n1, agent.h1)
    return out
