"""The task-state example policies (authz/examples/policies/tasks.cedar) behind a real Envoy
(examples/envoy/envoy.yaml) and a 2-worker `authz serve`: MCP tool calls made with a task token. A payment
over 1,000 answers 403 {decision_id, reason approval_required, approval_id, queue} and suspends the task
until a reviewer approves it (authz.v1.Approvals). No egress after
personal data; egress after a secret revokes the task; deploy only after the tests ran in the task; and,
over authz.v1 (a caller sets context.cost), the spend budget; the per-agent rate across tasks."""
import json
import pathlib

import grpc
import pytest
from google.protobuf import struct_pb2
from harness import AuthzServer, EchoUpstream, Envoy, caller_metadata, issue_token

from authz._pb import approvals_pb2 as apb
from authz._pb import approvals_pb2_grpc as apbg
from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg

BUNDLED = pathlib.Path(__file__).resolve().parents[2] / "authz" / "examples" / "policies"
TOOLS = ["payments.transfer", "kb.search", "crm.read", "vault.read", "webhook.post", "ci.run_tests", "deploy"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("state-envoy")
    server = AuthzServer(tmp, ["--listen", "127.0.0.1:0", "--policies", str(BUNDLED), "--data-dir",
                               str(tmp / "data"), "--workers", "2"]).start()
    try:
        port = int(server.address.rsplit(":", 1)[1])
        with EchoUpstream() as upstream, Envoy(tmp, port, upstream.port) as envoy:
            yield server, envoy
    finally:
        server.stop()


def token(server, task, agent="ops-agent"):
    return issue_token(server.address, agent, task, ['Action::"tools/call"'],
                       [f'Tool::"{t}"' for t in TOOLS], ttl_s=600).access_token


def tool_call(envoy, tok, name, **arguments):
    doc = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    status, _, body = envoy.request("POST", "/mcp", {"content-type": "application/json",
                                                     "authorization": f"Bearer {tok}"}, json.dumps(doc).encode())
    return status, (json.loads(body) if status == 403 else None)


def _pay_and_approve(server, envoy, task):
    """A payment over 1,000 in a new task, denied approval_required and approved by a reviewer."""
    tok = token(server, task)
    assert tool_call(envoy, tok, "payments.transfer", amount=100)[0] == 200
    status, denied = tool_call(envoy, tok, "payments.transfer", amount=5000, to="acme")
    assert status == 403
    assert set(denied) == {"decision_id", "reason", "approval_id", "queue"}
    assert (denied["reason"], denied["queue"], len(denied["approval_id"])) == ("approval_required", "payments", 32)
    status, suspended = tool_call(envoy, tok, "kb.search")
    assert (status, suspended["reason"]) == (403, "task_suspended")
    with server.channel() as ch:
        approved = apbg.ApprovalsStub(ch).Approve(apb.ApprovalsApproveRequest(id=denied["approval_id"]),
                                                  metadata=caller_metadata("human-reviewer"), timeout=10).approval
    assert (approved.state, approved.task) == ("approved", task)
    return tok, denied


def test_a_payment_over_1000_suspends_the_task_until_approved(stack):
    server, envoy = stack
    tok, _ = _pay_and_approve(server, envoy, "t-envoy-pay")
    assert tool_call(envoy, tok, "kb.search")[0] == 200  # the task resumed


def test_the_approved_payment_passes_once_through_envoy(stack):
    """The retry carries another x-request-id and may come from another port: the digest leaves the
    headers and the connection out, so it is the approved call (and the call after it needs approval)."""
    server, envoy = stack
    tok, denied = _pay_and_approve(server, envoy, "t-envoy-pay-retry")
    assert tool_call(envoy, tok, "payments.transfer", amount=5000, to="acme")[0] == 200
    status, again = tool_call(envoy, tok, "payments.transfer", amount=5000, to="acme")
    assert (status, again["reason"]) == (403, "approval_required") and again["approval_id"] != denied["approval_id"]


def test_no_egress_after_pii(stack):
    server, envoy = stack
    tok = token(server, "t-envoy-pii")
    assert tool_call(envoy, tok, "webhook.post")[0] == 200
    assert tool_call(envoy, tok, "crm.read")[0] == 200
    status, denied = tool_call(envoy, tok, "webhook.post")
    assert (status, denied["reason"]) == (403, "forbidden_by_policy")
    assert tool_call(envoy, tok, "kb.search")[0] == 200  # only egress is closed, and the task lives on


def test_egress_after_a_secret_revokes_the_task(stack):
    server, envoy = stack
    tok = token(server, "t-envoy-secret")
    assert tool_call(envoy, tok, "vault.read")[0] == 200
    assert tool_call(envoy, tok, "webhook.post")[0] == 403
    status, denied = tool_call(envoy, tok, "kb.search")
    assert status == 403 and denied["reason"] in ("task_revoked", "token_revoked")
    with pytest.raises(grpc.RpcError) as err:  # no new token for the revoked task either
        token(server, "t-envoy-secret")
    assert err.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)


def test_deploy_only_after_the_tests_ran_in_this_task(stack):
    server, envoy = stack
    tok = token(server, "t-envoy-deploy")
    assert tool_call(envoy, tok, "deploy")[0] == 403
    assert tool_call(envoy, tok, "ci.run_tests")[0] == 200
    assert tool_call(envoy, tok, "deploy")[0] == 200


def test_a_spend_budget_over_authz_v1(stack):
    server, _ = stack
    tok = token(server, "t-v1-budget")

    def spend(cost=None):
        ctx = struct_pb2.Struct()
        if cost is not None:
            ctx.update({"cost": cost})
        with server.channel() as ch:
            return pbg.AuthorizerStub(ch).Check(
                pb.CheckRequest(action=pb.EntityUid(type="Action", id="tools/call"),
                                resource=pb.EntityUid(type="Tool", id="kb.search"), context=ctx),
                metadata=[("authorization", f"Bearer {tok}")], timeout=10)

    assert spend(6000).decision == pb.DECISION_ALLOW
    assert spend(4000).decision == pb.DECISION_ALLOW  # exactly the budget
    assert spend().decision == pb.DECISION_ALLOW      # no cost: within it
    r = spend(1)
    assert (r.decision, list(r.policies)) == (pb.DECISION_DENY, ["task-budget"])


def test_at_most_30_calls_a_minute_per_agent_across_its_tasks(stack):
    server, envoy = stack
    first, second = token(server, "t-rate-1", "report-bot"), token(server, "t-rate-2", "report-bot")
    # 31 calls in well under a minute; the window never under-counts (docs/tasks.md), so the 31st is refused.
    assert [tool_call(envoy, first if i % 2 else second, "kb.search")[0] for i in range(30)] == [200] * 30
    status, denied = tool_call(envoy, first, "kb.search")
    assert (status, denied["reason"]) == (403, "forbidden_by_policy")
