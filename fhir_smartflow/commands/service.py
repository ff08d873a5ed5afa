"""``serve``, ``worker`` and ``replay``: the long-running processes and the dead-letter replay."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence

import click
import redis

from fhir_smartflow.commands.console import mount_console
from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.commands.worklist import mount_worklist
from fhir_smartflow.config import ConfigError, Settings
from fhir_smartflow.connections import WEBHOOK, connect, embedded_redis
from fhir_smartflow.fhir.server_info import warn_on_base_url
from fhir_smartflow.liveness import POLLER, SCHEDULER, Heartbeat
from fhir_smartflow.worker.embedded import WORKER_LOG_LEVEL, replay_failed, run_embedded_worker, worker_connection
from fhir_smartflow.worker.runtime import (
    Runtime,
    ServiceRuntime,
    build_runtime,
    build_service_runtime,
    install,
    reload_engine,
)
from fhir_smartflow.worker.stuck import enqueue_stuck_sweep
from fhir_smartflow.worker.supervise import (
    Liveness,
    SupervisedForkWorker,
    SupervisedSimpleWorker,
    SupervisedWorker,
    run_supervised,
    wait_for_redis,
)

log = logging.getLogger(__name__)


# What a production process needs, each with what it is for (a missing one is named at start).
NEEDS: dict[str, tuple[Callable[[Settings], bool], str]] = {
    "[redis] url": (lambda s: s.redis.shared, "the shared queue (SMARTFLOW_REDIS_URL, or [redis] sentinels)"),
    "[fhir] base_url": (lambda s: bool(s.fhir.base_url), "the FHIR server the flows read and write"),
    "[[subscriptions]]": (lambda s: bool(s.subscriptions), "how webhook deliveries authenticate, or --insecure-dev"),
}


TRY_OUT = "for a local try-out without them: `serve --embedded` (in-process queue, worker and sandbox FHIR store)"


_MODE = {True: "EMBEDDED MODE", False: "--insecure-dev"}


def _loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


def require_settings(settings: Settings, command: str, keys: Sequence[str]) -> None:
    """ConfigError naming every one of ``keys`` (NEEDS) the settings lack, and the local alternative."""
    missing = [key for key in keys if not NEEDS[key][0](settings)]
    if missing:
        why = "; ".join(NEEDS[key][1] for key in missing)
        raise ConfigError(", ".join(missing), f"required by `{command}` ({why}); {TRY_OUT}")


@click.command()
@click.option(
    "--insecure-dev", is_flag=True, help="Accept unauthenticated deliveries when no subscription is configured."
)
@click.option(
    "--embedded",
    is_flag=True,
    help="Local try-out: in-process queue (fakeredis) and worker thread, the sandbox FHIR store at "
    "/sandbox/fhir when no [fhir] base_url; implies --insecure-dev without [[subscriptions]]. "
    "NOT FOR PRODUCTION. Without it, serve needs [redis] url, [fhir] base_url and [[subscriptions]].",
)
@click.option("--host", default=None, help="Listen address (default: [server] host).")
@click.option("--port", type=int, default=None, help="Listen port (default: [server] port).")
@click.option("--threads", type=int, default=8, show_default=True, help="waitress worker threads.")
@pass_ctx
def serve(
    cli: CliContext, insecure_dev: bool, embedded: bool, host: str | None, port: int | None, threads: int
) -> None:
    """Run the webhook (waitress): authenticate, parse and queue FHIR subscription notifications.

    Needs [redis] url, [fhir] base_url and [[subscriptions]] (or --insecure-dev); `--embedded` is the
    only way to run without them, and the only mode that serves the sandbox FHIR store. Exit 2 when a
    setting is missing.
    """
    import waitress

    from fhir_smartflow.app import create_app

    settings = cli.settings
    if not embedded:
        auth = [] if insecure_dev else ["[[subscriptions]]"]
        require_settings(settings, "serve", ["[redis] url", "[fhir] base_url", *auth])
    # The embedded sandbox store and unauthenticated deliveries are for this machine only, unless --host says so.
    open_door = embedded or (insecure_dev and not settings.subscriptions)
    if open_door and host is None and not _loopback(settings.server.host):
        log.warning("%s: listening on 127.0.0.1, not %r (give --host to change)", _MODE[embedded], settings.server.host)
        host = "127.0.0.1"
    host = host or settings.server.host
    port = port if port is not None else settings.server.port
    # The embedded worker reaches the sandbox store through this listener: it must know the real address.
    settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, host=host, port=port))
    stop = threading.Event()
    if embedded:
        conn = embedded_redis()
        log.warning(
            "EMBEDDED MODE: in-process queue and worker thread; queued work is lost when the process "
            "stops. NOT FOR PRODUCTION."
        )
        if not settings.subscriptions and not insecure_dev:
            insecure_dev = True
            log.warning("EMBEDDED MODE implies --insecure-dev: webhook deliveries are NOT authenticated.")
        seen = _saved_generation(settings, conn)
        rt = _service_runtime(settings, conn)
        install(rt)
        _reload_on_sighup(rt)
        _watch_saved_changes(rt, conn, "serve", seen)
        threading.Thread(target=run_embedded_worker, args=(rt, stop), name="embedded-worker", daemon=True).start()
        _start_scheduler(rt, stop)
    else:
        conn = connect(settings, WEBHOOK)
        warn_on_base_url(settings)  # links the server writes outside base_url are refused: say what to set
    mounts: dict[str, object] = {}
    sandbox_state = None
    if embedded and settings.sandbox_fhir:  # only a try-out serves the sandbox store (and subscribes to it)
        from fhir_smartflow.commands.embedded import mount_sandbox

        sandbox_state = mount_sandbox(settings, mounts, host, port, insecure_dev)
    mount_console(settings, conn, mounts, embedded=embedded)
    sandbox_base = sandbox_state.base_url if sandbox_state else None
    mount_worklist(settings, conn, mounts, embedded=embedded, sandbox_base=sandbox_base)
    app = create_app(settings, conn, insecure_dev=insecure_dev, extra_wsgi_mounts=mounts or None)  # type: ignore[arg-type]
    log.info("serving webhook on http://%s:%s%s", host, port, settings.server.notify_path)
    # What start-up built lives as long as the process: keep it out of every later collection's walk.
    gc.collect()
    gc.freeze()
    try:
        waitress.serve(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="fhir-smartflow",
            _quiet=True,
            # waitress drops X-Forwarded-* by default; the console reads those of its configured proxies.
            clear_untrusted_proxy_headers=not settings.console.proxy_hops,
        )
    finally:
        stop.set()
        if sandbox_state is not None:
            sandbox_state.close()


def _service_runtime(settings: Settings, conn: redis.Redis) -> Runtime:
    """The full runtime, or exit 2 with the flow files' `file: field: reason` errors."""
    from fhir_smartflow.engine.loader import EngineLoadError
    from fhir_smartflow.fhir.errors import FhirError

    try:
        return build_service_runtime(settings, conn)
    except EngineLoadError as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        click.echo("flows, mappings or templates are invalid (see above); nothing started", err=True)
        sys.exit(2)
    except FhirError as exc:  # the service's Device could not be found or created
        click.echo(f"error: the FHIR server refused the service's Device: {exc}; nothing started", err=True)
        sys.exit(1)


