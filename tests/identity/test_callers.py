"""Callers in process: the principal of Envoy and authz.v1 requests from bearer tokens, mTLS peers and trusted PEPs."""
import json

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as ea

import material as m
from authz.errors import IdentityError
from authz.server.callers import ANONYMOUS, Callers, agent, bearer_token
from authz.server.config import IdentitySettings, JwtIssuerSettings, MtlsSettings
from authz.server.decider import Invalid
from authz.server.envoy import Limits, map_check_request

PEP = "spiffe://example.org/ns/mesh/sa/envoy"


class FakeContext:
    """What the servicers read from a grpc ServicerContext."""

    def __init__(self, cert=None, metadata=()):
        self.cert, self.metadata = cert, tuple(metadata)

    def auth_context(self):
        if self.cert is None:
            return {}
        return {"transport_security_type": [b"ssl"], "x509_pem_cert": [m.cert_pem(self.cert)]}

    def invocation_metadata(self):
        return self.metadata


class FakeDecider:
    """Permits CheckAs for the principals in `check_as` ({caller id: {principal id}})."""

    def __init__(self, check_as=None):
        self.check_as = check_as or {}
        self.asked = []

    def decide_one(self, request, api):
        self.asked.append(request)

        class O:
            allowed = request["resource"]["id"] in self.check_as.get(request["principal"]["id"], ())
        return O()


@pytest.fixture(scope="module")
def ca():
    return m.CertificateAuthority()


@pytest.fixture
def callers(tmp_path, keys):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(m.jwks(keys["ES256"], keys["EdDSA"])))
    (tmp_path / "x.pem").write_text("")
    settings = IdentitySettings(
        jwt=(JwtIssuerSettings(str(path), (m.AUDIENCE,), issuer=m.ISSUER, algorithms=("ES256", "EdDSA")),),
        mtls=MtlsSettings("x.pem", "x.pem", "x.pem", (m.TRUST_DOMAIN,)), trusted_peps=(PEP,))
    return Callers(settings)


def envoy_requests(headers=None, principal="", certificate=""):
    req = ea.CheckRequest()
    a = req.attributes
    a.request.http.method = "GET"
    a.request.http.path = "/tools/x"
    for k, v in (headers or {}).items():
        a.request.http.headers[k] = v
    a.source.principal = principal
    a.source.certificate = certificate
    requests = map_check_request(req, Limits())
    return requests, req


def test_bearer_token_parsing():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token("Bearer") is None and bearer_token(None) is None


def test_envoy_bearer_token_gives_principal_and_context_jwt(callers, keys):
    token = keys["ES256"].sign(m.claims(sub="agent-7", task="t-1"))
    requests, req = envoy_requests({"authorization": f"Bearer {token}", "x-other": "1"})
    (r,) = callers.bind_envoy(requests, req, FakeContext())
    assert r["principal"] == agent("agent-7")
    assert r["context"]["jwt"]["task"] == "t-1" and r["context"]["jwt"]["sub"] == "agent-7"
    assert "authorization" not in r["context"]["http"]["headers"] and r["context"]["http"]["headers"]["x-other"] == "1"


def test_envoy_invalid_bearer_token_denies(callers, keys):
    token = keys["ES256"].sign(m.claims(ttl=-3600))
    requests, req = envoy_requests({"authorization": f"Bearer {token}"})
    with pytest.raises(IdentityError) as info:
        callers.bind_envoy(requests, req, FakeContext())
    assert info.value.code == "token_expired"


def test_envoy_other_authorization_schemes_are_not_tokens(callers):
    requests, req = envoy_requests({"authorization": "Basic dXNlcjpwdw=="})
    (r,) = callers.bind_envoy(requests, req, FakeContext())
    assert r["principal"] == ANONYMOUS and r["context"]["http"]["headers"]["authorization"].startswith("Basic")


def test_envoy_source_principal_ignored_from_an_untrusted_caller(callers, ca):
    requests, req = envoy_requests(principal="spiffe://example.org/agent/a1")
    stranger, _ = ca.issue(uris=["spiffe://example.org/ns/mesh/sa/other"])
    for ctx in (FakeContext(), FakeContext(stranger)):
        (r,) = callers.bind_envoy(requests, req, ctx)
        assert r["principal"] == ANONYMOUS and r["context"]["source"]["principal"] == ""


