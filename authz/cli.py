"""The `authz` command line: compile, check (and serve, registered from authz.server)."""

import json
import sys

import click

from .compiler import compile_sources
from .engine import Engine
from .errors import AuthzError, CompileError, RequestError

DEFAULT_DB = "authz-data/authz.lmdb"  # where `authz serve` keeps its index by default


def _fail(message):
    click.echo(f"authz: {message}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(package_name="authz")
def main():
    """authz: Cedar authorization for AI agents, decided in microseconds."""


@main.command("compile")
@click.argument("srcs", nargs=-1, required=True, type=click.Path())
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(), help="LMDB index directory.")
@click.option("--schema", default=None, type=click.Path(dir_okay=False),
              help="Cedar schema the policies must validate against (see `authz validate`).")
def compile_command(srcs, db, schema):
    """Compile Cedar policies and entity files into a new generation of the index at --db."""
    try:
        if schema is not None:
            from .tooling.validate import validate_sources

            problems = validate_sources(list(srcs), schema)
            if problems:
                raise CompileError(problems)
        number = compile_sources(list(srcs), db)
    except CompileError as err:
        for line in err.diagnostics:
            click.echo(line, err=True)
        sys.exit(2)
    except AuthzError as err:
        _fail(str(err))
    click.echo(f"compiled generation {number} into {db}", err=True)


def _decide(engine, line):
    try:
        request = json.loads(line)
    except json.JSONDecodeError as err:
        return {"error": f"invalid JSON: {err}"}
    if not isinstance(request, dict):
        return {"error": "a request must be a JSON object"}
    unknown = set(request) - {"principal", "action", "resource", "context", "entities"}
    if unknown:
        return {"error": f"unknown request field `{sorted(unknown)[0]}`"}
    missing = [f for f in ("principal", "action", "resource") if f not in request]
    if missing:
        return {"error": f"missing request field `{missing[0]}`"}
    try:
        return engine.check(request["principal"], request["action"], request["resource"],
                            request.get("context"), entities=request.get("entities")).to_dict()
    except RequestError as err:
        return {"error": str(err)}


@main.command("check")
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(), help="LMDB index directory.")
@click.option("--request", "request", default=None, help="One request as JSON; without it, JSON lines on stdin.")
def check_command(db, request):
    """Decide requests: one JSON decision per JSON request line, in order.

    A request is {"principal", "action", "resource", "context"?, "entities"?}; `entities` (Cedar JSON
    entities) replace the stored entities with the same uid for that line only (docs/request-entities.md).

    Each input line, a blank one included, gets exactly one output line: a decision, or
    {"error": "..."} for a line that is not a valid request (a blank line is "empty request line").

    Exit status: 0 when every line was decided (allowed or denied), 1 when some line was an
    error (the other lines are still decided), 2 when the index cannot be opened.
    """
    try:
        engine = Engine(db)
    except AuthzError as err:
        _fail(str(err))
    if request is not None:
        result = _decide(engine, request)
        click.echo(json.dumps(result))
        sys.exit(1 if "error" in result else 0)
    interactive = sys.stdin.isatty()
    out = sys.stdout
    failed = False
    for line in sys.stdin:
        result = _decide(engine, line) if line.strip() else {"error": "empty request line"}
        failed = failed or "error" in result
        out.write(json.dumps(result) + "\n")
        if interactive:
            out.flush()
    sys.exit(1 if failed else 0)


def _register_optional_commands():
    from .cli_approvals import approvals  # imports grpc only when it runs
    from .cli_health import health
    from .cli_operators import operators
    from .cli_status import status

    main.add_command(approvals)
    main.add_command(health)
    main.add_command(status)
    main.add_command(operators)
    from .tooling.commands import replay_command, test_command, validate_command  # imports PyYAML when it runs

    main.add_command(validate_command)
    main.add_command(test_command)
    main.add_command(replay_command)
    try:
        from .server.cli_serve import serve
    except ImportError:  # the gRPC server's dependencies are not installed
        pass
    else:
        main.add_command(serve)
    try:
        from .cli_keys import keys
    except ImportError:  # pyjwt / cryptography are not installed
        pass
    else:
        main.add_command(keys)


_register_optional_commands()
