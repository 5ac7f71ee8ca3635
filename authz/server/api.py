"""authz.v1 Authorizer: Check and BatchCheck with AuthZEN batch semantics, over a Decider."""
from __future__ import annotations

import json
import logging
import operator
import os

import grpc

from google.protobuf.message import DecodeError

from authz._pb import authz_pb2, authz_pb2_grpc
from authz.server._wire import decode_batch_check, encode_check_results
from authz.errors import IdentityError, RequestError
from authz.jsonterms import kind
from authz.server.callers import IDENTITY_REASONS
from authz.server.decider import Invalid, Outcome, decision_id
from authz.server.envoy import serialize_response
from authz.server.malformed import reason, reject
from authz.server.records import from_struct
from authz.server.taskstate import STATE_CODES
from authz.server.tokens_api import TOKEN_REASONS

log = logging.getLogger("authz.server")

API = "v1"
SERVICE = "authz.v1.Authorizer"
CHECK, BATCH_CHECK = f"/{SERVICE}/Check", f"/{SERVICE}/BatchCheck"
EXECUTE_ALL = authz_pb2.EVALUATION_SEMANTIC_EXECUTE_ALL
DENY_ON_FIRST_DENY = authz_pb2.EVALUATION_SEMANTIC_DENY_ON_FIRST_DENY
PERMIT_ON_FIRST_PERMIT = authz_pb2.EVALUATION_SEMANTIC_PERMIT_ON_FIRST_PERMIT
_SEMANTICS = {authz_pb2.EVALUATION_SEMANTIC_UNSPECIFIED, EXECUTE_ALL, DENY_ON_FIRST_DENY, PERMIT_ON_FIRST_PERMIT}
# Deny codes a response gives as its reason only: token and identity failures are not request errors.
_PLAIN_CODES = frozenset(TOKEN_REASONS | IDENTITY_REASONS | STATE_CODES)
_PRINCIPAL = operator.itemgetter("principal")  # of a decoded item
# entities_json (request entities): its size in bytes, checked before it is parsed; the engine bounds the
# count of entities and of JSON values in them (docs/request-entities.md).
MAX_ENTITIES_JSON_BYTES = 256 * 1024


