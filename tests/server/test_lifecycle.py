"""The server process: workers sharing a port, a busy port, SIGTERM drain, metrics, the decision log, config files."""
import json
import os
import pathlib
import signal
import socket
import urllib.request

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as eag

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from harness import AuthzServer, free_port, wait_until

CALL = dict(principal=pb.EntityUid(type="Agent", id="a1"), action=pb.EntityUid(type="Action", id="call"),
            resource=pb.EntityUid(type="Tool", id="t"))


def _fresh_check(address):
    """One Check over a new TCP connection (no subchannel sharing), so the kernel picks a worker anew."""
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        return pbg.AuthorizerStub(ch).Check(pb.CheckRequest(**CALL), timeout=10)


def test_workers_share_the_port(shared_server):
    assert len(shared_server.pids) == 2
    prefixes = set()
    for _ in range(64):  # connections are spread per connection by SO_REUSEPORT hashing
        prefixes.add(_fresh_check(shared_server.address).decision_id[:12])
        if len(prefixes) == 2:
            break
    assert len(prefixes) == 2


def test_busy_port_is_a_clear_error(tmp_path, policies_dir, shared_server):
    # Another authz server (grpcio binds with SO_REUSEPORT, so this would silently share the port).
    second = AuthzServer(tmp_path, ["--listen", shared_server.address, "--policies", str(policies_dir),
                                    "--data-dir", str(tmp_path / "d2")], name="second").start(expect_ready=False)
    assert second.proc.wait(60) == 1
    assert "already in use by another server" in second.stderr()
    # Any other listener.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        third = AuthzServer(tmp_path, ["--listen", f"127.0.0.1:{s.getsockname()[1]}", "--policies", str(policies_dir),
                                       "--data-dir", str(tmp_path / "d3")], name="third").start(expect_ready=False)
        assert third.proc.wait(60) == 1
        assert "already in use" in third.stderr()
    assert shared_server.workers_alive()
    assert _fresh_check(shared_server.address).decision == pb.DECISION_ALLOW


def _metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _metric_value(text, prefix):
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_decision_log_and_sigterm_drain(tmp_path, policies_dir):
    metrics_port = free_port()
    log_path = tmp_path / "log" / "decisions.jsonl"
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies_dir), "--workers", "2",
                                    "--data-dir", str(tmp_path / "data"), "--metrics-listen", f"127.0.0.1:{metrics_port}",
                                    "--decision-log", str(log_path)]).start()
    try:
        ids = [_fresh_check(server.address).decision_id for _ in range(10)]
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthorizerStub(ch)
            denied = stub.Check(pb.CheckRequest(**{**CALL, "resource": pb.EntityUid(type="Tool", id="rm")}))
            # A batch is counted per item, in one update per outcome: 2 allows, a deny, a malformed item.
            batch = stub.BatchCheck(pb.BatchCheckRequest(
                action=CALL["action"], principal=CALL["principal"],
                items=[pb.BatchCheckItem(resource=pb.EntityUid(type="Tool", id=t)) for t in ("t", "rm", "t")]
                + [pb.BatchCheckItem(principal=pb.EntityUid(type="", id="x"), resource=CALL["resource"])]))
            assert [r.decision for r in batch.results] == [pb.DECISION_ALLOW, pb.DECISION_DENY,
                                                           pb.DECISION_ALLOW, pb.DECISION_DENY]
            # Envoy Checks (decided one at a time): 2 allows, a deny.
            envoy = eag.AuthorizationStub(ch)
            for path, code in (("/public/a", 0), ("/public/b", 0), ("/private", 7)):
                req = ea.CheckRequest()
                req.attributes.request.http.method, req.attributes.request.http.path = "GET", path
                assert envoy.Check(req).status.code == code
        text = _metrics(metrics_port)
        assert _metric_value(text, 'authz_decisions_total{api="v1",decision="allow"}') == 12
        assert _metric_value(text, 'authz_decisions_total{api="v1",decision="deny"}') == 3
        assert _metric_value(text, 'authz_request_errors_total{api="v1",code="request_parse_error"}') == 1
        assert _metric_value(text, 'authz_decision_latency_seconds_count{api="v1"}') == 15
        assert _metric_value(text, 'authz_decision_latency_seconds_bucket{api="v1",le="+Inf"}') == 15
        assert _metric_value(text, 'authz_decisions_total{api="envoy",decision="allow"}') == 2
        assert _metric_value(text, 'authz_decisions_total{api="envoy",decision="deny"}') == 1
        assert _metric_value(text, 'authz_decision_latency_seconds_count{api="envoy"}') == 3
        assert _metric_value(text, "authz_index_generation") == 1
        assert _metric_value(text, "authz_worker_generation") == 1
        assert 'authz_decision_latency_seconds_bucket{api="v1",le="0.001"}' in text
        assert _metric_value(text, "authz_reload_failures_total") == 0
    finally:
        code = server.stop()
    # SIGTERM: graceful drain, exit 0, every decision flushed to the log.
    assert code == 0
    assert not server.workers_alive()
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    by_id = {e["decision_id"]: e for e in events}
    assert set(ids) | {denied.decision_id} <= set(by_id)
    e = by_id[denied.decision_id]
    assert (e["principal"], e["action"], e["resource"]) == ('Agent::"a1"', 'Action::"call"', 'Tool::"rm"')
    assert e["decision"] == "deny" and e["policies"] == ["no-rm"] and e["errors"] == []
    assert e["generation"] == 1 and e["latency_us"] > 0 and e["time"].endswith("Z")


