"""Key sets fetched by URL from a real local IdP (HTTP and HTTPS on 127.0.0.1): discovery, rotation on an unknown
kid, the refetch bound under a flood of unknown kids, HTTP caching, faults, the last good keys up to max_stale_s.

The key sets get a settable clock, so the min_refresh_s and max_stale_s steps are exact; the fetches are real.
"""
import email.message
import json
import socket
import uuid

import pytest

import material as m
from authz.errors import IdentityError
from authz.identity import Issuer, JwtVerifier, RemoteKeySet, RemoteSource
from authz.identity.fetch import Fetcher, FetchError, cache_lifetime, check_url
from conftest import Clock
from idp import DISCOVERY_PATH, JWKS_PATH, Idp

MIN_REFRESH_S = 30.0


@pytest.fixture
def key_a():
    return m.SigningKey("ES256", "key-a")


@pytest.fixture
def key_b():
    return m.SigningKey("EdDSA", "key-b")


@pytest.fixture
def idp(key_a):
    with Idp(m.jwks(key_a)) as server:
        yield server


@pytest.fixture
def opened():
    """Opens RemoteKeySets and JwtVerifiers over them (a settable clock each); closes the key sets after the test."""
    made = []

    def open_(url, clock=None, discovery=False, issuer=m.ISSUER, **options):
        options.setdefault("read_timeout_s", 2.0)
        options.setdefault("min_refresh_s", MIN_REFRESH_S)
        clock = clock or Clock(1000.0)
        keys = RemoteKeySet(RemoteSource(url, discovery, **options), clock=clock)
        made.append(keys)
        verifier = JwtVerifier([Issuer(keys, (m.AUDIENCE,), issuer=issuer)], cache_size=100)
        return keys, verifier, clock

    yield open_
    for keys in made:
        keys.close()


def code_of(verifier, token) -> str:
    try:
        verifier.verify(token)
    except IdentityError as e:
        return e.code
    return "verified"


def token(key, **claims) -> str:
    return key.sign(m.claims(**claims))


def test_jwks_uri_verifies_tokens_and_follows_a_rotation_on_an_unknown_kid(idp, opened, key_a, key_b):
    keys, verifier, clock = opened(idp.jwks_url)
    assert code_of(verifier, token(key_a)) == "verified"  # the first token waits for the first fetch
    assert idp.count() == 1
    idp.jwks = m.jwks(key_b)  # the IdP rotates: key-a is gone, key-b is new
    new = token(key_b)
    assert code_of(verifier, new) == "token_unknown_kid"  # a fetch started < min_refresh_s ago: none now
    assert idp.count() == 1
    clock.now += MIN_REFRESH_S
    assert code_of(verifier, new) == "verified"  # the unknown kid made the request wait for a refetch
    assert idp.count() == 2
    assert code_of(verifier, token(key_a)) == "token_unknown_kid"  # and the retired key no longer verifies


def test_a_flood_of_unknown_kids_fetches_at_most_once_per_min_refresh_s(idp, opened, key_a):
    keys, verifier, clock = opened(idp.jwks_url)
    assert code_of(verifier, token(key_a)) == "verified"

    def flood(n=200):
        codes = {code_of(verifier, key_a.sign(m.claims(), header={"kid": uuid.uuid4().hex})) for _ in range(n)}
        assert codes == {"token_unknown_kid"}

    counts = []
    for step in (0, MIN_REFRESH_S, MIN_REFRESH_S / 2, MIN_REFRESH_S / 2, 1):
        clock.now += step
        flood()
        counts.append(idp.count())
    assert counts == [1, 2, 2, 3, 3]
    assert code_of(verifier, token(key_a)) == "verified"


def test_discovery_over_https_with_a_private_ca(tmp_path, opened, key_a):
    ca = m.CertificateAuthority()
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    with Idp(m.jwks(key_a), ca=ca, folder=tmp_path) as idp:
        keys, verifier, _ = opened(idp.url, discovery=True, issuer=idp.url, ca_file=str(tmp_path / "ca.pem"))
        assert code_of(verifier, token(key_a, iss=idp.url)) == "verified"
        assert (idp.count(DISCOVERY_PATH), idp.count(JWKS_PATH)) == (1, 1)

        # Certificates are verified: without the private CA the system's CAs do not trust this IdP.
        untrusted, verifier2, _ = opened(idp.jwks_url, issuer=idp.url)
        assert code_of(verifier2, token(key_a, iss=idp.url)) == "jwks_unavailable"
        assert "certificate not trusted" in untrusted.last_error


