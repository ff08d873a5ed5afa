"""SMART App Launch for the sandbox: the EHR side of a user-facing app launch, so apps are tested for real.

- ``/.well-known/smart-configuration`` and ``/.well-known/openid-configuration`` (discovery),
- ``/auth/authorize``: a login page for the sandbox users (``[sandbox.users.<login>]`` with ``fhir_user`` =
  ``Practitioner/<id>`` and ``password_env``) and the launch context of an EHR launch (``launch``),
- ``/auth/token``: ``authorization_code`` with PKCE S256 (required), ``refresh_token`` and, when the profile
  has backend clients, ``client_credentials`` (handed to ``smart.SmartAuth``),
- ``/auth/jwks``: the key that signs the OpenID Connect ``id_token`` (carrying ``fhirUser``),
- ``/launch?app=<client id>&patient=<id>``: the EHR-launch page; it opens the app's ``launch_url`` with
  ``iss`` and ``launch``.

Apps are ``[sandbox.apps.<client id>]``: ``launch_url``, ``redirect_uris`` (space separated, matched
exactly), ``scopes`` (what the app may be granted), ``secret_env`` for a confidential client with a secret, or
``jwks_file`` (its public keys) for one that signs a ``private_key_jwt`` assertion (neither: a public client).
A request bearing one of these user tokens is held to its scopes on the FHIR API (``smart.scope_allows``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, request

from fhir_smartflow.config import ConfigError, secret
from fhir_smartflow.sandbox import smart
from fhir_smartflow.sandbox.errors import outcome

AUTHORIZE_PATH = "/auth/authorize"
TOKEN_PATH = "/auth/token"
JWKS_PATH = "/auth/jwks"
LAUNCH_PATH = "/launch"
OPENID_PATH = "/.well-known/openid-configuration"
PATHS = frozenset({AUTHORIZE_PATH, TOKEN_PATH, JWKS_PATH, LAUNCH_PATH, OPENID_PATH, smart.CONFIGURATION_PATH})
CODE_SECONDS = 60
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS384", "ES384")
LAUNCH_SECONDS = 300
KEY_ID = "sandbox-1"
# Scopes that name no resource: granted when the app's allowance lists them.
CONTEXT_SCOPES = frozenset(
    {"launch", "launch/patient", "openid", "fhirUser", "profile", "offline_access", "online_access"}
)
CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "sso-openid-connect",
    "permission-v1",
    "permission-v2",
    "permission-user",
    "authorize-post",
]


@dataclass(frozen=True)
class App:
    client_id: str
    secret: str | None  # None: a public client (PKCE alone), or one with keys
    launch_url: str
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    keys: jwt.PyJWKSet | None = None  # private_key_jwt: the app's registered public keys (jwks_file)


@dataclass(frozen=True)
class User:
    login: str
    password: str
    fhir_user: str  # Practitioner/<id>


@dataclass
class Code:
    app: str
    redirect_uri: str
    challenge: str
    scopes: tuple[str, ...]
    user: User
    patient: str | None
    expires_at: float


@dataclass
class Session:
    """What a refresh token stands for."""

    app: str
    scopes: tuple[str, ...]
    user: User
    patient: str | None


def _jwks(path: str, key: str) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(key, f"cannot read a JWKS from {path}: {exc}") from None


def _resource_scope(scope: str) -> bool:
    return scope.partition("/")[0] in ("user", "system") and "." in scope


def covered(scope: str, allowance: tuple[str, ...]) -> bool:
    if scope in CONTEXT_SCOPES:
        return scope in allowance
    if not _resource_scope(scope) or "?" in scope:
        return False
    target = scope.partition("/")[2].partition(".")[0]
    letters = smart.scope_letters(scope.replace("user/", "system/", 1)) or ""
    system = [a.replace("user/", "system/", 1) for a in allowance if a.startswith("user/")]
    return bool(letters) and all(any(smart.scope_allows(a, target, ch) for a in system) for ch in letters)


@dataclass
class SmartAuthorization:
    apps: dict[str, App]
    users: dict[str, User]
    lifetime: int = 3600
    clock: Callable[[], float] = time.time
    grants: dict[str, smart.Grant] = field(default_factory=dict)
    codes: dict[str, Code] = field(default_factory=dict)
    launches: dict[str, tuple[str, float]] = field(default_factory=dict)
    refresh: dict[str, Session] = field(default_factory=dict)
    # The strict profile's backend-services checks: they see user grants too (as system scopes).
    backend: smart.SmartAuth | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._jtis: dict[str, float] = {}
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @classmethod
    def from_config(
        cls,
        apps: Mapping[str, Mapping[str, str]],
        users: Mapping[str, Mapping[str, str]],
        env: Mapping[str, str] | None = None,
    ) -> SmartAuthorization:
        registered: dict[str, App] = {}
        for client_id, entry in apps.items():
            key = f"[sandbox.apps.{client_id}]"
            value = secret(entry["secret_env"], env) if entry.get("secret_env") else None
            if entry.get("secret_env") and not value:
                raise ConfigError(f"{key} secret_env", "names an unset environment variable")
            redirects = tuple(entry.get("redirect_uris", "").split())
            if not redirects or not entry.get("launch_url"):
                raise ConfigError(key, "needs launch_url and redirect_uris")
            scopes = tuple(entry.get("scopes", "").split())
            if not scopes:
                raise ConfigError(f"{key} scopes", "must list the scopes the app may be granted")
            keys = _jwks(entry["jwks_file"], f"{key} jwks_file") if entry.get("jwks_file") else None
            registered[client_id] = App(client_id, value, entry["launch_url"], redirects, scopes, keys)
        people: dict[str, User] = {}
        for login, entry in users.items():
            key = f"[sandbox.users.{login}]"
            fhir_user = entry.get("fhir_user", "")
            if not fhir_user.startswith(("Practitioner/", "Patient/", "RelatedPerson/", "Person/")):
                raise ConfigError(f"{key} fhir_user", f"expected Practitioner/<id>, got {fhir_user!r}")
            password = secret(entry.get("password_env", ""), env)
            if not password:
                raise ConfigError(f"{key} password_env", "must name a set environment variable holding the password")
            people[login] = User(login, password, fhir_user)
        return cls(registered, people)

    # ---- the EHR side ------------------------------------------------------------------------------

    def new_launch(self, patient: str) -> str:
        launch = secrets.token_urlsafe(16)
        with self._lock:
            self.launches[launch] = (patient, self.clock() + LAUNCH_SECONDS)
        return launch

    def launch_patient(self, launch: str) -> str | None:
        with self._lock:
            found = self.launches.get(launch)
        return found[0] if found and found[1] > self.clock() else None

    def login(self, name: str, password: str) -> User | None:
        user = self.users.get(name)
        if user is None or not secrets.compare_digest(password.encode(), user.password.encode()):
            return None
        return user

    def grant_scopes(self, app: App, requested: list[str]) -> tuple[str, ...]:
        return tuple(s for s in requested if covered(s, app.scopes))

    def issue_code(self, code: Code) -> str:
        value = secrets.token_urlsafe(24)
        with self._lock:
            self.codes[value] = code
        return value

    # ---- the token endpoint ------------------------------------------------------------------------

    def client(self, form: Mapping[str, str], authorization: str, token_url: str = "") -> App | None:
        if form.get("client_assertion_type") == ASSERTION_TYPE:
            return self._asserted(form.get("client_assertion", ""), token_url)
        client_id, given = form.get("client_id", ""), form.get("client_secret")
        if authorization.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            except ValueError:
                return None
            client_id, given = unquote_plus(user), unquote_plus(password)
        app = self.apps.get(client_id)
        if app is None or app.keys is not None:
            return None
        if app.secret is None:
            return app if not given else None
        return app if given and secrets.compare_digest(given.encode(), app.secret.encode()) else None

    def _asserted(self, assertion: str, token_url: str) -> App | None:
        """private_key_jwt: iss = sub = a client with keys, aud = our token endpoint, unexpired, jti unused."""
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            app = self.apps.get(str(unverified.get("iss", "")))
            if app is None or app.keys is None:
                return None
            kid = jwt.get_unverified_header(assertion).get("kid")
            key = next((k for k in app.keys.keys if kid is None or k.key_id == kid), None)
            if key is None:
                return None
            claims = jwt.decode(
                assertion, key.key, algorithms=list(ASSERTION_ALGS), audience=token_url, issuer=app.client_id,
                options={"require": ["exp", "jti", "sub"]},
            )  # fmt: skip
        except jwt.PyJWTError:
            return None
        if claims["sub"] != app.client_id or claims["exp"] > self.clock() + 300:
            return None
        with self._lock:
            self._jtis = {j: t for j, t in self._jtis.items() if t > self.clock()}
            if claims["jti"] in self._jtis:
                return None  # replayed
            self._jtis[claims["jti"]] = float(claims["exp"])
        return app

    def token(self, form: Mapping[str, str], authorization: str, issuer: str) -> tuple[int, dict[str, Any]]:
        app = self.client(form, authorization, issuer + TOKEN_PATH)
        if app is None:
            return 401, {"error": "invalid_client", "error_description": "unknown client or wrong credentials"}
        grant = form.get("grant_type")
        if grant == "authorization_code":
            with self._lock:
                code = self.codes.pop(form.get("code", ""), None)
            if code is None or code.expires_at <= self.clock() or code.app != app.client_id:
                return 400, {"error": "invalid_grant", "error_description": "unknown, used or expired code"}
            if form.get("redirect_uri") != code.redirect_uri:
                return 400, {"error": "invalid_grant", "error_description": "redirect_uri differs from authorize"}
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if not verifier or not secrets.compare_digest(digest, code.challenge):
                return 400, {"error": "invalid_grant", "error_description": "PKCE code_verifier does not match"}
            return 200, self._tokens(Session(app.client_id, code.scopes, code.user, code.patient), issuer)
        if grant == "refresh_token":
            with self._lock:
                session = self.refresh.pop(form.get("refresh_token", ""), None)
            if session is None or session.app != app.client_id:
                return 400, {"error": "invalid_grant", "error_description": "unknown refresh token"}
            return 200, self._tokens(session, issuer)
        return 400, {"error": "unsupported_grant_type", "error_description": str(grant)}

    def _tokens(self, session: Session, issuer: str) -> dict[str, Any]:
        access = secrets.token_urlsafe(24)
        resource_scopes = tuple(s for s in session.scopes if _resource_scope(s))
        with self._lock:
            self.grants[access] = smart.Grant(resource_scopes, self.clock() + self.lifetime)
        if self.backend is not None:
            as_system = tuple(s.replace("user/", "system/", 1) for s in resource_scopes)
            self.backend.grants[access] = smart.Grant(as_system, self.clock() + self.lifetime)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": self.lifetime,
            "scope": " ".join(session.scopes),
        }
        if session.patient and ("launch" in session.scopes or "launch/patient" in session.scopes):
            body["patient"] = session.patient
        if "openid" in session.scopes and "fhirUser" in session.scopes:
            body["id_token"] = self.id_token(session, issuer)
        if "offline_access" in session.scopes or "online_access" in session.scopes:
            refresh = secrets.token_urlsafe(24)
            with self._lock:
                self.refresh[refresh] = session
            body["refresh_token"] = refresh
        return body

    def id_token(self, session: Session, issuer: str) -> str:
        now = int(self.clock())
        claims = {
            "iss": issuer,
            "sub": session.user.login,
            "aud": session.app,
            "iat": now,
            "exp": now + self.lifetime,
            "fhirUser": f"{issuer}/{session.user.fhir_user}",
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": KEY_ID})

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**public, "kid": KEY_ID, "use": "sig", "alg": "RS256"}]}

    # ---- the resource server -----------------------------------------------------------------------

    def refusal(self, method: str, path: str, authorization: str, body: Callable[[], Any]) -> Response | None:
        """A user token's scopes on the FHIR API; other requests are left to the profile's own checks."""
        if path in PATHS or not authorization.startswith("Bearer "):
            return None
        with self._lock:
            grant = self.grants.get(authorization[7:])
        if grant is None:
            return None
        if self.clock() >= grant.expires_at:
            answer = _fhir(outcome("error", "login", "the access token has expired"), 401)
            answer.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return answer
        for rtype, letter in smart.interactions(method, path, body):
            if not any(smart.scope_allows(s.replace("user/", "system/", 1), rtype, letter) for s in grant.scopes):
                text = f"Forbidden: the token's scopes do not allow '{letter}' on {rtype} (e.g. user/{rtype}.{letter})"
                return _fhir(outcome("error", "forbidden", text), 403)
        return None


def _fhir(body: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/fhir+json")


def _json(body: dict[str, Any], status: int = 200) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(title: str, body: str, status: int = 200) -> Response:
    text = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    response = Response(text, status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = "default-src 'self'; form-action *"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _redirect(url: str) -> Response:
    return Response("", status=302, headers={"Location": url})


def _with_query(url: str, params: Mapping[str, str]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


AUTHORIZE_FIELDS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "launch",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
)


OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SMART_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def add_security(statement: dict[str, Any], base: str) -> dict[str, Any]:
    """The CapabilityStatement's SMART security (the oauth-uris extension clients before discovery read)."""
    security = {
        "service": [{"coding": [{"system": SMART_SERVICE, "code": "SMART-on-FHIR"}]}],
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [
                    {"url": "authorize", "valueUri": base + AUTHORIZE_PATH},
                    {"url": "token", "valueUri": base + TOKEN_PATH},
                ],
            }
        ],
    }
    for rest in statement.get("rest") or []:
        rest["security"] = security
    return statement


