"""End to end: bearer JWTs behind the real Envoy; SPIFFE mTLS to `authz serve` (authz.v1) and from Envoy as a trusted PEP.

Keys and certificates are made here with `cryptography`; everything runs on 127.0.0.1.
"""
import json
import pathlib
import ssl
import sys

import grpc
import pytest

import material as m
from authz._pb import authz_pb2, authz_pb2_grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "server"))
from harness import AuthzServer, EchoUpstream, Envoy  # noqa: E402

ENVOY_ID = "spiffe://example.org/ns/mesh/sa/envoy"
PEP_ID = "spiffe://example.org/ns/mesh/sa/pep"
A1 = "spiffe://example.org/agent/a1"

POLICIES = r'''
@id("agent-tools")
permit(principal == Agent::"agent-1", action == Action::"GET", resource) when { context.http.path like "/tools/*" };

@id("task-claim")
permit(principal, action == Action::"POST", resource == Route::"/tasks")
when { context has jwt && context.jwt has task && context.jwt.task == "t-42" };

@id("public")
permit(principal == Anonymous::"anonymous", action == Action::"GET", resource == Route::"/public");

@id("mesh-a1")
permit(principal == Agent::"spiffe://example.org/agent/a1", action, resource == Route::"/mesh");

@id("v1-a1")
permit(principal == Agent::"spiffe://example.org/agent/a1", action == Action::"read", resource);

@id("v1-agent-1")
permit(principal == Agent::"agent-1", action == Action::"read", resource == Tool::"search");

@id("gateway-check-as")
permit(principal == Agent::"spiffe://example.org/gateway", action == Action::"authz::CheckAs",
       resource == Agent::"agent-1");
'''


class Pki:
    """A trust domain's CA, and the files of the certificates the tests use."""

    def __init__(self, folder: pathlib.Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = m.CertificateAuthority()
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self.ca.pem())

    def leaf(self, name, uris=(), dns=()):
        return m.write_leaf(self.folder, name, self.ca, uris, dns)

    def client(self, name, uris=(), dns=()):
        """(ca, cert, key) PEM bytes for a gRPC client."""
        cert, key = self.leaf(name, uris, dns)
        return self.ca.pem(), cert.read_bytes(), key.read_bytes()

    def ssl_context(self, name, uris=()) -> ssl.SSLContext:
        cert, key = self.leaf(name, uris)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.check_hostname = False  # the listener is 127.0.0.1; the chain is still verified
        ctx.load_cert_chain(str(cert), str(key))
        return ctx


@pytest.fixture(scope="module")
def signing_keys():
    return {alg: m.SigningKey(alg, f"e2e-{alg.lower()}") for alg in ("RS256", "ES256", "EdDSA")}


def write_setup(tmp, signing_keys, identity_toml: str) -> list:
    """Policies, JWKS and config in `tmp`; returns the `authz serve` arguments."""
    (tmp / "policies").mkdir()
    (tmp / "policies" / "policies.cedar").write_text(POLICIES)
    (tmp / "jwks.json").write_text(json.dumps(m.jwks(*signing_keys.values())))
    (tmp / "authz.toml").write_text(identity_toml)
    return ["--config", str(tmp / "authz.toml"), "--listen", "127.0.0.1:0", "--policies", str(tmp / "policies"),
            "--data-dir", str(tmp / "data")]


JWT_TOML = f'''
[[identity.jwt]]
issuer = "{m.ISSUER}"
audiences = ["{m.AUDIENCE}"]
jwks_file = "jwks.json"
algorithms = ["RS256", "ES256", "EdDSA"]
leeway_s = 5
'''


def reason(resp) -> str:
    status, _, body = resp
    assert status == 403, resp
    return json.loads(body)["reason"]


