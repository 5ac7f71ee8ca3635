"""AuthZEN 1.0 payloads as Cedar requests: JSON parsing under bounds, defaults of an `evaluations` batch, the mapping.

subject {type, id, properties} -> principal <type>::"<id>"; resource likewise; action {name,
properties} -> Action::"<name>" with its properties as `context.action`; context -> the Cedar
context. Values: string, boolean, integer (Long), array (set), object (record); a member whose
value is null is left out (the spec's "absent"). Subject and resource properties are the
entity's attributes for this request only, overlaid on the stored entity (`overlays`).
Nothing here keeps state between requests: every request dict and entity is built new (a uid may be the
request body's own `{type, id}` object, as parsed for this request).
"""
from __future__ import annotations

import json

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
SEMANTICS = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
STOP_ON = {"execute_all": None, "deny_on_first_deny": "deny", "permit_on_first_permit": "allow"}
_PARTS = ("subject", "action", "resource", "context")


class PayloadError(Exception):
    """A payload (or one item of a batch) that is not a valid AuthZEN request; `field` names where."""

    def __init__(self, field: str, message: str):
        super().__init__(f"`{field}`: {message}" if field else message)
        self.field, self.problem = field, message
        self.top_level = False  # a top-level default's error: items that use it report it as it is

    def within(self, prefix: str) -> "PayloadError":
        """The same error, its field inside `prefix` (an item of a batch)."""
        return PayloadError(f"{prefix}.{self.field}" if self.field else prefix, self.problem)


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object (PayloadError otherwise). Nesting beyond Python's recursion
    limit is refused by the parser itself; `to_cedar` bounds the depth of every value that is used.

    A body that starts with `{` is UTF-8 to json.loads (its encoding detection) and is parsed as
    json.loads parses it, the same errors included, without its Python layers (a third of its cost
    for a single evaluation's body); anything else goes through json.loads itself."""
    try:
        if raw[:1] == b"{" and raw[1:2] != b"\x00":
            doc = _decode(raw.decode("utf-8", "surrogatepass"))
        else:
            doc = json.loads(raw)
    except RecursionError:
        raise PayloadError("", "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise PayloadError("", f"the body is not JSON: {e}") from None
    if type(doc) is not dict:
        raise PayloadError("", "the body must be a JSON object")
    return doc


_scan = json.JSONDecoder().scan_once  # json.loads's own decoder's (the C scanner when there is one)
_trailing = json.decoder.WHITESPACE.match


def _decode(text: str):
    """json.JSONDecoder.decode(text) for a text that starts with a non-blank: the same value, the same errors."""
    try:
        doc, end = _scan(text, 0)
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", text, err.value) from None
    if end != len(text):
        end = _trailing(text, end).end()
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    return doc


def to_cedar(value, max_depth: int, field: str, depth: int = 0):
    """A JSON value as a Cedar value (see the module docstring); PayloadError for a value Cedar has
    no form for (a fraction, an integer beyond 64 bits, null in an array) or nesting beyond `max_depth`.
    Cedar's JSON escapes (`__entity`, `__extn`) are read by the engine as Cedar reads them."""
    t = type(value)
    if t is str or t is bool:
        return value
    if t is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise PayloadError(field, f"{value} is outside Cedar's 64-bit integer range")
        return value
    if t is float:
        if value.is_integer() and _INT64_MIN <= value <= _INT64_MAX:
            return int(value)
        raise PayloadError(field, f"{value!r} is not an integer; Cedar numbers are 64-bit integers")
    if depth >= max_depth:
        raise PayloadError(field, f"nested deeper than {max_depth} levels")
    if t is dict:
        return {k: to_cedar(v, max_depth, f"{field}.{k}", depth + 1) for k, v in value.items() if v is not None}
    if t is list:
        out = []
        for i, v in enumerate(value):
            if v is None:
                raise PayloadError(f"{field}[{i}]", "null is not a Cedar value")
            out.append(to_cedar(v, max_depth, f"{field}[{i}]", depth + 1))
        return out
    raise PayloadError(field, "null is not a Cedar value")


def _record(value, max_depth: int, field: str) -> dict:
    if type(value) is not dict:
        raise PayloadError(field, "must be an object")
    return to_cedar(value, max_depth, field)


def _string(obj: dict, key: str, field: str, nonempty: bool = True) -> str:
    value = obj.get(key)
    if value is None:
        raise PayloadError(f"{field}.{key}", "is missing")
    if type(value) is not str:
        raise PayloadError(f"{field}.{key}", "must be a string")
    if nonempty and not value:
        raise PayloadError(f"{field}.{key}", "must not be empty")
    return value


class Entity:
    """A subject or resource of one evaluation: its uid and, when it has `properties`, their Cedar record."""

    __slots__ = ("uid", "properties")

    def __init__(self, uid: dict, properties: dict | None):
        self.uid, self.properties = uid, properties


def entity(value, max_depth: int, field: str) -> Entity:
    """A subject or resource object -> Entity (PayloadError naming the field)."""
    if type(value) is dict:
        t, i, props = value.get("type"), value.get("id"), value.get("properties")
        if type(t) is str and t and type(i) is str and props is None:  # the common case, checked at once
            return Entity({"type": t, "id": i}, None)
    else:
        raise PayloadError(field, "must be an object with `type` and `id`")
    uid = {"type": _string(value, "type", field), "id": _string(value, "id", field, nonempty=False)}
    if props is None:
        return Entity(uid, None)
    record = _record(props, max_depth, f"{field}.properties")
    return Entity(uid, record or None)


def action(value, max_depth: int, field: str) -> tuple:
    """An action object -> (Action uid, properties record or None)."""
    if type(value) is not dict:
        raise PayloadError(field, "must be an object with `name`")
    name, props = value.get("name"), value.get("properties")
    if type(name) is not str or not name:
        name = _string(value, "name", field)
    return {"type": "Action", "id": name}, (None if props is None else _record(props, max_depth, f"{field}.properties"))


class Evaluation:
    """One evaluation as the engine takes it (`request`) with the entities whose attributes it sets."""

    __slots__ = ("request", "overlays")

    def __init__(self, request: dict, overlays: tuple):
        self.request, self.overlays = request, overlays


def evaluation(subject: Entity, act: tuple, resource: Entity, context: dict | None, field: str) -> Evaluation:
    """The parts of one evaluation (converted) -> Evaluation; a fresh request dict and context every time."""
    ctx = dict(context) if context else {}
    action_uid, action_props = act
    if action_props is not None:
        if "action" in ctx:
            raise PayloadError(f"{field}context.action", "is set from `action.properties`; send one or the other")
        ctx["action"] = action_props
    if subject.properties is None and resource.properties is None:
        overlays = ()
    else:
        overlays = tuple(e for e in (subject, resource) if e.properties is not None)
    return Evaluation({"principal": subject.uid, "action": action_uid, "resource": resource.uid, "context": ctx},
                      overlays)


class Batch:
    """A parsed `evaluations` body: per item an Evaluation, the request dict of an item without properties
    (an Evaluation's `request` with no overlays, the common item), or the PayloadError that makes it a
    deny; and the semantic's stop ("allow", "deny" or None)."""

    __slots__ = ("items", "stop_on")

    def __init__(self, items: list, stop_on):
        self.items, self.stop_on = items, stop_on


def single(doc: dict, max_depth: int) -> Evaluation:
    """The body of `POST /access/v1/evaluation` -> Evaluation (PayloadError: a 400)."""
    for part in ("subject", "action", "resource"):
        if doc.get(part) is None:
            raise PayloadError(part, "is missing")
    context = doc.get("context")
    return evaluation(entity(doc["subject"], max_depth, "subject"), action(doc["action"], max_depth, "action"),
                      entity(doc["resource"], max_depth, "resource"),
                      None if context is None else _record(context, max_depth, "context"), "")


def plain_single(doc: dict, max_depth: int) -> dict | None:
    """The body of `POST /access/v1/evaluation` as the engine's request dict when it is the common one: subject,
    action and resource objects with a non-empty `type` and `name`, a string `id`, and no `properties`
    (`context` may be there). None for any other body, which `single` maps (or says what is wrong with):
    the same request `single` would make, without its Entity and Evaluation objects."""
    s, a, r = doc.get("subject"), doc.get("action"), doc.get("resource")
    if type(s) is not dict or type(a) is not dict or type(r) is not dict:
        return None
    st, si, rt, ri, name = s.get("type"), s.get("id"), r.get("type"), r.get("id"), a.get("name")
    if not (type(st) is str and st and type(si) is str and type(rt) is str and rt and type(ri) is str
            and type(name) is str and name):
        return None
    # An object of two members, `type` and `id`, is the uid itself (this request's own, as parsed).
    if len(s) != 2:
        if s.get("properties") is not None:
            return None
        s = {"type": st, "id": si}
    if len(r) != 2:
        if r.get("properties") is not None:
            return None
        r = {"type": rt, "id": ri}
    if len(a) != 1 and a.get("properties") is not None:
        return None
    context = doc.get("context")
    return {"principal": s, "action": {"type": "Action", "id": name}, "resource": r,
            "context": {} if context is None else _record(context, max_depth, "context")}


def batch(doc: dict, max_depth: int, max_items: int) -> Batch:
    """The body of `POST /access/v1/evaluations` -> Batch. PayloadError (a 400) for what concerns the whole
    payload (options, the array, its length); an item that is wrong is that item's error only.

    Without `evaluations` (or with an empty array) the body is one evaluation, answered as a batch of one.
    A top-level subject, action, resource or context is the default of every item that lacks it; an item's
    own replaces the default whole (no merging of properties).
    """
    options = doc.get("options")
    semantic = "execute_all"
    if options is not None:
        if type(options) is not dict:
            raise PayloadError("options", "must be an object")
        semantic = options.get("evaluations_semantic", "execute_all")
        if semantic not in SEMANTICS:
            raise PayloadError("options.evaluations_semantic",
                               f"must be one of {', '.join(SEMANTICS)}, not {json.dumps(semantic)[:100]}")
    items = doc.get("evaluations")
    if items is None or items == []:
        return Batch([single(doc, max_depth)], STOP_ON[semantic])
    if type(items) is not list:
        raise PayloadError("evaluations", "must be an array")
    if len(items) > max_items:
        raise PayloadError("evaluations", f"{len(items)} items, more than the maximum batch size {max_items}")
    # Defaults are converted once (a bad one is the error of each item that uses it).
    defaults: dict = {}
    for part, convert in (("subject", entity), ("action", action), ("resource", entity), ("context", _record)):
        value = doc.get(part)
        if value is None:
            continue
        try:
            defaults[part] = convert(value, max_depth, part)
        except PayloadError as e:
            e.top_level = True
            defaults[part] = e
    out = []
    add = out.append
    plain = _plain_defaults(defaults)
    actions: dict = {}  # name -> its uid, one per name in the batch (the items share it, as they share defaults)
    for i, item in enumerate(items):
        try:
            request = None if plain is None else _plain_item(item, plain, max_depth, actions)
            add(_item(item, defaults, max_depth) if request is None else request)
        except PayloadError as e:
            add(e if e.top_level else e.within(f"evaluations[{i}]"))
    return Batch(out, STOP_ON[semantic])


def _plain_defaults(defaults: dict):
    """(principal, action, resource, context) of the top-level defaults (None for one not given) when none of them
    has properties or is bad, for _plain_item; None otherwise."""
    subject, act, resource, context = (defaults.get(part) for part in _PARTS)
    for e in (subject, resource):
        if e is not None and (type(e) is PayloadError or e.properties is not None):
            return None
    if act is not None and (type(act) is PayloadError or act[1] is not None):
        return None
    if type(context) is PayloadError:
        return None
    return (None if subject is None else subject.uid, None if act is None else act[0],
            None if resource is None else resource.uid, context)


def _plain_uid(value):
    """A subject or resource object with a non-empty `type`, a string `id` and no `properties` -> its uid (the
    object itself when it has no other member), else None."""
    if type(value) is not dict:
        return None
    t, i = value.get("type"), value.get("id")
    if type(t) is not str or not t or type(i) is not str:
        return None
    if len(value) == 2:
        return value
    return {"type": t, "id": i} if value.get("properties") is None else None


def _plain_item(item, defaults: tuple, max_depth: int, actions: dict) -> dict | None:
    """_item(item, ...).request for an item whose parts (its own, or the defaults from _plain_defaults) have no
    properties, without its Entity objects; None for any other item (which _item maps or says what is wrong
    with). A PayloadError only for the item's own context, as _item raises it. `actions`: the action uids
    made so far for this batch, by name."""
    if type(item) is not dict:
        return None
    get = item.get
    v = get("subject")
    principal = defaults[0] if v is None else _plain_uid(v)
    v = get("action")
    if v is None:
        action_uid = defaults[1]
    elif type(v) is dict and v.get("properties") is None and type(v.get("name")) is str and v["name"]:
        name = v["name"]
        action_uid = actions.get(name)
        if action_uid is None:
            action_uid = actions[name] = {"type": "Action", "id": name}
    else:
        return None
    v = get("resource")
    resource = defaults[2] if v is None else _plain_uid(v)
    if principal is None or action_uid is None or resource is None:
        return None
    v = get("context")
    if v is None:
        context = defaults[3]
        ctx = dict(context) if context else {}
    else:
        ctx = _record(v, max_depth, "context")
    return {"principal": principal, "action": action_uid, "resource": resource, "context": ctx}


def _default(defaults: dict, part: str):
    """The top-level default of a part an item lacks (PayloadError when there is none, or it is bad)."""
    default = defaults.get(part)
    if default is None:
        if part == "context":
            return None
        raise PayloadError(part, "is missing (and there is no top-level default)")
    if type(default) is PayloadError:
        raise default
    return default


def _item(item, defaults: dict, max_depth: int) -> Evaluation:
    """One item of `evaluations` with the defaults (PayloadError: its field within the item)."""
    if type(item) is not dict:
        raise PayloadError("", "must be an object")
    get = item.get
    v = get("subject")
    subject = _default(defaults, "subject") if v is None else entity(v, max_depth, "subject")
    v = get("action")
    act = _default(defaults, "action") if v is None else action(v, max_depth, "action")
    v = get("resource")
    resource = _default(defaults, "resource") if v is None else entity(v, max_depth, "resource")
    v = get("context")
    context = (defaults.get("context") and _default(defaults, "context")) if v is None else \
        _record(v, max_depth, "context")
    return evaluation(subject, act, resource, context, "")
