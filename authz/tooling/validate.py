"""Cedar schema validation of policy sources (cedarpy's validator), reported as `FILE:LINE:COL: message`.

Sources are collected as `authz compile` collects them (folders searched recursively, `.cedar` policy files,
entity files); every policy is type-checked against the schema and every entity file is checked to conform
to it. Cedar names a failing policy only by its position, so each message is placed at the policy (or at
the part of it the message quotes, when that is found in its text); schema problems point into the schema.
"""

import json
import os
import re

import cedarpy

from ..compiler import find_sources, shown_path
from ..compiler.source import parse_policy_text
from ..errors import CompileError

MAX_SCHEMA_BYTES = 4 << 20  # a schema larger than this is refused unread
MAX_REPORTED_ENTITIES = 20  # entities that do not conform, listed per file
_MAX_LOCATE_TOKENS = 5000  # a Cedar schema's syntax error is placed by parsing prefixes up to this many tokens

_FOR_POLICY_RE = re.compile(r"^for policy `([^`]*)`, ")
_QUOTED_RE = re.compile(r"`([^`]+)`")
_JSON_AT_RE = re.compile(r" at line (\d+) column (\d+)$")
_SCHEMA_PREFIX = "Schema parse error: "
_TOKEN_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"?|//[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d+|::|\S')
_WS_RE = re.compile(r"[ \t\n\r]*")


def _line_col(text, offset):
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)


def is_json_schema(text):
    """True for a schema in Cedar's JSON format (a JSON object), False for the human-readable Cedar syntax."""
    return text.lstrip().startswith("{")


