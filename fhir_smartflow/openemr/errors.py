"""Errors of the OpenEMR bridge.

They are ``FhirError``s so the plan executor treats them like the FHIR target's errors: ``transient`` ones
are re-raised and rq retries the job (writes stay queued); the others are recorded as the action's error.
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


class TokenError(OpenEmrError):
    """The token endpoint refused a grant (``error`` / ``error_description`` from its answer)."""

    def __init__(self, error: str, description: str = "", status: int | None = None) -> None:
        super().__init__(f"token endpoint refused the grant: {error}: {description}".rstrip(": "), status)
        self.error = error
        self.description = description


class OpenEmrAmbiguousWrite(OpenEmrTransientError):
    """A write was sent but no answer came back (read timeout): OpenEMR may or may not have stored it."""
