"""Commands for people writing flows: ``simulate``, ``lint``, ``docs``, ``export plandefinition``.

None of them needs Redis or a FHIR server.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.config import Settings
from fhir_smartflow.instants import parse_instant

if TYPE_CHECKING:  # the engine is imported when a command runs, so `--help` stays fast
    from fhir_smartflow.engine.model import Engine


def engine_path_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--mappings / --flows / --templates, each repeatable; default: the [engine] paths of the config."""
    for name in ("templates", "flows", "mappings"):
        func = click.option(
            f"--{name}",
            f"{name}_paths",
            multiple=True,
            type=click.Path(exists=True),
            help=f"{name.capitalize()} file or directory (repeatable). Default: [engine] {name} from the config.",
        )(func)
    return func


def load_or_exit(settings: Settings, mappings: Sequence[str], flows: Sequence[str], templates: Sequence[str]) -> Engine:
    """The engine from the given (or configured) paths; load errors are printed and exit with 1, a configured
    path that does not exist is a ConfigError (exit 2)."""
    from fhir_smartflow.flowfiles import load_paths, require_configured_paths

    given = {"mappings": mappings, "flows": flows, "templates": templates}
    require_configured_paths(settings, [kind for kind, paths in given.items() if not paths])
    engine, errors = load_paths(
        list(mappings) or settings.engine.mappings,
        list(flows) or settings.engine.flows,
        list(templates) or settings.engine.templates,
        settings,
    )
    if errors or engine is None:
        for error in errors:
            click.echo(str(error), err=True)
        click.echo(f"{len(errors)} problem(s): fix them (see `fhir-smartflow validate`) and run again", err=True)
        sys.exit(1)
    return engine


