"""The task-state step through a real `authz serve` with 2 workers and task tokens over authz.v1: policies
see `context.task` / `context.agent` (state before the call), a per-task limit admits exactly N under
concurrent clients on both workers, labels forbid egress after PII, a tripwire revokes the task, and an
approval suspends the task until it is approved, then allows the exact call once."""
import concurrent.futures
import time

import grpc
import pytest
from harness import AuthzServer, caller_metadata

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from authz._pb import tokens_pb2 as tpb
from authz._pb import tokens_pb2_grpc as tpbg
from google.protobuf import struct_pb2

LIMIT = 7
POLICIES = r'''
@id("issue")
permit(principal, action == Action::"authz::IssueToken", resource is Task);

@id("tools")
@labels("called")
permit(principal, action == Action::"call", resource is Tool);

@id("write-limit")
forbid(principal, action == Action::"call", resource == Tool::"db.write")
when { context has task && context.task.counts has write && context.task.counts.write >= %d };

@id("no-egress-after-pii")
@on_deny("revoke_task")
forbid(principal, action == Action::"call", resource == Tool::"webhook.post")
when { context has task && context.task.labels.contains("pii") };

@id("deploy-needs-tests")
forbid(principal, action == Action::"call", resource == Tool::"deploy")
unless { context has task && context.task.tools.contains(Tool::"ci.run_tests") };

@id("big-payments")
@approval("payments")
forbid(principal, action == Action::"call", resource == Tool::"pay")
when { context.amount > 1000 };

@id("budget")
forbid(principal, action == Action::"call", resource is Tool)
when { context has task && context.task.spend + context.cost > 100 };
''' % LIMIT
ENTITIES = '''[
 {"uid": {"type": "Tool", "id": "db.write"}, "attrs": {"labels": ["write"]}, "parents": []},
 {"uid": {"type": "Tool", "id": "crm.read"}, "attrs": {"labels": ["pii"]}, "parents": []}
]'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("state")
    pol = tmp / "policies"
    pol.mkdir()
    (pol / "p.cedar").write_text(POLICIES)
    (pol / "entities.json").write_text(ENTITIES)
    srv = AuthzServer(tmp, ["--listen", "127.0.0.1:0", "--policies", str(pol), "--data-dir", str(tmp / "data"),
                            "--workers", "2"]).start()
    srv.data_dir = str(tmp / "data")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stubs(server):
    with grpc.insecure_channel(server.address) as ch:
        yield tpbg.TokensStub(ch), pbg.AuthorizerStub(ch)


def token(stubs, task, agent="a1"):
    tokens, _ = stubs
    return tokens.Issue(tpb.IssueRequest(task=task, scope=tpb.TokenScope(actions=['Action::"call"'],
                                                                         resources=['Tool::"*"']), ttl_s=300),
                        metadata=caller_metadata(agent), timeout=10).token.access_token


def call(stubs, tok, tool, **context):
    _, authorizer = stubs
    ctx = struct_pb2.Struct()
    ctx.update(context)
    return authorizer.Check(pb.CheckRequest(action=pb.EntityUid(type="Action", id="call"),
                                            resource=pb.EntityUid(type="Tool", id=tool), context=ctx),
                            metadata=[("authorization", f"Bearer {tok}")], timeout=10)


def test_a_limit_of_n_admits_exactly_n_across_workers(server, stubs):
    tok = token(stubs, "t-limit")
    with grpc.insecure_channel(server.address) as ch1, grpc.insecure_channel(server.address) as ch2:
        pairs = [(None, pbg.AuthorizerStub(ch)) for ch in (ch1, ch2)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda k: call(pairs[k % 2], tok, "db.write").decision, range(3 * LIMIT)))
    assert answers.count(pb.DECISION_ALLOW) == LIMIT
    last = call(stubs, tok, "db.write")
    assert (last.decision, list(last.policies)) == (pb.DECISION_DENY, ["write-limit"])


def test_deploy_only_after_the_tests_ran_in_this_task(stubs):
    tok = token(stubs, "t-deploy")
    assert call(stubs, tok, "deploy").decision == pb.DECISION_DENY
    assert call(stubs, tok, "ci.run_tests").decision == pb.DECISION_ALLOW
    assert call(stubs, tok, "deploy").decision == pb.DECISION_ALLOW
    other = token(stubs, "t-deploy-other")
    assert call(stubs, other, "deploy").decision == pb.DECISION_DENY  # another task ran no tests


def test_egress_after_pii_is_denied_and_the_tripwire_revokes_the_task(stubs):
    tok = token(stubs, "t-pii")
    assert call(stubs, tok, "webhook.post").decision == pb.DECISION_ALLOW
    assert call(stubs, tok, "crm.read").decision == pb.DECISION_ALLOW
    r = call(stubs, tok, "webhook.post")
    assert (r.decision, list(r.policies)) == (pb.DECISION_DENY, ["no-egress-after-pii"])
    r = call(stubs, tok, "search")
    assert r.decision == pb.DECISION_DENY and r.reason in ("task_revoked", "token_revoked")


def test_a_spend_budget(stubs):
    tok = token(stubs, "t-budget")
    assert call(stubs, tok, "search", cost=60).decision == pb.DECISION_ALLOW
    assert call(stubs, tok, "search", cost=40).decision == pb.DECISION_ALLOW
    r = call(stubs, tok, "search", cost=1)
    assert (r.decision, list(r.policies)) == (pb.DECISION_DENY, ["budget"])


@pytest.mark.parametrize("context", [{"cost": -1}, {"cost": 1.5}, {"cost": "3"}, {"task": {}}, {"agent": 1}])
def test_bad_state_context_is_invalid_argument(stubs, context):
    tok = token(stubs, "t-bad")
    with pytest.raises(grpc.RpcError) as err:
        call(stubs, tok, "search", **context)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_approval_suspends_the_task_and_grants_the_exact_call_once(server, stubs):
    import json
    import os

    from harness import wait_until

    from authz.state import LmdbStore, SelfApproval, StateConfig, state_path

    tok = token(stubs, "t-pay")
    assert call(stubs, tok, "pay", amount=10).decision == pb.DECISION_ALLOW
    first = call(stubs, tok, "pay", amount=5000)
    assert (first.decision, first.reason) == (pb.DECISION_DENY, "approval_required") and len(first.approval_id) == 32
    # Suspended: every call of the task is denied while the approval is pending.
    assert call(stubs, tok, "search").reason == "task_suspended"
    store = LmdbStore(StateConfig(path=state_path(server.data_dir)))
    try:
        with pytest.raises(SelfApproval):  # nobody in the task's delegation chain approves its call
            store.approve(first.approval_id, "a1", time.time())
        assert store.approve(first.approval_id, "human-reviewer", time.time()).state == "approved"
        assert call(stubs, tok, "pay", amount=5001).reason == "approval_required"  # not the approved call
        second = call(stubs, tok, "search")
        assert second.reason == "task_suspended"  # ... and that one asked for its own approval
        pending = store.list_approvals(time.time(), state="pending", task="t-pay")
        assert len(pending) == 1
        store.reject(pending[0].id, "human-reviewer", "too much", time.time())  # on_reject: resume
        assert call(stubs, tok, "search").decision == pb.DECISION_ALLOW
        granted = call(stubs, tok, "pay", amount=5000)  # the approved call, once
        assert (granted.decision, list(granted.policies)) == (pb.DECISION_ALLOW, ["big-payments"])
        again = call(stubs, tok, "pay", amount=5000)
        assert again.reason == "approval_required" and again.approval_id != first.approval_id
    finally:
        store.close()
    log_path = os.path.join(server.data_dir, "decisions.jsonl")

    def granted_line():
        if not os.path.exists(log_path):
            return None
        with open(log_path, encoding="utf-8") as fh:
            for line in fh:
                event = json.loads(line)
                if event.get("decision_id") == granted.decision_id:
                    return event
        return None

    event = wait_until(granted_line, 20, "the granted call's decision log line")
    assert event["approval"] == {"id": first.approval_id, "approver": "human-reviewer"}
    assert event["decision"] == "allow"


def test_context_task_is_absent_without_a_task(stubs):
    _, authorizer = stubs
    r = authorizer.Check(pb.CheckRequest(principal=pb.EntityUid(type="Agent", id="a1"),
                                         action=pb.EntityUid(type="Action", id="call"),
                                         resource=pb.EntityUid(type="Tool", id="deploy")),
                         metadata=caller_metadata("a1"), timeout=10)
    assert (r.decision, list(r.policies)) == (pb.DECISION_DENY, ["deploy-needs-tests"])
