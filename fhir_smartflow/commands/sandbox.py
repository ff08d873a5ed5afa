"""`fhir-smartflow sandbox`: run the sandbox FHIR store on its own (waitress)."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any
from urllib.parse import urlsplit

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.config import ConfigError
from fhir_smartflow.sandbox.profiles import PROFILES, profile_named

log = logging.getLogger(__name__)


@click.command("sandbox")
@click.option("--host", default=None, help="Interface to listen on (default: [server] host).")
@click.option("--port", type=int, default=None, help="Port (default: 8090).")
@click.option("--database", default=None, help="SQLite file, or :memory: (default: [sandbox] database).")
@click.option("--faults/--no-faults", default=None, help="Enable /$faults fault injection (default: [sandbox] faults).")
@click.option("--threads", type=int, default=8, show_default=True, help="waitress worker threads.")
@click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default=None,
    help="Server behaviours to reproduce (default: [sandbox] profile, lenient): "
    + "; ".join(f"{p.name}: {p.summary}" for p in PROFILES.values()),
)
@click.option(
    "--public-base-url",
    default=None,
    help="The base URL written into links (default: [sandbox] public_base_url, else http://HOST:PORT).",
)
@pass_ctx
def sandbox_command(
    ctx: CliContext,
    host: str | None,
    port: int | None,
    database: str | None,
    faults: bool | None,
    threads: int,
    profile: str | None,
    public_base_url: str | None,
) -> None:
    """Run the sandbox FHIR R4 store alone (for tests and "test your flow before going live").

    Not for production: no authentication (unless a strict profile has [sandbox.clients]), no PHI. The FHIR
    base is http://HOST:PORT/.
    """
    from waitress import create_server
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from fhir_smartflow.sandbox.app import create_sandbox_app
    from fhir_smartflow.sandbox.store import Store

    settings = ctx.settings
    host = host or settings.server.host
    port = 8090 if port is None else port
    try:
        chosen = profile_named(profile or settings.sandbox.profile)
    except ConfigError as exc:
        click.echo(f"sandbox: {exc}", err=True)
        sys.exit(2)
    public = public_base_url or settings.sandbox.public_base_url or f"http://{host}:{port}"
    if not public.startswith(("http://", "https://")):
        click.echo(f"sandbox: --public-base-url must be an http(s) URL, got {public!r}", err=True)
        sys.exit(2)
    try:
        store = Store(database or settings.sandbox.database)
    except Exception as exc:  # sqlite3 errors: bad path, unreadable file
        click.echo(f"sandbox: cannot open database: {exc}", err=True)
        sys.exit(2)
    try:
        app = create_sandbox_app(settings, store, base_url=public, faults=faults, profile=chosen.name)
    except ConfigError as exc:  # [sandbox.clients] without their secrets
        click.echo(f"sandbox: {exc}", err=True)
        sys.exit(2)
    # A public base with a path (http://localhost:8103/fhir) is served under that path too, so clients can
    # use the same path on another host name (127.0.0.1), as with a server configured under its own name.
    prefix = urlsplit(public).path.rstrip("/")
    served: Any = DispatcherMiddleware(app, {prefix: app}) if prefix else app
    server: Any = create_server(served, host=host, port=port, threads=threads)
    state = app.extensions["sandbox"]
    log.warning(
        "sandbox FHIR store on http://%s:%s (profile %s, database %s%s) - NOT FOR PRODUCTION",
        host,
        server.effective_port,
        chosen.name,
        store.database,
        ", fault injection ON" if state.faults else "",
    )

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        state.close()
        store.close()
        server.close()
