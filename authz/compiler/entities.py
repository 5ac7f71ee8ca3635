"""Cedar JSON entity files -> validated entities with their transitively closed ancestors."""

import json
import re

import cedarpy

from ..errors import CompileError
from ..jsonterms import kind
from .entity_errors import describe, uid_text


def _uid(obj):
    if isinstance(obj, dict) and "__entity" in obj:
        obj = obj["__entity"]
    return (obj["type"], obj["id"])


class Entity:
    """One entity: uid, direct parents, attributes and tags (Cedar JSON value syntax)."""

    __slots__ = ("uid", "parents", "attrs", "tags", "ancestors")

    def __init__(self, uid, parents, attrs, tags):
        self.uid = uid
        self.parents = parents
        self.attrs = attrs
        self.tags = tags
        self.ancestors = ()


def _rejection(text):
    """cedarpy's message if it rejects the entities in `text`, else None."""
    try:
        cedarpy.Entities.from_json_str(text)
    except Exception as err:  # noqa: BLE001 - cedarpy raises ValueError; anything else is a rejection too
        return str(err) or "rejected"
    return None


def _read(path, name, on_read=None):
    """The entity array in the file at `path` (`name` in messages), checked by cedarpy; `on_read(path,
    bytes)` is told the file's content (the policy set's digest)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if on_read is not None:
            on_read(path, raw)
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it
    except UnicodeDecodeError as err:
        raise CompileError([f"{name}: cannot read entities: not UTF-8 text (byte {err.start})"]) from None
    except OSError as err:
        raise CompileError([f"{name}: cannot read entities: {err.strerror}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CompileError([f"{name}:{err.lineno}:{err.colno}: {err.msg}"]) from None
    if not isinstance(data, list):
        raise CompileError([f"{name}: an entity file is a JSON array of entities, not {kind(data)}"])
    message = _rejection(text)
    if message is not None:
        raise CompileError(describe(text, data, message, name))
    return data


def _conflict(files, message):
    """The diagnostic for entity files that cedarpy accepts one by one but not together."""
    first = {}
    for name, data in files:
        for item in data:
            uid = _uid(item["uid"])
            seen = first.setdefault(uid, (name, item))
            if seen[1] != item and seen[0] != name:
                return f"{name}: entity `{uid_text(item['uid'])}` is also defined, differently, in {seen[0]}"
    return f"{', '.join(name for name, _ in files)}: {message}"


def load_entities(files, overlay=None, on_read=None):
    """Entities from (path, name in messages) pairs; cedarpy must accept each file and their union.
    `on_read(path, bytes)`: told each file's content as it is read.

    `overlay`: (name in messages, entity list) whose entities replace those of the files with the same
    uid, whole (authz test: a case's own entities); cedarpy must accept it and the result."""
    read, diagnostics = [], []
    for path, name in files:
        try:
            read.append((name, _read(path, name, on_read)))
        except CompileError as err:
            diagnostics.extend(err.diagnostics)
    if overlay is not None:
        name, items = overlay
        text = json.dumps(items)
        message = _rejection(text) if isinstance(items, list) else "a JSON array of entities is expected"
        if message is not None:
            # (positions in `text`, which the user never saw, are left out)
            found = describe(text, items, message, "") if isinstance(items, list) else [f": {message}"]
            diagnostics.extend(name + re.sub(r"^:\d+:\d+:", ":", d) for d in found)
        else:
            replaced = {_uid(item["uid"]) for item in items}
            read = [(n, [item for item in data if _uid(item["uid"]) not in replaced]) for n, data in read]
            read.append((name, items))
    if diagnostics:
        raise CompileError(diagnostics)
    merged = [item for _, data in read for item in data]
    if len(read) > 1:
        message = _rejection(json.dumps(merged))
        if message is not None:
            raise CompileError([_conflict(read, message)])
    entities = {}
    for item in merged:
        uid = _uid(item["uid"])
        entities[uid] = Entity(uid, [_uid(p) for p in item.get("parents") or ()],
                               item.get("attrs") or {}, item.get("tags") or {})
    close_ancestors(entities)
    return entities


def close_ancestors(entities):
    """Sets each entity's ancestors: the transitive closure of `parents`, cycles allowed, itself excluded."""
    done = {}
    for uid, entity in entities.items():
        found = set()
        stack = list(entity.parents)
        while stack:
            parent = stack.pop()
            if parent in found:
                continue
            found.add(parent)
            if parent in done:
                found |= done[parent]
            elif parent in entities:
                stack.extend(entities[parent].parents)
        found.discard(uid)
        done[uid] = found
        entity.ancestors = found
