"""The `[tokens]` table: defaults, bounds, and an issuer of its own."""
import pytest

from authz.server.config import ConfigError, load_config
from authz.tokens.config import TokenConfig, TokenConfigError


def test_defaults():
    cfg = TokenConfig.from_dict({})
    assert (cfg.issuer, cfg.aud, cfg.max_ttl_s, cfg.max_delegation_depth) == ("authz", "authz", 900, 4)
    assert TokenConfig.from_dict({"issuer": "https://authz.example", "max_ttl_s": 60.0}).max_ttl_s == 60


@pytest.mark.parametrize("table", [
    {"nope": 1}, {"max_ttl_s": 0}, {"max_ttl_s": 10**6}, {"max_ttl_s": "900"}, {"max_delegation_depth": True},
    {"issuer": ""}, {"issuer": 5}, {"leeway_s": 3600}, {"max_token_bytes": 10}, {"key_check_interval_s": -1},
    {"max_revocations": 10, "max_revocations_per_caller": 11}, {"max_revocations_per_caller": 0},
])
def test_bad_tables_are_refused(table):
    with pytest.raises(TokenConfigError):
        TokenConfig.from_dict(table)


def test_serve_config_validates_tokens(tmp_path):
    path = tmp_path / "authz.toml"
    path.write_text("[tokens]\nmax_ttl_s = -5\n")
    with pytest.raises(ConfigError, match="max_ttl_s"):
        load_config(str(path), {})
    path.write_text('[tokens]\nissuer = "https://idp.test"\n\n[[identity.jwt]]\nissuer = "https://idp.test"\n'
                    'audiences = ["authz"]\njwks_file = "jwks.json"\n')
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    with pytest.raises(ConfigError, match="issuer of their own"):
        load_config(str(path), {})


def test_a_callers_share_of_the_revocation_set_defaults_to_one_percent():
    assert TokenConfig().max_revocations_per_caller == 1000
    assert TokenConfig.from_dict({"max_revocations": 200}).max_revocations_per_caller == 2
    assert TokenConfig.from_dict({"max_revocations": 50}).max_revocations_per_caller == 1
    explicit = TokenConfig.from_dict({"max_revocations": 200, "max_revocations_per_caller": 40})
    assert explicit.max_revocations_per_caller == 40
