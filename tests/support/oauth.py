"""An OAuth2 authorization server in front of the sandbox store: a SMART configuration, a token endpoint for
the ``client_credentials`` grant with client secrets, and bearer-token and scope checks on every FHIR request.

It behaves as the servers clinics run do, written from their documentation, not from our client:

* ``GET /.well-known/smart-configuration`` lists the token endpoint, ``client_secret_basic`` /
  ``client_secret_post`` and the scopes and capabilities given (Medplum lists v2 scopes and
  ``permission-v2``; an OpenEMR 7.0.0 development build lists only ``.read`` / ``.write`` scopes, nested);
* ``POST /oauth2/token``: RFC 6749 section 4.4 with section 2.3.1 client authentication (Basic credentials
  form-urlencoded before Base64, or both in the form); a scope of the syntax the server does not know is
  ``invalid_scope``, and so, with ``enumerated`` (OpenEMR), is one not listed in ``scopes_supported``;
  scopes beyond the client's allowance are left out of the grant; the answer says ``expires_in``
  (Medplum: 3600) and the granted ``scope``;
* every other request needs ``Authorization: Bearer`` with an unexpired token (401 ``invalid_token``
  otherwise) whose scopes allow the interaction (SMART letters: c create, r read, u update, d delete,
  s search; transactions entry by entry), else 403 with an OperationOutcome.

The clock is injectable so a test can make tokens expire without waiting.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from werkzeug.wrappers import Request, Response

WsgiApp = Callable[..., Iterable[bytes]]
TOKEN_PATH = "/oauth2/token"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass
class OAuthClient:
    secret: str
    method: str = "client_secret_basic"  # how it must authenticate
    allowed: str = "system/*.cruds"  # what it may be granted


@dataclass
class Grant:
    scopes: list[str]
    expires_at: float


@dataclass
class OAuthGate:
    clients: dict[str, OAuthClient]
    lifetime: int = 3600
    syntax: str = "v2"  # the scope syntax the server knows: v2 | v1
    scopes_supported: list[Any] = field(default_factory=lambda: ["system/*.rs", "system/*.cruds", "openid"])
    capabilities: list[str] = field(default_factory=lambda: ["client-confidential-symmetric", "permission-v2"])
    enumerated: bool = False  # only the scopes in scopes_supported exist (OpenEMR)
    clock: Callable[[], float] = time.time
    grants: dict[str, Grant] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)  # form + auth method, secrets removed
    refused: list[tuple[int, str]] = field(default_factory=list)  # (status, "METHOD path") answered 401/403

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def issue(self, scopes: str, lifetime: float | None = None) -> str:
        """A token as if granted (for static-token tests)."""
        token = secrets.token_urlsafe(16)
        with self._lock:
            self.grants[token] = Grant(scopes.split(), self.clock() + (lifetime or self.lifetime))
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self.grants.pop(token, None)

    def wrap(self, app: WsgiApp) -> WsgiApp:
        def gate(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            request = Request(environ)
            if request.path == "/.well-known/smart-configuration":
                answer = self._configuration(request)
            elif request.path == TOKEN_PATH:
                answer = self._token(request)
            else:
                answer = self._check(request)
            if answer is not None:
                return answer(environ, start_response)
            return app(environ, start_response)

        return gate

    # -- discovery and the token endpoint ------------------------------------------------------------
    def _configuration(self, request: Request) -> Response:
        body = {
            "token_endpoint": request.host_url.rstrip("/") + TOKEN_PATH,
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": self.scopes_supported,
            "capabilities": self.capabilities,
        }
        return Response(json.dumps(body), 200, mimetype="application/json")

    def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}
        client_id, secret, method = _client_credentials(request, form)
        with self._lock:
            self.token_requests.append(
                {**{k: v for k, v in form.items() if k != "client_secret"}, "auth": method, "client": client_id}
            )
        client = self.clients.get(client_id)
        if client is None or secret != client.secret or method != client.method:
            return _oauth_error(401, "invalid_client", "unknown client, wrong secret or authentication method")
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", str(form.get("grant_type")))
        requested = form.get("scope", "").split()
        listed = set(_flat(self.scopes_supported))
        unknown = [
            s
            for s in requested
            if "/" in s and (_letters(s, self.syntax) is None or (self.enumerated and s not in listed))
        ]
        if unknown:
            return _oauth_error(400, "invalid_scope", f"Check the {unknown[0]} scope")
        granted = [s for s in requested if "/" not in s or _covered(s, client.allowed.split(), self.syntax)]
        token = secrets.token_urlsafe(16)
        with self._lock:
            self.grants[token] = Grant(granted, self.clock() + self.lifetime)
        body = {"token_type": "Bearer", "access_token": token, "expires_in": self.lifetime, "scope": " ".join(granted)}
        return Response(json.dumps(body), 200, mimetype="application/json")

    # -- the resource server -------------------------------------------------------------------------
    def _check(self, request: Request) -> Response | None:
        if request.path == "/metadata":
            return None  # the CapabilityStatement is public
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        with self._lock:
            grant = self.grants.get(token)
        where = f"{request.method} {request.path}"
        if grant is None or self.clock() >= grant.expires_at:
            self.refused.append((401, where))
            return Response(
                "", 401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}, mimetype="application/json"
            )
        for rtype, letter in _interactions(request):
            if not any(_allows(scope, rtype, letter, self.syntax) for scope in grant.scopes):
                self.refused.append((403, where))
                issue = {"severity": "error", "code": "forbidden", "diagnostics": f"Forbidden: {letter} on {rtype}"}
                outcome = {"resourceType": "OperationOutcome", "issue": [issue]}
                return Response(json.dumps(outcome), 403, mimetype="application/fhir+json")
        return None


def _flat(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [s for item in value for s in _flat(item)]


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str, str]:
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return unquote_plus(user), unquote_plus(password), "client_secret_basic"
    return form.get("client_id", ""), form.get("client_secret", ""), "client_secret_post"


def _oauth_error(status: int, error: str, description: str) -> Response:
    return Response(json.dumps({"error": error, "error_description": description}), status, mimetype="application/json")


def _letters(scope: str, syntax: str) -> str | None:
    """The SMART letters of ``context/Type.perm`` in the server's syntax; None when it does not know it."""
    perm = scope.split("?")[0].rpartition(".")[2]
    if syntax == "v1":
        return _V1.get(perm)
    if perm in _V1:  # SMART 2 servers read v1 scopes too
        return _V1[perm]
    ordered = "".join(ch for ch in "cruds" if ch in perm)
    return perm if perm and ordered == perm else None


