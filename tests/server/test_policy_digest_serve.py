"""The policy set's content digest on a real server (2 workers): every decision-log line carries it (v1
Check, BatchCheck, Envoy Check), the authz_policy_set_info metric names it per worker, and `authz status`
shows every worker move to the new digest after a hot reload (docs/scale-out.md, "Watching a rollout")."""
import json
import re
import subprocess
import sys
import urllib.request

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as eag

import authz
from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from harness import POLICIES, AuthzServer, env_with_repo, free_port, wait_until

CALL = dict(principal=pb.EntityUid(type="Agent", id="a1"), action=pb.EntityUid(type="Action", id="call"),
            resource=pb.EntityUid(type="Tool", id="t"))
CHANGED = POLICIES + '\n@id("added")\nforbid(principal, action, resource == Tool::"never");\n'


def _digest_of(folder, db):
    """The digest the compiler gives `folder` (another index than the server's: the same content, the same digest)."""
    authz.compile([str(folder)], db=str(db))
    with authz.Engine(str(db)) as engine:
        return engine.policy_digest


def _status(address, samples=8):
    out = subprocess.run([sys.executable, "-m", "authz", "status", "--server", address, "--json",
                          "--samples", str(samples)], capture_output=True, text=True, timeout=120, env=env_with_repo())
    assert out.returncode in (0, 1), out.stderr
    answer = json.loads(out.stdout)
    assert answer["converged"] == (out.returncode == 0)
    return answer


def _decide_every_way(address):
    """A v1 Check, a BatchCheck of two and two Envoy Checks, each over a fresh connection (any worker)."""
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        stub = pbg.AuthorizerStub(ch)
        stub.Check(pb.CheckRequest(**CALL), timeout=10)
        stub.BatchCheck(pb.BatchCheckRequest(items=[pb.BatchCheckItem(**CALL)] * 2), timeout=10)
        envoy = eag.AuthorizationStub(ch)
        for path in ("/public/a", "/private"):
            req = ea.CheckRequest()
            req.attributes.request.http.method, req.attributes.request.http.path = "GET", path
            envoy.Check(req, timeout=10)
    return 5


def _log_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _metric_lines(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return [line for line in r.read().decode().splitlines() if line.startswith("authz_policy_set_info{")]


def _policy_sets(port):
    """{(pid, digest, generation): value} of the authz_policy_set_info series."""
    series = {}
    for line in _metric_lines(port):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        series[(int(labels["pid"]), labels["digest"], int(labels["generation"]))] = float(line.rsplit(" ", 1)[1])
    return series


def test_digest_in_log_metrics_and_status_through_a_hot_reload(tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policies.cedar").write_text(POLICIES)
    first = _digest_of(policies, tmp_path / "expected1")
    metrics_port = free_port()
    log_path = tmp_path / "log" / "decisions.jsonl"
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies), "--workers", "2",
                                    "--data-dir", str(tmp_path / "data"), "--reload-interval", "0.05",
                                    "--metrics-listen", f"127.0.0.1:{metrics_port}",
                                    "--decision-log", str(log_path)]).start()
    try:
        seen = {}  # pid -> (generation, digest) of the workers `authz status` reached

        def every_worker_serves(digest):
            for w in _status(server.address)["workers"]:
                seen[w["worker_pid"]] = (w["generation"], w["policy_digest"])
                assert w["serving"] and w["state_backend"] == "lmdb"
            return set(seen) == set(server.pids) and {d for _, d in seen.values()} == {digest}

        wait_until(lambda: every_worker_serves(first), 60, "both workers reported by authz status", 0.1)
        assert {g for g, _ in seen.values()} == {1}

        decided = sum(_decide_every_way(server.address) for _ in range(4))
        lines = wait_until(lambda: (lambda x: x if len(x) >= decided else None)(_log_lines(log_path)), 30,
                           "decision log lines")
        assert {(x["generation"], x["policy_digest"]) for x in lines} == {(1, first[:16])}
        assert {x["api"] for x in lines} == {"v1", "envoy"}
        wait_until(lambda: {k: v for k, v in _policy_sets(metrics_port).items() if v} ==
                   {(pid, first[:16], 1): 1.0 for pid in server.pids}, 30, "authz_policy_set_info of generation 1")

        # A rollout: the folder changes; every worker moves to the new digest.
        (policies / "policies.cedar").write_text(CHANGED)
        second = _digest_of(policies, tmp_path / "expected2")
        assert second != first
        seen.clear()
        wait_until(lambda: every_worker_serves(second), 60, "every worker on the new digest", 0.1)
        assert {g for g, _ in seen.values()} == {2}
        assert _status(server.address, samples=4)["converged"]

        before = len(_log_lines(log_path))
        decided = sum(_decide_every_way(server.address) for _ in range(4))
        lines = wait_until(lambda: (lambda x: x if len(x) >= before + decided else None)(_log_lines(log_path)), 30,
                           "decision log lines after the reload")
        assert {(x["generation"], x["policy_digest"]) for x in lines[before:]} == {(2, second[:16])}
        # The old series drop to 0; the new one is 1 on each worker.
        wait_until(lambda: _policy_sets(metrics_port) == {**{(pid, first[:16], 1): 0.0 for pid in server.pids},
                                                          **{(pid, second[:16], 2): 1.0 for pid in server.pids}},
                   30, "authz_policy_set_info of generation 2")
    finally:
        server.stop()


def test_status_cannot_reach(tmp_path):
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "authz", "status", "--server", f"127.0.0.1:{port}", "--timeout", "1"],
                         capture_output=True, text=True, timeout=60, env=env_with_repo())
    assert out.returncode == 2 and "cannot reach" in out.stderr
