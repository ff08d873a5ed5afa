"""The one place that turns ``[fhir] auth`` into the token provider of the FHIR client.

* ``none``: no Authorization header;
* ``bearer``: a static token from the environment variable named by ``[fhir] token_env``
  (``StaticTokenProvider``, fhir/tokens.py);
* ``smart-backend``: SMART Backend Services (fhir/smart.py): the ``client_credentials`` grant
  authenticated with a ``private_key_jwt`` assertion, the token endpoint discovered from the server.

The FHIR client built from it serves the write-back, the context reads, gap recovery and the poller.
OpenEMR's user-context (write) token is built with the OpenEMR target (openemr/factory.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import requests

from fhir_smartflow.config import ConfigError, FhirConfig, Settings, read_secret_file, secret
from fhir_smartflow.fhir.smart import SUPPORTED_ALGS, PrivateKeyJwt, smart_backend_services
from fhir_smartflow.fhir.tokens import StaticTokenProvider, TokenProvider
from fhir_smartflow.retry import RetryPolicy


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


def build_auth(
    settings: Settings,
    base_url: str,
    *,
    session: requests.Session | None = None,
    env: Mapping[str, str] | None = None,
) -> TokenProvider | None:
    """The token provider for ``[fhir] auth`` against the FHIR server at ``base_url``."""
    cfg = settings.fhir
    if cfg.auth == "none":
        return None
    if cfg.auth == "bearer":
        token = secret(cfg.token_env, env)
        if not token:
            raise ConfigError("[fhir] token_env", f"auth = 'bearer' but ${cfg.token_env} is not set")
        return StaticTokenProvider(token)
    if cfg.auth == "smart-backend":
        return smart_backend_services(
            base_url,
            private_key_jwt(cfg.client_id, cfg.private_key_file, cfg.key_id, cfg.key_alg),
            scopes=cfg.scopes,
            session=session,
            timeout=cfg.timeout_seconds,
            retry=retry_policy(cfg),
        )
    raise ConfigError("[fhir] auth", f"unknown auth mode {cfg.auth!r}")
