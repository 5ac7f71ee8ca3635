"""AuthZEN decisions are logged and counted as gRPC ones are, under api "authzen"; requests refused before any
decision are neither."""
from __future__ import annotations

import json
import urllib.request

from conftest import HttpAuthzServer, serve_args
from harness import free_port, wait_until

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
