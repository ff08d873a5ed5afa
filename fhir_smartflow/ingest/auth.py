"""Webhook authentication: which configured subscription sent this delivery?

Each `SubscriptionConfig` names a header and how its value proves the sender:
- ``header``: the value is the shared secret itself;
- ``hmac``: the value is the hex HMAC-SHA256 of the raw body keyed with the secret (Medplum's
  ``X-Signature``; a ``sha256=`` prefix is accepted too).
Every comparison is constant time (`hmac.compare_digest`). Secrets come from the environment only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from fhir_smartflow.config import ConfigError, SubscriptionConfig

log = logging.getLogger(__name__)

INSECURE_DEV_SUBSCRIPTION = "insecure-dev"


class AuthError(Exception):
    """401 for missing credentials and for credentials that match no subscription (reason tells which)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # metric label: missing | invalid
        self.message = message


@dataclass(frozen=True)
class _Credential:
    subscription: str
    mode: str  # header | hmac
    header: str
    secret: bytes


def hmac_hex(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


class Authenticator:
    """Identifies the subscription of a delivery, or accepts everything in insecure-dev mode."""

    def __init__(self, credentials: list[_Credential], insecure_dev: bool = False) -> None:
        self._credentials = credentials
        self.insecure_dev = insecure_dev and not credentials

    @classmethod
    def from_config(
        cls, subscriptions: list[SubscriptionConfig], env: Mapping[str, str] | None = None, insecure_dev: bool = False
    ) -> Authenticator:
        """Resolve every secret now, so a missing environment variable fails at start, not per request."""
        env = os.environ if env is None else env
        credentials = []
        for sub in subscriptions:
            value = env.get(sub.secret_env, "")
            if not value:
                raise ConfigError(
                    f"[[subscriptions]] {sub.id} secret_env",
                    f"environment variable {sub.secret_env} is not set (it holds the subscription's secret)",
                )
            credentials.append(_Credential(sub.id, sub.auth, sub.header, value.encode()))
        if not credentials and not insecure_dev:
            raise ConfigError(
                "[[subscriptions]]",
                "no subscription is configured, so no delivery could be authenticated; "
                "configure one, or pass --insecure-dev for local development",
            )
        if not credentials:
            log.warning(
                "INSECURE DEV MODE: no subscriptions configured, every webhook delivery is accepted "
                "without authentication. NEVER expose this to a network."
            )
        return cls(credentials, insecure_dev=insecure_dev)

    @property
    def subscriptions(self) -> list[str]:
        return [c.subscription for c in self._credentials]

    def identify(self, headers: Mapping[str, str], body: bytes) -> str:
        """The configured subscription id this delivery authenticates as; raises `AuthError`."""
        if self.insecure_dev:
            return INSECURE_DEV_SUBSCRIPTION
        lowered = {k.lower(): v for k, v in headers.items()}
        presented = False
        match: str | None = None
        for cred in self._credentials:
            value = lowered.get(cred.header.lower())
            if value is None or value == "":
                continue
            presented = True
            if cred.mode == "hmac":
                given = value.strip().lower().removeprefix("sha256=")
                ok = hmac.compare_digest(given.encode(), hmac_hex(cred.secret, body).encode())
            else:
                ok = hmac.compare_digest(value.strip().encode(), cred.secret)
            # Keep comparing after a match: time does not depend on which subscription matched.
            if ok and match is None:
                match = cred.subscription
        if match is not None:
            return match
        if not presented:
            headers_wanted = sorted({c.header for c in self._credentials})
            raise AuthError(401, "missing", f"missing credentials: send the {' or '.join(headers_wanted)} header")
        raise AuthError(401, "invalid", "credentials do not match any configured subscription")