@pytest.mark.parametrize("issuer_suffix, jwks_uri, message", [
    ("/", None, "names issuer"),                      # the issuer must match exactly, trailing slash included
    ("", "http://192.0.2.1/jwks", "http:// is allowed only for loopback hosts"),
    ("", "ftp://127.0.0.1/jwks", "is not an https:// URL"),
])
def test_discovery_documents_that_are_refused(tmp_path, opened, key_a, issuer_suffix, jwks_uri, message):
    with Idp(m.jwks(key_a)) as idp:
        idp.issuer = idp.url + issuer_suffix
        if jwks_uri:
            idp.discovery_overrides["jwks_uri"] = jwks_uri
        keys, verifier, _ = opened(idp.url, discovery=True, issuer=idp.url)
        assert code_of(verifier, token(key_a, iss=idp.url)) == "jwks_unavailable"
        assert message in keys.last_error
        assert idp.count(JWKS_PATH) == 0


@pytest.mark.parametrize("fault, message", [
    ("500", "answered HTTP 500"),
    ("hang", "timed out"),
    ("drip", "timed out"),                 # every byte within the read timeout, the whole body not
    ("huge", "larger than 1048576 bytes"),
    ("huge_streamed", "larger than 1048576 bytes"),
    ("invalid", "not a JSON document"),
    ("redirect", "redirects are not followed"),
])
def test_faults_keep_the_last_good_keys_until_max_stale_s(idp, opened, key_a, fault, message):
    idp.cache_control[JWKS_PATH] = "max-age=100"
    keys, verifier, clock = opened(idp.jwks_url, read_timeout_s=0.3, cache_min_s=0, max_stale_s=500)
    good = token(key_a)
    assert code_of(verifier, good) == "verified" and keys.lifetime_s == 100
    idp.faults[JWKS_PATH] = fault
    # Past the keys' lifetime and min_refresh_s: an unknown kid asks for a fetch, which fails.
    clock.now += 150
    assert code_of(verifier, key_a.sign(m.claims(), header={"kid": "unknown"})) == "token_unknown_kid"
    assert idp.count() == 2 and message in keys.last_error
    # The last good keys still count until max_stale_s after their lifetime ended (100 + 500 s)...
    clock.now += 449
    assert code_of(verifier, good) == "verified"
    # ... then the issuer's tokens are refused, cached ones included, each time the fetch fails.
    clock.now += 1
    assert code_of(verifier, good) == "jwks_unavailable"
    assert code_of(verifier, token(key_a)) == "jwks_unavailable"
    assert idp.count() == 3
    # The IdP recovers: the next request past min_refresh_s fetches again.
    idp.faults.clear()
    clock.now += MIN_REFRESH_S
    assert code_of(verifier, good) == "verified"
    assert idp.count() == 4


def test_no_good_fetch_yet_is_jwks_unavailable(idp, opened, key_a):
    idp.faults[JWKS_PATH] = "500"
    keys, verifier, clock = opened(idp.jwks_url)
    try:
        verifier.verify(token(key_a))
    except IdentityError as e:
        assert e.code == "jwks_unavailable" and "answered HTTP 500" in str(e)
    else:
        raise AssertionError("verified without keys")
    idp.faults.clear()
    assert code_of(verifier, token(key_a)) == "jwks_unavailable"  # min_refresh_s not passed: no new fetch
    clock.now += MIN_REFRESH_S
    assert code_of(verifier, token(key_a)) == "verified"


def test_max_age_is_honoured(idp, opened, key_a):
    """A real clock: with max-age=1 the refresher fetches again by itself (no token asks for it)."""
    import time

    idp.cache_control[JWKS_PATH] = "max-age=1"
    keys, verifier, _ = opened(idp.jwks_url, clock=time.monotonic, cache_min_s=0, min_refresh_s=1)
    assert code_of(verifier, token(key_a)) == "verified"
    assert keys.lifetime_s == 1
    deadline = time.monotonic() + 30
    while idp.count() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert idp.count() >= 3