def parse_entities_json(text: str, field: str = "entities_json") -> list:
    """The JSON text of a request's entities -> the list of Cedar JSON entities; RequestError naming
    `field` when it is too big or not a JSON array. The entities themselves are checked by the engine."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ENTITIES_JSON_BYTES:
        raise RequestError(f"`{field}`: {size:,} bytes, more than the {MAX_ENTITIES_JSON_BYTES:,} a request may bring")
    try:
        value = json.loads(text)
    except RecursionError:
        raise RequestError(f"`{field}`: nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError, or an integer of too many digits
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise RequestError(f"`{field}`: not JSON: {getattr(e, 'msg', str(e))}{where}") from None
    if not isinstance(value, list):
        raise RequestError(f"`{field}`: expected a JSON array of Cedar entities, not {kind(value)}")
    return value


def _uid(msg, field: str) -> dict:
    if not msg.type:
        raise RequestError(f"`{field}.type` is missing")
    return {"type": msg.type, "id": msg.id}


def to_request(principal, action, resource, context, field: str, max_depth: int,
               principal_optional: bool = False) -> dict:
    """Proto parts (None when unset) -> an engine request dict; RequestError names the bad field.

    With `principal_optional` (a task token names the principal) a missing principal is None
    in the dict.
    """
    for name, part in (("principal", principal), ("action", action), ("resource", resource)):
        if part is None and not (principal_optional and name == "principal"):
            raise RequestError(f"`{field}{name}` is missing")
    ctx = {} if context is None else from_struct(context, max_depth, field + "context")
    return {"principal": None if principal is None else _uid(principal, field + "principal"),
            "action": _uid(action, field + "action"),
            "resource": _uid(resource, field + "resource"), "context": ctx}


def _get(msg, name):
    return getattr(msg, name) if msg.HasField(name) else None


_BAD = object()  # a part that cannot be converted: to_request says why


def _uid_or_bad(msg):
    return {"type": msg.type, "id": msg.id} if msg.type else _BAD


def to_response(o, resp=None) -> authz_pb2.CheckResponse:
    """An Outcome as a CheckResponse (filled into `resp` when given, e.g. a repeated field's new element)."""
    if resp is None:
        resp = authz_pb2.CheckResponse()
    resp.decision = authz_pb2.DECISION_ALLOW if o.allowed else authz_pb2.DECISION_DENY
    resp.decision_id = o.decision_id
    resp.generation = o.generation
    if o.policies:
        resp.policies.extend(o.policies)
    for e in o.errors:
        resp.errors.add(policy=e.get("policy", ""), message=e.get("message", ""))
    if not o.allowed:
        resp.reason = o.reason
        if o.approval_id:
            resp.approval_id = o.approval_id
    if o.code and o.code not in _PLAIN_CODES:
        resp.request_error.code = o.code
        resp.request_error.field = o.field
        resp.request_error.message = o.message
    return resp


class AuthorizerServicer(authz_pb2_grpc.AuthorizerServicer):
    """authz.v1.Authorizer over a Decider."""

    def __init__(self, decider, max_batch_size: int = 1000, max_context_depth: int = 32, tokens=None, callers=None):
        self.decider = decider
        self.max_batch_size = max_batch_size
        self.max_context_depth = max_context_depth
        self.tokens = tokens  # a TokenService: requests made with a task token (tokens_api.py)
        self.callers = callers  # a Callers: who is asking, who may name a principal (callers.py)

    def _caller(self, context, token):
        """The verified caller (a Caller, or the IdentityError that denies the call); None when requests
        are taken as given (development mode) or a task token decides the principal."""
        if self.callers is None or self.callers.development_mode or token is not None:
            return None
        try:
            return self.callers.v1_caller(context)
        except IdentityError as e:
            return e

    async def _entities(self, text: str, caller, token, context):
        """The request entities of a call (`entities_json`), checked and resolved once by the engine, or
        None when it has none. Only a caller trusted with facts may bring them (they replace stored
        entities, the caller's own among them): development mode or a PEP, never a task token's bearer.
        Fails the call with INVALID_ARGUMENT / PERMISSION_DENIED naming the field."""
        if not text or isinstance(caller, IdentityError):
            return None  # an unusable identity: bind_v1 denies every request with its reason
        if token is not None or (caller is not None and not caller.is_pep):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "`entities_json`: only a PEP (or development mode) may bring request entities: they "
                                "replace stored entities, the caller's own among them")
        try:
            return self.decider.request_entities(parse_entities_json(text))
        except RequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def Check(self, request, context):  # noqa: N802 - gRPC method name
        """`request` is the serialized CheckRequest (see add_to_server): a malformed one is INVALID_ARGUMENT."""
        try:
            request = authz_pb2.CheckRequest.FromString(request)
        except DecodeError:
            await reject(context, CHECK, reason(request, authz_pb2.CheckRequest, self.max_context_depth))
        token = self.tokens.v1_token(context) if self.tokens is not None else None
        caller = self._caller(context, token)
        try:
            req = to_request(_get(request, "principal"), _get(request, "action"), _get(request, "resource"),
                             _get(request, "context"), "", self.max_context_depth,
                             principal_optional=token is not None or caller is not None)
        except RequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        entities = await self._entities(request.entities_json, caller, token, context)
        if caller is not None:
            req = self.callers.bind_v1([req], caller, self.decider, API)[0]
        if self.tokens is not None:
            req = self.tokens.bind(token, [req])[0]
        if entities is not None and type(req) is dict:
            req = {**req, "entities": entities}
        # context: the caller's traceparent metadata
        o = self.decider.decide_one(req, API, context) if type(req) is dict else \
            self.decider.decide([req], API, None, context)[0]
        if o.code == "request_parse_error":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, o.message)
        if o.code in ("index_unavailable", "internal_error", "revocation_unavailable", "keys_unavailable"):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{o.code}: {o.message} (decision {o.decision_id})")
        return to_response(o)

    async def _parse_batch(self, data: bytes, context) -> authz_pb2.BatchCheckRequest:
        """`data` parsed as a BatchCheckRequest; INVALID_ARGUMENT naming what is wrong when protobuf refuses it."""
        try:
            return authz_pb2.BatchCheckRequest.FromString(data)
        except DecodeError:
            await reject(context, BATCH_CHECK, reason(data, authz_pb2.BatchCheckRequest, self.max_context_depth))

    def _batch_requests(self, request, principal_optional: bool) -> list:
        """The engine request dicts of a BatchCheck, in item order; an item that cannot be built
        is an Invalid naming its field. The batch's defaults are converted once, and a context
        repeated across items once."""
        defaults = [_get(request, k) for k in ("principal", "action", "resource", "context")]
        depth = self.max_context_depth
        if not request.items:
            try:
                return [to_request(*defaults, "", depth, principal_optional=principal_optional)]
            except RequestError as e:
                return [Invalid("request_parse_error", str(e), "request")]
        d_principal, d_action, d_resource = (_BAD if m is None else _uid_or_bad(m) for m in defaults[:3])
        if defaults[0] is None and principal_optional:
            d_principal = None
        try:
            d_context = {} if defaults[3] is None else from_struct(defaults[3], depth, "context")
        except RequestError:
            d_context = _BAD
        cache: dict = {}
        requests = []
        add = requests.append
        for i, item in enumerate(request.items):
            has = item.HasField
            principal = _uid_or_bad(item.principal) if has("principal") else d_principal
            action = _uid_or_bad(item.action) if has("action") else d_action
            resource = _uid_or_bad(item.resource) if has("resource") else d_resource
            if has("context"):
                key = item.context.SerializeToString()
                context = cache.get(key)
                if context is None:
                    try:
                        context = cache[key] = from_struct(item.context, depth, "context")
                    except RequestError:
                        context = _BAD
            else:
                context = d_context
            if principal is _BAD or action is _BAD or resource is _BAD or context is _BAD:
                # The slow path names the offending field exactly as a single Check would.
                parts = [getattr(item, k) if has(k) else defaults[n]
                         for n, k in enumerate(("principal", "action", "resource", "context"))]
                field = f"items[{i}]."
                try:
                    add(to_request(*parts, field, depth, principal_optional=principal_optional))
                except RequestError as e:
                    add(Invalid("request_parse_error", str(e), field.rstrip(".")))
                continue
            # INVARIANT: the engine only reads requests, so items may share one converted part.
            add({"principal": principal, "action": action, "resource": resource, "context": context})
        return requests

    async def BatchCheck(self, request, context):  # noqa: N802 - gRPC method name
        """`request` is the serialized BatchCheckRequest (see add_to_server); the answer is serialized too."""
        # The wire decoder covers plain batches; anything it declines takes the protobuf path.
        fast = decode_batch_check(request, self.max_context_depth, True) if type(request) is bytes else None
        if fast is not None and fast[0] in _SEMANTICS:
            semantic, n, requests = fast
        else:
            if type(request) is bytes:
                request = await self._parse_batch(request, context)
            semantic, n, requests = request.semantic, len(request.items), None
        if n > self.max_batch_size:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"`items`: {n} items, more than the maximum batch size {self.max_batch_size}")
        if semantic not in _SEMANTICS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"`semantic`: unknown value {semantic}")
        token = self.tokens.v1_token(context) if self.tokens is not None else None
        caller = self._caller(context, token)
        principal_optional = token is not None or caller is not None
        if requests is not None and not principal_optional and None in map(_PRINCIPAL, requests):
            requests = None  # the protobuf path names the missing principal
        if requests is None:
            if type(request) is bytes:
                request = await self._parse_batch(request, context)
            requests = self._batch_requests(request, principal_optional)
        # The wire decoder declines a batch with entities: `request` is then the parsed message.
        entities = None if type(request) is bytes else \
            await self._entities(request.entities_json, caller, token, context)
        if caller is not None:
            requests = self.callers.bind_v1(requests, caller, self.decider, API)
        if self.tokens is not None:
            requests = self.tokens.bind(token, requests)
        if entities is not None:
            # INVARIANT: the engine only reads the entities, so every item may share them (decided once).
            requests = [{**r, "entities": entities} if type(r) is dict else r for r in requests]
        stop_on = {DENY_ON_FIRST_DENY: "deny", PERMIT_ON_FIRST_PERMIT: "allow"}.get(semantic)
        results, first, generation = self.decider.decide_batch(requests, API, stop_on, context)
        if any(type(d) is tuple and len(d) > 3 for d in results):  # an approval asked for: its id too
            prefix, resp = self.decider.id_prefix, authz_pb2.BatchCheckResponse()
            for k, d in enumerate(results):
                did = decision_id(prefix, first + k)
                to_response(Outcome(did, False, (), (), generation, *d) if type(d) is tuple else
                            Outcome(did, d.allowed, d.policies, d.errors, generation), resp.results.add())
            return resp.SerializeToString()
        return encode_check_results(results, self.decider.id_prefix, first, generation, _PLAIN_CODES)

    async def Status(self, request, context):  # noqa: N802 - gRPC method name
        """Which policy set this worker serves (`authz status`). No caller identity is asked, as the health
        service asks none: the answer holds no secret."""
        d = self.decider
        stale = d.policies_stale
        return authz_pb2.StatusResponse(
            generation=d.generation, policy_digest=d.policy_digest, worker_pid=os.getpid(),
            policies_stale=bool(stale is not None and stale.value), state_backend=d.state_backend,
            serving=d.engine is not None)

    def add_to_server(self, server) -> None:
        """Register on `server`. Check and BatchCheck take serialized requests, so that a malformed one is theirs
        to answer (authz.server.malformed); BatchCheck also gives a serialized answer (its wire fast path)."""
        handlers = {
            "Status": grpc.unary_unary_rpc_method_handler(
                self.Status, request_deserializer=authz_pb2.StatusRequest.FromString,
                response_serializer=authz_pb2.StatusResponse.SerializeToString),
            "Check": grpc.unary_unary_rpc_method_handler(
                self.Check, request_deserializer=None,
                response_serializer=authz_pb2.CheckResponse.SerializeToString),
            "BatchCheck": grpc.unary_unary_rpc_method_handler(
                self.BatchCheck, request_deserializer=None, response_serializer=serialize_response),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
