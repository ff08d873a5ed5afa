"""Verifying the CDS client's JWT (CDS Hooks "Trusting CDS Clients").

Every call carries ``Authorization: Bearer <JWT>`` signed with an asymmetric key (``none`` and HMAC are
refused). What is checked, in this order, so a bad token never uses up a ``jti``:

1. the header: ``alg`` one of ``[cds] algorithms``; a ``jku`` is honoured only when it is one of
   ``[cds] jwks_urls`` (any other is refused without being fetched); ``kid`` picks the key;
2. the key: from the ``jku`` set, else from ``[cds] jwks_file`` and every ``[cds] jwks_urls`` set (fetched
   with a short timeout, kept for ``JWKS_CACHE_SECONDS``, fetched again for an unknown ``kid`` at most once
   per ``JWKS_REFRESH_SECONDS``);
3. the claims: signature, ``iss`` in ``[cds] issuers``, ``aud`` the endpoint called, ``exp``, ``iat`` (not in
   the future, at most ``max_token_seconds`` before ``exp``), ``jti`` present;
4. replay: ``SET NX`` of the issuer's ``jti`` in Redis, expiring when the token does.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jwt
import redis
import requests

from fhir_smartflow.config import CdsConfig, ConfigError

log = logging.getLogger(__name__)

JWKS_CACHE_SECONDS = 300.0
JWKS_REFRESH_SECONDS = 30.0
JWKS_TIMEOUT_SECONDS = 2.0
_MAX_JWKS_BYTES = 256 * 1024


class TokenRefused(Exception):
    """The request's JWT is missing or not acceptable (answered 401); the text names the check, never the token."""


def _key_set(data: Any, source: str) -> dict[str, jwt.PyJWK]:
    """kid → key of a JWK Set; keys without a kid are kept under ``""``. Symmetric keys are ignored."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError(f"{source} is not a JWK Set (an object with a 'keys' list)")
    keys: dict[str, jwt.PyJWK] = {}
    for item in data["keys"]:
        if not isinstance(item, dict) or item.get("kty") == "oct" or "d" in item:
            continue  # a shared secret or a private key has no place in a published set
        try:
            keys[str(item.get("kid", ""))] = jwt.PyJWK.from_dict(item)
        except jwt.PyJWTError as exc:
            log.warning("cds: a key of %s is not usable: %s", source, exc)
    return keys


class _RemoteSet:
    def __init__(self, url: str) -> None:
        self.url = url
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at = float("-inf")
        self.tried_at = float("-inf")


class KeySource:
    """The trusted keys: the out-of-band file and the allow-listed JWK Set URLs."""

    def __init__(
        self,
        cfg: CdsConfig,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.file_keys: dict[str, jwt.PyJWK] = {}
        if cfg.jwks_file:
            try:
                self.file_keys = _key_set(json.loads(Path(cfg.jwks_file).read_text(encoding="utf-8")), cfg.jwks_file)
            except (OSError, ValueError) as exc:
                raise ConfigError("[cds] jwks_file", f"cannot read a JWK Set from {cfg.jwks_file}: {exc}") from None
        self.remote = {url: _RemoteSet(url) for url in cfg.jwks_urls}
        self.session = session or requests.Session()
        self.clock = clock
        self._lock = threading.Lock()

    def _fetch(self, entry: _RemoteSet, force: bool) -> None:
        now = self.clock()
        fresh = now - entry.fetched_at < JWKS_CACHE_SECONDS
        if (fresh and not force) or now - entry.tried_at < JWKS_REFRESH_SECONDS:
            return
        entry.tried_at = now
        try:
            resp = self.session.get(entry.url, timeout=JWKS_TIMEOUT_SECONDS, allow_redirects=False)
            if resp.status_code != 200 or len(resp.content) > _MAX_JWKS_BYTES:
                raise ValueError(f"HTTP {resp.status_code}")
            entry.keys = _key_set(resp.json(), entry.url)
            entry.fetched_at = now
        except (requests.RequestException, ValueError) as exc:
            log.warning("cds: could not fetch the JWK Set %s: %s", entry.url, type(exc).__name__)

    def warm(self) -> None:
        """Fetch every JWK Set once now (called in the background at start), so the first call does not wait."""
        with self._lock:
            for entry in self.remote.values():
                self._fetch(entry, force=False)

    def key(self, kid: str, jku: str | None) -> jwt.PyJWK:
        if jku is not None and jku not in self.remote:
            raise TokenRefused("the jku header names a JWK Set that is not trusted")
        sets = [self.remote[jku]] if jku is not None else list(self.remote.values())
        with self._lock:
            for force in (False, True):
                found = [] if jku is not None else [self.file_keys]
                for entry in sets:
                    self._fetch(entry, force)
                    found.append(entry.keys)
                for keys in found:
                    if kid in keys:
                        return keys[kid]
                if not kid and sum(len(k) for k in found) == 1:  # a single key needs no kid
                    return next(iter(k for keys in found for k in keys.values()))
        raise TokenRefused("no trusted key has the JWT's kid")


class ClientVerifier:
    """Checks a CDS client's bearer JWT for one endpoint; ``verify`` returns its claims or raises TokenRefused."""

    def __init__(
        self,
        cfg: CdsConfig,
        conn: redis.Redis,
        prefix: str,
        keys: KeySource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.conn = conn
        self.prefix = prefix
        self.keys = keys or KeySource(cfg)
        self.clock = clock

    def verify(self, authorization: str | None, audiences: Sequence[str]) -> dict[str, Any]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenRefused("no bearer JWT in the Authorization header")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("the bearer token is not a JWT") from None
        alg = header.get("alg")
        if alg not in self.cfg.algorithms:
            raise TokenRefused(f"JWT alg {alg!r} is not accepted")
        if "typ" in header and str(header["typ"]).upper() != "JWT":
            raise TokenRefused("JWT typ is not JWT")
        jku = header.get("jku")
        key = self.keys.key(str(header.get("kid") or ""), jku if isinstance(jku, str) else None)
        cfg = self.cfg
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=list(audiences),
                issuer=list(cfg.issuers),
                leeway=cfg.leeway_seconds,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("the JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("the JWT's aud is not this endpoint") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("the JWT's iss is not a trusted CDS client") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("the JWT's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"the JWT is not acceptable: {type(exc).__name__}") from None
        now = self.clock()
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(iat, int | float) or iat > now + cfg.leeway_seconds:
            raise TokenRefused("the JWT's iat is in the future")
        if exp - iat > cfg.max_token_seconds:
            raise TokenRefused(f"the JWT lives longer than {cfg.max_token_seconds} s")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise TokenRefused("the JWT has no usable jti")
        ttl = max(1, int(exp - now + cfg.leeway_seconds) + 1)
        if not self.conn.set(f"{self.prefix}cds:jti:{claims['iss']}|{jti}", b"1", nx=True, ex=ttl):
            raise TokenRefused("the JWT's jti was already used (replay)")
        return claims
