"""authz.v1.Tokens and decisions made with a task token, through the generated stubs against a real `authz serve`."""
import json
import subprocess
import sys
import time

import grpc
import jwt
import pytest
from tokenkit import claims_for, forge
from harness import POLICIES, AuthzServer, caller_metadata, env_with_repo, wait_until

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from authz._pb import tokens_pb2 as tpb
from authz._pb import tokens_pb2_grpc as tpbg
from google.protobuf import struct_pb2

TOKEN_POLICIES = r'''
@id("issue")
permit(principal, action == Action::"authz::IssueToken", resource is Task) unless { resource == Task::"forbidden" };

@id("delegate")
permit(principal, action == Action::"authz::DelegateToken", resource is Task);

@id("admin-revokes")
permit(principal == Agent::"admin", action == Action::"authz::Revoke", resource);

@id("revoke-own-token")
permit(principal, action == Action::"authz::Revoke", resource is Token)
when { context has token && context.token.jti == context.target && context.delegation.chain.contains(principal) };

@id("delegated-calls")
permit(principal, action == Action::"call", resource is Tool)
when { context has delegation && context.delegation.root == Agent::"a1" && context.delegation.depth == 1 &&
       context.token.task like "task-*" };
'''
MAX_DEPTH = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    pol = tmp / "policies"
    pol.mkdir()
    (pol / "policies.cedar").write_text(POLICIES)
    (pol / "tokens.cedar").write_text(TOKEN_POLICIES)
    config = tmp / "authz.toml"
    config.write_text(f"[tokens]\nmax_delegation_depth = {MAX_DEPTH}\nmax_ttl_s = 600\n")
    srv = AuthzServer(tmp, ["--config", str(config), "--listen", "127.0.0.1:0", "--policies", str(pol),
                            "--data-dir", str(tmp / "data"), "--workers", "2"]).start()
    srv.data_dir = str(tmp / "data")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def tokens(channel):
    return tpbg.TokensStub(channel)


@pytest.fixture(scope="module")
def authorizer(channel):
    return pbg.AuthorizerStub(channel)


def uid(t, i):
    return pb.EntityUid(type=t, id=i)


def issue(tokens, caller="a1", task="task-1", actions=('Action::"call"',), resources=('Tool::"search"',), ttl=60,
          **kw):
    return tokens.Issue(tpb.IssueRequest(task=task, scope=tpb.TokenScope(actions=actions, resources=resources),
                                         ttl_s=ttl, **kw), metadata=caller_metadata(caller), timeout=10)


def exchange(tokens, caller, parent, actions=(), resources=(), ttl=0, **kw):
    return tokens.Exchange(tpb.ExchangeRequest(subject_token=parent, scope=tpb.TokenScope(actions=actions,
                                               resources=resources), ttl_s=ttl, **kw),
                           metadata=caller_metadata(caller), timeout=10)


def check(authorizer, token, resource, action="call", principal=None, caller="whoever", context=None):
    req = pb.CheckRequest(action=uid("Action", action), resource=uid("Tool", resource))
    if principal is not None:
        req.principal.CopyFrom(principal)
    if context is not None:
        s = struct_pb2.Struct()
        s.update(context)
        req.context.CopyFrom(s)
    return authorizer.Check(req, metadata=caller_metadata(caller, token), timeout=10)


def denied_with(resp, reason):
    return resp.decision == pb.DECISION_DENY and resp.reason == reason


# -- the happy path --------------------------------------------------------------------------------


def test_issue_exchange_decide_introspect(server, tokens, authorizer):
    root = issue(tokens, resources=['Tool::"search"', 'Tool::"github.*"'], ttl=120).token
    assert root.token_type == "Bearer" and root.issued_token_type == "urn:ietf:params:oauth:token-type:jwt"
    assert 0 < root.expires_in <= 120 and root.task == "task-1"
    claims = jwt.decode(root.access_token, options={"verify_signature": False})
    assert claims["sub"] == "a1" and claims["jti"] == root.token_id

    # Deciding with the root token: the principal is the token's agent (agent-call permits a1).
    r = check(authorizer, root.access_token, "search")
    assert r.decision == pb.DECISION_ALLOW and list(r.policies) == ["agent-call"] and r.reason == ""

    # A sub-agent exchanges it for a narrower token; its decisions see the delegation chain.
    child = exchange(tokens, "helper", root.access_token, resources=['Tool::"github.issues.*"', 'Tool::"rm"']).token
    assert list(child.scope.resources) == ['Tool::"github.issues.*"'] and child.expires_at <= root.expires_at
    r = check(authorizer, child.access_token, "github.issues.create")
    assert r.decision == pb.DECISION_ALLOW and list(r.policies) == ["delegated-calls"]
    assert denied_with(check(authorizer, child.access_token, "search"), "out_of_scope")

    info = tokens.Introspect(tpb.IntrospectRequest(token=child.access_token), timeout=10)
    assert info.active and info.subject == "helper" and list(info.chain) == ["a1", "helper"] and info.depth == 1
    assert info.task == "task-1" and info.token_id == child.token_id and info.expires_at == child.expires_at
    assert info.issuer == "authz" and info.audience == "authz"


