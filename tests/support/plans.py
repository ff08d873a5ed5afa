"""Hand-built plans and the FHIR resources in them, for the executor and scheduling tests (which test
the executor, not the planner)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_smartflow.engine.plan import Deliver, FlowRun, Plan, Schedule, TriggerEvent, WriteResource
from fhir_smartflow.events import ResourceEvent

SYSTEM = "urn:fhir-smartflow:id"
NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
GROUP = "intake-forms/0123456789abcdef0123"
TASK_ID = "intake-forms/send-intake-packet/task/aaaaaaaaaaaaaaaaaaaa"
COMM_ID = "intake-forms/send-intake-packet/communication/bbbbbbbbbbbbbbbbbbbb"
DELIVERY_ID = "intake-forms/send-intake-packet/delivery/cccccccccccccccccccc"


def trigger(patient_id: str = "p1", version: str = "1") -> TriggerEvent:
    event = ResourceEvent(
        subscription="smartflow-patient",
        resource_type="Patient",
        resource_id=patient_id,
        received_at=NOW.isoformat(),
        version_id=version,
        interaction="create",
        resource={"resourceType": "Patient", "id": patient_id},
    )
    return TriggerEvent(
        trigger="patient.registered",
        event=event,
        id=f"patient.registered|Patient/{patient_id}|v{version}",
        patient=f"Patient/{patient_id}",
    )


def sdc_task(identifier: str = TASK_ID, patient: str = "Patient/p1", group: str = GROUP, status: str = "requested"):
    return {
        "resourceType": "Task",
        "identifier": [{"system": SYSTEM, "value": identifier}],
        "instantiatesUri": "urn:fhir-smartflow:flow:intake-forms:1#send-intake-packet",
        "groupIdentifier": {"system": SYSTEM, "value": group},
        "status": status,
        "intent": "order",
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/uv/sdc/CodeSystem/temp", "code": "complete-questionnaire"}]
        },
        "for": {"reference": patient},
        "owner": {"reference": patient},
        "focus": {"reference": patient},
        "authoredOn": "2026-03-02T15:00:00Z",
        "restriction": {"period": {"end": "2026-03-05T15:00:00Z"}},
        "input": [
            {
                "type": {"coding": [{"system": "http://hl7.org/fhir/uv/sdc/CodeSystem/temp", "code": "questionnaire"}]},
                "valueCanonical": "http://example.org/Questionnaire/intake",
            }
        ],
    }


def sms_communication(identifier: str = COMM_ID, patient: str = "Patient/p1") -> dict[str, Any]:
    return {
        "resourceType": "Communication",
        "identifier": [{"system": SYSTEM, "value": identifier}],
        "status": "in-progress",
        "medium": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode",
                        "code": "SMSWRIT",
                        "display": "SMS message",
                    }
                ]
            }
        ],
        "subject": {"reference": patient},
        "recipient": [{"reference": patient}],
        "payload": [{"contentString": "Please complete your intake forms."}],
    }


def intake_plan(patient_id: str = "p1", extra: tuple = ()) -> Plan:
    actions = (
        WriteResource("Task", TASK_ID, sdc_task(patient=f"Patient/{patient_id}"), action="send-intake-packet"),
        WriteResource("Communication", COMM_ID, sms_communication(patient=f"Patient/{patient_id}")),
        Deliver(
            channel="sms",
            recipient=f"Patient/{patient_id}",
            body="Please complete your intake forms.",
            identifier=DELIVERY_ID,
            communication=COMM_ID,
        ),
        Schedule(at=NOW + timedelta(days=2), kind="reminder", identifier=TASK_ID + "/reminder"),
        *extra,
    )
    run = FlowRun("intake-forms", "1", GROUP, ran=True, reason="matched", actions=actions)
    return Plan(trigger=trigger(patient_id), runs=(run,))


def task(identifier: str, status: str = "requested", group: str = "g1", patient: str = "Patient/1") -> dict[str, Any]:
    """A Task of the weekly check-in flow, as the EHR holds it (has an id)."""
    return {
        "resourceType": "Task",
        "id": identifier.replace("/", "-"),
        "status": status,
        "intent": "order",
        "identifier": [{"system": SYSTEM, "value": identifier}],
        "groupIdentifier": {"system": SYSTEM, "value": group},
        "for": {"reference": patient},
        "instantiatesUri": "urn:fhir-smartflow:flow:checkin:1#weekly-check-in",
    }
