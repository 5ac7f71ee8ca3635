"""Policy test files (YAML or JSON) -> checked TestFile/TestCase values, every problem named with its place.

A test file is a mapping: `policies` (a path or a list of paths, relative to the file: what `authz compile`
takes), optional `entities` (entity files, likewise), and `cases`, a list of named cases
`{name, request, entities?, expect: allow|deny, policies?, reason?}` (docs/policy-tooling.md).
"""

import datetime
import json
import os

import yaml

from ..errors import AuthzError

MAX_FILE_BYTES = 8 << 20  # a test file larger than this is refused unread
MAX_CASES = 10000  # cases in one file
MAX_DEPTH = 64  # nesting of a request or an entity list
MAX_NODES = 100000  # values in one case's request or entities, YAML aliases expanded
EXPECT = ("allow", "deny")
REASONS = ("forbidden_by_policy", "no_permitting_policy")  # the reason of a deny the policies made
FILE_KEYS = ("policies", "entities", "cases")
CASE_KEYS = ("name", "request", "entities", "expect", "policies", "reason")
REQUEST_KEYS = ("principal", "action", "resource", "context")


class TestFileError(AuthzError):
    """A test file cannot be read or is not a valid test file; `diagnostics` names each problem."""

    code = "test_file_error"
    __test__ = False  # not a pytest test class

    def __init__(self, diagnostics):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(self.diagnostics))


class TestCase:
    """One case: `name`, `where` (FILE:LINE for messages), `request` (principal, action, resource, context),
    `entities` (a list, or None), `expect`, `policies` (expected determining ids, or None), `reason` (or None),
    and `problem`: why the case cannot run (then it is reported as an error), else None."""

    __slots__ = ("name", "where", "request", "entities", "expect", "policies", "reason", "problem")
    __test__ = False  # not a pytest test class

    def __init__(self, name, where):
        self.name, self.where = name, where
        self.request, self.entities, self.expect, self.policies, self.reason = None, None, None, None, None
        self.problem = None


class TestFile:
    """A loaded test file: `path`, `shown` (its path in messages), `policies` and `entities` (paths as given,
    resolved against the file's folder; None when the file names none) and its `cases`."""

    __slots__ = ("path", "shown", "policies", "entities", "cases")
    __test__ = False  # not a pytest test class

    def __init__(self, path, shown, policies, entities, cases):
        self.path, self.shown, self.policies, self.entities, self.cases = path, shown, policies, entities, cases


class _Mapping(dict):
    """A YAML mapping that remembers where it starts (line, from 1)."""

    line = 0


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, mappings remembering their line. Aliases (*name, <<: *name) share the object
    they name; a case's values are counted as expanded (MAX_NODES), so an alias bomb stops there."""


