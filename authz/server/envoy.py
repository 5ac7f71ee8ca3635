"""Envoy ext_authz v3: maps a CheckRequest to Cedar requests (docs/serve.md) and renders the CheckResponse.

Fail closed: every path out of Check returns a CheckResponse; a deny is status code 7
(PERMISSION_DENIED) in the message with a 403 JSON body `{"decision_id", "reason"}`; the RPC
is never aborted (Envoy treats an aborted RPC as an error, which `failure_mode_allow` could
turn into an allow).
"""
from __future__ import annotations

import json
import logging

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from authz.server._envoy_map import Limits, MappingError, check_view, map_check_request, parse_uid  # noqa: F401
from authz.server._wire import decode_envoy_check
from authz.errors import IdentityError
from authz.server.decider import Invalid

log = logging.getLogger("authz.server")

API = "envoy"
SERVICE = "envoy.service.auth.v3.Authorization"
DECISION_HEADER = "x-authz-decision-id"
_PERMISSION_DENIED = 7
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _header(key: str, value: str):
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE)


def allow_response(decision_id: str):
    """status OK; the decision id travels upstream in x-authz-decision-id (overwriting any client copy)."""
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=0),
        ok_response=external_auth_pb2.OkHttpResponse(headers=[_header(DECISION_HEADER, decision_id)]))


def deny_response(decision_id: str, reason: str, approval_id: str = "", queue: str = ""):
    """status PERMISSION_DENIED with a 403 JSON body {decision_id, reason} (and for approval_required,
    the approval_id and queue the call waits for)."""
    doc = {"decision_id": decision_id, "reason": reason}
    if approval_id:
        doc["approval_id"], doc["queue"] = approval_id, queue
    body = json.dumps(doc, separators=(",", ":"))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=_PERMISSION_DENIED, message=reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
            headers=[_header("content-type", "application/json"), _header(DECISION_HEADER, decision_id)],
            body=body))


class _AllowTemplate:
    """The serialized allow response with the decision id spliced in: no message built per request.

    INVARIANT: a decision id of DECISION_ID_LEN ASCII characters keeps every length prefix
    of the template valid; other lengths take the protobuf path.
    """

    def __init__(self, id_len: int):
        marker = "\x01" * id_len
        data = allow_response(marker).SerializeToString()
        head, _, tail = data.partition(marker.encode())
        self.id_len, self.head, self.tail = id_len, head, tail

    def render(self, decision_id: str) -> bytes:
        if len(decision_id) != self.id_len:
            return allow_response(decision_id).SerializeToString()
        return self.head + decision_id.encode("ascii") + self.tail


class _DenyTemplates:
    """Serialized denies, one per reason, with the decision id spliced in twice (the header and the JSON
    body): building the message per request cost ~90k instructions, more than deciding.

    INVARIANT: as for _AllowTemplate, a decision id of `id_len` ASCII characters keeps every length
    prefix valid. A reason whose template does not hold the marker exactly twice, a deny naming an
    approval, another id length and reasons past the first MAX_REASONS take the protobuf path.
    """

    MAX_REASONS = 64  # reasons are the server's own codes; the bound only keeps the cache small

    def __init__(self, id_len: int):
        self.id_len = id_len
        self._marker = b"#" * id_len
        self._parts: dict = {}

    def _template(self, reason: str):
        parts = self._parts.get(reason)
        if parts is None and len(self._parts) < self.MAX_REASONS:
            data = deny_response(self._marker.decode(), reason).SerializeToString()
            pieces = data.split(self._marker)
            parts = self._parts[reason] = tuple(pieces) if len(pieces) == 3 else ()
        return parts

    def render(self, decision_id: str, reason: str, approval_id: str = "", queue: str = "") -> bytes:
        parts = self._template(reason) if not approval_id and len(decision_id) == self.id_len else None
        if not parts:
            return deny_response(decision_id, reason, approval_id, queue).SerializeToString()
        did = decision_id.encode("ascii")
        return parts[0] + did + parts[1] + did + parts[2]


# The answer when deciding itself failed: a deny (status 7, 403), never an RPC error that
# `failure_mode_allow` could turn into an allow. Built once, so the failure path allocates nothing.
_LAST_RESORT = deny_response("", "internal_error").SerializeToString()


def serialize_response(resp) -> bytes:
    """gRPC response serializer accepting pre-serialized bytes."""
    return resp if type(resp) is bytes else resp.SerializeToString()


