"""`fhir-smartflow poll`: the polling bridge for FHIR servers without subscriptions."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.config import ConfigError


@click.command("poll")
@click.option("--once", is_flag=True, help="One pass per resource type, print what was found and queued, exit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with --once).")
@pass_ctx
def poll(ctx: CliContext, once: bool, as_json: bool) -> None:
    """Search the FHIR server for changes since the last pass and queue them like webhook notifications.

    Exit codes: 0 ok; 1 a pass failed (with --once); 2 configuration error.
    """
    from fhir_smartflow.ingest.poll import NothingToPoll, build_poller

    settings = ctx.settings
    try:
        poller = build_poller(settings)
        strategies = poller.require_something()
    except NothingToPoll as exc:
        click.echo(f"poller: {exc}", err=True)
        sys.exit(1)
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:
        click.echo(f"cannot read the server's CapabilityStatement: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    if not as_json:
        for plan in strategies:
            click.echo(f"strategy {plan.resource_type}: {plan.strategy} ({plan.reason})")
    if once:
        results: list[dict[str, Any]] = []
        failed = False
        for plan in strategies:
            try:
                results.append(poller.poll(plan).to_dict())
            except Exception as exc:
                failed = True
                results.append(
                    {
                        "resource_type": plan.resource_type,
                        "strategy": plan.strategy,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
        if as_json:
            click.echo(json.dumps({"strategies": [p.to_dict() for p in strategies], "results": results}, indent=2))
        else:
            for r in results:
                if r.get("error"):
                    click.echo(f"{r['resource_type']}: ERROR {r['error']}")
                else:
                    click.echo(
                        f"{r['resource_type']}: found {r['found']}, queued {r['queued']} "
                        f"({r['pages']} pages; {r.get('watermark') or '-'}) {r.get('note') or ''}".rstrip()
                    )
        sys.exit(1 if failed else 0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from fhir_smartflow.connections import Keys, connect
    from fhir_smartflow.liveness import POLLER, Heartbeat

    click.echo("polling; stop with Ctrl-C")
    with Heartbeat(connect(settings), Keys(settings.redis.key_prefix), POLLER):  # `health poller`
        poller.run(stop)
