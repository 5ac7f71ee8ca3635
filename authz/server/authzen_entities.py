"""AuthZEN `properties` as entity attributes for one request: the stored entity's attributes overlaid key by key, its
stored parents kept; an entity that is not stored is built from the properties alone.

The overlaid entity goes to the engine as a request entity (Cedar's JSON entity format, item 3 of
issue 21: request entities replace stored entities with the same uid, for that request only). The
stored entity is read from the engine. An engine that cannot do either answers the request with a
deny (`entity_overlay_unavailable`): properties are never dropped silently.
"""
from __future__ import annotations

from authz.server.decider import Invalid

UNAVAILABLE = "entity_overlay_unavailable"


def supports_overlays(engine) -> bool:
    """True when `engine` reads stored entities (`entity`) and takes request entities (`entities`)."""
    return engine is not None and callable(getattr(engine, "entity", None)) and \
        bool(getattr(engine, "request_entities", False))


def overlaid(stored: dict | None, uid: dict, properties: dict) -> dict:
    """The Cedar JSON entity `uid` for this request: `stored` ({uid, attrs, parents} or None) with each
    property replacing the attribute of its name; a new dict, `stored` is not changed."""
    if stored is None:
        return {"uid": dict(uid), "attrs": dict(properties), "parents": []}
    attrs = dict(stored.get("attrs") or {})
    attrs.update(properties)
    return {"uid": dict(uid), "attrs": attrs, "parents": list(stored.get("parents") or ())}


def with_overlays(engine, request: dict, overlays: tuple):
    """`request` with the entities of `overlays` (authzen_map.Entity with properties) as request entities,
    or an Invalid denying it when the engine cannot take them."""
    if not supports_overlays(engine):
        return Invalid(UNAVAILABLE, "this server's engine cannot take per-request entity attributes "
                       "(`properties`); send the evaluation without them", "properties",
                       request.get("principal"), request.get("action"), request.get("resource"))
    entities = {}
    for e in overlays:
        key = (e.uid["type"], e.uid["id"])
        base = entities.get(key) or engine.entity(e.uid)
        entities[key] = overlaid(base, e.uid, e.properties)
    return {**request, "entities": list(entities.values())}
