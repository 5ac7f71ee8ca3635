"""Fixtures for the identity tests: signing keys, key-set files and a verifier trusting them (helpers in material.py)."""
import json

import pytest

import material as m
from authz.identity import FileKeySet, Issuer, JwtVerifier, StaticKeySet


class Clock:
    """A settable clock (seconds)."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def keys():
    """One signing key per algorithm family the tests use, by algorithm."""
    return {alg: m.SigningKey(alg, f"k-{alg.lower()}") for alg in ("RS256", "PS256", "ES256", "ES384", "EdDSA")}


@pytest.fixture
def bundle_file(tmp_path, keys):
    """A SPIFFE bundle of TRUST_DOMAIN with one jwt-svid key (ES256) and an x509-svid authority."""
    ca = m.CertificateAuthority()
    svid_key = m.SigningKey("ES256", "svid-1")
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(m.spiffe_bundle(svid_key, x509_ca=ca.cert)))
    return path, svid_key


@pytest.fixture
def clock():
    return Clock(1_800_000_000.0)


@pytest.fixture
def verifier(keys, bundle_file, clock):
    """Trusts ISSUER (all test keys, every allowed algorithm) and the JWT-SVIDs of TRUST_DOMAIN."""
    path, _ = bundle_file
    oidc = Issuer(StaticKeySet(m.jwks(*keys.values())), (m.AUDIENCE,), issuer=m.ISSUER, leeway_s=30)
    svid = Issuer(FileKeySet(str(path), check_interval_s=0), (m.AUDIENCE,), trust_domain=m.TRUST_DOMAIN,
                  algorithms=("ES256", "ES384", "RS256"))
    return JwtVerifier([oidc, svid], clock=clock)
