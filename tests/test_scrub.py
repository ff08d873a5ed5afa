"""fhir/scrub.py: what is kept of a server's or provider's error text (codes, paths, ids) and what not."""

from __future__ import annotations

import json

from fhir_smartflow.engine.validation import ResourceInvalid
from fhir_smartflow.fhir.errors import error_for_status
from fhir_smartflow.fhir.scrub import scrub_error, scrub_in_place, scrub_text

QUOTING = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "error",
            "code": "processing",
            "details": {"coding": [{"code": "MSG_PARAM_INVALID"}]},
            "expression": ["Patient.name[0].family"],
            "diagnostics": 'HAPI-0450: Patient.name[0].family "Rivera" of Alex Rivera MRN-0001 +1 555 555 0100 '
            "in Patient/p1 is invalid",
        }
    ],
}


def test_a_server_error_keeps_codes_paths_and_ids_only() -> None:
    exc = error_for_status(422, json.dumps(QUOTING), url="https://ehr/fhir/Patient?name=Rivera", method="POST")
    text = scrub_error(exc)
    for kept in ("POST", "/fhir/Patient?name=…", "422", "processing", "MSG_PARAM_INVALID", "HAPI-0450"):
        assert kept in text
    assert "Patient.name[0].family" in text and "Patient/p1" in text
    for value in ("Rivera", "Alex", "MRN-0001", "0100"):
        assert value not in text
    assert scrub_in_place(exc) is exc and str(exc) == text and exc.outcome is None


def test_free_text_hides_quotes_addresses_numbers_and_known_values() -> None:
    text = scrub_text(
        "21610: 'Hi Alex' to +1 (555) 555-0100 / alex@example.org failed: Hi Alex, see you", known=["Hi Alex, see you"]
    )
    assert text == "21610: […] to […] / […] failed: […]"


def test_own_validation_errors_keep_paths_not_values() -> None:
    exc = ResourceInvalid("Patient", ["Patient.birthDate: invalid date 'Alex Rivera'"])
    assert scrub_error(exc) == "invalid Patient: Patient.birthDate: invalid date […]"
