"""A transaction entry the server refused: the error says what the server said (its OperationOutcome),
typed by the entry's status. HTTP edge unit test (``responses`` stands in for the server)."""

from __future__ import annotations

import fakeredis
import pytest
import responses

from fhir_smartflow.connections import Keys
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirForbidden
from fhir_smartflow.fhir.writeback import FhirWriteBack
from fhir_smartflow.retry import RetryPolicy
from tests.support.plans import SYSTEM, sdc_task

BASE = "https://fhir.example/R4"
DENIED = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "forbidden", "details": {"text": "Forbidden: system/Task.c"}}],
}


@responses.activate
def test_a_refused_transaction_entry_carries_the_servers_outcome_text() -> None:
    answer = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": "403 Forbidden", "outcome": DENIED}}],
    }
    responses.post(BASE, json=answer)
    target = FhirWriteBack(
        FhirClient(BASE, retry=RetryPolicy(max_retries=0)), SYSTEM, fakeredis.FakeRedis(), Keys("t:")
    )
    with pytest.raises(FhirForbidden) as caught:
        target.create_all([(sdc_task(), "id-1", "urn:uuid:7b7c1f4e-2d5b-4a55-8a55-0c1c2b3d4e5f")])
    assert "Forbidden: system/Task.c" in str(caught.value)
    assert "without a resource" not in str(caught.value)
    assert caught.value.outcome == DENIED