def test_out_of_scope(tokens, authorizer):
    token = issue(tokens, resources=['Tool::"search"']).token.access_token
    # agent-call permits a1 on every resource: the token's scope is the ceiling anyway.
    assert denied_with(check(authorizer, token, "other"), "out_of_scope")
    assert denied_with(check(authorizer, token, "search", action="GET"), "out_of_scope")


def test_principal_mismatch_and_reserved_context(tokens, authorizer):
    token = issue(tokens).token.access_token
    assert denied_with(check(authorizer, token, "search", principal=uid("Agent", "a2")), "principal_mismatch")
    assert check(authorizer, token, "search", principal=uid("Agent", "a1")).decision == pb.DECISION_ALLOW
    # Without a token, nobody may plant a token or a delegation chain in the context.
    with pytest.raises(grpc.RpcError) as e:
        check(authorizer, None, "search", principal=uid("Agent", "a1"), context={"delegation": {"depth": 0}})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "context.delegation" in e.value.details()


def test_batch_check_with_a_token(tokens, authorizer):
    token = issue(tokens, resources=['Tool::"search"']).token.access_token
    req = pb.BatchCheckRequest(action=uid("Action", "call"), items=[
        pb.BatchCheckItem(resource=uid("Tool", "search")), pb.BatchCheckItem(resource=uid("Tool", "x"))])
    out = authorizer.BatchCheck(req, metadata=caller_metadata("x", token), timeout=10).results
    assert out[0].decision == pb.DECISION_ALLOW
    assert out[1].reason == "out_of_scope" and not out[1].HasField("request_error")


# -- refusals: each its own reason ----------------------------------------------------------------


def test_expired_token(server, authorizer):
    now = int(time.time())
    token = forge(server.data_dir, claims_for(now - 600, exp=now - 300))
    assert denied_with(check(authorizer, token, "x"), "token_expired")


def test_not_yet_valid_token(server, authorizer):
    now = int(time.time())
    token = forge(server.data_dir, claims_for(now, nbf=now + 300, exp=now + 400))
    assert denied_with(check(authorizer, token, "x"), "token_not_yet_valid")


def test_tampered_signature(tokens, authorizer):
    token = issue(tokens).token.access_token
    head, payload, sig = token.split(".")
    flipped = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
    assert denied_with(check(authorizer, f"{head}.{payload}.{flipped}", "search"), "token_bad_signature")


