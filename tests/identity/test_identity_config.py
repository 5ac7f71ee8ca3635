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


REMOTE = '''
[[identity.jwt]]
issuer = "https://idp.test"
audiences = ["authz"]
jwks_uri = "https://idp.test/keys?tenant=1"
ca_file = "ca.pem"
min_refresh_s = 5
max_stale_s = 600
cache_max_s = 900

[[identity.jwt]]
issuer = "http://127.0.0.1:8080/realms/a"
audiences = ["authz"]
discovery = true
'''


def test_fetched_key_sets(files):
    a, b = load(files, REMOTE).identity_settings.jwt
    assert a.jwks_file == "" and a.remote.url == "https://idp.test/keys?tenant=1" and not a.remote.discovery
    assert a.remote.ca_file == str(files / "ca.pem")  # relative to the config file
    assert (a.remote.min_refresh_s, a.remote.max_stale_s, a.remote.cache_max_s) == (5.0, 600.0, 900.0)
    assert a.remote.cache_min_s == 60.0 and a.remote.read_timeout_s == 5.0  # defaults
    assert b.remote.discovery and b.remote.discovery_url == "http://127.0.0.1:8080/realms/a/.well-known/openid-configuration"


def jwt_table(**options) -> str:
    lines = ['[[identity.jwt]]', 'audiences = ["a"]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("options, message", [
    ({"issuer": "i", "jwks_uri": "http://idp.example/jwks"}, "http:// is allowed only for loopback hosts"),
    ({"issuer": "http://10.1.2.3", "discovery": True}, r"`identity.jwt\[0\].issuer`: .*only for loopback hosts"),
    ({"issuer": "i", "jwks_file": "jwks.json", "jwks_uri": "https://idp.test/jwks"},
     "exactly one of `jwks_file`, `jwks_uri` or `discovery = true` \\(it has `jwks_file` and `jwks_uri`\\)"),
    ({"issuer": "https://idp.test", "jwks_uri": "https://idp.test/jwks", "discovery": True}, "exactly one of"),
    ({"issuer": "i"}, "exactly one of"),
    ({"trust_domain": "example.org", "discovery": True}, "discovery` needs `issuer`"),
    ({"issuer": "i", "discovery": "yes"}, "must be true or false"),
    ({"issuer": "i", "jwks_file": "jwks.json", "min_refresh_s": 5}, "applies to `jwks_uri` or `discovery` only"),
    ({"issuer": "i", "jwks_uri": "https://u:p@idp.test/jwks"}, "user name or password"),
    ({"issuer": "i", "jwks_uri": "https://idp.test/jwks", "min_refresh_s": 0}, "min_refresh_s` must be a number"),
    ({"issuer": "i", "jwks_uri": "https://idp.test/jwks", "read_timeout_s": 600}, "read_timeout_s` must be"),
    ({"issuer": "i", "jwks_uri": "https://idp.test/jwks", "cache_min_s": 900, "cache_max_s": 60},
     "cache_min_s` \\(900\\) is above `cache_max_s` \\(60\\)"),
    ({"issuer": "i", "jwks_uri": "https://idp.test/jwks", "ca_file": "absent.pem"}, "is not a readable file"),
    ({"issuer": "i", "jwks_uri": "https://idp.test/jwks", "ca_file": "jwks.json"}, "cannot load CA file"),
])
def test_fetched_key_set_errors(files, options, message):
    with pytest.raises(ConfigError, match=message):
        load(files, jwt_table(**options))


@pytest.mark.parametrize("options, message", [
    ({"issuer": "i", "jwks_uri": "http://idp.example/jwks"}, "http:// is allowed only for loopback hosts"),
    ({"issuer": "i", "jwks_file": "jwks.json", "jwks_uri": "https://idp.test/jwks"}, "exactly one of"),
    ({"trust_domain": "example.org", "discovery": True}, "discovery` needs `issuer`"),
])
def test_serve_refuses_them_with_exit_2_and_one_line(files, options, message):
    import subprocess
    import sys

    (files / "authz.toml").write_text(jwt_table(**options))
    proc = subprocess.run([sys.executable, "-m", "authz.server", "--config", str(files / "authz.toml"),
                           "--listen", "127.0.0.1:0", "--data-dir", str(files / "data")],
                          capture_output=True, text=True, timeout=60, cwd=files)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("authz serve: error: `identity.jwt[0]") and message in lines[0]
