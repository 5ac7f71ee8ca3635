"""AuthZEN over HTTP, who may ask: development mode only on loopback; otherwise a PEP authenticates (bearer JWT,
mTLS client certificate) and naming another subject is a trusted PEP's permission, as for authz.v1."""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys

import material as m
import pytest

from authzenkit import POLICIES, HttpAuthzServer, serve_args
from harness import env_with_repo, wait_until

PEP_ID = "spiffe://example.org/ns/mesh/sa/pep"
A1 = "spiffe://example.org/agent/a1"
A1_POLICY = f'''
@id("a1-reads")
permit(principal == Agent::"{A1}", action == Action::"read", resource == Doc::"d1");

@id("agent-1-reads")
permit(principal == Agent::"agent-1", action == Action::"read", resource == Doc::"d1");

@id("cleared-reads")
permit(principal is Agent, action == Action::"read", resource == Doc::"d1")
when {{ principal has clearance && principal.clearance > 2 }};
'''


def test_off_loopback_without_identity_refuses_to_start(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "authz.server", *serve_args(tmp_path)[:2],
                           "--http-listen", "0.0.0.0:0", "--policies", str(POLICIES),
                           "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=60, env=env_with_repo(), cwd=tmp_path)
    assert proc.returncode == 2
    assert "`http_listen` `0.0.0.0:0` is not a loopback address and no identity is configured" in proc.stderr


def test_a_busy_http_port_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "authz.server", "--listen", "127.0.0.1:0",
                               "--http-listen", f"127.0.0.1:{port}", "--policies", str(POLICIES),
                               "--data-dir", str(tmp_path / "data")],
                              capture_output=True, text=True, timeout=60, env=env_with_repo(), cwd=tmp_path)
    assert proc.returncode == 1 and "already in use" in proc.stderr


@pytest.fixture(scope="module")
def keys():
    return m.SigningKey("ES256", "authzen-es256")


def _identity_server(tmp, keys, identity_toml: str, *extra) -> HttpAuthzServer:
    (tmp / "policies").mkdir()
    (tmp / "policies" / "p.cedar").write_text(A1_POLICY)
    (tmp / "jwks.json").write_text(json.dumps(m.jwks(keys)))
    (tmp / "authz.toml").write_text(identity_toml + f'''
[[identity.jwt]]
issuer = "{m.ISSUER}"
audiences = ["{m.AUDIENCE}"]
jwks_file = "jwks.json"
algorithms = ["ES256"]
''')
    return HttpAuthzServer(tmp, ["--config", str(tmp / "authz.toml"), "--listen", "127.0.0.1:0",
                                 "--http-listen", "127.0.0.1:0", "--policies", str(tmp / "policies"),
                                 "--data-dir", str(tmp / "data"), *extra])


def _ask(subject_id, action="read"):
    return {"subject": {"type": "Agent", "id": subject_id}, "action": {"name": action},
            "resource": {"type": "Doc", "id": "d1"}}


def test_bearer_tokens(tmp_path, keys):
    server = _identity_server(tmp_path, keys, "").start()
    c = server.client()
    try:
        # No credentials, a malformed, a forged or an expired token: 401, nothing decided.
        for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer not.a.jwt"},
                        {"Authorization": f"Bearer {m.tamper_signature(keys.sign(m.claims(sub='agent-1')))}"},
                        {"Authorization": f"Bearer {keys.sign(m.claims(sub='agent-1', ttl=-60))}"}):
            status, h, doc = c.evaluation(_ask("agent-1"), headers)
            assert status == 401 and h["www-authenticate"] == "Bearer" and doc["message"], (headers, doc)
            assert c.evaluations({**_ask("agent-1"), "evaluations": [{}]}, headers)[0] == 401
        auth = {"Authorization": f"Bearer {keys.sign(m.claims(sub='agent-1'))}"}
        # Asking for itself: allowed by its policy.
        assert c.evaluation(_ask("agent-1"), auth)[2] == {"decision": True}
        # Naming another subject is a PEP's permission: refused, with the reason.
        status, _, doc = c.evaluation(_ask(A1), auth)
        assert status == 200 and doc["decision"] is False and doc["context"]["reason"] == "principal_not_allowed"
        doc = c.evaluations({"action": {"name": "read"}, "resource": {"type": "Doc", "id": "d1"},
                             "evaluations": [{"subject": {"type": "Agent", "id": "agent-1"}},
                                             {"subject": {"type": "Agent", "id": A1}}]}, auth)[2]
        assert doc["evaluations"][0] == {"decision": True}
        assert doc["evaluations"][1]["context"]["reason"] == "principal_not_allowed"
        # Properties rewrite entities (its own among them): a PEP's to send, not a plain caller's.
        for body in ({**_ask("agent-1"), "subject": {"type": "Agent", "id": "agent-1", "properties": {"x": 1}}},
                     {**_ask("agent-1"), "resource": {"type": "Doc", "id": "d1", "properties": {"owner": "me"}}}):
            doc = c.evaluation(body, auth)[2]
            assert doc["decision"] is False and doc["context"]["reason"] == "properties_not_allowed"
        # Its token's claims are context.jwt; a context.jwt it sends is not believed.
        assert c.evaluation({**_ask("agent-1"), "context": {"jwt": {"sub": A1}}}, auth)[2] == {"decision": True}
    finally:
        c.close()
        server.stop()
    log = (tmp_path / "data" / "decisions.jsonl").read_text().splitlines()
    lines = [json.loads(x) for x in log]
    assert {x["api"] for x in lines} == {"authzen"}
    assert [x["decision"] for x in lines if x["principal"] == f'Agent::"{A1}"'] == ["deny", "deny"]


