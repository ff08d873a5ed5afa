"""``fhir-smartflow scheduler``: the follow-up scheduler loop (one active per Redis; others stand by)."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.connections import Keys, connect
from fhir_smartflow.liveness import SCHEDULER, Heartbeat
from fhir_smartflow.scheduling.scheduler import SchedulerLock, build_scheduler, iter_pending, run_scheduler_loop


@click.command("scheduler")
@click.option("--once", is_flag=True, help="Run one tick (enqueue what is due now) and exit.")
@click.option("--status", is_flag=True, help="Show pending follow-ups and the active scheduler, then exit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with --status / --once).")
@pass_ctx
def scheduler_command(ctx: CliContext, once: bool, status: bool, as_json: bool) -> None:
    """Move due reminders, overdue checks, recurrences and deferred deliveries into the rq queue.

    Safe to start twice: a Redis lock keeps one active, the other waits as a standby and takes over
    when the active one stops. `fhir-smartflow worker --with-scheduler` runs the same loop in a thread.
    """
    settings = ctx.settings
    if settings.embedded_queue:
        click.echo("configuration error: the scheduler needs [redis] url (SMARTFLOW_REDIS_URL)", err=True)
        sys.exit(2)
    conn = connect(settings)
    scheduler = build_scheduler(settings, conn)
    if status:
        lock = SchedulerLock(conn, scheduler.skeys.lock)
        nxt = scheduler.next_due()
        info: dict[str, Any] = {
            "pending": scheduler.pending_count(),
            "next_due": nxt.isoformat() if nxt else None,
            "active_scheduler": lock.holder(),
            "now": scheduler.clock().isoformat(),
            "soonest": [
                {"kind": p.kind, "at": p.at.isoformat(), "identifier": p.identifier}
                for p in iter_pending(scheduler, 10)
            ],
        }
        if as_json:
            click.echo(json.dumps(info, indent=2))
        else:
            click.echo(f"pending follow-ups: {info['pending']} (next due {info['next_due'] or '-'})")
            click.echo(f"active scheduler:   {info['active_scheduler'] or 'none'}")
            for p in info["soonest"]:
                click.echo(f"  {p['at']}  {p['kind']:<10} {p['identifier']}")
        return
    if once:
        fired = scheduler.tick()
        click.echo(json.dumps({"enqueued": fired}) if as_json else f"enqueued {fired} due follow-up(s)")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Heartbeat(conn, Keys(settings.redis.key_prefix), SCHEDULER):  # `health scheduler`, also standing by
        run_scheduler_loop(
            scheduler,
            stop,
            interval_seconds=settings.scheduler.interval_seconds,
            lock_ttl_seconds=settings.scheduler.lock_ttl_seconds,
        )
