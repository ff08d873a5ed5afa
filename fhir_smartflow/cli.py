"""The ``fhir-smartflow`` command line. Each command is thin: it loads settings and calls a module.

Exit codes: 0 success; 1 the command ran and found problems (invalid flows, failed checks);
2 usage or configuration error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fhir_smartflow import defaults
from fhir_smartflow.commands import service as _service
from fhir_smartflow.commands.console import console_group
from fhir_smartflow.commands.context import CliContext
from fhir_smartflow.commands.doctor import doctor_command
from fhir_smartflow.commands.flows import validate
from fhir_smartflow.commands.flowtools import docs_command, export_group, lint_command, simulate_command
from fhir_smartflow.commands.health import health_command
from fhir_smartflow.commands.history import history_command
from fhir_smartflow.commands.openemr import openemr as _openemr_cmd
from fhir_smartflow.commands.poll import poll as _poll_cmd
from fhir_smartflow.commands.sandbox import sandbox_command
from fhir_smartflow.commands.scheduling import scheduler_command
from fhir_smartflow.commands.schema import schema_command
from fhir_smartflow.commands.scopes import scopes_command
from fhir_smartflow.commands.site import init_command
from fhir_smartflow.commands.subscriptions import subscriptions_group


class SmartflowGroup(click.Group):
    """Turns the ordinary failures a command lets through (commands/failures.py) into one line on stderr
    and the documented exit code, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from fhir_smartflow.commands.failures import explain

            cli = ctx.find_object(CliContext)
            answer = explain(exc, cli.loaded_settings if cli is not None else None)
            if answer is None:
                raise
            line, code = answer
            click.echo(line, err=True)
            ctx.exit(code)


@click.group(cls=SmartflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="SMARTFLOW_CONFIG",
    type=click.Path(dir_okay=False),
    help=f"Config file (TOML). Default: $SMARTFLOW_CONFIG, else ./{defaults.CONFIG_FILE} if there is one, "
    "else the built-in defaults.",
)
@click.version_option(package_name="fhir-smartflow")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """fhir-smartflow: Smart Flows for EHRs, driven by FHIR Subscriptions."""
    if config_path is None and Path(defaults.CONFIG_FILE).is_file():
        config_path = defaults.CONFIG_FILE  # a site made by `init`, run from its directory
    ctx.obj = CliContext(config_path)


def run() -> Any:  # pragma: no cover - console entry point
    return main()


# Commands live in fhir_smartflow/commands/<area>.py; registered here.
main.add_command(_service.serve)
main.add_command(_service.worker)
main.add_command(_service.replay)
main.add_command(validate)
main.add_command(console_group)
main.add_command(sandbox_command)
main.add_command(_poll_cmd)
main.add_command(_openemr_cmd)
main.add_command(scheduler_command)
main.add_command(simulate_command)
main.add_command(lint_command)
main.add_command(docs_command)
main.add_command(export_group)
main.add_command(subscriptions_group)
main.add_command(history_command)
main.add_command(doctor_command)
main.add_command(init_command)
main.add_command(health_command)
main.add_command(schema_command)
main.add_command(scopes_command)
