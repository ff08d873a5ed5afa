"""The README quick start, as a newcomer runs it: `serve --embedded`, create a Patient in the sandbox, see the Task."""

from __future__ import annotations

import time

import requests
from conftest import free_port, smartflow_cmd
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task

FHIR = {"Content-Type": "application/fhir+json"}
PATIENT = {
    "resourceType": "Patient",
    "name": [{"given": ["Ada"], "family": "Lovelace"}],
    "birthDate": "1980-01-02",
    "telecom": [{"system": "phone", "value": "555-0101", "use": "mobile"}],
}
MODELS = {"Task": Task, "Communication": Communication, "Provenance": Provenance}


def _search(base: str, rtype: str, **params: str) -> list[dict]:
    bundle = requests.get(f"{base}/{rtype}", params={"_count": "200", **params}, timeout=10).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def test_embedded_quick_start_creates_the_intake_task_once(processes) -> None:
    port = free_port()
    proc = processes(smartflow_cmd("serve", "--embedded", "--port", str(port)), {}, "quickstart")
    base = f"http://127.0.0.1:{port}/sandbox/fhir"
    proc.wait_http(f"http://127.0.0.1:{port}/healthz")
    created = requests.post(f"{base}/Patient", json=PATIENT, headers=FHIR, timeout=10)
    assert created.status_code == 201, created.text
    patient = f"Patient/{created.json()['id']}"

    deadline = time.monotonic() + 20
    while len(_search(base, "Task", patient=patient)) < 2:
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.1)
    time.sleep(1.0)  # let anything that would be written twice arrive

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
