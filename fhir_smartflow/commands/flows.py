"""`fhir-smartflow validate`: load mappings, templates and flows and report every problem."""

from __future__ import annotations

import json
import sys

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.engine.tomlfiles import kind_of
from fhir_smartflow.flowfiles import discover, load_paths, read_toml, require_configured_paths

KINDS = {"mapping": "mappings", "flow": "flows", "template": "templates"}  # a file's kind -> its [engine] key


def _split_paths(paths: tuple[str, ...], ctx: CliContext) -> tuple[dict[str, list[str]], list[str]]:
    """The given files sorted by what they contain, per ``[engine]`` key, and the keys taken from the config.

    Flows are checked with the mappings and templates they use: the configured ones when none are given.
    Mappings or templates given without flows are checked alone (no flow refers to them).
    """
    given: dict[str, list[str]] = {key: [] for key in KINDS.values()}
    files, missing = discover(paths)
    for problem in missing:
        click.echo(str(problem), err=True)
    if missing:
        sys.exit(2)
    for path in files:
        source, _ = read_toml(path)
        kind = (kind_of(source) if source else None) or "flow"  # unreadable files report as flows
        given[KINDS[kind]].append(str(path))
    borrowed = [key for key in ("mappings", "templates") if given["flows"] and not given[key]]
    require_configured_paths(ctx.settings, borrowed)
    configured = ctx.settings.engine.paths()
    return {key: given[key] or (configured[key] if key in borrowed else []) for key in given}, borrowed


@click.command("validate")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def validate(ctx: CliContext, paths: tuple[str, ...], as_json: bool) -> None:
    """Check mappings, templates and flows (files or directories; default: [engine] paths).

    Given flows are checked with the configured mappings and templates unless some are given too; given
    mappings or templates alone are checked alone.

    Exits 0 when everything is valid, 1 with one `file[:line]: field: reason` line per problem,
    2 on a usage or configuration error (a path that does not exist).
    """
    if paths:
        chosen, borrowed = _split_paths(paths, ctx)
    else:
        require_configured_paths(ctx.settings)
        chosen, borrowed = ctx.settings.engine.paths(), []
    if borrowed:  # say what the given files were combined with
        click.echo(f"note: checked with the configured [engine] {' and '.join(borrowed)}", err=True)
    engine, errors = load_paths(chosen["mappings"], chosen["flows"], chosen["templates"], ctx.settings)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "valid": not errors,
                    "errors": [{"file": e.file, "line": e.line, "field": e.field, "reason": e.reason} for e in errors],
                    "counts": None
                    if engine is None
                    else {
                        "mappings": len(engine.mappings),
                        "templates": len(engine.templates),
                        "flows": len(engine.flows),
                    },
                },
                indent=2,
            )
        )
    elif errors:
        for error in errors:
            click.echo(str(error))
        click.echo(f"{len(errors)} problem(s) found", err=True)
    else:
        assert engine is not None
        enabled = sum(1 for f in engine.flows.values() if f.enabled)
        click.echo(
            f"OK: {len(engine.mappings)} mappings, {len(engine.templates)} templates, "
            f"{len(engine.flows)} flows ({enabled} enabled)"
        )
    sys.exit(1 if errors else 0)
