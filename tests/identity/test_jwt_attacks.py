"""JwtVerifier: good tokens per algorithm, and each attack refused with its own stable reason code."""
import base64
import json

import pytest

import material as m
from authz.errors import IdentityError
from authz.identity import Issuer, JwtVerifier, StaticKeySet


def refused(verifier, token) -> IdentityError:
    with pytest.raises(IdentityError) as info:
        verifier.verify(token)
    text = token.decode() if isinstance(token, bytes) else token
    assert not text or text not in str(info.value)  # a token never reaches a message
    return info.value


def now_claims(clock, **kw):
    return m.claims(now=clock.now, **kw)


# -- good tokens ---------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA", "PS256", "ES384"])
def test_good_token_verifies(verifier, keys, clock, alg):
    token = keys[alg].sign(now_claims(clock, sub="agent-7", scope="read"))
    vt = verifier.verify(token)
    assert (vt.subject, vt.issuer, vt.kid, vt.alg) == ("agent-7", m.ISSUER, keys[alg].kid, alg)
    assert vt.claims["scope"] == "read" and vt.expires_at == clock.now + 300


def test_good_token_with_audience_list_and_bytes(verifier, keys, clock):
    token = keys["EdDSA"].sign(now_claims(clock, aud=["other", m.AUDIENCE]))
    assert verifier.verify(token.encode()).subject == "agent-1"


def test_good_jwt_svid(verifier, bundle_file, clock):
    _, svid_key = bundle_file
    sub = f"spiffe://{m.TRUST_DOMAIN}/ns/agents/sa/a1"
    vt = verifier.verify(svid_key.sign(now_claims(clock, sub=sub, iss=None)))
    assert vt.subject == sub and vt.trust_domain == m.TRUST_DOMAIN and vt.issuer == f"spiffe://{m.TRUST_DOMAIN}"


def test_clock_skew_within_leeway_is_accepted(verifier, keys, clock):
    token = keys["ES256"].sign(now_claims(clock, ttl=-10, nbf=int(clock.now) + 10))  # expired 10 s ago, nbf in 10 s
    assert verifier.verify(token).subject == "agent-1"


# -- each attack, its reason ---------------------------------------------------------------------

def test_expired(verifier, keys, clock):
    e = refused(verifier, keys["RS256"].sign(now_claims(clock, ttl=-31)))
    assert e.code == "token_expired"


def test_not_yet_valid(verifier, keys, clock):
    e = refused(verifier, keys["RS256"].sign(now_claims(clock, nbf=int(clock.now) + 31)))
    assert e.code == "token_not_yet_valid"


def test_issued_in_the_future(verifier, keys, clock):
    e = refused(verifier, keys["RS256"].sign(now_claims(clock, iat=int(clock.now) + 600)))
    assert e.code == "token_not_yet_valid"


def test_wrong_audience(verifier, keys, clock):
    e = refused(verifier, keys["ES256"].sign(now_claims(clock, aud=["billing", "mail"])))
    assert e.code == "token_wrong_audience"


def test_missing_audience(verifier, keys, clock):
    e = refused(verifier, keys["ES256"].sign(now_claims(clock, aud=None)))
    assert e.code == "token_wrong_audience"


def test_wrong_issuer(verifier, keys, clock):
    e = refused(verifier, keys["ES256"].sign(now_claims(clock, iss="https://evil.test")))
    assert e.code == "token_wrong_issuer"


def test_alg_none(verifier, clock):
    e = refused(verifier, m.unsigned(now_claims(clock)))
    assert e.code == "token_alg_none" and "`none`" in str(e)


def test_hs256_signed_with_the_rsa_public_key(verifier, keys, clock):
    e = refused(verifier, m.hs256_with_public_key(keys["RS256"], now_claims(clock)))
    assert e.code == "token_alg_hmac" and "`HS256`" in str(e)


def test_algorithm_outside_the_issuers_allow_list(keys, clock):
    only_es256 = JwtVerifier([Issuer(StaticKeySet(m.jwks(*keys.values())), (m.AUDIENCE,), issuer=m.ISSUER,
                                     algorithms=("ES256",))], clock=clock)
    assert only_es256.verify(keys["ES256"].sign(now_claims(clock))).alg == "ES256"
    e = refused(only_es256, keys["RS256"].sign(now_claims(clock)))
    assert e.code == "token_alg_not_allowed" and "https://idp.test" in str(e)


