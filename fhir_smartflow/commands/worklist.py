"""Mounting the staff worklist (a SMART on FHIR app) in `serve`, beside the webhook and the console."""

from __future__ import annotations

import logging
from typing import Any
from zoneinfo import ZoneInfo

import redis
import requests

from fhir_smartflow.config import ConfigError, Settings, read_secret_file, secret
from fhir_smartflow.fhir.smart import PrivateKeyJwt
from fhir_smartflow.worker.runtime import utc_now
from fhir_smartflow.worklist import WorklistDeps, create_worklist_app
from fhir_smartflow.worklist.sessions import SessionStore
from fhir_smartflow.worklist.smart_client import Client

log = logging.getLogger(__name__)


def mount_worklist(
    settings: Settings, conn: redis.Redis, mounts: dict[str, Any], *, embedded: bool, sandbox_base: str | None
) -> None:
    """Add the worklist to ``mounts`` at ``[worklist] path`` when a client id is configured."""
    config = settings.worklist
    if not config.enabled or not config.client_id:
        return
    if config.scope_version not in ("v1", "v2"):
        raise ConfigError("[worklist] scope_version", f"must be v1 or v2, got {config.scope_version!r}")
    base = config.fhir_base_url or settings.fhir.base_url or sandbox_base or ""
    if not base:
        log.warning("worklist not mounted: no FHIR base ([worklist] fhir_base_url or [fhir] base_url)")
        return
    client_secret = secret(config.client_secret_env) if config.client_secret_env else None
    if config.client_secret_env and not client_secret:
        log.warning("worklist not mounted: $%s (the client secret) is not set", config.client_secret_env)
        return
    assertion = None
    if config.private_key_file:
        key = read_secret_file(config.private_key_file, "[worklist] private_key_file")
        try:
            signer = PrivateKeyJwt(config.client_id, key, kid=config.key_id, alg=config.key_alg)
        except ValueError as exc:
            raise ConfigError("[worklist] key_alg", str(exc)) from None
        assertion = signer.assertion
    deps = WorklistDeps(
        config=config,
        client=Client(base.rstrip("/"), config.client_id, client_secret, requests.Session(), assertion),
        sessions=SessionStore(conn, settings.redis.key_prefix, config.session_minutes * 60),
        clock=utc_now,
        timezone=ZoneInfo(settings.clinic.timezone),
        secure_cookie=config.public_url.startswith("https://"),
    )
    if not embedded and not deps.secure_cookie:
        log.warning("worklist: [worklist] public_url is not https; the session cookie is Secure only over HTTPS")
    mounts[config.path] = create_worklist_app(deps)
    log.info("worklist at %s (FHIR server %s)", config.path, base)
