# cython: language_level=3
"""The default Envoy mapping (docs/serve.md, Envoy mapping), compiled: what one ext_authz v3 CheckRequest asks,
as Cedar request dicts.

`map_check_request` takes a CheckRequest message, or the parts of one that
`authz.server._wire.decode_envoy_check` reads from the wire (the tuple `check_view` makes of a message),
and returns one request, or one per JSON-RPC batch entry. It runs once per Envoy Check, on the
worker's event loop: as Python it cost ~3.3 µs a request (~25k instructions; ~11.6k now), so it is
typed C here.

MCP streamable HTTP (2026-07-28) mirrors the JSON-RPC method and name into `Mcp-Method` and
`Mcp-Name` headers and chosen tool arguments into `Mcp-Param-*` headers: with them a request is
mapped without its body, and when the body is there too, both must say the same
(`mcp_header_mismatch` otherwise). A request without `Mcp-Method` pays one dict lookup for this.
"""
import base64
import binascii
import json
import re
import urllib.parse

from authz.server.records import from_json

ANONYMOUS = {"type": "Anonymous", "id": "anonymous"}
# Bounds on the MCP headers taken into `context.mcp` (every header also counts toward
# Limits.max_headers / max_header_bytes, and stays in `context.http.headers` as sent).
MAX_MCP_PARAMS = 32           # Mcp-Param-* headers in one request
MAX_MCP_VALUE_BYTES = 4096    # one Mcp-Method, Mcp-Name or Mcp-Param-* value as sent
MCP_PARAM_PREFIX = "mcp-param-"
BASE64_OPEN, BASE64_CLOSE = "=?base64?", "?="  # an encoded Mcp-Name / Mcp-Param-* value
# The methods whose name the body carries, and where (SEP-2243: params.name, or params.uri).
_NAME_KEYS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_UID = re.compile(r'^([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)::"((?:[^"\\]|\\.)*)"$')


cdef class Limits:
    """Bounds on what one CheckRequest may carry."""

    cdef public Py_ssize_t max_headers, max_header_bytes, max_batch_size, max_context_depth

    def __init__(self, max_headers=256, max_header_bytes=64 * 1024, max_batch_size=1000, max_context_depth=32):
        self.max_headers, self.max_header_bytes = max_headers, max_header_bytes
        self.max_batch_size, self.max_context_depth = max_batch_size, max_context_depth


