"""The verified-token cache: a hit returns the same result without verifying again; entries end at exp and at a key change."""
import json

import pytest

import material as m
from authz.errors import IdentityError
from authz.identity import FileKeySet, Issuer, JwtVerifier, StaticKeySet
from authz.identity import jwt as jwt_mod


@pytest.fixture
def counted(monkeypatch):
    """Counts signature verifications."""
    calls = []
    real = jwt_mod._VERIFIERS["ES256"]

    class Counting:
        def verify(self, msg, key, sig):
            calls.append(1)
            return real.verify(msg, key, sig)

    monkeypatch.setitem(jwt_mod._VERIFIERS, "ES256", Counting())
    return calls


def test_cache_hit_returns_the_same_result(verifier, keys, clock, counted):
    token = keys["ES256"].sign(m.claims(now=clock.now))
    first = verifier.verify(token)
    assert len(counted) == 1
    for _ in range(3):
        assert verifier.verify(token) is first
    assert len(counted) == 1 and verifier.cache.hits == 3


def test_cache_entry_ends_at_exp(verifier, keys, clock, counted):
    token = keys["ES256"].sign(m.claims(now=clock.now, ttl=60))
    vt = verifier.verify(token)
    clock.now += 59.5
    assert verifier.verify(token) is vt and len(counted) == 1
    clock.now += 0.5  # exactly exp: the entry is gone; verified again (still inside the 30 s leeway)
    again = verifier.verify(token)
    assert again is not vt and len(counted) == 2
    clock.now += 30  # exp + leeway
    with pytest.raises(IdentityError) as info:
        verifier.verify(token)
    assert info.value.code == "token_expired" and len(verifier.cache) == 0


def test_failures_are_not_cached(verifier, keys, clock):
    token = keys["ES256"].sign(m.claims(now=clock.now, nbf=int(clock.now) + 100))
    with pytest.raises(IdentityError):
        verifier.verify(token)
    assert len(verifier.cache) == 0
    clock.now += 100
    assert verifier.verify(token).subject == "agent-1"


def test_cache_is_bounded(keys, clock):
    v = JwtVerifier([Issuer(StaticKeySet(m.jwks(keys["ES256"])), (m.AUDIENCE,), issuer=m.ISSUER)],
                    cache_size=3, clock=clock)
    tokens = [keys["ES256"].sign(m.claims(now=clock.now, jti=str(i))) for i in range(10)]
    for t in tokens:
        v.verify(t)
    assert len(v.cache) == 3
    assert v.verify(tokens[-1]) is v.verify(tokens[-1])


def test_cache_entry_ends_when_the_key_set_changes(tmp_path, keys, clock, counted):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(m.jwks(keys["ES256"])))
    v = JwtVerifier([Issuer(FileKeySet(str(path), check_interval_s=0), (m.AUDIENCE,), issuer=m.ISSUER)], clock=clock)
    token = keys["ES256"].sign(m.claims(now=clock.now))
    v.verify(token)
    v.verify(token)
    assert len(counted) == 1
    path.write_text(json.dumps(m.jwks(keys["EdDSA"])))  # the ES256 key is rotated out
    with pytest.raises(IdentityError) as info:
        v.verify(token)
    assert info.value.code == "token_unknown_kid"


def test_cache_discard(verifier, keys, clock, counted):
    token = keys["ES256"].sign(m.claims(now=clock.now))
    verifier.verify(token)
    verifier.cache.discard(jwt_mod.token_digest(token.encode()))
    verifier.verify(token)
    assert len(counted) == 2
