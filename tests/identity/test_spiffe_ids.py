"""SPIFFE ids (SPIFFE-ID spec rules) and the SPIFFE id of a peer certificate (X509-SVID rules), each refusal with its reason."""
import pytest

import material as m
from authz.errors import IdentityError
from authz.identity import parse_spiffe_id, spiffe_id_from_certificate

TRUSTED = {m.TRUST_DOMAIN}


@pytest.mark.parametrize("text, td, path", [
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://example.org/ns/default/sa/agent", "example.org", "/ns/default/sa/agent"),
    ("spiffe://a-b_c.9/A.b-C_d", "a-b_c.9", "/A.b-C_d"),
    ("spiffe://10.0.0.1/x", "10.0.0.1", "/x"),
])
def test_valid_ids(text, td, path):
    sid = parse_spiffe_id(text)
    assert (sid.trust_domain, sid.path, str(sid)) == (td, path, text)


@pytest.mark.parametrize("text", [
    "", "example.org/a", "SPIFFE://example.org/a", "spiffe:/example.org/a", "https://example.org/a",
    "spiffe://", "spiffe:///a", "spiffe://Example.org/a", "spiffe://exa mple.org/a", "spiffe://ex%41.org/a",
    "spiffe://example.org:8080/a", "spiffe://user@example.org/a", "spiffe://[::1]/a",
    "spiffe://example.org/", "spiffe://example.org//a", "spiffe://example.org/a/", "spiffe://example.org/./a",
    "spiffe://example.org/a/..", "spiffe://example.org/a?b=c", "spiffe://example.org/a#f",
    "spiffe://example.org/a%2Fb", "spiffe://example.org/é", "spiffe://" + "a" * 256 + "/x",
    "spiffe://example.org/" + "a" * 2048,
])
def test_invalid_ids(text):
    with pytest.raises(IdentityError) as info:
        parse_spiffe_id(text)
    assert info.value.code == "spiffe_id_invalid"


def test_leaf_ids_need_a_path():
    with pytest.raises(IdentityError, match="no path"):
        parse_spiffe_id("spiffe://example.org", require_path=True)


@pytest.fixture(scope="module")
def ca():
    return m.CertificateAuthority()


def reason(cert) -> str:
    with pytest.raises(IdentityError) as info:
        spiffe_id_from_certificate(cert, TRUSTED)
    return info.value.code


def test_certificate_with_one_spiffe_uri_san(ca):
    cert, _ = ca.issue(uris=["spiffe://example.org/agent/a1"], dns=["a1.local"])
    for form in (cert, m.cert_pem(cert), m.cert_pem(cert).decode()):
        assert str(spiffe_id_from_certificate(form, TRUSTED)) == "spiffe://example.org/agent/a1"


def test_certificate_with_two_uri_sans(ca):
    cert, _ = ca.issue(uris=["spiffe://example.org/agent/a1", "spiffe://example.org/agent/admin"])
    assert reason(cert) == "peer_cert_multiple_uris"


def test_certificate_with_a_non_spiffe_uri_san(ca):
    cert, _ = ca.issue(uris=["https://example.org/agent/a1"])
    assert reason(cert) == "peer_cert_not_spiffe"


def test_certificate_with_only_a_dns_san(ca):
    cert, _ = ca.issue(dns=["agent.example.org"])
    assert reason(cert) == "peer_cert_not_spiffe"


def test_certificate_with_an_uppercase_trust_domain(ca):
    cert, _ = ca.issue(uris=["spiffe://Example.org/agent/a1"])  # grpcio's peer_spiffe_id accepts this one
    assert reason(cert) == "peer_cert_not_spiffe"


def test_certificate_naming_only_a_trust_domain(ca):
    cert, _ = ca.issue(uris=["spiffe://example.org"])
    assert reason(cert) == "peer_cert_not_spiffe"


def test_certificate_from_an_untrusted_trust_domain(ca):
    cert, _ = ca.issue(uris=["spiffe://evil.org/agent/a1"])
    assert reason(cert) == "untrusted_trust_domain"


def test_ca_certificate_is_not_a_leaf(ca):
    cert, _ = ca.issue(uris=["spiffe://example.org/agent/a1"], ca=True)
    assert reason(cert) == "peer_cert_invalid"
    cert, _ = ca.issue(uris=["spiffe://example.org/agent/a1"], key_cert_sign=True)
    assert reason(cert) == "peer_cert_invalid"


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", None])
def test_unparseable_certificate(data):
    assert reason(data) == "peer_cert_invalid"
