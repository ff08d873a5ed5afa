"""`fhir-smartflow validate`: load mappings, templates and flows and report every problem."""

from __future__ import annotations

import json
import sys

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.engine.tomlfiles import kind_of
from fhir_smartflow.flowfiles import discover, load_paths, read_toml


def _split_paths(paths: tuple[str, ...], ctx: CliContext) -> tuple[list[str], list[str], list[str]]:
    """Sort the given files by what they contain; kinds not given come from [engine] in the config."""
    given: dict[str, list[str]] = {"mapping": [], "flow": [], "template": []}
    files, missing = discover(paths)
    for problem in missing:
        click.echo(str(problem), err=True)
    if missing:
        sys.exit(2)
    for path in files:
        source, _ = read_toml(path)
        kind = (kind_of(source) if source else None) or "flow"  # unreadable files report as flows
        given[kind].append(str(path))
    engine = ctx.settings.engine
    return (
        given["mapping"] or list(engine.mappings),
        given["flow"] or list(engine.flows),
        given["template"] or list(engine.templates),
    )


@click.command("validate")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def validate(ctx: CliContext, paths: tuple[str, ...], as_json: bool) -> None:
    """Check mappings, templates and flows (files or directories; default: [engine] paths).

    Exits 0 when everything is valid, 1 with one `file[:line]: field: reason` line per problem,
    2 on a usage or configuration error.
    """
    if paths:
        mappings, flows, templates = _split_paths(paths, ctx)
    else:
        engine_cfg = ctx.settings.engine
        mappings, flows, templates = list(engine_cfg.mappings), list(engine_cfg.flows), list(engine_cfg.templates)
    engine, errors = load_paths(mappings, flows, templates, ctx.settings)
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
