"""`serve` without a FHIR server: mount the sandbox store and subscribe the webhook to it."""

from __future__ import annotations

import logging
from typing import Any

from fhir_smartflow.config import Settings, secret
from fhir_smartflow.connections import connect_host
from fhir_smartflow.fhir.device import service_device
from fhir_smartflow.flowfiles import load_engine
from fhir_smartflow.ingest.policy import declared_resource_types
from fhir_smartflow.sandbox.app import SandboxState, create_sandbox_app
from fhir_smartflow.sandbox.errors import SandboxError
from fhir_smartflow.sandbox.subscriptions import ensure_self_subscriptions

log = logging.getLogger(__name__)

DEV_HEADER = "X-Smartflow-Secret"


def mount_sandbox(settings: Settings, mounts: dict[str, Any], host: str, port: int, insecure_dev: bool) -> SandboxState:
    """Add the sandbox store to ``mounts`` and subscribe ``serve``'s own webhook to the types the flows need."""
    base = f"http://{connect_host(host)}:{port}{settings.sandbox.path}"
    app = create_sandbox_app(settings, base_url=base)
    mounts[settings.sandbox.path] = app
    state: SandboxState = app.extensions["sandbox"]
    _ensure_service_device(state, settings)
    log.warning(
        "no [fhir] base_url: writing to the built-in SANDBOX FHIR store at %s (database %s). NOT FOR PRODUCTION.",
        base,
        settings.sandbox.database,
    )
    types = sorted(load_engine(settings).resource_types())
    endpoint = f"http://{connect_host(host)}:{port}{settings.server.notify_path}"
    groups = _self_credentials(settings, insecure_dev, types)
    if not groups:
        log.warning(
            "sandbox: no [[subscriptions]] with header auth whose secret is set; not subscribing the webhook "
            "to the sandbox (create Subscriptions yourself, see docs/sandbox.md)"
        )
        return state
    for (header, value), group in groups.items():
        ids = ensure_self_subscriptions(
            state.store,
            endpoint,
            header,
            value,
            group,
            heartbeat_seconds=settings.sandbox.heartbeat_seconds,
            profile=state.profile,
        )
        log.info("sandbox: webhook subscribed to %s (%s)", ", ".join(group), ", ".join(ids))
    uncovered = sorted(set(types) - {t for group in groups.values() for t in group})
    if uncovered:
        log.warning("sandbox: no header-auth subscription may deliver %s: not subscribed", ", ".join(uncovered))
    return state


def _ensure_service_device(state: SandboxState, settings: Settings) -> None:
    """The service's Device under the configured id, written straight into the store: the embedded worker
    is built before the store serves (so it cannot ask for a server-assigned id), and strict profiles
    refuse every write naming a Device that does not exist."""
    try:
        state.store.read("Device", settings.fhir.device_id)
    except SandboxError:
        device = {**service_device(settings), "id": settings.fhir.device_id}
        state.store.update("Device", settings.fhir.device_id, device)


def _self_credentials(settings: Settings, insecure_dev: bool, types: list[str]) -> dict[tuple[str, str], list[str]]:
    """(header, secret) → the types its subscription may deliver (each type under the first that may)."""
    if insecure_dev and not settings.subscriptions:
        return {(DEV_HEADER, "insecure-dev"): types}
    groups: dict[tuple[str, str], list[str]] = {}
    for rtype in types:
        for sub in settings.subscriptions:
            value = secret(sub.secret_env)
            if sub.auth == "header" and value and rtype in (declared_resource_types(sub) or ()):
                groups.setdefault((sub.header, value), []).append(rtype)
                break
    return groups
