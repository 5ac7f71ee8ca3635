"""End to end behind a real Envoy (examples/envoy/envoy.yaml): routes, a header condition, MCP tool calls, fail closed."""
import json

import pytest

from harness import AuthzServer, EchoUpstream, Envoy


def _mcp(method, params=None, id_=1):
    doc = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        doc["params"] = params
    return doc


def _post_json(envoy, path, doc, headers=None):
    h = {"content-type": "application/json", **(headers or {})}
    return envoy.request("POST", path, h, json.dumps(doc).encode())


@pytest.fixture
def stack(tmp_path, policies_dir):
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies_dir),
                                    "--data-dir", str(tmp_path / "data")]).start()
    try:
        port = int(server.address.rsplit(":", 1)[1])
        with EchoUpstream() as upstream, Envoy(tmp_path, port, upstream.port) as envoy:
            yield server, envoy
    finally:
        server.stop()


def test_envoy_routes_headers_mcp_and_fail_closed(stack):
    server, envoy = stack

    # An allowed route reaches the upstream, which sees the decision id.
    status, _, body = envoy.request("GET", "/public/doc?x=1")
    assert status == 200
    upstream_view = json.loads(body)
    assert upstream_view["path"] == "/public/doc?x=1"
    allowed_id = upstream_view["headers"]["x-authz-decision-id"]
    assert allowed_id

    # A client can't plant its own decision id upstream.
    status, _, body = envoy.request("GET", "/public/doc", {"x-authz-decision-id": "forged"})
    assert status == 200 and json.loads(body)["headers"]["x-authz-decision-id"] != "forged"

    # A denied route: 403 with a JSON body {decision_id, reason}.
    status, headers, body = envoy.request("GET", "/private/doc")
    assert status == 403
    assert headers["content-type"] == "application/json"
    denied = json.loads(body)
    assert set(denied) == {"decision_id", "reason"}
    assert denied["reason"] == "no_permitting_policy"
    assert headers["x-authz-decision-id"] == denied["decision_id"]

    # A header condition.
    assert envoy.request("POST", "/admin", {"x-role": "admin"}, b"")[0] == 200
    assert envoy.request("POST", "/admin", {"x-role": "guest"}, b"")[0] == 403
    assert envoy.request("POST", "/admin", {}, b"")[0] == 403

    # MCP: the handshake and one tool are allowed, another tool is denied, a forbidden tool too.
    assert _post_json(envoy, "/mcp", _mcp("initialize", {"protocolVersion": "2025-06-18"}))[0] == 200
    assert _post_json(envoy, "/mcp", _mcp("tools/list"))[0] == 200
    assert _post_json(envoy, "/mcp", _mcp("tools/call", {"name": "search", "arguments": {"query": "cedar"}}))[0] == 200
    status, _, body = _post_json(envoy, "/mcp", _mcp("tools/call", {"name": "shell", "arguments": {"cmd": "ls"}}))
    assert status == 403 and json.loads(body)["reason"] == "no_permitting_policy"
    status, _, body = _post_json(envoy, "/mcp", _mcp("tools/call", {"name": "rm"}))
    assert status == 403 and json.loads(body)["reason"] == "forbidden_by_policy"
    # Arguments reach the policies as context.mcp.arguments.
    assert _post_json(envoy, "/mcp", _mcp("tools/call", {"name": "search", "arguments": {"query": "forbidden"}}))[0] == 403
    # A JSON-RPC batch is denied when any entry is.
    ok_batch = [_mcp("tools/call", {"name": "search"}, 1), _mcp("tools/list", None, 2)]
    assert _post_json(envoy, "/mcp", ok_batch)[0] == 200
    assert _post_json(envoy, "/mcp", ok_batch + [_mcp("tools/call", {"name": "shell"}, 3)])[0] == 403
    # A body that is not JSON but claims to be is denied, never mapped as plain HTTP.
    status, _, body = envoy.request("POST", "/mcp", {"content-type": "application/json"}, b'{"jsonrpc": "2.0", "method": ')
    assert status == 403 and json.loads(body)["reason"] == "request_parse_error"

    # Per-route context_extensions override action and resource.
    assert envoy.request("GET", "/ops/restart", {"x-role": "ops"})[0] == 200
    assert envoy.request("GET", "/ops/restart", {"x-role": "dev"})[0] == 403

    # The decision log holds the allowed decision by id.
    log_path = server.tmp / "data" / "decisions.jsonl"
    server.stop()
    events = {e["decision_id"]: e for e in map(json.loads, log_path.read_text().splitlines())}
    assert events[allowed_id]["decision"] == "allow"
    assert events[allowed_id]["policies"] == ["public-get"]
    assert events[denied["decision_id"]]["resource"] == 'Route::"/private/doc"'

    # authz is gone: Envoy fails closed.
    for path in ("/public/doc", "/mcp"):
        status, _, _ = envoy.request("GET", path)
        assert status in (403, 503)
        assert status != 200
