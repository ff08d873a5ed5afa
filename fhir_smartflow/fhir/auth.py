"""The one place that turns ``[fhir] auth`` into the token provider of the FHIR client.

* ``none``: no Authorization header;
* ``bearer``: a static token from the environment variable named by ``[fhir] token_env``
  (``StaticTokenProvider``, fhir/tokens.py); refused (401) it fails at once, it cannot be renewed;
* ``client-credentials``: the OAuth2 ``client_credentials`` grant with a client secret from the
  environment variable named by ``[fhir] client_secret_env``, sent as ``[fhir] client_auth``
  (``client_secret_basic`` or ``client_secret_post``, fhir/oauth.py); renewed before it expires;
* ``smart-backend``: SMART Backend Services (fhir/smart.py): the same grant authenticated with a
  ``private_key_jwt`` assertion.

For both grants the token endpoint is ``[fhir] token_endpoint`` or discovered from the server, and the
scopes are ``[fhir] scopes`` as written or, when empty, exactly what the service uses
(fhir/service_scopes.py) in the syntax the server knows (fhir/scopes.py, ``[fhir] scope_syntax``).

The FHIR client built from it serves the write-back, the context reads, gap recovery and the poller.
OpenEMR's user-context (write) token is built with the OpenEMR target (openemr/factory.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from fhir_smartflow.config import ConfigError, FhirConfig, Settings, read_secret_file, secret
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.fhir.oauth import CLIENT_SECRET_METHODS, ClientAuth, ClientCredentialsTokenProvider
from fhir_smartflow.fhir.scopes import Scopes, choose_scope_syntax, offered
from fhir_smartflow.fhir.service_scopes import needed_scopes
from fhir_smartflow.fhir.smart import (
    SUPPORTED_ALGS,
    PrivateKeyJwt,
    ScopesFor,
    SmartConfiguration,
    client_credentials_provider,
    secure_endpoint,
)
from fhir_smartflow.fhir.tokens import StaticTokenProvider, TokenProvider
from fhir_smartflow.flowfiles import load_engine
from fhir_smartflow.retry import RetryPolicy

EngineSource = Callable[[], Engine]

log = logging.getLogger(__name__)


def retry_policy(cfg: FhirConfig) -> RetryPolicy:
    return RetryPolicy(
        max_retries=cfg.max_retries, base_seconds=cfg.backoff_base_seconds, max_seconds=cfg.backoff_max_seconds
    )


def private_key_jwt(client_id: str, key_file: str, kid: str, alg: str, section: str = "[fhir]") -> PrivateKeyJwt:
    """The client authentication of a registered client with a key pair (keys named after ``section``)."""
    if not client_id:
        raise ConfigError(f"{section} client_id", "required for a private_key_jwt client")
    if not key_file:
        raise ConfigError(f"{section} private_key_file", "required for a private_key_jwt client")
    if alg not in SUPPORTED_ALGS:
        raise ConfigError("[fhir] key_alg", f"must be one of {', '.join(SUPPORTED_ALGS)}")
    return PrivateKeyJwt(client_id, read_secret_file(key_file, f"{section} private_key_file"), kid=kid, alg=alg)


def client_secret_auth(
    client_id: str, secret_env: str, method: str, env: Mapping[str, str] | None = None, section: str = "[fhir]"
) -> ClientAuth:
    """The client authentication of a registered client with a secret (``client_secret_basic`` / ``_post``)."""
    if not client_id:
        raise ConfigError(f"{section} client_id", "required for a client with a secret")
    if method not in CLIENT_SECRET_METHODS:
        raise ConfigError(f"{section} client_auth", f"must be one of {', '.join(CLIENT_SECRET_METHODS)}")
    client_secret = secret(secret_env, env)
    if not client_secret:
        raise ConfigError(f"{section} client_secret_env", f"the client secret: ${secret_env} is not set")
    return CLIENT_SECRET_METHODS[method](client_id, client_secret)


def scopes_to_request(settings: Settings, engine: EngineSource) -> ScopesFor:
    """``[fhir] scopes`` as written, or the scopes the service needs in the syntax the server knows."""
    cfg = settings.fhir

    def scopes(configuration: SmartConfiguration | None) -> str:
        if cfg.scopes:
            return cfg.scopes
        syntax = choose_scope_syntax(configuration, cfg.scope_syntax)
        needed = needed_scopes(engine(), settings)
        if configuration is not None:
            needed, absent = offered(needed, Scopes.parse(" ".join(configuration.scopes_supported)))
            if absent:
                log.warning(
                    "the FHIR server offers no scope for %s (not in its scopes_supported): not asked for; what "
                    "needs it will be refused (see `fhir-smartflow scopes --why`)",
                    absent.render(syntax),
                )
        return needed.render(syntax)

    return scopes


def _none(settings: Settings, base_url: str, auth: AuthInputs) -> TokenProvider | None:
    return None


def _bearer(settings: Settings, base_url: str, auth: AuthInputs) -> TokenProvider:
    cfg = settings.fhir
    token = secret(cfg.token_env, auth.env)
    if not token:
        raise ConfigError("[fhir] token_env", f"auth = 'bearer' but ${cfg.token_env} is not set")
    return StaticTokenProvider(token, f"the bearer token in ${cfg.token_env}")


def _client_secret(settings: Settings, base_url: str, auth: AuthInputs) -> TokenProvider:
    cfg = settings.fhir
    client = client_secret_auth(cfg.client_id, cfg.client_secret_env, cfg.client_auth, auth.env)
    return _grant(settings, base_url, client, auth)


def _smart_backend(settings: Settings, base_url: str, auth: AuthInputs) -> TokenProvider:
    cfg = settings.fhir
    client = private_key_jwt(cfg.client_id, cfg.private_key_file, cfg.key_id, cfg.key_alg)
    return _grant(settings, base_url, client, auth, clock=client.clock)


def _grant(
    settings: Settings, base_url: str, client: ClientAuth, auth: AuthInputs, **options: Any
) -> ClientCredentialsTokenProvider:
    cfg = settings.fhir
    if cfg.token_endpoint and not secure_endpoint(cfg.token_endpoint):
        raise ConfigError("[fhir] token_endpoint", "must be https (http only on loopback): it receives credentials")
    return client_credentials_provider(
        base_url,
        client,
        scopes=scopes_to_request(settings, auth.engine),
        token_endpoint=cfg.token_endpoint or None,
        session=auth.session,
        timeout=cfg.timeout_seconds,
        retry=retry_policy(cfg),
        **options,
    )


@dataclass(frozen=True)
class AuthInputs:
    """What a mode may need besides the settings: the HTTP session, the environment, the loaded flows."""

    session: requests.Session | None
    env: Mapping[str, str] | None
    engine: EngineSource


# [fhir] auth -> its builder (config.FHIR_AUTH_MODES lists the same names, for validation)
AUTH_MODES: dict[str, Callable[[Settings, str, AuthInputs], TokenProvider | None]] = {
    "none": _none,
    "bearer": _bearer,
    "client-credentials": _client_secret,
    "smart-backend": _smart_backend,
}


def build_auth(
    settings: Settings,
    base_url: str,
    *,
    session: requests.Session | None = None,
    env: Mapping[str, str] | None = None,
    engine: EngineSource | None = None,
) -> TokenProvider | None:
    """The token provider for ``[fhir] auth`` against the FHIR server at ``base_url``. ``engine`` gives the
    loaded flows when the scopes are computed (default: load them from ``[engine]`` at the first token)."""
    builder = AUTH_MODES.get(settings.fhir.auth)
    if builder is None:
        raise ConfigError("[fhir] auth", f"unknown auth mode {settings.fhir.auth!r}")
    return builder(settings, base_url, AuthInputs(session, env, engine or (lambda: load_engine(settings))))
