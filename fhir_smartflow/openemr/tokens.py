"""OpenEMR's user-context (write) token, and the one-time authorization that obtains it.

Reads (FHIR API, poller) do not use it: they use the service's FHIR client with SMART backend services
(fhir/auth.py, fhir/smart.py); OpenEMR grants only ``system/*.rs`` read scopes that way.

Writes (Standard API) need a user-context token from the authorization-code grant with PKCE and
``offline_access`` (`fhir-smartflow openemr authorize`, once). The refresh token is stored encrypted
(Fernet, key from the environment) in Redis and rotated on every use (OpenEMR issues a new refresh token
each time: Documentation/api/AUTHENTICATION.md, "Refresh Token Grant"). Several worker processes share it
under a Redis lock so two never spend the same refresh token. A failed refresh alerts loudly (ERROR log,
metric, the ``openemr:auth_degraded`` flag that `readyz` reports) and raises a retryable error: writes stay
queued. Token requests go through the FHIR stack's ``post_token`` and ``ClientAuth`` (fhir/oauth.py)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import redis
import requests
from cryptography.fernet import Fernet, InvalidToken

from fhir_smartflow.fhir.errors import FhirUnavailable, TokenRefused
from fhir_smartflow.fhir.oauth import ClientAuth, TokenRequest, post_token
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.openemr.errors import OpenEmrAuthUnavailable, OpenEmrTransientError

log = logging.getLogger(__name__)

RENEW_MARGIN_SECONDS = 15.0
# A token refused within this many seconds of being issued was not refused for its age: OpenEMR 7.0.0 answers a
# missing scope with 401. Such a token is kept, so the call fails with a scope error instead of spending a refresh
# token per retry.
FRESH_SECONDS = 300.0


def make_cipher(key: str | None) -> Fernet:
    if not key:
        raise OpenEmrAuthUnavailable(
            "no token encryption key: set the environment variable named by [openemr] token_key_env "
            "(generate one with `fhir-smartflow openemr keygen`)"
        )
    try:
        return Fernet(key.encode())
    except ValueError as exc:
        raise OpenEmrAuthUnavailable(f"the token encryption key is not a valid Fernet key: {exc}") from None


@dataclass(frozen=True)
class UserTokenKeys:
    prefix: str

    @property
    def refresh(self) -> str:
        return f"{self.prefix}openemr:refresh"

    @property
    def access(self) -> str:
        return f"{self.prefix}openemr:access"

    @property
    def degraded(self) -> str:
        return f"{self.prefix}openemr:auth_degraded"

    @property
    def lock(self) -> str:
        return f"{self.prefix}lock:openemr-refresh"


class UserTokenStore:
    """TokenProvider of the user-context (write) token: encrypted in Redis, refreshed under a lock,
    rotation-safe. ``client``: how the registered client authenticates at the token endpoint (None for a
    public client)."""

    def __init__(
        self,
        conn: redis.Redis,
        prefix: str,
        cipher: Fernet,
        token_url: str,
        client_id: str,
        client: ClientAuth | None = None,
        session: requests.Session | None = None,
        metrics: Metrics | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn = conn
        self.keys = UserTokenKeys(prefix)
        self.cipher = cipher
        self.token_url = token_url
        self.client_id = client_id
        self.client = client
        self.session = session or requests.Session()
        self.metrics = metrics
        self.timeout = timeout
        self.clock = clock

    # -- storage -----------------------------------------------------------------------------------
    def _seal(self, value: dict[str, Any]) -> bytes:
        return self.cipher.encrypt(json.dumps(value).encode())

    def _open(self, raw: bytes | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            return json.loads(self.cipher.decrypt(raw))
        except InvalidToken:
            log.error("stored OpenEMR token cannot be decrypted with the configured key; re-run `openemr authorize`")
            return None

    def save_grant(self, body: dict[str, Any]) -> None:
        """Store a token response (authorize or refresh). A new refresh token replaces the old one."""
        expires_at = self.clock() + float(body.get("expires_in") or 3600)
        pipe = self.conn.pipeline()
        if body.get("refresh_token"):
            pipe.set(
                self.keys.refresh,
                self._seal(
                    {"refresh_token": body["refresh_token"], "scope": body.get("scope", ""), "saved_at": self.clock()}
                ),
            )
        pipe.set(
            self.keys.access,
            self._seal(
                {
                    "access_token": body["access_token"],
                    "expires_at": expires_at,
                    "issued_at": self.clock(),
                    "scope": body.get("scope", ""),
                }
            ),
        )
        pipe.delete(self.keys.degraded)
        pipe.execute()

    def has_refresh_token(self) -> bool:
        return self.conn.exists(self.keys.refresh) == 1

    def degraded(self) -> str | None:
        raw = self.conn.get(self.keys.degraded)
        return raw.decode() if raw else None

    def granted_scopes(self) -> str:
        stored = self._open(self.conn.get(self.keys.refresh)) or {}
        return str(stored.get("scope") or "")

    # -- use ---------------------------------------------------------------------------------------
    def _valid_access(self) -> str | None:
        stored = self._open(self.conn.get(self.keys.access))
        if stored and self.clock() < float(stored.get("expires_at", 0)) - RENEW_MARGIN_SECONDS:
            return str(stored["access_token"])
        return None

    def token(self) -> str:
        token = self._valid_access()
        if token:
            return token
        return self.refresh()

    def invalidate(self, token: str) -> None:
        """OpenEMR answered 401 to ``token``: forget it (only if nobody replaced it meanwhile), unless it is
        fresh — then the refusal is not about its age, and refreshing again would only spend refresh tokens."""
        stored = self._open(self.conn.get(self.keys.access))
        if not stored or stored.get("access_token") != token:
            return
        if self.clock() - float(stored.get("issued_at", 0)) < FRESH_SECONDS:
            log.warning(
                "OpenEMR refused a token issued %.0fs ago; keeping it (not a matter of age)",
                self.clock() - float(stored.get("issued_at", 0)),
            )
            return
        self.conn.delete(self.keys.access)

    def refresh(self) -> str:
        """Spend the stored refresh token for a new access + refresh token, one process at a time."""
        lock = self.conn.lock(self.keys.lock, timeout=self.timeout * 3, blocking_timeout=self.timeout * 3)
        if not lock.acquire():
            raise OpenEmrTransientError("another process is refreshing the OpenEMR token; retrying later")
        try:
            return self._refresh_locked()
        finally:
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()

    def _refresh_locked(self) -> str:
        token = self._valid_access()  # another process may have refreshed while we waited
        if token:
            return token
        stored = self._open(self.conn.get(self.keys.refresh))
        if not stored:
            self._degrade("no_refresh_token", "no OpenEMR refresh token stored: run `fhir-smartflow openemr authorize`")
        form = {"grant_type": "refresh_token", "refresh_token": stored["refresh_token"], "client_id": self.client_id}
        try:
            body = self.post_grant(form)
        except TokenRefused as exc:
            self._degrade(
                exc.error,
                f"OpenEMR refused the refresh token ({exc.error}); writes are held in "
                "the queue until someone re-runs `fhir-smartflow openemr authorize`",
            )
        except FhirUnavailable as exc:
            if self.metrics:
                self.metrics.inc("openemr_auth_failures", reason="transient")
            raise OpenEmrTransientError(f"OpenEMR token refresh failed: {exc.message}", exc.status) from exc
        if not body.get("refresh_token"):
            # Keep the old refresh token: without rotation it stays valid.
            body = {**body, "refresh_token": stored["refresh_token"]}
        self.save_grant(body)
        return str(body["access_token"])

    def post_grant(self, form: dict[str, str]) -> dict[str, Any]:
        """POST a grant to OpenEMR's token endpoint, authenticated as the registered client."""
        request = TokenRequest(self.token_url, form)
        if self.client is not None:
            self.client.authenticate(request)
        return post_token(self.session, request, self.timeout)

    def _degrade(self, reason: str, message: str) -> Any:
        log.error("OpenEMR write token unavailable: %s", message)
        self.conn.set(self.keys.degraded, f"{reason}: {message}")
        if self.metrics:
            self.metrics.inc("openemr_auth_failures", reason=reason)
        raise OpenEmrAuthUnavailable(message)


