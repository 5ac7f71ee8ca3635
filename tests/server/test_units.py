"""In-process unit tests of the server modules: config, the Envoy mapping, records, the decision log, the watcher, proto sync."""
import json
import shutil
import subprocess
import sys
import time

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as ea
from google.protobuf import struct_pb2

from authz.errors import RequestError
from authz.server.config import BUNDLED_POLICIES, ConfigError, load_config, parse_hostport
from authz.server.decisionlog import DecisionLog
from authz.server.envoy import Limits, MappingError, map_check_request, parse_uid
from authz.server.records import from_json, from_struct
from harness import ROOT

# -- config --------------------------------------------------------------------------------------


def test_config_defaults_serve_the_bundled_examples():
    cfg = load_config(None, {})
    assert cfg.listen == "127.0.0.1:9191" and cfg.workers == 1
    assert cfg.policies == str(BUNDLED_POLICIES)
    assert cfg.db_path.endswith("authz-data/authz.lmdb")
    assert cfg.decision_log_path.endswith("authz-data/decisions.jsonl")
    assert cfg.development_mode


def test_config_file_then_flags(tmp_path):
    f = tmp_path / "a.toml"
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    f.write_text('[server]\nlisten = "0.0.0.0:9000"\nworkers = 3\ndb = "x.lmdb"\nreload_interval_s = 1\n'
                 '[[identity.jwt]]\nissuer = "https://idp"\naudiences = ["authz"]\njwks_file = "jwks.json"\n')
    cfg = load_config(str(f), {"workers": 2, "listen": None})
    assert (cfg.listen, cfg.workers, cfg.reload_interval_s) == ("0.0.0.0:9000", 2, 1.0)
    assert cfg.db == str(tmp_path / "x.lmdb") and cfg.policies == ""
    assert not cfg.development_mode


@pytest.mark.parametrize("text, message", [
    ('[server]\nworkers = 0\n', "`workers` must be a positive integer"),
    ('[server]\nlisten = "nope"\n', "`listen` must be HOST:PORT"),
    ('[server]\nbogus = 1\n', "unknown option `server.bogus`"),
    ('[srv]\n', "unknown table `srv`"),
    ('[server\n', "cannot parse config"),
    ('[server]\ndecision_log = 3\n', "`decision_log` must be a string"),
])
def test_config_errors(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(f), {})


def test_parse_hostport():
    assert parse_hostport("[::1]:80") == ("::1", 80)
    with pytest.raises(ConfigError):
        parse_hostport("host:99999")


# -- Envoy mapping -------------------------------------------------------------------------------


def _req(method="GET", path="/a/b?x=1&x=2&y=", headers=None, body=None, ext=None, principal=""):
    r = ea.CheckRequest()
    a = r.attributes
    a.source.principal = principal
    a.source.address.socket_address.address = "10.0.0.1"
    a.source.address.socket_address.port_value = 5555
    a.destination.address.socket_address.address = "127.0.0.1"
    h = a.request.http
    h.method, h.path, h.host, h.scheme = method, path, "svc", "http"
    for k, v in {"content-type": "application/json", **(headers or {})}.items():
        h.headers[k] = v
    if body is not None:
        h.raw_body = body if isinstance(body, bytes) else json.dumps(body).encode()
    for k, v in (ext or {}).items():
        a.context_extensions[k] = v
    return r


def test_mapping_plain_http():
    [r] = map_check_request(_req(principal="spiffe://example.org/agent/a1"), Limits())
    assert r["principal"] == {"type": "Agent", "id": "spiffe://example.org/agent/a1"}
    assert r["action"] == {"type": "Action", "id": "GET"}
    assert r["resource"] == {"type": "Route", "id": "/a/b"}
    http = r["context"]["http"]
    assert http["query"] == {"x": "1,2", "y": ""} and http["host"] == "svc" and http["path"] == "/a/b"
    assert http["headers"]["content-type"] == "application/json"
    assert r["context"]["source"] == {"address": "10.0.0.1", "port": 5555, "principal": "spiffe://example.org/agent/a1"}


