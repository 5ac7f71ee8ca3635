"""AuthZEN Authorization API 1.0 on the worker's HTTP listener: `POST /access/v1/evaluation`, `.../evaluations` and
`GET /.well-known/authzen-configuration`, deciding through the worker's Decider (api "authzen").

Who may ask is decided as for authz.v1 (callers.py): in development mode (loopback only) requests are
taken as given; otherwise the PEP authenticates (bearer JWT, or its mTLS client certificate), asks
for itself with subject Agent::"<its identity>", and names another subject only as a trusted PEP (or
when a policy permits it `Action::"authz::CheckAs"` on that subject); subject and resource
`properties` (entity attributes for the request) only a PEP may send. A deny is a 200 with
{"decision": false}; a malformed payload a 400, an unauthenticated one a 401, each with a JSON
{"message"}. `X-Request-ID` is echoed on every answer.
"""
from __future__ import annotations

import json

from aiohttp import hdrs, web

from authz.errors import IdentityError
from authz.server import authzen_map as amap
from authz.server.authzen_entities import with_overlays
from authz.server.decider import Invalid, decision_id
from authz.server.http import HttpPeer

API = "authzen"
PROPERTIES_NOT_ALLOWED = "properties_not_allowed"
EVALUATION_PATH = "/access/v1/evaluation"
EVALUATIONS_PATH = "/access/v1/evaluations"
CONFIGURATION_PATH = "/.well-known/authzen-configuration"
REQUEST_ID = "X-Request-ID"
DECISION_ID = "X-Authz-Decision-Id"
MAX_REQUEST_ID = 256  # characters of X-Request-ID echoed (longer ones are refused)
_JSON = "application/json"
_ALLOW = b'{"decision":true}'
_DENY = b'{"decision":false}'
# Decisions that could not be made at all: a single evaluation answers them with an HTTP error.
_UNAVAILABLE = {"index_unavailable": 503, "internal_error": 500, "state_unavailable": 503}


def _reply(body: bytes, status: int = 200, request_id: str | None = None, headers: dict | None = None):
    h = {REQUEST_ID: request_id} if request_id else {}
    if headers:
        h.update(headers)
    return web.Response(body=body, status=status, content_type=_JSON, headers=h)


def _error(status: int, message: str, request_id: str | None = None, headers: dict | None = None):
    return _reply(json.dumps({"message": message}).encode(), status, request_id, headers)


def _denied(code: str, message: str) -> dict:
    """An item decided without the policies (bad item, identity, unavailable): false with its reason."""
    return {"decision": False, "context": {"reason": code, "message": message[:512]}}