def test_key_of_another_family_named_by_kid(verifier, keys, clock):
    # RS256 signature, but the kid names the issuer's EC key: the key decides what it verifies.
    token = keys["RS256"].sign(now_claims(clock), header={"kid": keys["ES256"].kid})
    assert refused(verifier, token).code == "token_key_mismatch"


def test_key_that_names_its_algorithm_verifies_only_that(keys, clock):
    pinned = dict(keys["RS256"].jwk, alg="RS256")
    v = JwtVerifier([Issuer(StaticKeySet({"keys": [pinned]}), (m.AUDIENCE,), issuer=m.ISSUER)], clock=clock)
    assert v.verify(keys["RS256"].sign(now_claims(clock))).alg == "RS256"
    assert refused(v, keys["RS256"].sign(now_claims(clock), alg="PS256")).code == "token_key_mismatch"


def test_unknown_kid(verifier, keys, clock):
    e = refused(verifier, keys["ES256"].sign(now_claims(clock), header={"kid": "rotated-away"}))
    assert e.code == "token_unknown_kid" and "rotated-away" in str(e)


def test_missing_kid(verifier, keys, clock):
    assert refused(verifier, keys["ES256"].sign(now_claims(clock), header={"kid": None})).code == "token_unknown_kid"


def test_tampered_payload(verifier, keys, clock):
    token = keys["EdDSA"].sign(now_claims(clock, sub="agent-1"))
    assert refused(verifier, m.tamper_payload(token, sub="admin")).code == "token_bad_signature"


def test_tampered_signature(verifier, keys, clock):
    token = keys["ES256"].sign(now_claims(clock))
    assert refused(verifier, m.tamper_signature(token)).code == "token_bad_signature"


def test_oversized_token(verifier, keys, clock):
    token = keys["ES256"].sign(now_claims(clock, padding="x" * 9000))
    assert refused(verifier, token).code == "token_too_large"
    assert refused(verifier, token.encode()).code == "token_too_large"


def test_token_from_an_untrusted_trust_domain(verifier, clock):
    foreign = m.SigningKey("ES256", "svid-1")  # same kid as the trusted bundle's key, other trust domain
    token = foreign.sign(now_claims(clock, sub="spiffe://evil.org/ns/agents/sa/a1", iss=None))
    assert refused(verifier, token).code == "untrusted_trust_domain"


def test_jwt_svid_with_an_invalid_spiffe_subject(verifier, bundle_file, clock):
    _, svid_key = bundle_file
    token = svid_key.sign(now_claims(clock, sub=f"spiffe://{m.TRUST_DOMAIN}/a/../b", iss=None))
    assert refused(verifier, token).code == "token_bad_subject"


def test_jwt_svid_key_does_not_sign_for_the_oidc_issuer(verifier, bundle_file, clock):
    _, svid_key = bundle_file
    assert refused(verifier, svid_key.sign(now_claims(clock))).code == "token_unknown_kid"


@pytest.mark.parametrize("name, value", [("crit", ["exp"]), ("jku", "https://evil.test/jwks"),
                                         ("x5u", "https://evil.test/c"), ("x5c", ["MIIB"]),
                                         ("jwk", {"kty": "OKP"}), ("b64", False), ("zip", "DEF")])
def test_dangerous_header(verifier, keys, clock, name, value):
    e = refused(verifier, keys["ES256"].sign(now_claims(clock), header={name: value}))
    assert e.code == "token_header_not_allowed" and f"`{name}`" in str(e)


def test_token_type(keys, clock):
    v = JwtVerifier([Issuer(StaticKeySet(m.jwks(keys["ES256"])), (m.AUDIENCE,), issuer=m.ISSUER,
                            types=("at+jwt",))], clock=clock)
    for typ in ("JWT", "jose", "AT+JWT", None):
        assert v.verify(keys["ES256"].sign(now_claims(clock, jti=str(typ)), header={"typ": typ})).subject
    assert refused(v, keys["ES256"].sign(now_claims(clock), header={"typ": "id+jwt"})).code == "token_wrong_type"