class Schema:
    """A Cedar schema read from a file: `text`, `shown` (its path in messages) and the parsed cedarpy handle."""

    def __init__(self, path, shown=None):
        self.shown = shown or path
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_SCHEMA_BYTES + 1)
        except OSError as err:
            raise CompileError([f"{self.shown}: cannot read schema file: {err.strerror}"]) from None
        if len(raw) > MAX_SCHEMA_BYTES:
            raise CompileError([f"{self.shown}: schema file larger than {MAX_SCHEMA_BYTES} bytes"])
        try:
            self.text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CompileError([f"{self.shown}: cannot read schema file: not UTF-8 text (byte {err.start})"]) from None
        self.json = is_json_schema(self.text)
        if self.json:
            try:
                json.loads(self.text)
            except json.JSONDecodeError as err:
                raise CompileError([f"{self.shown}:{err.lineno}:{err.colno}: {err.msg}"]) from None
        try:
            self.handle = (cedarpy.Schema.from_json_str if self.json else cedarpy.Schema.from_str)(self.text)
        except ValueError as err:
            raise CompileError([self.diagnostic(str(err))]) from None

    def diagnostic(self, message):
        """`FILE:LINE:COL: message` for a problem cedarpy found in the schema."""
        if message.startswith(_SCHEMA_PREFIX):
            message = message[len(_SCHEMA_PREFIX):]
        at = _JSON_AT_RE.search(message)
        if at:
            return f"{self.shown}:{at.group(1)}:{at.group(2)}: {message[:at.start()]}"
        line, col = _line_col(self.text, self._locate(message))
        return f"{self.shown}:{line}:{col}: invalid schema: {message}"

    def _locate(self, message):
        """Offset of what a Cedar-syntax schema message is about: the type it cannot resolve, or the token at
        which parsing fails (found by parsing ever longer prefixes), else 0."""
        quoted = _QUOTED_RE.findall(message) or [message.rsplit(": ", 1)[-1]]
        if "resolve type" in message:
            name = quoted[-1]
            for m in re.finditer(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", self.text):
                before = self.text[max(0, m.start() - 8):m.start()].rstrip()
                if not before.endswith("entity"):
                    return m.start()
            return 0
        if self.json or "unexpected token" not in message:
            return 0
        for n, m in enumerate(_TOKEN_RE.finditer(self.text)):
            if n >= _MAX_LOCATE_TOKENS:
                break
            try:
                cedarpy.Schema.from_str(self.text[:m.end()])
            except ValueError as err:
                if str(err) == message:
                    return m.start()
        return 0


def _place(source, message):
    """(line, col) in the policy's file of the first part of it that `message` quotes, else the policy's start."""
    text, path_attr = source.text, None
    if message.startswith("attribute `"):
        path_attr = _QUOTED_RE.search(message).group(1)
    candidates = []
    if path_attr is not None:
        candidates += [f".{path_attr}", f'"{path_attr}"', path_attr]
    candidates += _QUOTED_RE.findall(message)
    for quoted in candidates:
        at = text.find(quoted)
        if at >= 0:
            at += quoted.startswith(".")  # the attribute's name, not the dot before it
            before = text[:at]
            return source.line + before.count("\n"), (source.col + at if "\n" not in before
                                                      else at - before.rfind("\n"))
    return source.line, source.col


def _policy_id(source, annotated):
    return annotated if annotated is not None else f"{source.name}:{source.index}"


def validate_policies(sources, schema):
    """Diagnostics for the PolicySources that do not validate against `schema`, in source order."""
    if not sources:
        return []
    result = cedarpy.validate_policies("\n".join(s.text for s in sources), schema.handle)
    ids = result.id_annotations_by_policy_id
    out = []
    for error in result.errors:
        message, pid = error.error, error.policy_id
        if not pid.startswith("policy") or not pid[6:].isdigit() or int(pid[6:]) >= len(sources):
            out.append(schema.diagnostic(message))
            continue
        source = sources[int(pid[6:])]
        message = _FOR_POLICY_RE.sub("", message)
        line, col = _place(source, message)
        out.append(f"{source.file}:{line}:{col}: policy `{_policy_id(source, ids.get(pid))}`: {message}")
    return out


def _entry_starts(text):
    """Offsets where each entry of the top-level JSON array `text` starts."""
    decoder = json.JSONDecoder()
    at = _WS_RE.match(text, _WS_RE.match(text).end() + 1).end()
    starts = []
    while at < len(text) and text[at] != "]":
        starts.append(at)
        at = _WS_RE.match(text, decoder.raw_decode(text, at)[1]).end()
        if at < len(text) and text[at] == ",":
            at = _WS_RE.match(text, at + 1).end()
    return starts


def _uid_text(item):
    try:
        uid = item["uid"]
        uid = uid.get("__entity", uid)
        return f'{uid["type"]}::{json.dumps(uid["id"], ensure_ascii=False)}'
    except (KeyError, TypeError, AttributeError):
        return "?"


def validate_entity_file(path, shown, schema):
    """Diagnostics for the entities of one file that do not conform to `schema` (the compile reports
    files it cannot read or parse at all, so those give none here)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        items = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError):
        return []
    if not isinstance(items, list):
        return []
    try:
        cedarpy.Entities.from_json_str(text, schema=schema.handle)
        return []
    except ValueError as err:
        whole = str(err)
    try:
        starts = _entry_starts(text)
    except ValueError:
        starts = []
    out = []
    for k, item in enumerate(items):
        try:
            cedarpy.Entities.from_json_str(json.dumps([item]), schema=schema.handle)
            continue
        except ValueError as err:
            message = str(err)
        line, col = _line_col(text, starts[k]) if k < len(starts) else (1, 1)
        out.append(f"{shown}:{line}:{col}: entity `{_uid_text(item)}`: {message} ({schema.shown})")
        if len(out) == MAX_REPORTED_ENTITIES:
            break
    return out or [f"{shown}: entities do not conform to the schema {schema.shown}: {whole}"]


def validate_sources(srcs, schema_path):
    """Every problem found validating `srcs` (policy and entity files, folders) against the schema at
    `schema_path`: syntax errors as `authz compile` reports them, then validation errors; [] when valid.
    Raises CompileError for sources or a schema that cannot be read."""
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    schema = Schema(os.fspath(schema_path), shown_path(os.fspath(schema_path), cwd))
    policy_files, entity_files = find_sources(srcs)
    diagnostics, sources = [], []
    for path, shown, name in policy_files:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as err:
            diagnostics.append(f"{shown}:1:1: cannot read policy file: {err}")
            continue
        try:
            sources.extend(parse_policy_text(text, shown, name))
        except CompileError as err:
            diagnostics.extend(err.diagnostics)
    diagnostics.extend(validate_policies(sources, schema))
    for path, shown in entity_files:
        diagnostics.extend(validate_entity_file(path, shown, schema))
    return diagnostics
