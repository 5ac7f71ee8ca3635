"""The console with identity configured ([[identity.jwt]] and [identity.mtls], `trusted_peps` naming a
reverse proxy): a bearer JWT the worker verifies, passed on by the proxy (its client certificate proves
it), signs the request in as Operator::"<sub>" without a cookie; the same token from any other client, a
token that does not verify, or the proxy without a token signs nobody in; a POST still needs its CSRF
token; operator keys keep working beside it, and the policies decide for either."""
from __future__ import annotations

import http.client
import json
import re
import sys
import urllib.parse

import pytest
from consolekit import HERE, ConsoleServer, add_operator

sys.path.insert(0, str(HERE.parent / "identity"))
import material as m  # noqa: E402
from test_identity_e2e import Pki  # noqa: E402

PROXY = "spiffe://example.org/ns/edge/sa/proxy"
POLICY = '''
@id("reviewers")
permit(principal in Team::"reviewers", action == Action::"authz::Revoke", resource is Task);
'''
ENTITIES = [{"uid": {"type": "Operator", "id": "alice"}, "attrs": {},
             "parents": [{"type": "Team", "id": "reviewers"}]},
            {"uid": {"type": "Team", "id": "reviewers"}, "attrs": {}, "parents": []}]


@pytest.fixture(scope="module")
def signing_key():
    return m.SigningKey("ES256", "console-es256")


@pytest.fixture(scope="module")
def server(tmp_path_factory, signing_key):
    tmp = tmp_path_factory.mktemp("console-identity")
    (tmp / "policies").mkdir()
    (tmp / "policies" / "p.cedar").write_text(POLICY)
    (tmp / "policies" / "entities.json").write_text(json.dumps(ENTITIES))
    (tmp / "jwks.json").write_text(json.dumps(m.jwks(signing_key)))
    (tmp / "authz.toml").write_text(f'''
[identity]
trusted_peps = ["{PROXY}"]

[[identity.jwt]]
issuer = "{m.ISSUER}"
audiences = ["{m.AUDIENCE}"]
jwks_file = "jwks.json"
algorithms = ["ES256"]
''')
    pki = Pki(tmp / "pki")
    cert, key = pki.leaf("authz", uris=["spiffe://example.org/authz"], dns=["localhost"])
    bob_key = add_operator(tmp / "data", "bob")
    s = ConsoleServer(tmp, ["--config", str(tmp / "authz.toml"), "--listen", "127.0.0.1:0", "--http-listen",
                            "127.0.0.1:0", "--policies", str(tmp / "policies"), "--data-dir", str(tmp / "data"),
                            "--tls-cert", str(cert), "--tls-key", str(key), "--client-ca", str(pki.ca_file),
                            "--trust-domain", m.TRUST_DOMAIN])
    s.tls = pki.client("probe", uris=["spiffe://example.org/probe"])
    s.start()
    s.bob_key = bob_key
    s.proxy = pki.ssl_context("proxy", uris=[PROXY])
    s.other = pki.ssl_context("other", uris=["spiffe://example.org/ns/agents/sa/a1"])
    yield s
    s.stop()


def request(server, method, path, headers=None, body=None, tls=None):
    host, _, port = server.http_address.rpartition(":")
    c = http.client.HTTPSConnection(host, int(port), timeout=10, context=tls or server.proxy)
    try:
        c.request(method, "/console" + path, body, headers or {})
        r = c.getresponse()
        headers = {k.lower(): v for k, v in r.getheaders()}
        headers["set-cookie"] = "\n".join(v for k, v in r.getheaders() if k.lower() == "set-cookie")
        return r.status, headers, r.read().decode()
    finally:
        c.close()


def test_the_proxy_passes_on_a_verified_bearer_token(server, signing_key):
    token = signing_key.sign(m.claims(sub="alice"))
    status, _, body = request(server, "GET", "/approvals", {"Authorization": f"Bearer {token}"})
    assert status == 200 and 'Operator::"alice"' in body
    csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    form = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = request(server, "POST", "/revocations", form,
                              urllib.parse.urlencode({"kind": "task", "value": "t-9", "csrf": csrf}))
    assert status == 200 and "Revoked task t-9" in body
    # The same form without its CSRF token: refused (the proxy adds the header to any request).
    status, _, _ = request(server, "POST", "/revocations", form,
                           urllib.parse.urlencode({"kind": "task", "value": "t-10"}))
    assert status == 403
    status, _, body = request(server, "GET", "/revocations", {"Authorization": f"Bearer {token}"})
    assert "t-9" in body and "t-10" not in body


def test_nothing_else_signs_in_by_bearer(server, signing_key):
    good = signing_key.sign(m.claims(sub="alice"))
    other_key = m.SigningKey("ES256", "console-es256")  # the same kid, another key
    cases = [({"Authorization": f"Bearer {good}"}, server.other),  # not the proxy
             ({"Authorization": f"Bearer {m.tamper_payload(good, sub='root')}"}, None),
             ({"Authorization": f"Bearer {other_key.sign(m.claims(sub='alice'))}"}, None),
             ({"Authorization": f"Bearer {signing_key.sign(m.claims(sub='alice', iss='https://x.example'))}"}, None),
             ({"Authorization": "Basic YWxpY2U6eA=="}, None),
             ({}, None)]  # the proxy's own identity is no operator
    for headers, tls in cases:
        status, answer, _ = request(server, "GET", "/approvals", headers, tls=tls)
        assert status == 303 and answer["location"] == "/console/login", headers


def test_operator_keys_work_beside_identity_and_the_policies_decide(server):
    status, headers, body = request(server, "GET", "/login", tls=server.other)
    pre = re.search(r"authz_console_pre=([^;]+)", headers["set-cookie"]).group(1)
    assert "Secure" in headers["set-cookie"]  # served over TLS
    csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    status, headers, _ = request(server, "POST", "/login",
                                 {"Content-Type": "application/x-www-form-urlencoded",
                                  "Cookie": f"authz_console_pre={pre}"},
                                 urllib.parse.urlencode({"csrf": csrf, "name": "bob", "key": server.bob_key}),
                                 tls=server.other)
    cookie_header = [c for c in headers["set-cookie"].split("\n") if c.startswith("authz_console=")][0]
    assert status == 303 and all(f in cookie_header for f in ("HttpOnly", "SameSite=Strict", "Secure"))
    cookie = re.search(r"authz_console=([^;]+)", cookie_header).group(1)
    status, _, body = request(server, "GET", "/revocations", {"Cookie": f"authz_console={cookie}"},
                              tls=server.other)
    assert status == 200 and 'Operator::"bob"' in body
    csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    status, _, body = request(server, "POST", "/revocations",
                              {"Cookie": f"authz_console={cookie}",
                               "Content-Type": "application/x-www-form-urlencoded"},
                              urllib.parse.urlencode({"kind": "task", "value": "t-11", "csrf": csrf}),
                              tls=server.other)
    assert status == 403 and "may not revoke" in body  # bob is no reviewer
