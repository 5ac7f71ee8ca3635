"""Why cedarpy rejects an entity file, in Cedar/JSON terms: `FILE:LINE:COL: entity `T::"id"`: what is wrong`.

cedarpy says only "error during entity deserialization". The entries it rejects are found by asking it
about halves of the file, then about each part of such an entry (uid, each attribute, parent, tag, and
inside a value), alone; the smallest part it rejects is then described here. Only a failed compile
runs this.
"""

import json
import re

import cedarpy

from ..jsonterms import kind, shown

MAX_REPORTED = 20  # rejected entities listed per file; a count of the rest follows
_I64 = (-(2**63), 2**63 - 1)
_WS = re.compile(r"[ \t\n\r]*")
_EXTENSIONS = {
    "ip": "an IP address or range (10.0.0.1, 10.0.0.0/8)",
    "decimal": "a decimal (at most 4 digits after the point)",
    "datetime": "a datetime (2024-10-15 or 2024-10-15T11:35:00Z)",
    "duration": "a duration (1h30m)",
}
_REFERENCE = 'a record {"type": "Type", "id": "..."}'
_PROBE_UID = {"type": "Probe", "id": ""}


def _accepts(entities):
    try:
        cedarpy.Entities.from_json_str(json.dumps(entities))
    except Exception:  # noqa: BLE001 - cedarpy raises ValueError; anything else is a rejection too
        return False
    return True


def _accepts_value(value):
    return _accepts([{"uid": _PROBE_UID, "attrs": {"v": value}, "parents": []}])


def _accepts_reference(ref):
    return _accepts([{"uid": _PROBE_UID, "attrs": {}, "parents": [ref]}])


def uid_text(ref):
    """`Type::"id"` of an entity reference Cedar accepts."""
    if "__entity" in ref:
        ref = ref["__entity"]
    return f'{ref["type"]}::{json.dumps(ref["id"], ensure_ascii=False)}'


def describe(text, items, message, name):
    """The diagnostics for an entity file (`text`, parsed as `items`) that cedarpy rejected with `message`."""
    rejected = _rejected_entries(items, MAX_REPORTED + 1)
    if rejected:
        problems = {k: _entry_problem(items[k]) for k in rejected}
    else:
        rejected = _entries_naming_a_key_twice(text)[:MAX_REPORTED + 1]
        if not rejected:
            return [f"{name}: {message}"]
        problems = dict.fromkeys(rejected, "a JSON object in it names the same key twice")
    starts = _entry_starts(text)
    out = []
    for k in rejected[:MAX_REPORTED]:
        line, col = _line_col(text, starts[k])
        label = _label(items[k])
        out.append(f"{name}:{line}:{col}: {label}: {problems[k]}")
    if len(rejected) > MAX_REPORTED:
        out.append(f"{name}: (more entities are rejected; the first {MAX_REPORTED} are listed)")
    return out