def test_envoy_bearer_tokens(tmp_path, signing_keys):
    server = AuthzServer(tmp_path, write_setup(tmp_path, signing_keys, JWT_TOML)).start()
    try:
        port = int(server.address.rsplit(":", 1)[1])
        with EchoUpstream() as upstream, Envoy(tmp_path, port, upstream.port) as envoy:
            def get(path, token=None, method="GET"):
                headers = {"authorization": f"Bearer {token}"} if token else {}
                return envoy.request(method, path, headers, b"" if method == "POST" else None)

            # A good token per algorithm: Agent::"agent-1" may GET /tools/*.
            for key in signing_keys.values():
                status, _, body = get("/tools/search", key.sign(m.claims(sub="agent-1")))
                assert status == 200, body
            # Another subject is verified but not permitted; no token = Anonymous.
            assert reason(get("/tools/search", signing_keys["ES256"].sign(m.claims(sub="agent-2")))) \
                == "no_permitting_policy"
            assert reason(get("/tools/search")) == "no_permitting_policy"
            assert get("/public")[0] == 200
            # Claims reach the policies as context.jwt.
            es = signing_keys["ES256"]
            assert get("/tasks", es.sign(m.claims(sub="agent-2", task="t-42")), "POST")[0] == 200
            assert reason(get("/tasks", es.sign(m.claims(sub="agent-2", task="t-7")), "POST")) == "no_permitting_policy"

            # A present but invalid token is a deny with its reason, whatever the policies say.
            good = m.claims(sub="agent-1")
            bad = {
                "token_expired": es.sign(m.claims(sub="agent-1", ttl=-60)),
                "token_not_yet_valid": es.sign(m.claims(sub="agent-1", nbf=int(good["iat"]) + 600)),
                "token_wrong_audience": es.sign(m.claims(sub="agent-1", aud="billing")),
                "token_wrong_issuer": es.sign(m.claims(sub="agent-1", iss="https://evil.test")),
                "token_alg_none": m.unsigned(good),
                "token_unknown_kid": es.sign(good, header={"kid": "nope"}),
                "token_bad_signature": m.tamper_payload(es.sign(good), sub="admin"),
                "token_too_large": es.sign(m.claims(sub="agent-1", pad="x" * 9000)),
                "token_malformed": "not-a-jwt",
            }
            hs = m.hs256_with_public_key(signing_keys["RS256"], good)
            assert reason(get("/tools/search", hs)) == "token_alg_hmac"
            seen = {}
            for code, token in bad.items():
                status, headers, body = get("/tools/search", token)
                assert status == 403 and json.loads(body)["reason"] == code, (code, body)
                seen[code] = json.loads(body)["decision_id"]

    finally:
        server.stop()
    log_text = (tmp_path / "data" / "decisions.jsonl").read_text()
    events = {e["decision_id"]: e for e in map(json.loads, log_text.splitlines())}
    for code, did in seen.items():
        assert events[did]["decision"] == "deny" and events[did]["reason"] == code
    # No token (nor its signature) in the decision log or the server's own log.
    for text in (log_text, server.stderr()):
        for token in list(bad.values()) + [hs]:
            signature = token.rsplit(".", 1)[-1]
            assert token not in text and (len(signature) < 16 or signature not in text)


def mtls_toml(pki_folder, trusted_peps) -> str:
    return f'''
[identity]
trusted_peps = {json.dumps(trusted_peps)}

[identity.mtls]
cert = "{pki_folder / 'authz.pem'}"
key = "{pki_folder / 'authz-key.pem'}"
client_ca = "{pki_folder / 'ca.pem'}"
trust_domains = ["{m.TRUST_DOMAIN}"]
''' + JWT_TOML


@pytest.mark.parametrize("envoy_trusted", [True, False], ids=["trusted-envoy", "untrusted-envoy"])
def test_envoy_as_a_trusted_pep_over_mtls(tmp_path, signing_keys, envoy_trusted):
    pki = Pki(tmp_path)
    pki.leaf("authz", uris=["spiffe://example.org/authz"], dns=["localhost"])
    envoy_cert, envoy_key = pki.leaf("envoy", uris=[ENVOY_ID], dns=["localhost"])
    listener_cert, listener_key = pki.leaf("listener", uris=["spiffe://example.org/ingress"], dns=["localhost"])
    peps = [ENVOY_ID] if envoy_trusted else [PEP_ID]
    server = AuthzServer(tmp_path, write_setup(tmp_path, signing_keys, mtls_toml(tmp_path, peps)),
                         tls=pki.client("probe", uris=["spiffe://example.org/probe"])).start()
    try:
        port = int(server.address.rsplit(":", 1)[1])
        with EchoUpstream() as upstream, Envoy(tmp_path, port, upstream.port,
                                               authz_tls=(envoy_cert, envoy_key, pki.ca_file),
                                               listener_tls=(listener_cert, listener_key, pki.ca_file)) as envoy:
            a1 = pki.ssl_context("a1", uris=[A1])
            a2 = pki.ssl_context("a2", uris=["spiffe://example.org/agent/a2"])
            two = pki.ssl_context("two", uris=[A1, "spiffe://example.org/agent/admin"])
            if envoy_trusted:
                # The client's SPIFFE id, as Envoy reports it, is the principal.
                assert envoy.request("GET", "/mesh", ssl_context=a1)[0] == 200
                assert reason(envoy.request("GET", "/mesh", ssl_context=a2)) == "no_permitting_policy"
                # Envoy passes the first URI SAN; the certificate it forwards shows there are two.
                assert reason(envoy.request("GET", "/mesh", ssl_context=two)) == "peer_cert_multiple_uris"
            else:
                # Envoy is not a trusted PEP: source.principal is ignored, the request is Anonymous.
                assert reason(envoy.request("GET", "/mesh", ssl_context=a1)) == "no_permitting_policy"
                assert envoy.request("GET", "/public", ssl_context=a1)[0] == 200
            # A bearer token still decides the principal.
            token = signing_keys["EdDSA"].sign(m.claims(sub="agent-1"))
            assert envoy.request("GET", "/tools/x", {"authorization": f"Bearer {token}"}, ssl_context=a2)[0] == 200
    finally:
        server.stop()


