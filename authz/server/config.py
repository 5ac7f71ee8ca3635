"""ServeConfig: every `authz serve` option, its default, the TOML file that sets it and validation."""
from __future__ import annotations

import dataclasses
import pathlib
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from authz.errors import AuthzError

BUNDLED_POLICIES = pathlib.Path(__file__).resolve().parent.parent / "examples" / "policies"
DEFAULT_LISTEN = "127.0.0.1:9191"
DEFAULT_DATA_DIR = "authz-data"


class ConfigError(AuthzError):
    """The serve configuration (file or flags) is invalid."""

    code = "config_error"


@dataclasses.dataclass
class ServeConfig:
    """All options of `authz serve`; the `[server]` table of the TOML file uses the same names."""

    listen: str = DEFAULT_LISTEN
    workers: int = 1
    data_dir: str = DEFAULT_DATA_DIR
    db: str = ""                      # default: <data_dir>/authz.lmdb
    policies: str = ""                # watched and recompiled on change; "" = serve `db` as it is
    metrics_listen: str = ""          # "" = no metrics endpoint
    decision_log: str | None = None   # None = <data_dir>/decisions.jsonl; "" = off
    decision_log_queue: int = 10000   # events buffered per worker before new ones are dropped
    reload_interval_s: float = 0.25   # how often the policies folder is scanned
    drain_s: float = 5.0              # grace period for in-flight RPCs on SIGTERM
    max_message_bytes: int = 4 * 1024 * 1024
    max_batch_size: int = 1000        # BatchCheck items and JSON-RPC batch entries
    max_headers: int = 256            # HTTP headers in one Envoy CheckRequest
    max_header_bytes: int = 64 * 1024  # sum of header name and value lengths
    max_context_depth: int = 32       # nesting of context records and sets
    max_concurrent_streams: int = 0   # per connection; 0 = grpc default
    max_connection_age_s: float = 0   # 0 = unlimited; a limit rebalances long-lived Envoy connections
    identity: dict = dataclasses.field(default_factory=dict)   # [identity]; verified by the identity issue
    tokens: dict = dataclasses.field(default_factory=dict)     # [tokens]

    @property
    def db_path(self) -> str:
        """The LMDB index path."""
        return self.db or str(pathlib.Path(self.data_dir) / "authz.lmdb")

    @property
    def decision_log_path(self) -> str:
        """The decision log path, "" when the log is off."""
        if self.decision_log is None:
            return str(pathlib.Path(self.data_dir) / "decisions.jsonl")
        return self.decision_log

    @property
    def development_mode(self) -> bool:
        """No identity verification is configured: principals are taken from requests as given."""
        return not self.identity.get("jwt") and not self.identity.get("mtls")

    def validate(self) -> "ServeConfig":
        """Check every option once; raise ConfigError naming the first bad one."""
        parse_hostport(self.listen, "listen")
        if self.metrics_listen:
            parse_hostport(self.metrics_listen, "metrics_listen")
        positive = ("workers", "decision_log_queue", "max_message_bytes", "max_batch_size",
                    "max_headers", "max_header_bytes", "max_context_depth")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{name}` must be a positive integer, not `{value!r}`")
        for name in ("reload_interval_s", "drain_s", "max_connection_age_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"`{name}` must be a number >= 0, not `{value!r}`")
        if self.max_concurrent_streams < 0:
            raise ConfigError("`max_concurrent_streams` must be >= 0")
        if self.workers > 256:
            raise ConfigError(f"`workers` must be at most 256, not `{self.workers}`")
        if self.policies and not pathlib.Path(self.policies).exists():
            raise ConfigError(f"policies folder `{self.policies}` does not exist")
        self._validate_tokens()
        return self

    def _validate_tokens(self) -> None:
        from authz.tokens.config import TokenConfig, TokenConfigError

        try:
            tokens = TokenConfig.from_dict(self.tokens)
        except TokenConfigError as e:
            raise ConfigError(str(e)) from None
        jwt_tables = self.identity.get("jwt") if isinstance(self.identity, dict) else None
        for table in jwt_tables if isinstance(jwt_tables, list) else ():
            if isinstance(table, dict) and table.get("issuer") == tokens.issuer:
                raise ConfigError(f"`tokens.issuer` `{tokens.issuer}` is also a trusted `identity.jwt` issuer; "
                                  "task tokens need an issuer of their own")


_FIELDS = {f.name: f for f in dataclasses.fields(ServeConfig)}
_TABLES = {"server", "identity", "tokens"}


def load_config(path: str | None, overrides: dict) -> ServeConfig:
    """Build the config: defaults, then the TOML file at `path`, then `overrides` (flags; None = unset).

    With neither a file nor flags naming a policies folder or a db, the bundled example
    policies are served.
    """
    values: dict = {}
    if path:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config `{path}`: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"cannot parse config `{path}`: {e}") from None
        unknown = set(doc) - _TABLES
        if unknown:
            raise ConfigError(f"{path}: unknown table `{sorted(unknown)[0]}`")
        server = doc.get("server", {})
        for key, value in server.items():
            if key not in _FIELDS or key in ("identity", "tokens"):
                raise ConfigError(f"{path}: unknown option `server.{key}`")
            values[key] = value
        base = pathlib.Path(path).resolve().parent
        for key in ("data_dir", "db", "policies", "decision_log"):
            # Relative paths in a config file are relative to the file.
            if isinstance(values.get(key), str) and values[key] and not pathlib.Path(values[key]).is_absolute():
                values[key] = str(base / values[key])
        values["identity"] = doc.get("identity", {})
        values["tokens"] = doc.get("tokens", {})
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    if not values.get("policies") and not values.get("db"):
        values["policies"] = str(BUNDLED_POLICIES)
    for key, value in values.items():
        expected = _FIELDS[key].type
        if "int" in expected and "float" not in expected and isinstance(value, float) and value.is_integer():
            values[key] = int(value)
        if "float" in expected and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
    try:
        cfg = ServeConfig(**values)
    except TypeError as e:  # pragma: no cover - guarded by the unknown-key checks above
        raise ConfigError(str(e)) from None
    for key, value in values.items():
        kind = _FIELDS[key].type
        if kind.startswith("str") and value is not None and not isinstance(value, str):
            raise ConfigError(f"`{key}` must be a string, not `{value!r}`")
    return cfg.validate()


def parse_hostport(text: str, name: str = "listen") -> tuple[str, int]:
    """Split `host:port` (`[v6]:port` for IPv6); raise ConfigError on anything else."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"`{name}` must be HOST:PORT, not `{text}`")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"`{name}` must be HOST:PORT, not `{text}`") from None
    if not host or not 0 <= port <= 65535:
        raise ConfigError(f"`{name}` must be HOST:PORT, not `{text}`")
    return host, port


def format_hostport(host: str, port: int) -> str:
    """Inverse of parse_hostport."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