def _instant(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    parsed = parse_instant(value, zone=None)
    if parsed is not None:
        return parsed
    if parse_instant(value) is not None:  # a date, or a date-time without its offset
        raise click.BadParameter("give an offset or Z (e.g. 2026-03-02T15:00:00Z)", param_hint="--at")
    raise click.BadParameter(f"not an ISO-8601 instant: {value!r}", param_hint="--at")


@click.command("simulate")
@engine_path_options
@click.option("--resource", "resource_file", required=True, type=click.Path(), help="The changed resource (JSON).")
@click.option("--previous", "previous_file", type=click.Path(), help="Its previous version (JSON), if any.")
@click.option(
    "--context",
    "context_files",
    multiple=True,
    type=click.Path(),
    help="Other resources the flows read (Patient, Coverage, ...): a resource or a Bundle per file (repeatable).",
)
@click.option("--at", "at", help="Pretend it is this instant (ISO-8601 with offset). Default: now.")
@click.option("--discharged", is_flag=True, help="Treat the patient as discharged (flows with not_after stop).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_ctx
def simulate_command(
    cli: CliContext,
    mappings_paths: tuple[str, ...],
    flows_paths: tuple[str, ...],
    templates_paths: tuple[str, ...],
    resource_file: str,
    previous_file: str | None,
    context_files: tuple[str, ...],
    at: str | None,
    discharged: bool,
    as_json: bool,
) -> None:
    """Dry-run the flows on a resource change: triggers matched, each flow's condition result, and every
    resource that would be written, message with its text and follow-up with its instant. Nothing is
    written or sent; no Redis and no FHIR server are used.

    Exit codes: 0 simulated (also when nothing matches); 1 the flows do not load, or a planned resource
    is not valid FHIR; 2 bad input file or option.
    """
    from fhir_smartflow.tooling.simulate import (
        InputError,
        MemoryContext,
        format_report,
        read_resource_file,
        simulate,
    )

    settings = cli.settings
    when = _instant(at)
    try:
        resource = read_resource_file(resource_file)
        previous = read_resource_file(previous_file) if previous_file else None
        context = MemoryContext(read_resource_file(f) for f in context_files)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    engine = load_or_exit(settings, mappings_paths, flows_paths, templates_paths)
    report = simulate(engine, settings, resource, previous, context, when, discharged=discharged)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_report(report), nl=False)
    if report["invalid_resources"]:
        click.echo(f"{report['invalid_resources']} planned resource(s) are not valid FHIR R4B", err=True)
        sys.exit(1)


@click.command("lint")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print findings as a JSON array.")
@pass_ctx
def lint_command(cli: CliContext, paths: tuple[str, ...], as_json: bool) -> None:
    """Find flows that load but cannot work as meant: never firing (unmapped trigger, condition reading a
    field the resource does not have), duplicate or overlapping automation, reminders at or after the
    event, endless recurrences, unused templates — plus every `validate` error.

    PATHS: flow / mapping / template files or directories (default: the [engine] paths). When PATHS hold
    no mappings (or no templates), the configured ones are used for the cross-checks.

    Exit codes: 0 clean (info findings only); 1 an error or warning was found; 2 usage error.
    """
    from fhir_smartflow.flowfiles import require_configured_paths
    from fhir_smartflow.tooling.lint import exit_code, lint

    if not paths:
        require_configured_paths(cli.settings)
    findings = lint(list(paths), cli.settings)
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        for finding in findings:
            click.echo(str(finding))
        counts = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")}
        summary = ", ".join(f"{n} {s}(s)" for s, n in counts.items() if n) or "no findings"
        click.echo(f"lint: {summary}")
    sys.exit(exit_code(findings))


@click.command("docs")
@engine_path_options
@click.option(
    "--out",
    "out_dir",
    default="docs/flows",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for index.md and one <flow id>.md per flow.",
)
@pass_ctx
def docs_command(
    cli: CliContext,
    mappings_paths: tuple[str, ...],
    flows_paths: tuple[str, ...],
    templates_paths: tuple[str, ...],
    out_dir: str,
) -> None:
    """Write Markdown documentation of every flow (trigger, condition, each action's due rule, owner,
    reminder, methods and template text) with a Mermaid flowchart, plus an index. The output is
    deterministic: commit it and review changes as diffs.

    Exit codes: 0 written; 1 the flows do not load; 2 usage error.
    """
    from fhir_smartflow.tooling.flowdocs import write_docs

    engine = load_or_exit(cli.settings, mappings_paths, flows_paths, templates_paths)
    written = write_docs(engine, Path(out_dir))
    click.echo(f"wrote {len(written)} page(s) to {out_dir}")


@click.group("export")
def export_group() -> None:
    """Export flows in FHIR formats other tools read."""


@export_group.command("plandefinition")
@engine_path_options
@click.argument("flow_id")
@click.option("--json", "as_json", is_flag=True, help="Compact one-line JSON (default: indented).")
@pass_ctx
def export_plandefinition(
    cli: CliContext,
    mappings_paths: tuple[str, ...],
    flows_paths: tuple[str, ...],
    templates_paths: tuple[str, ...],
    flow_id: str,
    as_json: bool,
) -> None:
    """Print flow FLOW_ID as a FHIR R4 PlanDefinition (workflow-definition): one action per flow action
    with its trigger, FHIRPath condition, due timing, participant and Questionnaire.

    Exit codes: 0 printed; 1 the flows do not load; 2 unknown flow id.
    """
    from fhir_smartflow.tooling.plandefinition import plan_definition

    engine = load_or_exit(cli.settings, mappings_paths, flows_paths, templates_paths)
    flow = engine.flows.get(flow_id)
    if flow is None:
        click.echo(f"unknown flow {flow_id!r}; flows: {', '.join(sorted(engine.flows)) or 'none'}", err=True)
        sys.exit(2)
    resource = plan_definition(flow, cli.settings, engine.mappings)
    click.echo(json.dumps(resource, separators=(",", ":")) if as_json else json.dumps(resource, indent=2))


@export_group.command("structuredefinition")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Compact one-line JSON (default: indented).")
def export_structuredefinition(name: str | None, as_json: bool) -> None:
    """Print the FHIR R4 StructureDefinition of an extension the service writes (NAME; the only one, and
    the default, is allowed-audience: who should see a record prompt Flag). Load it into a FHIR server or
    validator so it knows the extension.

    Exit codes: 0 printed; 2 unknown name.
    """
    from fhir_smartflow.engine.definitions import STRUCTURE_DEFINITIONS

    names = sorted(STRUCTURE_DEFINITIONS)
    chosen = name or names[0]
    build = STRUCTURE_DEFINITIONS.get(chosen)
    if build is None:
        click.echo(f"unknown StructureDefinition {chosen!r}; known: {', '.join(names)}", err=True)
        sys.exit(2)
    resource = build()
    click.echo(json.dumps(resource, separators=(",", ":")) if as_json else json.dumps(resource, indent=2))
