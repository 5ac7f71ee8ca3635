"""TokenConfig: the `[tokens]` table of the serve config, its defaults and validation."""
from __future__ import annotations

import dataclasses

from authz.errors import AuthzError
from authz.jsonterms import shown

DEFAULT_ISSUER = "authz"
MAX_TTL_CEILING_S = 24 * 3600  # no configuration can make a task token live longer than a day


class TokenConfigError(AuthzError):
    """The `[tokens]` configuration is invalid."""

    code = "config_error"


@dataclasses.dataclass(frozen=True)
class TokenConfig:
    """Task token settings; every field is a `[tokens]` key."""

    issuer: str = DEFAULT_ISSUER         # `iss` of our tokens; routes a bearer token to our verifier
    audience: str = ""                   # `aud` of our tokens; "" = the issuer
    max_ttl_s: int = 900                 # cap on a token's lifetime (requested TTLs are cut to it)
    max_delegation_depth: int = 4        # exchanges in one chain (root token = depth 0)
    leeway_s: int = 5                    # clock skew tolerated on exp / nbf / iat
    max_token_bytes: int = 16384         # bigger bearer tokens are refused unparsed
    max_scope_entries: int = 32          # patterns per scope side (actions, resources)
    cache_size: int = 10000              # verified tokens remembered per worker
    max_revocations: int = 100000        # live revocation entries (Revoke fails beyond)
    max_revocations_per_caller: int = 1000  # entries charged to one caller (default 1% of max_revocations)
    max_task_chars: int = 256            # task ids and agent ids
    key_check_interval_s: float = 1.0    # how often a worker looks for rotated keys

    @property
    def aud(self) -> str:
        return self.audience or self.issuer

    @classmethod
    def from_dict(cls, table: dict | None) -> "TokenConfig":
        """Validate a `[tokens]` table; TokenConfigError names the first bad key."""
        table = dict(table or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in table:
            if key not in fields:
                raise TokenConfigError(f"unknown option `tokens.{key}`")
        for key, value in table.items():
            kind = fields[key].type
            if kind == "str":
                if not isinstance(value, str):
                    raise TokenConfigError(f"`tokens.{key}` must be a string, not {shown(value)}")
            elif kind == "int":
                if isinstance(value, float) and value.is_integer():
                    table[key] = value = int(value)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise TokenConfigError(f"`tokens.{key}` must be a positive integer, not {shown(value)}")
            else:  # float
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise TokenConfigError(f"`tokens.{key}` must be a positive number, not {shown(value)}")
                table[key] = float(value)
        if "max_revocations_per_caller" not in table and "max_revocations" in table:
            table["max_revocations_per_caller"] = max(1, table["max_revocations"] // 100)
        cfg = cls(**table)
        if not cfg.issuer or len(cfg.issuer) > 256 or not cfg.issuer.isprintable():
            raise TokenConfigError("`tokens.issuer` must be 1 to 256 printable characters")
        if len(cfg.audience) > 256 or not cfg.audience.isprintable():
            raise TokenConfigError("`tokens.audience` must be at most 256 printable characters")
        if cfg.max_ttl_s > MAX_TTL_CEILING_S:
            raise TokenConfigError(f"`tokens.max_ttl_s` must be at most {MAX_TTL_CEILING_S}")
        if cfg.leeway_s > 300:
            raise TokenConfigError("`tokens.leeway_s` must be at most 300")
        if cfg.max_delegation_depth > 32:
            raise TokenConfigError("`tokens.max_delegation_depth` must be at most 32")
        if cfg.max_scope_entries > 256:
            raise TokenConfigError("`tokens.max_scope_entries` must be at most 256")
        if cfg.max_revocations_per_caller > cfg.max_revocations:
            raise TokenConfigError("`tokens.max_revocations_per_caller` must be at most `tokens.max_revocations`")
        if not 1024 <= cfg.max_token_bytes <= 1 << 20:
            raise TokenConfigError("`tokens.max_token_bytes` must be between 1024 and 1048576")
        return cfg
