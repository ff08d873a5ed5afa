"""``fhir-smartflow scopes``: the scopes the service needs with this configuration and these flows.

What to register the client with (a Medplum ClientApplication's access policy, an OpenEMR API client,
an EHR's app registration) and what ``[fhir] scopes = ""`` asks for at the token endpoint.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.config import SCOPE_SYNTAXES

if TYPE_CHECKING:
    from fhir_smartflow.config import Settings
    from fhir_smartflow.fhir.smart import SmartConfiguration


@click.command("scopes")
@click.option(
    "--syntax",
    type=click.Choice(SCOPE_SYNTAXES),
    default=None,
    help="SMART v2 (.rs, .cu) or v1 (.read, .write); auto asks the server. Default: [fhir] scope_syntax.",
)
@click.option("--why", is_flag=True, help="One line per resource type with the code paths that need it.")
@click.option("--json", "as_json", is_flag=True, help="Print scopes and reasons as JSON.")
@pass_ctx
def scopes_command(cli: CliContext, syntax: str | None, why: bool, as_json: bool) -> None:
    """Print the scopes the service needs on the FHIR server (exit 2 when the flows do not load)."""
    from fhir_smartflow.fhir.scopes import Scopes, ScopeSyntax, choose_scope_syntax, offered
    from fhir_smartflow.fhir.service_scopes import needed_scopes, service_uses
    from fhir_smartflow.flowfiles import EngineLoadError, load_engine

    settings = cli.settings
    try:
        engine = load_engine(settings)
    except EngineLoadError as exc:
        problems = len(exc.errors)
        click.echo(f"scopes: the flows do not load ({problems} problem(s)); run `fhir-smartflow validate`", err=True)
        sys.exit(2)
    configuration = _configuration(settings) if (syntax or settings.fhir.scope_syntax) == "auto" else None
    chosen = choose_scope_syntax(configuration, syntax or settings.fhir.scope_syntax)
    uses = service_uses(engine, settings)
    needed = needed_scopes(engine, settings)
    if as_json:
        reasons = [{"resource_type": u.resource_type, "letters": u.letters, "why": u.why} for u in uses]
        click.echo(json.dumps({"syntax": chosen.value, "scopes": needed.render(chosen), "uses": reasons}, indent=2))
        return
    if why:
        for scope in needed.resources:
            reasons = "; ".join(dict.fromkeys(u.why for u in uses if u.resource_type == scope.resource_type))
            click.echo(f"{' '.join(scope.render(chosen)):48} {reasons}")
    else:
        click.echo(needed.render(chosen))
    if chosen is ScopeSyntax.V1:
        click.echo("note: in SMART v1 .write also allows delete; v1 has no narrower form", err=True)
    if configuration is not None:
        _, absent = offered(needed, Scopes.parse(" ".join(configuration.scopes_supported)))
        if absent:
            click.echo(f"note: the server offers no scope for {absent.render(chosen)}", err=True)
    if settings.fhir.scopes:
        click.echo(f"note: [fhir] scopes is set; the service asks for that instead: {settings.fhir.scopes}", err=True)


def _configuration(settings: Settings) -> SmartConfiguration | None:
    """What the configured server advertises; None without a server or when it cannot be read."""
    from fhir_smartflow.fhir.errors import FhirError
    from fhir_smartflow.fhir.smart import read_smart_configuration
    from fhir_smartflow.fhir.transport import Transport

    if not settings.fhir.base_url:
        return None
    http = Transport(settings.fhir.base_url, timeout=settings.fhir.timeout_seconds, media_type="application/json")
    try:
        return read_smart_configuration(http)
    except FhirError as exc:
        click.echo(f"note: could not read {settings.fhir.base_url}'s SMART configuration ({exc}); using v2", err=True)
        return None
