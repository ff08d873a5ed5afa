"""Build the OpenEMR pieces from Settings (the user-context token, Standard API client, write-back target).

The read token (FHIR API, poller) is not built here: it is ``[fhir] auth`` (fhir/auth.py), like for any
FHIR server. ``[openemr] client_id`` / ``private_key_file`` / ``key_id`` are the client of the user-context
token, each falling back to its ``[fhir]`` key.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis
import requests

from fhir_smartflow.config import ConfigError, Settings, secret
from fhir_smartflow.fhir.auth import private_key_jwt
from fhir_smartflow.fhir.smart import PrivateKeyJwt
from fhir_smartflow.fhir.target import WriteBackTarget
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.openemr.api import StandardApi
from fhir_smartflow.openemr.target import OpenEmrWriteBack
from fhir_smartflow.openemr.tokens import UserTokenStore, make_cipher


def client_id(settings: Settings) -> str:
    value = settings.openemr.client_id or settings.fhir.client_id
    if not value:
        raise ConfigError("[openemr] client_id", "required (or [fhir] client_id): the registered OpenEMR client")
    return value


def client_auth(settings: Settings) -> PrivateKeyJwt | None:
    """``private_key_jwt`` when a key is configured (a confidential client), else None (a public client)."""
    key_file = settings.openemr.private_key_file or settings.fhir.private_key_file
    if not key_file:
        return None
    kid = settings.openemr.key_id or settings.fhir.key_id
    return private_key_jwt(client_id(settings), key_file, kid, settings.fhir.key_alg, section="[openemr]")


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
    return UserTokenStore(
        conn,
        settings.redis.key_prefix,
        make_cipher(secret(settings.openemr.token_key_env, env)),
        token_url(settings),
        client_id(settings),
        client=client_auth(settings),
        session=session,
        metrics=metrics,
        timeout=settings.openemr.timeout_seconds,
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
        metrics=metrics,
    )
    return OpenEmrWriteBack(local, api, settings.openemr, conn, settings.redis.key_prefix, metrics)
