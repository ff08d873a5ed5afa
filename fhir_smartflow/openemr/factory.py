"""Build the OpenEMR pieces from Settings (tokens, Standard API client, write-back target)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import redis
import requests

from fhir_smartflow.config import ConfigError, Settings, secret
from fhir_smartflow.fhir.target import WriteBackTarget
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.openemr.api import StandardApi
from fhir_smartflow.openemr.target import OpenEmrWriteBack
from fhir_smartflow.openemr.tokens import (
    ASSERTION_TYPE,
    BackendServicesAuth,
    UserTokenStore,
    client_assertion,
    make_cipher,
)


def client_id(settings: Settings) -> str:
    value = settings.openemr.client_id or settings.fhir.client_id
    if not value:
        raise ConfigError("[openemr] client_id", "required (or [fhir] client_id): the registered OpenEMR client")
    return value


def private_key(settings: Settings) -> bytes | None:
    path = settings.openemr.private_key_file or settings.fhir.private_key_file
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("[openemr] private_key_file", f"cannot read {path}: {exc.strerror}") from None


def token_url(settings: Settings) -> str:
    if not settings.openemr.base_url:
        raise ConfigError("[openemr] base_url", "required: the OpenEMR site root, e.g. https://emr.example.org")
    return f"{settings.openemr.oauth_base}/token"


def user_token_store(
    settings: Settings,
    conn: redis.Redis,
    metrics: Metrics | None = None,
    session: requests.Session | None = None,
    env: Mapping[str, str] | None = None,
) -> UserTokenStore:
    url = token_url(settings)
    cid = client_id(settings)
    key = private_key(settings)
    kid = settings.openemr.key_id or settings.fhir.key_id

    def client_auth() -> dict[str, str]:
        # Confidential clients registered with private_key_jwt authenticate every token request.
        if key is None:
            return {}
        return {
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(cid, url, key, kid, settings.fhir.key_alg),
        }

    return UserTokenStore(
        conn,
        settings.redis.key_prefix,
        make_cipher(secret(settings.openemr.token_key_env, env)),
        url,
        cid,
        client_auth=client_auth,
        session=session,
        metrics=metrics,
        timeout=settings.openemr.timeout_seconds,
    )


def backend_auth(settings: Settings, session: requests.Session | None = None) -> BackendServicesAuth:
    """Read token (SMART backend services) for the FHIR API and the poller."""
    key = private_key(settings)
    if key is None:
        raise ConfigError("[fhir] private_key_file", "required for SMART backend services (private_key_jwt)")
    return BackendServicesAuth(
        token_url(settings),
        client_id(settings),
        key,
        settings.fhir.scopes,
        key_id=settings.openemr.key_id or settings.fhir.key_id,
        alg=settings.fhir.key_alg,
        session=session,
        timeout=settings.fhir.timeout_seconds,
    )


def build_openemr_target(
    settings: Settings,
    conn: redis.Redis,
    metrics: Metrics | None = None,
    local: WriteBackTarget | None = None,
    session: requests.Session | None = None,
    env: Mapping[str, str] | None = None,
) -> OpenEmrWriteBack:
    if local is None:
        from fhir_smartflow.openemr.local_store import LocalFhirStore

        local = LocalFhirStore(settings)
    tokens = user_token_store(settings, conn, metrics, session, env)
    api = StandardApi(
        settings.openemr.api_base,
        tokens,
        session=session,
        timeout=settings.openemr.timeout_seconds,
        conn=conn,
        prefix=settings.redis.key_prefix,
    )
    return OpenEmrWriteBack(local, api, settings.openemr, conn, settings.redis.key_prefix, metrics)
