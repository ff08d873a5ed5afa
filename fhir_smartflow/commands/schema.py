"""``fhir-smartflow schema``: the JSON Schemas of flow, template and mapping files, for editors."""

from __future__ import annotations

from pathlib import Path

import click

from fhir_smartflow.engine.schema import KINDS


@click.command("schema")
@click.argument("kind", required=False, type=click.Choice(KINDS))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write <kind>.schema.json for every kind into this directory instead of printing one.",
)
def schema_command(kind: str | None, out_dir: Path | None) -> None:
    """Print the JSON Schema (draft-07) of KIND files (flow, template or mapping), or write all of them
    with --out. TOML editors (taplo, Even Better TOML) use them to check and complete the files as they
    are typed; `validate` stays the authority (it also checks templates, roles and FHIRPath).

    Exit codes: 0 printed or written; 2 usage error (no KIND and no --out).
    """
    from fhir_smartflow.tooling.site import schema_text, write_schemas

    if out_dir is not None:
        for path in write_schemas(out_dir):
            click.echo(f"wrote {path}")
        return
    if kind is None:
        raise click.UsageError("give KIND (flow, template or mapping) or --out DIR")
    click.echo(schema_text(kind), nl=False)
