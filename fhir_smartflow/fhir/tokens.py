"""The token-provider abstraction: where a request's bearer token comes from.

Implementations: ``StaticTokenProvider`` (below, ``auth = "bearer"``), ``ClientCredentialsTokenProvider``
(fhir/oauth.py; with the ``private_key_jwt`` client authentication of fhir/smart.py it is SMART Backend
Services) and OpenEMR's user-context ``UserTokenStore`` (openemr/tokens.py, refresh tokens kept in Redis).
``Transport`` (fhir/transport.py) asks for a token per request and invalidates it on a 401.
"""

from __future__ import annotations

from typing import Protocol


class TokenProvider(Protocol):
    def token(self) -> str:
        """A bearer token that is valid now (fetched or renewed when needed)."""
        ...

    def invalidate(self, token: str) -> None:
        """The server refused ``token``: forget it, unless another caller has already replaced it (tokens
        are shared between threads, and OpenEMR's between processes)."""
        ...


class StaticTokenProvider:
    """A fixed bearer token; nothing to renew."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty bearer token")
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> None:
        """A static token cannot be renewed; the request sent again fails the same way."""
