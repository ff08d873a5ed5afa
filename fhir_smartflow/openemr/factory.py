"""Build the OpenEMR pieces from Settings (the user-context token, Standard API client, write-back target).

The read token (FHIR API, poller) is not built here: it is ``[fhir] auth`` (fhir/auth.py), like for any
FHIR server. ``[openemr] client_id`` / ``private_key_file`` / ``key_id`` are the client of the user-context
token, each falling back to its ``[fhir]`` key; ``[openemr] client_auth`` / ``client_secret_env`` say how it
authenticates (openemr/client_auth.py). The server's SMART configuration is discovered once per process, on
first use, from the FHIR base.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import redis
import requests

from fhir_smartflow.config import ConfigError, Settings, secret
from fhir_smartflow.fhir.auth import private_key_jwt
from fhir_smartflow.fhir.oauth import ClientAuth
from fhir_smartflow.fhir.smart import PrivateKeyJwt, SmartConfiguration, discover_smart_configuration
from fhir_smartflow.fhir.target import WriteBackTarget
from fhir_smartflow.fhir.transport import Transport
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.openemr.api import StandardApi
from fhir_smartflow.openemr.client_auth import DiscoveredClientAuth, choose_client_auth
from fhir_smartflow.openemr.target import OpenEmrWriteBack
from fhir_smartflow.openemr.tokens import UserTokenStore, make_cipher


def client_id(settings: Settings) -> str:
    value = settings.openemr.client_id or settings.fhir.client_id
    if not value:
        raise ConfigError("[openemr] client_id", "required (or [fhir] client_id): the registered OpenEMR client")
    return value


def key_auth(settings: Settings) -> PrivateKeyJwt | None:
    """``private_key_jwt`` with the configured key, or None when no key is configured."""
    key_file = settings.openemr.private_key_file or settings.fhir.private_key_file
    if not key_file:
        return None
    kid = settings.openemr.key_id or settings.fhir.key_id
    return private_key_jwt(client_id(settings), key_file, kid, settings.fhir.key_alg, section="[openemr]")


def fhir_base(settings: Settings) -> str:
    return settings.fhir.base_url or settings.openemr.fhir_base


def smart_configuration(settings: Settings, session: requests.Session | None = None) -> SmartConfiguration:
    """The server's SMART configuration (``.well-known/smart-configuration`` under the FHIR base)."""
    http = Transport(
        fhir_base(settings), timeout=settings.openemr.timeout_seconds, session=session, media_type="application/json"
    )
    return discover_smart_configuration(http)


def client_auth(
    settings: Settings, session: requests.Session | None = None, env: Mapping[str, str] | None = None
) -> ClientAuth:
    """The user-context token's client authentication, chosen on first use ([openemr] client_auth)."""
    cid = client_id(settings)
    method = settings.openemr.client_auth
    key = key_auth(settings)

    def resolve() -> ClientAuth:
        configuration = smart_configuration(settings, session) if method == "auto" else None
        return choose_client_auth(
            method, configuration, cid, secret(settings.openemr.client_secret_env, env), (lambda: key) if key else None
        )

    return DiscoveredClientAuth(cid, resolve)


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
        client=client_auth(settings, session, env),
        session=session,
        metrics=metrics,
        timeout=settings.openemr.timeout_seconds,
    )


def standard_api(
    settings: Settings,
    conn: redis.Redis,
    metrics: Metrics | None = None,
    session: requests.Session | None = None,
    env: Mapping[str, str] | None = None,
) -> StandardApi:
    """The Standard API client with the user-context token."""
    tokens = user_token_store(settings, conn, metrics, session, env)
    return StandardApi(
        settings.openemr.api_base,
        tokens,
        session=session,
        timeout=settings.openemr.timeout_seconds,
        conn=conn,
        prefix=settings.redis.key_prefix,
        metrics=metrics,
        granted=tokens.granted_scopes,
    )


def appointment_sources(
    settings: Settings, conn: redis.Redis, metrics: Metrics | None = None, env: Mapping[str, str] | None = None
) -> dict[str, Callable[[datetime], list[dict[str, Any]]]]:
    """The poller's own-API sources for an OpenEMR write-back: Appointment from the Standard API (used only
    where the FHIR API does not serve Appointment). The API client is built on first use."""
    if settings.fhir.writeback != "openemr" or not settings.openemr.base_url:
        return {}
    from fhir_smartflow.openemr.appointments import appointment_source

    built: list[Callable[[datetime], list[dict[str, Any]]]] = []

    def read(now: datetime) -> list[dict[str, Any]]:
        if not built:
            poll = settings.poll
            api = standard_api(settings, conn, metrics, env=env)
            built.append(
                appointment_source(
                    api, settings.clinic.timezone, poll.appointment_window_days_back, poll.appointment_window_days_ahead
                )
            )
        return built[0](now)

    return {"Appointment": read}


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
    api = standard_api(settings, conn, metrics, session, env)
    return OpenEmrWriteBack(local, api, settings.openemr, conn, settings.redis.key_prefix, metrics)


def authorize_scopes(settings: Settings, session: requests.Session | None = None) -> str:
    """The scopes `openemr authorize` asks for: [openemr] user_scopes, or (auto) the ones the server's SMART
    configuration says it knows (openemr/scopes.py)."""
    if settings.openemr.user_scopes != "auto":
        return settings.openemr.user_scopes
    from fhir_smartflow.openemr.scopes import user_scopes

    return user_scopes(smart_configuration(settings, session))
