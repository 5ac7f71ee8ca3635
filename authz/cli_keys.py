"""The `authz keys` click group (the CLI layer): export the task-token JWKS, rotate the signing key."""
from __future__ import annotations

import json
import sys

import click


def _settings(config_path, data_dir):
    """(data_dir, TokenConfig) from the serve config file (if any) and the flag."""
    from authz.server.config import DEFAULT_DATA_DIR, ConfigError, load_config
    from authz.tokens.config import TokenConfig

    if config_path:
        try:
            cfg = load_config(config_path, {"data_dir": data_dir})
        except ConfigError as e:
            click.echo(f"authz keys: error: {e}", err=True)
            sys.exit(2)
        return cfg.data_dir, TokenConfig.from_dict(cfg.tokens)
    return data_dir or DEFAULT_DATA_DIR, TokenConfig()


def _shared_keys(config_path):
    """The shared key set (authz.tokens.shared_keys) when the config puts the state on Redis, else None."""
    if not config_path:
        return None
    from authz.server.config import load_config
    from authz.state.redis_link import RedisLink
    from authz.tokens.keys import KeyStoreError
    from authz.tokens.shared_keys import SharedKeys

    settings = load_config(config_path, {}).state_config().redis
    if settings is None:
        return None
    try:
        return SharedKeys(RedisLink(settings), settings)
    except KeyStoreError as e:
        click.echo(f"authz keys: error: {e}", err=True)
        sys.exit(2)


_config = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                       help="The `authz serve` TOML config (data_dir, [tokens]).")
_data_dir = click.option("--data-dir", "data_dir", help="The server's data folder (default authz-data).")


@click.group("keys")
def keys():
    """Task-token signing keys (in DATA_DIR/keys, or shared in Redis with [state] backend = "redis")."""


@keys.command("export")
@_config
@_data_dir
def export_command(config_path, data_dir):
    """Print the public keys that verify task tokens, as a JWKS (JSON)."""
    from authz.tokens.keys import KeyStore, KeyStoreError

    folder, cfg = _settings(config_path, data_dir)
    shared = _shared_keys(config_path)
    try:
        if shared is not None:  # [state] backend = "redis": the deployment's shared key set
            from authz.tokens.shared_keys import SharedKeyStore
            from authz.tokens.verify import TokenError
            try:
                jwks = SharedKeyStore(shared.link, shared.settings, cfg.max_ttl_s, cfg.leeway_s).jwks()
            except TokenError as e:
                raise KeyStoreError(str(e)) from None
        else:
            jwks = KeyStore(folder).jwks()
    except KeyStoreError as e:
        click.echo(f"authz keys: error: {e}", err=True)
        sys.exit(2)
    click.echo(json.dumps(jwks, indent=2))


@keys.command("rotate")
@_config
@_data_dir
def rotate_command(config_path, data_dir):
    """Make a new signing key; the old one stops signing and stays trusted until its last token expires.

    Running servers pick the new key up within a second (with [state] backend = "redis": every node, within
    the fan-out bound of docs/scale-out.md).
    """
    import os

    from authz.tokens.keys import KEYSET, KeyStoreError, ensure_keys, keys_dir, rotate_keys

    folder, cfg = _settings(config_path, data_dir)
    shared = _shared_keys(config_path)
    if shared is not None:  # [state] backend = "redis": the deployment's keys, every node picks the new one up
        try:
            new, old, dropped = shared.rotate(cfg.max_ttl_s, cfg.leeway_s)
        except KeyStoreError as e:
            click.echo(f"authz keys: error: {e}", err=True)
            sys.exit(2)
        click.echo(f"active key {new} (was {old}) on every node; dropped {len(dropped)} expired key(s)")
        return
    try:
        if not os.path.exists(os.path.join(keys_dir(folder), KEYSET)):
            click.echo(f"created key {ensure_keys(folder, cfg.max_ttl_s)}")
            return
        new, old, dropped = rotate_keys(folder, cfg.max_ttl_s, cfg.leeway_s)
    except (KeyStoreError, OSError) as e:
        click.echo(f"authz keys: error: {e}", err=True)
        sys.exit(2)
    click.echo(f"active key {new} (was {old}); dropped {len(dropped)} expired key(s)")
