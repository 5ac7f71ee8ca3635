"""JSON values named in messages in Cedar/JSON terms (`null`, `a record (JSON object)`), never Python type names."""

import json


def kind(value):
    """What a JSON value (as json.loads gives it) is, with its article: `null`, `a string`, `a set (JSON array)`..."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a set (JSON array)"
    if isinstance(value, dict):
        return "a record (JSON object)"
    return "a value JSON has no form for"


def shown(value, limit=80):
    """`value` as JSON text (a TOML date or time as TOML writes it), cut to about `limit` characters."""
    if hasattr(value, "isoformat"):
        text = value.isoformat()
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError):
            text = kind(value)
    return text if len(text) <= limit else text[:limit] + "…"
