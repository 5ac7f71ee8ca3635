"""The [identity] table and the mTLS flags of `authz serve`: parsing, relative paths, refusals."""
import json

import pytest

import material as m
from authz.server.config import ConfigError, load_config


@pytest.fixture
def files(tmp_path):
    k = m.SigningKey("EdDSA", "k1")
    (tmp_path / "jwks.json").write_text(json.dumps(m.jwks(k)))
    (tmp_path / "bundle.json").write_text(json.dumps(m.spiffe_bundle(k)))
    ca = m.CertificateAuthority()
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    m.write_leaf(tmp_path, "server", ca, uris=["spiffe://example.org/authz"], dns=["localhost"])
    return tmp_path


def load(tmp_path, text, **flags):
    f = tmp_path / "authz.toml"
    f.write_text(text)
    return load_config(str(f), flags)


FULL = '''
[[identity.jwt]]
issuer = "https://idp.test"
audiences = ["authz"]
jwks_file = "jwks.json"
algorithms = ["EdDSA", "ES256"]
leeway_s = 10

[[identity.jwt]]
trust_domain = "example.org"
audiences = ["authz"]
jwks_file = "bundle.json"

[identity]
trusted_peps = ["spiffe://example.org/ns/mesh/sa/envoy"]

[identity.mtls]
cert = "server.pem"
key = "server-key.pem"
client_ca = "ca.pem"
trust_domains = ["example.org"]
'''


def test_full_identity_table(files):
    cfg = load(files, FULL)
    s = cfg.identity_settings
    assert not cfg.development_mode and not s.development_mode
    assert [j.issuer or j.trust_domain for j in s.jwt] == ["https://idp.test", "example.org"]
    assert s.jwt[0].algorithms == ("EdDSA", "ES256") and s.jwt[0].leeway_s == 10.0
    assert s.jwt[0].jwks_file == str(files / "jwks.json")  # relative to the config file
    assert s.mtls.cert == str(files / "server.pem") and s.mtls.trust_domains == ("example.org",)
    assert s.trusted_peps == ("spiffe://example.org/ns/mesh/sa/envoy",)


def test_no_identity_is_development_mode():
    cfg = load_config(None, {})
    assert cfg.development_mode and cfg.identity_settings.development_mode


def test_mtls_flags(files):
    cfg = load_config(None, {"tls_cert": str(files / "server.pem"), "tls_key": str(files / "server-key.pem"),
                             "client_ca": str(files / "ca.pem"), "trust_domains": ("example.org",)})
    assert cfg.identity_settings.mtls.client_ca == str(files / "ca.pem") and not cfg.development_mode
    with pytest.raises(ConfigError, match="trust_domains"):
        load_config(None, {"tls_cert": str(files / "server.pem"), "tls_key": str(files / "server-key.pem"),
                           "client_ca": str(files / "ca.pem")})


@pytest.mark.parametrize("text, message", [
    ('[[identity.jwt]]\nissuer = "i"\naudiences = ["a"]\njwks_file = "none.json"\n', "is not a readable file"),
    ('[[identity.jwt]]\nissuer = "i"\naudiences = ["a"]\njwks_file = "jwks.json"\nalgorithms = ["none"]\n',
     "`none` is not allowed"),
    ('[[identity.jwt]]\nissuer = "i"\naudiences = ["a"]\njwks_file = "jwks.json"\nalgorithms = ["HS256"]\n',
     "`HS256` is not allowed"),
    ('[[identity.jwt]]\nissuer = "i"\naudiences = []\njwks_file = "jwks.json"\n', "audiences` must be a non-empty"),
    ('[[identity.jwt]]\naudiences = ["a"]\njwks_file = "jwks.json"\n', "needs `issuer`"),
    ('[[identity.jwt]]\ntrust_domain = "Example.org"\naudiences = ["a"]\njwks_file = "jwks.json"\n',
     "not a trust domain name"),
    ('[[identity.jwt]]\nissuer = "i"\naudiences = ["a"]\njwks_file = "jwks.json"\nleeway_s = 3600\n', "leeway_s"),
    ('[[identity.jwt]]\nissuer = "i"\naudiences = ["a"]\njwks_file = "jwks.json"\nurl = "x"\n', "unknown option"),
    ('[[identity.jwt]]\nissuer = "i"\naudiences = ["a"]\njwks_file = "jwks.json"\n'
     '[[identity.jwt]]\nissuer = "i"\naudiences = ["b"]\njwks_file = "jwks.json"\n', "same `issuer`"),
    ('[[identity.jwt]]\nissuer = "i"\naudiences = ["a"]\njwks_file = "ca.pem"\n', "not a JSON document"),
    ('[identity]\ntrusted_peps = ["spiffe://example.org"]\n', "no path"),
    ('[identity]\nmax_token_bytes = 10\n', "max_token_bytes"),
    ('[identity]\nbogus = 1\n', "unknown option `identity.bogus`"),
    ('[identity.mtls]\ncert = "server.pem"\nkey = "server-key.pem"\ntrust_domains = ["example.org"]\n', "client_ca"),
])
def test_identity_errors(files, text, message):
    with pytest.raises(ConfigError, match=message):
        load(files, text)