# -- authorization code + PKCE (`openemr authorize`) ---------------------------------------------------
def make_pkce() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass(frozen=True)
class AuthorizationRequest:
    url: str
    state: str
    verifier: str
    redirect_uri: str


def build_authorization_request(
    authorize_url: str, client_id: str, redirect_uri: str, scopes: str, aud: str
) -> AuthorizationRequest:
    verifier, challenge = make_pkce()
    state = secrets.token_urlsafe(24)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scopes,
            "state": state,
            "aud": aud,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    return AuthorizationRequest(f"{authorize_url}?{query}", state, verifier, redirect_uri)


def parse_redirect(value: str) -> tuple[str, str | None]:
    """(code, state) from the redirect URL (or a bare code pasted by the user)."""
    value = value.strip()
    if "code=" not in value and "error=" not in value:
        return value, None
    query = parse_qs(urlparse(value).query or value.lstrip("?"))
    if "error" in query:
        raise TokenRefused(query["error"][0], query.get("error_description", [""])[0])
    return query["code"][0], query.get("state", [None])[0]


def exchange_code(store: UserTokenStore, request: AuthorizationRequest, code: str, state: str | None) -> dict[str, Any]:
    """Trade the authorization code (with the PKCE verifier) for tokens and store them."""
    if state is not None and not secrets.compare_digest(state, request.state):
        raise TokenRefused("invalid_state", "the state in the redirect does not match this request")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": request.redirect_uri,
        "client_id": store.client_id,
        "code_verifier": request.verifier,
    }
    body = store.post_grant(form)
    if not body.get("refresh_token"):
        raise TokenRefused("no_refresh_token", "no refresh token granted: the client needs the offline_access scope")
    store.save_grant(body)
    return body
