"""The service's own Device: created once by conditional create at start, and the id the server assigned
is the one every written reference names (servers that check references refuse a missing Device)."""

from __future__ import annotations

import dataclasses

import pytest
import requests

from fhir_smartflow.config import FhirConfig, RedisConfig, Settings
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.device import ensure_service_device, find_service_device
from fhir_smartflow.worker.runtime import ServiceRuntime, build_service_runtime
from tests.support.plans import NOW

pytestmark = pytest.mark.integration
FHIR = {"Content-Type": "application/fhir+json"}


def _devices(base: str) -> list[dict]:
    return [e["resource"] for e in requests.get(f"{base}/Device", timeout=5).json().get("entry") or []]


def test_the_device_is_created_once_and_its_server_id_is_in_every_reference(sandbox_server: str, redis_conn) -> None:
    settings = Settings(fhir=FhirConfig(base_url=sandbox_server, max_retries=0), redis=RedisConfig(key_prefix="dev:"))
    rt = build_service_runtime(settings, redis_conn)
    assert isinstance(rt, ServiceRuntime)
    (device,) = _devices(sandbox_server)
    assert rt.settings.fhir.device_id == device["id"] != settings.fhir.device_id  # the server chose the id
    assert device["identifier"] == [{"system": settings.fhir.identifier_system, "value": "fhir-smartflow"}]
    again = build_service_runtime(settings, redis_conn)  # a second start finds it
    assert again.settings.fhir.device_id == device["id"] and len(_devices(sandbox_server)) == 1
    client = FhirClient(sandbox_server)
    assert ensure_service_device(client, settings) == (device["id"], False)
    no_conditional = dataclasses.replace(settings, fhir=dataclasses.replace(settings.fhir, conditional_create=False))
    assert ensure_service_device(client, no_conditional) == (device["id"], False)
    assert find_service_device(client, settings) is not None

    patient = {"resourceType": "Patient", "id": "adult1", "birthDate": "1980-05-01",
               "telecom": [{"system": "phone", "value": "+15555550100"}]}  # fmt: skip
    stored = requests.put(f"{sandbox_server}/Patient/adult1", json=patient, headers=FHIR, timeout=5).json()
    event = ResourceEvent(
        subscription="smartflow-patient",
        resource_type="Patient",
        resource_id="adult1",
        received_at=NOW.isoformat(),
        version_id=stored["meta"]["versionId"],
        interaction="create",
        resource=stored,
    )
    rt.dispatcher.dispatch(event)
    ours = f"Device/{device['id']}"
    tasks = client.search("Task", {"patient": "Patient/adult1"})
    comms = client.search("Communication", {"subject": "Patient/adult1"})
    provenances = client.search("Provenance", {})
    assert tasks and comms and provenances
    assert {t["requester"]["reference"] for t in tasks} == {ours}
    assert {c["sender"]["reference"] for c in comms} == {ours}
    assert {a["who"]["reference"] for p in provenances for a in p["agent"]} == {ours}
