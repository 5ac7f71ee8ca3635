"""authz.v1.Approvals and `authz approvals` against a real 2-worker `authz serve` of the bundled example
policies (authz/examples/policies, tasks.cedar): a payment over 1,000 opens an approval and suspends the task
(no call, no token), a reviewer approves it with the CLI, the exact call is allowed once and the next one
needs a new approval; the task's own agent cannot approve; Watch streams the changes; unknown ids, expired
approvals (a server with `[approvals] ttl_s = 1`), refused approvers and bad input are answered with their
status codes and exit codes."""
import json
import pathlib
import signal
import subprocess
import sys
import threading

import grpc
import pytest
from google.protobuf import struct_pb2
from harness import AuthzServer, caller_metadata, env_with_repo, wait_until

from authz._pb import approvals_pb2 as apb
from authz._pb import approvals_pb2_grpc as apbg
from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from authz._pb import tokens_pb2 as tpb
from authz._pb import tokens_pb2_grpc as tpbg

BUNDLED = pathlib.Path(__file__).resolve().parents[2] / "authz" / "examples" / "policies"
AGENT, REVIEWER, LEAD = "ops-agent", "human-reviewer", "ops-lead"  # the lead works in tasks and approves
TOOLS = ['Tool::"payments.transfer"', 'Tool::"kb.search"', 'Tool::"crm.read"', 'Tool::"webhook.post"']


