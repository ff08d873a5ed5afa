"""HTTP status → typed exceptions that keep the server's OperationOutcome (the shape of fhirpy's errors).

Callers catch by meaning: ``FhirNotFound`` for a gone resource, ``FhirServerError`` / ``FhirUnavailable``
for "try again later" (transient), any other ``FhirError`` for "this request is wrong" (permanent).
"""

from __future__ import annotations

import json
import re
from typing import Any


class FhirError(Exception):
    """A FHIR request failed. ``outcome`` is the OperationOutcome the server sent (or None)."""

    transient = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: dict[str, Any] | None = None,
        url: str | None = None,
        method: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.outcome = outcome
        self.url = url
        self.method = method


class FhirBadRequest(FhirError):
    """400 / 422: the resource or the request is invalid."""


class FhirUnauthorized(FhirError):
    """401: no token, or the token is no longer accepted."""


class FhirForbidden(FhirError):
    """403: authenticated, but the token lacks a scope or the user lacks access."""


class FhirNotFound(FhirError):
    """404 / 410: no such resource (or it was deleted)."""


class FhirConflict(FhirError):
    """409 / 412: version conflict, or a conditional request matched more than one resource."""


class FhirServerError(FhirError):
    """5xx that was not retried away (or not retryable)."""

    transient = True


class FhirUnavailable(FhirError):
    """Connection errors, timeouts, 429 or 5xx persisted through every retry."""

    transient = True


class FhirTimeout(FhirUnavailable):
    """The server took the request but sent no answer in time: a write may or may not have been carried out."""


class TokenRefused(FhirUnauthorized):
    """A token endpoint (or the authorization redirect) refused the grant. ``error`` and ``description`` are
    its OAuth2 error (RFC 6749 section 5.2), e.g. ``invalid_client``, ``invalid_grant``, ``invalid_scope``."""

    def __init__(self, error: str, description: str = "", *, status: int | None = None, url: str | None = None) -> None:
        where = f" at {url}" if url else ""
        super().__init__(
            f"token endpoint{where} refused the grant: {error}: {description}".rstrip(": "),
            status=status,
            url=url,
            method="POST",
        )
        self.error = error
        self.description = description


class FhirUrlRejected(FhirError):
    """The SSRF guard refused a URL outside the configured FHIR base; no request was made."""


def outcome_text(outcome: dict[str, Any] | None) -> str:
    """The human text of an OperationOutcome: each issue's diagnostics or details.text, joined."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    parts: list[str] = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
        if not text:
            codings = (issue.get("details") or {}).get("coding") or []
            text = next((c.get("display") or c.get("code") for c in codings if isinstance(c, dict)), None)
        text = text or issue.get("code")
        if text:
            parts.append(str(text))
    return "; ".join(parts)


_SCOPE_RE = re.compile(r"\b(?:system|user|patient)/[A-Za-z*]+\.[a-z*]+\b")


def missing_scopes(text: str, www_authenticate: str | None = None) -> list[str]:
    """Scope names a 403 body or WWW-Authenticate header mentions (``system/Task.c``, ...)."""
    found = _SCOPE_RE.findall(text or "")
    if www_authenticate:
        match = re.search(r'scope="([^"]*)"', www_authenticate)
        if match:
            found.extend(match.group(1).split())
    return sorted(set(found))


def _parse_body(body: bytes | str | None) -> tuple[dict[str, Any] | None, str]:
    if not body:
        return None, ""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return None, text.strip()[:300]
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        return data, outcome_text(data)
    if isinstance(data, dict):  # OAuth-style {"error": ..., "error_description": ...}
        described = data.get("error_description") or data.get("error") or ""
        return None, str(described)
    return None, ""


def error_for_status(
    status: int,
    body: bytes | str | None,
    *,
    url: str | None = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> FhirError:
    """The typed exception for an HTTP error response; the message says what the server said."""
    outcome, said = _parse_body(body)
    where = f"{method or 'GET'} {url or ''}".strip()
    detail = f": {said}" if said else ""
    cls: type[FhirError]
    if status in (400, 422):
        cls = FhirBadRequest
    elif status == 401:
        cls = FhirUnauthorized
    elif status == 403:
        cls = FhirForbidden
        scopes = missing_scopes(said, (headers or {}).get("WWW-Authenticate"))
        if scopes:
            detail += f" (missing or insufficient scopes: {', '.join(scopes)})"
    elif status in (404, 410):
        cls = FhirNotFound
    elif status in (409, 412):
        cls = FhirConflict
    elif status >= 500:
        cls = FhirServerError
    else:
        cls = FhirError
    return cls(f"{where} answered {status}{detail}", status=status, outcome=outcome, url=url, method=method)
