"""Resource builders: every output validates with fhir.resources R4B and carries the right codes."""

from __future__ import annotations

import base64

import pytest

from fhir_smartflow.channels import channel_spec
from fhir_smartflow.engine import resources as fr
from fhir_smartflow.engine.validation import ResourceInvalid, validate_resource

SYSTEM = "urn:fhir-smartflow:id"


def test_sdc_task_validates():
    task = fr.build_task(
        identifier_system=SYSTEM,
        identifier_value="f/a/Task/1",
        group="f/1",
        instantiates_uri="urn:fhir-smartflow:flow:f:1#a",
        description="Complete intake",
        authored_on="2026-03-05T15:00:00Z",
        requester="Device/fhir-smartflow",
        for_ref="Patient/p1",
        focus="Patient/p1",
        owner="Patient/p1",
        due="2026-03-09T14:00:00Z",
        questionnaire="http://example.org/fhir/Questionnaire/intake",
        code_text="Intake",
    )
    validate_resource(task)
    assert task["code"]["coding"] == [
        {"system": fr.SDC_TEMP, "code": "complete-questionnaire", "display": "Complete Questionnaire"}
    ]
    assert task["input"][0]["type"]["coding"][0]["code"] == "questionnaire"
    assert (task["status"], task["intent"]) == ("requested", "order")
    assert task["restriction"] == {"period": {"end": "2026-03-09T14:00:00Z"}}


def test_staff_task_with_performer_type_validates():
    task = fr.build_task(
        identifier_system=SYSTEM,
        identifier_value="f/b/Task/2",
        group="f/1",
        instantiates_uri="urn:x",
        description="d",
        authored_on="2026-03-05T15:00:00Z",
        requester="Device/x",
        for_ref="Patient/p1",
        performer_types=[fr.concept("http://snomed.info/sct|768832004", "case-manager")],
    )
    validate_resource(task)
    assert "input" not in task and task["performerType"][0]["coding"][0]["code"] == "768832004"


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("sms", "SMSWRIT"),
        ("email", "EMAILWRIT"),
        ("voice", "PHONE"),
        ("portal", "ONLINEWRIT"),
        ("staff-message", "ONLINEWRIT"),
        ("webhook", "ELECTRONIC"),
    ],
)
def test_communication_medium_per_method(method, code):
    medium = channel_spec(method).medium  # the built-in channel's declared medium
    comm = fr.build_communication(
        identifier_system=SYSTEM,
        identifier_value=f"c/{method}",
        method=method,
        medium=medium,
        text="Hello",
        sender="Device/x",
        status="in-progress",
        recipients=["Patient/p1"],
        subject="Patient/p1",
        based_on_task="f/a/Task/1",
        about="Appointment/a1",
    )
    validate_resource(comm)
    assert comm["medium"][0]["coding"][0] == {
        "system": fr.PARTICIPATION_MODE,
        "code": code,
        "display": medium.display,
    }
    assert comm["basedOn"][0] == {"type": "Task", "identifier": {"system": SYSTEM, "value": "f/a/Task/1"}}
    assert comm["payload"] == [{"contentString": "Hello"}]
    assert comm["category"] == [
        {"coding": [{"system": fr.COMMUNICATION_CATEGORY, "code": "notification", "display": "Notification"}]}
    ]


@pytest.mark.parametrize(
    ("note_type", "loinc"),
    [
        ("progress-note", "11506-3"),
        ("consult-note", "11488-4"),
        ("history-and-physical", "34117-2"),
        ("discharge-summary", "18842-5"),
        ("procedure-note", "28570-0"),
    ],
)
def test_document_reference_note_types(note_type, loinc):
    doc = fr.build_document_reference(
        identifier_system=SYSTEM,
        identifier_value="d/1",
        note_type=note_type,
        text="Note ✓",
        title="Missed visit",
        subject="Patient/p1",
        author="Device/fhir-smartflow",
        created="2026-03-13T16:00:00Z",
        encounter="Encounter/e1",
    )
    validate_resource(doc)
    assert doc["type"]["coding"][0]["code"] == loinc
    assert doc["category"] == [
        {"coding": [{"system": fr.DOCUMENT_CATEGORY, "code": "clinical-note", "display": "Clinical Note"}]}
    ]
    attachment = doc["content"][0]["attachment"]
    assert base64.b64decode(attachment["data"]).decode() == "Note ✓"
    assert attachment["contentType"].startswith("text/plain")
    assert doc["context"]["encounter"] == [{"reference": "Encounter/e1"}]


def test_flag_with_audience_extension():
    flag = fr.build_flag(
        identifier_system=SYSTEM,
        identifier_value="fl/1",
        text="Review answers",
        subject="Patient/p1",
        author="Device/x",
        start="2026-03-10T18:30:00Z",
        end="2026-03-17T18:30:00Z",
        roles=[fr.concept("http://terminology.hl7.org/CodeSystem/practitioner-role|doctor", "clinician")],
        practitioners=["Practitioner/dr-lee"],
    )
    validate_resource(flag)
    assert [e["url"] for e in flag["extension"]] == [fr.ALLOWED_AUDIENCE_URL] * 2
    assert fr.ALLOWED_AUDIENCE_URL == "http://fhir-smartflow.example/StructureDefinition/allowed-audience"
    assert flag["status"] == "active" and flag["code"] == {"text": "Review answers"}
    # label-based access control can restrict it: v3-Confidentiality R
    assert flag["meta"]["security"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R", "display": "restricted"}
    ]
    assert flag["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "clinical", "display": "Clinical"
    }  # fmt: skip


def test_flag_without_audience_has_no_security_label():
    flag = fr.build_flag(
        identifier_system=SYSTEM, identifier_value="fl/2", text="t", subject="Patient/p1", author="Device/x", start="x"
    )
    assert "meta" not in flag and "extension" not in flag


def test_validate_resource_names_the_problem():
    with pytest.raises(ResourceInvalid, match=r"invalid Task: Task\.intent: .*required") as err:
        validate_resource({"resourceType": "Task", "status": "requested"})
    assert err.value.location == "Task.intent"
    with pytest.raises(ResourceInvalid, match="unknown resourceType 'Spaceship'"):
        validate_resource({"resourceType": "Spaceship"})
    with pytest.raises(ResourceInvalid, match="resourceType missing"):
        validate_resource({})
