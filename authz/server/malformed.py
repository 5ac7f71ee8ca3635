"""Malformed request messages answered INVALID_ARGUMENT, with a throttled log line instead of a traceback.

grpcio parses a request with the method handler's `request_deserializer` before the handler
runs; when that raises, grpcio answers UNKNOWN and logs a traceback, once per request, for any
client. `add_guarded()` registers a servicer through its generated `add_*_to_server` function with
deserializers that never raise: a message protobuf refuses reaches the handler as a Malformed, and
the wrapped handler answers INVALID_ARGUMENT naming what is wrong (authz.server.pbdiagnose).
Handlers that parse their own bytes (authz.v1 Check, BatchCheck) call `reject()` the same way.
"""
from __future__ import annotations

import inspect
import logging

import grpc
from google.protobuf.message import DecodeError

from authz.server.logthrottle import ThrottledLog, printable
from authz.server.pbdiagnose import explain

log = logging.getLogger("authz.server")

LOG_INTERVAL_S = 10.0  # at most one line per method and worker in this time
DEFAULT_MAX_CONTEXT_DEPTH = 32  # how deep a Struct may nest in the guarded services' messages
_throttled = ThrottledLog(log, LOG_INTERVAL_S)


def _log(context, method: str, reason: str) -> None:
    _throttled.log(logging.WARNING, method, "%s: malformed request from %s: %s", method, context.peer(),
                   printable(reason))


async def reject(context, method: str, reason: str) -> None:
    """Answer INVALID_ARGUMENT with `reason` (and log it, throttled per method); raises grpc's AbortError."""
    _log(context, method, reason)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)


def reason(data: bytes, message_type, max_context_depth: int = DEFAULT_MAX_CONTEXT_DEPTH) -> str:
    """Why `data` is not a `message_type` (a generated message class)."""
    return explain(data, message_type.DESCRIPTOR, max_context_depth)


class Malformed:
    """A request protobuf could not parse, as a guarded deserializer hands it to the handler."""

    __slots__ = ("data", "message_type")

    def __init__(self, data: bytes, message_type):
        self.data, self.message_type = data, message_type


def _tolerant(deserializer):
    message_type = deserializer.__self__  # generated code passes the classmethod <Message>.FromString

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except DecodeError:
            return Malformed(data, message_type)

    return deserialize


async def _reject_malformed(context, method: str, request: Malformed) -> None:
    await reject(context, method, reason(request.data, request.message_type))


def _guard_unary(method: str, behavior):
    if inspect.isasyncgenfunction(behavior):
        async def guarded(request, context):
            if type(request) is Malformed:
                await _reject_malformed(context, method, request)
            async for response in behavior(request, context):
                yield response
    elif inspect.iscoroutinefunction(behavior):
        async def guarded(request, context):
            if type(request) is Malformed:
                await _reject_malformed(context, method, request)
            return await behavior(request, context)
    else:  # a plain function (e.g. an unimplemented method of a generated base class): runs in a thread
        def guarded(request, context):
            if type(request) is Malformed:
                why = reason(request.data, request.message_type)
                _log(context, method, why)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)
            return behavior(request, context)
    return guarded


def _guard_stream(method: str, behavior):
    if not (inspect.isasyncgenfunction(behavior) or inspect.iscoroutinefunction(behavior)):
        raise TypeError(f"{method}: a streaming request handler must be async to be guarded")

    async def checked(requests, context):
        async for request in requests:
            if type(request) is Malformed:
                await _reject_malformed(context, method, request)
            yield request

    if inspect.isasyncgenfunction(behavior):
        async def guarded(requests, context):
            async for response in behavior(checked(requests, context), context):
                yield response
    else:
        async def guarded(requests, context):
            return await behavior(checked(requests, context), context)
    return guarded


def guard_handler(method: str, handler):
    """`handler` (a grpc.RpcMethodHandler) with a deserializer that never raises and a behaviour that answers a
    Malformed request INVALID_ARGUMENT; a handler taking raw bytes (no deserializer) is returned as it is."""
    if handler.request_deserializer is None:
        return handler
    kind = ("stream" if handler.request_streaming else "unary") + "_" + (
        "stream" if handler.response_streaming else "unary")
    behavior = getattr(handler, kind)
    guarded = (_guard_stream if handler.request_streaming else _guard_unary)(method, behavior)
    return handler._replace(request_deserializer=_tolerant(handler.request_deserializer), **{kind: guarded})


class _Registration:
    """What generated `add_*_to_server(servicer, server)` code is given instead of the server.

    INVARIANT (grpcio >= 1.62 generated code): it calls add_generic_rpc_handlers with a generic handler
    and then add_registered_method_handlers with the same method handlers. The generic one is dropped
    and the guarded method handlers are registered both ways, as the generated code would.
    """

    def __init__(self, server):
        self._server = server
        self.registered = 0

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        pass  # the same handlers come through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        guarded = {name: guard_handler(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        self._server.add_registered_method_handlers(service, guarded)
        self.registered += 1


def add_guarded(add_to_server, servicer, server) -> None:
    """`add_to_server(servicer, server)` (a generated `add_*Servicer_to_server`) with guarded handlers."""
    registration = _Registration(server)
    add_to_server(servicer, registration)
    if not registration.registered:
        raise RuntimeError(f"{add_to_server.__name__} registered no method handlers by name; cannot guard them")
