"""Cedar policy text -> Cedar's JSON policy form (EST), parsed by cedarpy, with file:line:col for every policy and error.

cedarpy is the only parser: this module only finds where statements start (to name policies
`FILE:N` and to place messages) and, when cedarpy rejects a file, which token it stumbled on.
"""

import json
import re
from dataclasses import dataclass

import cedarpy

from ..errors import CompileError

# Strings, line comments and statement ends are all a statement splitter needs to know.
_SPLIT_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|;')
_SKIP_RE = re.compile(r"(?:\s+|//[^\n]*)*")
_TOKEN_RE = re.compile(
    r'"(?:[^"\\\n]|\\.)*"?|//[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d+|::|==|!=|<=|>=|&&|\|\||\S'
)
_EOF_MESSAGE = "unexpected end of input"


@dataclass(slots=True)
class PolicySource:
    """One parsed policy and where it came from."""

    file: str
    index: int
    line: int
    col: int
    est: dict

    @property
    def where(self):
        return f"{self.file}:{self.line}:{self.col}"


class _LineMap:
    """Offset -> (line, col), both from 1."""

    def __init__(self, text):
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def locate(self, offset):
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, offset - self.starts[lo] + 1


def split_statements(text):
    """(start, end) offsets of each `;`-terminated statement; a trailing unterminated one is included."""
    spans = []
    start = None
    pos = 0
    for m in _SPLIT_RE.finditer(text):
        if start is None:
            gap = _SKIP_RE.match(text, pos, m.start())
            if gap.end() < m.start() or not m.group().startswith("//"):
                start = gap.end()
        if m.group() == ";":
            spans.append((start, m.end()))
            start = None
        pos = m.end()
    if start is None:
        start = _SKIP_RE.match(text, pos).end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _policy_order(est):
    """cedarpy's positional ids (`policyN`) in source order, static policies and templates together."""
    found = []
    for kind in ("staticPolicies", "templates"):
        for pid, body in est.get(kind, {}).items():
            found.append((int(pid[len("policy"):]), kind, body))
    found.sort(key=lambda item: item[0])
    return found


def _locate_error(statement, message):
    """Offset inside `statement` of the token at which cedarpy's `message` first appears."""
    for m in _TOKEN_RE.finditer(statement):
        try:
            cedarpy.policies_to_json_str(statement[: m.end()])
        except ValueError as err:
            if str(err) == message:
                return m.start()
            if str(err) != _EOF_MESSAGE:
                continue
    return 0


def parse_policy_text(text, file):
    """Parses one file's Cedar text into PolicySources; raises CompileError naming every bad statement."""
    spans = split_statements(text)
    lines = _LineMap(text)
    try:
        est = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError:
        est = None
    if est is not None:
        order = _policy_order(est)
        if len(order) == len(spans):
            return _to_sources(order, spans, lines, file)
    # Slow path: parse statement by statement to find and place each error.
    diagnostics, order = [], []
    for start, end in spans:
        statement = text[start:end]
        try:
            one = json.loads(cedarpy.policies_to_json_str(statement))
        except ValueError as err:
            offset = start + _locate_error(statement, str(err))
            line, col = lines.locate(offset)
            diagnostics.append(f"{file}:{line}:{col}: {err}")
            continue
        items = _policy_order(one)
        if len(items) != 1:
            line, col = lines.locate(start)
            diagnostics.append(f"{file}:{line}:{col}: expected exactly one policy in this statement")
            continue
        order.append((len(order),) + items[0][1:])
    if diagnostics:
        raise CompileError(diagnostics)
    return _to_sources(order, spans, lines, file)


def _to_sources(order, spans, lines, file):
    sources = []
    for n, ((_, kind, body), (start, _end)) in enumerate(zip(order, spans)):
        line, col = lines.locate(start)
        if kind == "templates":
            raise CompileError([f"{file}:{line}:{col}: unsupported construct `template slot`: templates are not supported yet"])
        sources.append(PolicySource(file, n, line, col, body))
    return sources
