"""The OAuth2 token endpoint, as every token provider uses it.

* ``TokenRequest`` + ``post_token``: one POST to a token endpoint with typed errors: no answer, 429 or 5xx
  → ``FhirUnavailable`` (transient); any other refusal → ``TokenRefused`` carrying the OAuth2 ``error``.
* ``ClientAuth``: how the client proves who it is at the endpoint (RFC 6749 section 2.3):
  ``ClientSecretBasic`` (HTTP Basic with the client id and secret, RFC 6749 section 2.3.1),
  ``ClientSecretPost`` (the same two in the form body), and ``PrivateKeyJwt`` (fhir/smart.py, a signed
  assertion). ``CLIENT_SECRET_METHODS`` names the secret ones as ``token_endpoint_auth_method`` spells them.
* ``ClientCredentialsTokenProvider``: the ``client_credentials`` grant (a token for the service itself),
  cached and renewed shortly before it expires. With ``PrivateKeyJwt`` it is SMART Backend Services.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote_plus

import requests

from fhir_smartflow.fhir.errors import FhirUnavailable, TokenRefused
from fhir_smartflow.fhir.scopes import Scopes

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = 300.0  # when a token answer has no expires_in


@dataclass
class TokenRequest:
    url: str
    form: dict[str, str] = field(repr=False)  # credentials: never in a repr or a log line
    headers: dict[str, str] = field(default_factory=lambda: {"Accept": "application/json"}, repr=False)


class ClientAuth(Protocol):
    client_id: str

    def authenticate(self, request: TokenRequest) -> None:
        """Add this client's credentials (form fields and/or headers) to a token request."""
        ...


class ClientSecret:
    """A registered client with a secret; the subclasses say how it goes to the token endpoint."""

    method: str  # its token_endpoint_auth_method

    def __init__(self, client_id: str, client_secret: str) -> None:
        if not client_id:
            raise ValueError(f"{self.method} needs a client_id")
        if not client_secret:
            raise ValueError(f"{self.method} needs a client secret")
        self.client_id = client_id
        self._secret = client_secret

    def authenticate(self, request: TokenRequest) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.client_id!r}, client_secret=***)"


class ClientSecretBasic(ClientSecret):
    """``client_secret_basic``: ``Authorization: Basic base64(id:secret)``, each part first form-urlencoded
    (RFC 6749 section 2.3.1 and Appendix B), so a ``:`` or ``+`` in a secret survives."""

    method = "client_secret_basic"

    def authenticate(self, request: TokenRequest) -> None:
        pair = f"{quote_plus(self.client_id)}:{quote_plus(self._secret)}"
        request.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class ClientSecretPost(ClientSecret):
    """``client_secret_post``: ``client_id`` and ``client_secret`` in the form body (RFC 6749 section 2.3.1;
    what OpenEMR's registration documents by default)."""

    method = "client_secret_post"

    def authenticate(self, request: TokenRequest) -> None:
        request.form["client_id"] = self.client_id
        request.form["client_secret"] = self._secret


# token_endpoint_auth_method (RFC 7591) -> the ClientAuth for a client with a secret
CLIENT_SECRET_METHODS: dict[str, type[ClientSecret]] = {
    ClientSecretBasic.method: ClientSecretBasic,
    ClientSecretPost.method: ClientSecretPost,
}


def post_token(session: requests.Session, request: TokenRequest, timeout: float) -> dict[str, Any]:
    """POST the grant; the token answer (it has an ``access_token``) or a typed error."""
    url = request.url
    try:
        resp = session.post(url, data=request.form, headers=request.headers, timeout=timeout)
    except requests.RequestException as exc:
        raise FhirUnavailable(
            f"token endpoint {url} unreachable: {type(exc).__name__}", url=url, method="POST"
        ) from exc
    status = resp.status_code
    if status == 429 or status >= 500:
        raise FhirUnavailable(f"token endpoint {url} answered {status}", status=status, url=url, method="POST")
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    if status != 200:
        error = str(body.get("error") or f"http_{status}")
        raise TokenRefused(error, str(body.get("error_description") or ""), status=status, url=url)
    if not body.get("access_token"):
        raise TokenRefused("invalid_response", "no access_token in the token response", status=status, url=url)
    return body


def renewal_margin(lifetime: float, margin: float) -> float:
    """Seconds before expiry to renew: ``margin``, but at most a quarter of a short lifetime (OpenEMR's
    system tokens live 60 s, so they are renewed 15 s early, not at once)."""
    return min(margin, lifetime / 4)


class ClientCredentialsTokenProvider:
    """TokenProvider for the ``client_credentials`` grant. Thread-safe.

    ``token_endpoint`` is the URL, or a function that finds it (SMART discovery), and ``scopes`` the scope
    string or a function that makes it (the scopes the service needs, in the server's syntax); each
    function is called when the first token is needed, and its answer kept. ``granted_scopes()`` is what
    the server granted (RFC 6749 section 5.1: an answer without ``scope`` granted what was asked).
    """

    def __init__(
        self,
        client: ClientAuth,
        token_endpoint: str | Callable[[], str],
        *,
        scopes: str | Callable[[], str] = "",
        session: requests.Session | None = None,
        timeout: float = 10.0,
        refresh_margin: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self._endpoint = token_endpoint
        self._scopes = scopes
        self.session = session or requests.Session()
        self.timeout = timeout
        self.refresh_margin = refresh_margin
        self.clock = clock
        self._granted = ""
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = threading.Lock()

    def token_endpoint(self) -> str:
        if callable(self._endpoint):
            self._endpoint = self._endpoint()
        return self._endpoint

    def scopes(self) -> str:
        """The scope string asked for (worked out on first use)."""
        if callable(self._scopes):
            self._scopes = self._scopes()
        return self._scopes

    def granted_scopes(self) -> str:
        """The scopes of the current token ("" before the first one)."""
        return self._granted

    def token(self) -> str:
        with self._lock:
            if self._token is None or self.clock() >= self._renew_at:
                self._token = self._fetch()
            return self._token

    def invalidate(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> str:
        form = {"grant_type": "client_credentials"}
        if scopes := self.scopes():
            form["scope"] = scopes
        request = TokenRequest(self.token_endpoint(), form)
        self.client.authenticate(request)
        body = post_token(self.session, request, self.timeout)
        lifetime = float(body.get("expires_in") or DEFAULT_EXPIRES_IN)
        self._renew_at = self.clock() + lifetime - renewal_margin(lifetime, self.refresh_margin)
        self._granted = str(body.get("scope") or scopes)
        log.info("obtained a client-credentials token (expires in %ss, scope %s)", int(lifetime), self._granted)
        asked = Scopes.parse(scopes)
        if lacking := Scopes.parse(self._granted).missing(asked):
            log.warning(
                "the token endpoint granted less than asked for: without %s, requests needing it will be refused",
                lacking.render(asked.written_in()),
            )
        return str(body["access_token"])