def _allows(scope: str, rtype: str, letter: str, syntax: str) -> bool:
    target, _, _ = scope.partition(".")
    letters = _letters(scope, syntax) or ""
    return target in (f"system/{rtype}", "system/*") and letter in letters and "?" not in scope


def _covered(scope: str, allowed: list[str], syntax: str) -> bool:
    target = scope.partition(".")[0].partition("/")[2]
    letters = _letters(scope, syntax) or ""
    return all(any(_allows(a, target, ch, syntax) for a in allowed) for ch in letters)


def _interactions(request: Request) -> list[tuple[str, str]]:
    parts = [p for p in request.path.split("/") if p]
    if not parts:
        if request.method != "POST":
            return []
        bundle = json.loads(request.get_data() or b"{}")
        found = []
        for entry in bundle.get("entry") or []:
            method = (entry.get("request") or {}).get("method", "")
            url = (entry.get("request") or {}).get("url", "").split("?")[0]
            found += _interaction(method, [p for p in url.split("/") if p])
        return found
    return _interaction(request.method, parts)


def _interaction(method: str, parts: list[str]) -> list[tuple[str, str]]:
    if not parts or not parts[0][:1].isupper() or any(p.startswith("$") for p in parts):
        return []  # metadata, operations
    instance = len(parts) > 1 and parts[1] != "_search"
    letter = {"GET": "r" if instance else "s", "POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method)
    return [(parts[0], letter)] if letter else []