def _check(channel, principal=None, action="read", resource=("Tool", "search"), metadata=None):
    req = authz_pb2.CheckRequest(action=authz_pb2.EntityUid(type="Action", id=action),
                                 resource=authz_pb2.EntityUid(type=resource[0], id=resource[1]))
    if principal is not None:
        req.principal.CopyFrom(authz_pb2.EntityUid(type="Agent", id=principal))
    return authz_pb2_grpc.AuthorizerStub(channel).Check(req, metadata=metadata, timeout=10)


def test_v1_over_mtls_with_spiffe_certificates(tmp_path, signing_keys):
    pki = Pki(tmp_path)
    authz_cert, authz_key = pki.leaf("authz", uris=["spiffe://example.org/authz"], dns=["localhost"])
    args = write_setup(tmp_path, signing_keys, f'[identity]\ntrusted_peps = ["{PEP_ID}"]\n' + JWT_TOML)
    # The mTLS part from the flags.
    args += ["--tls-cert", str(authz_cert), "--tls-key", str(authz_key), "--client-ca", str(pki.ca_file),
             "--trust-domain", m.TRUST_DOMAIN]
    server = AuthzServer(tmp_path, args, tls=pki.client("probe", uris=["spiffe://example.org/probe"])).start()
    try:
        def call(client, *args, **kw):
            with server.channel(client) as ch:
                return _check(ch, *args, **kw)

        a1 = pki.client("a1", uris=[A1])
        r = call(a1)  # no principal: the peer's SPIFFE id is the principal
        assert r.decision == authz_pb2.DECISION_ALLOW and list(r.policies) == ["v1-a1"]
        r = call(a1, principal="agent-1")  # a plain caller may not name another principal
        assert r.decision == authz_pb2.DECISION_DENY and r.reason == "principal_not_allowed"
        assert call(a1, principal=A1).decision == authz_pb2.DECISION_ALLOW  # naming itself is fine

        pep = pki.client("pep", uris=[PEP_ID])
        assert call(pep, principal="agent-1").decision == authz_pb2.DECISION_ALLOW
        assert call(pep, principal="agent-1", resource=("Tool", "shell")).reason == "no_permitting_policy"

        gateway = pki.client("gateway", uris=["spiffe://example.org/gateway"])
        assert call(gateway, principal="agent-1").decision == authz_pb2.DECISION_ALLOW  # CheckAs permits it
        assert call(gateway, principal="agent-2").reason == "principal_not_allowed"

        # A bearer token (gRPC metadata) names the principal; a bad one denies with its reason.
        token = signing_keys["RS256"].sign(m.claims(sub="agent-1"))
        r = call(a1, metadata=(("authorization", f"Bearer {token}"),))
        assert r.decision == authz_pb2.DECISION_ALLOW and list(r.policies) == ["v1-agent-1"]
        expired = signing_keys["RS256"].sign(m.claims(sub="agent-1", ttl=-60))
        assert call(a1, metadata=(("authorization", f"Bearer {expired}"),)).reason == "token_expired"

        # Certificates the CA signed but that are not acceptable X.509-SVIDs.
        assert call(pki.client("two", uris=[A1, "spiffe://example.org/agent/admin"])).reason \
            == "peer_cert_multiple_uris"
        assert call(pki.client("dns", dns=["a1.example.org"])).reason == "peer_cert_not_spiffe"
        assert call(pki.client("evil", uris=["spiffe://evil.org/agent/a1"])).reason == "untrusted_trust_domain"

        # BatchCheck: one caller, its own and someone else's principal.
        with server.channel(a1) as ch:
            batch = authz_pb2.BatchCheckRequest(
                action=authz_pb2.EntityUid(type="Action", id="read"),
                resource=authz_pb2.EntityUid(type="Tool", id="search"),
                items=[authz_pb2.BatchCheckItem(),
                       authz_pb2.BatchCheckItem(principal=authz_pb2.EntityUid(type="Agent", id="agent-1"))])
            out = authz_pb2_grpc.AuthorizerStub(ch).BatchCheck(batch, timeout=10)
        assert [(x.decision, x.reason) for x in out.results] == [
            (authz_pb2.DECISION_ALLOW, ""), (authz_pb2.DECISION_DENY, "principal_not_allowed")]

        # No client certificate, or one from another CA: the handshake fails.
        other = Pki(tmp_path / "other")
        for client_tls in ((pki.ca.pem(), None, None), other.client("x", uris=[A1])):
            ca, cert, key = client_tls
            creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.pem(), private_key=key,
                                                 certificate_chain=cert)
            with grpc.secure_channel(server.address, creds,
                                     options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
                with pytest.raises(grpc.RpcError) as info:
                    _check(ch, metadata=None)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plain text is refused as well.
        with grpc.insecure_channel(server.address) as ch:
            with pytest.raises(grpc.RpcError):
                _check(ch)
    finally:
        server.stop()
