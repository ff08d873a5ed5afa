"""The engine's real pipeline and planner (shipped example flows) + PlanExecutor + FhirWriteBack against the
real sandbox FHIR store over HTTP: a registered adult patient gets the intake Task, Communications and the
staff review Task, valid, exactly once — also when the event is dispatched again."""

from __future__ import annotations

import pytest
import requests

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.validation import validate_resource
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.writeback import FhirWriteBack
from fhir_smartflow.flowfiles import load_engine
from fhir_smartflow.retry import RetryPolicy
from fhir_smartflow.worker.context import CachingContextSource
from fhir_smartflow.worker.execute import PlanExecutor
from fhir_smartflow.worker.pipeline import EnginePipeline
from fhir_smartflow.worker.prior import RedisPriorState
from tests.support.fakes import FakeDeliverer, FakeScheduler
from tests.support.plans import NOW

pytestmark = pytest.mark.integration
FHIR = {"Content-Type": "application/fhir+json"}


def test_patient_registration_writes_the_intake_resources_once(sandbox_server: str, redis_conn) -> None:
    settings = Settings()
    patient = {
        "resourceType": "Patient",
        "id": "adult1",
        "birthDate": "1980-05-01",
        "name": [{"given": ["Ada"], "family": "Example"}],
        "telecom": [{"system": "phone", "value": "+15555550100"}, {"system": "email", "value": "ada@example.org"}],
    }
    stored = requests.put(f"{sandbox_server}/Patient/adult1", json=patient, headers=FHIR, timeout=5).json()
    client = FhirClient(sandbox_server, retry=RetryPolicy(max_retries=3), sleep=lambda s: None)
    keys = Keys("e2e:")
    deliverer, scheduler = FakeDeliverer(), FakeScheduler()
    executor = PlanExecutor(
        FhirWriteBack(client, settings.fhir.identifier_system, redis_conn, keys),
        redis_conn,
        keys,
        settings,
        deliverer=deliverer,
        scheduler=scheduler,
        clock=lambda: NOW,
    )
    pipeline = EnginePipeline(
        load_engine(settings),
        settings,
        RedisPriorState(redis_conn, keys),
        lambda event: CachingContextSource(client),
        executor,
        redis_conn,
        keys,
        clock=lambda: NOW,
    )
    event = ResourceEvent(
        subscription="smartflow-patient",
        resource_type="Patient",
        resource_id="adult1",
        received_at=NOW.isoformat(),
        version_id=stored["meta"]["versionId"],
        interaction="create",
        resource=stored,
    )
    plans = pipeline.dispatch(event)
    assert plans and any(run.ran for p in plans for run in p.runs)
    pipeline.dispatch(event)  # redelivered

    tasks = client.search("Task", {"patient": "Patient/adult1"})
    comms = client.search("Communication", {"subject": "Patient/adult1"})
    assert len(tasks) == 2  # the SDC intake task + the case manager's review task
    codes = sorted((t.get("code") or {}).get("coding", [{}])[0].get("code", "") for t in tasks)
    assert "complete-questionnaire" in codes
    assert len({t["groupIdentifier"]["value"] for t in tasks}) == 1  # one workflow instance
    assert len(comms) == 3  # sms, email, portal
    assert len(deliverer.calls) == 2  # sms and email go through the channel once each; portal is FHIR only
    for resource in tasks + comms:
        validate_resource(resource)
    assert sorted(c["status"] for c in comms) == ["completed", "completed", "completed"]
