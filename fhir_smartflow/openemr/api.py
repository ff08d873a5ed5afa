"""A small client of OpenEMR's Standard API (``/apis/<site>/api``) for the calls the mirror needs.

What it relies on (docs/openemr.md lists the sources with versions):
* Responses of the newer controllers come in the ``{validationErrors, internalErrors, data}`` envelope
  (Documentation/api/STANDARD_API.md, "Request/Response Format"); the older message and document
  controllers answer bare JSON (src/RestControllers/MessageRestController.php: 201 ``{"mid": id}``,
  400 with the validator messages; DocumentRestController.php: 200 ``true``). Both shapes are read.
* ``POST /api/patient/:pid/message`` and ``POST /api/patient/:pid/document`` take OpenEMR's numeric
  ``pid`` (apis/routes/_rest_routes_standard.inc.php), not the patient uuid, so the pid is looked up
  once with ``GET /api/patient/:puuid`` (scope ``user/patient.rs``) and cached.
* 401: token missing / expired → refresh once and retry; 403: scope missing (the error names it);
  400 / 422: validation (permanent); 429 / 5xx: transient.

Requests go through the FHIR stack's ``Transport`` (fhir/transport.py): the URL guard (every path under
``/apis/<site>/api``), the user-context ``TokenProvider`` with its refresh-once-on-401, guarded redirects and
the ``openemr_requests`` metric. It retries nothing inline (``NO_INLINE_RETRY``): a mirror write holds a claim
while it is in flight, and rq's job retry is where a failed OpenEMR call is tried again.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis
import requests

from fhir_smartflow.fhir.errors import FhirTimeout, FhirUnavailable
from fhir_smartflow.fhir.tokens import TokenProvider
from fhir_smartflow.fhir.transport import Transport
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.openemr.errors import (
    OpenEmrAmbiguousWrite,
    OpenEmrError,
    OpenEmrScopeError,
    OpenEmrTransientError,
    OpenEmrValidationError,
)
from fhir_smartflow.retry import RetryPolicy

log = logging.getLogger(__name__)

_UUID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
PID_CACHE_SECONDS = 24 * 3600
NO_INLINE_RETRY = RetryPolicy(max_retries=0)


def _strings(value: Any) -> list[str]:
    """Flatten OpenEMR error payloads (lists, or the validator's nested {field: {rule: message}})."""
    if value is None or value == []:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [f"{k}: {s}" for k, v in value.items() for s in _strings(v)]
    return [str(value)]


def unwrap(body: Any) -> tuple[Any, list[str], list[str]]:
    """(data, validationErrors, internalErrors) of an enveloped answer; a bare answer is all data."""
    if isinstance(body, dict) and "data" in body and ({"validationErrors", "internalErrors"} & set(body)):
        return body.get("data"), _strings(body.get("validationErrors")), _strings(body.get("internalErrors"))
    return body, [], []


class StandardApi:
    def __init__(
        self,
        api_base: str,
        tokens: TokenProvider,
        session: requests.Session | None = None,
        timeout: float = 10.0,
        conn: redis.Redis | None = None,
        prefix: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self.http = Transport(
            api_base,
            auth=tokens,
            timeout=timeout,
            retry=NO_INLINE_RETRY,
            session=session,
            metrics=metrics,
            media_type="application/json",
            metric="openemr_requests",
        )
        self.conn = conn
        self.prefix = prefix

    def request(
        self,
        method: str,
        path: str,
        scope: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        files: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        """One call, with the 401 → refresh → retry-once rule and status → error mapping."""
        try:
            resp = self.http.send(method, self.http.base.join(path), params=params, json=json, files=files)
        except FhirTimeout as exc:
            if method == "GET":
                raise OpenEmrTransientError("OpenEMR did not answer in time") from exc
            raise OpenEmrAmbiguousWrite(f"{method} {path}: no answer within {self.http.timeout}s") from exc
        except FhirUnavailable as exc:  # nothing reached OpenEMR
            raise OpenEmrTransientError(f"OpenEMR unreachable: {type(exc.__cause__).__name__}") from exc
        if resp.status_code == 401:
            raise OpenEmrTransientError(f"{method} {path}: OpenEMR refused a freshly refreshed token (401)", 401)
        try:
            body: Any = resp.json() if resp.content else None
        except ValueError:
            body = resp.text
        data, validation, internal = unwrap(body)
        status = resp.status_code
        if status == 403:
            raise OpenEmrScopeError(
                f"{method} {path}: OpenEMR answered 403 — the write token lacks the scope {scope!r} (or the "
                f"OpenEMR user lacks the permission). Add it to the client registration and to [openemr] "
                f"user_scopes, then re-run `fhir-smartflow openemr authorize`. OpenEMR said: "
                f"{'; '.join(internal + validation) or body!r}",
                status,
                internal + validation,
            )
        if status in (400, 422):
            details = validation or internal or _strings(data)
            raise OpenEmrValidationError(
                f"{method} {path}: OpenEMR refused the content ({status}): {'; '.join(details)}", status, details
            )
        if status == 429 or status >= 500:
            raise OpenEmrTransientError(f"{method} {path}: OpenEMR answered {status}", status, internal)
        if status >= 300:
            raise OpenEmrError(
                f"{method} {path}: OpenEMR answered {status}: {'; '.join(internal) or body!r}", status, internal
            )
        return status, data

    # -- calls -------------------------------------------------------------------------------------
    def patient_pid(self, puuid: str) -> str:
        """OpenEMR's numeric pid for a patient uuid (the FHIR Patient id)."""
        if not _UUID_RE.match(puuid):
            raise OpenEmrValidationError(f"not an OpenEMR patient uuid: {puuid!r}")
        cache_key = f"{self.prefix}openemr:pid:{puuid}"
        if self.conn is not None:
            cached = self.conn.get(cache_key)
            if cached:
                return cached.decode()
        status, data = self.request("GET", f"/patient/{puuid}", scope="user/patient.rs")
        record = data[0] if isinstance(data, list) and data else data
        pid = str((record or {}).get("pid") or (record or {}).get("id") or "") if isinstance(record, dict) else ""
        if not pid.isdigit():
            raise OpenEmrValidationError(f"OpenEMR has no patient {puuid} (no pid in its answer)", status)
        if self.conn is not None:
            self.conn.set(cache_key, pid, ex=PID_CACHE_SECONDS)
        return pid

    def post_message(self, pid: str, message: dict[str, str]) -> str:
        """Create a patient message (pnote); returns its id. Scope user/message.c."""
        _, data = self.request("POST", f"/patient/{pid}/message", scope="user/message.c", json=message)
        mid = data.get("mid") if isinstance(data, dict) else data
        return str(mid)

    def upload_document(self, pid: str, category: str, filename: str, content: bytes, mimetype: str) -> None:
        """Upload a file into a document category (multipart field ``document``, ``?path=``)."""
        self.request(
            "POST",
            f"/patient/{pid}/document",
            scope="user/document.c",
            params={"path": category},
            files={"document": (filename, content, mimetype)},
        )

    def list_documents(self, pid: str, category: str) -> list[dict[str, Any]]:
        _, data = self.request("GET", f"/patient/{pid}/document", scope="user/document.rs", params={"path": category})
        return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
