"""A small client of OpenEMR's Standard API (``/apis/<site>/api``) for the calls the mirror needs.

What it relies on (docs/openemr.md lists the sources with versions):
* Responses of the newer controllers come in the ``{validationErrors, internalErrors, data}`` envelope
  (Documentation/api/STANDARD_API.md, "Request/Response Format"); the older message and document
  controllers answer bare JSON (src/RestControllers/MessageRestController.php: 201 ``{"mid": id}``,
  400 with the validator messages; DocumentRestController.php: 200 ``true``). Both shapes are read.
* ``POST /api/patient/:pid/message`` and ``POST /api/patient/:pid/document`` take OpenEMR's numeric
  ``pid`` (apis/routes/_rest_routes_standard.inc.php), not the patient uuid, so the pid is looked up
  once with ``GET /api/patient/:puuid`` (scope ``user/patient.rs``) and cached.
* 401: token missing / expired → refresh once and retry. A 401 on a fresh token is how OpenEMR 7.0.0 answers a
  missing scope (RestConfig::scope_check: ``http_response_code(401); exit``, an empty body), so it is a
  permanent ``OpenEmrScopeError`` naming the scope the call needs — never another refresh. 403 (current
  releases): the same error. 400 / 422: validation (permanent); 429 / 5xx: transient.
* Documents are filed by category *path*: ``?path=/Categories/<Name_with_underscores>``
  (src/Services/DocumentService.php isValidPath / getLastIdOfPath: a path without "/" passes the check and
  is then filed in no category). An upload into a category that does not exist answers 404 ``null``
  (insertAtPath false → RestControllerHelper::responseHandler), as does listing an empty category.

Requests go through the FHIR stack's ``Transport`` (fhir/transport.py): the URL guard (every path under
``/apis/<site>/api``), the user-context ``TokenProvider`` with its refresh-once-on-401, guarded redirects and
the ``openemr_requests`` metric. It retries nothing inline (``NO_INLINE_RETRY``): a mirror write holds a claim
while it is in flight, and rq's job retry is where a failed OpenEMR call is tried again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import redis
import requests

from fhir_smartflow.fhir.errors import FhirTimeout, FhirUnavailable
from fhir_smartflow.fhir.tokens import TokenProvider
from fhir_smartflow.fhir.transport import Transport
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.openemr.errors import (
    OpenEmrAmbiguousWrite,
    OpenEmrCategoryMissing,
    OpenEmrError,
    OpenEmrScopeError,
    OpenEmrTransientError,
    OpenEmrValidationError,
)
from fhir_smartflow.openemr.scopes import describe_missing
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


def category_path(category: str) -> str:
    """The ``?path=`` of a document category: ``/Categories/<name>``, spaces written as underscores
    (OpenEMR compares names without spaces and the path without underscores)."""
    if category.startswith("/"):
        return category
    return "/Categories/" + category.replace(" ", "_")


def require_pid(pid: str) -> str:
    """OpenEMR stores a message or document sent to a non-numeric pid under pid 0: never send one."""
    if not pid.isdigit() or int(pid) == 0:
        raise OpenEmrValidationError(f"not an OpenEMR pid: {pid!r} (a patient uuid must be looked up first)")
    return pid


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
        granted: Callable[[], str] = lambda: "",
    ) -> None:
        self.granted = granted  # the scopes the write token was granted (to name the one a refusal lacks)
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
        self.tokens = tokens
        self.conn = conn
        self.prefix = prefix
        self.metrics = metrics

    def _scope_error(self, method: str, path: str, scope: str, status: int, said: str) -> OpenEmrScopeError:
        missing = describe_missing(scope, self.granted())
        if self.metrics:
            self.metrics.inc("openemr_auth_failures", reason="missing_scope")
        how = (
            "a freshly issued token was refused (401): OpenEMR 7.0.0 answers a missing scope this way"
            if status == 401
            else "OpenEMR answered 403"
        )
        message = (
            f"{method} {path}: {how} — the write token most likely lacks the scope {missing!r} (or api:oemr; or "
            f"the client or the OpenEMR user is disabled or lacks the permission). Add it to the client "
            f"registration and [openemr] user_scopes, then re-run `fhir-smartflow openemr authorize`."
            + (f" OpenEMR said: {said}" if said else "")
        )
        log.error("OpenEMR write refused: %s", message)
        return OpenEmrScopeError(message, status, [said] if said else [])

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
            raise self._scope_error(method, path, scope, 401, "")
        try:
            body: Any = resp.json() if resp.content else None
        except ValueError:
            body = resp.text
        data, validation, internal = unwrap(body)
        status = resp.status_code
        if status == 403:
            raise self._scope_error(method, path, scope, 403, "; ".join(internal + validation) or repr(body))
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
        record = record if isinstance(record, dict) else {}
        pid = str(record.get("pid") or record.get("id") or "")
        if not pid.isdigit() or int(pid) == 0 or record.get("uuid", puuid) != puuid:
            raise OpenEmrValidationError(f"OpenEMR has no patient {puuid} (no matching pid in its answer)", status)
        if self.conn is not None:
            self.conn.set(cache_key, pid, ex=PID_CACHE_SECONDS)
        return pid

    def post_message(self, pid: str, message: dict[str, str]) -> str:
        """Create a patient message (pnote); returns its id. Scope user/message.c."""
        _, data = self.request("POST", f"/patient/{require_pid(pid)}/message", scope="user/message.c", json=message)
        mid = data.get("mid") if isinstance(data, dict) else data
        return str(mid)

    def upload_document(self, pid: str, category: str, filename: str, content: bytes, mimetype: str) -> None:
        """Upload a file into a document category (multipart field ``document``, ``?path=/Categories/...``)."""
        path = category_path(category)
        try:
            self.request(
                "POST",
                f"/patient/{require_pid(pid)}/document",
                scope="user/document.c",
                params={"path": path},
                files={"document": (filename, content, mimetype)},
            )
        except OpenEmrError as exc:
            if exc.status != 404:
                raise
            raise OpenEmrCategoryMissing(
                f"OpenEMR did not store the document (404): there is no document category at {path!r}. Create "
                f"the category {category!r} under Administration → Lists → Document categories (a child of "
                f"'Categories'), or set [openemr] document_category to an existing one; `fhir-smartflow doctor` "
                f"checks it.",
                404,
            ) from None

    def list_documents(self, pid: str, category: str) -> list[dict[str, Any]]:
        """The documents of a patient in a category; OpenEMR answers 404 ``null`` when there are none."""
        try:
            _, data = self.request(
                "GET",
                f"/patient/{require_pid(pid)}/document",
                scope="user/document.rs",
                params={"path": category_path(category)},
            )
        except OpenEmrError as exc:
            if exc.status == 404:
                return []
            raise
        return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []

    def download_document(self, pid: str, document_id: str) -> bytes:
        """The stored file (``GET /api/patient/:pid/document/:did``)."""
        url = self.http.base.join(f"/patient/{require_pid(pid)}/document/{document_id}")
        try:
            resp = self.http.send("GET", url)
        except (FhirTimeout, FhirUnavailable) as exc:
            raise OpenEmrTransientError("OpenEMR did not answer a document download") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise OpenEmrTransientError(f"document download answered {resp.status_code}", resp.status_code)
        if resp.status_code != 200:
            raise OpenEmrError(f"document download answered {resp.status_code}", resp.status_code)
        return resp.content

    def appointments(self) -> list[dict[str, Any]]:
        """Every appointment (``GET /api/appointment``, AppointmentService columns: pc_eid, pc_uuid, puuid,
        pc_apptstatus, pc_eventDate, pc_startTime, pc_duration, ...); 404 ``null`` when there are none."""
        try:
            _, data = self.request("GET", "/appointment", scope="user/appointment.rs")
        except OpenEmrError as exc:
            if exc.status == 404:
                return []
            raise
        return [a for a in data if isinstance(a, dict)] if isinstance(data, list) else []