def test_oidc_issuer_cannot_assert_a_spiffe_id(verifier, keys, clock):
    token = keys["ES256"].sign(now_claims(clock, sub=f"spiffe://{m.TRUST_DOMAIN}/ns/agents/sa/a1"))
    e = refused(verifier, token)
    assert e.code == "token_bad_subject" and "may not assert" in str(e)
    allowed = JwtVerifier([Issuer(StaticKeySet(m.jwks(keys["ES256"])), (m.AUDIENCE,), issuer=m.ISSUER,
                                  subject_trust_domains=(m.TRUST_DOMAIN,))], clock=clock)
    assert allowed.verify(token).subject.startswith("spiffe://")
    assert refused(allowed, keys["ES256"].sign(now_claims(clock, sub="spiffe://other.org/a"))).code \
        == "token_bad_subject"


def test_missing_exp(verifier, keys, clock):
    assert refused(verifier, keys["ES256"].sign(now_claims(clock, exp=None))).code == "token_missing_claim"


def test_missing_sub(verifier, keys, clock):
    assert refused(verifier, keys["ES256"].sign(now_claims(clock, sub=None))).code == "token_missing_claim"


def _segment(doc) -> str:
    return base64.urlsafe_b64encode(doc if isinstance(doc, bytes) else json.dumps(doc).encode()).rstrip(b"=").decode()


def _replace(token: str, index: int, segment: str) -> str:
    parts = token.split(".")
    parts[index] = segment
    return ".".join(parts)


_MALFORMED = {
    "two-parts": lambda t, k, c: t.rsplit(".", 1)[0],
    "five-parts-jwe": lambda t, k, c: t + ".e30.e30",
    "not-base64url": lambda t, k, c: "!" + t,
    "header-not-json": lambda t, k, c: _replace(t, 0, _segment(b"not json")),
    "header-not-object": lambda t, k, c: _replace(t, 0, _segment(b'["alg"]')),
    "duplicate-alg": lambda t, k, c: _replace(t, 0, _segment(b'{"alg":"ES256","alg":"none","kid":"k-es256"}')),
    "payload-nan": lambda t, k, c: _replace(t, 1, _segment(b'{"exp":NaN}')),
    "signed-exp-not-a-number": lambda t, k, c: k.sign(now_claims(c, exp="soon")),
    "signed-aud-not-strings": lambda t, k, c: k.sign(now_claims(c, aud=[1, 2])),
    "non-canonical-base64": lambda t, k, c: t[:-1] + {"A": "B", "Q": "R", "g": "h", "w": "x"}[t[-1]],
    "empty": lambda t, k, c: "",
    "non-ascii": lambda t, k, c: "é" + t,
    "empty-header": lambda t, k, c: _replace(t, 0, ""),
}


@pytest.mark.parametrize("variant", sorted(_MALFORMED))
def test_malformed(verifier, keys, clock, variant):
    # An ES256 signature is 64 bytes: its last base64url character carries 4 unused low bits.
    token = keys["ES256"].sign(now_claims(clock))
    bad = _MALFORMED[variant](token, keys["ES256"], clock)
    assert bad != token
    assert refused(verifier, bad).code == "token_malformed"


def test_huge_numbers_are_malformed_not_crashes(verifier, keys, clock):
    for claim in ("exp", "nbf", "iat"):
        token = keys["ES256"].sign(now_claims(clock, **{claim: 10 ** 40}))
        assert refused(verifier, token).code == "token_malformed"


def test_attack_reasons_are_stable_codes():
    codes = {"token_expired", "token_not_yet_valid", "token_wrong_audience", "token_wrong_issuer",
             "token_alg_not_allowed", "token_alg_none", "token_alg_hmac", "token_unknown_kid", "token_bad_signature",
             "token_too_large",
             "untrusted_trust_domain", "token_malformed", "token_header_not_allowed", "token_key_mismatch"}
    import authz.identity.jwt as j
    import authz.identity.spiffe as s

    exported = {v for k, v in vars(j).items() if k.startswith("TOKEN_") and isinstance(v, str)}
    exported |= {v for k, v in vars(s).items() if k.isupper() and isinstance(v, str) and "_" in v and " " not in v
                 and not v.startswith("spiffe:")}
    assert codes <= exported