def test_envoy_source_principal_trusted_from_a_trusted_pep(callers, ca):
    envoy_cert, _ = ca.issue(uris=[PEP])
    requests, req = envoy_requests(principal="spiffe://example.org/agent/a1")
    (r,) = callers.bind_envoy(requests, req, FakeContext(envoy_cert))
    assert r["principal"] == agent("spiffe://example.org/agent/a1")
    assert r["context"]["source"]["principal"] == "spiffe://example.org/agent/a1"


def test_envoy_trusted_pep_source_principal_is_still_checked(callers, ca):
    import urllib.parse

    envoy_cert, _ = ca.issue(uris=[PEP])
    for principal, code in (("spiffe://evil.org/agent/a1", "untrusted_trust_domain"),
                            ("agent.example.org", "spiffe_id_invalid")):
        requests, req = envoy_requests(principal=principal)
        with pytest.raises(IdentityError) as info:
            callers.bind_envoy(requests, req, FakeContext(envoy_cert))
        assert info.value.code == code
    # With include_peer_certificate, the client certificate itself must be a valid X.509-SVID.
    two, _ = ca.issue(uris=["spiffe://example.org/agent/a1", "spiffe://example.org/agent/admin"])
    requests, req = envoy_requests(principal="spiffe://example.org/agent/a1",
                                   certificate=urllib.parse.quote(m.cert_pem(two).decode()))
    with pytest.raises(IdentityError) as info:
        callers.bind_envoy(requests, req, FakeContext(envoy_cert))
    assert info.value.code == "peer_cert_multiple_uris"


def test_envoy_development_mode_takes_requests_as_given():
    dev = Callers(IdentitySettings())
    requests, req = envoy_requests(principal="anything")
    assert dev.bind_envoy(requests, req, FakeContext()) is requests


def v1(principal=None):
    return {"principal": principal, "action": {"type": "Action", "id": "read"},
            "resource": {"type": "Tool", "id": "t"}, "context": {"jwt": {"forged": True}}}


def test_v1_caller_from_bearer_token_and_from_peer(callers, keys, ca):
    token = keys["EdDSA"].sign(m.claims(sub="agent-9"))
    c = callers.v1_caller(FakeContext(metadata=[("authorization", f"Bearer {token}")]))
    assert c.identity == "agent-9" and c.token is not None and not c.is_pep
    leaf, _ = ca.issue(uris=["spiffe://example.org/agent/a1"])
    c = callers.v1_caller(FakeContext(leaf))
    assert c.principal == agent("spiffe://example.org/agent/a1") and c.token is None
    assert callers.v1_caller(FakeContext()).principal is None
    two, _ = ca.issue(uris=["spiffe://example.org/agent/a1", "spiffe://example.org/agent/b"])
    with pytest.raises(IdentityError) as info:
        callers.v1_caller(FakeContext(two))
    assert info.value.code == "peer_cert_multiple_uris"


def test_v1_own_principal_and_context_jwt(callers, keys):
    token = keys["EdDSA"].sign(m.claims(sub="agent-9"))
    c = callers.v1_caller(FakeContext(metadata=[("authorization", f"Bearer {token}")]))
    a, b = callers.bind_v1([v1(), v1(agent("agent-9"))], c, FakeDecider())
    assert a["principal"] == b["principal"] == agent("agent-9")
    assert a["context"]["jwt"]["sub"] == "agent-9" and "forged" not in a["context"]["jwt"]


def test_v1_explicit_principal_refused_for_a_plain_caller(callers, ca):
    leaf, _ = ca.issue(uris=["spiffe://example.org/agent/a1"])
    c = callers.v1_caller(FakeContext(leaf))
    (r,) = callers.bind_v1([v1(agent("admin"))], c, FakeDecider())
    assert isinstance(r, Invalid) and r.code == "principal_not_allowed"
    (own,) = callers.bind_v1([v1()], c, FakeDecider())
    assert own["principal"] == agent("spiffe://example.org/agent/a1") and "jwt" not in own["context"]


def test_v1_explicit_principal_accepted_from_a_trusted_pep(callers, ca):
    leaf, _ = ca.issue(uris=[PEP])
    c = callers.v1_caller(FakeContext(leaf))
    assert c.is_pep
    (r,) = callers.bind_v1([v1(agent("admin"))], c, FakeDecider())
    assert r["principal"] == agent("admin") and r["context"]["jwt"] == {"forged": True}