@pytest.mark.parametrize("header, cache_min_s, cache_max_s, expected", [
    ("max-age=120", 60, 3600, 120),
    ("max-age=5", 60, 3600, 60),           # the floor
    ("max-age=999999", 60, 3600, 3600),    # the ceiling
    ("no-store", 60, 3600, 60),
    (None, 0, 3600, 300),                  # no caching headers: 300 s
])
def test_cache_lifetime_within_floor_and_ceiling(idp, opened, key_a, header, cache_min_s, cache_max_s, expected):
    if header:
        idp.cache_control[JWKS_PATH] = header
    keys, verifier, _ = opened(idp.jwks_url, cache_min_s=cache_min_s, cache_max_s=cache_max_s)
    assert code_of(verifier, token(key_a)) == "verified"
    assert keys.lifetime_s == expected


def headers(**values) -> email.message.Message:
    msg = email.message.Message()
    for name, value in values.items():
        msg[name.replace("_", "-")] = value
    return msg


@pytest.mark.parametrize("given, expected", [
    ({"Cache_Control": "public, max-age=600"}, 600.0),
    ({"Cache_Control": "max-age=600", "Age": "100"}, 500.0),
    ({"Cache_Control": "no-cache, max-age=600"}, 0.0),
    ({"Cache_Control": "max-age=oops"}, 0.0),
    ({"Expires": "Thu, 01 Jan 2026 00:10:00 GMT", "Date": "Thu, 01 Jan 2026 00:00:00 GMT"}, 600.0),
    ({"Expires": "0", "Date": "Thu, 01 Jan 2026 00:00:00 GMT"}, 0.0),
    ({"Cache_Control": "max-age=60", "Expires": "Thu, 01 Jan 2026 00:10:00 GMT"}, 60.0),
    ({}, None),
])
def test_cache_lifetime_headers(given, expected):
    assert cache_lifetime(headers(**given)) == expected


@pytest.mark.parametrize("url, message", [
    ("http://idp.example/jwks", "only for loopback hosts"),
    ("http://10.0.0.1/jwks", "only for loopback hosts"),
    ("http://user:secret@127.0.0.1/jwks", "user name or password"),
    ("https://idp.example/jwks#x", "fragment"),
    ("file:///etc/passwd", "not an https:// URL"),
    ("https:///jwks", "no host"),
    ("https://idp.example:99999/jwks", "invalid port"),
    ("https://idp.example/a b", "spaces"),
])
def test_urls_that_are_refused(url, message):
    with pytest.raises(FetchError, match=message) as info:
        check_url(url)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/jwks", "http://127.9.9.9/x", "http://[::1]:8080/x",
                                 "http://localhost/x", "https://idp.example/jwks?a=b"])
def test_urls_that_are_accepted(url):
    check_url(url)


def test_a_refused_connection_is_a_fetch_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(FetchError, match="cannot connect"):
            Fetcher(1.0, 1.0).get(f"http://127.0.0.1:{port}/jwks")


def test_messages_show_no_query(idp):
    idp.faults[JWKS_PATH] = "500"
    with pytest.raises(FetchError) as info:
        Fetcher(1.0, 1.0).get(idp.jwks_url + "?token=s3cret")
    assert "s3cret" not in str(info.value) and JWKS_PATH in str(info.value)


def test_the_jwks_is_parsed_as_a_file_would_be(idp, opened, key_a):
    """The same rules as jwks_file: private material and duplicate kids are refused, a SPIFFE bundle read as such."""
    idp.jwks = {"keys": [dict(key_a.jwk, d="AAAA")]}
    keys, verifier, _ = opened(idp.jwks_url)
    assert code_of(verifier, token(key_a)) == "token_unknown_kid" and keys.kids() == []
    idp.jwks = json.loads(json.dumps({"keys": [key_a.jwk, key_a.jwk]}))
    keys2, verifier2, _ = opened(idp.jwks_url)
    assert code_of(verifier2, token(key_a)) == "jwks_unavailable" and "appears twice" in keys2.last_error
