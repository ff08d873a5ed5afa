"""Authentication for FHIR requests: none, a static bearer token, or SMART Backend Services.

A *token provider* hands out access tokens (``token()``) and forgets a rejected one (``invalidate()``);
``BearerAuth`` adapts any provider to ``requests.auth.AuthBase`` so other HTTP clients (the OpenEMR
target) can reuse it. The FHIR client calls ``invalidate()`` on a 401 and retries once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
import requests
from requests.auth import AuthBase

from fhir_smartflow.config import ConfigError, Settings, secret
from fhir_smartflow.fhir.errors import FhirUnauthorized, FhirUnavailable, error_for_status

log = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 300  # SMART: exp no more than five minutes in the future
SUPPORTED_ALGS = ("RS384", "ES384")


class TokenProvider(Protocol):
    def token(self) -> str: ...

    def invalidate(self) -> None: ...


class StaticTokenProvider:
    """A fixed bearer token (``auth = "bearer"``); nothing to refresh."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty bearer token")
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self) -> None:
        """A static token cannot be renewed; the retried request will fail the same way."""


def client_assertion(
    client_id: str, audience: str, private_key: str | bytes, kid: str = "", alg: str = "RS384", now: float | None = None
) -> str:
    """SMART client assertion: iss = sub = client_id, aud = the token endpoint, unique jti, exp ≤ 5 minutes."""
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": uuid.uuid4().hex,
        "exp": issued + ASSERTION_LIFETIME_SECONDS,
    }
    headers = {"typ": "JWT", **({"kid": kid} if kid else {})}
    return jwt.encode(claims, private_key, algorithm=alg, headers=headers)


class SmartBackendTokenProvider:
    """SMART Backend Services: ``client_credentials`` grant authenticated by a signed JWT assertion.

    The token endpoint comes from ``{base}/.well-known/smart-configuration`` unless given. Tokens are
    cached until ``refresh_margin`` seconds before ``expires_in`` runs out. Thread-safe.
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        private_key: str | bytes,
        *,
        alg: str = "RS384",
        kid: str = "",
        scopes: str = "",
        token_endpoint: str | None = None,
        session: requests.Session | None = None,
        timeout: float = 10.0,
        refresh_margin: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if alg not in SUPPORTED_ALGS:
            raise ValueError(f"key algorithm must be one of {', '.join(SUPPORTED_ALGS)}, got {alg!r}")
        if not client_id:
            raise ValueError("SMART backend services need a client_id")
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.private_key = private_key
        self.alg = alg
        self.kid = kid
        self.scopes = scopes
        self.session = session or requests.Session()
        self.timeout = timeout
        self.refresh_margin = refresh_margin
        self.clock = clock
        self._token_endpoint = token_endpoint
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    # -- discovery ---------------------------------------------------------------------------
    def token_endpoint(self) -> str:
        if self._token_endpoint:
            return self._token_endpoint
        url = f"{self.base_url}/.well-known/smart-configuration"
        try:
            resp = self.session.get(url, headers={"Accept": "application/json"}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise FhirUnavailable(f"SMART discovery at {url} failed: {exc}", url=url) from exc
        if resp.status_code != 200:
            raise error_for_status(resp.status_code, resp.content, url=url, method="GET")
        try:
            endpoint = resp.json()["token_endpoint"]
        except (ValueError, KeyError, TypeError):
            raise FhirUnauthorized(f"{url} has no token_endpoint", url=url) from None
        _require_secure(endpoint, self.base_url)
        self._token_endpoint = endpoint
        return endpoint

    # -- the client assertion ------------------------------------------------------------------
    def client_assertion(self, audience: str) -> str:
        """A signed JWT: iss = sub = client_id, aud = token endpoint, unique jti, exp within 5 minutes."""
        return client_assertion(self.client_id, audience, self.private_key, self.kid, self.alg, self.clock())

    # -- tokens ------------------------------------------------------------------------------------
    def token(self) -> str:
        with self._lock:
            if self._token and self.clock() < self._expires_at - self.refresh_margin:
                return self._token
            self._token, self._expires_at = self._fetch()
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None
            self._expires_at = 0.0

    def _fetch(self) -> tuple[str, float]:
        endpoint = self.token_endpoint()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scopes,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(endpoint),
        }
        try:
            resp = self.session.post(endpoint, data=form, headers={"Accept": "application/json"}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise FhirUnavailable(f"token request to {endpoint} failed: {exc}", url=endpoint) from exc
        if resp.status_code != 200:
            err = error_for_status(resp.status_code, resp.content, url=endpoint, method="POST")
            if resp.status_code in (400, 401, 403):  # invalid_client / invalid_scope: not retryable
                raise FhirUnauthorized(f"token request refused: {err.message}", status=resp.status_code, url=endpoint)
            raise err
        try:
            body: dict[str, Any] = resp.json()
            access_token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise FhirUnauthorized(f"token endpoint {endpoint} sent no access_token", url=endpoint) from None
        expires_in = float(body.get("expires_in") or 300)
        log.info(
            "fhir: obtained a backend-services token (expires in %ss, scope %s)", int(expires_in), body.get("scope")
        )
        return access_token, self.clock() + expires_in


def _require_secure(url: str, base_url: str) -> None:
    """Assertions only go to https endpoints (plain http allowed on loopback, for development)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and parts.hostname in {"localhost", "127.0.0.1", "::1"}:
        return
    raise FhirUnauthorized(f"token endpoint {url!r} (from {base_url}) is not https; refusing to send credentials")


class BearerAuth(AuthBase):
    """``requests`` adapter: ``Authorization: Bearer <token>`` from any TokenProvider."""

    def __init__(self, provider: TokenProvider) -> None:
        self.provider = provider

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.provider.token()}"
        return request

    def invalidate(self) -> None:
        self.provider.invalidate()


def build_auth(
    settings: Settings,
    base_url: str,
    *,
    session: requests.Session | None = None,
    env: Mapping[str, str] | None = None,
) -> BearerAuth | None:
    """The auth for ``[fhir] auth``: None, a static bearer token, or SMART backend services."""
    cfg = settings.fhir
    if cfg.auth == "none":
        return None
    if cfg.auth == "bearer":
        token = secret(cfg.token_env, env)
        if not token:
            raise ConfigError("[fhir] token_env", f"auth = 'bearer' but ${cfg.token_env} is not set")
        return BearerAuth(StaticTokenProvider(token))
    if cfg.auth == "smart-backend":
        if not cfg.client_id:
            raise ConfigError("[fhir] client_id", "required for auth = 'smart-backend'")
        if not cfg.private_key_file:
            raise ConfigError("[fhir] private_key_file", "required for auth = 'smart-backend'")
        try:
            key = Path(cfg.private_key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(
                "[fhir] private_key_file", f"cannot read {cfg.private_key_file}: {exc.strerror}"
            ) from None
        if cfg.key_alg not in SUPPORTED_ALGS:
            raise ConfigError("[fhir] key_alg", f"must be one of {', '.join(SUPPORTED_ALGS)}")
        provider = SmartBackendTokenProvider(
            base_url,
            cfg.client_id,
            key,
            alg=cfg.key_alg,
            kid=cfg.key_id,
            scopes=cfg.scopes,
            session=session,
            timeout=cfg.timeout_seconds,
        )
        return BearerAuth(provider)
    raise ConfigError("[fhir] auth", f"unknown auth mode {cfg.auth!r}")
