"""Traces ([tracing], the `otel` extra): a span per decision continuing the caller's W3C trace context,
in process with the SDK's in-memory exporter, and from real server processes (a JSON-lines file,
and OTLP/HTTP to a local collector) behind a real Envoy and over authz.v1."""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import authz
from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from authz.server.config import ConfigError, load_config
from authz.server.decider import Decider
from authz.server.envoy import EnvoyAuthorizationServicer, Limits
from authz.server.tracing import DecisionTracer, OtlpJsonExporter, TracingSettings, build_tracer
from envoy.service.auth.v3 import external_auth_pb2 as ea
from harness import POLICIES, AuthzServer, EchoUpstream, Envoy, wait_until
from test_mcp_headers import envoy_request

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def uid(t, i):
    return pb.EntityUid(type=t, id=i)


# -- configuration ----------------------------------------------------------------------------------


def test_tracing_is_off_by_default_and_costs_no_tracer(tmp_path):
    cfg = load_config(None, {})
    assert cfg.tracing_settings == TracingSettings() and not cfg.tracing_settings.enabled
    assert build_tracer(cfg.tracing_settings) is None
    assert Decider(str(tmp_path / "db")).tracer is None


@pytest.mark.parametrize("table, message", [
    ('enabled = "yes"', "`tracing.enabled` must be true or false"),
    ('exporter = "jaeger"', "`tracing.exporter` must be one of otlp, console, file"),
    ('enabled = true\nexporter = "file"', "`tracing.file` is required"),
    ('endpoint = "collector:4318"', "`tracing.endpoint` must be an http:// or https:// URL"),
    ("sample_ratio = 2", "`tracing.sample_ratio` must be a number from 0 to 1"),
    ("timeout_s = 30", "`tracing.timeout_s` must be a number of seconds above 0, at most 5"),
    ("bogus = 1", "unknown option `tracing.bogus`"),
])
def test_tracing_config_errors(tmp_path, table, message):
    f = tmp_path / "authz.toml"
    f.write_text(f"[tracing]\n{table}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(str(f), {})


def test_tracing_without_the_extra_says_what_to_install(tmp_path, monkeypatch):
    f = tmp_path / "authz.toml"
    f.write_text('[tracing]\nenabled = true\nexporter = "console"\n')
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'authz\[otel\]'"):
        load_config(str(f), {})


def test_a_relative_span_file_is_relative_to_the_config(tmp_path):
    f = tmp_path / "authz.toml"
    f.write_text('[tracing]\nenabled = true\nexporter = "file"\nfile = "spans.jsonl"\n')
    assert load_config(str(f), {}).tracing_settings.file == str(tmp_path / "spans.jsonl")


# -- in process: the SDK's in-memory exporter ---------------------------------------------------------


def test_a_span_per_decision_continues_the_callers_trace(tmp_path):
    (tmp_path / "p.cedar").write_text(POLICIES)
    authz.compile([str(tmp_path / "p.cedar")], db=str(tmp_path / "db"))
    spans = InMemorySpanExporter()
    tracer = DecisionTracer(TracingSettings(enabled=True), exporter=spans)
    decider = Decider(str(tmp_path / "db"), tracer=tracer)
    assert decider.open_engine()
    servicer = EnvoyAuthorizationServicer(decider, Limits())

    def check(req):
        return ea.CheckResponse.FromString(servicer.check(req.SerializeToString()))

    allowed = check(envoy_request("GET", "/public/doc", headers={"traceparent": TRACEPARENT}))
    denied = check(envoy_request("POST", "/mcp", headers={"mcp-method": "tools/call", "mcp-name": "rm"}))
    mismatch = check(envoy_request(headers={"mcp-method": "tools/list", "traceparent": TRACEPARENT},
                                   body={"jsonrpc": "2.0", "id": 1, "method": "initialize"}))
    results, first, generation = decider.decide_batch(
        [{"principal": {"type": "Agent", "id": "a1"}, "action": {"type": "Action", "id": "call"},
          "resource": {"type": "Tool", "id": t}, "context": {}} for t in ("x", "rm")], "v1", None,
        {"traceparent": TRACEPARENT})
    tracer.shutdown()
    got = {s.attributes["authz.decision_id"]: s for s in spans.get_finished_spans()}
    assert len(got) == 5

    allow = got[allowed.ok_response.headers[0].header.value]
    assert allow.name == "authz.decision"
    assert f"{allow.context.trace_id:032x}" == TRACE_ID and f"{allow.parent.span_id:016x}" == PARENT_ID
    assert dict(allow.attributes) == {
        "authz.api": "envoy", "authz.decision_id": allow.attributes["authz.decision_id"],
        "authz.decision": "allow", "authz.generation": 1, "authz.policies": ("public-get",),
        "authz.principal": 'Anonymous::"anonymous"', "authz.action": 'Action::"GET"',
        "authz.resource": 'Route::"/public/doc"'}
    assert allow.start_time < allow.end_time

    deny = got[json.loads(denied.denied_response.body)["decision_id"]]
    assert deny.parent is None  # no traceparent: a trace of its own
    assert (deny.attributes["authz.decision"], deny.attributes["authz.reason"]) == ("deny", "forbidden_by_policy")
    assert deny.attributes["authz.policies"] == ("no-rm",)

    bad = got[json.loads(mismatch.denied_response.body)["decision_id"]]
    assert bad.attributes["authz.reason"] == "mcp_header_mismatch" and f"{bad.parent.span_id:016x}" == PARENT_ID

    batch = [s for s in got.values() if s.attributes["authz.api"] == "v1"]
    assert sorted(s.attributes["authz.decision"] for s in batch) == ["allow", "deny"]
    assert {f"{s.parent.span_id:016x}" for s in batch} == {PARENT_ID}
    assert all(s.attributes["authz.generation"] == generation for s in batch)


# -- real server processes ------------------------------------------------------------------------------


def _serve(tmp_path, tracing: str, workers: int = 1) -> AuthzServer:
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "policies.cedar").write_text(POLICIES)
    config = tmp_path / "authz.toml"
    config.write_text(f"[tracing]\nenabled = true\n{tracing}\n")
    return AuthzServer(tmp_path, ["--config", str(config), "--listen", "127.0.0.1:0", "--policies", str(pol),
                                  "--data-dir", str(tmp_path / "data"), "--workers", str(workers)]).start()


