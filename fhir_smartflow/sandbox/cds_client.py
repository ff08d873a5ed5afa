"""The sandbox as a CDS Hooks client (the EHR side), so the CDS Hooks service is tested for real.

Routes (beside the FHIR store, like ``/$faults``):

- ``GET /$cds-client/jwks``: the public JWK Set of the key the sandbox signs its JWTs with (``[sandbox]
  cds_key_file``, a PEM EC or RSA private key; empty: a new P-384 key each start);
- ``POST /$cds-client/patient-view`` ``{"service_base", "service_id"?, "patientId", "userId", "prefetch"?}``:
  discovery at ``<service_base>/cds-services``, the service's prefetch templates filled from this store (a
  template the store cannot answer is left out, an empty read is ``null``), then the call, each with a
  fresh signed JWT (``iss`` = this store's base URL, ``aud`` = the endpoint, ``jku`` = the JWK Set above);
  answers ``{"status", "body"}`` with the service's answer;
- ``POST /$cds-client/feedback`` ``{"service_base", "service_id"?, "feedback": [...]}``: the same for feedback.

Only service bases listed in ``[sandbox] cds_services`` are called (anything else: 403).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from flask import Flask, Response, request

from fhir_smartflow.config import ConfigError, Settings
from fhir_smartflow.sandbox.errors import BadRequest, SandboxError
from fhir_smartflow.sandbox.operations import Interactions

PATH = "/$cds-client"
TOKEN_SECONDS = 60
TIMEOUT_SECONDS = 5.0
_TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class Forbidden(SandboxError):
    status = 403
    code = "forbidden"


def load_key(path: str) -> PrivateKey:
    if not path:
        return ec.generate_private_key(ec.SECP384R1())
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError("[sandbox] cds_key_file", f"cannot read a PEM private key from {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError("[sandbox] cds_key_file", "must be an EC or RSA private key")
    return key


def algorithm_for(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    return {256: "ES256", 384: "ES384", 521: "ES512"}[key.curve.key_size]


def public_jwk(key: PrivateKey) -> dict[str, Any]:
    """The public half as a JWK with ``kid`` (a digest of it), ``alg`` and ``use``."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    else:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    digest = hashlib.sha256(json.dumps(jwk, sort_keys=True).encode()).hexdigest()[:16]
    return {**jwk, "kid": digest, "alg": algorithm_for(key), "use": "sig"}


