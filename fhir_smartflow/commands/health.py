"""``fhir-smartflow health [ROLE]``: the health check of a container or unit running one role."""

from __future__ import annotations

import sys

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.config import ConfigError, load_settings

ROLES = ("auto", "serve", "worker", "scheduler", "poller")


@click.command("health")
@click.argument("role", required=False, default="auto", type=click.Choice(ROLES))
@pass_ctx
def health_command(cli: CliContext, role: str) -> None:
    """Is the ROLE process on this host alive? serve: its /healthz answers on [server] port
    (SMARTFLOW_SERVER_PORT); worker, scheduler, poller: its liveness record in Redis is fresh.
    auto (the default, for an image that runs any role): healthy when one of them is.

    Prints one line. Exit codes: 0 healthy; 1 unhealthy, also for a configuration error or an
    unreachable Redis (container health checks reserve 2).
    """
    from fhir_smartflow.tooling.health import check

    try:
        settings = load_settings(cli.config_path)
    except ConfigError as exc:
        click.echo(f"unhealthy: configuration error: {exc}")
        sys.exit(1)
    result = check(role, settings)
    click.echo(str(result))
    sys.exit(0 if result.healthy else 1)
