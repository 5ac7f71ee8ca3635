"""AuthZEN `properties` as entity attributes for one request: the stored entity's attributes overlaid key by key, its
stored parents (and tags) kept; an entity that is not stored is built from the properties alone.

The overlaid entity goes to the engine as a request entity of that request only (Cedar's JSON entity
format: request entities replace stored entities with the same uid, whole; Engine.check / check_batch
`entities`), built from the stored entity the engine reads back (Engine.entity). An engine that cannot
do both answers the request with a deny (`entity_overlay_unavailable`): properties are never dropped.
"""
from __future__ import annotations

from authz.errors import IndexUnavailableError, RequestError
from authz.server.decider import Invalid

UNAVAILABLE = "entity_overlay_unavailable"


def supports_overlays(engine) -> bool:
    """True when `engine` reads stored entities back (`entity`) and takes request entities (`request_entities`)."""
    return engine is not None and callable(getattr(engine, "entity", None)) and \
        callable(getattr(engine, "request_entities", None))


def overlaid(stored: dict | None, uid: dict, properties: dict) -> dict:
    """The Cedar JSON entity `uid` for this request: `stored` ({uid, attrs, parents, tags?} or None) with each
    property replacing the attribute of its name; new dicts and lists, `stored` is not changed."""
    if stored is None:
        return {"uid": dict(uid), "attrs": dict(properties), "parents": []}
    out = {"uid": dict(uid), "attrs": {**(stored.get("attrs") or {}), **properties},
           "parents": list(stored.get("parents") or ())}
    if stored.get("tags"):
        out["tags"] = dict(stored["tags"])
    return out


def with_overlays(engine, request: dict, overlays: tuple):
    """`request` with the entities of `overlays` (authzen_map.Entity with properties) as its own `entities`,
    or an Invalid denying it when they cannot be built."""
    def invalid(code, message):
        return Invalid(code, message, "properties", request.get("principal"), request.get("action"),
                       request.get("resource"))

    if not supports_overlays(engine):
        return invalid(UNAVAILABLE, "this server's engine cannot take per-request entity attributes (`properties`)")
    entities = {}
    try:
        for e in overlays:
            key = (e.uid["type"], e.uid["id"])
            base = entities.get(key)
            if base is None:
                base = engine.entity(e.uid)
            entities[key] = overlaid(base, e.uid, e.properties)
    except RequestError as err:  # a uid the engine refuses to read
        return invalid("request_parse_error", str(err))
    except IndexUnavailableError as err:
        return invalid("index_unavailable", str(err))
    return {**request, "entities": list(entities.values())}
