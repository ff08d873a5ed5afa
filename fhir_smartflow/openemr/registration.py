"""The client registration OpenEMR accepts (`fhir-smartflow openemr register`).

OpenEMR's dynamic registration (``POST /oauth2/<site>/registration``, src/RestControllers/
AuthorizationController.php clientRegistration) wants: ``application_type = "private"`` for a confidential
client (it then answers a ``client_secret``); ``token_endpoint_auth_method`` ``client_secret_post`` or
``client_secret_basic`` (nothing else is accepted); a ``jwks`` (or ``jwks_uri``) whenever a ``system/``
scope is asked for — the read token's JWT assertion is checked against it; and only scopes the server knows
(an unknown one is ``400 invalid_scope`` "Check the `X` scope"), so the scope string is built from the
server's own smart-configuration. The new client is stored **disabled** (newClientSave: "we do not allow a
confidential app to be enabled by default"): an administrator enables it under Administration → System →
API Clients.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import requests
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import RSAAlgorithm

from fhir_smartflow.fhir.smart import SmartConfiguration
from fhir_smartflow.openemr.scopes import read_scopes, user_scopes

CLIENT_NAME = "fhir-smartflow"


def jwks_of(private_pem: bytes, kid: str, alg: str = "RS384") -> dict[str, Any]:
    """The public half of the client's key as a JWKS (what the registration carries inline)."""
    public = serialization.load_pem_private_key(private_pem, None).public_key()
    jwk = json.loads(RSAAlgorithm.to_jwk(public)) | {"alg": alg, "use": "sig"}
    if kid:
        jwk["kid"] = kid
    return {"keys": [jwk]}


@dataclass(frozen=True)
class Registration:
    body: dict[str, Any]
    read_scopes: str
    user_scopes: str


def registration_request(
    configuration: SmartConfiguration | None,
    served_types: Iterable[str],
    redirect_uri: str,
    jwks: dict[str, Any],
    auth_method: str = "client_secret_post",
) -> Registration:
    read = read_scopes(configuration, served_types)
    user = user_scopes(configuration)
    body = {
        "application_type": "private",
        "client_name": CLIENT_NAME,
        "token_endpoint_auth_method": auth_method,
        "redirect_uris": [redirect_uri],
        "jwks": jwks,
        "scope": f"{user} {read}".strip(),
    }
    return Registration(body, read, user)


class RegistrationRefused(RuntimeError):
    pass


def register(session: requests.Session, endpoint: str, registration: Registration, timeout: float) -> dict[str, Any]:
    """POST the registration; OpenEMR's answer (client_id, client_secret, ...) or RegistrationRefused."""
    try:
        resp = session.post(endpoint, json=registration.body, timeout=timeout)
    except requests.RequestException as exc:
        raise RegistrationRefused(f"{endpoint} unreachable: {type(exc).__name__}") from exc
    try:
        answer = resp.json()
    except ValueError:
        answer = {}
    if resp.status_code != 200 or not isinstance(answer, dict) or not answer.get("client_id"):
        error = answer.get("error", f"http_{resp.status_code}") if isinstance(answer, dict) else resp.status_code
        detail = (
            " ".join(str(answer.get(k, "")) for k in ("error_description", "hint")) if isinstance(answer, dict) else ""
        )
        raise RegistrationRefused(f"OpenEMR refused the registration: {error} {detail.strip()}".strip())
    return answer
