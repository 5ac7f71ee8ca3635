"""Traces: one OpenTelemetry span per decision, continuing the caller's W3C trace context.

Optional (`pip install 'authz[otel]'`: opentelemetry-api and -sdk) and off by default
(`[tracing] enabled = false`): the Decider then holds no tracer and a decision pays one test of
an attribute. On, each decision is a SERVER span `authz.decision` whose parent is the caller's
`traceparent` (`tracestate` too): the HTTP request's header on the Envoy path, the gRPC metadata
on authz.v1. Spans leave through the SDK's batch processor (bounded queue, a background thread),
to an OTLP/HTTP collector (JSON encoding, so no protobuf package beyond the server's own), or as
JSON lines to stderr or a file.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import urllib.error
import urllib.request

from authz.errors import AuthzError
from authz.server.decider import decision_id
from authz.server.logthrottle import ThrottledLog

log = logging.getLogger("authz.server")
_export_failures = ThrottledLog(log, 60.0)

EXPORTERS = ("otlp", "console", "file")
SPAN_NAME = "authz.decision"
_TRACE_HEADERS = ("traceparent", "tracestate")
# The deny reasons that mean the service could not decide (the span's status is ERROR).
_UNAVAILABLE = frozenset({"index_unavailable", "internal_error", "revocation_unavailable", "keys_unavailable"})


class TracingConfigError(AuthzError):
    """The `[tracing]` table is invalid (the server's ConfigError says so)."""

    code = "config_error"


@dataclasses.dataclass(frozen=True)
class TracingSettings:
    """The validated `[tracing]` table."""

    enabled: bool = False
    exporter: str = "otlp"
    endpoint: str = "http://127.0.0.1:4318/v1/traces"  # otlp: the collector's OTLP/HTTP traces URL
    file: str = ""                    # file: JSON lines appended here
    service_name: str = "authz"
    sample_ratio: float = 1.0         # of traces that no sampled caller started; a caller's choice is kept
    timeout_s: float = 3.0            # one export to the collector (at most 5: a stopping worker exports in its drain)


_KEYS = {f.name for f in dataclasses.fields(TracingSettings)}


def parse_tracing(doc) -> TracingSettings:
    """Validate the raw `[tracing]` table; with `enabled`, also that OpenTelemetry is installed."""
    if not isinstance(doc, dict):
        raise TracingConfigError("`tracing` must be a table")
    unknown = set(doc) - _KEYS
    if unknown:
        raise TracingConfigError(f"unknown option `tracing.{sorted(unknown)[0]}`")
    s = TracingSettings(**doc)
    if not isinstance(s.enabled, bool):
        raise TracingConfigError("`tracing.enabled` must be true or false")
    if s.exporter not in EXPORTERS:
        raise TracingConfigError(f"`tracing.exporter` must be one of {', '.join(EXPORTERS)}, not `{s.exporter}`")
    for name in ("endpoint", "file", "service_name"):
        if not isinstance(getattr(s, name), str):
            raise TracingConfigError(f"`tracing.{name}` must be a string")
    if not s.service_name:
        raise TracingConfigError("`tracing.service_name` must not be empty")
    if isinstance(s.sample_ratio, bool) or not isinstance(s.sample_ratio, (int, float)) or not 0 <= s.sample_ratio <= 1:
        raise TracingConfigError("`tracing.sample_ratio` must be a number from 0 to 1")
    if isinstance(s.timeout_s, bool) or not isinstance(s.timeout_s, (int, float)) or not 0 < s.timeout_s <= 5:
        raise TracingConfigError("`tracing.timeout_s` must be a number of seconds above 0, at most 5")
    if s.exporter == "otlp" and not s.endpoint.startswith(("http://", "https://")):
        raise TracingConfigError(f"`tracing.endpoint` must be an http:// or https:// URL, not `{s.endpoint}`")
    if s.exporter == "file" and not s.file:
        raise TracingConfigError("`tracing.file` is required with exporter = \"file\"")
    if s.enabled:
        try:
            import opentelemetry.sdk.trace  # noqa: F401
        except ImportError:
            raise TracingConfigError("`tracing.enabled` needs OpenTelemetry: pip install 'authz[otel]'") from None
    return s


def build_tracer(settings: TracingSettings):
    """The worker's DecisionTracer, or None when tracing is off."""
    if not settings.enabled:
        return None
    return DecisionTracer(settings)


def _uid_text(uid) -> str:
    if type(uid) is dict:
        return f'{uid.get("type")}::{json.dumps(uid.get("id"), ensure_ascii=False)}'
    return "" if uid is None else str(uid)


def _carrier(trace, request) -> dict:
    """{traceparent, tracestate} of the caller: `trace` is a dict of lower-case HTTP headers or a gRPC
    servicer context (its metadata); without one, the Envoy-mapped request's own headers."""
    if trace is None:
        ctx = request.get("context") if type(request) is dict else None
        http = ctx.get("http") if type(ctx) is dict else None
        trace = http.get("headers") if type(http) is dict else None
        if type(trace) is not dict:
            return {}
    if type(trace) is dict:
        return {k: trace[k] for k in _TRACE_HEADERS if type(trace.get(k)) is str}
    try:
        metadata = trace.invocation_metadata() or ()
    except Exception:  # noqa: BLE001 - a context without metadata: no parent
        return {}
    return {k: v for k, v in metadata if k in _TRACE_HEADERS and type(v) is str}


class DecisionTracer:
    """Records decisions as spans; one per worker (the SDK's provider, processor and exporter)."""

    def __init__(self, settings: TracingSettings, exporter=None):
        """`exporter`: any SDK SpanExporter (tests pass the in-memory one); default from `settings`."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}),
                                        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        self._provider.add_span_processor(BatchSpanProcessor(exporter or _exporter(settings)))
        self._tracer = self._provider.get_tracer("authz")
        self._propagator = TraceContextTextMapPropagator()
        self._kind = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)

    def _span(self, api, carrier, request, decision_id, allowed, reason, policies, errors, generation, start_ns, end_ns):
        attributes = {"authz.api": api, "authz.decision_id": decision_id,
                      "authz.decision": "allow" if allowed else "deny", "authz.generation": generation,
                      "authz.policies": list(policies)}
        if reason:
            attributes["authz.reason"] = reason
        if errors:
            attributes["authz.error_policies"] = [e.get("policy", "") for e in errors]
        if type(request) is dict:
            for part in ("principal", "action", "resource"):
                if request.get(part) is not None:
                    attributes[f"authz.{part}"] = _uid_text(request[part])
        else:  # an Invalid: what it names
            for part in ("principal", "action", "resource"):
                value = getattr(request, part, None)
                if value is not None:
                    attributes[f"authz.{part}"] = _uid_text(value)
        parent = self._propagator.extract(carrier) if carrier else None
        span = self._tracer.start_span(SPAN_NAME, context=parent, kind=self._kind, attributes=attributes,
                                       start_time=start_ns)
        if reason in _UNAVAILABLE:
            span.set_status(self._error)
        span.end(end_time=end_ns)

    def decision(self, api: str, trace, request, outcome, latency_ns: int) -> None:
        """One decided request (Decider.decide_one's Outcome)."""
        end_ns = time.time_ns()
        self._span(api, _carrier(trace, request), request, outcome.decision_id, outcome.allowed, outcome.reason,
                   outcome.policies, outcome.errors, outcome.generation, end_ns - latency_ns, end_ns)

    def batch(self, api: str, trace, requests, results, prefix: str, first: int, generation: int,
              latency_ns: int) -> None:
        """A decided batch (Decider.decide_batch's requests and results, the decision ids `prefix` and
        `first` make): one span each, siblings under the caller's span, sharing the batch's time."""
        end_ns = time.time_ns()
        carrier = _carrier(trace, next((r for r in requests if type(r) is dict), None))
        for i, (request, d) in enumerate(zip(requests, results)):
            if type(d) is tuple:
                allowed, reason, policies, errors = False, d[0], (), ()
            else:
                allowed, policies, errors = d.allowed, d.policies, d.errors
                reason = "" if allowed else "forbidden_by_policy" if policies else "no_permitting_policy"
            self._span(api, carrier, request, decision_id(prefix, first + i), allowed, reason, policies, errors,
                       generation, end_ns - latency_ns, end_ns)

    def shutdown(self) -> None:
        """Export what is queued (bounded by the processor's timeout) and stop."""
        self._provider.shutdown()


def _exporter(settings: TracingSettings):
    if settings.exporter == "otlp":
        return OtlpJsonExporter(settings.endpoint, settings.timeout_s)
    if settings.exporter == "console":
        return JsonLinesExporter(2)
    try:
        fd = os.open(settings.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as e:
        raise TracingConfigError(f"cannot open `tracing.file` `{settings.file}`: {e.strerror}") from None
    return JsonLinesExporter(fd, owned=True)


def _result(ok: bool):
    from opentelemetry.sdk.trace.export import SpanExportResult

    return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


class JsonLinesExporter:  # an SDK SpanExporter (export, shutdown, force_flush)
    """Each span as one JSON line (the SDK's own JSON form), one write() each: whole lines even when
    several workers append to one file."""

    def __init__(self, fd: int, owned: bool = False):
        self._fd, self._owned = fd, owned

    def export(self, spans):
        try:
            for span in spans:
                os.write(self._fd, (span.to_json(indent=None) + "\n").encode())
        except OSError as e:
            _export_failures.log(logging.ERROR, "trace export", "cannot write spans: %s", e)
            return _result(False)
        return _result(True)

    def shutdown(self):
        if self._owned:
            os.close(self._fd)
            self._owned = False

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class OtlpJsonExporter:  # an SDK SpanExporter
    """OTLP/HTTP with the JSON encoding (POST to the collector's traces URL, e.g. :4318/v1/traces).

    After a failed export, batches are dropped for RETRY_AFTER_S without trying: a collector that is
    down costs one timeout, not one per batch (also when a stopping worker flushes its queue)."""

    RETRY_AFTER_S = 5.0

    def __init__(self, endpoint: str, timeout_s: float):
        self.endpoint, self.timeout_s = endpoint, timeout_s
        self._retry_at = 0.0

    def export(self, spans):
        if time.monotonic() < self._retry_at:
            return _result(False)
        ok = self._post(spans)
        if not ok:
            self._retry_at = time.monotonic() + self.RETRY_AFTER_S
        return _result(ok)

    def _post(self, spans) -> bool:
        body = json.dumps(otlp_json(spans), separators=(",", ":")).encode()
        req = urllib.request.Request(self.endpoint, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                r.read(64 * 1024)
                return True
        except (urllib.error.URLError, OSError, ValueError) as e:  # HTTPError (not 2xx) included
            _export_failures.log(logging.ERROR, "trace export", "cannot export spans to %s: %s", self.endpoint, e)
            return False

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _any_value(value) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(attrs) -> list:
    return [{"key": k, "value": _any_value(v)} for k, v in (attrs or {}).items()]


def otlp_json(spans) -> dict:
    """ExportTraceServiceRequest in OTLP's JSON encoding (ids in hex, 64-bit integers as strings)."""
    by_resource: dict = {}
    for span in spans:
        by_resource.setdefault(id(span.resource), (span.resource, []))[1].append(span)
    resource_spans = []
    for resource, group in by_resource.values():
        out = []
        for span in group:
            ctx = span.get_span_context()
            item = {"traceId": f"{ctx.trace_id:032x}", "spanId": f"{ctx.span_id:016x}", "name": span.name,
                    "kind": span.kind.value + 1,  # the API's INTERNAL = 0; OTLP's SPAN_KIND_INTERNAL = 1
                    "startTimeUnixNano": str(span.start_time), "endTimeUnixNano": str(span.end_time),
                    "attributes": _attributes(span.attributes), "flags": int(ctx.trace_flags) | 0x100}
            if span.parent is not None:
                item["parentSpanId"] = f"{span.parent.span_id:016x}"
                if span.parent.is_remote:
                    item["flags"] |= 0x200
            if ctx.trace_state:
                item["traceState"] = ctx.trace_state.to_header()
            if span.status.status_code.value:
                item["status"] = {"code": span.status.status_code.value}
            out.append(item)
        resource_spans.append({"resource": {"attributes": _attributes(resource.attributes)},
                               "scopeSpans": [{"scope": {"name": "authz"}, "spans": out}]})
    return {"resourceSpans": resource_spans}
