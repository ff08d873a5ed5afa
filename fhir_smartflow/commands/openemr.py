"""`fhir-smartflow openemr ...`: the one-time user authorization for writes, and key generation."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlparse

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.config import ConfigError


@click.group("openemr")
def openemr() -> None:
    """OpenEMR bridge: authorize the write token, check its state."""


@openemr.command("keygen")
def keygen() -> None:
    """Print a new Fernet key for [openemr] token_key_env (tokens are encrypted at rest with it)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


def _wait_for_redirect(redirect_uri: str, timeout: float) -> str | None:
    """Serve one request on the redirect URI's port (127.0.0.1 only) and return its full URL."""
    parsed = urlparse(redirect_uri)
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(f"{redirect_uri.split('?')[0]}?{urlparse(self.path).query}")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"fhir-smartflow: authorization received. You can close this window.\n")

        def log_message(self, *args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", parsed.port or 80), Handler)
    server.timeout = timeout
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    thread.join(timeout)
    server.server_close()
    return received[0] if received else None


@openemr.command("authorize")
@click.option("--paste", is_flag=True, help="Do not listen on the redirect port; paste the redirect URL instead.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the browser redirect.")
@pass_ctx
def authorize(ctx: CliContext, paste: bool, timeout: float) -> None:
    """Log in to OpenEMR once (authorization code + PKCE + offline_access) and store the refresh token.

    Open the printed URL, log in as the OpenEMR user the messages should come from, approve the scopes.
    Exit codes: 0 stored; 1 OpenEMR refused; 2 configuration error.
    """
    from fhir_smartflow.connections import connect
    from fhir_smartflow.fhir.errors import FhirError
    from fhir_smartflow.metrics import Metrics
    from fhir_smartflow.openemr.errors import OpenEmrError
    from fhir_smartflow.openemr.factory import authorize_scopes, fhir_base, user_token_store
    from fhir_smartflow.openemr.tokens import build_authorization_request, exchange_code, parse_redirect

    settings = ctx.settings
    try:
        conn = connect(settings)
        store = user_token_store(settings, conn, Metrics(conn, settings.redis.key_prefix))
        scopes = authorize_scopes(settings)
    except (ConfigError, OpenEmrError) as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    except FhirError as exc:
        click.echo(f"cannot read OpenEMR's smart-configuration: {exc}", err=True)
        sys.exit(1)
    emr = settings.openemr
    request = build_authorization_request(
        f"{emr.oauth_base}/authorize", store.client_id, emr.redirect_uri, scopes, fhir_base(settings)
    )
    click.echo("Open this URL in a browser, log in to OpenEMR and approve:\n")
    click.echo(request.url + "\n")
    redirected = None if paste else _wait_for_redirect(emr.redirect_uri, timeout)
    if redirected is None:
        redirected = click.prompt("Paste the full URL the browser was sent to (or the code)")
    try:
        code, state = parse_redirect(redirected)
        body = exchange_code(store, request, code, state)
    except FhirError as exc:  # the token endpoint refused (TokenRefused) or was unreachable
        click.echo(f"authorization failed: {exc}", err=True)
        sys.exit(1)
    click.echo(f"stored the OpenEMR refresh token (encrypted); scopes granted: {body.get('scope', '')}")


@openemr.command("status")
@pass_ctx
def status(ctx: CliContext) -> None:
    """Say whether a write token is stored and whether writes are degraded. Exit 1 when degraded."""
    from fhir_smartflow.connections import connect
    from fhir_smartflow.openemr.errors import OpenEmrError
    from fhir_smartflow.openemr.factory import user_token_store

    settings = ctx.settings
    try:
        store = user_token_store(settings, connect(settings))
    except (ConfigError, OpenEmrError) as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    degraded = store.degraded()
    click.echo(f"refresh token stored: {'yes' if store.has_refresh_token() else 'no'}")
    click.echo(f"scopes: {store.granted_scopes() or '-'}")
    click.echo(f"writes: {'DEGRADED: ' + degraded if degraded else 'ok'}")
    sys.exit(1 if degraded or not store.has_refresh_token() else 0)


@openemr.command("register")
@click.option("--print", "print_only", is_flag=True, help="Print the registration request; do not send it.")
@pass_ctx
def register(ctx: CliContext, print_only: bool) -> None:
    """Register the client with OpenEMR (dynamic registration), with the scopes the server knows.

    Prints the client id, the client secret (keep it in the environment variable named by [openemr]
    client_secret_env) and the [fhir] scopes line. The new client starts disabled: an OpenEMR administrator
    enables it under Administration → System → API Clients. Exit codes: 0 registered; 1 OpenEMR refused;
    2 configuration error.
    """
    import json

    import requests

    from fhir_smartflow.config import read_secret_file
    from fhir_smartflow.fhir.errors import FhirError
    from fhir_smartflow.ingest.poll import poll_types
    from fhir_smartflow.openemr.factory import fhir_base, smart_configuration
    from fhir_smartflow.openemr.registration import RegistrationRefused, jwks_of, register, registration_request

    settings = ctx.settings
    emr = settings.openemr
    key_file = emr.private_key_file or settings.fhir.private_key_file
    if not emr.base_url or not key_file:
        click.echo("configuration error: [openemr] base_url and [fhir] private_key_file are required", err=True)
        sys.exit(2)
    try:
        jwks = jwks_of(read_secret_file(key_file, "[fhir] private_key_file"), emr.key_id or settings.fhir.key_id)
        configuration = smart_configuration(settings)
        metadata = requests.get(f"{fhir_base(settings)}/metadata", timeout=emr.timeout_seconds).json()
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    except (FhirError, requests.RequestException, ValueError) as exc:
        click.echo(f"cannot read OpenEMR's smart-configuration / CapabilityStatement: {exc}", err=True)
        sys.exit(1)
    served = {str(r.get("type")) for rest in metadata.get("rest") or [] for r in rest.get("resource") or []}
    wanted = (set(poll_types(settings)) | {"Patient"}) & served
    registration = registration_request(configuration, wanted, emr.redirect_uri, jwks)
    if print_only:
        click.echo(json.dumps(registration.body, indent=2))
        return
    endpoint = f"{emr.oauth_base}/registration"
    try:
        answer = register(requests.Session(), endpoint, registration, emr.timeout_seconds)
    except RegistrationRefused as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(f"registered client {answer.get('client_name') or 'fhir-smartflow'} at {endpoint}")
    click.echo(f'client_id = "{answer["client_id"]}"')
    click.echo(f"client secret: export {emr.client_secret_env}='{answer.get('client_secret', '')}'")
    click.echo(f'[fhir] scopes = "{registration.read_scopes}"')
    click.echo(f"user scopes (openemr authorize): {registration.user_scopes}")
    click.echo(
        "next: an OpenEMR administrator enables the client: Administration → System → API Clients → "
        "fhir-smartflow → Enable"
    )
