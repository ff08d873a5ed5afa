"""The console's command-line side: mounting it in `serve`, and `fhir-smartflow console add-user|remove-user|users`."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click
import redis

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.config import ConfigError, Settings
from fhir_smartflow.console.accounts import ROLES, AccountError, Accounts, generated_password
from fhir_smartflow.console.audit import Audit
from fhir_smartflow.console.keys import ConsoleKeys
from fhir_smartflow.worker.runtime import utc_now

log = logging.getLogger(__name__)

PASSWORD_ENV = "SMARTFLOW_CONSOLE_PASSWORD"
EMBEDDED_ADMIN = "admin"


def mount_console(settings: Settings, conn: redis.Redis, mounts: dict[str, Any], *, embedded: bool) -> None:
    """Add the console to ``mounts`` at ``[console] path`` (when enabled and its signing key is set)."""
    if not settings.console.enabled:
        return
    from fhir_smartflow.console import create_console_app
    from fhir_smartflow.console.deps import build_console_deps, console_secret_key
    from fhir_smartflow.fhir.client import FhirClient

    key = console_secret_key(settings, embedded)
    if key is None:
        log.warning(
            "console not mounted: $%s (the session-signing key, the same on every host) is not set",
            settings.console.secret_key_env,
        )
        return
    try:
        fhir = FhirClient.from_settings(settings)
    except ConfigError as exc:
        log.warning("console: no FHIR client (%s); pages that search the FHIR server are unavailable", exc)
        fhir = None
    deps = build_console_deps(settings, conn, secret_key=key, embedded=embedded, fhir=fhir)
    if deps.flows_dir is None:
        log.warning("console: [engine] flows names no directory on disk: flows are read-only in the console")
    if embedded:
        _embedded_admin(deps.accounts)
    mounts[settings.console.path] = create_console_app(deps)
    log.info("console at %s", settings.console.path)


def _embedded_admin(accounts: Accounts) -> None:
    """Quick start: an admin account with a generated password, printed once (never logged)."""
    if any(user.role == "admin" for user in accounts.list()):
        return
    password = generated_password()
    accounts.add(EMBEDDED_ADMIN, password, "admin")
    bar = "=" * 72
    click.echo(
        f"\n{bar}\nCONSOLE ADMIN PASSWORD (shown once, not stored anywhere you can read it back):\n"
        f"  user: {EMBEDDED_ADMIN}\n  password: {password}\n{bar}\n",
        err=True,
    )
    log.warning("EMBEDDED MODE: console account %r created with the generated password printed above", EMBEDDED_ADMIN)


def _accounts(settings: Settings) -> tuple[Accounts, Audit]:
    """The accounts, and the audit trail their changes go to (Redis when configured)."""
    keys = ConsoleKeys(settings.redis.key_prefix)
    conn = None
    if not settings.embedded_queue:
        from fhir_smartflow.connections import connect

        conn = connect(settings)
    elif not settings.console.users_file:
        raise ConfigError("[console] users_file", "accounts live in Redis ([redis] url) or in a users_file; set one")
    return Accounts.build(settings.console.users_file, conn, keys), Audit(conn, keys, utc_now)


def _read_password() -> str:
    """From $SMARTFLOW_CONSOLE_PASSWORD, else the first line of stdin (never a command-line argument)."""
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    if sys.stdin.isatty():
        return click.prompt("password", hide_input=True, confirmation_prompt=True, err=True)  # type: ignore[no-any-return]
    return sys.stdin.readline().rstrip("\r\n")


@click.group("console")
def console_group() -> None:
    """Console accounts (argon2id hashes, in Redis or [console] users_file)."""


@console_group.command("add-user")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True)
@pass_ctx
def add_user(cli: CliContext, name: str, role: str) -> None:
    """Create or replace an account; the password comes from $SMARTFLOW_CONSOLE_PASSWORD or stdin.

    Exit 2 for a bad name, role or a password shorter than 12 characters."""
    accounts, audit = _accounts(cli.settings)
    try:
        user = accounts.add(name, _read_password(), role)
    except AccountError as exc:
        click.echo(f"console add-user: {exc}", err=True)
        sys.exit(2)
    audit.record("(command line)", "account.add", user.name, user.role)
    click.echo(f"account {user.name} ({user.role}) saved")


@console_group.command("remove-user")
@click.argument("name")
@pass_ctx
def remove_user(cli: CliContext, name: str) -> None:
    """Remove an account (its sessions end at once). Exit 1 when there is no such account."""
    accounts, audit = _accounts(cli.settings)
    if not accounts.remove(name):
        click.echo(f"console remove-user: no account {name!r}", err=True)
        sys.exit(1)
    audit.record("(command line)", "account.remove", name)
    click.echo(f"account {name} removed")


@console_group.command("users")
@pass_ctx
def list_users(cli: CliContext) -> None:
    """List the accounts and their roles."""
    for user in _accounts(cli.settings)[0].list():
        click.echo(f"{user.name}\t{user.role}")
