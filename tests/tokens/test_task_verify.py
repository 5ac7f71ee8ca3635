"""Keys, issuing, exchanging and verifying task tokens in-process, on a fake clock: each refusal has its reason."""
import json
import os
import stat

import jwt
import pytest
from tokenkit import Kit, claims_for, forge, make_index

from authz.tokens.issuer import Authorization
from authz.tokens.keys import KEYSET, KeyStore, KeyStoreError, keys_dir, rotate_keys, thumbprint
from authz.tokens.verify import TokenError


def _reason(kit, token):
    with pytest.raises(TokenError) as e:
        kit.verifier.verify(token)
    return e.value.code


# -- keys ---------------------------------------------------------------------------------------


def test_keys_are_created_private_with_thumbprint_kids(kit):
    folder = keys_dir(kit.data_dir)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for name in os.listdir(folder):
        assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600, name
    jwks = kit.keys.jwks()
    (key,) = jwks["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["alg"] == "EdDSA" and "d" not in key
    assert key["kid"] == thumbprint(key) and os.path.exists(os.path.join(folder, key["kid"] + ".pem"))
    # RFC 7638 section 3.1 example, transposed to the OKP members (RFC 8037 appendix A.3).
    assert thumbprint({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}) == \
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_a_signing_key_readable_by_others_is_refused(kit):
    pem = os.path.join(keys_dir(kit.data_dir), kit.keys.active_kid + ".pem")
    os.chmod(pem, 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        KeyStore(kit.data_dir)


def test_rotation_keeps_old_public_keys_until_their_tokens_expired(kit, clock):
    old_token = kit.issue(ttl=60)
    new_kid, old_kid, _ = rotate_keys(kit.data_dir, kit.cfg.max_ttl_s, kit.cfg.leeway_s, clock())
    kit.keys.reload()
    assert kit.keys.active_kid == new_kid and not os.path.exists(os.path.join(keys_dir(kit.data_dir), old_kid + ".pem"))
    assert {k["kid"] for k in kit.keys.jwks()["keys"]} == {old_kid, new_kid}
    assert kit.verifier.verify(old_token.token).jti == old_token.jti  # still valid after rotation
    assert jwt.get_unverified_header(kit.issue().token)["kid"] == new_kid
    # Past `keep_until`, the next rotation drops the old key from the set and the JWKS.
    keep_until = next(k["keep_until"] for k in json.load(open(os.path.join(keys_dir(kit.data_dir), KEYSET)))["keys"]
                      if k["kid"] == old_kid)
    assert keep_until >= old_token.exp
    clock.now = keep_until + 1
    _, _, dropped = rotate_keys(kit.data_dir, kit.cfg.max_ttl_s, kit.cfg.leeway_s, clock())
    assert dropped == [old_kid]


def test_rotated_out_key_token_after_its_expiry(kit, clock):
    token = kit.issue(ttl=30)
    rotate_keys(kit.data_dir, kit.cfg.max_ttl_s, kit.cfg.leeway_s, clock())
    kit.keys.reload()
    clock.now = token.exp + kit.cfg.leeway_s + 1
    assert _reason(kit, token.token) == "token_expired"
    # Once the key itself is gone from the set, the same token names an unknown key.
    clock.now += kit.cfg.max_ttl_s + 3600
    rotate_keys(kit.data_dir, kit.cfg.max_ttl_s, kit.cfg.leeway_s, clock())
    kit.keys.reload()
    kit.verifier.clear_cache()
    assert _reason(kit, token.token) == "token_unknown_key"


# -- issuing --------------------------------------------------------------------------------------


def test_issue_claims_and_policy_request(kit, clock):
    seen = []

    def authorize(request):
        seen.append(request)
        return Authorization(True, "d1")

    t = kit.issue(caller="a1", task="t-42", actions=['Action::"call"'], resources=['Tool::"github.*"'], ttl=10_000,
                  authorize=authorize)
    c = jwt.decode(t.token, options={"verify_signature": False})
    assert c["sub"] == "a1" and c["task"] == "t-42" and c["iss"] == c["aud"] == "authz"
    assert c["exp"] - c["iat"] == 900  # cut to the default cap
    assert c["scope"] == {"actions": ['Action::"call"'], "resources": ['Tool::"github.*"']} and "act" not in c
    header = jwt.get_unverified_header(t.token)
    assert header["alg"] == "EdDSA" and header["typ"] == "authz-task+jwt" and header["kid"] == kit.keys.active_kid
    (req,) = seen
    assert req["principal"] == {"type": "Agent", "id": "a1"}
    assert req["action"] == {"type": "Action", "id": "authz::IssueToken"}
    assert req["resource"] == {"type": "Task", "id": "t-42"}
    assert req["context"] == {"scope": c["scope"], "ttl_s": 900}
    assert kit.issue(ttl=30).claims["exp"] - int(clock()) == 30


def test_issue_refused_by_policy_or_bad_input(kit):
    with pytest.raises(TokenError) as e:
        kit.issue(authorize=lambda r: Authorization(False, "d", "no_permitting_policy"))
    assert e.value.code == "no_permitting_policy"
    with pytest.raises(TokenError) as e:
        kit.issue(resources=[])
    assert e.value.code == "invalid_argument"
    with pytest.raises(TokenError):
        kit.issue(task="x" * 1000)


# -- verifying: one reason per refusal -------------------------------------------------------------


def test_verified_token_context(kit):
    vt = kit.verifier.verify(kit.issue(task="t9").token)
    assert vt.principal == {"type": "Agent", "id": "a1"}
    assert vt.context_token["task"] == "t9" and vt.context_token["exp"] == vt.exp
    assert vt.context_delegation == {"chain": [{"__entity": {"type": "Agent", "id": "a1"}}], "depth": 0,
                                     "root": {"__entity": {"type": "Agent", "id": "a1"}}}
    assert vt.context({"x": 1}) == {"x": 1, "token": vt.context_token, "delegation": vt.context_delegation}


def test_expired_token(kit, clock):
    t = kit.issue(ttl=10)
    clock.now += 10 + kit.cfg.leeway_s + 1
    assert _reason(kit, t.token) == "token_expired"


def test_expiry_within_leeway_is_accepted(kit, clock):
    t = kit.issue(ttl=10)
    clock.now += 10 + kit.cfg.leeway_s
    kit.verifier.verify(t.token)


def test_not_yet_valid_token(kit, clock):
    token = forge(kit.data_dir, claims_for(clock(), nbf=int(clock()) + 120, exp=int(clock()) + 180))
    assert _reason(kit, token) == "token_not_yet_valid"


def test_issued_in_the_future_is_not_yet_valid(kit, clock):
    token = forge(kit.data_dir, claims_for(clock() + 120))
    assert _reason(kit, token) == "token_not_yet_valid"


def test_tampered_signature(kit):
    token = kit.issue().token
    head, payload, sig = token.split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    assert _reason(kit, f"{head}.{payload}.{flipped}") == "token_bad_signature"


def test_tampered_payload(kit):
    token = kit.issue().token
    head, payload, sig = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["scope"]["resources"] = ['Tool::"*"', 'Tool::"rm"']
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    assert _reason(kit, f"{head}.{forged}.{sig}") == "token_bad_signature"


def test_wrong_audience_and_issuer(kit, clock):
    assert _reason(kit, forge(kit.data_dir, claims_for(clock(), aud="other"))) == "token_wrong_audience"
    assert _reason(kit, forge(kit.data_dir, claims_for(clock(), iss="other"))) == "token_wrong_issuer"


def test_foreign_key_unknown_kid_alg_none_and_wrong_type(kit, clock):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stranger = Ed25519PrivateKey.generate()
    assert _reason(kit, forge(kit.data_dir, claims_for(clock()), key=stranger)) == "token_bad_signature"
    assert _reason(kit, forge(kit.data_dir, claims_for(clock()), kid="nope", key=stranger)) == "token_unknown_key"
    none = jwt.encode(claims_for(clock()), None, algorithm="none", headers={"typ": "authz-task+jwt"})
    assert _reason(kit, none) == "token_bad_algorithm"
    assert _reason(kit, forge(kit.data_dir, claims_for(clock()), typ="JWT")) == "token_wrong_type"
    assert _reason(kit, "not.a.jwt") == "token_malformed"
    assert _reason(kit, "x" * (kit.cfg.max_token_bytes + 1)) == "token_too_large"


@pytest.mark.parametrize("over", [
    {"sub": ""}, {"task": 5}, {"jti": None}, {"exp": "soon"}, {"scope": ["Tool::\"x\""]},
    {"scope": {"actions": ["nope"], "resources": []}}, {"act": {"sub": "someone-else"}}, {"act": "x"},
])
def test_malformed_claims(kit, clock, over):
    assert _reason(kit, forge(kit.data_dir, claims_for(clock(), **over))) == "token_malformed"


# -- revocation ------------------------------------------------------------------------------------


def test_revoked_token(kit):
    t = kit.issue()
    kit.verifier.verify(t.token)
    kit.revocations.revoke("token", t.jti, t.exp, 100)
    assert _reason(kit, t.token) == "token_revoked"


def test_revoked_task(kit):
    t, other = kit.issue(task="t1"), kit.issue(task="t2")
    kit.revocations.revoke("task", "t1", 0, 100)
    assert _reason(kit, t.token) == "task_revoked"
    kit.verifier.verify(other.token)
    with pytest.raises(TokenError) as e:
        kit.issue(task="t1")
    assert e.value.code == "task_revoked"


def test_revoked_agent(kit):
    root = kit.issue(caller="orchestrator")
    child = kit.exchange("worker", root)
    kit.revocations.revoke("agent", "orchestrator", 0, 100)
    assert _reason(kit, root.token) == "agent_revoked"
    assert _reason(kit, child.token) == "agent_revoked"  # anywhere in the chain
    with pytest.raises(TokenError) as e:
        kit.issue(caller="orchestrator")
    assert e.value.code == "agent_revoked"


def test_revoking_a_parent_revokes_its_descendants(kit):
    root = kit.issue()
    child = kit.exchange("b", root)
    grandchild = kit.exchange("c", child)
    kit.revocations.revoke("token", child.jti, child.exp, 100)
    kit.verifier.verify(root.token)
    assert _reason(kit, child.token) == "token_revoked"
    assert _reason(kit, grandchild.token) == "token_revoked"


def test_timed_revocation_lapses_and_expired_entries_are_pruned(kit, clock):
    t = kit.issue(task="t1", ttl=600)
    kit.revocations.revoke("task", "t1", clock() + 30, 100)
    assert _reason(kit, t.token) == "task_revoked"
    clock.now += 40
    kit.verifier.verify(t.token)
    kit.revocations.revoke("agent", "z", 0, 100)
    assert [e[0] for e in kit.revocations.entries()] == ["agent"]


def test_revocation_set_is_bounded(kit):
    from authz.tokens.revocation import RevocationFullError

    for i in range(3):
        kit.revocations.revoke("task", f"t{i}", 0, 3)
    kit.revocations.revoke("task", "t0", 0, 3)  # an existing entry is not a new one
    with pytest.raises(RevocationFullError):
        kit.revocations.revoke("task", "t3", 0, 3)


def test_cache_hits_but_never_outlives_expiry_or_revocation(kit, clock):
    t = kit.issue(ttl=20)
    kit.verifier.verify(t.token)
    kit.verifier.verify(t.token)
    assert kit.verifier.misses == 1 and kit.verifier.hits == 1
    kit.revocations.revoke("token", t.jti, t.exp, 100)
    assert _reason(kit, t.token) == "token_revoked"
    t2 = kit.issue(ttl=20)
    kit.verifier.verify(t2.token)
    clock.now += 20 + kit.cfg.leeway_s + 1
    assert _reason(kit, t2.token) == "token_expired"


def test_cache_is_bounded(tmp_path, clock):
    kit = Kit(tmp_path / "data", make_index(tmp_path), clock, cache_size=3)
    for i in range(10):
        kit.verifier.verify(kit.issue(task=f"t{i}").token)
    assert len(kit.verifier._cache) == 3


# -- exchange --------------------------------------------------------------------------------------


def test_exchange_claims_chain_and_policy_request(kit, clock):
    seen = []

    def authorize(request):
        seen.append(request)
        return Authorization(True, "d2")

    root = kit.issue(caller="a", task="t", actions=['Action::"call"', 'Action::"read"'],
                     resources=['Tool::"github.*"'], ttl=300)
    child = kit.exchange("b", root, actions=['Action::"call"'], resources=['Tool::"github.issues.*"', 'Tool::"x"'],
                         ttl=900, authorize=authorize)
    c = child.claims
    assert c["sub"] == "b" and c["task"] == "t" and c["exp"] == root.exp
    assert c["act"] == {"sub": "b", "act": {"sub": "a"}} and c["jti_chain"] == [root.jti]
    assert c["scope"] == {"actions": ['Action::"call"'], "resources": ['Tool::"github.issues.*"']}
    vt = kit.verifier.verify(child.token)
    assert vt.chain == ("a", "b") and vt.depth == 1
    (req,) = seen
    assert req["principal"] == {"type": "Agent", "id": "b"}
    assert req["action"] == {"type": "Action", "id": "authz::DelegateToken"}
    assert req["context"]["delegation"]["depth"] == 1
    assert req["context"]["parent"] == {"sub": "a", "jti": root.jti}
    grand = kit.exchange("c", child, ttl=10)
    assert grand.claims["exp"] == int(clock()) + 10
    assert kit.verifier.verify(grand.token).chain == ("a", "b", "c")
    assert grand.claims["act"] == {"sub": "c", "act": {"sub": "b", "act": {"sub": "a"}}}


def test_exchange_depth_limit(tmp_path, clock):
    kit = Kit(tmp_path / "data", make_index(tmp_path), clock, max_delegation_depth=2)
    t = kit.issue(caller="a0")
    for i in range(1, 3):
        t = kit.exchange(f"a{i}", t)
    with pytest.raises(TokenError) as e:
        kit.exchange("a3", t)
    assert e.value.code == "delegation_too_deep"


def test_exchange_honours_may_act(kit):
    root = kit.issue(caller="a", may_act=["b"])
    with pytest.raises(TokenError) as e:
        kit.exchange("mallory", root)
    assert e.value.code == "may_act_mismatch"
    kit.exchange("b", root)


def test_exchange_refuses_disjoint_scope_and_bad_parents(kit, clock):
    root = kit.issue(resources=['Tool::"github.*"'])
    with pytest.raises(TokenError) as e:
        kit.exchange("b", root, resources=['Tool::"gitlab.*"'])
    assert e.value.code == "out_of_scope"
    with pytest.raises(TokenError) as e:
        kit.exchange("b", root, authorize=lambda r: Authorization(False, "d", "no_permitting_policy"))
    assert e.value.code == "no_permitting_policy"
    kit.revocations.revoke("token", root.jti, root.exp, 10)
    with pytest.raises(TokenError) as e:
        kit.exchange("b", root)
    assert e.value.code == "token_revoked"
