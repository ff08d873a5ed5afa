"""What every command gets: the config path and, loaded on first use, the settings."""

from __future__ import annotations

import sys

import click

from fhir_smartflow import logs
from fhir_smartflow.config import ConfigError, Settings, load_settings


class CliContext:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None

    @property
    def loaded_settings(self) -> Settings | None:
        """The settings if a command has loaded them (for error messages), else None."""
        return self._settings

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path)
            except ConfigError as exc:
                click.echo(f"configuration error: {exc}", err=True)
                sys.exit(2)
            logs.configure(self._settings.logging.level, self._settings.logging.json)
        return self._settings


pass_ctx = click.make_pass_decorator(CliContext)
