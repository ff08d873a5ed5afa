"""SMART Backend Services for the strict profiles: a client_credentials token endpoint for registered
clients, and scope checks on every FHIR interaction (SMART v1 ``system/Task.write`` and v2
``system/Task.cu`` scopes; letters c create, r read, u update, d delete, s search).

Registered in ``[sandbox.clients.<client id>]`` with ``secret_env`` (the environment variable holding the
secret) and ``scopes`` (what the client may be granted). A token request may ask for less; it gets the
requested scopes its allowance covers (all of them when it asks for none). Tokens live ``lifetime`` seconds.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from flask import Flask, Response, request

from fhir_smartflow.config import ConfigError, secret
from fhir_smartflow.sandbox.errors import outcome

TOKEN_PATH = "/oauth2/token"
CONFIGURATION_PATH = "/.well-known/smart-configuration"
PUBLIC_PATHS = frozenset({"/metadata", TOKEN_PATH, CONFIGURATION_PATH, "/$faults"})
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_METHOD_LETTER = {"POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}


def scope_letters(scope: str) -> str | None:
    """The SMART letters of ``system/Type.perm`` (v1 read/write/*, or v2 ordered ``cruds``); None if not one."""
    context, _, rest = scope.partition("/")
    if context != "system" or "." not in rest:
        return None
    perm = rest.split("?", 1)[0].rpartition(".")[2]
    if perm in _V1:
        return _V1[perm]
    return perm if perm and "".join(ch for ch in "cruds" if ch in perm) == perm else None


def scope_allows(scope: str, resource_type: str, letter: str) -> bool:
    target = scope.partition("/")[2].partition(".")[0]
    return target in (resource_type, "*") and letter in (scope_letters(scope) or "") and "?" not in scope


def _covered(scope: str, allowance: list[str]) -> bool:
    target = scope.partition("/")[2].partition(".")[0]
    letters = scope_letters(scope) or ""
    return bool(letters) and all(any(scope_allows(a, target, ch) for a in allowance) for ch in letters)


@dataclass(frozen=True)
class Client:
    secret: str
    scopes: tuple[str, ...]


@dataclass
class Grant:
    scopes: tuple[str, ...]
    expires_at: float


@dataclass
class SmartAuth:
    clients: dict[str, Client]
    lifetime: int = 3600
    clock: Callable[[], float] = time.time
    grants: dict[str, Grant] = field(default_factory=dict)
    public_paths: set[str] = field(default_factory=lambda: set(PUBLIC_PATHS))  # smart_authorize adds its own

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, clients: Mapping[str, Mapping[str, str]], env: Mapping[str, str] | None = None) -> SmartAuth:
        registered = {}
        for client_id, entry in clients.items():
            key = f"[sandbox.clients.{client_id}]"
            value = secret(entry.get("secret_env", ""), env)
            if not value:
                raise ConfigError(f"{key} secret_env", "must name a set environment variable holding the secret")
            scopes = tuple(entry.get("scopes", "").split())
            unknown = [s for s in scopes if scope_letters(s) is None]
            if not scopes or unknown:
                raise ConfigError(f"{key} scopes", f"expected SMART system scopes, got {entry.get('scopes')!r}")
            registered[client_id] = Client(value, scopes)
        return cls(registered)

    # ---- the token endpoint ------------------------------------------------------------------------

    def token(self, form: Mapping[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        client_id, given = form.get("client_id", ""), form.get("client_secret", "")
        if authorization.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            except ValueError:
                return 401, {"error": "invalid_client", "error_description": "malformed Basic credentials"}
            client_id, given = unquote_plus(user), unquote_plus(password)
        client = self.clients.get(client_id)
        if client is None or not secrets.compare_digest(given.encode(), client.secret.encode()):
            return 401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type", "error_description": str(form.get("grant_type"))}
        requested = form.get("scope", "").split()
        unknown = [s for s in requested if "/" in s and scope_letters(s) is None]
        if unknown:
            return 400, {"error": "invalid_scope", "error_description": f"unknown scope {unknown[0]}"}
        wanted = [s for s in requested if "/" in s] or list(client.scopes)
        granted = tuple(s for s in wanted if _covered(s, list(client.scopes)))
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.grants[token] = Grant(granted, self.clock() + self.lifetime)
        return 200, {
            "token_type": "Bearer",
            "access_token": token,
            "expires_in": self.lifetime,
            "scope": " ".join(granted),
        }

    # ---- the resource server -----------------------------------------------------------------------

    def refusal(self, method: str, path: str, authorization: str, body: Callable[[], Any]) -> Response | None:
        """None when the request may go on; else the 401 / 403 answer."""
        if path in self.public_paths:
            return None
        token = authorization[7:] if authorization.startswith("Bearer ") else ""
        with self._lock:
            grant = self.grants.get(token)
        if grant is None or self.clock() >= grant.expires_at:
            answer = _fhir(outcome("error", "login", "a valid bearer token is required"), 401)
            answer.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return answer
        for rtype, letter in interactions(method, path, body):
            if not any(scope_allows(s, rtype, letter) for s in grant.scopes):
                text = (
                    f"Forbidden: the token's scopes do not allow '{letter}' on {rtype} (e.g. system/{rtype}.{letter})"
                )
                return _fhir(outcome("error", "forbidden", text), 403)
        return None


def interactions(method: str, path: str, body: Callable[[], Any]) -> list[tuple[str, str]]:
    """(resource type, SMART letter) of a request; a transaction's entries one by one."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        bundle = body() if method == "POST" else None
        found: list[tuple[str, str]] = []
        for entry in (bundle.get("entry") if isinstance(bundle, dict) else None) or []:
            req = entry.get("request") if isinstance(entry, dict) else None
            if isinstance(req, dict) and isinstance(req.get("url"), str):
                found += _interaction(str(req.get("method", "")), req["url"].split("?")[0].strip("/").split("/"))
        return found
    return _interaction(method, parts)


def _interaction(method: str, parts: list[str]) -> list[tuple[str, str]]:
    if not parts or not parts[0][:1].isupper():
        return []
    if method in {"GET", "HEAD"}:
        instance = len(parts) > 1 and parts[1] != "_search" and not parts[1].startswith("$")
        return [(parts[0], "r" if instance else "s")]
    if method == "POST" and len(parts) > 1 and parts[1] == "_search":
        return [(parts[0], "s")]
    if method == "POST" and any(p.startswith("$") for p in parts):
        return [(parts[0], "r")]  # $status / $events read the Subscription
    letter = _METHOD_LETTER.get(method)
    return [(parts[0], letter)] if letter else []


def token_url() -> str:
    """The token endpoint under the host the client reached us at (a public base may not resolve here)."""
    return request.host_url.rstrip("/") + request.script_root + TOKEN_PATH


def _fhir(body: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/fhir+json")


def install(app: Flask, auth: SmartAuth, *, configuration: bool = True) -> None:
    """The token endpoint, the SMART configuration (unless smart_authorize serves it) and the checks."""

    def smart_configuration() -> Response:
        body = {
            "token_endpoint": token_url(),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write"],
            "capabilities": ["client-confidential-symmetric", "permission-v1", "permission-v2"],
        }
        return Response(json.dumps(body), mimetype="application/json")

    if configuration:
        app.get(CONFIGURATION_PATH)(smart_configuration)

    @app.post(TOKEN_PATH)
    def token() -> Response:
        form = {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}
        status, body = auth.token(form, request.headers.get("Authorization", ""))
        return Response(json.dumps(body), status=status, mimetype="application/json")

    @app.before_request
    def check_scopes() -> Response | None:
        return auth.refusal(request.method, request.path, request.headers.get("Authorization", ""), _body)


def _body() -> Any:
    try:
        return json.loads(request.get_data() or b"null")
    except (ValueError, RecursionError):
        return None
