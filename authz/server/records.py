"""Converts JSON values and protobuf Structs to Cedar context values, bounded in depth."""
from __future__ import annotations

import math

from authz.errors import RequestError
from authz.jsonterms import shown

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def from_json(value, max_depth: int, field: str, depth: int = 0):
    """A JSON value (from json.loads) as a Cedar value for an Envoy request's context.

    Lenient, because the body is the client's: null members are dropped, an integral
    number becomes a Long, any other number becomes its decimal string. Raises
    RequestError beyond `max_depth` levels of nesting.
    """
    if depth > max_depth:
        raise RequestError(f"`{field}` is nested deeper than {max_depth} levels")
    if isinstance(value, str) or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if isinstance(value, float):
        if value.is_integer() and _INT64_MIN <= value <= _INT64_MAX:
            return int(value)
        return repr(value)
    if isinstance(value, dict):
        return {k: from_json(v, max_depth, field, depth + 1) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [from_json(v, max_depth, field, depth + 1) for v in value if v is not None]
    return None


def from_struct(struct, max_depth: int, field: str) -> dict:
    """A google.protobuf.Struct as a Cedar record, strictly: raises RequestError naming the field
    for null, a non-integral or out-of-range number, or nesting beyond `max_depth`."""
    return {k: _from_value(v, max_depth, f"{field}.{k}", 1) for k, v in struct.fields.items()}


def _from_value(v, max_depth: int, field: str, depth: int):
    if depth > max_depth:
        raise RequestError(f"`{field}` is nested deeper than {max_depth} levels")
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "number_value":
        n = v.number_value
        if not n.is_integer() or not _INT64_MIN <= n <= _INT64_MAX:
            raise RequestError(f"`{field}`: {_number_problem(n)}")
        return int(n)
    if kind == "struct_value":
        return {k: _from_value(x, max_depth, f"{field}.{k}", depth + 1) for k, x in v.struct_value.fields.items()}
    if kind == "list_value":
        return [_from_value(x, max_depth, f"{field}[{i}]", depth + 1) for i, x in enumerate(v.list_value.values)]
    raise RequestError(f"`{field}`: null is not a Cedar value")


def _number_problem(n: float) -> str:
    if not math.isfinite(n):
        return f"{shown(n)} is not a Cedar value"
    if not n.is_integer():
        return f"{shown(n)} is a number with a fraction; Cedar numbers are 64-bit integers"
    return f"{int(n)} is outside Cedar's 64-bit integer range"