class AuthzenApi:
    """The AuthZEN endpoints over a Decider; `callers` is None or in development mode when requests are
    taken as given; `tokens` (a TokenService) refuses the context keys only task tokens set."""

    def __init__(self, decider, callers=None, tokens=None, max_body_bytes: int = 4 * 1024 * 1024,
                 max_batch_size: int = 1000, max_depth: int = 32, public_url: str = ""):
        self.decider = decider
        self.callers = callers
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes
        self.max_batch_size = max_batch_size
        self.max_depth = max_depth
        self.public_url = public_url.rstrip("/")
        self.open = callers is None or callers.development_mode
        self._length_digits = len(str(max_body_bytes))  # a Content-Length with fewer is within the bound

    def routes(self) -> list:
        return [web.post(EVALUATION_PATH, self.evaluation), web.post(EVALUATIONS_PATH, self.evaluations),
                web.get(CONFIGURATION_PATH, self.configuration)]

    # -- the pieces of every POST ---------------------------------------------------------------

    def _admit(self, request):
        """What a POST is checked for before its body is read: (request id, caller, None), or
        (request id, None, the error response)."""
        headers = request.headers
        rid = headers.get(REQUEST_ID)
        if rid is not None and len(rid) > MAX_REQUEST_ID:
            return None, None, _error(400, f"`{REQUEST_ID}` is longer than {MAX_REQUEST_ID} characters")
        caller = None
        if not self.open:
            try:
                caller = self.callers.v1_caller(HttpPeer(request))
            except IdentityError as e:
                return rid, None, _error(401, f"{e.code}: {e}", rid, {"WWW-Authenticate": "Bearer"})
            if caller.principal is None:
                return rid, None, _error(401, "unauthenticated: present a bearer token or a client certificate",
                                         rid, {"WWW-Authenticate": "Bearer"})
        # The header as every client sends it needs no parsing (request.content_type parses it).
        if headers.get(hdrs.CONTENT_TYPE) != _JSON and request.content_type != _JSON:
            return rid, None, _error(415, "the body must be JSON (Content-Type: application/json)", rid)
        length = headers.get(hdrs.CONTENT_LENGTH)  # digits only (the HTTP parser refuses others)
        if length is not None and len(length) >= self._length_digits and int(length) > self.max_body_bytes:
            return rid, None, self._too_large(rid)
        return rid, caller, None

    def _too_large(self, rid):
        return _error(413, f"the body is larger than {self.max_body_bytes} bytes", rid)

    async def _begin(self, request):
        """(request id, caller, body) of a POST, or an error response as the first member's replacement:
        returns (request_id, caller, doc, None) or (request_id, None, None, response)."""
        rid, caller, error = self._admit(request)
        if error is not None:
            return rid, None, None, error
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return rid, None, None, self._too_large(rid)
        try:
            return rid, caller, amap.parse_body(raw), None
        except amap.PayloadError as e:
            return rid, None, None, _error(400, str(e), rid)

    def _requests(self, evaluations: list, caller) -> list:
        """Evaluations (request dicts of items without properties, or the PayloadErrors of bad items: amap.Batch)
        -> what the Decider decides, in order: the caller's standing applied and the context keys only the
        server sets refused (_bind), then the subject's and resource's properties as their attributes for
        this request (authzen_entities.py), which only a PEP (or development mode) may send: they rewrite
        entities, the caller's own among them."""
        requests = self._bind([e if type(e) is dict else e.request if type(e) is amap.Evaluation else
                               Invalid("request_parse_error", str(e), e.field) for e in evaluations], caller)
        if amap.Evaluation not in map(type, evaluations):  # the common batch: none can have properties
            return requests
        for i, e in enumerate(evaluations):
            if type(e) is not amap.Evaluation or not e.overlays:
                continue
            r = requests[i]
            if type(r) is not dict:
                continue
            if caller is not None and not caller.is_pep:
                requests[i] = Invalid(PROPERTIES_NOT_ALLOWED, "only a PEP may send `properties` of the subject or "
                                      "resource: they rewrite the entity's attributes", "properties",
                                      r["principal"], r["action"], r["resource"])
            else:
                requests[i] = with_overlays(self.decider.engine, r, e.overlays)
        return requests

    def _bind(self, requests: list, caller) -> list:
        """Request dicts (or Invalid) with the caller's standing applied (callers.py), then the context keys
        only the server sets refused (tokens_api.py)."""
        if caller is not None:
            requests = self.callers.bind_v1(requests, caller, self.decider, API)
        if self.tokens is not None and any(type(r) is dict and r["context"] for r in requests):
            requests = self.tokens.bind(None, requests)  # what it checks is in contexts only
        return requests

    def _trace(self, request) -> dict | None:
        """The caller's trace context (W3C headers) when traces are on."""
        if self.decider.tracer is None:
            return None
        h = request.headers
        return {k: h[k] for k in ("traceparent", "tracestate") if k in h}

    # -- endpoints --------------------------------------------------------------------------------

    async def evaluation(self, request):
        """POST /access/v1/evaluation: {"decision": bool}; a deny made without the policies says why in `context`.

        The common body (no `properties`: amap.plain_single) is mapped straight to the engine's request,
        and its answer built at once: the steps are those of `_begin` and `_requests`, inlined."""
        rid, caller, error = self._admit(request)
        if error is not None:
            return error
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(rid)
        try:
            doc = amap.parse_body(raw)
            req = amap.plain_single(doc, self.max_depth)
            if req is None:
                req = self._requests([amap.single(doc, self.max_depth)], caller)[0]
            elif caller is not None or (req["context"] and self.tokens is not None):
                req = self._bind([req], caller)[0]
        except amap.PayloadError as err:
            return _error(400, str(err), rid)
        decider = self.decider
        trace = None if decider.tracer is None else self._trace(request)
        if type(req) is dict and "entities" not in req:
            o = decider.decide_one(req, API, trace or {})
        else:
            o = decider.decide([req], API, None, trace)[0]
        if o.code is None:
            headers = {REQUEST_ID: rid, DECISION_ID: o.decision_id, hdrs.CONTENT_TYPE: _JSON} if rid else \
                {DECISION_ID: o.decision_id, hdrs.CONTENT_TYPE: _JSON}
            return web.Response(body=_ALLOW if o.allowed else _DENY, headers=headers)
        headers = {DECISION_ID: o.decision_id}
        if o.code == "request_parse_error":
            return _error(400, o.message, rid, headers)
        status = _UNAVAILABLE.get(o.code)
        if status is not None:
            return _error(status, f"{o.code}: {o.message} (decision {o.decision_id})", rid, headers)
        return _reply(json.dumps(_denied(o.code, o.message)).encode(), 200, rid, headers)

    async def evaluations(self, request):
        """POST /access/v1/evaluations: {"evaluations": [...]} in item order, ending at the first deny or
        permit with the short-circuit semantics (a bad item counts as a deny)."""
        rid, caller, doc, error = await self._begin(request)
        if error is not None:
            return error
        try:
            b = amap.batch(doc, self.max_depth, self.max_batch_size)
        except amap.PayloadError as err:
            return _error(400, str(err), rid)
        requests = self._requests(b.items, caller)
        results, first, _generation = self.decider.decide_batch(requests, API, b.stop_on, self._trace(request))
        if tuple in map(type, results):  # some decided without the policies: their reasons
            parts = [json.dumps(_denied(d[0], d[1])).encode() if type(d) is tuple else _ALLOW if d.allowed else _DENY
                     for d in results]
        else:
            parts = [_ALLOW if d.allowed else _DENY for d in results]
        body = b'{"evaluations":[' + b",".join(parts) + b"]}"
        return _reply(body, 200, rid, {"X-Authz-Decision-Id": decision_id(self.decider.id_prefix, first)}
                      if results else None)

    async def configuration(self, request):
        """GET /.well-known/authzen-configuration: the PDP metadata, with absolute endpoint URLs."""
        rid = request.headers.get(REQUEST_ID)
        if rid is not None and len(rid) > MAX_REQUEST_ID:
            return _error(400, f"`{REQUEST_ID}` is longer than {MAX_REQUEST_ID} characters")
        base = self.public_url or f"{request.scheme}://{request.host}"
        doc = {"policy_decision_point": base, "access_evaluation_endpoint": base + EVALUATION_PATH,
               "access_evaluations_endpoint": base + EVALUATIONS_PATH}
        return _reply(json.dumps(doc).encode(), 200, rid, {"Cache-Control": "max-age=300"})


