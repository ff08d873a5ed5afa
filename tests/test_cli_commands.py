"""The command table: every command is found under its own name, and one command imports only its own module."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from fhir_smartflow.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_is_found_under_its_own_name(name: str) -> None:
    with click.Context(main) as ctx:
        command = main.get_command(ctx, name)
    assert isinstance(command, click.Command) and command.name == name
    assert main.get_command(click.Context(main), "no-such-command") is None


_HEALTH_IMPORTS = """
import sys
from fhir_smartflow.cli import main
try:
    main(["health", "worker"])
except SystemExit:
    pass
heavy = ("fhir_smartflow.console", "fhir.resources", "flask", "jinja2")
print(sorted(m for m in heavy if m in sys.modules))
"""


def test_a_health_probe_does_not_import_the_service() -> None:
    """The image runs `health` every 30 s: it imports its own module, not the console, FHIR models, Flask, Jinja."""
    env = {"PATH": "/usr/bin:/bin", "SMARTFLOW_CONFIG": ""}
    out = subprocess.run([sys.executable, "-c", _HEALTH_IMPORTS], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
