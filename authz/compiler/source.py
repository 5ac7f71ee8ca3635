"""Cedar policy text -> Cedar's JSON policy form (EST), parsed by cedarpy, with file:line:col for every policy and error.

cedarpy is the only parser: this module only finds where statements start (to name policies
`FILE:N` and to place messages), replaces string literals by placeholders so that cedarpy parses
each distinct policy shape once, and, when cedarpy rejects a file, finds the token it stumbled on.
"""

import json
import re
from dataclasses import dataclass

import cedarpy

from ..errors import CompileError
from .layout import MAX_TEXT_NESTING

# Strings, line comments and statement ends are all a statement splitter needs to know.
_SPLIT_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|;')
_SKIP_RE = re.compile(r"(?:\s+|//[^\n]*)*")
_TOKEN_RE = re.compile(
    r'"(?:[^"\\\n]|\\.)*"?|//[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d+|::|==|!=|<=|>=|&&|\|\||\S'
)
_EOF_MESSAGE = "unexpected end of input"
_BAD_ESCAPE_RE = re.compile(r"the input `(.+?)` is not a valid escape")


# A string literal becomes a numbered placeholder, so that policies differing only in their literals
# (the common case: one policy per agent or tool) share one shape, parsed by cedarpy once.
_LIKE_BEFORE_RE = re.compile(r'(?:^|[^A-Za-z0-9_])like\s*$')
_SLOT_PREFIX, _SLOT_SUFFIX = "@@authz:", "@@"


def literal_slot(text):
    """The literal index a placeholder string stands for, or None for an ordinary string."""
    if text.startswith(_SLOT_PREFIX) and text.endswith(_SLOT_SUFFIX):
        return int(text[len(_SLOT_PREFIX):-len(_SLOT_SUFFIX)])
    return None


@dataclass(slots=True)
class PolicySource:
    """One policy: where it is, its shape's EST (shared by every policy of that shape) and its literals.

    `file` is the path as messages show it (`where`); `name` is the file's name in the ids of policies
    without `@id` (`name:index`). `shape` is the exact text cedarpy parsed into `est`, and `placeholders`
    says whether its string literals were replaced by numbered placeholders (then `literals` holds their
    values, in order). The pair names the shape across files: equal pairs parse to equal ESTs."""

    file: str
    name: str
    index: int
    line: int
    col: int
    est: dict
    literals: tuple
    text: str
    shape: str
    placeholders: bool

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


def scan_statements(text, placeholders=True):
    """One pass over the text: per `;`-terminated statement (a trailing unterminated one too),
    (start, end, line, col, shape, raw literals). With `placeholders`, string literals outside
    `like` patterns and comments are replaced in the shape by numbered placeholders."""
    found = []
    start = None
    pos = seg = 0
    pieces, raw = [], []
    line, counted = 1, 0

    def begin(at):
        nonlocal line, counted
        line += text.count("\n", counted, at)
        counted = at
        return at

    for m in _SPLIT_RE.finditer(text):
        token, at = m.group(), m.start()
        if start is None:
            gap = _SKIP_RE.match(text, pos, at).end()
            if gap < at or token[0] != "/":
                start = seg = begin(gap)
        if token[0] == '"':
            if placeholders and not (text.find("like", max(start, at - 64), at) >= 0
                                     and _LIKE_BEFORE_RE.search(text, max(start, at - 64), at)):
                pieces.append(text[seg:at])
                pieces.append(f'"{_SLOT_PREFIX}{len(raw)}{_SLOT_SUFFIX}"')
                raw.append(token)
                seg = m.end()
        elif token == ";":
            pieces.append(text[seg:m.end()])
            found.append((start, m.end(), line, start - text.rfind("\n", 0, start), "".join(pieces), raw))
            start, pieces, raw = None, [], []
        pos = m.end()
    if start is None:
        start = seg = _SKIP_RE.match(text, pos).end()
        if start < len(text):
            begin(start)
    if start < len(text):
        pieces.append(text[seg:])
        found.append((start, len(text), line, start - text.rfind("\n", 0, start), "".join(pieces), raw))
    return found


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
    escape = _BAD_ESCAPE_RE.search(message)
    if escape and escape.group(1) in statement:
        # cedarpy reports a bad string escape at the end of the statement: point at the escape itself.
        return statement.index(escape.group(1))
    for m in _TOKEN_RE.finditer(statement):
        try:
            cedarpy.policies_to_json_str(statement[: m.end()])
        except ValueError as err:
            if str(err) == message:
                return m.start()
            if str(err) != _EOF_MESSAGE:
                continue
    return 0