def _serve(tmp, config: str = ""):
    args = ["--listen", "127.0.0.1:0", "--policies", str(BUNDLED), "--data-dir", str(tmp / "data"), "--workers", "2"]
    if config:
        (tmp / "authz.toml").write_text(config)
        args += ["--config", str(tmp / "authz.toml")]
    return AuthzServer(tmp, args).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = _serve(tmp_path_factory.mktemp("approvals"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def issue(channel, task, agent=AGENT):
    return tpbg.TokensStub(channel).Issue(
        tpb.IssueRequest(task=task, scope=tpb.TokenScope(actions=['Action::"tools/call"'], resources=TOOLS),
                         ttl_s=600), metadata=caller_metadata(agent), timeout=10).token.access_token


def call(channel, tok, tool, **context):
    ctx = struct_pb2.Struct()
    ctx.update(context)
    return pbg.AuthorizerStub(channel).Check(
        pb.CheckRequest(action=pb.EntityUid(type="Action", id="tools/call"), resource=pb.EntityUid(type="Tool", id=tool),
                        context=ctx), metadata=[("authorization", f"Bearer {tok}")], timeout=10)


def cli(server, *args):
    """`authz approvals ...` in a subprocess: (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "authz", "approvals", *args, "--server", server.address],
                       capture_output=True, text=True, timeout=60, env=env_with_repo())
    return p.returncode, p.stdout, p.stderr


def approvals(channel):
    return apbg.ApprovalsStub(channel)


def code_of(fn, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value.code(), err.value.details()


def test_the_approval_cycle_through_the_service_and_the_cli(server, channel):
    stub = approvals(channel)
    seen = []
    watch = stub.Watch(apb.ApprovalsWatchRequest(queue="payments"), metadata=caller_metadata(REVIEWER), timeout=60)
    watch.initial_metadata()  # the stream is open: every change from now on reaches it

    def read():
        try:
            for r in watch:
                seen.append((r.change, r.approval.id))
        except grpc.RpcError as e:
            seen.append(e.code())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        tok = issue(channel, "t-cycle")
        assert call(channel, tok, "payments.transfer", amount=10).decision == pb.DECISION_ALLOW
        first = call(channel, tok, "payments.transfer", amount=5000)
        assert (first.decision, first.reason) == (pb.DECISION_DENY, "approval_required")
        # Suspended: no call of the task, no token for it.
        assert call(channel, tok, "kb.search").reason == "task_suspended"
        status, details = code_of(issue, channel, "t-cycle")
        assert status == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("task_suspended")
        status, details = code_of(tpbg.TokensStub(channel).Exchange, tpb.ExchangeRequest(
            subject_token=tok, scope=tpb.TokenScope(actions=['Action::"tools/call"'], resources=TOOLS[:1]), ttl_s=60),
            metadata=caller_metadata(AGENT), timeout=10)
        assert status == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("task_suspended")

        # The listing, as a table and as JSON.
        rc, out, err = cli(server, "list", "--state", "pending", "--task", "t-cycle")
        assert rc == 0 and first.approval_id in out and "payments" in out, err
        rc, out, _ = cli(server, "show", first.approval_id, "--json")
        shown = json.loads(out)
        assert (rc, shown["state"], shown["queue"], shown["task"], shown["chain"]) == (
            0, "pending", "payments", "t-cycle", [AGENT])
        assert shown["resource"] == {"type": "Tool", "id": "payments.transfer"}

        # Someone the policies do not allow cannot approve it (the task's agent included).
        rc, _, err = cli(server, "approve", first.approval_id, "--as", AGENT)
        assert rc == 1 and "no_permitting_policy" in err and "decision" in err
        status, details = code_of(stub.Approve, apb.ApprovalsApproveRequest(id=first.approval_id),
                                  metadata=caller_metadata("someone"), timeout=10)
        assert status == grpc.StatusCode.PERMISSION_DENIED and "decision" in details
        rc, out, err = cli(server, "approve", first.approval_id, "--as", REVIEWER, "--json")
        approved = json.loads(out)
        assert (rc, approved["state"], approved["approver"]) == (0, "approved", REVIEWER), err
        # Decided: approving or rejecting it again is FAILED_PRECONDITION (exit 1).
        rc, _, err = cli(server, "reject", first.approval_id, "--as", REVIEWER, "--reason", "late")
        assert rc == 1 and "failed_precondition" in err

        # The task resumed; the approved call is allowed once, the next identical one asks again.
        assert call(channel, tok, "kb.search").decision == pb.DECISION_ALLOW
        granted = call(channel, tok, "payments.transfer", amount=5000)
        assert (granted.decision, list(granted.policies)) == (pb.DECISION_ALLOW, ["big-payments"])
        again = call(channel, tok, "payments.transfer", amount=5000)
        assert again.reason == "approval_required" and again.approval_id != first.approval_id

        # A reject needs a reason; with one, the call stays denied and the task resumes.
        status, _ = code_of(stub.Reject, apb.ApprovalsRejectRequest(id=again.approval_id, reason=" "),
                            metadata=caller_metadata(REVIEWER), timeout=10)
        assert status == grpc.StatusCode.INVALID_ARGUMENT
        rejected = stub.Reject(apb.ApprovalsRejectRequest(id=again.approval_id, reason="too much"),
                               metadata=caller_metadata(REVIEWER), timeout=10).approval
        assert (rejected.state, rejected.reason) == ("rejected", "too much")
        assert call(channel, tok, "kb.search").decision == pb.DECISION_ALLOW
        assert call(channel, tok, "payments.transfer", amount=5000).reason == "approval_required"
        got = stub.Get(apb.ApprovalsGetRequest(id=first.approval_id), metadata=caller_metadata(REVIEWER),
                       timeout=10).approval
        assert got.state == "used"

        wanted = {("created", first.approval_id), ("approved", first.approval_id), ("used", first.approval_id),
                  ("created", again.approval_id), ("rejected", again.approval_id)}
        wait_until(lambda: wanted <= set(seen), 20, "Watch to stream the changes")
    finally:
        watch.cancel()
        reader.join(10)
    assert seen[-1] == grpc.StatusCode.CANCELLED  # the stream ran until the client cancelled it


def test_nobody_approves_a_call_of_their_own_task(server, channel):
    tok = issue(channel, "t-lead", LEAD)
    pending = call(channel, tok, "payments.transfer", amount=3000)
    assert pending.reason == "approval_required"
    status, details = code_of(approvals(channel).Approve, apb.ApprovalsApproveRequest(id=pending.approval_id),
                              metadata=caller_metadata(LEAD), timeout=10)
    assert status == grpc.StatusCode.PERMISSION_DENIED and details.startswith("self_approval")
    rc, _, err = cli(server, "approve", pending.approval_id, "--as", LEAD)
    assert rc == 1 and "self_approval" in err
    rc, out, _ = cli(server, "approve", pending.approval_id, "--as", REVIEWER)  # another reviewer may
    assert rc == 0 and "approved" in out


def test_unknown_malformed_and_bad_input(server, channel):
    stub = approvals(channel)
    md = caller_metadata(REVIEWER)
    assert code_of(stub.Get, apb.ApprovalsGetRequest(id="0" * 32), metadata=md, timeout=10)[0] == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(stub.Approve, apb.ApprovalsApproveRequest(id="0" * 32), metadata=md, timeout=10)[0] == \
        grpc.StatusCode.NOT_FOUND
    for bad in ("", "x" * 5000, "Z" * 32):
        assert code_of(stub.Get, apb.ApprovalsGetRequest(id=bad), metadata=md, timeout=10)[0] == \
            grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.List, apb.ApprovalsListRequest(limit=1001), metadata=md, timeout=10)[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.List, apb.ApprovalsListRequest(state="maybe"), metadata=md, timeout=10)[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    # Approving needs a caller.
    assert code_of(stub.Approve, apb.ApprovalsApproveRequest(id="0" * 32), timeout=10)[0] == \
        grpc.StatusCode.UNAUTHENTICATED
    # A malformed protobuf is INVALID_ARGUMENT, without a traceback in the server's log.
    raw = channel.unary_unary("/authz.v1.Approvals/Get")
    status, _ = code_of(raw, b"\x0a\xff\xff\xff\xff\x0f", metadata=md, timeout=10)
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert "Traceback" not in server.stderr()
    # The CLI: unknown id -> 1, an unreachable server -> 2, a missing reason -> 2 (usage).
    assert cli(server, "show", "0" * 32)[0] == 1
    p = subprocess.run([sys.executable, "-m", "authz", "approvals", "list", "--server", "127.0.0.1:1",
                        "--timeout", "2"], capture_output=True, text=True, timeout=60, env=env_with_repo())
    assert p.returncode == 2
    assert cli(server, "reject", "0" * 32, "--as", REVIEWER)[0] == 2


def test_approving_an_expired_approval_is_failed_precondition(tmp_path):
    srv = _serve(tmp_path, '[approvals]\nttl_s = 1\non_reject = "revoke_task"\n')
    try:
        with grpc.insecure_channel(srv.address) as ch:
            tok = issue(ch, "t-expire")
            pending = call(ch, tok, "payments.transfer", amount=2000)
            assert pending.reason == "approval_required"
            stub = approvals(ch)
            md = caller_metadata(REVIEWER)
            wait_until(lambda: stub.Get(apb.ApprovalsGetRequest(id=pending.approval_id), metadata=md,
                                        timeout=10).approval.state == "expired", 30, "the approval to expire",
                       interval_s=0.2)
            # Expiry acts as a reject; with on_reject "revoke_task" the workers' upkeep revokes the task's tokens.
            tokens = tpbg.TokensStub(ch)

            def revoked():
                r = tokens.Introspect(tpb.IntrospectRequest(token=tok), timeout=10)
                return not r.active and r.reason == "task_revoked"

            wait_until(revoked, 30, "the expired approval's task to be revoked", interval_s=0.2)
            status, details = code_of(stub.Approve, apb.ApprovalsApproveRequest(id=pending.approval_id),
                                      metadata=md, timeout=10)
            assert status == grpc.StatusCode.FAILED_PRECONDITION and "expired" in details
            rc, _, err = cli(srv, "approve", pending.approval_id, "--as", REVIEWER)
            assert rc == 1 and "expired" in err
            assert call(ch, tok, "kb.search").decision == pb.DECISION_DENY
    finally:
        srv.stop()


def test_watch_streams_end_when_the_server_drains(tmp_path):
    srv = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(BUNDLED), "--data-dir",
                                 str(tmp_path / "data")]).start()
    try:
        with grpc.insecure_channel(srv.address) as ch:
            watch = approvals(ch).Watch(apb.ApprovalsWatchRequest(), metadata=caller_metadata(REVIEWER), timeout=60)
            watch.initial_metadata()
            srv.proc.send_signal(signal.SIGTERM)
            assert list(watch) == []  # ended by the server, OK: not cut off when the drain's grace ran out
            assert watch.code() == grpc.StatusCode.OK
    finally:
        srv.stop()


def test_an_unusable_store_is_unavailable_and_issues_no_token(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "state").write_text("not an LMDB folder")  # the store cannot open: every use fails closed
    srv = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(BUNDLED), "--data-dir",
                                 str(data)]).start()
    try:
        with grpc.insecure_channel(srv.address) as ch:
            status, details = code_of(approvals(ch).List, apb.ApprovalsListRequest(),
                                      metadata=caller_metadata(REVIEWER), timeout=10)
            assert status == grpc.StatusCode.UNAVAILABLE and details.startswith("state_unavailable")
            status, details = code_of(issue, ch, "t-unusable")
            assert status == grpc.StatusCode.UNAVAILABLE and details.startswith("state_unavailable")
    finally:
        srv.stop()