def test_mapping_anonymous_and_overrides():
    ext = {"authz.action": 'Action::"read"', "authz.resource": "Doc::\"d\\\"1\"", "team": "x"}
    [r] = map_check_request(_req(ext=ext), Limits())
    assert r["principal"] == {"type": "Anonymous", "id": "anonymous"}
    assert r["action"] == {"type": "Action", "id": "read"}
    assert r["resource"] == {"type": "Doc", "id": 'd"1'}
    assert r["context"]["extensions"]["team"] == "x"
    assert parse_uid("bare", "Route") == {"type": "Route", "id": "bare"}


def test_mapping_mcp_tools_call_and_batch():
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "search", "arguments": {"q": "x", "n": 2.0, "f": 1.5, "z": None, "deep": {"a": [1]}}}}
    [r] = map_check_request(_req("POST", "/mcp", body=call), Limits())
    assert r["action"] == {"type": "Action", "id": "tools/call"}
    assert r["resource"] == {"type": "Tool", "id": "search"}
    assert r["context"]["mcp"] == {"method": "tools/call", "name": "search", "tool": "search",
                                   "arguments": {"q": "x", "n": 2, "f": "1.5", "deep": {"a": [1]}},
                                   "param_headers": {}}
    batch = [call, {"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": "file:///x"}},
             {"jsonrpc": "2.0", "id": 9, "result": {}}]
    rs = map_check_request(_req("POST", "/mcp", body=batch), Limits())
    assert [x["action"]["id"] for x in rs] == ["tools/call", "resources/read", "POST"]
    assert rs[1]["resource"] == {"type": "Route", "id": "/mcp"}
    assert rs[1]["context"]["mcp"]["params"] == {"uri": "file:///x"}
    # A plain JSON document is not JSON-RPC.
    [r] = map_check_request(_req("POST", "/api", body=[1, 2]), Limits())
    assert r["action"]["id"] == "POST" and "mcp" not in r["context"]


@pytest.mark.parametrize("kwargs, code", [
    (dict(method="", path=""), "request_parse_error"),
    (dict(body=b"\xff{"), "request_parse_error"),
    (dict(body=b'{"method": "tools/call"'), "request_parse_error"),
    (dict(body=[{"jsonrpc": "2.0", "method": "x"}, 5]), "request_parse_error"),
    (dict(headers={f"h{i}": "v" for i in range(300)}), "request_too_large"),
    (dict(headers={"h": "v" * 70000}), "request_too_large"),
])
def test_mapping_errors(kwargs, code):
    with pytest.raises(MappingError) as e:
        map_check_request(_req(**kwargs), Limits())
    assert e.value.code == code


def test_mapping_raw_header_map():
    r = _req()
    h = r.attributes.request.http
    h.headers.clear()
    for k, v in (("X-Dup", b"a"), ("x-dup", b"b"), ("bin", b"\xff")):
        h.header_map.headers.add(key=k, raw_value=v)
    [m] = map_check_request(r, Limits())
    assert m["context"]["http"]["headers"] == {"x-dup": "a,b", "bin": "\ufffd"}


# -- records -------------------------------------------------------------------------------------


def test_from_struct_is_strict():
    s = struct_pb2.Struct()
    s.update({"a": 1, "b": [True, "x"], "c": {"d": -3}})
    assert from_struct(s, 8, "context") == {"a": 1, "b": [True, "x"], "c": {"d": -3}}
    for bad, field in (({"f": 0.5}, "context.f"), ({"n": None}, "context.n"), ({"big": 2.0 ** 64}, "context.big")):
        s = struct_pb2.Struct()
        s.update(bad)
        with pytest.raises(RequestError, match=field):
            from_struct(s, 8, "context")
    s = struct_pb2.Struct()
    s.update({"a": {"b": {"c": 1}}})
    with pytest.raises(RequestError, match="nested deeper"):
        from_struct(s, 2, "context")


def test_from_json_depth_bound():
    assert from_json({"a": [1, {"b": None}]}, 4, "x") == {"a": [1, {}]}
    with pytest.raises(RequestError):
        from_json([[[[1]]]], 2, "x")


# -- decision log --------------------------------------------------------------------------------


