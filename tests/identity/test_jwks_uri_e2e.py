"""End to end: `authz serve` verifying bearer tokens with key sets fetched from local IdPs (jwks_uri and OIDC
discovery on 127.0.0.1): a key rotation, a flood of unknown kids, an IdP that fails past max_stale_s and recovers."""
import json
import pathlib
import sys
import time
import uuid

import pytest

import material as m
from authz._pb import authz_pb2, authz_pb2_grpc
from idp import DISCOVERY_PATH, JWKS_PATH, Idp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "server"))
from harness import AuthzServer  # noqa: E402

POLICY = '@id("agent-1-reads")\npermit(principal == Agent::"agent-1", action == Action::"read", resource);\n'
POLL_S = 30.0


def check(channel, token: str):
    req = authz_pb2.CheckRequest(action=authz_pb2.EntityUid(type="Action", id="read"),
                                 resource=authz_pb2.EntityUid(type="Tool", id="search"))
    r = authz_pb2_grpc.AuthorizerStub(channel).Check(req, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
    return "allow" if r.decision == authz_pb2.DECISION_ALLOW else r.reason


def poll(channel, token_of, expected: str) -> None:
    """Ask until the answer is `expected` (bounded); `token_of()` makes a fresh token each time."""
    deadline = time.monotonic() + POLL_S
    got = None
    while time.monotonic() < deadline:
        got = check(channel, token_of())
        if got == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"still `{got}`, not `{expected}`, after {POLL_S:g} s")


@pytest.fixture
def setup(tmp_path):
    key_a, key_b, key_c = m.SigningKey("ES256", "a"), m.SigningKey("EdDSA", "b"), m.SigningKey("ES256", "c")
    with Idp(m.jwks(key_a)) as rotating, Idp(m.jwks(key_c)) as discovered:
        (tmp_path / "policies").mkdir()
        (tmp_path / "policies" / "p.cedar").write_text(POLICY)
        (tmp_path / "authz.toml").write_text(f'''
[[identity.jwt]]                 # keys live 1 s, then 1 s more while the IdP fails
issuer = "{m.ISSUER}"
audiences = ["{m.AUDIENCE}"]
jwks_uri = "{rotating.jwks_url}"
min_refresh_s = 1
cache_min_s = 0
cache_max_s = 1
max_stale_s = 1
read_timeout_s = 2

[[identity.jwt]]                 # through discovery; fetched once an hour at most
issuer = "{discovered.url}"
audiences = ["{m.AUDIENCE}"]
discovery = true
min_refresh_s = 3600
cache_min_s = 3600
''')
        args = ["--config", str(tmp_path / "authz.toml"), "--listen", "127.0.0.1:0",
                "--policies", str(tmp_path / "policies"), "--data-dir", str(tmp_path / "data")]
        server = AuthzServer(tmp_path, args).start()
        try:
            yield server, rotating, discovered, (key_a, key_b, key_c)
        finally:
            server.stop()


def test_serve_with_fetched_key_sets(tmp_path, setup):
    server, rotating, discovered, (key_a, key_b, key_c) = setup
    with server.channel() as ch:
        # The worker fetched both key sets in the background: tokens of either issuer verify.
        poll(ch, lambda: key_a.sign(m.claims()), "allow")
        poll(ch, lambda: key_c.sign(m.claims(iss=discovered.url)), "allow")
        assert check(ch, key_c.sign(m.claims(iss=discovered.url, sub="agent-2"))) == "no_permitting_policy"

        # A flood of made-up kids costs the IdP nothing more within min_refresh_s (an hour here).
        assert (discovered.count(DISCOVERY_PATH), discovered.count(JWKS_PATH)) == (1, 1)
        for _ in range(200):
            forged = key_c.sign(m.claims(iss=discovered.url), header={"kid": uuid.uuid4().hex})
            assert check(ch, forged) == "token_unknown_kid"
        assert (discovered.count(DISCOVERY_PATH), discovered.count(JWKS_PATH)) == (1, 1)

        # The IdP rotates: the new key verifies, the retired one no longer does.
        rotating.jwks = m.jwks(key_b)
        poll(ch, lambda: key_b.sign(m.claims()), "allow")
        poll(ch, lambda: key_a.sign(m.claims()), "token_unknown_kid")

        # The IdP fails: the last good keys count for max_stale_s past their lifetime, then every token of
        # that issuer is refused; the other issuer is not affected. It recovers: tokens verify again.
        rotating.faults[JWKS_PATH] = "500"
        poll(ch, lambda: key_b.sign(m.claims()), "jwks_unavailable")
        assert check(ch, key_c.sign(m.claims(iss=discovered.url))) == "allow"
        rotating.faults.clear()
        poll(ch, lambda: key_b.sign(m.claims()), "allow")
    server.stop()
    log_text = (tmp_path / "data" / "decisions.jsonl").read_text()
    reasons = {e.get("reason") for e in map(json.loads, log_text.splitlines())}
    assert {"jwks_unavailable", "token_unknown_kid"} <= reasons
    assert "refused (jwks_unavailable)" in server.stderr()
