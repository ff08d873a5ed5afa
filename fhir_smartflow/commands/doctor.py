"""``fhir-smartflow doctor``: check a live installation end to end, one line per check with the fix."""

from __future__ import annotations

import json
import sys

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx


@click.command("doctor")
@click.option("--check", "names", multiple=True, help="Run only this check (repeatable); see --list.")
@click.option("--list", "list_checks", is_flag=True, help="List the checks and what each looks at.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON (for monitoring).")
@pass_ctx
def doctor_command(cli: CliContext, names: tuple[str, ...], list_checks: bool, as_json: bool) -> None:
    """Check Redis, the FHIR server, auth, the Device, subscriptions and the queue. Exit 0 when every
    check passes (warnings allowed), 1 when one fails, 2 on a configuration error."""
    from fhir_smartflow.connections import connect
    from fhir_smartflow.fhir.client import FhirClient
    from fhir_smartflow.flowfiles import load_engine
    from fhir_smartflow.tooling.doctor.checks import CHECKS, run_checks
    from fhir_smartflow.tooling.doctor.model import DoctorContext

    if list_checks:
        for name, cls in CHECKS.items():
            click.echo(f"{name:24} {cls.about}")
        return
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        click.echo(f"doctor: unknown check {', '.join(unknown)} (see --list)", err=True)
        sys.exit(2)
    settings = cli.settings
    ctx = DoctorContext(
        settings=settings,
        make_client=lambda: FhirClient.from_settings(settings),
        make_redis=lambda: connect(settings),
        load_engine=lambda: load_engine(settings),
    )
    findings = run_checks(ctx, list(names) or None)
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        for f in findings:
            fix = f" — fix: {f.fix}" if f.fix else ""
            click.echo(f"{f.status.upper():4} {f.check}: {f.detail}{fix}")
    sys.exit(1 if any(f.status == "fail" for f in findings) else 0)
