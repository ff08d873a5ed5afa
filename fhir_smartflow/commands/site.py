"""``fhir-smartflow init DIR``: a clinic's own site made from the shipped files."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init_command(directory: Path) -> None:
    """Create DIRECTORY as a site to edit: smartflow.toml (every key documented), copies of the shipped
    flows, templates, mappings and sample resources, JSON Schemas for editors and a README of the next
    steps. Commands run inside DIRECTORY read its smartflow.toml.

    Exit codes: 0 created; 2 DIRECTORY exists and is not empty.
    """
    from fhir_smartflow.tooling.site import SiteError, create_site

    try:
        written = create_site(directory)
    except SiteError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"created {directory} ({len(written)} files). Next:")
    click.echo(f"  cd {directory} && fhir-smartflow validate && fhir-smartflow serve --embedded")
    click.echo(f"  (see {directory / 'README.md'})")
