"""Key sets: JWKS and SPIFFE bundle files, which keys count, reload on change (at most once per interval), bad files."""
import json
import os

import pytest

import material as m
from authz.errors import IdentityError
from authz.identity import FileKeySet, StaticKeySet, parse_jwks


class Ticks:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def write(path, doc, mtime_ns=None):
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_spiffe_bundle_uses_only_jwt_svid_keys(keys):
    ca = m.CertificateAuthority()
    bundle = m.spiffe_bundle(keys["ES256"], x509_ca=ca.cert)
    bundle["keys"].append(dict(keys["EdDSA"].jwk))          # no `use`: not a JWT-SVID key in a bundle
    bundle["keys"].append(dict(keys["RS256"].jwk, use="sig"))
    got = parse_jwks(json.dumps(bundle).encode())
    assert list(got) == [keys["ES256"].kid]
    assert got[keys["ES256"].kid].algorithms == {"ES256"}


def test_jwks_keys_that_do_not_count(keys):
    import base64

    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    small = RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
                                as_dict=True)
    doc = {"keys": [
        dict(keys["ES256"].jwk),                                   # counts
        dict(keys["EdDSA"].jwk, use="enc"),                        # encryption key
        dict(keys["ES384"].jwk, d="AAAA"),                         # private material
        {"kty": "oct", "kid": "hmac", "k": base64.urlsafe_b64encode(b"secret").decode()},  # symmetric
        dict(small, kid="small"),                                  # RSA < 2048 bits
        dict(keys["RS256"].jwk, alg="HS256"),                      # names a forbidden algorithm
        dict(keys["PS256"].jwk, alg="ES256"),                      # algorithm that does not fit the key
        {k: v for k, v in keys["RS256"].jwk.items() if k != "kid"},  # no kid
        {"kty": "EC", "crv": "P-256", "kid": "broken", "x": "AA", "y": "AA"},  # not a curve point
    ]}
    assert list(parse_jwks(json.dumps(doc).encode())) == [keys["ES256"].kid]


def test_rsa_key_without_alg_verifies_every_rsa_algorithm(keys):
    got = parse_jwks(json.dumps(m.jwks(keys["RS256"])).encode())
    assert got[keys["RS256"].kid].algorithms == {"RS256", "RS384", "RS512", "PS256"}


@pytest.mark.parametrize("text, message", [
    ("not json", "not a JSON document"),
    ('{"keys": {}}', "needs a `keys` array"),
    ('[1]', "needs a `keys` array"),
    ('{"keys": [1]}', "must be an object"),
    ('{"keys": [], "keys": []}', "duplicate member"),
])
def test_bad_documents(text, message):
    with pytest.raises(IdentityError, match=message) as info:
        parse_jwks(text.encode())
    assert info.value.code == "jwks_invalid"


def test_duplicate_kid_is_refused(keys):
    doc = {"keys": [keys["ES256"].jwk, dict(keys["EdDSA"].jwk, kid=keys["ES256"].kid)]}
    with pytest.raises(IdentityError, match="appears twice"):
        parse_jwks(json.dumps(doc).encode())


def test_bundle_map_picks_the_trust_domain(keys):
    doc = {"trust_domains": {"a.org": m.spiffe_bundle(keys["ES256"]), "b.org": m.spiffe_bundle(keys["EdDSA"])}}
    assert list(parse_jwks(json.dumps(doc).encode(), trust_domain="b.org")) == [keys["EdDSA"].kid]
    with pytest.raises(IdentityError):
        parse_jwks(json.dumps(doc).encode(), trust_domain="c.org")


def test_static_key_set(keys):
    ks = StaticKeySet(m.jwks(keys["EdDSA"]))
    assert ks.get(keys["EdDSA"].kid).algorithms == {"EdDSA"} and ks.get("nope") is None


def test_missing_or_bad_file_fails_at_start(tmp_path):
    with pytest.raises(IdentityError, match="cannot read key set"):
        FileKeySet(str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(IdentityError, match="not a JSON document"):
        FileKeySet(str(bad))


def test_file_reloaded_on_change_at_most_once_per_interval(tmp_path, keys):
    path = tmp_path / "jwks.json"
    write(path, m.jwks(keys["ES256"]), 1_000_000_000)
    ticks = Ticks()
    ks = FileKeySet(str(path), check_interval_s=1.0, clock=ticks)
    assert ks.get(keys["ES256"].kid) and ks.version == 1
    write(path, m.jwks(keys["EdDSA"]), 2_000_000_000)
    ticks.now = 0.5
    assert ks.get(keys["ES256"].kid) is not None  # not checked yet
    ticks.now = 1.0
    assert ks.get(keys["ES256"].kid) is None and ks.get(keys["EdDSA"].kid) is not None
    assert ks.version == 2
    ticks.now = 2.5
    assert ks.current_version() == 2  # unchanged file: no reload


def test_bad_new_version_keeps_the_previous_keys(tmp_path, keys):
    path = tmp_path / "jwks.json"
    write(path, m.jwks(keys["ES256"]), 1_000_000_000)
    ticks = Ticks()
    ks = FileKeySet(str(path), check_interval_s=1.0, clock=ticks)
    write(path, '{"keys": [', 2_000_000_000)  # a writer caught mid-write
    ticks.now = 1
    assert ks.get(keys["ES256"].kid) is not None and ks.version == 1
    path.unlink()
    ticks.now = 2
    assert ks.get(keys["ES256"].kid) is not None
    write(path, m.jwks(keys["EdDSA"]), 3_000_000_000)
    ticks.now = 3
    assert ks.get(keys["EdDSA"].kid) is not None and ks.get(keys["ES256"].kid) is None
