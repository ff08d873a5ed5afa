"""The CDS Hooks service as a Flask app, mounted by `serve` at ``/cds-services`` (``[cds] enabled``).

- ``GET /cds-services``: discovery (the ``patient-view`` service and its prefetch templates);
- ``POST /cds-services/patient-view``: the record-prompt cards for the patient, for the user in context;
- ``POST /cds-services/patient-view/feedback``: what the user did with a card (cds/feedback.py).

Service and feedback calls need the CDS client's signed JWT (cds/tokens.py; 401 otherwise). The answer
comes within ``[cds] budget_ms``: prefetch and Redis first; a FHIR request through ``fhirAuthorization``
that is not back in time is left out (cds/data.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from fhir_smartflow.cds import cards as c
from fhir_smartflow.cds.data import PREFETCH, FhirAccess, gather
from fhir_smartflow.cds.feedback import BadFeedback, FeedbackLog, parse_feedback
from fhir_smartflow.cds.tokens import ClientVerifier, KeySource, TokenRefused
from fhir_smartflow.config import Settings
from fhir_smartflow.fhir.client import sandbox_base_url
from fhir_smartflow.refs import RESOURCE_ID_RE
from fhir_smartflow.worker.history import RunHistory

log = logging.getLogger(__name__)

CDS_PATH = "/cds-services"
SERVICE_ID = "patient-view"
USER_TYPES = ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")
# Of the budget, what the FHIR fetches may use: the rest is for building and sending the answer.
_FETCH_SHARE = 0.6


def discovery() -> dict[str, Any]:
    return {
        "services": [
            {
                "hook": "patient-view",
                "id": SERVICE_ID,
                "title": "Record prompts",
                "description": "Shows the record prompts the clinic's workflows left on the patient's record to "
                "the staff each prompt is meant for.",
                "prefetch": dict(PREFETCH),
            }
        ]
    }


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def _error(status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else None
    return _json({"error": message}, status, headers)


def _user_ref(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    kind, _, ident = value.partition("/")
    return value if kind in USER_TYPES and RESOURCE_ID_RE.match(ident) else None


def create_cds_app(
    settings: Settings,
    conn: redis.Redis,
    *,
    keys: KeySource | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Flask:
    cfg = settings.cds
    prefix = settings.redis.key_prefix
    service_url = f"{cfg.public_url.rstrip('/')}{CDS_PATH}/{SERVICE_ID}"
    keys = keys or KeySource(cfg)
    verifier = ClientVerifier(cfg, conn, prefix, keys)
    threading.Thread(target=keys.warm, name="cds-jwks", daemon=True).start()
    feedback = FeedbackLog(
        conn, prefix, RunHistory.from_settings(settings, conn), cfg.feedback_max, cfg.card_ttl_seconds
    )
    fhir_base = settings.fhir.base_url or sandbox_base_url(settings)
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="cds-fhir")
    system = settings.fhir.identifier_system

    app = Flask("fhir_smartflow.cds")
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_body_bytes
    app.extensions["cds"] = feedback

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(TokenRefused)
    def refused(exc: TokenRefused) -> Response:
        log.warning("cds: %s %s refused: %s", request.method, request.path, exc)
        return _error(401, str(exc))

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError) -> Response:
        log.error("cds: Redis unavailable: %s", type(exc).__name__)
        return _error(503, "temporarily unavailable")

    def body() -> dict[str, Any] | None:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else None

    @app.get("/", strict_slashes=False)  # mounted at /cds-services: that URL itself, without a slash
    def discover() -> Response:
        return _json(discovery())

    @app.post(f"/{SERVICE_ID}")
    def patient_view() -> Response:
        started = time.monotonic()
        claims = verifier.verify(request.headers.get("Authorization"), [service_url])
        call = body()
        if call is None:
            return _error(400, "the body must be a JSON object")
        context = call.get("context") if isinstance(call.get("context"), dict) else {}
        patient_id, user_ref = context.get("patientId"), _user_ref(context.get("userId"))
        if (
            call.get("hook") != "patient-view"
            or not isinstance(patient_id, str)
            or not RESOURCE_ID_RE.match(patient_id)
        ):
            return _error(400, "a patient-view call needs hook 'patient-view' and context.patientId")
        if user_ref is None:
            return _error(
                400, "context.userId must be Practitioner/, PractitionerRole/, Patient/ or RelatedPerson/<id>"
            )
        prefetch = call.get("prefetch") if isinstance(call.get("prefetch"), dict) else {}
        access = FhirAccess.from_request(call, fhir_base, cfg.fhir_timeout_seconds)
        deadline = started + cfg.budget_ms / 1000 * _FETCH_SHARE
        known = gather(prefetch, patient_id, user_ref, access, pool, deadline)
        if known.flags is None and access is None:
            return _error(412, "the patient's Flags were not prefetched and no fhirAuthorization was given")
        user = c.user_from(user_ref, known.user, known.roles_known)
        found = c.prompts(known.flags or [], patient_id, system, now(), cfg.indicator)
        shown = [p for p in found if c.shown_to(p, user)]
        out, about = [], {}
        for prompt in shown:
            card_id = str(uuid.uuid4())
            out.append(c.card(prompt, card_id, cfg.source_label, cfg.worklist_url))
            about[card_id] = {
                "flag": prompt.flag,
                "patient": f"Patient/{patient_id}",
                "flow": prompt.flow_id,
                "user": user_ref,
                "hookInstance": str(call.get("hookInstance", ""))[:100],
            }
        feedback.remember_cards(about)
        elapsed = (time.monotonic() - started) * 1000
        hidden = (
            " (roles not known: role-limited prompts hidden)"
            if c.needs_roles(found, user) and not user.roles_known
            else ""
        )
        missing = f"; not in time or not available: {', '.join(known.missing)}" if known.missing else ""
        log.info(
            "cds: patient-view for a %s user from %s: %d of %d prompt(s) shown in %.0f ms%s%s",
            user_ref.split("/", 1)[0],  # the type only: a Patient user's id is the patient's
            claims.get("iss"),
            len(out),
            len(found),
            elapsed,
            missing,
            hidden,
        )
        return _json({"cards": out})

    @app.post(f"/{SERVICE_ID}/feedback")
    def card_feedback() -> Response:
        claims = verifier.verify(request.headers.get("Authorization"), [f"{service_url}/feedback", service_url])
        try:
            entries = parse_feedback(body())
        except BadFeedback as exc:
            return _error(400, str(exc))
        ids = feedback.record(entries, str(claims.get("iss")))
        log.info(
            "cds: %d feedback entr%s recorded (%d in the run history)",
            len(entries),
            "y" if len(entries) == 1 else "ies",
            len(ids),
        )
        return _json({})

    return app
