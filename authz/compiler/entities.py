"""Cedar JSON entity files -> validated entities with their transitively closed ancestors."""

import json

import cedarpy

from ..errors import CompileError


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


def _validate(text, where):
    try:
        cedarpy.Entities.from_json_str(text)
    except Exception as err:  # cedarpy raises ValueError; anything else is a rejection too
        raise CompileError([f"{where}: invalid entities: {err}"]) from None


def load_entities(files):
    """Entities from (path, display name) pairs; cedarpy must accept each file and their union."""
    merged = []
    for path, name in files:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CompileError([f"{name}: cannot read entities: {err}"]) from None
        if not isinstance(data, list):
            raise CompileError([f"{name}: invalid entities: expected a JSON array of entities"])
        _validate(text, name)
        merged.extend(data)
    if len(files) > 1:
        _validate(json.dumps(merged), "entities")
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
