"""The `authz operators` click group: the console's operator API keys (authz.console.operators)."""
from __future__ import annotations

import sys
import time

import click

_config = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                       help="The `authz serve` TOML config (its data_dir).")
_data_dir = click.option("--data-dir", "data_dir", help="The server's data folder (default authz-data).")


def _keys(config_path, data_dir):
    from authz.console.operators import OperatorKeys
    from authz.server.config import DEFAULT_DATA_DIR, ConfigError, load_config

    if config_path:
        try:
            data_dir = load_config(config_path, {"data_dir": data_dir}).data_dir
        except ConfigError as e:
            click.echo(f"authz operators: error: {e}", err=True)
            sys.exit(2)
    return OperatorKeys(data_dir or DEFAULT_DATA_DIR)


def _fail(e) -> None:
    click.echo(f"authz operators: error: {e}", err=True)
    sys.exit(2)


@click.group("operators")
def operators():
    """Operator API keys for the console (DATA_DIR/operators.json, stored hashed)."""


@operators.command("add")
@click.argument("name")
@_config
@_data_dir
def add_command(name, config_path, data_dir):
    """Create operator NAME and print its key (once: only a hash of it is kept)."""
    from authz.console.operators import OperatorError

    try:
        key = _keys(config_path, data_dir).add(name)
    except (OperatorError, OSError) as e:
        _fail(e)
    click.echo(key)
    click.echo(f"operator `{name}` added; sign in to /console as Operator::\"{name}\" with the key above "
               "(it is not shown again)", err=True)


@operators.command("list")
@_config
@_data_dir
def list_command(config_path, data_dir):
    """List the operators (names and when their keys were made)."""
    from authz.console.operators import OperatorError

    try:
        found = _keys(config_path, data_dir).names()
    except OperatorError as e:
        _fail(e)
    for name, record in found:
        click.echo(f"{name}\t{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(record.get('created', 0)))}")


@operators.command("remove")
@click.argument("name")
@_config
@_data_dir
def remove_command(name, config_path, data_dir):
    """Remove operator NAME: its key stops working and its console sessions end."""
    from authz.console.operators import OperatorError

    try:
        _keys(config_path, data_dir).remove(name)
    except (OperatorError, OSError) as e:
        _fail(e)
    click.echo(f"operator `{name}` removed", err=True)
