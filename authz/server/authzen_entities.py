"""AuthZEN `properties` as entity attributes for one request: the stored entity's attributes overlaid key by key, its
stored parents kept; an entity that is not stored is built from the properties alone.

The overlaid entity goes to the engine as a request entity (Cedar's JSON entity format, item 3 of
issue 21: request entities replace stored entities with the same uid, for that request only). The
stored entity is read from the generation the engine serves (authz.engine.stored). An engine that cannot take
request entities answers the request with a deny (`entity_overlay_unavailable`): properties are never dropped.
"""
from __future__ import annotations

from authz.engine.stored import StoredEntityReader
from authz.errors import IndexUnavailableError
from authz.server.decider import Invalid

UNAVAILABLE = "entity_overlay_unavailable"


def supports_overlays(engine) -> bool:
    """True when `engine` takes request entities (Engine.check / check_batch `entities`)."""
    return engine is not None and callable(getattr(engine, "request_entities", None))


def overlaid(stored: dict | None, uid: dict, properties: dict) -> dict:
    """The Cedar JSON entity `uid` for this request: `stored` ({uid, attrs, parents, tags?} or None) with each
    property replacing the attribute of its name; new dicts and lists, `stored` is not changed."""
    if stored is None:
        return {"uid": dict(uid), "attrs": dict(properties), "parents": []}
    out = {"uid": dict(uid), "attrs": {**stored.get("attrs", {}), **properties},
           "parents": list(stored.get("parents", ()))}
    if stored.get("tags"):
        out["tags"] = stored["tags"]
    return out


class Overlays:
    """Builds the request entities of evaluations that carry properties, reading stored entities from the
    generation the engine serves (authz.engine.stored, once per generation)."""

    def __init__(self):
        self.stored = StoredEntityReader()

    def apply(self, engine, request: dict, overlays: tuple):
        """`request` with the entities of `overlays` (authzen_map.Entity with properties) as its `entities`,
        or an Invalid denying it when they cannot be built."""
        def invalid(message):
            return Invalid(UNAVAILABLE, message, "properties", request.get("principal"), request.get("action"),
                           request.get("resource"))

        if not supports_overlays(engine):
            return invalid("this server's engine cannot take per-request entity attributes (`properties`)")
        entities = {}
        try:
            for e in overlays:
                key = (e.uid["type"], e.uid["id"])
                base = entities.get(key)
                if base is None:
                    base = self.stored.entity(engine, e.uid)
                entities[key] = overlaid(base, e.uid, e.properties)
        except IndexUnavailableError as err:
            return invalid(f"the stored entity cannot be read: {err}")
        return {**request, "entities": list(entities.values())}
