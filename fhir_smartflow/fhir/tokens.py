"""The token-provider abstraction: where a request's bearer token comes from.

Implementations: ``StaticTokenProvider`` (below, ``auth = "bearer"``), ``ClientCredentialsTokenProvider``
(fhir/oauth.py: ``auth = "client-credentials"`` with a client secret, ``auth = "smart-backend"`` with the
``private_key_jwt`` assertion of fhir/smart.py) and OpenEMR's user-context ``UserTokenStore``
(openemr/tokens.py, refresh tokens kept in Redis). ``Transport`` (fhir/transport.py) asks for a token per
request and invalidates it on a 401; a provider that cannot renew its token raises there instead.
"""

from __future__ import annotations

import logging
from typing import Protocol

from fhir_smartflow.fhir.errors import FhirUnauthorized

log = logging.getLogger(__name__)


class TokenProvider(Protocol):
    def token(self) -> str:
        """A bearer token that is valid now (fetched or renewed when needed)."""
        ...

    def invalidate(self, token: str) -> None:
        """The server refused ``token``: forget it, unless another caller has already replaced it (tokens
        are shared between threads, and OpenEMR's between processes). A provider that cannot get another
        token raises a non-transient ``FhirUnauthorized`` saying what to do."""
        ...

    def granted_scopes(self) -> str:
        """The scopes the server granted the current token ("" when not known)."""
        ...


class BearerTokenRefused(FhirUnauthorized):
    """The server answered 401 to the static bearer token: it must be replaced, nothing here can renew it."""


class StaticTokenProvider:
    """A fixed bearer token (``source`` says where it came from, for the error when it is refused)."""

    def __init__(self, token: str, source: str = "the configured bearer token") -> None:
        if not token:
            raise ValueError("empty bearer token")
        self._token = token
        self.source = source

    def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> None:
        """A static token cannot be renewed: fail now, loudly, instead of sending it again."""
        message = (
            f"the FHIR server refused {self.source} (401): a static token cannot be renewed here; replace it "
            '(an expired token), or use auth = "client-credentials" so the service gets its own tokens'
        )
        log.error("%s", message)
        raise BearerTokenRefused(message, status=401)

    def granted_scopes(self) -> str:
        return ""