def test_mtls_and_trusted_peps(tmp_path, keys):
    sys.path.insert(0, str(tmp_path))  # noqa - nothing imported from there; Pki lives in the identity tests
    from test_identity_e2e import Pki

    pki = Pki(tmp_path / "pki")
    cert, key = pki.leaf("authz", uris=["spiffe://example.org/authz"], dns=["localhost"])
    server = _identity_server(tmp_path, keys, f'[identity]\ntrusted_peps = ["{PEP_ID}"]\n',
                              "--tls-cert", str(cert), "--tls-key", str(key), "--client-ca", str(pki.ca_file),
                              "--trust-domain", m.TRUST_DOMAIN)
    server.tls = pki.client("probe", uris=["spiffe://example.org/probe"])
    server.start()
    try:
        a1 = server.client(pki.ssl_context("a1", uris=[A1]))
        assert a1.evaluation(_ask(A1))[2] == {"decision": True}  # its certificate's SPIFFE id
        assert a1.evaluation(_ask("agent-1"))[2]["context"]["reason"] == "principal_not_allowed"
        a1.close()
        pep = server.client(pki.ssl_context("pep", uris=[PEP_ID]))
        assert pep.evaluation(_ask("agent-1"))[2] == {"decision": True}  # a trusted PEP names the subject
        assert pep.evaluation(_ask("agent-2"))[2] == {"decision": False}
        # A PEP sends properties: the stored entity (none here) overlaid for that request.
        body = {**_ask("agent-2"), "subject": {"type": "Agent", "id": "agent-2", "properties": {"clearance": 3}}}
        assert pep.evaluation(body)[2] == {"decision": True}
        assert pep.evaluation(_ask("agent-2"))[2] == {"decision": False}
        pep.close()
        evil = server.client(pki.ssl_context("evil", uris=["spiffe://evil.org/agent/a1"]))
        status, _, doc = evil.evaluation(_ask(A1))
        assert status == 401 and doc["message"].startswith("untrusted_trust_domain")
        evil.close()
        # The HTTPS metadata names an https base.
        c = server.client(pki.ssl_context("a1b", uris=[A1]))
        doc = c.request("GET", "/.well-known/authzen-configuration")[2]
        assert doc["policy_decision_point"] == f"https://{server.http_address}"
        c.close()
        # A rotated server certificate is served to the next handshakes.
        new_cert, _ = pki.leaf("authz", uris=["spiffe://example.org/authz"], dns=["localhost"])
        new_der = ssl.PEM_cert_to_DER_cert(new_cert.read_text())
        host, _, port = server.http_address.rpartition(":")

        def served_cert():
            ctx = pki.ssl_context("probe2", uris=[A1])
            with socket.create_connection((host, int(port)), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.getpeercert(binary_form=True)

        wait_until(lambda: served_cert() == new_der, 15, "the rotated certificate")
        c = server.client(pki.ssl_context("a1c", uris=[A1]))
        assert c.evaluation(_ask(A1))[2] == {"decision": True}
        c.close()
    finally:
        server.stop()
