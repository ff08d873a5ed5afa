"""An OpenEMR API emulator for the tests (OpenEMR itself cannot be installed here).

It reproduces, from OpenEMR's own source, what the bridge depends on — including the errors and the quirks —
in one of two versions (``mode``): ``7.0.0-dev`` (the development build of 2022-04-30, upstream commit
9f90c9b8, as it behaved when tried) or ``current`` (a current release, from the source of today's
openemr/openemr). Each behaviour names the file it follows:
  [REG]   src/RestControllers/AuthorizationController.php (clientRegistration, newClientSave,
          getAuthorizationServer: grants, token lifetimes)
  [SCOPE] src/Common/Auth/OpenIDConnect/Repositories/ScopeRepository.php (dev) and
          .../Entities/ServerScopeListEntity.php (current): tests/support/openemr_emulator_scopes.py
  [CC]    src/Common/Auth/OpenIDConnect/Grant/CustomClientCredentialsGrant.php (JWT client assertion)
  [RT]    src/Common/Auth/OpenIDConnect/Grant/CustomRefreshTokenGrant.php over league/oauth2-server's
          RefreshTokenGrant (rotation; a revoked token → OAuthServerException::invalidRefreshToken)
  [SMART] src/RestControllers/SMART/SMARTConfigurationController.php (.well-known/smart-configuration)
  [META]  src/RestControllers/FHIR/FhirMetaDataRestController.php + each service's loadSearchParameters
  [SRCH]  src/Services/FHIR/FhirServiceBase.php (unknown search fields are logged and match nothing),
          src/Services/FHIR/Utils/FhirServiceBaseEmptyTrait / the Bundle of FhirResourcesService
  [RCFG]  _rest_config.php RestConfig::scope_check / authorization_check (dev: http_response_code(401);
          exit — an empty body) and apis/dispatch.php (api:oemr / api:fhir required per API)
  [ROUTE] apis/routes/_rest_routes_standard.inc.php (patient, message, document, appointment routes)
  [HELP]  src/RestControllers/RestControllerHelper.php responseHandler (no result → 404 ``null``)
  [PSVC]  src/Services/PatientService.php getOne (an unknown uuid → validationErrors.uuid, 400)
  [MSG]   src/Services/MessageService.php + src/RestControllers/MessageRestController.php
  [DOC]   src/RestControllers/DocumentRestController.php + src/Services/DocumentService.php
  [APPT]  src/Services/AppointmentService.php + src/RestControllers/AppointmentRestController.php
Where OpenEMR's behaviour could not be read from source the emulator follows what the dev build did when it
was tried, and says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jwt
from flask import Flask, Response, jsonify, redirect, request

from tests.support.openemr_emulator_data import (
    DATE_PARAMS,
    AppointmentRecord,
    Categories,
    DocumentRecord,
    PatientRecord,
    new_uuid,
    search_params,
)
from tests.support.openemr_emulator_scopes import CURRENT, DEV, FHIR_TYPES, MODES, first_unknown, grants

SITE = "default"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _parse(value: str) -> float:
    if len(value) == 10:
        value += "T00:00:00Z"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _compare(prefixed: str, actual: float) -> bool:
    prefix, value = (prefixed[:2], prefixed[2:]) if prefixed[:2] in {"gt", "ge", "lt", "le", "eq"} else ("eq", prefixed)
    other = _parse(value)
    return {
        "gt": actual > other,
        "ge": actual >= other,
        "lt": actual < other,
        "le": actual <= other,
        "eq": actual == other,
    }[prefix]


class OpenEmrEmulator:
    def __init__(self, mode: str = DEV, user_token_seconds: int = 3600) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.user_token_seconds = user_token_seconds  # [REG] access tokens of the user grants: PT1H
        self.system_token_seconds = 300  # [REG] client credentials: DateInterval('PT300S')
        self.offset = 0.0
        self.lock = threading.RLock()
        self.base_url = ""
        self.clients: dict[str, dict[str, Any]] = {}
        self.access: dict[str, dict[str, Any]] = {}
        self.refresh: dict[str, dict[str, Any]] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.used_jti: set[str] = set()
        self.patients: list[PatientRecord] = []
        self.appointments: list[AppointmentRecord] = []
        self.messages: list[dict[str, Any]] = []
        self.documents: list[DocumentRecord] = []
        self.categories = Categories()
        self.faults: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.log: list[str] = []  # what OpenEMR would write to its own log (e.g. unknown search fields)
        self.app = self._build_app()

    # -- test controls -------------------------------------------------------------------------------
    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def fail_next(self, count: int, status: int = 500, prefix: str = "/apis/") -> None:
        self.faults.append({"count": count, "status": status, "prefix": prefix})

    def revoke_refresh_tokens(self) -> None:
        for rt in self.refresh.values():
            rt["active"] = False

    def enable_client(self, client_id: str) -> None:
        """Administration → System → API Clients → Enable (newly registered confidential clients are off)."""
        self.clients[client_id]["enabled"] = True

    def add_category(self, name: str) -> int:
        """Administration → Documents → categories: a new child of the root "Categories"."""
        return self.categories.add(name)

    def preregister(self, client_id: str, secret: str, jwks: dict[str, Any], redirect_uri: str, scope: str) -> None:
        """A client registered and enabled beforehand (for tests that are not about registration)."""
        self.clients[client_id] = {
            "secret": secret,
            "jwks": jwks,
            "redirect_uris": [redirect_uri],
            "scopes": scope.split(),
            "enabled": True,
        }

    def issue_user_token(self, scopes: str) -> str:
        """A logged-in staff member's token (the front desk registering patients in the tests)."""
        with self.lock:
            return self._issue(scopes, "user", self.user_token_seconds, False)["access_token"]

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth2/{SITE}/token"

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/apis/{SITE}/fhir"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/apis/{SITE}/api"

    def add_patient(self, family: str, given: str, birth_date: str = "1980-01-01") -> str:
        with self.lock:
            rec = PatientRecord(len(self.patients) + 1, new_uuid(), given, family, birth_date, self.now())
            self.patients.append(rec)
        return rec.uuid

    def update_patient(self, puuid: str, **fields: Any) -> None:
        with self.lock:
            rec = next(p for p in self.patients if p.uuid == puuid)
            for key, value in fields.items():
                setattr(rec, key, value)
            rec.updated = self.now()

    def patient(self, puuid: str) -> PatientRecord | None:
        return next((p for p in self.patients if p.uuid == puuid), None)

    def set_appointment_status(self, eid: int, status: str) -> None:
        """The calendar (there is no Standard API route that changes an appointment's status) [ROUTE]."""
        with self.lock:
            next(a for a in self.appointments if a.eid == eid).status = status

    # -- helpers ---------------------------------------------------------------------------------------
    def _oauth_error(self, error: str, description: str, status: int = 400, hint: str = "") -> Response:
        body = {"error": error, "error_description": description, "message": description}
        if hint:
            body["hint"] = hint
        resp = jsonify(body)
        resp.status_code = status
        return resp

    def _verify_assertion(self, form: Any) -> dict[str, Any]:
        """[CC] the client assertion: signed (RS384) with a key of the client's registered JWKS."""
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise PermissionError("client_assertion_type must be jwt-bearer")
        assertion = form.get("client_assertion") or ""
        unverified = jwt.decode(assertion, options={"verify_signature": False})
        client = self.clients.get(str(unverified.get("iss")))
        if client is None or not client.get("jwks"):
            raise PermissionError("unknown client or no JWKS registered")
        header = jwt.get_unverified_header(assertion)
        key = next((k for k in client["jwks"]["keys"] if not header.get("kid") or k.get("kid") == header["kid"]), None)
        if key is None:
            raise PermissionError("no registered key matches the assertion's kid")
        claims = jwt.decode(
            assertion,
            jwt.PyJWK(key).key,
            algorithms=["RS384"],
            audience=self.token_url,
            options={"require": ["iss", "sub", "aud", "exp", "jti"], "verify_exp": False},
        )
        if claims["iss"] != claims["sub"]:
            raise PermissionError("iss and sub must be the client_id")
        if claims["exp"] - claims.get("iat", time.time()) > 300 or claims["exp"] < time.time():
            raise PermissionError("assertion expired or too long-lived")
        if claims["jti"] in self.used_jti:
            raise PermissionError("jti already used")
        self.used_jti.add(claims["jti"])
        return {"client_id": claims["iss"], **client}

    def _secret_client(self, form: Any) -> dict[str, Any]:
        """league's AbstractGrant::getClientCredentials: HTTP Basic, else client_id / client_secret in the
        body; a current release also takes a JWT assertion from a client with a JWKS (it advertises
        client-confidential-asymmetric)."""
        if self.mode == CURRENT and form.get("client_assertion"):
            return self._verify_assertion(form)
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            from urllib.parse import unquote_plus

            pair = base64.b64decode(header[6:]).decode()
            client_id, secret = (unquote_plus(p) for p in pair.split(":", 1))
        client = self.clients.get(client_id)
        if client is None or not client["secret"] or not secrets.compare_digest(client["secret"], secret):
            raise PermissionError("client secret does not match")
        return {"client_id": client_id, **client}

    def _issue(self, scopes: str, kind: str, lifetime: int, offline: bool, client_id: str = "") -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        self.access[token] = {"scopes": set(scopes.split()), "expires": self.now() + lifetime, "kind": kind}
        # The granted scope string leaves out api:oemr / api:fhir (seen on the dev build), while the token
        # still carries them.
        shown = " ".join(s for s in scopes.split() if not s.startswith("api:"))
        body: dict[str, Any] = {"token_type": "Bearer", "expires_in": lifetime, "access_token": token, "scope": shown}
        if offline:
            rt = secrets.token_urlsafe(32)
            self.refresh[rt] = {"scopes": scopes, "active": True, "client_id": client_id}
            body["refresh_token"] = rt
        return body

    def _bearer(self) -> dict[str, Any] | None:
        value = request.headers.get("Authorization", "")
        token = value[7:] if value.startswith("Bearer ") else ""
        info = self.access.get(token)
        if info is None or info["expires"] < self.now():
            return None
        return info

    def smart_configuration(self) -> dict[str, Any]:
        """[SMART] no token_endpoint_auth_methods_supported; scopes_supported wrapped in one more list."""
        scopes = ["openid", "offline_access", "fhirUser", "api:fhir", "api:oemr"]
        for rtype in FHIR_TYPES[self.mode]:
            scopes += [f"system/{rtype}.read", f"user/{rtype}.read", f"patient/{rtype}.read"]
            if self.mode == CURRENT and rtype != "Appointment":
                scopes += [f"system/{rtype}.rs", f"user/{rtype}.rs", f"patient/{rtype}.rs"]
        capabilities = [
            "launch-ehr",
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "context-ehr-patient",
            "context-standalone-patient",
            "permission-offline",
            "permission-patient",
            "permission-user",
            "sso-openid-connect",
        ]
        if self.mode == CURRENT:  # src/FHIR/SMART/Capability.php of a current release
            capabilities += ["permission-v1", "permission-v2", "client-confidential-asymmetric"]
        return {
            "authorization_endpoint": f"{self.base_url}/oauth2/{SITE}/authorize",
            "token_endpoint": self.token_url,
            "registration_endpoint": f"{self.base_url}/oauth2/{SITE}/registration",
            "introspection_endpoint": f"{self.base_url}/oauth2/{SITE}/introspect",
            "scopes_supported": [scopes],
            "response_types_supported": ["code", "token", "id_token"],
            "capabilities": capabilities,
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["client_credentials", "authorization_code"],
        }

    def capability(self) -> dict[str, Any]:
        """[META] the CapabilityStatement: one entry per served type, its declared search parameters."""
        resources = []
        for rtype in FHIR_TYPES[self.mode]:
            resources.append(
                {
                    "type": rtype,
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": [
                        {"name": n, "type": "date" if n in DATE_PARAMS else "token"}
                        for n in search_params(self.mode, rtype)
                    ],
                }
            )
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "date": "2022-04-30",
            "software": {"name": "OpenEMR", "version": "7.0.0" if self.mode == DEV else "7.0.3"},
            "rest": [{"mode": "server", "resource": resources}],
        }

    def _fhir_rows(self, rtype: str) -> list[tuple[float | None, dict[str, Any]]]:
        now = self.now()
        if rtype == "Patient":
            return [(p.updated, p.fhir(self.mode, now)) for p in self.patients]
        if rtype == "Appointment":
            return [(_parse(a.pc_time) if a.pc_time else None, a.fhir()) for a in self.appointments]
        return []

    # -- app -------------------------------------------------------------------------------------------
    def _build_app(self) -> Flask:
        app = Flask("openemr-emulator")
        emu = self

        def empty(status: int) -> Response:
            # [RCFG] http_response_code(...); exit — PHP's default content type, no body.
            return Response(b"", status=status, content_type="text/html; charset=UTF-8")

        def json_answer(body: Any, status: int) -> Response:
            resp = Response(json.dumps(body), status=status, content_type="application/json")
            return resp

        def envelope(status: int, data: Any = None, validation: Any = None, internal: Any = None) -> Response:
            return json_answer(
                {
                    "validationErrors": validation or [],
                    "internalErrors": internal or [],
                    "data": [] if data is None else data,
                },
                status,
            )

        @app.before_request
        def faults() -> Response | None:
            emu.requests.append(f"{request.method} {request.path}")
            for fault in emu.faults:
                if fault["count"] > 0 and request.path.startswith(fault["prefix"]):
                    fault["count"] -= 1
                    resp = envelope(fault["status"], internal=["injected fault"])
                    if fault["status"] == 429:
                        resp.headers["Retry-After"] = "1"
                    return resp
            return None

        @app.get(f"/apis/{SITE}/fhir/.well-known/smart-configuration")
        def smart_config() -> Response:
            return jsonify(emu.smart_configuration())

        @app.post(f"/oauth2/{SITE}/registration")
        def register() -> Response:
            data = request.get_json(silent=True)
            if not isinstance(data, dict):
                return emu._oauth_error("invalid_client_metadata", "Invalid JSON")
            scope = str(data.get("scope") or "")
            private = data.get("application_type") == "private"
            if private and "system/" in scope and not (data.get("jwks") or data.get("jwks_uri")):
                return emu._oauth_error("invalid_client_metadata", "jwks is invalid")  # [REG]
            if not private and any(s in scope for s in ("system/", "user/", "offline_access")):
                return emu._oauth_error(
                    "invalid_client_metadata",
                    "system, user scopes, and offline_access are only allowed for confidential clients",
                )
            unknown = first_unknown(emu.mode, scope.split())
            if unknown:  # [REG] validateScopesAgainstServerApprovedScopes → OAuthServerException::invalidScope
                return emu._oauth_error(
                    "invalid_scope",
                    "The requested scope is invalid, unknown, or malformed",
                    hint=f"Check the `{unknown}` scope",
                )
            method = data.get("token_endpoint_auth_method")
            if method is not None and method not in ("client_secret_basic", "client_secret_post"):
                return emu._oauth_error(
                    "invalid_client_metadata", f"Unsupported token_endpoint_auth_method value : {method}"
                )
            if not data.get("redirect_uris"):
                return emu._oauth_error("invalid_redirect_uri", "redirect_uris is invalid")
            client_id = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
            secret = base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode() if private else ""
            # [REG] newClientSave: "we do not allow a confidential app to be enabled by default"
            emu.clients[client_id] = {
                "secret": secret,
                "jwks": data.get("jwks"),
                "redirect_uris": data["redirect_uris"],
                "scopes": scope.split(),
                "enabled": not private,
            }
            return json_answer(
                {
                    "client_id": client_id,
                    "client_secret": secret,
                    "client_id_issued_at": int(time.time()),
                    "client_secret_expires_at": 0,
                    **{k: v for k, v in data.items() if k != "jwks"},
                },
                200,
            )

        @app.get(f"/oauth2/{SITE}/authorize")
        def authorize() -> Response:
            # Stands in for the login + consent screens: the test user logs in and approves everything.
            args = request.args
            client = emu.clients.get(args.get("client_id", ""))
            if client is None or args.get("redirect_uri") not in client["redirect_uris"]:
                return emu._oauth_error("invalid_client", "Client authentication failed", 401)
            redirect_uri = args["redirect_uri"]
            scopes = args.get("scope", "").split()
            unknown = first_unknown(emu.mode, scopes)
            if unknown:  # league: invalidScope with the redirect URI → back to the client with the error
                query = {
                    "error": "invalid_scope",
                    "error_description": "The requested scope is invalid",
                    "hint": f"Check the `{unknown}` scope",
                    "state": args.get("state", ""),
                }
                return redirect(f"{redirect_uri}?{urlencode(query)}")
            if args.get("response_type") != "code" or args.get("code_challenge_method") != "S256":
                return emu._oauth_error("invalid_request", "response_type=code with S256 PKCE required")
            granted = [s for s in scopes if s in client["scopes"]]  # [SCOPE] finalizeScopes: registered ones only
            code = secrets.token_urlsafe(16)
            emu.codes[code] = {
                "challenge": args["code_challenge"],
                "scope": " ".join(granted),
                "used": False,
                "redirect_uri": redirect_uri,
            }
            return redirect(f"{redirect_uri}?{urlencode({'code': code, 'state': args.get('state', '')})}")

        @app.post(f"/oauth2/{SITE}/token")
        def token() -> Response:
            form = request.form
            grant = form.get("grant_type")
            try:
                client = emu._verify_assertion(form) if grant == "client_credentials" else emu._secret_client(form)
            except (PermissionError, jwt.PyJWTError, ValueError) as exc:
                return emu._oauth_error("invalid_client", "Client authentication failed", 401, hint=str(exc))
            if not client["enabled"]:
                return emu._oauth_error(
                    "invalid_client", "Client authentication failed", 401, hint="client is not enabled"
                )
            with emu.lock:
                if grant == "client_credentials":
                    wanted = form.get("scope", "").split()
                    unknown = first_unknown(emu.mode, wanted)
                    if unknown:
                        return emu._oauth_error(
                            "invalid_scope",
                            "The requested scope is invalid, unknown, or malformed",
                            hint=f"Check the `{unknown}` scope",
                        )
                    granted = [s for s in wanted if s.startswith("system/") and s in client["scopes"]]
                    return jsonify(emu._issue(" ".join(granted), "system", emu.system_token_seconds, False))
                if grant == "authorization_code":
                    code = emu.codes.get(form.get("code", ""))
                    if code is None or code["used"] or form.get("redirect_uri") != code["redirect_uri"]:
                        return emu._oauth_error("invalid_grant", "authorization code invalid or used")
                    digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                    if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != code["challenge"]:
                        return emu._oauth_error("invalid_grant", "PKCE verification failed")
                    code["used"] = True
                    offline = "offline_access" in code["scope"].split()
                    return jsonify(
                        emu._issue(code["scope"], "user", emu.user_token_seconds, offline, client["client_id"])
                    )
                if grant == "refresh_token":
                    rt = emu.refresh.get(form.get("refresh_token", ""))
                    if rt is None or not rt["active"]:
                        # [RT] isRefreshTokenRevoked → OAuthServerException::invalidRefreshToken: 401
                        return emu._oauth_error(
                            "invalid_request", "The refresh token is invalid.", 401, hint="Token has been revoked"
                        )
                    rt["active"] = False  # [RT] a new refresh token each time; the old one is revoked
                    return jsonify(emu._issue(rt["scopes"], "user", emu.user_token_seconds, True, rt["client_id"]))
            return emu._oauth_error("unsupported_grant_type", str(grant))

        @app.get(f"/apis/{SITE}/fhir/metadata")
        def metadata() -> Response:
            return jsonify(emu.capability())

        def fhir_denied(info: dict[str, Any] | None, rtype: str, letter: str) -> Response | None:
            if info is None:
                return empty(401)
            if not grants(info["scopes"], info["kind"], rtype, letter, emu.mode):
                # [RCFG] the dev build answers a missing scope with 401 and no body; a current release
                # raises AccessDeniedException → 403.
                return empty(401) if emu.mode == DEV else json_answer({"error": "insufficient_scope"}, 403)
            return None

        @app.get(f"/apis/{SITE}/fhir/<rtype>")
        def search(rtype: str) -> Response:
            if rtype not in FHIR_TYPES[emu.mode]:
                return empty(404)  # no route for the type: 404 with an empty body (dev: /fhir/Appointment)
            denied = fhir_denied(emu._bearer(), rtype, "s")
            if denied:
                return denied
            declared = set(search_params(emu.mode, rtype))
            with emu.lock:
                rows = emu._fhir_rows(rtype)
            for name in request.args:
                if name not in declared:
                    # [SRCH] "This search field does not exist" is logged; the search matches nothing.
                    emu.log.append(f"This search field does not exist: {name}")
                    rows = []
            for value in request.args.getlist("_lastUpdated"):
                rows = [r for r in rows if r[0] is not None and _compare(value, r[0])]
            for value in request.args.getlist("date"):
                prefix = value[:2] if value[:2].isalpha() else ""
                day = value[len(prefix) :][:10]
                rows = [r for r in rows if _compare(prefix + day, _parse(r[1].get("start", "1970-01-01")[:10]))]
            # [SRCH] no paging: every match in one Bundle, type collection on the dev build, no next link.
            bundle = {
                "resourceType": "Bundle",
                "type": "collection" if emu.mode == DEV else "searchset",
                "total": len(rows),
                "entry": [{"fullUrl": f"{emu.fhir_base}/{rtype}/{r['id']}", "resource": r} for _, r in rows],
                "link": [{"relation": "self", "url": request.url}],
            }
            return jsonify(bundle)

        @app.get(f"/apis/{SITE}/fhir/<rtype>/<rid>")
        def read(rtype: str, rid: str) -> Response:
            if rtype not in FHIR_TYPES[emu.mode]:
                return empty(404)
            denied = fhir_denied(emu._bearer(), rtype, "r")
            if denied:
                return denied
            with emu.lock:
                found = [r for _, r in emu._fhir_rows(rtype) if r["id"] == rid]
            if not found:
                return json_answer(
                    {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "not-found", "diagnostics": "not found"}],
                    },
                    404,
                )
            return jsonify(found[0])

        def standard_auth(resource: str, letter: str) -> Response | None:
            info = emu._bearer()
            if info is None or info["kind"] != "user" or "api:oemr" not in info["scopes"]:
                return empty(401)  # [RCFG] dispatch: no token, or not for the standard API
            if not grants(info["scopes"], "user", resource, letter, emu.mode):
                return empty(401) if emu.mode == DEV else json_answer({"error": "insufficient_scope"}, 403)
            return None

        def found_or_404(data: Any) -> Response:
            return jsonify(data) if data else json_answer(None, 404)  # [HELP] responseHandler

        @app.post(f"/apis/{SITE}/api/patient")
        def patient_post() -> Response:
            denied = standard_auth("patient", "c")
            if denied:
                return denied
            data = request.get_json(silent=True) or {}
            if not data.get("fname") or not data.get("lname") or not data.get("DOB"):
                return envelope(400, validation={"fname": {"Required::NON_EXISTENT_KEY": "fname, lname, DOB required"}})
            puuid = emu.add_patient(data["lname"], data["fname"], data["DOB"])
            rec = emu.patient(puuid)
            return envelope(201, {"pid": rec.pid, "uuid": puuid})

        @app.get(f"/apis/{SITE}/api/patient/<puuid>")
        def patient_get(puuid: str) -> Response:
            denied = standard_auth("patient", "r")
            if denied:
                return denied
            rec = emu.patient(puuid)
            if rec is None:  # [PSVC] getOne validates the uuid first
                return envelope(400, validation={"uuid": {"Callback::INVALID_VALUE": "UUID Not Found"}})
            return envelope(200, rec.standard())

        @app.post(f"/apis/{SITE}/api/patient/<pid>/message")
        def message_post(pid: str) -> Response:
            denied = standard_auth("message", "c")
            if denied:
                return denied
            data = request.get_json(silent=True) or {}
            errors = {}
            for name, (low, high) in {
                "body": (2, 65535),
                "to": (2, 255),
                "from": (2, 255),
                "groupname": (2, 255),
                "title": (2, 255),
                "message_status": (2, 20),
            }.items():  # [MSG] validate()
                if name not in data:
                    errors[name] = {"Required::NON_EXISTENT_KEY": f"{name} must be provided, but does not exist"}
                elif not low <= len(str(data[name])) <= high:
                    errors[name] = {"LengthBetween::TOO_LONG": f"{name} must be between {low} and {high} characters"}
            if errors:  # [MSG] validationHandler answers 400 with the messages
                return json_answer(errors, 400)
            with emu.lock:
                mid = len(emu.messages) + 1
                # [MSG] insert: pid is not checked — a uuid becomes 0 in the int column; an unknown `to`
                # user is stored as it is. Both answer 201.
                emu.messages.append({"mid": mid, "pid": int(pid) if pid.isdigit() else 0, **data})
            return json_answer({"mid": mid}, 201)

        @app.post(f"/apis/{SITE}/api/patient/<pid>/document")
        def document_post(pid: str) -> Response:
            denied = standard_auth("document", "c")
            if denied:
                return denied
            upload = request.files.get("document")  # [DOC] $_FILES['document'], category from ?path=
            path = request.args.get("path", "")
            content = upload.read() if upload is not None else b""
            if not pid.isdigit() or upload is None or not content or not emu.categories.is_valid_path(path):
                return json_answer(None, 404)  # [DOC] insertAtPath false → [HELP] 404 null
            with emu.lock:
                emu.documents.append(
                    DocumentRecord(
                        len(emu.documents) + 1,
                        int(pid),
                        emu.categories.last_id_of_path(path),
                        new_uuid() + ".bin",
                        upload.filename or "",
                        upload.mimetype,
                        content,
                        datetime.fromtimestamp(emu.now(), UTC).strftime("%Y-%m-%d %H:%M:%S"),
                    )
                )
            return json_answer(True, 200)  # [DOC] responseHandler($result, null, 200): true, no id

        @app.get(f"/apis/{SITE}/api/patient/<pid>/document")
        def document_list(pid: str) -> Response:
            denied = standard_auth("document", "s")
            if denied:
                return denied
            path = request.args.get("path", "")
            if not emu.categories.is_valid_path(path):
                return json_answer(None, 404)
            category = emu.categories.last_id_of_path(path)
            # [DOCS] getAllAtPath: "filename" is basename(url), the stored name, not the uploaded one
            return found_or_404(
                [
                    {"filename": d.stored_name, "id": str(d.id), "mimetype": d.mimetype, "docdate": d.docdate}
                    for d in emu.documents
                    if str(d.pid) == pid and d.category_id == category
                ]
            )

        @app.get(f"/apis/{SITE}/api/patient/<pid>/document/<did>")
        def document_get(pid: str, did: str) -> Response:
            denied = standard_auth("document", "r")
            if denied:
                return denied
            doc = next((d for d in emu.documents if str(d.pid) == pid and str(d.id) == did), None)
            if doc is None:
                return json_answer(None, 404)
            return Response(doc.content, status=200, content_type=doc.mimetype)

        @app.post(f"/apis/{SITE}/api/patient/<pid>/appointment")
        def appointment_post(pid: str) -> Response:
            denied = standard_auth("appointment", "c")
            if denied:
                return denied
            data = request.get_json(silent=True) or {}
            required = (
                "pc_catid",
                "pc_title",
                "pc_duration",
                "pc_hometext",
                "pc_apptstatus",
                "pc_eventDate",
                "pc_startTime",
                "pc_facility",
                "pc_billing_location",
            )  # [APPT] validate()
            missing = [k for k in required if k not in data]
            rec = next((p for p in emu.patients if str(p.pid) == pid), None)
            if missing or rec is None or len(str(data.get("pc_startTime", ""))) != 5:
                return json_answer({k: "required" for k in missing} or {"pid": "pid must be for a valid patient"}, 400)
            with emu.lock:
                eid = len(emu.appointments) + 1
                emu.appointments.append(
                    AppointmentRecord(
                        eid,
                        new_uuid(),
                        rec.pid,
                        rec.uuid,
                        data["pc_eventDate"],
                        data["pc_startTime"] + ":00",
                        int(data["pc_duration"]),
                        data["pc_apptstatus"],
                        data["pc_title"],
                    )
                )
            return json_answer({"id": eid}, 200)  # [APPT] post: {"id": <pc_eid>}

        @app.get(f"/apis/{SITE}/api/patient/<pid>/appointment")
        def appointment_list(pid: str) -> Response:
            denied = standard_auth("appointment", "r")
            if denied:
                return denied
            return found_or_404([a.standard() for a in emu.appointments if str(a.pid) == pid])

        @app.get(f"/apis/{SITE}/api/appointment")
        def appointment_all() -> Response:
            denied = standard_auth("appointment", "r")
            if denied:
                return denied
            return found_or_404([a.standard() for a in emu.appointments])

        return app
