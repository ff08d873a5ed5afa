"""The ``fhir-smartflow`` command line. Each command is thin: it loads settings and calls a module.

Exit codes: 0 success; 1 the command ran and found problems (invalid flows, failed checks);
2 usage or configuration error.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click

from fhir_smartflow import defaults
from fhir_smartflow.commands.context import CliContext

# Command name → "module:attribute" of its click command (commands live in fhir_smartflow/commands/).
# A command's module is imported when that command is looked up: `health`, which the image runs every
# 30 s, would otherwise import the whole service first (≈ 1 s of CPU per probe).
COMMANDS: dict[str, str] = {
    "serve": "fhir_smartflow.commands.service:serve",
    "worker": "fhir_smartflow.commands.service:worker",
    "replay": "fhir_smartflow.commands.service:replay",
    "validate": "fhir_smartflow.commands.flows:validate",
    "console": "fhir_smartflow.commands.console:console_group",
    "sandbox": "fhir_smartflow.commands.sandbox:sandbox_command",
    "poll": "fhir_smartflow.commands.poll:poll",
    "openemr": "fhir_smartflow.commands.openemr:openemr",
    "scheduler": "fhir_smartflow.commands.scheduling:scheduler_command",
    "simulate": "fhir_smartflow.commands.flowtools:simulate_command",
    "lint": "fhir_smartflow.commands.flowtools:lint_command",
    "docs": "fhir_smartflow.commands.flowtools:docs_command",
    "export": "fhir_smartflow.commands.flowtools:export_group",
    "subscriptions": "fhir_smartflow.commands.subscriptions:subscriptions_group",
    "history": "fhir_smartflow.commands.history:history_command",
    "doctor": "fhir_smartflow.commands.doctor:doctor_command",
    "init": "fhir_smartflow.commands.site:init_command",
    "health": "fhir_smartflow.commands.health:health_command",
    "schema": "fhir_smartflow.commands.schema:schema_command",
    "scopes": "fhir_smartflow.commands.scopes:scopes_command",
}


class SmartflowGroup(click.Group):
    """The commands of `COMMANDS`, each imported when it is looked up; and the ordinary failures a command
    lets through (commands/failures.py) as one line on stderr and the documented exit code, instead of a
    traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

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