def _decode_literals(raw_texts):
    """Cedar string literal texts -> their values (cedarpy decodes the escaped ones); None if one is invalid."""
    escaped = sorted({r for r in raw_texts if "\\" in r})
    decoded = {}
    if escaped:
        probe = "permit(principal, action, resource) when { [" + ", ".join(escaped) + "] };"
        try:
            est = json.loads(cedarpy.policies_to_json_str(probe))
            items = est["staticPolicies"]["policy0"]["conditions"][0]["body"]["Set"]
            decoded = {r: item["Value"] for r, item in zip(escaped, items)}
        except (ValueError, KeyError, IndexError, TypeError):
            return None
    return [decoded[r] if r in decoded else r[1:-1] for r in raw_texts]


def _parse_by_shape(statements):
    """[(est, literals)] per statement, parsing each distinct shape once; None when a statement fails."""
    shapes, per_statement, all_raw = {}, [], []
    for statement in statements:
        shape, raw = statement[4], statement[5]
        per_statement.append((shapes.setdefault(shape, len(shapes)), len(all_raw), len(raw)))
        all_raw.extend(raw)
    try:
        est = json.loads(cedarpy.policies_to_json_str("\n".join(shapes)))
    except ValueError:
        return None
    order = _policy_order(est)
    if len(order) != len(shapes):
        return None
    values = _decode_literals(all_raw)
    if values is None:
        return None
    return [(order[k], tuple(values[at:at + n])) for k, at, n in per_statement]


_NESTING_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|[\[({]|[\])}]')


def _check_nesting(text, statements, file):
    """Refuses text nested deeper than cedarpy's parser survives (it would take the process down)."""
    for start, end, line, col, *_ in statements:
        if end - start < 2 * MAX_TEXT_NESTING:  # too short to nest that deep
            continue
        depth = 0
        for m in _NESTING_RE.finditer(text, start, end):
            token = m.group()
            if token in "([{":
                depth += 1
                if depth > MAX_TEXT_NESTING:
                    line, col = _LineMap(text).locate(m.start())
                    raise CompileError([f"{file}:{line}:{col}: expression nested too deeply "
                                        f"(more than {MAX_TEXT_NESTING} levels of brackets)"])
            elif token in ")]}":
                depth -= 1


def parse_policy_text(text, file, name):
    """Parses one file's Cedar text into PolicySources (`file`: its path in messages, `name`: its name in
    policy ids); raises CompileError naming every bad statement."""
    placeholders = _SLOT_PREFIX not in text
    statements = scan_statements(text, placeholders=placeholders)
    _check_nesting(text, statements, file)
    parsed = _parse_by_shape(statements)
    if parsed is not None:
        return _to_sources(parsed, statements, file, name, text, placeholders)
    # Slow path: parse statement by statement to find and place each error.
    lines = _LineMap(text)
    diagnostics, parsed = [], []
    for start, end, *_ in statements:
        statement = text[start:end]
        try:
            one = json.loads(cedarpy.policies_to_json_str(statement))
        except ValueError as err:
            line, col = lines.locate(start + _locate_error(statement, str(err)))
            diagnostics.append(f"{file}:{line}:{col}: {err}")
            continue
        items = _policy_order(one)
        if len(items) != 1:
            line, col = lines.locate(start)
            diagnostics.append(f"{file}:{line}:{col}: expected exactly one policy in this statement")
            continue
        parsed.append((items[0], ()))
    if diagnostics:
        raise CompileError(diagnostics)
    # Each statement was parsed from its own text, literals in place.
    return _to_sources(parsed, statements, file, name, text, False)


def parse_alone(source):
    """The EST of one policy parsed on its own, literals in place (when its shape can't be patched)."""
    return _policy_order(json.loads(cedarpy.policies_to_json_str(source.text)))[0][2]


def _to_sources(parsed, statements, file, name, text, placeholders):
    sources = []
    for n, (((_, kind, body), literals), (start, end, line, col, shape, _raw)) in enumerate(zip(parsed, statements)):
        if kind == "templates":
            raise CompileError([f"{file}:{line}:{col}: unsupported construct `template slot`: templates are not supported yet"])
        if not placeholders:
            shape = text[start:end]
        sources.append(PolicySource(file, name, n, line, col, body, literals, text[start:end], shape, placeholders))
    return sources