class MappingError(Exception):
    """The CheckRequest cannot be mapped; `code` is the deny reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def parse_uid(str text, str default_type):
    """`Type::"id"` as {type, id}; a bare string is an id of `default_type`."""
    m = _UID.match(text)
    if m is None:
        return {"type": default_type, "id": text}
    raw = m.group(2)
    return {"type": m.group(1), "id": json.loads(f'"{raw}"') if "\\" in raw else raw}


cdef dict parse_query(str query):
    cdef dict out = {}
    cdef str part, k, v
    for part in query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        if "%" in part or "+" in part:
            k = urllib.parse.unquote_plus(k)
            v = urllib.parse.unquote_plus(v)
        out[k] = f"{out[k]},{v}" if k in out else v
    return out


cdef inline bint is_rpc(object item):
    return type(item) is dict and type((<dict>item).get("method")) is str


cdef object body_document(bytes body, dict headers):
    """The parsed JSON body, or None when there is no JSON body; MappingError when it is JSON but broken."""
    if not body:
        return None
    cdef str ctype = headers.get("content-type", "")
    if body.lstrip()[:1] not in (b"{", b"[") and "json" not in ctype.lower():
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        partial = headers.get("x-envoy-auth-partial-body") == "true"
        raise MappingError("request_parse_error",
                           "request body is truncated" if partial else "request body is not valid JSON") from None


cdef bint is_plain_header_value(str value):
    """Visible ASCII, space and tab only: what an MCP header value may carry unencoded."""
    cdef Py_UCS4 c
    if not value.isascii():
        return False
    for c in value:
        if (c < 0x20 and c != 0x09) or c == 0x7F:
            return False
    return True


cdef str mcp_header_value(str header, str value, bint decode):
    """A bounded MCP header value as the client meant it: with `decode`, the `=?base64?…?=` form is
    the UTF-8 text it encodes. MappingError when it is too long, not plain or not decodable."""
    if len(value) > MAX_MCP_VALUE_BYTES:
        raise MappingError("request_too_large", f"`{header}` is longer than {MAX_MCP_VALUE_BYTES} bytes")
    if not is_plain_header_value(value):
        raise MappingError("request_parse_error",
                           f"`{header}` holds characters other than visible ASCII, space and tab "
                           "(such a value is sent as =?base64?...?=)")
    if decode and value.startswith(BASE64_OPEN) and value.endswith(BASE64_CLOSE) \
            and len(value) >= len(BASE64_OPEN) + len(BASE64_CLOSE):
        try:
            return base64.b64decode(value[len(BASE64_OPEN):len(value) - len(BASE64_CLOSE)],
                                    validate=True).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise MappingError("request_parse_error", f"`{header}` is not base64 of UTF-8 text") from None
    return value


cdef dict mcp_param_headers(dict headers):
    """`Mcp-Param-<name>: value` headers as {name (lower-case): decoded value}; bounded in count."""
    cdef dict out = {}
    cdef str key, name
    for key in headers:
        if not key.startswith(MCP_PARAM_PREFIX):
            continue
        name = key[len(MCP_PARAM_PREFIX):]
        if not name:
            raise MappingError("request_parse_error", "an `Mcp-Param-` header without a name")
        if len(out) == MAX_MCP_PARAMS:
            raise MappingError("request_too_large", f"more than {MAX_MCP_PARAMS} Mcp-Param-* headers")
        out[name] = mcp_header_value(key, headers[key], True)
    return out


cdef object body_name(str method, object params):
    """The name an MCP request body carries (params.name, or params.uri for resources/read), or None."""
    if type(params) is not dict:
        return None
    key = _NAME_KEYS.get(method)
    if key is not None:
        name = (<dict>params).get(key)
    else:
        name = (<dict>params).get("name")
        if type(name) is not str:
            name = (<dict>params).get("uri")
    return name if type(name) is str else None


cdef class McpHeaders:
    """The request's Mcp-Method, Mcp-Name (decoded) and Mcp-Param-* headers; None where absent."""

    cdef readonly object method, name
    cdef readonly dict params

    def __init__(self, dict headers):
        method, name = headers.get("mcp-method"), headers.get("mcp-name")
        self.method = None if method is None else mcp_header_value("Mcp-Method", method, False)
        self.name = None if name is None else mcp_header_value("Mcp-Name", name, True)
        self.params = mcp_param_headers(headers)

    cdef check_body(self, str rpc_method, object params):
        """MappingError mcp_header_mismatch unless the headers present say what the body says."""
        if self.method is not None and self.method != rpc_method:
            raise MappingError("mcp_header_mismatch",
                               f"the Mcp-Method header `{self.method}` is not the body's method `{rpc_method}`")
        if self.name is not None:
            name = body_name(rpc_method, params)
            if name != self.name:
                raise MappingError("mcp_header_mismatch", f"the Mcp-Name header `{self.name}` is not the body's "
                                   + (f"`{name}`" if name is not None else "(it names nothing)"))


cdef dict peer(object p):
    sa = p.address.socket_address
    return {"address": sa.address, "port": sa.port_value, "principal": p.principal}


def check_view(req, Limits limits):
    """What the mapping reads from a CheckRequest message: (method, path, host, scheme, headers,
    number of headers, header bytes, body, source, destination, context_extensions), as
    authz.server._wire.decode_envoy_check reads it from the wire. Headers beyond the limit are not read."""
    attrs = req.attributes
    http = attrs.request.http
    cdef dict headers
    if http.header_map.headers:  # encode_raw_headers: true
        raw = http.header_map.headers
        n = len(raw)
        headers = {}
        for h in raw if n <= limits.max_headers else ():
            value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
            key = h.key.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
    else:
        n = len(http.headers)
        headers = dict(http.headers) if n <= limits.max_headers else {}
    # The encoded size of everything but the body bounds the header bytes (computed in C, no Python loop).
    header_bytes = http.ByteSize() - len(http.raw_body) - len(http.body)
    body = http.raw_body or (http.body.encode("utf-8") if http.body else b"")
    return (http.method, http.path, http.host, http.scheme, headers, n, header_bytes, body, peer(attrs.source),
            peer(attrs.destination), dict(attrs.context_extensions))


