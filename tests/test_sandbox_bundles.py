"""Transaction and batch Bundles against the sandbox over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from fhir.resources.R4B.bundle import Bundle

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}


def entry(full_url: str, resource: dict[str, Any], method: str = "POST", url: str | None = None, **req: Any) -> dict:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": method, "url": url or resource["resourceType"], **req},
    }


def intake_bundle(kind: str = "transaction", mrn: str = "T1") -> dict[str, Any]:
    patient_urn, task_urn = (
        "urn:uuid:8f7e3c1a-0000-4000-8000-000000000001",
        "urn:uuid:8f7e3c1a-0000-4000-8000-000000000002",
    )
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            entry(
                task_urn,
                {
                    "resourceType": "Task",
                    "status": "requested",
                    "intent": "order",
                    "identifier": [{"system": "urn:t", "value": f"task-{mrn}"}],
                    "for": {"reference": patient_urn},
                },
                ifNoneExist=f"identifier=urn:t|task-{mrn}",
            ),
            entry(
                patient_urn,
                {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]},
                ifNoneExist=f"identifier=urn:mrn|{mrn}",
            ),
            entry(
                "urn:uuid:8f7e3c1a-0000-4000-8000-000000000003",
                {
                    "resourceType": "Provenance",
                    "target": [{"reference": task_urn}],
                    "recorded": "2026-01-01T00:00:00Z",
                    "agent": [{"who": {"reference": "Device/fhir-smartflow"}}],
                },
            ),
        ],
    }


def test_transaction_rewrites_urn_references_and_is_idempotent(sandbox_server: str) -> None:
    response = requests.post(sandbox_server, json=intake_bundle(), headers=FHIR, timeout=5)
    assert response.status_code == 200, response.text
    result = response.json()
    Bundle.model_validate(result)
    assert result["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created"] * 3
    task, patient, provenance = (e["resource"] for e in result["entry"])
    assert task["for"]["reference"] == f"Patient/{patient['id']}"
    assert provenance["target"][0]["reference"] == f"Task/{task['id']}"
    stored = requests.get(f"{sandbox_server}/Task/{task['id']}", timeout=5).json()
    assert stored["for"]["reference"] == f"Patient/{patient['id']}"
    assert result["entry"][0]["response"]["location"].endswith(f"/Task/{task['id']}/_history/1")

    # the same transaction again: conditional creates find what exists, references point at it
    again = requests.post(sandbox_server, json=intake_bundle(), headers=FHIR, timeout=5).json()
    assert [e["response"]["status"] for e in again["entry"]][:2] == ["200 OK", "200 OK"]
    assert again["entry"][0]["resource"]["id"] == task["id"]
    assert again["entry"][1]["resource"]["id"] == patient["id"]
    assert requests.get(f"{sandbox_server}/Task?identifier=urn:t|task-T1", timeout=5).json()["total"] == 1


def test_transaction_rolls_back_everything_on_one_failure(sandbox_server: str) -> None:
    bundle = intake_bundle(mrn="RB")
    bundle["entry"].append(entry("urn:uuid:bad", {"resourceType": "Patient", "birthDate": "yesterday"}))
    response = requests.post(sandbox_server, json=bundle, headers=FHIR, timeout=5)
    assert response.status_code == 422
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert "Bundle.entry[3]" in diagnostics and "birthDate" in diagnostics and "rolled back" in diagnostics
    for query in ("Patient?identifier=RB", "Task?identifier=task-RB", "Provenance"):
        assert requests.get(f"{sandbox_server}/{query}", timeout=5).json()["total"] == 0, query


def test_transaction_put_delete_and_get(sandbox_server: str) -> None:
    requests.put(f"{sandbox_server}/Patient/gone", json={"resourceType": "Patient"}, headers=FHIR, timeout=5)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry("urn:uuid:p", {"resourceType": "Patient", "id": "fixed"}, "PUT", "Patient/fixed"),
            {"request": {"method": "DELETE", "url": "Patient/gone"}},
            {"request": {"method": "GET", "url": "Patient?_id=fixed"}},
        ],
    }
    result = requests.post(sandbox_server, json=bundle, headers=FHIR, timeout=5).json()
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created", "200 OK", "200 OK"]
    assert result["entry"][2]["resource"]["total"] == 1  # the GET ran after the PUT
    assert requests.get(f"{sandbox_server}/Patient/gone", timeout=5).status_code == 410


def test_batch_entries_fail_independently(sandbox_server: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            entry("urn:uuid:a", {"resourceType": "Patient"}),
            entry("urn:uuid:b", {"resourceType": "Patient", "birthDate": "soon"}),
            {"request": {"method": "GET", "url": "Patient/missing"}},
        ],
    }
    response = requests.post(sandbox_server, json=bundle, headers=FHIR, timeout=5)
    assert response.status_code == 200
    result = response.json()
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert [s.split(" ", 1)[0] for s in statuses] == ["201", "422", "404"]
    assert statuses[2] == "404 Not Found"  # with its reason, as HAPI and Medplum write it
    assert "birthDate" in result["entry"][1]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert requests.get(f"{sandbox_server}/Patient", timeout=5).json()["total"] == 1


def test_batch_reads_answer_each_entry_as_its_own_get_would(sandbox_server: str) -> None:
    for body in ({"resourceType": "Patient", "id": "r1"}, {"resourceType": "Patient", "id": "r1", "active": True}):
        requests.put(f"{sandbox_server}/Patient/r1", json=body, headers=FHIR, timeout=5)
    requests.put(f"{sandbox_server}/Patient/gone", json={"resourceType": "Patient"}, headers=FHIR, timeout=5)
    requests.delete(f"{sandbox_server}/Patient/gone", timeout=5)
    urls = ["Patient/r1/_history/1", "Patient/r1", "Patient/gone", "Patient/gone/_history/2", "Patient/missing"]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": u}} for u in urls],
    }
    result = requests.post(sandbox_server, json=bundle, headers=FHIR, timeout=5).json()
    Bundle.model_validate(result)
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["200 OK", "200 OK", "410 Gone", "410 Gone", "404 Not Found"]
    first, current = (e["resource"] for e in result["entry"][:2])
    assert first == requests.get(f"{sandbox_server}/Patient/r1/_history/1", timeout=5).json()
    assert current == requests.get(f"{sandbox_server}/Patient/r1", timeout=5).json()
    assert (first["meta"]["versionId"], current["meta"]["versionId"]) == ("1", "2")
    for answer in result["entry"][2:]:  # the OperationOutcome goes in response.outcome, as HAPI puts it
        assert "resource" not in answer
        assert answer["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_bad_bundles(sandbox_server: str) -> None:
    not_tx = requests.post(
        sandbox_server, json={"resourceType": "Bundle", "type": "collection"}, headers=FHIR, timeout=5
    )
    assert not_tx.status_code == 400 and "transaction or batch" in not_tx.json()["issue"][0]["diagnostics"]
    no_request = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient"}}]}
    response = requests.post(sandbox_server, json=no_request, headers=FHIR, timeout=5)
    assert response.status_code == 400 and "entry[0].request" in response.json()["issue"][0]["diagnostics"]
