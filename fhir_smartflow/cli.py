"""The ``fhir-smartflow`` command line. Each command is thin: it loads settings and calls a module.

Exit codes: 0 success; 1 the command ran and found problems (invalid flows, failed checks);
2 usage or configuration error.
"""

from __future__ import annotations

from typing import Any

import click

from fhir_smartflow.commands import service as _service
from fhir_smartflow.commands.context import CliContext
from fhir_smartflow.commands.doctor import doctor_command
from fhir_smartflow.commands.flows import validate
from fhir_smartflow.commands.flowtools import docs_command, export_group, lint_command, simulate_command
from fhir_smartflow.commands.history import history_command
from fhir_smartflow.commands.openemr import openemr as _openemr_cmd
from fhir_smartflow.commands.poll import poll as _poll_cmd
from fhir_smartflow.commands.sandbox import sandbox_command
from fhir_smartflow.commands.scheduling import scheduler_command
from fhir_smartflow.commands.scopes import scopes_command
from fhir_smartflow.commands.subscriptions import subscriptions_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="SMARTFLOW_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (TOML). Default: $SMARTFLOW_CONFIG, else built-in defaults.",
)
@click.version_option(package_name="fhir-smartflow")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """fhir-smartflow: Smart Flows for EHRs, driven by FHIR Subscriptions."""
    ctx.obj = CliContext(config_path)


def run() -> Any:  # pragma: no cover - console entry point
    return main()


# Commands live in fhir_smartflow/commands/<area>.py; registered here.
main.add_command(_service.serve)
main.add_command(_service.worker)
main.add_command(_service.replay)
main.add_command(validate)
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
main.add_command(scopes_command)
