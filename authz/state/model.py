"""The task and agent state records: validation of what a call adds, the update rules, the Cedar view,
and the stored form. Pure: no storage, no clock (every function takes `now`), shared by every backend.

A task record (stored as a fixed binary header, the rate windows' slots, the tools and the label names
as JSON (kept encoded: re-encoded only when one is added), then the counts as u64s in label order; see
`encode_task`):
  started, last   first and latest call (seconds since the epoch)
  calls, denies   allowed / denied calls
  spend           sum of the costs of allowed calls (saturates at 2^63 - 1: a budget check stays refused)
  overflow        the tools set reached its bound and stopped growing
  tools           [[type, id], ...] resources of allowed calls, in first-use order
  counts          {label: allowed calls carrying it}; the task's labels are its keys
  m1, h1          rate windows (windows.pyx)
  suspended_by    id of the pending approval suspending the task, or ""
  revoked         the task was revoked (approval rejected with on_reject = "revoke_task", or a tripwire)
  due             when its entry in the sweep index falls due (backend bookkeeping)
An agent record: last, m1, h1, due.
"""
from __future__ import annotations

import json
import math
import struct
from array import array

from authz.state import _records, windows
from authz.state._records import due_after, encode_agent, encode_task  # noqa: F401  (compiled)
from authz.state.config import LONG_MAX
from authz.state.errors import Full, InvalidArgument, Unavailable

_FORMAT = 1
# The headers encode_task and encode_agent write (authz/state/_records.pyx):
# format, started, last, calls, denies, spend, flags, due, m1 head, h1 head, tools len, labels len, suspended_by
_TASK = struct.Struct("<BddqqqBqqqII32s")
_AGENT = struct.Struct("<BdBqqq")      # format, last, flags, due, m1 head, h1 head
_OVERFLOW, _REVOKED, _M1, _H1 = 1, 2, 4, 8
_decode = json.JSONDecoder().decode


def _utf8_len(value: str, what: str) -> int:
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid UTF-8") from None


def check_text(value, what: str, max_bytes: int, empty_ok: bool = False) -> str:
    """`value` if it is a string of at most `max_bytes` UTF-8 bytes (and not empty unless `empty_ok`)."""
    if type(value) is not str:
        raise InvalidArgument(f"{what} must be a string")
    if not value and not empty_ok:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > max_bytes or _utf8_len(value, what) > max_bytes:
        raise InvalidArgument(f"{what} is longer than {max_bytes} bytes")
    return value


def check_now(now) -> float:
    if type(now) not in (int, float) or not math.isfinite(now) or not 0 <= now < 2 ** 53:
        raise InvalidArgument("now must be a finite, non-negative number of seconds (below 2^53)")
    return float(now)


def check_uid(uid, max_bytes: int, what: str = "resource") -> tuple:
    """(type, id) from {"type": …, "id": …} or a (type, id) pair; type + id at most `max_bytes` UTF-8 bytes."""
    if type(uid) is tuple and len(uid) == 2:
        kind, name = uid
    elif isinstance(uid, dict):
        if len(uid) != 2 or "type" not in uid or "id" not in uid:
            raise InvalidArgument(f"{what} must be {{\"type\": …, \"id\": …}}")
        kind, name = uid["type"], uid["id"]
    else:
        raise InvalidArgument(f"{what} must be {{\"type\": …, \"id\": …}}")
    if type(kind) is not str or type(name) is not str or not kind:
        raise InvalidArgument(f"{what} type and id must be strings (type not empty)")
    if len(kind) + len(name) > max_bytes or _utf8_len(kind, what) + _utf8_len(name, what) > max_bytes:
        raise InvalidArgument(f"{what} type and id are longer than {max_bytes} bytes")
    return kind, name


