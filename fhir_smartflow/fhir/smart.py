"""SMART on FHIR: finding the server's OAuth2 endpoints, and SMART Backend Services.

* ``discover_smart_configuration``: the one discovery function. ``{base}/.well-known/smart-configuration``
  (SMART App Launch 2.x); when the server has none, the CapabilityStatement's ``rest.security`` extension
  ``oauth-uris`` (SMART 1.0). A token endpoint that is not https (except on loopback) is refused, so the
  client assertion is never sent in the clear.
  ``ServerDiscovery`` reads it once per process, on first use.
* ``PrivateKeyJwt``: SMART's asymmetric client authentication (``private_key_jwt``, RS384 or ES384).
* ``client_credentials_provider``: the ``client_credentials`` token provider for a FHIR server, with any
  ``ClientAuth`` (a client secret, fhir/oauth.py, or ``PrivateKeyJwt``: then it is SMART Backend
  Services, ``smart_backend_services``); token endpoint and scopes configured or derived from discovery.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests

from fhir_smartflow.fhir.errors import FhirUnauthorized, error_for_status
from fhir_smartflow.fhir.oauth import ClientAuth, ClientCredentialsTokenProvider, TokenRequest
from fhir_smartflow.fhir.transport import Transport
from fhir_smartflow.retry import RetryPolicy

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 300  # SMART: exp no more than five minutes in the future
SUPPORTED_ALGS = ("RS384", "ES384")
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class SmartConfiguration:
    """What a server says about its authorization (the fields the service uses or will choose from)."""

    token_endpoint: str
    authorization_endpoint: str = ""
    token_endpoint_auth_methods: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    source: str = ""  # the URL it was read from


def _strings(value: Any) -> tuple[str, ...]:
    """A list of strings, flattened (some servers nest ``scopes_supported`` one level)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(s for item in value for s in _strings(item))
    return ()


def _get_object(http: Transport, url: str) -> dict[str, Any] | None:
    """The JSON object at ``url``; None when the server has none there. Transient failures raise."""
    resp = http.send("GET", url)
    if resp.status_code != 200:
        if http.retryable(resp.status_code, idempotent=True):
            raise error_for_status(resp.status_code, resp.content, url=url, method="GET")
        return None
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _from_capability_statement(statement: dict[str, Any], source: str) -> SmartConfiguration | None:
    for rest in statement.get("rest") or []:
        for ext in ((rest or {}).get("security") or {}).get("extension") or []:
            if ext.get("url") != OAUTH_URIS:
                continue
            uris = {e.get("url"): e.get("valueUri") for e in ext.get("extension") or [] if isinstance(e, dict)}
            if uris.get("token"):
                return SmartConfiguration(str(uris["token"]), str(uris.get("authorize") or ""), source=source)
    return None


def read_smart_configuration(http: Transport) -> SmartConfiguration | None:
    """What the server at ``http.base`` advertises (unauthenticated GETs under the base); None when it
    advertises no token endpoint. Transient failures raise."""
    well_known = http.base.join(".well-known/smart-configuration")
    body = _get_object(http, well_known) or {}
    if body.get("token_endpoint"):
        return SmartConfiguration(
            str(body["token_endpoint"]),
            str(body.get("authorization_endpoint") or ""),
            _strings(body.get("token_endpoint_auth_methods_supported")),
            _strings(body.get("scopes_supported")),
            _strings(body.get("capabilities")),
            source=well_known,
        )
    metadata = http.base.join("metadata")
    return _from_capability_statement(_get_object(http, metadata) or {}, metadata)


def discover_smart_configuration(http: Transport) -> SmartConfiguration:
    """The SMART configuration of the server at ``http.base``; its token endpoint must be https (except
    on loopback). FhirUnauthorized when the server advertises none."""
    found = read_smart_configuration(http)
    if found is None:
        raise _no_token_endpoint(http)
    _require_secure(found.token_endpoint, found.source)
    return found


