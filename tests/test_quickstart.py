"""The README quick start, as a newcomer runs it: `serve --embedded`, create a Patient in the sandbox, see the Task."""

from __future__ import annotations

import pytest
import requests
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task

from tests.support.fhir import search_all, subscription_events
from tests.support.net import free_port, wait_for
from tests.support.procs import smartflow_cmd
from tests.support.settle import event_state_from_metrics, wait_settled

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}
PATIENT = {
    "resourceType": "Patient",
    "name": [{"given": ["Ada"], "family": "Lovelace"}],
    "birthDate": "1980-01-02",
    "telecom": [{"system": "phone", "value": "555-0101", "use": "mobile"}],
}
MODELS = {"Task": Task, "Communication": Communication, "Provenance": Provenance}


def _search(base: str, rtype: str, **params: str) -> list[dict]:
    return search_all(base, rtype, params)


def test_embedded_quick_start_creates_the_intake_task_once(processes) -> None:
    port = free_port()
    proc = processes(smartflow_cmd("serve", "--embedded", "--port", str(port)), {}, "quickstart")
    base = f"http://127.0.0.1:{port}/sandbox/fhir"
    proc.wait_http(f"http://127.0.0.1:{port}/healthz")
    created = requests.post(f"{base}/Patient", json=PATIENT, headers=FHIR, timeout=10)
    assert created.status_code == 201, created.text
    patient = f"Patient/{created.json()['id']}"

    wait_for(lambda: len(_search(base, "Task", patient=patient)) >= 2, "the intake Tasks", log=proc.output)
    # Settled: every notification the store sent (one per event of its subscriptions) was received and
    # has finished; anything written twice would be there now.
    metrics = f"http://127.0.0.1:{port}/metrics"
    wait_settled(lambda: event_state_from_metrics(requests.get(metrics, timeout=10).text),
                 webhook_deliveries=lambda: subscription_events(base), log=proc.output)  # fmt: skip

    tasks = _search(base, "Task", patient=patient)
    codes = sorted(t.get("code", {}).get("coding", [{}])[0].get("code", "") for t in tasks)
    assert len(tasks) == 2 and "complete-questionnaire" in codes
    comms = _search(base, "Communication", subject=patient)
    assert comms, "the intake flow sends the forms"
    written = tasks + comms
    assert len({r["identifier"][0]["value"] for r in written}) == len(written)  # no duplicates
    provenance = _search(base, "Provenance")
    targets = {p["target"][0]["reference"].split("/_history")[0] for p in provenance}
    for resource in written:
        MODELS[resource["resourceType"]].model_validate(resource)
        assert f"{resource['resourceType']}/{resource['id']}" in targets  # every write has its Provenance
    for p in provenance:
        Provenance.model_validate(p)
    assert "Ada" not in proc.output() and "555-0101" not in proc.output()  # no PHI in INFO logs