def deny_reason(outcome) -> str:
    """The stable reason code of a deny."""
    if outcome.code:
        return outcome.code
    return "forbidden_by_policy" if outcome.policies else "no_permitting_policy"


def _headers(mapped_from) -> dict | None:
    """The HTTP headers of a CheckRequest that could not be mapped (where a trace context may be)."""
    if type(mapped_from) is tuple:
        return mapped_from[4]
    try:
        return dict(mapped_from.attributes.request.http.headers)
    except Exception:  # noqa: BLE001 - only the trace's parent is lost
        return None


class _LazyCheckRequest:
    """The CheckRequest of a request mapped from the wire: parsed only if something asks for it
    (callers.bind_envoy reads the source certificate when it must)."""

    __slots__ = ("_data", "_message")

    def __init__(self, data: bytes):
        self._data, self._message = data, None

    def __getattr__(self, name):
        if self._message is None:
            self._message = external_auth_pb2.CheckRequest.FromString(self._data)
        return getattr(self._message, name)


class EnvoyAuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """envoy.service.auth.v3.Authorization over a Decider."""

    def __init__(self, decider, limits: Limits, tokens=None, callers=None):
        self.decider = decider
        self.limits = limits
        self.tokens = tokens  # a TokenService: requests bearing a task token (tokens_api.py)
        self.callers = callers  # a Callers: bearer JWTs, trusted source.principal (callers.py)
        id_len = len(decider.next_id())
        self._allow, self._deny = _AllowTemplate(id_len), _DenyTemplates(id_len)

    def check(self, request, grpc_context=None) -> bytes:
        """Decide one CheckRequest; returns the serialized CheckResponse (never raises).

        `grpc_context` (the RPC's) tells whether the caller is a trusted enforcement point.
        """
        try:
            if type(request) is bytes:  # from the wire (add_to_server): the decoder, or protobuf's parse
                view = decode_envoy_check(request, self.limits.max_headers)
                if view is not None:
                    request, mapped_from = _LazyCheckRequest(request), view
                else:
                    try:
                        request = mapped_from = external_auth_pb2.CheckRequest.FromString(request)
                    except DecodeError:
                        outcome = self.decider.decide([Invalid("request_parse_error", "bad CheckRequest")], API)[0]
                        return self._deny.render(outcome.decision_id, outcome.code)
            else:
                mapped_from = request
            try:
                requests = map_check_request(mapped_from, self.limits)
            except MappingError as e:
                outcome = self.decider.decide([Invalid(e.code, str(e))], API, None, _headers(mapped_from))[0]
                return self._deny.render(outcome.decision_id, outcome.code)
            except Exception as e:  # e.g. a RequestError from an over-deep MCP argument
                code = getattr(e, "code", "internal_error")
                if code == "internal_error":
                    log.exception("cannot map a CheckRequest; denying")
                outcome = self.decider.decide([Invalid(code, str(e))], API, None, _headers(mapped_from))[0]
                return self._deny.render(outcome.decision_id, code)
            if self.callers is not None:
                try:
                    requests = self.callers.bind_envoy(requests, request, grpc_context)
                except IdentityError as e:
                    first = requests[0]
                    invalid = Invalid(e.code, str(e), "authorization", None, first["action"], first["resource"])
                    outcome = self.decider.decide([invalid], API, None, first["context"]["http"]["headers"])[0]
                    return self._deny.render(outcome.decision_id, e.code)
            if self.tokens is not None:
                requests = self.tokens.bind_envoy(requests)
            if len(requests) == 1 and not isinstance(requests[0], Invalid):
                o = self.decider.decide_one(requests[0], API)
                if o.allowed:
                    return self._allow.render(o.decision_id)
                return self._deny.render(o.decision_id, deny_reason(o), o.approval_id, o.queue)
            outcomes = self.decider.decide(requests, API)
            for o in outcomes:
                if not o.allowed:
                    return self._deny.render(o.decision_id, deny_reason(o), o.approval_id, o.queue)
            return self._allow.render(outcomes[0].decision_id)
        except Exception:
            log.exception("Check failed; denying")
            return _LAST_RESORT

    async def Check(self, request, context):  # noqa: N802 - gRPC method name
        return self.check(request, context)

    def add_to_server(self, server) -> None:
        """Register on `server` taking serialized CheckRequests (the wire decoder's fast path) and
        passing the pre-serialized answers through."""
        handler = grpc.unary_unary_rpc_method_handler(
            self.Check, request_deserializer=None, response_serializer=serialize_response)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Check": handler}),))
