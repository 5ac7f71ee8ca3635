"""AuthZEN decisions are logged and counted as gRPC ones are, under api "authzen"; requests refused before any
decision are neither. The listener from the config file, and its public_url."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from authzenkit import POLICIES, HttpAuthzServer, serve_args
from harness import env_with_repo, free_port, wait_until

BETH = "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"


def test_decision_log_and_metrics(tmp_path):
    metrics_port = free_port()
    server = HttpAuthzServer(tmp_path, serve_args(tmp_path, "--metrics-listen", f"127.0.0.1:{metrics_port}")).start()
    c = server.client()
    try:
        base = {"subject": {"type": "identity", "id": BETH}, "resource": {"type": "route", "id": "/todos"}}
        _, headers, doc = c.evaluation({**base, "action": {"name": "GET"}})
        assert doc == {"decision": True}
        single_id = headers["x-authz-decision-id"]
        _, headers, doc = c.evaluations({**base, "evaluations": [{"action": {"name": "POST"}}, {"action": 1}]})
        batch_id = headers["x-authz-decision-id"]
        assert c.evaluation({"subject": 1})[0] == 400  # not a decision

        def metric_lines():
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
            lines = [x for x in text.splitlines() if 'api="authzen"' in x and not x.startswith("#")]
            return lines if any("authz_request_errors_total" in x for x in lines) else None

        lines = wait_until(metric_lines, 10, "authzen metrics")
        assert 'authz_decisions_total{api="authzen",decision="allow"} 1.0' in lines
        assert 'authz_decisions_total{api="authzen",decision="deny"} 2.0' in lines
        assert 'authz_request_errors_total{api="authzen",code="request_parse_error"} 1.0' in lines
    finally:
        c.close()
        server.stop()
    log = [json.loads(x) for x in (tmp_path / "data" / "decisions.jsonl").read_text().splitlines()]
    assert [(x["api"], x["action"], x["decision"]) for x in log] == [
        ("authzen", 'Action::"GET"', "allow"), ("authzen", 'Action::"POST"', "deny"), ("authzen", None, "deny")]
    assert log[0]["decision_id"] == single_id and log[1]["decision_id"] == batch_id
    assert log[0]["policies"] == ["viewers-read"] and log[2]["reason"] == "request_parse_error"


def test_config_file_and_public_url(tmp_path):
    (tmp_path / "authz.toml").write_text('[server]\nhttp_listen = "127.0.0.1:0"\n'
                                         'public_url = "https://pdp.example.com/authz/"\n')
    server = HttpAuthzServer(tmp_path, ["--config", str(tmp_path / "authz.toml"), "--listen", "127.0.0.1:0",
                                        "--policies", str(POLICIES), "--data-dir", str(tmp_path / "data")]).start()
    c = server.client()
    try:
        doc = c.request("GET", "/.well-known/authzen-configuration")[2]
        assert doc == {"policy_decision_point": "https://pdp.example.com/authz",
                       "access_evaluation_endpoint": "https://pdp.example.com/authz/access/v1/evaluation",
                       "access_evaluations_endpoint": "https://pdp.example.com/authz/access/v1/evaluations"}
    finally:
        c.close()
        assert server.stop() == 0


def test_a_bad_public_url_stops_the_server(tmp_path):
    (tmp_path / "authz.toml").write_text('[server]\nhttp_listen = "127.0.0.1:0"\npublic_url = "https://pdp/?x=1"\n')
    proc = subprocess.run([sys.executable, "-m", "authz.server", "--config", str(tmp_path / "authz.toml"),
                           "--policies", str(POLICIES), "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=60, env=env_with_repo(), cwd=tmp_path)
    assert proc.returncode == 2 and "`public_url` must be an http(s) URL with no query or fragment" in proc.stderr


def test_console_false_serves_authzen_alone(tmp_path):
    (tmp_path / "authz.toml").write_text('[server]\nhttp_listen = "127.0.0.1:0"\nconsole = false\n')
    server = HttpAuthzServer(tmp_path, ["--config", str(tmp_path / "authz.toml"), "--listen", "127.0.0.1:0",
                                        "--policies", str(POLICIES), "--data-dir", str(tmp_path / "data")]).start()
    c = server.client()
    try:
        assert c.request("GET", "/console/login")[0] == 404
        assert c.request("GET", "/.well-known/authzen-configuration")[0] == 200
    finally:
        c.close()
        assert server.stop() == 0
    (tmp_path / "authz.toml").write_text('[server]\nhttp_listen = "127.0.0.1:0"\nconsole = "no"\n')
    proc = subprocess.run([sys.executable, "-m", "authz.server", "--config", str(tmp_path / "authz.toml"),
                           "--policies", str(POLICIES), "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=60, env=env_with_repo(), cwd=tmp_path)
    assert proc.returncode == 2 and "`console` must be" in proc.stderr, proc.stderr
