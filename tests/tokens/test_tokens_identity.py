"""Task tokens with the identity layer on (not development mode): the caller is proven by mTLS or a bearer JWT.

One server requires SPIFFE client certificates and trusts an external JWT issuer; tokens are
still routed to the task-token verifier by their `iss`.
"""
import json
import pathlib
import sys

import grpc
import pytest

import tokenkit  # noqa: F401  (puts tests/server on sys.path)
from harness import AuthzServer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "identity"))
import material as m  # noqa: E402

from authz._pb import authz_pb2 as pb  # noqa: E402
from authz._pb import authz_pb2_grpc as pbg  # noqa: E402
from authz._pb import tokens_pb2 as tpb  # noqa: E402
from authz._pb import tokens_pb2_grpc as tpbg  # noqa: E402

A1 = "spiffe://example.org/agent/a1"
A2 = "spiffe://example.org/agent/a2"
POLICIES = r'''
@id("issue")
permit(principal, action == Action::"authz::IssueToken", resource is Task);

@id("delegate")
permit(principal, action == Action::"authz::DelegateToken", resource is Task);

@id("calls")
permit(principal, action == Action::"call", resource) when { context has token };
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok-id")
    ca = m.CertificateAuthority()
    (tmp / "ca.pem").write_bytes(ca.pem())
    cert, key = m.write_leaf(tmp, "authz", ca, uris=["spiffe://example.org/authz"], dns=["localhost"])
    idp = m.SigningKey("ES256", "idp-1")
    (tmp / "jwks.json").write_text(json.dumps(m.jwks(idp)))
    (tmp / "policies").mkdir()
    (tmp / "policies" / "p.cedar").write_text(POLICIES)
    (tmp / "authz.toml").write_text(f'''
[[identity.jwt]]
issuer = "{m.ISSUER}"
audiences = ["{m.AUDIENCE}"]
jwks_file = "jwks.json"
algorithms = ["ES256"]

[identity.mtls]
cert = "{cert}"
key = "{key}"
client_ca = "{tmp / 'ca.pem'}"
trust_domains = ["{m.TRUST_DOMAIN}"]
''')

    def client(name, uri):
        c, k = ca.issue([uri])
        return ca.pem(), m.cert_pem(c), m.key_pem(k)

    server = AuthzServer(tmp, ["--config", str(tmp / "authz.toml"), "--listen", "127.0.0.1:0",
                               "--policies", str(tmp / "policies"), "--data-dir", str(tmp / "data")],
                         tls=client("probe", "spiffe://example.org/probe")).start()
    yield server, client, idp
    server.stop()


def _issue(ch, metadata=()):
    return tpbg.TokensStub(ch).Issue(tpb.IssueRequest(task="t", scope=tpb.TokenScope(
        actions=['Action::"call"'], resources=['Tool::"*"'])), metadata=metadata, timeout=10)


def test_the_proven_identity_gets_the_token(setup):
    server, client, idp = setup
    with server.channel(client("a1", A1)) as ch:
        # The mTLS peer's SPIFFE id is the caller; a development-mode header counts for nothing.
        token = _issue(ch, [("x-authz-caller", "admin")]).token
        r = pbg.AuthorizerStub(ch).Check(pb.CheckRequest(action=pb.EntityUid(type="Action", id="call"),
                                                         resource=pb.EntityUid(type="Tool", id="x")),
                                         metadata=[("authorization", f"Bearer {token.access_token}")], timeout=10)
        assert r.decision == pb.DECISION_ALLOW
        info = tpbg.TokensStub(ch).Introspect(tpb.IntrospectRequest(token=token.access_token), timeout=10)
        assert info.subject == A1
        # A verified bearer JWT of the external issuer names the caller over the peer certificate.
        jwt_md = [("authorization", f"Bearer {idp.sign(m.claims(sub='agent-7'))}")]
        token7 = _issue(ch, jwt_md).token
        assert tpbg.TokensStub(ch).Introspect(tpb.IntrospectRequest(token=token7.access_token),
                                             timeout=10).subject == "agent-7"
    with server.channel(client("a2", A2)) as ch:
        child = tpbg.TokensStub(ch).Exchange(tpb.ExchangeRequest(subject_token=token.access_token), timeout=10).token
        info = tpbg.TokensStub(ch).Introspect(tpb.IntrospectRequest(token=child.access_token), timeout=10)
        assert list(info.chain) == [A1, A2]


def test_a_refused_identity_gets_nothing(setup):
    server, client, idp = setup
    with server.channel(client("foreign", "spiffe://elsewhere.test/agent/x")) as ch:
        with pytest.raises(grpc.RpcError) as e:
            _issue(ch)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with server.channel(client("a1", A1)) as ch:
        forged = m.SigningKey("ES256", "idp-1").sign(m.claims(sub="agent-7"))  # right kid, wrong key
        with pytest.raises(grpc.RpcError) as e:
            _issue(ch, [("authorization", f"Bearer {forged}")])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
