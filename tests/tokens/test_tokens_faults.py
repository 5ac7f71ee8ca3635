"""Task tokens when their files fail under a real `authz serve`: the key set removed, the revocation set
unreadable or on a full file system. Each fails closed for tokens only; plain decisions go on."""
import os

import grpc
import pytest
from tokenkit import fill, mount_small_fs, unmount
from harness import POLICIES, AuthzServer, caller_metadata, issue_token, wait_until

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from authz._pb import tokens_pb2 as tpb
from authz._pb import tokens_pb2_grpc as tpbg
from authz.tokens.keys import KEYSET, keys_dir

TOKEN_POLICIES = r'''
@id("issue")
permit(principal, action == Action::"authz::IssueToken", resource is Task);

@id("revoke")
permit(principal, action == Action::"authz::Revoke", resource);
'''
SCOPE = (['Action::"call"'], ['Tool::"*"'])


def _policies(tmp):
    pol = tmp / "policies"
    pol.mkdir()
    (pol / "policies.cedar").write_text(POLICIES)
    (pol / "tokens.cedar").write_text(TOKEN_POLICIES)
    return pol


def _check(ch, token=None, principal=None):
    req = pb.CheckRequest(action=pb.EntityUid(type="Action", id="call"), resource=pb.EntityUid(type="Tool", id="x"))
    if principal is not None:
        req.principal.CopyFrom(pb.EntityUid(type="Agent", id=principal))
    md = caller_metadata("whoever", token)
    return pbg.AuthorizerStub(ch).Check(req, metadata=md, timeout=10)


def _refused(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def test_a_removed_key_set_keeps_the_loaded_keys_and_a_restart_refuses_tokens(tmp_path):
    args = ["--listen", "127.0.0.1:0", "--policies", str(_policies(tmp_path)), "--data-dir", str(tmp_path / "data"),
            "--workers", "1"]
    folder = keys_dir(str(tmp_path / "data"))
    server = AuthzServer(tmp_path, args, name="first").start()
    try:
        token = issue_token(server.address, "a1", "task-1", *SCOPE).access_token
        os.unlink(os.path.join(folder, KEYSET))
        with server.channel() as ch:  # the running worker keeps the keys it loaded
            assert _check(ch, token).decision == pb.DECISION_ALLOW
            assert issue_token(server.address, "a1", "task-1", *SCOPE).access_token
    finally:
        server.stop()
    files = sorted(os.listdir(folder))

    server = AuthzServer(tmp_path, args, name="second").start()
    try:
        with server.channel() as ch:
            tokens = tpbg.TokensStub(ch)
            code, details = _refused(lambda: tokens.Issue(tpb.IssueRequest(
                task="task-1", scope=tpb.TokenScope(actions=SCOPE[0], resources=SCOPE[1])),
                metadata=caller_metadata("a1"), timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE and details.startswith("keys_unavailable"), details
            assert "is missing" in details
            code, details = _refused(lambda: _check(ch, token))  # a token decision fails closed
            assert code == grpc.StatusCode.UNAVAILABLE and details.startswith("keys_unavailable"), details
            assert _refused(lambda: tokens.GetJwks(tpb.GetJwksRequest(), timeout=10))[0] == grpc.StatusCode.UNAVAILABLE
            assert _check(ch, principal="a1").decision == pb.DECISION_ALLOW  # plain decisions go on
        assert sorted(os.listdir(folder)) == files  # no new key set was made
        assert server.stderr().count("holds signing keys") == 1
    finally:
        server.stop()