def test_decision_log_writes_and_drops(tmp_path):
    path = tmp_path / "d" / "log.jsonl"
    drops = []
    log = DecisionLog(str(path), max_queue=3, flush_interval_s=3600, on_drop=drops.append)
    uid = {"type": "Agent", "id": 'a"1'}
    for i in range(5):
        log.record(f"id{i}", "v1", uid, {"type": "Action", "id": "x"}, {"type": "Tool", "id": "t"}, "deny",
                   ["p"], [{"policy": "q", "message": "m"}], 1500, 7, None)
    assert log.dropped == 2 and sum(drops) == 2
    log.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["decision_id"] for x in lines] == ["id0", "id1", "id2"]
    assert lines[0]["principal"] == 'Agent::"a\\"1"' and lines[0]["latency_us"] == 1.5
    assert lines[0]["errors"] == [{"policy": "q", "message": "m"}] and lines[0]["generation"] == 7


def test_decision_log_batch_shares_fields_and_drops_past_the_bound(tmp_path):
    path = tmp_path / "log.jsonl"
    drops = []
    log = DecisionLog(str(path), max_queue=4, flush_interval_s=3600, on_drop=drops.append)
    agent, act = {"type": "Agent", "id": "a"}, {"type": "Action", "id": "call"}
    events = [(f"d{i}", agent, act, {"type": "Tool", "id": f"t{i}"}, "allow", [f"p{i}"], [], None, None)
              for i in range(3)]
    log.record_batch("v1", 2_050, 9, events)
    log.record_batch("v1", 100, 9, [("d3", agent, act, None, "deny", [], [], "request_parse_error", None),
                                    ("d4", agent, act, None, "deny", [], [], "request_parse_error", None)])
    assert log.dropped == 1 and drops == [1]  # room for one of the second batch's two
    log.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["decision_id"] for x in lines] == ["d0", "d1", "d2", "d3"]
    assert {x["time"] for x in lines[:3]} == {lines[0]["time"]} and lines[0]["latency_us"] == 2.1
    assert [x["resource"] for x in lines[:3]] == ['Tool::"t0"', 'Tool::"t1"', 'Tool::"t2"']
    assert lines[2]["policies"] == ["p2"] and lines[2]["generation"] == 9 and "reason" not in lines[2]
    assert lines[3]["resource"] is None and lines[3]["reason"] == "request_parse_error"


# -- policy watcher ------------------------------------------------------------------------------


def test_watcher_recompiles_and_keeps_last_good(tmp_path):
    from authz.errors import CompileError
    from authz.server.reload import PolicyWatcher

    calls = []

    def fake_compile(folder, db):
        text = (tmp_path / "p.cedar").read_text()
        if "bad" in text:
            raise CompileError(["p.cedar:1:1: bad"])
        calls.append(text)
        return len(calls)

    (tmp_path / "p.cedar").write_text("one")
    w = PolicyWatcher(str(tmp_path), "db", interval_s=0.01, compile_fn=fake_compile)
    assert w.poll() is False
    time.sleep(0.01)  # a distinct mtime
    (tmp_path / "p.cedar").write_text("two!")
    assert w.poll() is True and w.generation == 1
    (tmp_path / "p.cedar").write_text("bad bad")
    assert w.poll() is True and w.failures == 1 and w.generation == 1
    (tmp_path / "other.txt").write_text("ignored")
    assert w.poll() is False


def test_a_failed_reload_says_what_is_served(tmp_path, caplog):
    from authz.errors import CompileError
    from authz.server.reload import PolicyWatcher

    def failing_compile(folder, db):
        raise CompileError(["p.cedar:1:1: bad"])

    (tmp_path / "p.cedar").write_text("bad")
    for generation, served in ((None, "no generation of it served yet"), (4, "still serving generation 4")):
        caplog.clear()
        w = PolicyWatcher(str(tmp_path), "db", compile_fn=failing_compile, applied=(), generation=generation)
        with caplog.at_level("ERROR", logger="authz.reload"):
            assert w.reload() is False
        (message,) = [r.getMessage() for r in caplog.records]
        assert f"failed; {served}; retrying" in message and "None" not in message


# -- generated code ------------------------------------------------------------------------------


