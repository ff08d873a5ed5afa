"""What the console's pages work with, built once per process from the settings (``build_console_deps``)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from fhir_smartflow import shipped
from fhir_smartflow.config import ConfigError, Settings, secret
from fhir_smartflow.console.accounts import Accounts
from fhir_smartflow.console.audit import Audit
from fhir_smartflow.console.auth import LoginLimiter, Sessions
from fhir_smartflow.console.keys import ConsoleKeys
from fhir_smartflow.console.oidc import OidcLogin
from fhir_smartflow.console.reload import ReloadBus
from fhir_smartflow.console.store import FlowStore, TemplateStore
from fhir_smartflow.worker.runtime import utc_now

if TYPE_CHECKING:
    from fhir_smartflow.fhir.client import FhirClient

log = logging.getLogger(__name__)

HISTORY = ".console-history"


@dataclass
class ConsoleDeps:
    settings: Settings
    redis: redis.Redis | None
    flows_dir: Path | None  # the directory saved flows go to (None: only shipped / single files configured)
    templates_dir: Path | None
    mappings_dir: Path | None
    flow_store: FlowStore
    template_store: TemplateStore
    accounts: Accounts
    audit: Audit
    reload_bus: ReloadBus | None
    fhir: FhirClient | None
    clock: Callable[[], datetime]
    sessions: Sessions
    limiter: LoginLimiter
    secret_key: str
    embedded: bool = False
    oidc: OidcLogin | None = None  # login through the EHR's server ([console] oidc_issuer)


def editable_dir(paths: list[str]) -> Path | None:
    """The first configured path that is a directory on disk (shipped data is read-only)."""
    for raw in paths:
        if not shipped.is_shipped(raw) and Path(raw).is_dir():
            return Path(raw)
    return None


def console_secret_key(settings: Settings, embedded: bool) -> str | None:
    """The cookie-signing key from the environment; embedded mode makes one for this process."""
    key = secret(settings.console.secret_key_env)
    if key:
        if len(key) < 32:
            raise ConfigError(f"${settings.console.secret_key_env}", "the console key needs at least 32 characters")
        return key
    return secrets.token_urlsafe(32) if embedded else None


def build_console_deps(
    settings: Settings,
    conn: redis.Redis | None,
    *,
    secret_key: str,
    embedded: bool = False,
    fhir: FhirClient | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> ConsoleDeps:
    keys = ConsoleKeys(settings.redis.key_prefix)
    flows_dir = editable_dir(settings.engine.flows)
    templates_dir = editable_dir(settings.engine.templates)
    history = Path(settings.console.history_dir) if settings.console.history_dir else None
    if history is None:
        anchor = flows_dir or templates_dir
        history = (anchor.parent / HISTORY) if anchor is not None else Path(os.getcwd()) / HISTORY
    audit = Audit(conn, keys, clock)
    bus = ReloadBus(conn, keys, clock) if conn is not None else None
    c = settings.console
    return ConsoleDeps(
        settings=settings,
        redis=conn,
        flows_dir=flows_dir,
        templates_dir=templates_dir,
        mappings_dir=editable_dir(settings.engine.mappings),
        flow_store=FlowStore(settings, flows_dir, history / "flows", audit=audit, bus=bus, clock=clock),
        template_store=TemplateStore(settings, templates_dir, history / "templates", audit=audit, bus=bus, clock=clock),
        accounts=Accounts.build(c.users_file, conn, keys),
        audit=audit,
        reload_bus=bus,
        fhir=fhir,
        clock=clock,
        sessions=Sessions(conn, keys, c.session_hours * 3600),
        limiter=LoginLimiter(conn, keys, c.login_attempts, c.login_window_seconds),
        secret_key=secret_key,
        embedded=embedded,
        oidc=OidcLogin.from_settings(settings),
    )
