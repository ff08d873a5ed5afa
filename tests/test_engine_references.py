"""Reference target types come from the R4 specification (the R4B models' field metadata)."""

from __future__ import annotations

from fhir_smartflow.engine.references import allowed_reference_types, reference_type_problems


def task(owner: str) -> dict:
    return {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "for": {"reference": "Patient/1"},
        "owner": {"reference": owner},
    }


def test_task_owner_allows_practitioners_and_care_teams_but_not_groups() -> None:
    allowed = allowed_reference_types("Task", "owner")
    assert allowed is not None
    assert {"Practitioner", "PractitionerRole", "CareTeam", "Patient"} <= set(allowed)
    assert "Group" not in allowed
    assert reference_type_problems(task("PractitionerRole/9")) == []
    (problem,) = reference_type_problems(task("Group/front-desk"))
    assert problem.startswith("Task.owner: a reference to Group is not allowed here (allowed: Practitioner,")


def test_nested_elements_absolute_urls_and_the_type_element_are_checked() -> None:
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": "Task/1"}],
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "https://ehr.example.org/fhir/Group/1"}}],
    }
    assert reference_type_problems(provenance) == [
        "Provenance.agent.who: a reference to Group is not allowed here "
        "(allowed: Practitioner, PractitionerRole, RelatedPerson, Patient, Device, Organization)"
    ]
    typed = task("Practitioner/1") | {"requester": {"type": "Group", "identifier": {"value": "x"}}}
    assert [p.split(":")[0] for p in reference_type_problems(typed)] == ["Task.requester"]


def test_any_resource_targets_and_untyped_references_pass() -> None:
    focus = task("Practitioner/1") | {"focus": {"reference": "Appointment/a"}}  # focus: Reference(Any)
    assert reference_type_problems(focus) == []
    assert allowed_reference_types("Task", "focus") == ("Resource",)
    assert reference_type_problems(task("urn:uuid:0b1c")) == []
    assert allowed_reference_types("Task", "status") is None
    assert allowed_reference_types("NotAType", "owner") is None