def _construct_mapping(loader, node):
    mapping = _Mapping(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _read(path, shown):
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise TestFileError([f"{shown}: cannot read test file: {err.strerror}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise TestFileError([f"{shown}: test file larger than {MAX_FILE_BYTES} bytes"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TestFileError([f"{shown}: cannot read test file: not UTF-8 text (byte {err.start})"]) from None


def _parse(text, shown):
    """The document of a test file: JSON for a `.json` file, else YAML."""
    if shown.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise TestFileError([f"{shown}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}"]) from None
        except RecursionError:
            raise TestFileError([f"{shown}:1:1: nested too deeply"]) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise TestFileError([f"{shown}:{line}:{col}: invalid YAML: {err.problem or err}"]) from None
    except yaml.YAMLError as err:
        raise TestFileError([f"{shown}:1:1: invalid YAML: {err}"]) from None
    except RecursionError:
        raise TestFileError([f"{shown}:1:1: nested too deeply"]) from None


def _kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def to_json(value, depth=0, budget=None):
    """`value` as plain JSON data (dict, list, str, int, float, bool, None); ValueError naming what is not,
    or saying that it nests deeper than MAX_DEPTH or holds more than MAX_NODES values."""
    if budget is None:
        budget = [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"more than {MAX_NODES} values")
    if depth > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"key `{k}` is {_kind(k)}, not a string (quote it)")
            out[k] = to_json(v, depth + 1, budget)
        return out
    if isinstance(value, list):
        return [to_json(v, depth + 1, budget) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        raise ValueError(f"`{value}` is a YAML date, not a string (quote it)")
    raise ValueError(f"`{value}` is {_kind(value)}, not a JSON value")


def _paths(value, base, what):
    """A path or a list of paths (strings), resolved against `base`."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p for p in items):
        raise ValueError(f"`{what}` is a path or a list of paths, not {_kind(value)}")
    return [p if os.path.isabs(p) else os.path.join(base, p) for p in items]


def _case(item, n, shown):
    line = getattr(item, "line", 0)
    where = f"{shown}:{line}" if line else shown
    name = item.get("name") if isinstance(item, dict) else None
    case = TestCase(name if isinstance(name, str) and name else f"case {n + 1}", where)
    try:
        if not isinstance(item, dict):
            raise ValueError(f"a case is a mapping, not {_kind(item)}")
        unknown = [k for k in item if k not in CASE_KEYS]
        if unknown:
            raise ValueError(f"unknown case field `{unknown[0]}` (fields: {', '.join(CASE_KEYS)})")
        if not isinstance(name, str) or not name:
            raise ValueError("a case needs a `name` (a non-empty string)")
        request = item.get("request")
        if not isinstance(request, dict):
            raise ValueError("`request` is a mapping with principal, action, resource and context, "
                             f"not {_kind(request)}")
        unknown = [k for k in request if k not in REQUEST_KEYS]
        if unknown:
            raise ValueError(f"unknown request field `{unknown[0]}` (fields: {', '.join(REQUEST_KEYS)})")
        missing = [k for k in REQUEST_KEYS[:3] if k not in request]
        if missing:
            raise ValueError(f"the request has no `{missing[0]}`")
        budget = [MAX_NODES]
        case.request = to_json(request, 0, budget)
        if case.request.get("context") is None:
            case.request["context"] = {}
        if "entities" in item:
            if not isinstance(item["entities"], list):
                raise ValueError(f"`entities` is a list of Cedar JSON entities, not {_kind(item['entities'])}")
            case.entities = to_json(item["entities"], 0, budget)
        expect = item.get("expect")
        if expect not in EXPECT:
            shown_value = f"`{expect}`" if isinstance(expect, str) else _kind(expect)
            raise ValueError(f"`expect` is `allow` or `deny`, not {shown_value}")
        case.expect = expect
        if "policies" in item:
            policies = item["policies"]
            policies = [policies] if isinstance(policies, str) else policies
            if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
                raise ValueError(f"`policies` is a list of policy ids, not {_kind(item['policies'])}")
            case.policies = policies
        if "reason" in item:
            reason = item["reason"]
            if expect != "deny":
                raise ValueError("`reason` is only for `expect: deny`")
            if reason not in REASONS:
                raise ValueError(f"`reason` is one of {', '.join(REASONS)}, not `{reason}`")
            case.reason = reason
    except ValueError as err:
        case.problem = str(err)
    return case


def load_test_file(path, shown):
    """The TestFile at `path` (`shown` in messages); raises TestFileError if it is not a test file at all.
    A bad case does not fail the file: it carries its `problem`."""
    doc = _parse(_read(path, shown), shown)
    if not isinstance(doc, dict):
        raise TestFileError([f"{shown}:1:1: a test file is a mapping with `cases`, not {_kind(doc)}"])
    unknown = [k for k in doc if k not in FILE_KEYS and not (isinstance(k, str) and k.startswith("x-"))]
    if unknown:
        raise TestFileError([f"{shown}: unknown field `{unknown[0]}` (fields: {', '.join(FILE_KEYS)}; "
                             "`x-...` fields are ignored)"])
    base = os.path.dirname(os.path.abspath(path))
    try:
        policies = _paths(doc["policies"], base, "policies") if "policies" in doc else None
        entities = _paths(doc["entities"], base, "entities") if "entities" in doc else None
    except ValueError as err:
        raise TestFileError([f"{shown}: {err}"]) from None
    items = doc.get("cases")
    if not isinstance(items, list) or not items:
        raise TestFileError([f"{shown}: `cases` is a non-empty list of cases, not {_kind(items)}"])
    if len(items) > MAX_CASES:
        raise TestFileError([f"{shown}: more than {MAX_CASES} cases"])
    cases, seen = [], {}
    for n, item in enumerate(items):
        case = _case(item, n, shown)
        if case.problem is None and case.name in seen:
            case.problem = f"duplicate case name `{case.name}` (first at {seen[case.name]})"
        seen.setdefault(case.name, case.where)
        cases.append(case)
    return TestFile(path, shown, policies, entities, cases)
