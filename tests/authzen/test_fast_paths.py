"""The single evaluation's fast paths give what the general ones give: parse_body's own decoding of a body that starts
with `{` is json.loads's (the same value, the same error message), and plain_single makes the request dict single
makes (or leaves the body to it), over generated bodies."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.server import authzen_map as amap

_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=8)


def _general(raw: bytes):
    """parse_body as it was: json.loads, then the same checks."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        return "nested too deeply"
    except (ValueError, UnicodeDecodeError) as e:
        return f"the body is not JSON: {e}"
    return doc if type(doc) is dict else "the body must be a JSON object"


def _fast(raw: bytes):
    try:
        return amap.parse_body(raw)
    except amap.PayloadError as e:
        return e.problem


def _same(raw: bytes):
    assert _fast(raw) == _general(raw), raw


BODIES = [b"{}", b"{} ", b"{}\n\t ", b"{}x", b"{} {}", b'{"a":1}]', b"{", b'{"a"', b'{"a":}', b"{'a':1}",
          b'{"a":1,}', b'{"a":NaN}', b'{"a":"\\ud800"}', b'{"a":"\xff"}', b'{"a":"\xc3\xa9"}', b"{\x00}",
          b'{"a":[1,2', b'{"a":01}', b'{"a":1e999}', b"[]", b'"x"', b" {}", b"\xef\xbb\xbf{}",
          b'{"a":"x\ny"}', b'{"a":1} \x00', b"{" * 100_000 + b"}" * 100_000,
          '{"a":"é"}'.encode("utf-16"), '{"a":1}'.encode("utf-16-le"), '{"a":1}'.encode("utf-32-le")]


def test_parse_body_is_json_loads_on_chosen_bodies():
    for raw in BODIES:
        _same(raw)


@settings(max_examples=400, deadline=None)
@given(_json, st.sampled_from(["", " ", "\n", "x", "}", ",1", "\u00e9"]))
def test_parse_body_is_json_loads(value, tail):
    text = json.dumps({"v": value}, ensure_ascii=False) + tail
    _same(text.encode("utf-8", "surrogatepass"))
    _same(text[:max(1, len(text) // 2)].encode("utf-8", "surrogatepass"))  # cut short


_entity = st.dictionaries(st.sampled_from(["type", "id", "properties", "x"]),
                          st.none() | st.text(max_size=2) | st.integers(0, 2) | st.just({}) | st.just({"k": 1}),
                          max_size=4)
_action = st.dictionaries(st.sampled_from(["name", "properties", "x"]),
                          st.none() | st.text(max_size=2) | st.integers(0, 2) | st.just({}) | st.just({"k": [1]}),
                          max_size=3)
_body = st.fixed_dictionaries({}, optional={
    "subject": st.none() | st.integers(0, 1) | _entity, "action": st.none() | st.text(max_size=1) | _action,
    "resource": st.none() | _entity, "context": st.none() | st.integers(0, 1) | st.just({}) | _json})


def _single(doc):
    try:
        e = amap.single(doc, 4)
    except amap.PayloadError as err:
        return str(err)
    return e.request if not e.overlays else ("overlays", e.request)


@settings(max_examples=1500, deadline=None)
@given(_body)
def test_plain_single_is_single(doc):
    expected = _single(doc)
    try:
        plain = amap.plain_single(doc, 4)
    except amap.PayloadError as err:
        assert str(err) == expected
        return
    if plain is not None:
        assert plain == expected
        assert plain["context"] is not doc.get("context")  # converted for this request


def test_plain_single_takes_the_common_body():
    doc = {"subject": {"type": "user", "id": ""}, "action": {"name": "read"}, "resource": {"type": "doc", "id": "d"},
           "context": {"ip": "10.0.0.1", "n": 2.0}}
    assert amap.plain_single(doc, 4) == {"principal": {"type": "user", "id": ""},
                                         "action": {"type": "Action", "id": "read"},
                                         "resource": {"type": "doc", "id": "d"}, "context": {"ip": "10.0.0.1", "n": 2}}
    assert amap.plain_single({**doc, "subject": {"type": "user", "id": "u", "properties": {"a": 1}}}, 4) is None


def _mapped(batch):
    return [str(e) if isinstance(e, amap.PayloadError) else (e, ()) if type(e) is dict else (e.request, e.overlays)
            for e in batch.items]


_item = st.none() | st.integers(0, 1) | st.fixed_dictionaries({}, optional={
    "subject": st.none() | _entity, "action": st.none() | _action, "resource": st.none() | _entity,
    "context": st.none() | st.integers(0, 1) | st.just({}) | _json})


@settings(max_examples=1000, deadline=None)
@given(_body, st.lists(_item, max_size=4))
def test_plain_items_are_mapped_as_items(doc, items):
    doc = {**doc, "evaluations": items}
    try:
        fast = _mapped(amap.batch(doc, 4, 10))
    except amap.PayloadError as err:
        fast = str(err)
    general_defaults = amap._plain_defaults
    amap._plain_defaults = lambda defaults: None  # every item through _item
    try:
        try:
            general = _mapped(amap.batch(doc, 4, 10))
        except amap.PayloadError as err:
            general = str(err)
    finally:
        amap._plain_defaults = general_defaults
    assert fast == general