def install(
    app: Flask, server: SmartAuthorization, base: Callable[[], str], backend: smart.SmartAuth | None = None
) -> None:
    """The authorization server, the launch page and the user-token checks, on the sandbox app."""

    def url(path: str) -> str:
        return base() + path

    @app.get(smart.CONFIGURATION_PATH)
    def smart_configuration() -> Response:
        grants = ["authorization_code", "refresh_token"] + (["client_credentials"] if backend else [])
        return _json(
            {
                "issuer": base(),
                "jwks_uri": url(JWKS_PATH),
                "authorization_endpoint": url(AUTHORIZE_PATH),
                "token_endpoint": url(TOKEN_PATH),
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                    "private_key_jwt",
                ],
                "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
                "grant_types_supported": grants,
                "scopes_supported": [
                    *sorted(CONTEXT_SCOPES),
                    "user/*.cruds",
                    "user/*.rs",
                    "user/*.read",
                    "user/*.write",
                ],
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "capabilities": CAPABILITIES,
            }
        )

    @app.get(OPENID_PATH)
    def openid_configuration() -> Response:
        return _json(
            {
                "issuer": base(),
                "jwks_uri": url(JWKS_PATH),
                "authorization_endpoint": url(AUTHORIZE_PATH),
                "token_endpoint": url(TOKEN_PATH),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    @app.get(JWKS_PATH)
    def jwks() -> Response:
        return _json(server.jwks())

    @app.route(AUTHORIZE_PATH, methods=["GET", "POST"])
    def authorize() -> Response:
        params = {k: (request.values.get(k) or "") for k in AUTHORIZE_FIELDS}
        target = server.apps.get(params["client_id"])
        if target is None or params["redirect_uri"] not in target.redirect_uris:
            return _page("Authorization refused", "<p>Unknown client_id or unregistered redirect_uri.</p>", 400)

        def refuse(error: str, description: str) -> Response:
            query = {"error": error, "error_description": description, "state": params["state"]}
            return _redirect(_with_query(params["redirect_uri"], query))

        if params["response_type"] != "code":
            return refuse("unsupported_response_type", "only response_type=code")
        if params["code_challenge_method"] != "S256" or not params["code_challenge"]:
            return refuse("invalid_request", "PKCE with code_challenge_method=S256 is required")
        if params["aud"].rstrip("/") != base():
            return refuse("invalid_request", "aud must be this FHIR server's base URL")
        patient = None
        if params["launch"]:
            patient = server.launch_patient(params["launch"])
            if patient is None:
                return refuse("invalid_request", "unknown or expired launch")
        error = ""
        if request.method == "POST":
            user = server.login(request.form.get("username", ""), request.form.get("password", ""))
            if user is not None:
                scopes = server.grant_scopes(target, params["scope"].split())
                code = Code(
                    target.client_id, params["redirect_uri"], params["code_challenge"], scopes, user, patient, 0
                )
                code.expires_at = server.clock() + CODE_SECONDS
                return _redirect(
                    _with_query(params["redirect_uri"], {"code": server.issue_code(code), "state": params["state"]})
                )
            error = '<p role="alert">Wrong user name or password.</p>'
        hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in params.items() if v)
        form = (
            f"{error}<p>{html.escape(target.client_id)} asks for: {html.escape(params['scope'])}</p>"
            f'<form method="post" action="{html.escape(url(AUTHORIZE_PATH))}">{hidden}'
            '<label>User <input name="username" autocomplete="username"></label> '
            '<label>Password <input name="password" type="password" autocomplete="current-password"></label> '
            '<button type="submit">Sign in</button></form>'
        )
        return _page("Sandbox sign-in", form, 200 if not error else 401)

    @app.post(TOKEN_PATH)
    def token() -> Response:
        form = {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}
        authorization = request.headers.get("Authorization", "")
        if form.get("grant_type") == "client_credentials" and backend is not None:
            status, body = backend.token(form, authorization)
        else:
            status, body = server.token(form, authorization, base())
        return _json(body, status)

    @app.get(LAUNCH_PATH)
    def launch() -> Response:
        app_id, patient = request.args.get("app", ""), request.args.get("patient", "")
        target = server.apps.get(app_id)
        if target is not None and patient:
            query = {"iss": base(), "launch": server.new_launch(patient.removeprefix("Patient/"))}
            return _redirect(_with_query(target.launch_url, query))
        options = "".join(f'<option value="{html.escape(a)}">{html.escape(a)}</option>' for a in server.apps)
        form = (
            f'<form method="get" action="{html.escape(url(LAUNCH_PATH))}"><label>App <select name="app">{options}'
            '</select></label> <label>Patient id <input name="patient"></label> '
            '<button type="submit">Launch</button></form>'
        )
        return _page("Launch an app", form, 200 if not app_id else 404)

    @app.before_request
    def check_user_scopes() -> Response | None:
        return server.refusal(request.method, request.path, request.headers.get("Authorization", ""), _body)

    if backend is not None:
        backend.public_paths |= PATHS
        server.backend = backend


def _body() -> Any:
    try:
        return json.loads(request.get_data() or b"null")
    except (ValueError, RecursionError):
        return None