def test_generated_stubs_in_sync_with_proto():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def _npx():
    """npx's path. Without it the lint fails saying what to install (a skipped lint would prove nothing)."""
    path = shutil.which("npx")
    if path is None:
        pytest.fail("`buf lint` runs through npx (the @bufbuild/buf npm package), which is not on PATH: install "
                    "Node.js and npm (Debian/Ubuntu: apt-get install nodejs npm, as .ci/run does)", pytrace=False)
    return path


def test_buf_lint():
    r = subprocess.run([_npx(), "--yes", "@bufbuild/buf", "lint"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_buf_lint_without_npx_fails_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no npx
    with pytest.raises(pytest.fail.Exception, match="install Node.js and npm"):
        _npx()


class _BrokenDecider:
    """A decider whose decisions fail: the servicer must still answer with a deny, never raise."""

    def next_id(self):
        return "0" * 26

    def decide_one(self, *args):
        raise RuntimeError("injected failure")

    def decide(self, *args):
        raise RuntimeError("injected failure")


def test_decision_ids_are_the_prefix_then_at_least_ten_hex_digits():
    from authz.server.decider import decision_id

    for seq in (0, 1, 0xABCDEF, 2 ** 40 - 1, 2 ** 40, 2 ** 64 - 1):
        assert decision_id("0123456789ab", seq) == f"0123456789ab{seq:010x}"


def test_envoy_check_fails_closed_when_deciding_fails():
    from envoy.service.auth.v3 import external_auth_pb2

    from authz.server.envoy import EnvoyAuthorizationServicer, Limits

    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.path = "/x"
    answer = external_auth_pb2.CheckResponse.FromString(EnvoyAuthorizationServicer(_BrokenDecider(), Limits()).check(request))
    assert answer.status.code == 7
    assert answer.denied_response.status.code == 403


def test_decision_log_on_an_event_loop_formats_there_and_bounds_what_waits(tmp_path):
    import asyncio
    import threading

    path = tmp_path / "loop.jsonl"
    agent, act, tool = {"type": "Agent", "id": "a"}, {"type": "Action", "id": "call"}, {"type": "Tool", "id": "t"}

    async def main():
        log = DecisionLog(str(path), max_queue=100_000, flush_interval_s=0.01, loop=asyncio.get_running_loop())
        formatting_threads = set()
        real = log._format_batch

        def spy(batch):
            formatting_threads.add(threading.get_ident())
            return real(batch)

        log._format_batch = spy
        for i in range(5000):  # more than one chunk: the loop formats in steps
            log.record(f"d{i}", "v1", agent, act, tool, "allow", ["p"], [], 1000, 1, None)
        await asyncio.sleep(0.3)
        assert formatting_threads == {threading.get_ident()}  # formatted on the loop, not in a thread
        log.close()
        return log

    log = asyncio.run(main())
    lines = path.read_text().splitlines()
    assert len(lines) == 5000 and log.written == 5000 and log.dropped == 0
    assert json.loads(lines[-1])["decision_id"] == "d4999"

    async def bounded():
        log = DecisionLog(str(tmp_path / "b.jsonl"), flush_interval_s=3600, loop=asyncio.get_running_loop(),
                          max_pending_bytes=1)
        log.record("x", "v1", agent, act, tool, "allow", [], [], 1, 1, None)
        log._drain()  # nothing may wait for the writer beyond 1 byte: the line is dropped and counted
        log.close()
        return log

    log = asyncio.run(bounded())
    assert log.dropped == 1 and log.written == 0


# -- metrics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0.0, 1e-5, 3e-5, 0.003, 0.1, 0.2, 7.0, float("nan")])
def test_observe_many_records_what_observe_does(amount):
    # observe_many() writes prometheus-client's histogram internals directly; it must leave the
    # histogram exactly as `count` calls of observe() do, whatever the bucket.
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from authz.server.metrics import LATENCY_BUCKETS, observe_many

    def exposition(record):
        registry = CollectorRegistry()
        h = Histogram("h", "h", ["api"], buckets=LATENCY_BUCKETS, registry=registry)
        record(h.labels("v1"))
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    def one_by_one(child):
        for _ in range(5):
            child.observe(amount)
        child.observe(0.004)

    def many(child):
        observe_many(child, amount, 5)
        observe_many(child, 0.004, 1)

    assert exposition(many) == exposition(one_by_one)
