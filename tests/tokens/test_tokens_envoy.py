"""End to end behind the real Envoy with task tokens: the token's agent is the principal, its scope a ceiling, revocation at once."""
import json
import time

import grpc
import pytest
from tokenkit import claims_for, forge
from harness import POLICIES, AuthzServer, EchoUpstream, Envoy, caller_metadata, issue_token

from authz._pb import tokens_pb2 as tpb
from authz._pb import tokens_pb2_grpc as tpbg

TOKEN_POLICIES = r'''
@id("issue")
permit(principal, action == Action::"authz::IssueToken", resource is Task);

@id("delegate")
permit(principal, action == Action::"authz::DelegateToken", resource is Task);

@id("admin-revokes")
permit(principal == Agent::"admin", action == Action::"authz::Revoke", resource);

@id("delegated-private")
permit(principal, action == Action::"GET", resource)
when { context has delegation && context.delegation.root == Agent::"a1" && context.http.path like "/private/*" };
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("envoy-tok")
    pol = tmp / "policies"
    pol.mkdir()
    (pol / "policies.cedar").write_text(POLICIES)
    (pol / "tokens.cedar").write_text(TOKEN_POLICIES)
    server = AuthzServer(tmp, ["--listen", "127.0.0.1:0", "--policies", str(pol),
                               "--data-dir", str(tmp / "data")]).start()
    server.data_dir = str(tmp / "data")
    try:
        port = int(server.address.rsplit(":", 1)[1])
        with EchoUpstream() as upstream, Envoy(tmp, port, upstream.port) as envoy:
            yield server, envoy
    finally:
        server.stop()


def bearer(token):
    return {"authorization": f"Bearer {token}"}


def reason(resp):
    status, headers, body = resp
    assert status == 403, (status, body)
    doc = json.loads(body)
    assert doc["decision_id"] == headers["x-authz-decision-id"]
    return doc["reason"]


def mcp_call(envoy, tool, token):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
    return envoy.request("POST", "/mcp", {"content-type": "application/json", **bearer(token)}, body.encode())


def test_routes_with_a_task_token(stack):
    server, envoy = stack
    token = issue_token(server.address, "a1", "task-e", ['Action::"GET"'], ['Route::"/public/*"']).access_token
    status, _, body = envoy.request("GET", "/public/doc", bearer(token))
    assert status == 200 and json.loads(body)["headers"]["x-authz-decision-id"]
    # public-get would allow /public/* for anyone, but not outside the token's scope.
    assert envoy.request("GET", "/other/doc")[0] == 403
    assert reason(envoy.request("GET", "/other/doc", bearer(token))) == "out_of_scope"
    assert reason(envoy.request("POST", "/public/doc", bearer(token), b"")) == "out_of_scope"


def test_mcp_tool_calls_with_a_task_token(stack):
    server, envoy = stack
    token = issue_token(server.address, "a1", "task-m", ['Action::"tools/call"'], ['Tool::"search"']).access_token
    assert mcp_call(envoy, "search", token)[0] == 200
    assert reason(mcp_call(envoy, "delete_everything", token)) == "out_of_scope"


def test_delegated_token_and_revocation(stack):
    server, envoy = stack
    root = issue_token(server.address, "a1", "task-d", ['Action::"GET"'], ['Route::"/private/*"'], 120).access_token
    with grpc.insecure_channel(server.address) as ch:
        stub = tpbg.TokensStub(ch)
        child = stub.Exchange(tpb.ExchangeRequest(subject_token=root), metadata=caller_metadata("helper"),
                              timeout=10).token.access_token
        assert reason(envoy.request("GET", "/private/report")) == "no_permitting_policy"
        assert envoy.request("GET", "/private/report", bearer(child))[0] == 200  # the chain's root decides
        stub.Revoke(tpb.RevokeRequest(task="task-d"), metadata=caller_metadata("admin"), timeout=10)
    assert reason(envoy.request("GET", "/private/report", bearer(child))) == "task_revoked"
    assert reason(envoy.request("GET", "/private/report", bearer(root))) == "task_revoked"


def test_expired_and_tampered_tokens(stack):
    server, envoy = stack
    now = int(time.time())
    expired = forge(server.data_dir, claims_for(now - 600, exp=now - 300, scope={
        "actions": ['Action::"GET"'], "resources": ['Route::"/public/*"']}))
    assert reason(envoy.request("GET", "/public/doc", bearer(expired))) == "token_expired"
    good = issue_token(server.address, "a1", "task-t", ['Action::"GET"'], ['Route::"/public/*"']).access_token
    head, payload, sig = good.split(".")
    bad = f"{head}.{payload}.{sig[:4]}{'A' if sig[4] != 'A' else 'B'}{sig[5:]}"
    assert reason(envoy.request("GET", "/public/doc", bearer(bad))) == "token_bad_signature"