def check_labels(labels, cfg) -> tuple:
    """The distinct labels of one call, each a non-empty string of at most cfg.max_label_bytes."""
    if isinstance(labels, (str, bytes)) or labels is None:
        raise InvalidArgument("labels must be a collection of strings")
    if not labels:
        return ()
    out = {}
    most = cfg.max_label_bytes
    for label in labels:
        if type(label) is not str or not label or not label.isascii() or len(label) > most:
            check_text(label, "a label", most)
        out[label] = None
        if len(out) > cfg.max_call_labels:
            raise InvalidArgument(f"a call carries more than {cfg.max_call_labels} labels")
    return tuple(out)


def check_cost(cost) -> int:
    if type(cost) is not int or cost < 0 or cost > LONG_MAX:
        raise InvalidArgument("cost must be a non-negative Long")
    return cost


class TaskState(_records.TaskFields):
    """One task's state; see the module docstring. Its fields (id, started, last, calls, denies, spend,
    overflow, tools, counts, m1, h1, suspended_by, revoked, due and the caches below) are declared in
    authz/state/_records.pxd, for the compiled step to read them as C struct members."""

    __slots__ = ()

    def __init__(self, task_id: str, now: float):
        self.id = task_id
        self.started = self.last = now
        self.calls = self.denies = self.spend = 0
        self.overflow = self.revoked = False
        self.tools, self.counts = [], {}
        self.m1, self.h1 = windows.Window(windows.M1_WIDTH), windows.Window(windows.H1_WIDTH)
        self.suspended_by = ""
        self.due = 0
        self._tool_set, self._tool_views = set(), []
        self._tools_json = self._labels_json = b"[]"
        # The `tools` and `labels` lists of the server's views (authz/state/_step.pyx): shared by the views
        # of later calls until the task gains a tool or a label, then replaced (never changed in place).
        self._view_tools = self._view_labels = None

    def view(self, now: float) -> dict:
        """`context.task`: plain JSON-able values, a copy (later updates do not change it)."""
        counts = self.counts
        return {"id": self.id, "age_s": max(0, min(int(now - self.started), LONG_MAX)), "calls": self.calls,
                "denies": self.denies, "tools": self._tool_views.copy(), "labels": list(counts),
                "counts": counts.copy(), "spend": self.spend,
                "rate": {"m1": self.m1.count(now), "h1": self.h1.count(now)}, "overflow": self.overflow}

    def record_allowed(self, now: float, tool: tuple, labels: tuple, cost: int, cfg) -> None:
        """Count an allowed call. Full (and no change) when its labels would pass cfg.max_labels.
        (authz/state/_step.pyx counts a call that adds no tool and no label the same way: change both.)"""
        counts = self.counts
        new = 0
        for label in labels:
            if label not in counts:
                new += 1
        if new:
            if len(counts) + new > cfg.max_labels:
                raise Full(f"task `{self.id}` would carry more than {cfg.max_labels} labels")
            self._labels_json = None
        if now > self.last:
            self.last = now
        if self.calls < LONG_MAX:
            self.calls += 1
        if cost:
            self.spend = min(self.spend + cost, LONG_MAX)
        if tool not in self._tool_set:
            if len(self.tools) < cfg.max_tools:
                self._add_tool(tool)
            else:
                self.overflow = True
        for label in labels:
            n = counts.get(label, 0)
            counts[label] = n + 1 if n < LONG_MAX else n
        self.m1.add(now)
        self.h1.add(now)

    def record_denied(self, now: float) -> None:
        if now > self.last:
            self.last = now
        if self.denies < LONG_MAX:
            self.denies += 1

    def _add_tool(self, tool: tuple) -> None:
        self.tools.append(tool)
        self._tool_set.add(tool)
        self._tool_views.append({"__entity": {"type": tool[0], "id": tool[1]}})
        self._tools_json = None


class AgentState(_records.AgentFields):
    """One agent's rate windows over all its tasks (fields: id, last, m1, h1, due; authz/state/_records.pxd)."""

    __slots__ = ()

    def __init__(self, agent_id: str, now: float):
        self.id, self.last, self.due = agent_id, now, 0
        self.m1, self.h1 = windows.Window(windows.M1_WIDTH), windows.Window(windows.H1_WIDTH)

    def view(self, now: float) -> dict:
        """`context.agent`."""
        return {"rate": {"m1": self.m1.count(now), "h1": self.h1.count(now)}}

    def record_allowed(self, now: float) -> None:
        if now > self.last:
            self.last = now
        self.m1.add(now)
        self.h1.add(now)


