"""Errors of the sandbox store, each mapped to an HTTP status and rendered as an OperationOutcome."""

from __future__ import annotations

from typing import Any


class SandboxError(Exception):
    """A FHIR interaction failed; ``status`` is the HTTP status, ``code`` the OperationOutcome issue code."""

    status = 500
    code = "exception"

    def __init__(self, message: str, *, expression: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression


class NotFound(SandboxError):
    status = 404
    code = "not-found"


class Gone(SandboxError):
    status = 410
    code = "deleted"


class BadRequest(SandboxError):
    status = 400
    code = "invalid"


class Unprocessable(SandboxError):
    """A resource that does not validate against its R4B model."""

    status = 422
    code = "structure"


class UnsupportedMediaType(SandboxError):
    status = 415
    code = "not-supported"


class PreconditionFailed(SandboxError):
    status = 412
    code = "conflict"


class Conflict(SandboxError):
    status = 409
    code = "conflict"


def outcome(severity: str, code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    """An OperationOutcome with one issue."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def error_outcome(exc: SandboxError) -> dict[str, Any]:
    return outcome("error", exc.code, exc.message, exc.expression)
