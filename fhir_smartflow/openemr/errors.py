"""Errors of the OpenEMR bridge.

They are ``FhirError``s so the plan executor treats them like the FHIR target's errors: ``transient`` ones
are re-raised and rq retries the job (writes stay queued); the others are recorded as the action's error.
A token endpoint's refusal is the FHIR stack's ``TokenRefused`` (fhir/errors.py), which the user token
store turns into ``OpenEmrAuthUnavailable``.
"""

from __future__ import annotations

from fhir_smartflow.fhir.errors import FhirError


class OpenEmrError(FhirError):
    """Something went wrong talking to OpenEMR."""

    transient = False

    def __init__(self, message: str, status: int | None = None, details: list[str] | None = None) -> None:
        super().__init__(message, status=status)
        self.details = details or []

    @property
    def retryable(self) -> bool:
        return self.transient


class OpenEmrTransientError(OpenEmrError):
    """5xx, 429, a connection problem, a write already in progress: raise so the job is retried."""

    transient = True


class OpenEmrAuthUnavailable(OpenEmrTransientError):
    """No usable user token (refresh failed / never authorized). Writes stay queued until it is fixed."""


class OpenEmrScopeError(OpenEmrError):
    """403: the token lacks a scope. Fix the client registration / re-run `openemr authorize`."""


class OpenEmrValidationError(OpenEmrError):
    """400 / 422: OpenEMR refused the content. Retrying the same request cannot help."""


class OpenEmrAmbiguousWrite(OpenEmrTransientError):
    """A write was sent but no answer came back (read timeout): OpenEMR may or may not have stored it."""


class OpenEmrCategoryMissing(OpenEmrValidationError):
    """The document category path does not exist in OpenEMR (an upload answered 404)."""