def test_v1_explicit_principal_accepted_when_check_as_permits(callers, ca):
    leaf, _ = ca.issue(uris=["spiffe://example.org/gateway"])
    c = callers.v1_caller(FakeContext(leaf))
    decider = FakeDecider({"spiffe://example.org/gateway": {"agent-1"}})
    out = callers.bind_v1([v1(agent("agent-1")), v1(agent("agent-1")), v1(agent("agent-2"))], c, decider)
    assert out[0]["principal"] == out[1]["principal"] == agent("agent-1")
    assert isinstance(out[2], Invalid) and out[2].code == "principal_not_allowed"
    assert len(decider.asked) == 2  # once per named principal in a call
    assert decider.asked[0]["action"] == {"type": "Action", "id": "authz::CheckAs"}


def test_v1_unauthenticated(callers):
    c = callers.v1_caller(FakeContext())
    r1, r2 = callers.bind_v1([v1(), v1(agent("x"))], c, FakeDecider())
    assert (r1.code, r2.code) == ("unauthenticated", "principal_not_allowed")


def test_v1_refused_identity_denies_every_request(callers, keys):
    token = keys["ES256"].sign(m.claims(aud="elsewhere"))
    with pytest.raises(IdentityError) as info:
        callers.v1_caller(FakeContext(metadata=[("authorization", f"Bearer {token}")]))
    out = callers.bind_v1([v1(), v1(agent("x"))], info.value, FakeDecider())
    assert [r.code for r in out] == ["token_wrong_audience"] * 2


def test_deferred_bearer_tokens_are_left_alone(tmp_path, keys):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(m.jwks(keys["ES256"])))
    settings = IdentitySettings(jwt=(JwtIssuerSettings(str(path), (m.AUDIENCE,), issuer=m.ISSUER),))
    c = Callers(settings, defer_bearer=lambda value: "task" in value)
    requests, req = envoy_requests({"authorization": "Bearer task-token"})
    (r,) = c.bind_envoy(requests, req, FakeContext())
    assert r["context"]["http"]["headers"]["authorization"] == "Bearer task-token" and "jwt" not in r["context"]
    assert c.v1_caller(FakeContext(metadata=[("authorization", "Bearer task-token")])).principal is None


def test_v1_pep_by_token_only_as_a_jwt_svid(tmp_path, keys):
    oidc_path, bundle_path = tmp_path / "jwks.json", tmp_path / "bundle.json"
    oidc_path.write_text(json.dumps(m.jwks(keys["ES256"])))
    svid_key = m.SigningKey("ES256", "svid-1")
    bundle_path.write_text(json.dumps(m.spiffe_bundle(svid_key)))
    # Even an OIDC issuer allowed to assert SPIFFE ids does not make its subject a PEP.
    settings = IdentitySettings(jwt=(JwtIssuerSettings(str(oidc_path), (m.AUDIENCE,), issuer=m.ISSUER,
                                                       subject_trust_domains=(m.TRUST_DOMAIN,)),
                                     JwtIssuerSettings(str(bundle_path), (m.AUDIENCE,), trust_domain=m.TRUST_DOMAIN)),
                                trusted_peps=(PEP,))
    c = Callers(settings)
    oidc = keys["ES256"].sign(m.claims(sub=PEP))
    svid = svid_key.sign(m.claims(sub=PEP, iss=None))
    caller = c.v1_caller(FakeContext(metadata=[("authorization", f"Bearer {oidc}")]))
    assert caller.identity == PEP and not caller.is_pep
    assert c.v1_caller(FakeContext(metadata=[("authorization", f"Bearer {svid}")])).is_pep


def test_claims_too_deep_for_a_cedar_record(callers, keys):
    deep = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    token = keys["EdDSA"].sign(m.claims(sub="agent-9", deep=deep))
    c = callers.v1_caller(FakeContext(metadata=[("authorization", f"Bearer {token}")]))
    (r,) = callers.bind_v1([v1()], c, FakeDecider())
    assert isinstance(r, Invalid) and r.code == "token_malformed"
    requests, req = envoy_requests({"authorization": f"Bearer {token}"})
    with pytest.raises(IdentityError) as info:
        callers.bind_envoy(requests, req, FakeContext())
    assert info.value.code == "token_malformed"