def test_revoked_token(tokens, authorizer):
    token = issue(tokens).token.access_token
    assert check(authorizer, token, "search").decision == pb.DECISION_ALLOW
    # The holder revokes its own token (policy revoke-own-token); someone else may not.
    with pytest.raises(grpc.RpcError) as e:
        tokens.Revoke(tpb.RevokeRequest(token=token), metadata=caller_metadata("mallory"), timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and e.value.details().startswith("no_permitting_policy")
    r = tokens.Revoke(tpb.RevokeRequest(token=token), metadata=caller_metadata("a1"), timeout=10)
    assert r.decision_id and r.expires_at > time.time()
    assert denied_with(check(authorizer, token, "search"), "token_revoked")
    info = tokens.Introspect(tpb.IntrospectRequest(token=token), timeout=10)
    assert not info.active and info.reason == "token_revoked" and info.subject == ""


def test_revoked_task(tokens, authorizer):
    token = issue(tokens, task="task-doomed").token.access_token
    tokens.Revoke(tpb.RevokeRequest(task="task-doomed"), metadata=caller_metadata("admin"), timeout=10)
    assert denied_with(check(authorizer, token, "search"), "task_revoked")
    with pytest.raises(grpc.RpcError) as e:
        issue(tokens, task="task-doomed")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and e.value.details().startswith("task_revoked")


def test_revoked_agent(tokens, authorizer):
    root = issue(tokens, caller="rogue", task="task-r").token.access_token
    child = exchange(tokens, "innocent", root).token.access_token
    tokens.Revoke(tpb.RevokeRequest(agent="rogue"), metadata=caller_metadata("admin"), timeout=10)
    assert denied_with(check(authorizer, root, "search"), "agent_revoked")
    assert denied_with(check(authorizer, child, "search"), "agent_revoked")


def test_rotated_out_key(server, tokens, authorizer):
    now = int(time.time())
    old_valid = issue(tokens, ttl=300).token.access_token
    old_expired = forge(server.data_dir, claims_for(now - 900, iat=now - 900, nbf=now - 900, exp=now - 600))
    old_kid = jwt.get_unverified_header(old_valid)["kid"]
    r = subprocess.run([sys.executable, "-m", "authz", "keys", "rotate", "--data-dir", server.data_dir],
                       capture_output=True, text=True, env=env_with_repo(), timeout=60)
    assert r.returncode == 0, r.stderr
    # Every worker signs with the new key within its key-check interval.
    wait_until(lambda: all(jwt.get_unverified_header(issue(tokens).token.access_token)["kid"] != old_kid
                           for _ in range(4)), 10, "the new signing key")
    assert check(authorizer, old_valid, "search").decision == pb.DECISION_ALLOW  # old public key kept
    assert denied_with(check(authorizer, old_expired, "search"), "token_expired")
    jwks = tokens.GetJwks(tpb.GetJwksRequest(), timeout=10)
    assert old_kid in {k.kid for k in jwks.keys}
    exported = subprocess.run([sys.executable, "-m", "authz", "keys", "export", "--data-dir", server.data_dir],
                              capture_output=True, text=True, env=env_with_repo(), timeout=60)
    assert json.loads(exported.stdout) == json.loads(jwks.jwks_json)


# -- Issue / Exchange / Revoke refusals ------------------------------------------------------------


def test_issue_refusals(channel, tokens):
    with pytest.raises(grpc.RpcError) as e:
        tokens.Issue(tpb.IssueRequest(task="t", scope=tpb.TokenScope(actions=['Action::"call"'],
                                                                      resources=['Tool::"x"'])), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        issue(tokens, task="forbidden")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "no_permitting_policy" in e.value.details()
    for bad in (dict(resources=['Tool::x']), dict(resources=[]), dict(task="")):
        with pytest.raises(grpc.RpcError) as e:
            issue(tokens, **bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert issue(tokens, ttl=100000).token.expires_in <= 600  # the configured cap


def test_exchange_refusals(tokens):
    t = issue(tokens, caller="d0", may_act=["d1"]).token.access_token
    with pytest.raises(grpc.RpcError) as e:
        exchange(tokens, "mallory", t)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and e.value.details().startswith("may_act_mismatch")
    for i in range(1, MAX_DEPTH + 1):
        t = exchange(tokens, f"d{i}", t).token.access_token
    with pytest.raises(grpc.RpcError) as e:
        exchange(tokens, "too-deep", t)
    assert e.value.details().startswith("delegation_too_deep")
    with pytest.raises(grpc.RpcError) as e:
        exchange(tokens, "x", issue(tokens).token.access_token, resources=['Tool::"elsewhere"'])
    assert e.value.details().startswith("out_of_scope")
    with pytest.raises(grpc.RpcError) as e:
        exchange(tokens, "x", "garbage")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and e.value.details().startswith("token_malformed")


# -- revocation across worker processes ------------------------------------------------------------


def test_revocation_seen_by_both_workers(server, tokens):
    token = issue(tokens, task="task-both").token.access_token
    channels, by_worker = [], {}
    try:
        for _ in range(40):  # bounded: new connections until both workers have answered one
            # A local subchannel pool gives each channel its own connection (else they share one).
            ch = grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(ch)
            r = check(pbg.AuthorizerStub(ch), token, "search")
            assert r.decision == pb.DECISION_ALLOW
            by_worker.setdefault(r.decision_id[:12], ch)  # a decision id starts with its worker's prefix
            if len(by_worker) == 2:
                break
        assert len(by_worker) == 2, "could not reach both workers"
        tokens.Revoke(tpb.RevokeRequest(task="task-both"), metadata=caller_metadata("admin"), timeout=10)
        for ch in by_worker.values():
            assert denied_with(check(pbg.AuthorizerStub(ch), token, "search"), "task_revoked")
    finally:
        for ch in channels:
            ch.close()


def test_decision_log_records_reason_and_chain(server, tokens, authorizer):
    root = issue(tokens, task="task-log").token.access_token
    child = exchange(tokens, "logged-helper", root).token.access_token
    r = check(authorizer, child, "elsewhere")
    assert r.reason == "out_of_scope"
    log_path = server.tmp / "data" / "decisions.jsonl"

    def find(decision_id):
        for line in log_path.read_text().splitlines():
            ev = json.loads(line)
            if ev["decision_id"] == decision_id:
                return ev
        return None

    ev = wait_until(lambda: find(r.decision_id), 10, "the decision in the log")
    assert ev["reason"] == "out_of_scope" and ev["principal"] == 'Agent::"logged-helper"'
    assert ev["token"]["task"] == "task-log" and ev["token"]["chain"] == ["a1", "logged-helper"]
    # A refused but authentic token (here: revoked) is logged with whose it was.
    tokens.Revoke(tpb.RevokeRequest(task="task-log"), metadata=caller_metadata("admin"), timeout=10)
    r = check(authorizer, child, "search")
    ev = wait_until(lambda: find(r.decision_id), 10, "the decision in the log")
    assert ev["reason"] == "task_revoked" and ev["principal"] == 'Agent::"logged-helper"'
    assert ev["token"]["chain"] == ["a1", "logged-helper"]
    assert root not in log_path.read_text() and child not in log_path.read_text()  # never the tokens
