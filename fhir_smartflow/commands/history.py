"""``fhir-smartflow history``: recent flow runs stored in Redis by the workers."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx


def _feedback_line(rec: dict[str, Any]) -> str:
    """What a user did with a CDS Hooks card (cds/feedback.py)."""
    fb = rec.get("feedback", {})
    reason = fb.get("reason") or {}
    why = f"  reason: {reason.get('system')}|{reason.get('code')}" if reason else ""
    name = rec.get("trigger", {}).get("name")
    head = f"{rec.get('at')}  {name}  {fb.get('flag') or '-'}  patient={fb.get('patient') or '-'}"
    return f"{head}\n    card {fb.get('outcome')} by {fb.get('user') or '-'}  flow: {fb.get('flow') or '-'}{why}"


def _line(rec: dict[str, Any]) -> str:
    if rec.get("kind") == "cds-feedback":
        return _feedback_line(rec)
    trig = rec.get("trigger", {})
    ran = [f["id"] for f in rec.get("flows", []) if f.get("ran")]
    skipped = [f"{f['id']} ({f.get('reason', '')})" for f in rec.get("flows", []) if not f.get("ran")]
    written = ", ".join(f"{w.get('type')}/{w.get('id') or '?'}" for w in rec.get("written", [])) or "-"
    deliveries = ", ".join(f"{d.get('channel')}:{d.get('status')}" for d in rec.get("deliveries", [])) or "-"
    parts = [
        f"{rec.get('at')}  {trig.get('name')}  {trig.get('focus') or '-'}  patient={trig.get('patient') or '-'}",
        f"    ran: {', '.join(ran) or '-'}" + (f"   not run: {'; '.join(skipped)}" if skipped else ""),
        f"    written: {written}",
        f"    deliveries: {deliveries}   scheduled: {len(rec.get('scheduled', []))}",
    ]
    if rec.get("errors"):
        parts.append(f"    errors: {' | '.join(rec['errors'])}")
    return "\n".join(parts)


@click.command("history")
@click.option("--patient", help="Only runs for this patient (123 or Patient/123).")
@click.option("--flow", "flow_id", help="Only runs that considered this flow id.")
@click.option("--since", help="Only runs at or after this ISO date or instant (UTC if no offset).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000), help="At most N runs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of run records.")
@pass_ctx
def history_command(
    cli: CliContext, patient: str | None, flow_id: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """Recent flow runs, newest first: trigger, flows run or skipped (and why), resources written, deliveries,
    follow-ups scheduled, errors. References only, never names or message bodies.

    Exit codes: 0 ok (also when no run matches), 2 bad option or no Redis configured.
    """
    from fhir_smartflow.connections import connect
    from fhir_smartflow.worker.history import RunHistory, parse_since

    settings = cli.settings
    if settings.embedded_queue:
        click.echo(
            "history needs [redis] url: with the embedded queue, runs live inside the serve process only", err=True
        )
        sys.exit(2)
    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    store = RunHistory.from_settings(settings, connect(settings))
    runs = store.query(patient=patient, flow=flow_id, since=since_at, limit=limit)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    if not runs:
        click.echo("no flow runs match")
        return
    for rec in runs:
        click.echo(_line(rec))
