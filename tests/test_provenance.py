"""The Provenance next to every written resource: what we build validates with the R4B model (the
executor no longer validates it before writing), and the two references that come from outside, the
server's id and version and the notification's focus, are refused when malformed."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
import requests

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import Plan
from fhir_smartflow.engine.provenance import build_provenance
from fhir_smartflow.engine.references import reference_type_problems
from fhir_smartflow.engine.validation import ResourceInvalid, validate_resource
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.writeback import FhirWriteBack
from fhir_smartflow.worker.execute import PlanExecutor
from tests.support.fakes import FakeDeliverer, FakeScheduler, MemoryTarget
from tests.support.plans import NOW, SYSTEM, intake_plan

RECORDED = datetime(2026, 3, 2, 15, 0, 0, 123000, tzinfo=UTC)


def provenance(target: dict, source: str | None = "Patient/p1/_history/3", activity: str = "CREATE") -> dict:
    return build_provenance(
        target,
        identifier_system=SYSTEM,
        identifier_value="intake-forms/send-intake-packet/task/aaaa/provenance",
        flow_id="intake-forms",
        flow_version="1",
        trigger="patient.registered",
        source_reference=source,
        device_id="smartflow",
        recorded=RECORDED,
        activity=activity,
    )


@pytest.mark.parametrize(
    ("target", "source", "activity"),
    [
        ({"resourceType": "Task", "id": "t1", "meta": {"versionId": "2"}}, "Patient/p1/_history/3", "CREATE"),
        ({"resourceType": "Communication", "id": "c-1.x"}, "Appointment/a1", "CREATE"),
        ({"resourceType": "Task", "id": "t1", "meta": {"versionId": "7"}}, None, "UPDATE"),
    ],
)
def test_what_we_build_validates_with_r4b_and_allowed_reference_types(target, source, activity) -> None:
    built = provenance(target, source, activity)
    assert validate_resource(built) == "Provenance"
    assert reference_type_problems(built) == []
    assert built["target"] == [{"reference": f"{target['resourceType']}/{target['id']}" + (
        f"/_history/{target['meta']['versionId']}" if "meta" in target else "")}]  # fmt: skip
    assert ("entity" in built) is (source is not None)


@pytest.mark.parametrize(
    ("target", "source", "element"),
    [
        ({"resourceType": "Task", "id": "t1"}, "Patient/p1/_history/3 4", "entity.what"),  # a version with a space
        ({"resourceType": "Task", "id": "t1"}, "Patient/p 1", "entity.what"),
        ({"resourceType": "Task", "id": "t1"}, "http://other.example/fhir/Patient/p1", "entity.what"),
        ({"resourceType": "Task", "id": "t/1"}, "Patient/p1", "target"),  # what a broken server might assign
        ({"resourceType": "Task", "id": "t1", "meta": {"versionId": 'W/"2"'}}, "Patient/p1", "target"),
    ],
)
def test_a_malformed_outside_reference_is_refused_naming_the_element(target, source, element) -> None:
    with pytest.raises(ResourceInvalid) as caught:
        provenance(target, source)
    assert caught.value.location == f"Provenance.{element}"
    assert caught.value.resource_type == "Provenance"


def _with_focus_version(plan: Plan, version: str) -> Plan:
    event = dataclasses.replace(plan.trigger.event, version_id=version)
    return dataclasses.replace(plan, trigger=dataclasses.replace(plan.trigger, event=event))


@pytest.mark.integration
def test_one_by_one_a_bad_focus_version_costs_the_provenance_only(redis_conn) -> None:
    target = MemoryTarget()
    target.resources["Patient/p1"] = {"resourceType": "Patient", "id": "p1"}
    executor = PlanExecutor(
        target, redis_conn, Keys("p:"), Settings(), deliverer=FakeDeliverer(), scheduler=FakeScheduler(),
        clock=lambda: NOW,
    )  # fmt: skip
    result = executor.execute(_with_focus_version(intake_plan(), "3 4"))
    kinds = sorted(r["resourceType"] for r in target.resources.values())
    assert kinds == ["Communication", "Patient", "Task"]  # no Provenance: neither is valid
    assert {e.action.removesuffix("/provenance").rsplit("/", 2)[-2] for e in result.errors} == {"task", "communication"}
    assert all("Provenance.entity.what" in e.message for e in result.errors)
    assert result.deliveries and result.deliveries[0][1] == "completed"  # the message still went out


@pytest.mark.integration
def test_in_a_transaction_a_bad_focus_version_costs_the_provenances_only(sandbox_server: str, redis_conn) -> None:
    requests.put(f"{sandbox_server}/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, timeout=5)
    client = FhirClient(sandbox_server)
    keys = Keys("pt:")
    executor = PlanExecutor(
        FhirWriteBack(client, SYSTEM, redis_conn, keys), redis_conn, keys, Settings(), deliverer=FakeDeliverer(),
        scheduler=FakeScheduler(), clock=lambda: NOW,
    )  # fmt: skip
    bad = executor.execute(_with_focus_version(intake_plan(), "3 4"))
    assert [len(client.search(t, {})) for t in ("Task", "Communication", "Provenance")] == [1, 1, 0]
    assert len(bad.errors) == 2 and all("Provenance.entity.what" in e.message for e in bad.errors)

    good = executor.execute(intake_plan())  # the same run on a well-formed version: the Provenances now
    assert good.errors == []
    provenances = client.search("Provenance", {})
    assert len(provenances) == 2  # the sandbox validated each with R4B as it stored it
    for stored in provenances:
        validate_resource(stored)
        assert stored["entity"][0]["what"]["reference"] == "Patient/p1/_history/1"
