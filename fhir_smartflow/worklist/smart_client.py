"""The SMART App Launch client side: discovery, PKCE, the code exchange, refresh, and the id_token check.

Only the configured FHIR base is ever contacted: an EHR launch whose ``iss`` differs is refused before any
request (an attacker's ``iss`` must not learn our client credentials or receive a user's code).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jwt
import requests

from fhir_smartflow.fhir.smart import secure_endpoint

TIMEOUT = 10
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class SmartError(Exception):
    """A launch that cannot go on; the message is shown to the user (no token, no PHI in it)."""


@dataclass(frozen=True)
class Endpoints:
    authorize: str
    token: str
    jwks: str | None
    issuer: str | None = None  # the OpenID issuer the id_token must name, when the server says


@dataclass(frozen=True)
class Client:
    fhir_base: str
    client_id: str
    secret: str | None  # None: a public client, or one signing assertions
    http: requests.Session
    assertion: Callable[[str], str] | None = None  # private_key_jwt: a signed assertion for a token endpoint

    def same_server(self, iss: str) -> bool:
        return iss.rstrip("/") == self.fhir_base.rstrip("/")

    def discover(self) -> Endpoints:
        try:
            answer = self.http.get(f"{self.fhir_base.rstrip('/')}/.well-known/smart-configuration", timeout=TIMEOUT)
            answer.raise_for_status()
            body = answer.json()
        except (requests.RequestException, ValueError) as exc:
            raise SmartError(f"the FHIR server's SMART configuration is unavailable ({type(exc).__name__})") from None
        if "S256" not in (body.get("code_challenge_methods_supported") or []):
            raise SmartError("the FHIR server does not offer PKCE S256")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if isinstance(body.get(key), str) and not secure_endpoint(body[key]):
                raise SmartError(f"the SMART configuration's {key} is not https; refusing to use it")
        try:
            return Endpoints(
                body["authorization_endpoint"], body["token_endpoint"], body.get("jwks_uri"), body.get("issuer")
            )
        except KeyError as exc:
            raise SmartError(f"the SMART configuration has no {exc.args[0]}") from None

    def authorize_url(
        self, endpoints: Endpoints, redirect_uri: str, scope: str, state: str, verifier: str, launch: str | None
    ) -> str:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "aud": self.fhir_base,
            "code_challenge": challenge(verifier),
            "code_challenge_method": "S256",
        }
        if launch:
            params["launch"] = launch
        return endpoints.authorize + ("&" if "?" in endpoints.authorize else "?") + urlencode(params)

    def _post(self, url: str, form: dict[str, str]) -> dict[str, Any]:
        auth = None
        if self.assertion is not None:
            form = {**form, "client_assertion_type": ASSERTION_TYPE, "client_assertion": self.assertion(url)}
        elif self.secret is None:
            form = {**form, "client_id": self.client_id}
        else:
            auth = (self.client_id, self.secret)
        try:
            answer = self.http.post(url, data=form, auth=auth, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise SmartError(f"the token endpoint is unreachable ({type(exc).__name__})") from None
        if answer.status_code != 200:
            try:
                error = answer.json().get("error", "")
            except ValueError:
                error = ""
            raise SmartError(f"the token endpoint refused: HTTP {answer.status_code} {error}".rstrip())
        body: dict[str, Any] = answer.json()
        if body.get("token_type", "").lower() != "bearer" or not body.get("access_token"):
            raise SmartError("the token endpoint gave no bearer token")
        return body

    def exchange(self, endpoints: Endpoints, code: str, redirect_uri: str, verifier: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        return self._post(endpoints.token, form)

    def refresh(self, token_endpoint: str, refresh_token: str) -> dict[str, Any]:
        return self._post(token_endpoint, {"grant_type": "refresh_token", "refresh_token": refresh_token})

    def fhir_user(self, endpoints: Endpoints, id_token: str) -> str:
        """The ``fhirUser`` of a verified id_token, as ``Practitioner/<id>``."""
        if not endpoints.jwks:
            raise SmartError("the FHIR server publishes no jwks_uri to verify the id_token with")
        try:
            keys = jwt.PyJWKSet.from_dict(self.http.get(endpoints.jwks, timeout=TIMEOUT).json())
            kid = jwt.get_unverified_header(id_token).get("kid")
            key = next((k for k in keys.keys if kid is None or k.key_id == kid), None)
            if key is None:
                raise SmartError("the id_token's signing key is not published")
            claims = jwt.decode(
                id_token,
                key.key,
                algorithms=["RS256", "ES256", "ES384"],
                audience=self.client_id,
                issuer=endpoints.issuer,
                options={"require": ["exp", "iat", "aud", "iss"], "verify_iss": endpoints.issuer is not None},
            )
        except (requests.RequestException, ValueError, jwt.PyJWTError) as exc:
            raise SmartError(f"the id_token did not verify ({type(exc).__name__})") from None
        user = str(claims.get("fhirUser", ""))
        parts = user.rstrip("/").split("/")
        if len(parts) < 2 or parts[-2] != "Practitioner":
            raise SmartError("the worklist is for staff: fhirUser must be a Practitioner")
        return f"Practitioner/{parts[-1]}"


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
