"""ServeConfig: every `authz serve` option, its default, the TOML file that sets it and validation."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
import socket
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from authz.errors import AuthzError
from authz.jsonterms import shown
from authz.state.redis_config import resolve_paths as resolve_state_paths

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
    shadow_policies: str = ""         # a candidate policy set evaluated beside `policies`, never enforced
    metrics_listen: str = ""          # "" = no metrics endpoint
    http_listen: str = ""             # HTTP listener (AuthZEN, docs/authzen.md) in every worker; "" = off
    public_url: str = ""              # the HTTP listener's base URL as PEPs reach it; "" = the URL they used
    console: bool = True              # the operator console at /console on the HTTP listener (docs/console.md)
    decision_log: str | None = None   # None = <data_dir>/decisions.jsonl; "" = off
    decision_log_queue: int = 10000   # events buffered per worker before new ones are dropped
    decision_log_max_bytes: int = 100 * 1024 * 1024  # rotated before it passes this; 0 = never (external logrotate)
    decision_log_keep: int = 5        # rotated files kept: decisions.jsonl.1 (newest) .. .5
    reload_interval_s: float = 0.25   # how often the policies folder is scanned
    drain_s: float = 5.0              # grace period for in-flight RPCs on SIGTERM
    max_message_bytes: int = 4 * 1024 * 1024
    max_batch_size: int = 1000        # BatchCheck items and JSON-RPC batch entries
    max_headers: int = 256            # HTTP headers in one Envoy CheckRequest
    max_header_bytes: int = 64 * 1024  # sum of header name and value lengths
    max_context_depth: int = 32       # nesting of context records and sets
    max_concurrent_streams: int = 0   # per connection; 0 = grpc default
    max_connection_age_s: float = 0   # 0 = unlimited; a limit rebalances long-lived Envoy connections
    identity: dict = dataclasses.field(default_factory=dict)   # [identity]: raw table, see parse_identity
    tokens: dict = dataclasses.field(default_factory=dict)     # [tokens]
    tracing: dict = dataclasses.field(default_factory=dict)    # [tracing]: raw table, see tracing.parse_tracing
    state: dict = dataclasses.field(default_factory=dict)      # [state]: task state (see state_config)
    approvals: dict = dataclasses.field(default_factory=dict)  # [approvals]
    # Development mode (no identity configured) on a non-loopback address: never in production.
    insecure_allow_self_asserted_callers: bool = False

    @property
    def db_path(self) -> str:
        """The LMDB index path."""
        return self.db or str(pathlib.Path(self.data_dir) / "authz.lmdb")

    @property
    def shadow_db_path(self) -> str:
        """The shadow set's LMDB index (docs/policy-tooling.md, "Shadow policies")."""
        return str(pathlib.Path(self.data_dir) / "shadow.lmdb")

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
        if self.http_listen:
            parse_hostport(self.http_listen, "http_listen")
        if self.public_url:
            _check_public_url(self.public_url)
        positive = ("workers", "decision_log_queue", "max_message_bytes", "max_batch_size",
                    "max_headers", "max_header_bytes", "max_context_depth")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{name}` must be a positive integer, not {shown(value)}")
        for name in ("reload_interval_s", "drain_s", "max_connection_age_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"`{name}` must be a number >= 0, not {shown(value)}")
        if self.max_concurrent_streams < 0:
            raise ConfigError("`max_concurrent_streams` must be >= 0")
        if not isinstance(self.insecure_allow_self_asserted_callers, bool):
            raise ConfigError("`insecure_allow_self_asserted_callers` must be true or false")
        if not isinstance(self.console, bool):
            raise ConfigError("`console` must be true or false")
        self._validate_decision_log()
        if self.workers > 256:
            raise ConfigError(f"`workers` must be at most 256, not `{self.workers}`")
        if self.policies and not pathlib.Path(self.policies).exists():
            raise ConfigError(f"policies folder `{self.policies}` does not exist")
        if self.shadow_policies:
            if not self.policies:
                raise ConfigError("`shadow_policies` needs `policies`: the shadow set decides with its entities")
            if not pathlib.Path(self.shadow_policies).is_dir():
                raise ConfigError(f"shadow policies folder `{self.shadow_policies}` does not exist")
        self._validate_tokens()
        self.state_config()
        self.__dict__["_tracing_settings"] = _parse_tracing(self.tracing)
        self.__dict__["_identity_settings"] = parse_identity(self.identity)
        return self

    def exposed_self_asserted_listeners(self) -> list:
        """`option = address` texts of the listeners that take callers' own word for who they are
        (development mode) on an address that is not loopback; [] when identity is configured."""
        if not self.development_mode:
            return []
        exposed = []
        for name in SELF_ASSERTED_LISTENERS:
            address = getattr(self, name)
            if address and not is_loopback_host(parse_hostport(address, name)[0]):
                exposed.append(f"`{name}` `{address}`")
        return exposed

    def require_identity_off_loopback(self) -> None:
        """Refuse development mode on an address other than loopback (ConfigError naming the config to
        add), unless `insecure_allow_self_asserted_callers` says so."""
        exposed = self.exposed_self_asserted_listeners()
        if exposed and not self.insecure_allow_self_asserted_callers:
            raise ConfigError(
                f"{', '.join(exposed)} is not a loopback address and no identity is configured, so any client "
                "could name itself as any agent: add [[identity.jwt]] or [identity.mtls] to the config "
                "(docs/identity.md), or listen on 127.0.0.1")

    def _validate_decision_log(self) -> None:
        size, keep = self.decision_log_max_bytes, self.decision_log_keep
        if isinstance(size, bool) or not isinstance(size, int) or not (size == 0 or size >= 4096):
            raise ConfigError(f"`decision_log_max_bytes` must be 0 (no limit) or at least 4096, not {shown(size)}")
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= 1000:
            raise ConfigError(f"`decision_log_keep` must be an integer from 0 to 1000, not {shown(keep)}")

    @property
    def identity_settings(self) -> "IdentitySettings":
        """The validated `[identity]` table (parsed once)."""
        cached = self.__dict__.get("_identity_settings")
        if cached is None:
            cached = self.__dict__["_identity_settings"] = parse_identity(self.identity)
        return cached

    @property
    def tracing_settings(self) -> "TracingSettings":
        """The validated `[tracing]` table (parsed once)."""
        cached = self.__dict__.get("_tracing_settings")
        if cached is None:
            cached = self.__dict__["_tracing_settings"] = _parse_tracing(self.tracing)
        return cached

    def state_config(self):
        """The task-state store's StateConfig from `[state]` and `[approvals]` (ConfigError naming a bad key)."""
        from authz.state import StateConfig, state_path

        cached = self.__dict__.get("_state_config")
        if cached is not None:
            return cached
        from authz.state.redis_config import KEYS as REDIS_KEYS
        from authz.state.redis_config import RedisSettings

        fields, redis_doc = {}, {}
        for table, keys in (("state", _STATE_KEYS), ("approvals", _APPROVAL_KEYS)):
            doc = getattr(self, table)
            if not isinstance(doc, dict):
                raise ConfigError(f"`[{table}]` must be a table")
            for key, value in doc.items():
                if table == "state" and key in REDIS_KEYS:
                    redis_doc[key] = value
                    continue
                if key not in keys:
                    raise ConfigError(f"unknown option `{table}.{key}`")
                if key == "backend":
                    if value not in ("lmdb", "redis"):
                        raise ConfigError(f"`state.backend` must be \"lmdb\" (the embedded store in data_dir) or "
                                          f"\"redis\" (shared by every node: docs/scale-out.md), not {shown(value)}")
                    continue
                fields[keys[key]] = value
        try:
            if self.state.get("backend") == "redis":
                fields["redis"] = RedisSettings.from_table(redis_doc)
            elif redis_doc:
                raise ValueError(f"`state.{sorted(redis_doc)[0]}` needs backend = \"redis\"")
            cached = StateConfig(path=state_path(self.data_dir), index_path=self.db_path, **fields)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.__dict__["_state_config"] = cached
        return cached

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
# The listeners that, in development mode, believe the names callers give themselves (`x-authz-caller`,
# `source.principal`, explicit principals); metrics_listen serves only counters.
SELF_ASSERTED_LISTENERS = ("listen", "http_listen")
# `authz serve` flags that fill [identity.mtls] (flag dest -> key).
_MTLS_FLAGS = {"tls_cert": "cert", "tls_key": "key", "client_ca": "client_ca", "trust_domains": "trust_domains"}
_TABLES = {"server", "identity", "tokens", "tracing", "state", "approvals"}
# [state] and [approvals] keys -> StateConfig fields (authz.state.config).
_STATE_KEYS = {"backend": None, "durable": "durable", "map_size": "map_size", "max_tools": "max_tools",
               "max_tasks": "max_tasks", "task_ttl_s": "task_ttl_s"}
_APPROVAL_KEYS = {"ttl_s": "approval_ttl_s", "grant_ttl_s": "grant_ttl_s", "on_reject": "on_reject"}


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
            if key not in _FIELDS or key in _TABLES:
                raise ConfigError(f"{path}: unknown option `server.{key}`")
            values[key] = value
        base = pathlib.Path(path).resolve().parent
        for key in ("data_dir", "db", "policies", "shadow_policies", "decision_log"):
            # Relative paths in a config file are relative to the file.
            if isinstance(values.get(key), str) and values[key] and not pathlib.Path(values[key]).is_absolute():
                values[key] = str(base / values[key])
        values["identity"] = _resolve_identity_paths(doc.get("identity", {}), base)
        values["tokens"] = doc.get("tokens", {})
        tracing = doc.get("tracing", {})
        if isinstance(tracing, dict) and isinstance(tracing.get("file"), str) and tracing["file"] \
                and not pathlib.Path(tracing["file"]).is_absolute():
            tracing = {**tracing, "file": str(base / tracing["file"])}
        values["tracing"] = tracing
        values["state"] = resolve_state_paths(doc.get("state", {}), base)  # password and key files
        values["approvals"] = doc.get("approvals", {})
    overrides = dict(overrides)
    mtls_flags = {k: overrides.pop(k, None) for k in _MTLS_FLAGS}
    if any(v for v in mtls_flags.values()):
        identity = dict(values.get("identity") or {})
        mtls = identity.get("mtls")
        mtls = dict(mtls) if isinstance(mtls, dict) else {}
        for key, value in mtls_flags.items():
            if value:
                mtls[_MTLS_FLAGS[key]] = list(value) if key == "trust_domains" else value
        identity["mtls"] = mtls
        values["identity"] = identity
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
            raise ConfigError(f"`{key}` must be a string, not {shown(value)}")
    return cfg.validate()


def _parse_tracing(doc):
    """The validated `[tracing]` table (authz.server.tracing), its errors as ConfigError."""
    from authz.server.tracing import TracingConfigError, parse_tracing

    try:
        return parse_tracing(doc)
    except TracingConfigError as e:
        raise ConfigError(str(e)) from None


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


def _check_public_url(url: str) -> None:
    """`public_url`: an absolute http(s) URL with no query or fragment (the AuthZEN PDP identifier)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment \
            or "#" in url or "?" in url:
        raise ConfigError(f"`public_url` must be an http(s) URL with no query or fragment, not `{url}`")


def is_loopback_host(host: str) -> bool:
    """True when `host` (an address or a name, resolved) names loopback addresses only (127.0.0.0/8, ::1)."""
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addresses = {ipaddress.ip_address(info[4][0].split("%")[0])
                         for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
        except (OSError, ValueError):
            return False
    return bool(addresses) and all(is_loopback_address(a) for a in addresses)


def is_loopback_address(address) -> bool:
    """An ipaddress address on the loopback range, IPv4-mapped IPv6 included."""
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def format_hostport(host: str, port: int) -> str:
    """Inverse of parse_hostport."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- [identity] ----------------------------------------------------------------------------------

_IDENTITY_KEYS = {"jwt", "mtls", "trusted_peps", "max_token_bytes", "token_cache_size"}
# Options of a fetched key set (`jwks_uri` or `discovery`): (low, high) bounds; their defaults are RemoteSource's.
_FETCH_BOUNDS = {"connect_timeout_s": (0.05, 60), "read_timeout_s": (0.05, 60), "fetch_wait_s": (0, 10),
                 "min_refresh_s": (1, 86400), "cache_min_s": (0, 7 * 86400), "cache_max_s": (0, 7 * 86400),
                 "max_stale_s": (0, 7 * 86400)}
_FETCH_KEYS = set(_FETCH_BOUNDS) | {"ca_file"}
_JWT_KEYS = {"issuer", "trust_domain", "audiences", "jwks_file", "jwks_uri", "discovery", "algorithms", "leeway_s",
             "types", "subject_trust_domains"} | _FETCH_KEYS
_MTLS_KEYS = {"cert", "key", "client_ca", "trust_domains"}


@dataclasses.dataclass(frozen=True)
class JwtIssuerSettings:
    """One `[[identity.jwt]]` table: a trusted OIDC issuer or JWT-SVID trust domain."""

    jwks_file: str                  # "" when the keys are fetched (`remote`)
    audiences: tuple
    issuer: str = ""
    trust_domain: str = ""
    algorithms: tuple = ()          # () = every allowed algorithm
    leeway_s: float = 30.0
    types: tuple = ()
    subject_trust_domains: tuple = ()  # SPIFFE ids an issuer without `trust_domain` may assert as `sub`
    remote: object = None           # a RemoteSource for `jwks_uri` / `discovery`

    def open_key_set(self):
        """The issuer's key set: its file's (read now), or a fetched one (its refresher thread starts now)."""
        from authz.identity import FileKeySet, RemoteKeySet

        if self.remote is not None:
            return RemoteKeySet(self.remote, trust_domain=self.trust_domain)
        return FileKeySet(self.jwks_file, trust_domain=self.trust_domain)


@dataclasses.dataclass(frozen=True)
class MtlsSettings:
    """`[identity.mtls]`: the server's certificate and key, the client CA bundle, the allowed trust domains."""

    cert: str
    key: str
    client_ca: str
    trust_domains: tuple


@dataclasses.dataclass(frozen=True)
class IdentitySettings:
    """The validated `[identity]` table."""

    jwt: tuple = ()
    mtls: MtlsSettings | None = None
    trusted_peps: tuple = ()
    max_token_bytes: int = 8192
    token_cache_size: int = 10000

    @property
    def development_mode(self) -> bool:
        return not self.jwt and self.mtls is None


def _resolve_identity_paths(identity, base: pathlib.Path):
    """Relative file names in [identity] are relative to the config file."""
    if not isinstance(identity, dict):
        return identity

    def fix(value):
        if isinstance(value, str) and value and not pathlib.Path(value).is_absolute():
            return str(base / value)
        return value

    out = dict(identity)
    if isinstance(out.get("jwt"), list):
        out["jwt"] = [{k: fix(v) if k in ("jwks_file", "ca_file") else v for k, v in t.items()}
                      if isinstance(t, dict) else t for t in out["jwt"]]
    if isinstance(out.get("mtls"), dict):
        out["mtls"] = {k: fix(v) if k in ("cert", "key", "client_ca") else v for k, v in out["mtls"].items()}
    return out


def _strings(value, name: str, allow_empty: bool = False) -> tuple:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and v for v in value) or (not value and not allow_empty):
        raise ConfigError(f"`{name}` must be a {'' if allow_empty else 'non-empty '}array of strings")
    return tuple(value)


def _readable(path, name: str) -> str:
    if not isinstance(path, str) or not path:
        raise ConfigError(f"`{name}` is required (a file name)")
    if not os.path.isfile(path):
        raise ConfigError(f"`{name}`: `{path}` is not a readable file")
    return path


def _remote_source(t: dict, where: str, issuer: str):
    """The RemoteSource of a `[[identity.jwt]]` table with `jwks_uri` or `discovery = true`; None with `jwks_file`."""
    from authz.identity import RemoteSource
    from authz.identity.fetch import FetchError, check_url

    discovery = t.get("discovery", False)
    if not isinstance(discovery, bool):
        raise ConfigError(f"`{where}.discovery` must be true or false")
    given = [k for k in ("jwks_file", "jwks_uri") if k in t] + (["discovery = true"] if discovery else [])
    if len(given) != 1:
        raise ConfigError(f"`{where}` needs exactly one of `jwks_file`, `jwks_uri` or `discovery = true`"
                          + (f" (it has {' and '.join(f'`{g}`' for g in given)})" if given else ""))
    if "jwks_file" in t:
        extra = sorted(set(t) & _FETCH_KEYS)
        if extra:
            raise ConfigError(f"`{where}.{extra[0]}` applies to `jwks_uri` or `discovery` only, not to `jwks_file`")
        return None
    if discovery and not issuer:
        raise ConfigError(f"`{where}.discovery` needs `issuer` (the discovery document is "
                          "<issuer>/.well-known/openid-configuration)")
    name = f"{where}.issuer" if discovery else f"{where}.jwks_uri"
    url = issuer if discovery else t["jwks_uri"]
    try:
        check_url(url)
    except FetchError as e:
        raise ConfigError(f"`{name}`: {e}") from None
    options = {}
    for key, (low, high) in _FETCH_BOUNDS.items():
        if key in t:
            value = t[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(f"`{where}.{key}` must be a number from {low:g} to {high:g}")
            options[key] = float(value)
    if "ca_file" in t:
        options["ca_file"] = _readable(t["ca_file"], f"{where}.ca_file")
    source = RemoteSource(url, discovery, **options)
    if source.cache_min_s > source.cache_max_s:
        raise ConfigError(f"`{where}.cache_min_s` ({source.cache_min_s:g}) is above `cache_max_s` "
                          f"({source.cache_max_s:g})")
    try:
        source.fetcher()  # loads `ca_file` now: a bad one stops the server at start
    except FetchError as e:
        raise ConfigError(f"`{where}.ca_file`: {e}") from None
    return source


def parse_identity(doc) -> IdentitySettings:
    """Validate the raw `[identity]` table; every key set is read once, so a bad one stops the server at start."""
    from authz.identity import ALGORITHMS, FileKeySet, IdentityError, Issuer, KeySet
    from authz.identity.jwt import DEFAULT_MAX_TOKEN_BYTES, MAX_LEEWAY_S
    from authz.identity.spiffe import is_trust_domain_name, parse_spiffe_id

    if not isinstance(doc, dict):
        raise ConfigError("`identity` must be a table")
    unknown = set(doc) - _IDENTITY_KEYS
    if unknown:
        raise ConfigError(f"unknown option `identity.{sorted(unknown)[0]}`")
    max_token_bytes = doc.get("max_token_bytes", DEFAULT_MAX_TOKEN_BYTES)
    cache_size = doc.get("token_cache_size", 10000)
    for name, value, low, high in (("max_token_bytes", max_token_bytes, 256, 1024 * 1024),
                                   ("token_cache_size", cache_size, 0, 10_000_000)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"`identity.{name}` must be an integer from {low} to {high}")
    tables = doc.get("jwt", [])
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("`identity.jwt` must be an array of tables (`[[identity.jwt]]`)")
    issuers = []
    for n, t in enumerate(tables):
        where = f"identity.jwt[{n}]"
        unknown = set(t) - _JWT_KEYS
        if unknown:
            raise ConfigError(f"unknown option `{where}.{sorted(unknown)[0]}`")
        issuer, trust_domain = t.get("issuer", ""), t.get("trust_domain", "")
        if not isinstance(issuer, str) or not isinstance(trust_domain, str) or not (issuer or trust_domain):
            raise ConfigError(f"`{where}` needs `issuer` (a string) or `trust_domain`")
        if trust_domain and not is_trust_domain_name(trust_domain):
            raise ConfigError(f"`{where}.trust_domain`: `{trust_domain}` is not a trust domain name")
        algorithms = _strings(t.get("algorithms", list(ALGORITHMS)), f"{where}.algorithms")
        for alg in algorithms:
            if alg not in ALGORITHMS:
                raise ConfigError(f"`{where}.algorithms`: `{alg}` is not allowed (choose from {', '.join(ALGORITHMS)}; "
                                  "never `none` or HMAC)")
        leeway = t.get("leeway_s", 30)
        if isinstance(leeway, bool) or not isinstance(leeway, (int, float)) or not 0 <= leeway <= MAX_LEEWAY_S:
            raise ConfigError(f"`{where}.leeway_s` must be a number from 0 to {MAX_LEEWAY_S:g}")
        remote = _remote_source(t, where, issuer)
        settings = JwtIssuerSettings(
            jwks_file="" if remote else _readable(t.get("jwks_file"), f"{where}.jwks_file"),
            audiences=_strings(t.get("audiences"), f"{where}.audiences"), issuer=issuer, trust_domain=trust_domain,
            algorithms=algorithms, leeway_s=float(leeway), types=_strings(t.get("types", []), f"{where}.types", True),
            subject_trust_domains=_strings(t.get("subject_trust_domains", []), f"{where}.subject_trust_domains", True),
            remote=remote)
        for td in settings.subject_trust_domains:
            if not is_trust_domain_name(td):
                raise ConfigError(f"`{where}.subject_trust_domains`: `{td}` is not a trust domain name")
        try:
            # A fetched key set is not fetched here: the workers fetch it (a down IdP does not stop the server).
            keys = KeySet() if remote else FileKeySet(settings.jwks_file, trust_domain=trust_domain)
            Issuer(keys, settings.audiences, issuer, trust_domain, algorithms, settings.leeway_s, settings.types,
                   settings.subject_trust_domains)
        except IdentityError as e:
            raise ConfigError(f"`{where}.jwks_file`: {e}") from None
        except ValueError as e:
            raise ConfigError(f"`{where}`: {e}") from None
        issuers.append(settings)
    for attr in ("issuer", "trust_domain"):
        seen = [getattr(s, attr) for s in issuers if getattr(s, attr)]
        if len(seen) != len(set(seen)):
            raise ConfigError(f"`identity.jwt`: two tables have the same `{attr}`")
    mtls = None
    if "mtls" in doc:
        t = doc["mtls"]
        if not isinstance(t, dict):
            raise ConfigError("`identity.mtls` must be a table")
        unknown = set(t) - _MTLS_KEYS
        if unknown:
            raise ConfigError(f"unknown option `identity.mtls.{sorted(unknown)[0]}`")
        trust_domains = _strings(t.get("trust_domains"), "identity.mtls.trust_domains (or --trust-domain)")
        for td in trust_domains:
            if not is_trust_domain_name(td):
                raise ConfigError(f"`identity.mtls.trust_domains`: `{td}` is not a trust domain name")
        mtls = MtlsSettings(_readable(t.get("cert"), "identity.mtls.cert (or --tls-cert)"),
                            _readable(t.get("key"), "identity.mtls.key (or --tls-key)"),
                            _readable(t.get("client_ca"), "identity.mtls.client_ca (or --client-ca)"),
                            trust_domains)
    peps = _strings(doc.get("trusted_peps", []), "identity.trusted_peps", allow_empty=True)
    for pep in peps:
        try:
            parse_spiffe_id(pep, require_path=True)
        except IdentityError as e:
            raise ConfigError(f"`identity.trusted_peps`: {e}") from None
    return IdentitySettings(tuple(issuers), mtls, peps, max_token_bytes, cache_size)
