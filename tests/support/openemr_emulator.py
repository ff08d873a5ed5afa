"""An OpenEMR API emulator for the tests (OpenEMR itself cannot be installed here).

It reproduces, from OpenEMR's own documentation and source, only what the bridge depends on — including
the errors. Sources (openemr/openemr; commits in docs/openemr.md):
  [AUTH]  Documentation/api/AUTHENTICATION.md (client credentials, authorization code + PKCE, refresh)
  [STD]   Documentation/api/STANDARD_API.md (envelope, 401 / 403 bodies, message + document endpoints)
  [ROUTE] apis/routes/_rest_routes_standard.inc.php (message/document routes take the numeric :pid)
  [MSG]   src/Services/MessageService.php + src/RestControllers/MessageRestController.php
  [DOC]   src/RestControllers/DocumentRestController.php (multipart field `document`, ?path=, answers true)
  [APPT]  src/Services/FHIR/FhirAppointmentService.php (search params, pc_time as lastUpdated, status map)
Where OpenEMR's behaviour is undocumented the emulator picks the stricter answer and says so.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jwt
from flask import Flask, Response, jsonify, redirect, request

SITE = "default"
# [APPT] OpenEMR appointment status codes -> FHIR Appointment.status.
APPT_STATUS = {
    "-": "proposed",
    "#": "pending",
    "^": "pending",
    ">": "fulfilled",
    "$": "fulfilled",
    "AVM": "booked",
    "SMS": "booked",
    "EMAIL": "booked",
    "*": "booked",
    "%": "cancelled",
    "!": "cancelled",
    "x": "cancelled",
    "?": "noshow",
    "~": "arrived",
    "@": "arrived",
    "<": "checked-in",
    "+": "checked-in",
    "CALL": "waitlist",
}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def scope_allows(granted: set[str], context: str, resource: str, perm: str) -> bool:
    """SMART v2 (`.rs`, `.cruds`) and v1 (`.read`, `.write`) scopes; `*` resource wildcard."""
    for scope in granted:
        if "/" not in scope or "." not in scope:
            continue
        ctx, rest = scope.split("/", 1)
        res, perms = rest.rsplit(".", 1)
        if ctx != context or res not in {resource, "*"}:
            continue
        if perms in {"read", "*"} and perm in "rs":
            return True
        if perms in {"write", "*"} and perm in "cud":
            return True
        if perm in perms and perms.isalpha() and set(perms) <= set("cruds"):
            return True
    return False


class OpenEmrEmulator:
    def __init__(
        self,
        client_id: str,
        jwks: dict[str, Any],
        redirect_uri: str,
        user_token_seconds: int = 3600,
        system_token_seconds: int = 60,
    ) -> None:
        self.client_id = client_id
        self.jwks = jwks
        self.redirect_uri = redirect_uri
        self.user_token_seconds = user_token_seconds  # [AUTH] "Token Lifetime": 1 hour
        self.system_token_seconds = system_token_seconds  # [AUTH]: client credentials tokens live 60 s
        self.offset = 0.0
        self.lock = threading.Lock()
        self.base_url = ""
        self.access: dict[str, dict[str, Any]] = {}
        self.refresh: dict[str, dict[str, Any]] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.used_jti: set[str] = set()
        self.patients: list[dict[str, Any]] = []
        self.appointments: list[dict[str, Any]] = []
        self.encounters: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.documents: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.requests: list[str] = []
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

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth2/{SITE}/token"

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/apis/{SITE}/fhir"

    def add_patient(self, family: str, given: str, birth_date: str = "1980-01-01") -> str:
        puuid = str(uuid.uuid4())
        with self.lock:
            self.patients.append(
                {
                    "pid": len(self.patients) + 1,
                    "uuid": puuid,
                    "fname": given,
                    "lname": family,
                    "DOB": birth_date,
                    "updated": self.now(),
                }
            )
        return puuid

    def update_patient(self, puuid: str, **fields: Any) -> None:
        with self.lock:
            rec = next(p for p in self.patients if p["uuid"] == puuid)
            rec.update(fields, updated=self.now())

    def add_appointment(self, puuid: str, start: datetime, status: str = "-") -> str:
        auuid = str(uuid.uuid4())
        with self.lock:
            self.appointments.append(
                {"uuid": auuid, "puuid": puuid, "start": start.timestamp(), "status": status, "pc_time": self.now()}
            )
        return auuid

    def set_appointment_status(self, auuid: str, status: str) -> None:
        # [APPT]: lastUpdated comes from pc_time (set at creation); a status change leaves it alone.
        with self.lock:
            next(a for a in self.appointments if a["uuid"] == auuid)["status"] = status

    # -- resources -------------------------------------------------------------------------------------
    def _patient_fhir(self, p: dict[str, Any]) -> dict[str, Any]:
        return {
            "resourceType": "Patient",
            "id": p["uuid"],
            "meta": {"versionId": "1", "lastUpdated": _iso(p["updated"])},
            "active": True,
            "name": [{"use": "official", "family": p["lname"], "given": [p["fname"]]}],
            "birthDate": p["DOB"],
        }

    def _appointment_fhir(self, a: dict[str, Any]) -> dict[str, Any]:
        return {
            "resourceType": "Appointment",
            "id": a["uuid"],
            "meta": {"versionId": "1", "lastUpdated": _iso(a["pc_time"])},
            "status": APPT_STATUS.get(a["status"], "pending"),
            "start": _iso(a["start"]),
            "end": _iso(a["start"] + 900),
            "participant": [{"actor": {"reference": f"Patient/{a['puuid']}"}, "status": "accepted"}],
        }

    def capability(self) -> dict[str, Any]:
        def res(rtype: str, params: list[str]) -> dict[str, Any]:
            return {
                "type": rtype,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [
                    {"name": n, "type": "date" if n in {"_lastUpdated", "date"} else "token"} for n in params
                ],
            }

        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "date": "2024-01-01",
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        res("Patient", ["_id", "_lastUpdated", "name", "birthdate", "identifier"]),
                        res("Appointment", ["_id", "patient", "date", "_lastUpdated"]),  # [APPT] loadSearchParameters
                        res("Encounter", ["_id", "patient", "date", "_lastUpdated"]),
                    ],
                }
            ],
        }

    # -- auth helpers ----------------------------------------------------------------------------------
    def _oauth_error(self, error: str, description: str, status: int = 400) -> Response:
        resp = jsonify({"error": error, "error_description": description})
        resp.status_code = status
        return resp

    def _verify_assertion(self, form: Any) -> str:
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            raise PermissionError("client_assertion_type must be jwt-bearer")
        assertion = form.get("client_assertion") or ""
        header = jwt.get_unverified_header(assertion)
        key = next((k for k in self.jwks["keys"] if not header.get("kid") or k.get("kid") == header.get("kid")), None)
        if key is None:
            raise PermissionError("no registered key matches the assertion's kid")
        # Signature (RS384 only) and audience; exp is checked below against the real clock (the emulator's
        # own clock offset only ages the tokens it issued).
        claims = jwt.decode(
            assertion,
            jwt.PyJWK(key).key,
            algorithms=["RS384"],
            audience=self.token_url,
            options={"require": ["iss", "sub", "aud", "exp", "jti"], "verify_exp": False},
        )
        if claims["iss"] != self.client_id or claims["sub"] != self.client_id:
            raise PermissionError("iss and sub must be the client_id")
        if claims["exp"] - claims.get("iat", time.time()) > 300:  # [AUTH]: exp at most 5 minutes after iat
            raise PermissionError("exp too far in the future")
        if claims["exp"] < time.time():
            raise PermissionError("assertion expired")
        if claims["jti"] in self.used_jti:
            raise PermissionError("jti already used")
        self.used_jti.add(claims["jti"])
        return self.client_id

    def _issue(self, scopes: str, kind: str, lifetime: int, offline: bool) -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        self.access[token] = {"scopes": set(scopes.split()), "expires": self.now() + lifetime, "kind": kind}
        body: dict[str, Any] = {"token_type": "Bearer", "expires_in": lifetime, "access_token": token, "scope": scopes}
        if offline:
            rt = secrets.token_urlsafe(32)
            self.refresh[rt] = {"scopes": scopes, "active": True}
            body["refresh_token"] = rt
        return body

    def _bearer(self) -> dict[str, Any] | None:
        value = request.headers.get("Authorization", "")
        token = value[7:] if value.startswith("Bearer ") else ""
        info = self.access.get(token)
        if info is None or info["expires"] < self.now():
            return None
        return info

    # -- app -------------------------------------------------------------------------------------------
    def _build_app(self) -> Flask:
        app = Flask("openemr-emulator")
        emu = self

        @app.before_request
        def faults() -> Response | None:
            emu.requests.append(f"{request.method} {request.path}")
            for fault in emu.faults:
                if fault["count"] > 0 and request.path.startswith(fault["prefix"]):
                    fault["count"] -= 1
                    resp = jsonify({"validationErrors": [], "internalErrors": ["injected fault"], "data": []})
                    resp.status_code = fault["status"]
                    if fault["status"] == 429:
                        resp.headers["Retry-After"] = "1"
                    return resp
            return None

        @app.get(f"/apis/{SITE}/fhir/.well-known/smart-configuration")
        def smart_config() -> Response:
            return jsonify(
                {
                    "token_endpoint": emu.token_url,
                    "authorization_endpoint": f"{emu.base_url}/oauth2/{SITE}/authorize",
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                }
            )

        @app.get(f"/oauth2/{SITE}/authorize")
        def authorize() -> Response:
            # Stands in for the login + consent screens: the test user logs in and approves everything.
            args = request.args
            if args.get("client_id") != emu.client_id or args.get("redirect_uri") != emu.redirect_uri:
                return emu._oauth_error("invalid_client", "unknown client or redirect_uri")
            if args.get("response_type") != "code" or args.get("code_challenge_method") != "S256":
                return emu._oauth_error("invalid_request", "response_type=code with S256 PKCE required")
            code = secrets.token_urlsafe(16)
            emu.codes[code] = {"challenge": args["code_challenge"], "scope": args.get("scope", ""), "used": False}
            return redirect(f"{emu.redirect_uri}?{urlencode({'code': code, 'state': args.get('state', '')})}")

        @app.post(f"/oauth2/{SITE}/token")
        def token() -> Response:
            form = request.form
            grant = form.get("grant_type")
            try:
                emu._verify_assertion(form)  # the client is confidential (private_key_jwt) for every grant
            except (PermissionError, jwt.PyJWTError) as exc:
                return emu._oauth_error("invalid_client", f"Client authentication failed: {exc}", 401)
            with emu.lock:
                if grant == "client_credentials":
                    # [AUTH]: system scopes are read-only; write scopes are simply not granted.
                    wanted = [s for s in form.get("scope", "").split() if s.startswith("system/")]
                    granted = [s for s in wanted if s.rsplit(".", 1)[-1] in {"rs", "read", "r", "s", "$export"}]
                    if not granted:
                        return emu._oauth_error("invalid_scope", "no grantable system scope requested")
                    return jsonify(emu._issue(" ".join(granted), "system", emu.system_token_seconds, False))
                if grant == "authorization_code":
                    code = emu.codes.get(form.get("code", ""))
                    if code is None or code["used"] or form.get("redirect_uri") != emu.redirect_uri:
                        return emu._oauth_error("invalid_grant", "authorization code invalid or used")
                    digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                    if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != code["challenge"]:
                        return emu._oauth_error("invalid_grant", "PKCE verification failed")
                    code["used"] = True
                    return jsonify(
                        emu._issue(
                            code["scope"], "user", emu.user_token_seconds, "offline_access" in code["scope"].split()
                        )
                    )
                if grant == "refresh_token":
                    rt = emu.refresh.get(form.get("refresh_token", ""))
                    if rt is None or not rt["active"]:
                        return emu._oauth_error("invalid_grant", "The refresh token is invalid.")
                    rt["active"] = False  # [AUTH]: a new refresh token is issued; the old one is discarded
                    return jsonify(emu._issue(rt["scopes"], "user", emu.user_token_seconds, True))
            return emu._oauth_error("unsupported_grant_type", str(grant))

        @app.get(f"/apis/{SITE}/fhir/metadata")
        def metadata() -> Response:
            return jsonify(emu.capability())

        def outcome(status: int, text: str) -> Response:
            resp = jsonify(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "security", "diagnostics": text}],
                }
            )
            resp.status_code = status
            return resp

        @app.get(f"/apis/{SITE}/fhir/<rtype>")
        def search(rtype: str) -> Response:
            info = emu._bearer()
            if info is None:
                return outcome(401, "token missing or expired")
            if not scope_allows(info["scopes"], info["kind"], rtype, "s"):
                return outcome(403, f"scope {info['kind']}/{rtype}.rs required")
            with emu.lock:
                if rtype == "Patient":
                    rows = [(p["updated"], emu._patient_fhir(p)) for p in emu.patients]
                elif rtype == "Appointment":
                    rows = [(a["pc_time"], emu._appointment_fhir(a)) for a in emu.appointments]
                    for value in request.args.getlist("date"):  # [APPT]: date searches pc_eventDate (a date)
                        prefix = value[:2] if value[:2].isalpha() else ""
                        day = value[len(prefix) :][:10]
                        rows = [r for r in rows if _compare(prefix + day, _parse(r[1]["start"][:10]))]
                else:
                    rows = []
            for value in request.args.getlist("_lastUpdated"):
                rows = [r for r in rows if _compare(value, r[0])]
            # _sort is not honoured: results come in database (pid / pc_eid) order, as the bridge must expect.
            count = int(request.args.get("_count", 20))
            offset = int(request.args.get("_offset", 0))
            page = rows[offset : offset + count]
            bundle: dict[str, Any] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(rows),
                "entry": [
                    {"fullUrl": f"{emu.fhir_base}/{rtype}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                    for _, r in page
                ],
                "link": [{"relation": "self", "url": request.url}],
            }
            if offset + count < len(rows):
                args = [(k, v) for k, vs in request.args.lists() if k != "_offset" for v in vs]
                bundle["link"].append(
                    {
                        "relation": "next",
                        "url": f"{emu.fhir_base}/{rtype}?{urlencode([*args, ('_offset', offset + count)])}",
                    }
                )
            return jsonify(bundle)

        @app.get(f"/apis/{SITE}/fhir/<rtype>/<rid>")
        def read(rtype: str, rid: str) -> Response:
            info = emu._bearer()
            if info is None:
                return outcome(401, "token missing or expired")
            if not scope_allows(info["scopes"], info["kind"], rtype, "r"):
                return outcome(403, f"scope {info['kind']}/{rtype}.rs required")
            with emu.lock:
                found = [emu._patient_fhir(p) for p in emu.patients if rtype == "Patient" and p["uuid"] == rid]
                found += [
                    emu._appointment_fhir(a) for a in emu.appointments if rtype == "Appointment" and a["uuid"] == rid
                ]
            if not found:
                return outcome(404, f"{rtype}/{rid} not found")
            return jsonify(found[0])

        def envelope(status: int, data: Any = None, validation: Any = None, internal: Any = None) -> Response:
            resp = jsonify(
                {
                    "validationErrors": validation or [],
                    "internalErrors": internal or [],
                    "data": [] if data is None else data,
                }
            )
            resp.status_code = status
            return resp

        def standard_auth(resource: str, perm: str) -> Response | None:
            info = emu._bearer()
            if info is None:  # [STD] "401 Unauthorized"
                resp = jsonify({"error": "invalid_token", "error_description": "The access token is missing"})
                resp.status_code = 401
                return resp
            if info["kind"] != "user" or not scope_allows(info["scopes"], "user", resource, perm):
                return envelope(403, internal=["Insufficient scope for requested resource"])  # [STD] 403
            return None

        @app.get(f"/apis/{SITE}/api/patient/<puuid>")
        def patient_get(puuid: str) -> Response:
            denied = standard_auth("patient", "r")
            if denied:
                return denied
            rec = next((p for p in emu.patients if p["uuid"] == puuid), None)
            if rec is None:
                return envelope(404, internal=["Resource not found"])
            return envelope(
                200,
                {
                    "id": str(rec["pid"]),
                    "pid": str(rec["pid"]),
                    "uuid": puuid,
                    "fname": rec["fname"],
                    "lname": rec["lname"],
                    "DOB": rec["DOB"],
                },
            )

        @app.post(f"/apis/{SITE}/api/patient/<pid>/message")
        def message_post(pid: str) -> Response:
            denied = standard_auth("message", "c")
            if denied:
                return denied
            if not pid.isdigit() or not any(p["pid"] == int(pid) for p in emu.patients):
                # [ROUTE] takes the numeric pid; real OpenEMR does not check it (the note would be orphaned):
                # the emulator refuses, so a uuid sent by mistake fails the tests.
                return envelope(400, validation={"pid": {"Numeric": "pid must be an existing numeric pid"}})
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
            if errors:  # [MSG] MessageRestController: validationHandler answers 400 with the messages
                resp = jsonify(errors)
                resp.status_code = 400
                return resp
            with emu.lock:
                mid = len(emu.messages) + 1
                emu.messages.append({"mid": mid, "pid": int(pid), **data})
            resp = jsonify({"mid": mid})  # [MSG] responseHandler($result, ["mid" => id], 201)
            resp.status_code = 201
            return resp

        @app.post(f"/apis/{SITE}/api/patient/<pid>/document")
        def document_post(pid: str) -> Response:
            denied = standard_auth("document", "c")
            if denied:
                return denied
            upload = request.files.get("document")  # [DOC] $_FILES['document'], category from ?path=
            path = request.args.get("path")
            if not pid.isdigit() or upload is None or not path:
                resp = jsonify(None)
                resp.status_code = 400
                return resp
            with emu.lock:
                emu.documents.append(
                    {
                        "id": len(emu.documents) + 1,
                        "pid": int(pid),
                        "path": path,
                        "filename": upload.filename,
                        "mimetype": upload.mimetype,
                        "content": upload.read(),
                    }
                )
            return jsonify(True)  # [DOC] responseHandler($result, null, 200): the bare result, true

        @app.get(f"/apis/{SITE}/api/patient/<pid>/document")
        def document_list(pid: str) -> Response:
            denied = standard_auth("document", "r")
            if denied:
                return denied
            path = request.args.get("path")
            return jsonify(
                [
                    {"id": str(d["id"]), "filename": d["filename"], "mimetype": d["mimetype"]}
                    for d in emu.documents
                    if str(d["pid"]) == pid and d["path"] == path
                ]
            )

        return app