class CdsClient:
    def __init__(self, settings: Settings, ops: Interactions, session: requests.Session | None = None) -> None:
        self.allowed = {s.rstrip("/") for s in settings.sandbox.cds_services}
        self.key = load_key(settings.sandbox.cds_key_file)
        self.jwk = public_jwk(self.key)
        self.ops = ops
        self.session = session or requests.Session()

    def token(self, issuer: str, audience: str) -> str:
        now = int(time.time())
        claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + TOKEN_SECONDS, "jti": str(uuid.uuid4())}
        headers = {"kid": self.jwk["kid"], "typ": "JWT", "jku": f"{issuer}{PATH}/jwks"}
        return jwt.encode(claims, self.key, algorithm=self.jwk["alg"], headers=headers)

    def _service_base(self, value: Any) -> str:
        base = value.rstrip("/") if isinstance(value, str) else ""
        if base not in self.allowed:
            raise Forbidden("that CDS service is not in [sandbox] cds_services")
        return base

    def _send(self, method: str, url: str, issuer: str, body: dict[str, Any] | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token(issuer, url)}", "Accept": "application/json"}
        try:
            return self.session.request(
                method, url, json=body, headers=headers, timeout=TIMEOUT_SECONDS, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise BadRequest(f"the CDS service did not answer: {type(exc).__name__}") from None

    def _prefetch(self, templates: dict[str, str], context: dict[str, str], base: str) -> dict[str, Any]:
        values = dict({f"context.{k}": v for k, v in context.items()}, **self._user_tokens(context["userId"], base))
        filled: dict[str, Any] = {}
        for key, template in templates.items():
            names = _TOKEN.findall(template)
            if any(n not in values for n in names):
                continue  # a token this call cannot fill: the key is left out
            query = _TOKEN.sub(lambda m: values[m.group(1)], template)
            try:
                filled[key] = self._answer(query, base)
            except SandboxError:
                continue  # the store cannot answer it: left out, as the spec says
        return filled

    def _answer(self, query: str, base: str) -> dict[str, Any] | None:
        path, _, qs = query.partition("?")
        parts = path.strip("/").split("/")
        if qs or len(parts) == 1:
            return self.ops.search(parts[0], parse_qsl(qs), base, strict=True).body
        if len(parts) != 2:
            raise BadRequest("not a read or a search")
        try:
            return self.ops.read(parts[0], parts[1], base).body
        except SandboxError as exc:
            if exc.status in (404, 410):
                return None  # no data: null
            raise

    def _user_tokens(self, user: str, base: str) -> dict[str, str]:
        kind, _, ident = user.partition("/")
        tokens = (
            {f"user{kind}Id": ident} if kind in ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson") else {}
        )
        if kind == "PractitionerRole":
            try:
                role = self.ops.read(kind, ident, base).body or {}
            except SandboxError:
                role = {}
            ref = (role.get("practitioner") or {}).get("reference", "")
            if ref.startswith("Practitioner/"):
                tokens["userPractitionerId"] = ref.split("/", 1)[1]
        return tokens

    def patient_view(self, call: dict[str, Any], base: str) -> dict[str, Any]:
        service_base = self._service_base(call.get("service_base"))
        service_id = str(call.get("service_id") or "patient-view")
        patient, user = call.get("patientId"), call.get("userId")
        if not isinstance(patient, str) or not isinstance(user, str) or "/" not in user:
            raise BadRequest("patientId and userId (Practitioner/<id>, ...) are required")
        discovery = self._send("GET", f"{service_base}/cds-services", base)
        found = _answer(discovery)["body"] if discovery.status_code == 200 else {}
        services = found.get("services", []) if isinstance(found, dict) else []
        service = next((s for s in services if isinstance(s, dict) and s.get("id") == service_id), None)
        if service is None:
            raise BadRequest(f"the CDS service has no {service_id!r} in its discovery (HTTP {discovery.status_code})")
        context = {"userId": user, "patientId": patient}
        hook = {"hook": service.get("hook", "patient-view"), "hookInstance": str(uuid.uuid4()), "context": context}
        hook["fhirServer"] = base
        if call.get("prefetch", True):
            hook["prefetch"] = self._prefetch(dict(service.get("prefetch") or {}), context, base)
        return _answer(self._send("POST", f"{service_base}/cds-services/{service_id}", base, hook))

    def feedback(self, call: dict[str, Any], base: str) -> dict[str, Any]:
        service_base = self._service_base(call.get("service_base"))
        service_id = str(call.get("service_id") or "patient-view")
        if not isinstance(call.get("feedback"), list):
            raise BadRequest("feedback (a list of feedback entries) is required")
        body = {"feedback": call["feedback"]}
        return _answer(self._send("POST", f"{service_base}/cds-services/{service_id}/feedback", base, body))


def _answer(resp: requests.Response) -> dict[str, Any]:
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text[:2000]
    return {"status": resp.status_code, "body": body}


def install(app: Flask, client: CdsClient, base: Callable[[], str]) -> None:
    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data

    def reply(data: dict[str, Any]) -> Response:
        return Response(json.dumps(data), mimetype="application/json")

    @app.get(f"{PATH}/jwks")
    def cds_client_jwks() -> Response:
        return reply({"keys": [client.jwk]})

    @app.post(f"{PATH}/patient-view")
    def cds_client_patient_view() -> Response:
        return reply(client.patient_view(body(), base()))

    @app.post(f"{PATH}/feedback")
    def cds_client_feedback() -> Response:
        return reply(client.feedback(body(), base()))