def _no_token_endpoint(http: Transport) -> FhirUnauthorized:
    return FhirUnauthorized(
        f"{http.base.url} advertises no token endpoint (no .well-known/smart-configuration with a "
        "token_endpoint, no oauth-uris extension in its CapabilityStatement); set [fhir] token_endpoint",
        url=http.base.join(".well-known/smart-configuration"),
    )


class ServerDiscovery:
    """The server's SMART configuration, read on first use and kept (thread-safe)."""

    def __init__(self, http: Transport) -> None:
        self.http = http
        self._lock = threading.Lock()
        self._read = False
        self._configuration: SmartConfiguration | None = None

    def configuration(self) -> SmartConfiguration | None:
        """What the server advertises, or None (read once; a transient failure is not kept)."""
        with self._lock:
            if not self._read:
                self._configuration = read_smart_configuration(self.http)
                self._read = True
            return self._configuration

    def token_endpoint(self) -> str:
        """The advertised token endpoint (https, except on loopback); FhirUnauthorized when none."""
        found = self.configuration()
        if found is None:
            raise _no_token_endpoint(self.http)
        _require_secure(found.token_endpoint, found.source)
        return found.token_endpoint


def secure_endpoint(url: str) -> bool:
    """Whether credentials may go to ``url``: https, or plain http on loopback (development)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)


def _require_secure(url: str, source: str) -> None:
    if not secure_endpoint(url):
        raise FhirUnauthorized(f"token endpoint {url!r} (from {source}) is not https; refusing to send credentials")


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


class PrivateKeyJwt:
    """ClientAuth: a fresh signed assertion per token request, its audience the token endpoint."""

    def __init__(
        self,
        client_id: str,
        private_key: str | bytes,
        *,
        kid: str = "",
        alg: str = "RS384",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if alg not in SUPPORTED_ALGS:
            raise ValueError(f"key algorithm must be one of {', '.join(SUPPORTED_ALGS)}, got {alg!r}")
        if not client_id:
            raise ValueError("private_key_jwt needs a client_id")
        self.client_id = client_id
        self.private_key = private_key
        self.kid = kid
        self.alg = alg
        self.clock = clock

    def assertion(self, audience: str) -> str:
        return client_assertion(self.client_id, audience, self.private_key, self.kid, self.alg, self.clock())

    def authenticate(self, request: TokenRequest) -> None:
        request.form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
        request.form["client_assertion"] = self.assertion(request.url)


# The scopes to ask for, given what the server advertises (None: nothing); called once, at the first token.
ScopesFor = Callable[[SmartConfiguration | None], str]


def client_credentials_provider(
    fhir_base: str,
    client: ClientAuth,
    *,
    scopes: str | ScopesFor = "",
    token_endpoint: str | None = None,
    session: requests.Session | None = None,
    timeout: float = 10.0,
    retry: RetryPolicy | None = None,
    refresh_margin: float = 60.0,
    clock: Callable[[], float] = time.time,
) -> ClientCredentialsTokenProvider:
    """The ``client_credentials`` grant for the server at ``fhir_base``. The token endpoint is discovered
    (once, when the first token is needed) unless given; ``scopes`` is the scope string, or a function of
    the discovered configuration that makes it (e.g. in the scope syntax the server knows)."""
    session = session or requests.Session()
    discovery = ServerDiscovery(
        Transport(fhir_base, timeout=timeout, retry=retry, session=session, media_type="application/json")
    )
    endpoint: str | Callable[[], str] = token_endpoint or discovery.token_endpoint

    def requested() -> str:
        return scopes if isinstance(scopes, str) else scopes(discovery.configuration())

    return ClientCredentialsTokenProvider(
        client,
        endpoint,
        scopes=requested,
        session=session,
        timeout=timeout,
        refresh_margin=refresh_margin,
        clock=clock,
    )


def smart_backend_services(fhir_base: str, client: PrivateKeyJwt, **options: Any) -> ClientCredentialsTokenProvider:
    """SMART Backend Services: ``client_credentials_provider`` with a ``private_key_jwt`` client (on its clock)."""
    return client_credentials_provider(fhir_base, client, clock=client.clock, **options)
