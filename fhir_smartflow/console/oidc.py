"""Login through the EHR's own OpenID Connect / SMART authorization server (authorization code + PKCE), for
the users ``[console] oidc_users`` names — nobody else, whatever the server says about them."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jwt
import requests

from fhir_smartflow.config import ConfigError, Settings, secret
from fhir_smartflow.console.accounts import ROLES

TIMEOUT = 10.0
ALGORITHMS = ["RS256", "RS384", "ES256", "ES384"]


class OidcError(Exception):
    """The server refused, or its answer did not prove who the user is; ``str()`` is safe to show."""


@dataclass(frozen=True)
class Pending:
    """What the login keeps in the session between the redirect to the server and the way back."""

    state: str
    nonce: str
    verifier: str

    @classmethod
    def new(cls) -> Pending:
        return cls(secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48))

    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OidcLogin:
    def __init__(self, settings: Settings, http: requests.Session | None = None) -> None:
        c = settings.console
        self.issuer = c.oidc_issuer.rstrip("/")
        self.client_id = c.oidc_client_id
        self.client_secret = secret(c.oidc_client_secret_env) if c.oidc_client_secret_env else None
        self.scopes = c.oidc_scopes
        self.claim = c.oidc_claim
        self.users = dict(c.oidc_users)
        if not self.client_id:
            raise ConfigError("[console] oidc_client_id", "required with oidc_issuer")
        for user, role in self.users.items():
            if role not in ROLES:
                raise ConfigError(f"[console] oidc_users.{user}", f"role must be one of {', '.join(ROLES)}")
        if c.oidc_client_secret_env and not self.client_secret:
            raise ConfigError(f"${c.oidc_client_secret_env}", "the console's OpenID Connect client secret is not set")
        self.http = http or requests.Session()
        self._config: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcLogin | None:
        return cls(settings) if settings.console.oidc_issuer else None

    def configuration(self) -> dict[str, Any]:
        with self._lock:
            if self._config is None:
                url = f"{self.issuer}/.well-known/openid-configuration"
                try:
                    answer = self.http.get(url, timeout=TIMEOUT)
                    answer.raise_for_status()
                    config = answer.json()
                except (requests.RequestException, ValueError) as exc:
                    raise OidcError(f"the EHR's login server did not answer ({type(exc).__name__})") from None
                if config.get("issuer", "").rstrip("/") != self.issuer:
                    raise OidcError("the EHR's login server names another issuer")
                self._config = config
                self._jwks = jwt.PyJWKClient(config["jwks_uri"])
            return self._config

    def authorize_url(self, redirect_uri: str, pending: Pending) -> str:
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.scopes,
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": pending.challenge(),
            "code_challenge_method": "S256",
        }
        return f"{self.configuration()['authorization_endpoint']}?{urlencode(query)}"

    def finish(self, code: str, redirect_uri: str, pending: Pending) -> str:
        """The user the server vouches for (the ``oidc_claim`` of a verified id_token)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": pending.verifier,
            "client_id": self.client_id,
        }
        auth = (self.client_id, self.client_secret) if self.client_secret else None
        try:
            answer = self.http.post(self.configuration()["token_endpoint"], data=form, auth=auth, timeout=TIMEOUT)
            answer.raise_for_status()
            id_token = answer.json()["id_token"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise OidcError(f"the EHR's login server refused the login ({type(exc).__name__})") from None
        assert self._jwks is not None  # set with the configuration
        try:
            key = self._jwks.get_signing_key_from_jwt(id_token)
            claims = jwt.decode(
                id_token, key.key, algorithms=ALGORITHMS, audience=self.client_id, issuer=self.configuration()["issuer"]
            )
        except jwt.PyJWTError as exc:
            raise OidcError(f"the login server's id_token did not verify ({type(exc).__name__})") from None
        if not secrets.compare_digest(str(claims.get("nonce", "")), pending.nonce):
            raise OidcError("the id_token is not for this login (nonce)")
        user = claims.get(self.claim) or claims.get("sub")
        if not isinstance(user, str) or not user:
            raise OidcError(f"the id_token names no {self.claim}")
        return user

    def role_of(self, user: str) -> str | None:
        return self.users.get(user)