def _reload_on_sighup(rt: Runtime) -> None:
    """`kill -HUP <pid>` reloads flows, mappings and templates; invalid files leave the running ones in place."""
    if not isinstance(rt, ServiceRuntime):
        return  # the ingest-only runtime has no flows to reload

    def reload(_signum: int, _frame: object) -> None:
        errors = reload_engine(rt)
        for error in errors:
            log.error("reload: %s", error)
        if errors:
            log.error("reload refused (%d error(s)); the flows loaded before stay active", len(errors))
        else:
            log.info("reload: %d flow(s) loaded", len(rt.engine.flows))

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, reload)


def _saved_generation(settings: Settings, conn: redis.Redis) -> int | None:
    from fhir_smartflow.console.reload import saved_generation

    return saved_generation(settings, conn)


def _watch_saved_changes(rt: Runtime, conn: redis.Redis, role: str, seen: int | None) -> None:
    """Flows saved in the console are loaded within seconds, as on SIGHUP (console/reload.py); ``seen``:
    the generation read before the files were loaded."""
    if not isinstance(rt, ServiceRuntime):
        return
    from fhir_smartflow.console.reload import watch_saved_changes

    watch_saved_changes(rt, conn, role, seen=seen)


def _start_scheduler(rt: Runtime, stop: threading.Event) -> None:
    """Follow-ups (reminders, overdue checks, recurrences, deferred deliveries) in a thread of this process."""
    if not isinstance(rt, ServiceRuntime):
        return  # nothing schedules follow-ups without the engine
    from fhir_smartflow.scheduling.scheduler import start_scheduler_thread

    Heartbeat(rt.redis, rt.keys, SCHEDULER).start()  # `health scheduler` on this host
    start_scheduler_thread(
        rt.scheduler,
        stop,
        interval_seconds=rt.settings.scheduler.interval_seconds,
        lock_ttl_seconds=rt.settings.scheduler.lock_ttl_seconds,
    )


