"""Task tokens when their files fail under a real `authz serve`: the key set removed, the revocation set
unreadable or on a full file system. Each fails closed for tokens only; plain decisions go on."""
import os
import time

import grpc
import pytest
from tokenkit import claims_for, fill, forge, mount_small_fs, unmount
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


def _index(tmp, db):
    import authz

    src = _policies(tmp)
    authz.compile([str(src)], db=str(db))


def _tokens(ch):
    return tpbg.TokensStub(ch)


def test_a_revocation_set_on_a_full_file_system_refuses_revokes_and_keeps_deciding(tmp_path):
    small = tmp_path / "small"
    mount_small_fs(small, "1m")
    server = None
    try:
        db = small / "authz.lmdb"
        _index(tmp_path, db)
        server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--db", str(db), "--data-dir",
                                        str(tmp_path / "data"), "--workers", "1"]).start()
        revoked, kept, later = (issue_token(server.address, "a1", f"task-{i}", *SCOPE).access_token for i in range(3))
        with server.channel() as ch:
            _tokens(ch).Revoke(tpb.RevokeRequest(token=revoked), metadata=caller_metadata("a1"), timeout=10)
            filler = fill(small)
            refusal = None
            for i in range(500):  # bounded: new entries until the file system refuses the index a page
                try:
                    _tokens(ch).Revoke(tpb.RevokeRequest(token_id=f"junk-{i}"), metadata=caller_metadata(f"c{i}"),
                                       timeout=10)
                except grpc.RpcError as e:
                    refusal = e
                    break
            assert refusal is not None, "the full file system never refused a revocation"
            assert refusal.code() == grpc.StatusCode.UNAVAILABLE, refusal.details()
            assert refusal.details().startswith("revocation_unavailable") and "No space left" in refusal.details()
            # Reads go on: the revoked token stays refused, the others and plain decisions are decided.
            assert _check(ch, revoked).reason == "token_revoked"
            assert _check(ch, kept).decision == pb.DECISION_ALLOW
            assert _check(ch, principal="a1").decision == pb.DECISION_ALLOW
            filler.unlink()
            _tokens(ch).Revoke(tpb.RevokeRequest(token=later), metadata=caller_metadata("a1"), timeout=10)
            assert _check(ch, later).reason == "token_revoked"
    finally:
        if server is not None:
            server.stop()
        unmount(small)


def test_an_unreadable_revocation_set_refuses_token_decisions_and_keeps_plain_ones(tmp_path):
    db = tmp_path / "authz.lmdb"
    _index(tmp_path, db)
    data = tmp_path / "data"
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--db", str(db), "--data-dir", str(data),
                                    "--workers", "1"]).start()
    try:
        now = int(time.time())
        token = forge(str(data), claims_for(now, exp=now + 300))  # no Issue: the worker has not read revocations
        with server.channel() as ch:
            assert _check(ch, principal="a1").decision == pb.DECISION_ALLOW  # the index is open
            away = tmp_path / "moved-away"
            db.rename(away)  # the revocation set is gone before the worker first reads it
            code, details = _refused(lambda: _check(ch, token))
            assert code == grpc.StatusCode.UNAVAILABLE and details.startswith("revocation_unavailable"), details
            code, details = _refused(lambda: _tokens(ch).Issue(tpb.IssueRequest(
                task="task-1", scope=tpb.TokenScope(actions=SCOPE[0], resources=SCOPE[1])),
                metadata=caller_metadata("a1"), timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE and details.startswith("revocation_unavailable"), details
            code, details = _refused(lambda: _tokens(ch).Revoke(tpb.RevokeRequest(task="task-1"),
                                                                metadata=caller_metadata("a1"), timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE and details.startswith("revocation_unavailable"), details
            assert _check(ch, principal="a1").decision == pb.DECISION_ALLOW  # plain decisions go on
            away.rename(db)
            assert _check(ch, token).decision == pb.DECISION_ALLOW
    finally:
        server.stop()
