"""HTTP status → typed error, with the OperationOutcome's text in the message."""

from __future__ import annotations

import json

import pytest

from fhir_smartflow.fhir.errors import (
    FhirBadRequest,
    FhirConflict,
    FhirError,
    FhirForbidden,
    FhirNotFound,
    FhirServerError,
    FhirUnauthorized,
    error_for_status,
    outcome_text,
)


def oo(*issues: dict) -> bytes:
    return json.dumps({"resourceType": "OperationOutcome", "issue": list(issues)}).encode()


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, FhirBadRequest),
        (422, FhirBadRequest),
        (401, FhirUnauthorized),
        (403, FhirForbidden),
        (404, FhirNotFound),
        (410, FhirNotFound),
        (409, FhirConflict),
        (412, FhirConflict),
        (500, FhirServerError),
        (503, FhirServerError),
        (418, FhirError),
    ],
)
def test_status_maps_to_class(status: int, cls: type) -> None:
    err = error_for_status(status, oo({"severity": "error", "code": "x", "diagnostics": "why"}), url="u", method="PUT")
    assert type(err) is cls
    assert err.status == status and err.message == f"PUT u answered {status}: why"
    assert err.transient == (status >= 500)


def test_outcome_text_prefers_diagnostics_then_details_text_then_coding_then_code() -> None:
    body = json.loads(
        oo(
            {"diagnostics": "d1", "details": {"text": "ignored"}},
            {"details": {"text": "t2"}},
            {"details": {"coding": [{"code": "MSG_X", "display": "Display 3"}]}},
            {"code": "not-found"},
        )
    )
    assert outcome_text(body) == "d1; t2; Display 3; not-found"
    assert outcome_text({"resourceType": "Patient"}) == ""


def test_non_fhir_bodies_still_say_something() -> None:
    assert "upstream timed out" in str(error_for_status(502, b"<html>upstream timed out</html>"))
    oauth = error_for_status(401, b'{"error": "invalid_token", "error_description": "expired"}')
    assert "expired" in str(oauth) and oauth.outcome is None
    assert str(error_for_status(404, b"")) == "GET answered 404"


def test_forbidden_names_scopes_from_www_authenticate() -> None:
    err = error_for_status(
        403, b"", headers={"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="system/Task.cu"'}
    )
    assert "system/Task.cu" in str(err)