def _sigterm_pending(pid):
    """Whether SIGTERM waits to be delivered to process `pid` (it does while the process is stopped)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return bool(pending & (1 << (signal.SIGTERM - 1)))


def test_sigterm_lets_in_flight_rpcs_finish(tmp_path, policies_dir):
    """RPCs sent to a worker before SIGTERM reaches it are answered in full during the drain.

    The worker is stopped (SIGSTOP) while the RPCs are sent and the supervisor's SIGTERM arrives,
    so every RPC is provably unanswered when the worker gets SIGTERM; then it continues.
    """
    from google.protobuf import struct_pb2

    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies_dir), "--workers", "1",
                                    "--data-dir", str(tmp_path / "data"), "--drain", "20"]).start()
    ctx = struct_pb2.Struct()
    ctx.update({"http": {"path": "/x", "headers": {f"h{k}": "v" * 40 for k in range(40)}}})
    batch = pb.BatchCheckRequest(**CALL)
    for i in range(1000):  # distinct contexts: each item is converted, so one RPC takes a while
        item = batch.items.add(context=ctx)
        item.context.update({"i": i})
    n_rpcs = 12
    worker = server.pids[0]
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthorizerStub(ch)
            stub.Check(pb.CheckRequest(**CALL), timeout=10)  # connected and serving
            os.kill(worker, signal.SIGSTOP)
            try:
                futures = [stub.BatchCheck.future(batch, timeout=60) for _ in range(n_rpcs)]
                server.proc.send_signal(signal.SIGTERM)
                wait_until(lambda: _sigterm_pending(worker), 30, "SIGTERM pending at the stopped worker")
                assert not any(f.done() for f in futures)
            finally:
                os.kill(worker, signal.SIGCONT)
            results = []
            for f in futures:
                try:
                    results.append(len(f.result().results))
                except grpc.RpcError as e:
                    results.append(e.code())
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    assert results == [1000] * n_rpcs, results


def test_config_file_and_flag_override(tmp_path, policies_dir):
    cfg = tmp_path / "authz.toml"
    cfg.write_text(f'''
[server]
listen = "127.0.0.1:0"
workers = 2
data_dir = "state"
policies = "{policies_dir}"
decision_log = ""
max_batch_size = 3
''')
    server = AuthzServer(tmp_path, ["--config", str(cfg), "--workers", "1"]).start()
    try:
        assert len(server.pids) == 1                       # the flag won
        assert (tmp_path / "state" / "authz.lmdb").exists()  # data_dir relative to the file
        assert not (tmp_path / "state" / "decisions.jsonl").exists()
        with grpc.insecure_channel(server.address) as ch:
            with pytest.raises(grpc.RpcError) as e:
                pbg.AuthorizerStub(ch).BatchCheck(pb.BatchCheckRequest(items=[pb.BatchCheckItem()] * 4))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        assert server.stop() == 0


def test_bad_config_and_bad_policies_exit_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nlisten = "127.0.0.1:0"\nwrokers = 2\n')
    bad = AuthzServer(tmp_path, ["--config", str(cfg)], name="badcfg").start(expect_ready=False)
    assert bad.proc.wait(60) == 2 and "unknown option `server.wrokers`" in bad.stderr()
    pol = tmp_path / "broken"
    pol.mkdir()
    (pol / "p.cedar").write_text("permit(principal, action, resource) when { 1 + };")
    bad = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(pol), "--data-dir",
                                 str(tmp_path / "d")], name="badpol").start(expect_ready=False)
    assert bad.proc.wait(60) == 2 and "p.cedar:1:" in bad.stderr()


def test_a_db_with_no_index_and_no_policies_is_refused_at_start(tmp_path):
    missing = tmp_path / "missing.lmdb"
    bad = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--db", str(missing), "--data-dir", str(tmp_path / "d")],
                      name="noindex").start(expect_ready=False)
    try:
        assert bad.proc.wait(60) == 2
    finally:
        bad.stop()
    err = bad.stderr()
    assert f"no index at `{missing}`" in err and f"authz compile POLICIES --db {missing}" in err
    assert "--wait-for-index" in err and "Traceback" not in err
    assert not missing.exists()  # nothing created at the path


BUNDLED = pathlib.Path(__file__).resolve().parents[2] / "authz" / "examples" / "policies"


def test_without_arguments_serves_the_bundled_examples(tmp_path):
    # Same as `authz serve` with no arguments, on a free port.
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0"]).start()
    try:
        assert (tmp_path / "authz-data" / "authz.lmdb").exists()
        assert "DEVELOPMENT MODE" in server.stderr()
    finally:
        assert server.stop() == 0