def test_a_server_writes_spans_of_envoy_and_v1_decisions(tmp_path):
    server = _serve(tmp_path, 'exporter = "file"\nfile = "spans.jsonl"', workers=2)
    try:
        port = int(server.address.rsplit(":", 1)[1])
        with EchoUpstream() as upstream, Envoy(tmp_path, port, upstream.port) as envoy:
            status, _, body = envoy.request("GET", "/public/doc", {"traceparent": TRACEPARENT})
            assert status == 200
            envoy_id = json.loads(body)["headers"]["x-authz-decision-id"]
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthorizerStub(ch)
            metadata = (("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),)
            one = stub.Check(pb.CheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"),
                                             resource=uid("Tool", "rm")), metadata=metadata, timeout=10)
            batch = stub.BatchCheck(pb.BatchCheckRequest(
                principal=uid("Agent", "a1"), action=uid("Action", "call"),
                items=[pb.BatchCheckItem(resource=uid("Tool", t)) for t in ("x", "y")]), metadata=metadata, timeout=10)
    finally:
        assert server.stop() == 0  # the workers export what is queued before they exit
    spans = {s["attributes"]["authz.decision_id"]: s for s in
             map(json.loads, (tmp_path / "spans.jsonl").read_text().splitlines())}
    e = spans[envoy_id]
    assert (e["context"]["trace_id"], e["parent_id"]) == (f"0x{TRACE_ID}", f"0x{PARENT_ID}")
    assert e["kind"] == "SpanKind.SERVER" and e["resource"]["attributes"]["service.name"] == "authz"
    assert (e["attributes"]["authz.api"], e["attributes"]["authz.decision"]) == ("envoy", "allow")
    assert e["attributes"]["authz.policies"] == ["public-get"] and e["attributes"]["authz.generation"] >= 1
    v = spans[one.decision_id]
    assert (v["context"]["trace_id"], v["parent_id"]) == (f"0x{TRACE_ID}", "0x00f067aa0ba902b7")
    assert (v["attributes"]["authz.decision"], v["attributes"]["authz.reason"]) == ("deny", "forbidden_by_policy")
    assert v["attributes"]["authz.generation"] == one.generation
    for r in batch.results:
        assert spans[r.decision_id]["parent_id"] == "0x00f067aa0ba902b7"
        assert spans[r.decision_id]["attributes"]["authz.decision"] == "allow"


class _Collector:
    """An OTLP/HTTP collector on 127.0.0.1 keeping the JSON bodies POSTed to /v1/traces."""

    def __init__(self, status: int = 200):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                data = self.rfile.read(int(self.headers["content-length"]))
                if self.path == "/v1/traces" and self.headers["content-type"] == "application/json":
                    bodies.append(json.loads(data))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list:
        return [s for b in self.bodies for rs in b["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]


def test_a_server_exports_spans_to_an_otlp_collector(tmp_path):
    with _Collector() as collector:
        server = _serve(tmp_path, f'exporter = "otlp"\nendpoint = "{collector.url}"')
        try:
            with grpc.insecure_channel(server.address) as ch:
                r = pbg.AuthorizerStub(ch).Check(
                    pb.CheckRequest(principal=uid("Agent", "a1"), action=uid("Action", "call"),
                                    resource=uid("Tool", "x")), metadata=(("traceparent", TRACEPARENT),), timeout=10)
        finally:
            assert server.stop() == 0
        [span] = wait_until(collector.spans, 10, "the span at the collector")
    assert (span["traceId"], span["parentSpanId"], span["name"], span["kind"]) == (
        TRACE_ID, PARENT_ID, "authz.decision", 2)
    attributes = {a["key"]: a["value"] for a in span["attributes"]}
    assert attributes["authz.decision_id"] == {"stringValue": r.decision_id}
    assert attributes["authz.policies"] == {"arrayValue": {"values": [{"stringValue": "agent-call"}]}}
    assert attributes["authz.generation"] == {"intValue": str(r.generation)}
    assert int(span["startTimeUnixNano"]) <= int(span["endTimeUnixNano"])


def test_a_failing_collector_costs_one_try_then_spans_are_dropped_for_a_while(tmp_path):
    (tmp_path / "p.cedar").write_text(POLICIES)
    authz.compile([str(tmp_path / "p.cedar")], db=str(tmp_path / "db"))
    spans = InMemorySpanExporter()
    tracer = DecisionTracer(TracingSettings(enabled=True), exporter=spans)
    decider = Decider(str(tmp_path / "db"), tracer=tracer)
    assert decider.open_engine()
    decider.decide([{"principal": {"type": "Agent", "id": "a1"}, "action": {"type": "Action", "id": "call"},
                     "resource": {"type": "Tool", "id": "x"}, "context": {}}], "v1")
    tracer.shutdown()
    [span] = spans.get_finished_spans()
    with _Collector(status=503) as collector:
        exporter = OtlpJsonExporter(collector.url, 5)
        assert exporter.export([span]) == SpanExportResult.FAILURE
        assert exporter.export([span]) == SpanExportResult.FAILURE  # not tried: the collector just failed
        assert len(collector.bodies) == 1
    with _Collector() as collector:
        exporter = OtlpJsonExporter(collector.url, 5)
        assert exporter.export([span]) == SpanExportResult.SUCCESS
        assert collector.spans()[0]["name"] == "authz.decision"
