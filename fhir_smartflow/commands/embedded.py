"""`serve` without a FHIR server: mount the sandbox store and subscribe the webhook to it."""

from __future__ import annotations

import logging
from typing import Any

from fhir_smartflow.config import Settings, secret
from fhir_smartflow.connections import connect_host
from fhir_smartflow.flowfiles import load_engine
from fhir_smartflow.sandbox.app import SandboxState, create_sandbox_app
from fhir_smartflow.sandbox.subscriptions import ensure_self_subscriptions

log = logging.getLogger(__name__)

DEV_HEADER = "X-Smartflow-Secret"


def mount_sandbox(settings: Settings, mounts: dict[str, Any], host: str, port: int, insecure_dev: bool) -> SandboxState:
    """Add the sandbox store to ``mounts`` and subscribe ``serve``'s own webhook to the types the flows need."""
    base = f"http://{connect_host(host)}:{port}{settings.sandbox.path}"
    app = create_sandbox_app(settings, base_url=base)
    mounts[settings.sandbox.path] = app
    state: SandboxState = app.extensions["sandbox"]
    log.warning(
        "no [fhir] base_url: writing to the built-in SANDBOX FHIR store at %s (database %s). NOT FOR PRODUCTION.",
        base,
        settings.sandbox.database,
    )
    header, value = _self_credentials(settings, insecure_dev)
    if header is None:
        log.warning(
            "sandbox: no [[subscriptions]] with header auth whose secret is set; not subscribing the webhook "
            "to the sandbox (create Subscriptions yourself, see docs/sandbox.md)"
        )
        return state
    types = sorted(load_engine(settings).resource_types())
    endpoint = f"http://{connect_host(host)}:{port}{settings.server.notify_path}"
    ids = ensure_self_subscriptions(
        state.store, endpoint, header, value, types, heartbeat_seconds=settings.sandbox.heartbeat_seconds
    )
    log.info("sandbox: webhook subscribed to %s (%s)", ", ".join(types), ", ".join(ids))
    return state


def _self_credentials(settings: Settings, insecure_dev: bool) -> tuple[str | None, str]:
    for sub in settings.subscriptions:
        value = secret(sub.secret_env)
        if sub.auth == "header" and value:
            return sub.header, value
    if insecure_dev and not settings.subscriptions:
        return DEV_HEADER, "insecure-dev"
    return None, ""
