"""The revocation set's limits over gRPC against a real `authz serve`: one caller's junk cannot block another's
revocation of a compromised token; the whole set is bounded too."""
import grpc
import pytest
from harness import POLICIES, AuthzServer, caller_metadata, issue_token

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from authz._pb import tokens_pb2 as tpb
from authz._pb import tokens_pb2_grpc as tpbg

MAX_REVOCATIONS, PER_CALLER = 12, 4
TOKEN_POLICIES = r'''
@id("issue")
permit(principal, action == Action::"authz::IssueToken", resource is Task);

@id("anyone-revokes")
permit(principal, action == Action::"authz::Revoke", resource);

@id("calls")
permit(principal, action == Action::"call", resource) when { context has token };
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rvk")
    pol = tmp / "policies"
    pol.mkdir()
    (pol / "policies.cedar").write_text(POLICIES)
    (pol / "tokens.cedar").write_text(TOKEN_POLICIES)
    config = tmp / "authz.toml"
    config.write_text(f"[tokens]\nmax_revocations = {MAX_REVOCATIONS}\nmax_revocations_per_caller = {PER_CALLER}\n")
    srv = AuthzServer(tmp, ["--config", str(config), "--listen", "127.0.0.1:0", "--policies", str(pol),
                            "--data-dir", str(tmp / "data"), "--workers", "2"]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def _revoke(channel, caller, **target):
    return tpbg.TokensStub(channel).Revoke(tpb.RevokeRequest(**target), metadata=caller_metadata(caller), timeout=10)


def _revoke_until_refused(channel, caller, prefix, limit):
    """Revoke made-up token ids as `caller` until refused (at most `limit` tries): (accepted, the RpcError)."""
    for i in range(limit):
        try:
            _revoke(channel, caller, token_id=f"{prefix}-{i}")
        except grpc.RpcError as e:
            return i, e
    return limit, None


def _check(channel, token):
    req = pb.CheckRequest(action=pb.EntityUid(type="Action", id="call"), resource=pb.EntityUid(type="Tool", id="x"))
    return pbg.AuthorizerStub(channel).Check(req, metadata=caller_metadata("whoever", token), timeout=10)


def test_junk_from_one_caller_cannot_block_revoking_a_compromised_token(server, channel):
    compromised = issue_token(server.address, "victim", "task-1", ['Action::"call"'], ['Tool::"*"']).access_token
    assert _check(channel, compromised).decision == pb.DECISION_ALLOW
    accepted, error = _revoke_until_refused(channel, "attacker", "junk", 3 * MAX_REVOCATIONS)
    assert accepted == PER_CALLER and error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details().startswith("revocation_quota_exceeded") and \
        f"maximum of {PER_CALLER}" in error.details() and "tokens.max_revocations_per_caller" in error.details()
    _revoke(channel, "victim", token=compromised)
    r = _check(channel, compromised)
    assert r.decision == pb.DECISION_DENY and r.reason == "token_revoked"
    _revoke(channel, "attacker", token_id="junk-0")  # re-revoking what it holds adds nothing: accepted


def test_the_whole_set_is_bounded(channel):
    refusal = None
    for n in range(MAX_REVOCATIONS):  # bounded: enough callers to fill the set whatever is in it
        accepted, refusal = _revoke_until_refused(channel, f"filler-{n}", f"fill-{n}", PER_CALLER + 1)
        if refusal is not None and refusal.details().startswith("revocation_set_full"):
            break
    assert refusal is not None and refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refusal.details().startswith("revocation_set_full") and \
        f"maximum of {MAX_REVOCATIONS}" in refusal.details() and "tokens.max_revocations" in refusal.details()
