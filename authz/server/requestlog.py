"""What a decision log line keeps of its request's context, so that `authz replay` can decide it again: the
context as the policies saw it, as JSON, bounded, with credential headers redacted.

The line's `principal`, `action` and `resource` already name the request's uids; this adds
`"context":{...}` (the last field of the line, but for `entities`), or `"request_truncated":true` when the
context is larger than MAX_CONTEXT_CHARS as JSON or holds a value JSON cannot carry: such a line is not
replayable. A request that brings its own entities (authz.Engine's request entities) also gets
`"entities":[...]` after it (Cedar's JSON entity format), bounded by MAX_ENTITIES_CHARS in the same way.
"""
import json

MAX_CONTEXT_CHARS = 16384  # characters of a context's JSON text; beyond it the line is marked truncated
MAX_ENTITIES_CHARS = 65536  # characters of a request's own entities as JSON; likewise
# Headers of an Envoy-mapped request (context.http.headers) that carry credentials: logged as REDACTED.
REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
REDACTED = "[redacted]"
EMPTY = ',"context":{}'
TRUNCATED = ',"request_truncated":true'

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False).encode
# The last context written and its text: the items of a batch often share one context object.
# INVARIANT: a context is not changed once decided (DecisionBatch), so the same object means the same text.
_last = (None, EMPTY)


def _redacted(ctx: dict) -> dict:
    """`ctx` with its credential headers' values replaced (a copy only when there are some)."""
    http = ctx.get("http")
    if type(http) is not dict:
        return ctx
    headers = http.get("headers")
    if type(headers) is not dict or REDACTED_HEADERS.isdisjoint(headers):
        return ctx
    headers = {k: REDACTED if k in REDACTED_HEADERS else v for k, v in headers.items()}
    return {**ctx, "http": {**http, "headers": headers}}


def context_part(ctx) -> str:
    """`,"context":<JSON>` for a request's context (None or {} is `{}`), or `,"request_truncated":true`."""
    global _last
    if not ctx:
        return EMPTY
    last = _last
    if ctx is last[0]:
        return last[1]
    try:
        text = _encode(_redacted(ctx)) if type(ctx) is dict else None
    except (TypeError, ValueError, RecursionError):
        text = None
    part = TRUNCATED if text is None or len(text) > MAX_CONTEXT_CHARS else ',"context":' + text
    _last = (ctx, part)
    return part


def entities_part(entities) -> str:
    """`,"entities":<JSON>` for a request's own entities (a list of Cedar JSON entities, or what
    Engine.request_entities made of one: its `source`), "" for none, or `,"request_truncated":true`."""
    source = getattr(entities, "source", entities)
    if not source:
        return ""
    try:
        text = _encode(source) if type(source) is list else None
    except (TypeError, ValueError, RecursionError):
        text = None
    return TRUNCATED if text is None or len(text) > MAX_ENTITIES_CHARS else ',"entities":' + text