def _rejected_entries(items, limit):
    """Indexes of the entries cedarpy rejects on their own (at most `limit`), found by halving."""
    found = []

    def search(lo, hi):
        if len(found) >= limit or _accepts(items[lo:hi]):
            return
        if hi - lo == 1:
            found.append(lo)
            return
        mid = (lo + hi) // 2
        search(lo, mid)
        search(mid, hi)

    if len(items) == 1:
        search(0, 1)
    elif items:  # the whole array was rejected already
        search(0, len(items) // 2)
        search(len(items) // 2, len(items))
    return found


def _label(item):
    if isinstance(item, dict) and "uid" in item and _accepts_reference(item["uid"]):
        return f"entity `{uid_text(item['uid'])}`"
    return "entity"


def _entry_problem(item):
    if not isinstance(item, dict):
        return f'an entity is a record (JSON object) with "uid", "attrs" and "parents", not {kind(item)}'
    for field, empty in (("uid", None), ("attrs", "{}"), ("parents", "[]")):
        if field not in item:
            return f'no "{field}"' + (f' (write "{field}": {empty} for none)' if empty else "")
    uid = item["uid"]
    if not _accepts_reference(uid):
        return f'"uid": {_reference_problem(uid)}'
    for field in ("attrs", "tags"):
        if field not in item:
            continue
        record = item[field]
        if not isinstance(record, dict):
            return f'"{field}" must be a record (JSON object), not {kind(record)}'
        what = "attribute" if field == "attrs" else "tag"
        for key, value in record.items():
            if not _accepts_value(value):
                path, problem = _value_problem(value, key)
                return f"{what} `{path}`: {problem}"
    parents = item["parents"]
    if not isinstance(parents, list):
        return f'"parents" must be a set (JSON array) of entity references, not {kind(parents)}'
    for parent in parents:
        if not _accepts_reference(parent):
            return f"parent {shown(parent)}: {_reference_problem(parent)}"
    return "Cedar rejects it (error during entity deserialization)"


def _reference_problem(ref):
    inner = ref["__entity"] if isinstance(ref, dict) and "__entity" in ref else ref
    if not isinstance(inner, dict):
        return f"an entity reference is {_REFERENCE}, not {kind(inner)}"
    entity_type, entity_id = inner.get("type"), inner.get("id")
    if not isinstance(entity_type, str):
        return f'an entity reference needs "type", a string, not {kind(entity_type)}' if "type" in inner \
            else f'an entity reference needs "type" ({_REFERENCE})'
    if not isinstance(entity_id, str):
        return f'an entity reference needs "id", a string, not {kind(entity_id)}' if "id" in inner \
            else f'an entity reference needs "id" ({_REFERENCE})'
    return (f"`{entity_type}` is not a Cedar entity type name (identifiers joined by `::`, such as `User` or "
            f"`App::User`; not a reserved word such as `if`, nor `__cedar`)")


def _value_problem(value, path):
    """(path to the part of `value` Cedar rejects, what is wrong with it)."""
    if value is None:
        return path, "null is not a Cedar value (leave it out instead)"
    if isinstance(value, float):
        return path, (f"{shown(value)} is a number with a fraction or exponent; Cedar numbers are integers "
                      f'(for a fraction use {{"__extn": {{"fn": "decimal", "arg": "{value}"}}}})')
    if isinstance(value, int) and not isinstance(value, bool) and not _I64[0] <= value <= _I64[1]:
        return path, f"the integer {value} is outside Cedar's 64-bit range"
    if isinstance(value, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        return path, "the string holds an unpaired surrogate escape (such as \\ud800): it is not Unicode text"
    if isinstance(value, dict) and isinstance(value.get("__extn"), dict):
        return path, _extension_problem(value["__extn"])
    if isinstance(value, dict) and "__entity" in value:
        return path, _reference_problem(value)
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not _accepts_value(item):
                return _value_problem(item, f"{path}[{i}]")
    if isinstance(value, dict):
        for key, item in value.items():
            if not _accepts_value(item):
                return _value_problem(item, f"{path}.{key}")
    return path, f"Cedar does not accept {shown(value)}"


def _extension_problem(extn):
    fn, arg = extn.get("fn"), extn.get("arg")
    if fn not in _EXTENSIONS:
        return (f"{shown(fn)} is not a Cedar extension function ({', '.join(_EXTENSIONS)}): write "
                f'{{"__extn": {{"fn": "ip", "arg": "10.0.0.1"}}}}')
    if not isinstance(arg, str):
        return f'{fn}() takes "arg", a string, not {kind(arg)}' if "arg" in extn else f'{fn}() needs "arg", a string'
    return f"{fn}({shown(arg)}): Cedar cannot read {shown(arg)} as {_EXTENSIONS[fn]}"


def _entry_starts(text):
    """Offsets where each entry of the top-level JSON array `text` starts."""
    decoder = json.JSONDecoder()
    at = _WS.match(text).end() + 1
    at = _WS.match(text, at).end()
    starts = []
    while at < len(text) and text[at] != "]":
        starts.append(at)
        at = _WS.match(text, decoder.raw_decode(text, at)[1]).end()
        if at < len(text) and text[at] == ",":
            at = _WS.match(text, at + 1).end()
    return starts


def _entries_naming_a_key_twice(text):
    """Indexes of the entries with a JSON object naming a key twice (json.loads keeps the last; cedarpy refuses)."""
    def no_repeats(pairs):
        if len({key for key, _ in pairs}) != len(pairs):
            raise _RepeatedKey
        return dict(pairs)

    decoder = json.JSONDecoder(object_pairs_hook=no_repeats)
    found = []
    for k, start in enumerate(_entry_starts(text)):
        try:
            decoder.raw_decode(text, start)
        except _RepeatedKey:
            found.append(k)
    return found


class _RepeatedKey(Exception):
    pass


def _line_col(text, offset):
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)