# An agent's windows matter for an hour and a minute (h1: 60 one-minute buckets plus the current one).
AGENT_TTL_S = windows.SLOTS * windows.H1_WIDTH


def _damaged(what: str, name: str) -> Unavailable:
    return Unavailable(f"the stored state of {what} `{name}` is damaged")


def _windows(raw: bytes, at: int, flags: int, m1_head: int, h1_head: int):
    """(m1, h1, where the rest starts) from the slots stored at `at`."""
    n1 = windows.SLOTS_BYTES if flags & _M1 else 0
    n2 = windows.SLOTS_BYTES if flags & _H1 else 0
    m1 = windows.Window.load(windows.M1_WIDTH, m1_head, raw[at:at + n1])
    h1 = windows.Window.load(windows.H1_WIDTH, h1_head, raw[at + n1:at + n1 + n2])
    return m1, h1, at + n1 + n2


def _time_ok(t) -> bool:
    return math.isfinite(t) and t >= 0


def decode_task(task_id: str, raw) -> TaskState:
    """The task record stored as `raw`; Unavailable when it is not one this version wrote."""
    raw = bytes(raw)
    try:
        (fmt, started, last, calls, denies, spend, flags, due, m1_head, h1_head, n_tools, n_labels,
         suspended) = _TASK.unpack_from(raw)
        if fmt != _FORMAT or min(calls, denies, spend, due) < 0 or not (_time_ok(started) and _time_ok(last)):
            raise ValueError
        m1, h1, at = _windows(raw, _TASK.size, flags, m1_head, h1_head)
        tools_json, labels_json = raw[at:at + n_tools], raw[at + n_tools:at + n_tools + n_labels]
        tools, labels = _decode(tools_json.decode("utf-8")), _decode(labels_json.decode("utf-8"))
        values = array("Q")
        values.frombytes(raw[at + n_tools + n_labels:])
        if (type(tools) is not list or type(labels) is not list or len(values) != len(labels)
                or (values and max(values) > LONG_MAX) or not all(type(label) is str for label in labels)):
            raise ValueError
        counts = dict(zip(labels, values))
        suspended_by = suspended.rstrip(b"\0").decode("ascii")
        if len(counts) != len(labels) or len(suspended_by) not in (0, 32):
            raise ValueError
    except (ValueError, TypeError, struct.error):
        raise _damaged("task", task_id) from None
    task = TaskState(task_id, started)
    task.last, task.calls, task.denies, task.spend, task.due = last, calls, denies, spend, due
    task.overflow, task.revoked = bool(flags & _OVERFLOW), bool(flags & _REVOKED)
    task.m1, task.h1, task.counts, task.suspended_by = m1, h1, counts, suspended_by
    task._labels_json = labels_json
    for tool in tools:
        if type(tool) is not list or len(tool) != 2 or type(tool[0]) is not str or type(tool[1]) is not str:
            raise _damaged("task", task_id)
        task._add_tool((tool[0], tool[1]))
    task._tools_json = tools_json
    return task


def decode_agent(agent_id: str, raw) -> AgentState:
    raw = bytes(raw)
    try:
        fmt, last, flags, due, m1_head, h1_head = _AGENT.unpack_from(raw)
        if fmt != _FORMAT or due < 0 or not _time_ok(last):
            raise ValueError
        m1, h1, at = _windows(raw, _AGENT.size, flags, m1_head, h1_head)
        if at != len(raw):
            raise ValueError
    except (ValueError, struct.error):
        raise _damaged("agent", agent_id) from None
    agent = AgentState(agent_id, last)
    agent.m1, agent.h1, agent.due = m1, h1, due
    return agent