@click.command()
@click.option("--burst", is_flag=True, help="Process what is queued, then exit.")
@click.option(
    "--with-scheduler/--without-scheduler",
    default=True,
    show_default=True,
    help="Also move due retries and scheduled jobs (gap sweeps) into the queue; at least one worker needs it.",
)
@click.option(
    "--worker-class",
    type=click.Choice(["simple", "fork"]),
    default="simple",
    show_default=True,
    help="simple: jobs run in this process (fast); fork: each job in a forked child (isolation).",
)
@pass_ctx
def worker(cli: CliContext, burst: bool, with_scheduler: bool, worker_class: str) -> None:
    """Run an rq worker on the configured Redis: dedupe, gap checks, fetch, dispatch."""
    settings = cli.settings
    require_settings(settings, "worker", ["[redis] url", "[fhir] base_url"])
    if worker_class == "fork" and settings.redis.sentinels:
        # rq's work horse rebuilds its client from plain connection arguments: it cannot follow the sentinels.
        raise ConfigError("--worker-class fork", "not with [redis] sentinels; use --worker-class simple")
    conn = worker_connection(settings)
    wait_for_redis(conn)  # a worker (re)started while Redis restarts waits for it instead of exiting
    seen = _saved_generation(settings, conn)
    warn_on_base_url(settings)
    rt = _service_runtime(settings, conn)
    install(rt)
    _reload_on_sighup(rt)
    _watch_saved_changes(rt, conn, "worker", seen)
    if with_scheduler:  # due rq jobs (retries, gap sweeps) move in Liveness; our follow-ups in a thread
        _start_scheduler(rt, threading.Event())
    if settings.poll.enabled:  # servers without subscriptions: poll inside the worker (docs/openemr.md)
        from fhir_smartflow.ingest.poll import run_poller

        run_poller(settings, threading.Event(), conn)
        Heartbeat(conn, rt.keys, POLLER).start()
    cls = SupervisedSimpleWorker if worker_class == "simple" else SupervisedForkWorker
    liveness = Liveness(
        conn,
        rt.keys,
        rt.queue,
        threading.Event(),
        move_scheduled=with_scheduler,
        periodic=lambda: enqueue_stuck_sweep(rt),
    )
    liveness.start()  # also in --burst: a long job must not look abandoned to the other workers

    def make_worker(name: str) -> SupervisedWorker:
        w = cls([rt.queue], connection=conn, name=name)
        log.info("worker %s (%s) on queue %s", w.name, worker_class, rt.queue.name)
        return w

    # Survives Redis restarts (a fresh rq worker after a backoff); ends on SIGTERM / SIGINT.
    run_supervised(
        make_worker,
        liveness,
        burst=burst,
        # rq's scheduler stays off: Liveness moves due jobs (see there why).
        work=lambda w: w.work(burst=burst, with_scheduler=False, logging_level=WORKER_LOG_LEVEL),
    )


@click.command()
@click.option(
    "--failed", is_flag=True, default=True, help="Replay rq's failed-job registry (the default and only source)."
)
@click.option("--json", "as_json", is_flag=True, help="Print what was replayed as JSON.")
@pass_ctx
def replay(cli: CliContext, failed: bool, as_json: bool) -> None:
    """Re-enqueue failed jobs (their payload is kept in rq's failed registry)."""
    settings = cli.settings
    if settings.embedded_queue:
        click.echo("configuration error: [redis] url: replay needs the shared Redis", err=True)
        sys.exit(2)
    rt = build_runtime(settings, worker_connection(settings))
    done = replay_failed(rt)
    if as_json:
        click.echo(json.dumps({"replayed": done}, indent=2))
        return
    for item in done:
        click.echo(f"replayed {item['job_id']} -> {item['new_job_id']}: {item['description']} ({item['reason']})")
    click.echo(f"{len(done)} failed job(s) re-enqueued")