def map_check_request(req, Limits limits):
    """Map a CheckRequest (a message, or check_view's tuple of its parts) to Cedar request dicts
    (one, or one per JSON-RPC batch entry). Raises MappingError."""
    cdef str method, target, host, scheme, path, query, principal_text, rpc_method
    cdef dict headers, source, destination, extensions, context, principal, action, resource, mcp, a, r
    cdef bytes body
    cdef tuple view = req if type(req) is tuple else check_view(req, limits)
    method, target, host, scheme, headers, n_headers, header_bytes, body, source, destination, extensions = view
    if n_headers > limits.max_headers:
        raise MappingError("request_too_large", f"more than {limits.max_headers} headers")
    if header_bytes > limits.max_header_bytes:
        raise MappingError("request_too_large", f"headers larger than {limits.max_header_bytes} bytes")
    method = method or headers.get(":method", "")
    target = target or headers.get(":path", "")
    if not method:
        raise MappingError("request_parse_error", "the request has no HTTP method")
    if not target:
        raise MappingError("request_parse_error", "the request has no path")
    path, _, query = target.partition("?")
    path = path.partition("#")[0]
    query = query.partition("#")[0]
    principal_text = source["principal"]
    principal = {"type": "Agent", "id": principal_text} if principal_text else ANONYMOUS
    action = {"type": "Action", "id": method}
    resource = {"type": "Route", "id": path}
    context = {
        "http": {"method": method, "path": path, "host": host or headers.get(":authority", ""),
                 "scheme": scheme, "query": parse_query(query) if query else {}, "headers": headers},
        "source": source,
        "destination": destination,
        "extensions": extensions,
    }
    action_override = extensions.get("authz.action")
    resource_override = extensions.get("authz.resource")
    if action_override:
        action = parse_uid(action_override, "Action")
    if resource_override:
        resource = parse_uid(resource_override, "Route")

    doc = body_document(body, headers)
    cdef list entries
    cdef McpHeaders mcp_headers = None
    if is_rpc(doc):
        entries = [doc]
    elif type(doc) is list and any(is_rpc(x) for x in <list>doc):
        if len(<list>doc) > limits.max_batch_size:
            raise MappingError("request_too_large", f"JSON-RPC batch of more than {limits.max_batch_size} entries")
        entries = <list>doc
    elif "mcp-method" not in headers:
        return [{"principal": principal, "action": action, "resource": resource, "context": context}]
    else:
        mcp_headers = McpHeaders(headers)
        if doc is not None:
            raise MappingError("mcp_header_mismatch",
                               f"the Mcp-Method header `{mcp_headers.method}` comes with a JSON body that is not "
                               "a JSON-RPC request")
        return [header_request(mcp_headers, principal, action, resource, context, action_override,
                               resource_override)]

    mcp_headers = McpHeaders(headers)
    cdef list requests = []
    cdef Py_ssize_t n
    for n, entry in enumerate(entries):
        if type(entry) is not dict:
            raise MappingError("request_parse_error", f"JSON-RPC batch entry {n} is not an object")
        if not is_rpc(entry):  # a JSON-RPC response travelling client -> server: plain HTTP mapping
            if mcp_headers.method is not None:
                raise MappingError("mcp_header_mismatch", f"the Mcp-Method header `{mcp_headers.method}` comes "
                                   f"with JSON-RPC batch entry {n}, which is not a request")
            requests.append({"principal": principal, "action": action, "resource": resource, "context": context})
            continue
        rpc_method = (<dict>entry)["method"]
        params = (<dict>entry).get("params")
        mcp_headers.check_body(rpc_method, params)
        mcp = {"method": rpc_method}
        name = body_name(rpc_method, params)
        if name is not None:
            mcp["name"] = name
        a = {"type": "Action", "id": rpc_method}
        r = resource
        if rpc_method == "tools/call":
            if type(name) is not str or not name:
                raise MappingError("request_parse_error", "tools/call without a string `params.name`")
            r = {"type": "Tool", "id": name}
            mcp["tool"] = name
            args = (<dict>params).get("arguments")
            mcp["arguments"] = from_json(args, limits.max_context_depth, "mcp.arguments") \
                if type(args) is dict else {}
        elif type(params) is dict:
            mcp["params"] = from_json(params, limits.max_context_depth, "mcp.params")
        mcp["param_headers"] = mcp_headers.params
        if action_override:
            a = action
        if resource_override:
            r = resource
        requests.append({"principal": principal, "action": a, "resource": r, "context": {**context, "mcp": mcp}})
    return requests


cdef dict header_request(McpHeaders h, dict principal, dict action, dict resource, dict context,
                         object action_override, object resource_override):
    """The Cedar request of an MCP request mapped from its headers alone (no JSON-RPC body)."""
    if not h.method:
        raise MappingError("request_parse_error", "an empty Mcp-Method header")
    cdef dict mcp = {"method": h.method}
    if h.name is not None:
        mcp["name"] = h.name
    a = {"type": "Action", "id": h.method}
    r = resource
    if h.method == "tools/call":
        if not h.name:
            raise MappingError("request_parse_error", "Mcp-Method tools/call without an Mcp-Name header")
        r = {"type": "Tool", "id": h.name}
        mcp["tool"] = h.name
    mcp["param_headers"] = h.params
    context["mcp"] = mcp  # INVARIANT: `context` was made for this request alone
    return {"principal": principal, "action": action if action_override else a,
            "resource": resource if resource_override else r, "context": context}