@web.middleware
async def _json_errors(request, handler):
    """aiohttp's own refusals (unknown path 404, method 405, body too large 413) as JSON messages too."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        rid = request.headers.get(REQUEST_ID)
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        return _error(e.status, e.reason.lower(), rid if rid is not None and len(rid) <= MAX_REQUEST_ID else None,
                      headers)


def build_app(api: AuthzenApi, max_body_bytes: int, extra_routes=()) -> web.Application:
    """The aiohttp Application of the HTTP listener (`extra_routes`: the bench's no-op endpoint)."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_json_errors])
    app.add_routes(api.routes())
    if extra_routes:
        app.add_routes(list(extra_routes))
    return app


def build_http_listener(cfg, decider, callers, tokens, extra_routes=()):
    """The worker's HTTP listener on `cfg.http_listen` serving AuthZEN (not started), sharing the worker's
    Decider, Callers and TokenService; TLS requiring client certificates when [identity.mtls] is set."""
    from authz.server.http import HttpListener

    api = AuthzenApi(decider, callers, tokens, cfg.max_message_bytes, cfg.max_batch_size, cfg.max_context_depth,
                     cfg.public_url)
    return HttpListener(build_app(api, cfg.max_message_bytes, extra_routes), cfg.http_listen,
                        cfg.identity_settings.mtls, cfg.drain_s)
