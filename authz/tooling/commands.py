"""The policy tooling's commands (`authz validate`, `authz test`, `authz replay`): argument parsing and exit
status only; authz.cli registers them."""

import sys

import click

from ..errors import CompileError


@click.command("validate")
@click.option("--schema", "schema", required=True, type=click.Path(dir_okay=False),
              help="Cedar schema: human-readable syntax (.cedarschema) or JSON (.cedarschema.json).")
@click.argument("srcs", nargs=-1, required=True, type=click.Path())
def validate_command(schema, srcs):
    """Validate Cedar policies (files and folders, as `authz compile` takes them) against a Cedar schema.

    Every problem is one `FILE:LINE:COL: message` line on stderr. Exit status: 0 valid, 2 not (or a
    source or the schema cannot be read)."""
    from .validate import validate_sources

    try:
        diagnostics = validate_sources(list(srcs), schema)
    except CompileError as err:
        diagnostics = err.diagnostics
    for line in diagnostics:
        click.echo(line, err=True)
    if diagnostics:
        sys.exit(2)
    click.echo("policies are valid against the schema", err=True)


@click.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--policies", "policies", multiple=True, type=click.Path(),
              help="Policy sources (files, folders) for every test file, instead of the ones it names. Repeatable.")
@click.option("--entities", "entities", multiple=True, type=click.Path(),
              help="Entity files for every test file, instead of the ones it names. Repeatable.")
@click.option("--junit", "junit", default=None, type=click.Path(dir_okay=False), help="Also write JUnit XML here.")
def test_command(paths, policies, entities, junit):
    """Run policy test files (YAML or JSON; folders: every *.test.yaml, *.test.yml, *.test.json) offline.

    Exit status: 0 every case passed, 1 some case failed, 2 some file or case could not run."""
    from .testrunner import ERROR, FAILED, counts, render_junit, render_text, run

    results, problems = run(list(paths), list(policies) or None, list(entities) or None)
    for problem in problems:
        click.echo(f"authz: {problem}", err=True)
    if problems:
        sys.exit(2)
    if not results:
        click.echo("authz: no test files found (folders are searched for *.test.yaml, *.test.yml, *.test.json)",
                   err=True)
        sys.exit(2)
    click.echo(render_text(results), nl=False)
    if junit:
        try:
            with open(junit, "wb") as fh:
                fh.write(render_junit(results))
        except OSError as err:
            click.echo(f"authz: cannot write {junit}: {err.strerror}", err=True)
            sys.exit(2)
    n = counts(results)
    sys.exit(2 if n[ERROR] else 1 if n[FAILED] else 0)


@click.command("replay")
@click.option("--log", "logs", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Decision log (JSON lines, as `authz serve` writes it). Repeatable, read in order.")
@click.option("--policies", "policies", multiple=True, required=True, type=click.Path(),
              help="Policy sources to replay against (files, folders, entity files). Repeatable.")
@click.option("--since", default=None,
              help="Only decisions from then on: 2026-12-06T10:00:00Z, or 90s / 15m / 2h / 7d ago.")
@click.option("--fail-on-change", is_flag=True, help="Exit 1 when some decision would change.")
@click.option("--json", "as_json", is_flag=True, help="Write the report as one JSON document.")
def replay_command(logs, policies, since, fail_on_change, as_json):
    """Decide the logged requests again against other policies; report every decision that would change.

    Exit status: 0 (also when decisions change, without --fail-on-change), 1 with --fail-on-change when
    some decision would change, 2 when the log cannot be read or the policies do not compile."""
    import json

    from .replay import ReplayError, parse_since, render_text, replay

    try:
        report = replay(list(logs), list(policies), parse_since(since) if since else None)
    except ReplayError as err:
        click.echo(f"authz: {err}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        click.echo(render_text(report), nl=False)
    sys.exit(1 if fail_on_change and report.total_changed else 0)
