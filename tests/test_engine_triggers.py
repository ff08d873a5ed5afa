"""Mappings → triggers: transitions fire once, interaction inference, ids, once keys, deletes."""

from __future__ import annotations

import dataclasses

import pytest

from fhir_smartflow.engine.triggers import infer_interaction, match_triggers
from tests.support.engine import appointment, event_for, patient, shipped_engine


@pytest.fixture(scope="module")
def engine():
    return shipped_engine()


def names(triggers) -> set[str]:
    return {t.trigger for t in triggers}


def test_noshow_transition_fires_once(engine):
    booked = appointment("a1", "booked", "2026-03-13T14:00:00Z", "2026-03-01T10:00:00Z", version="1")
    noshow = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-13T16:00:00Z", version="2")
    later = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-14T09:00:00Z", version="3")
    assert names(match_triggers(engine, event_for(booked), None)) == {"appointment.booked"}
    fired = match_triggers(engine, event_for(noshow), booked)
    assert names(fired) == {"appointment.no_show"}
    assert fired[0].id == "appointment.no_show|Appointment/a1|v2"
    assert match_triggers(engine, event_for(later), noshow) == []


def test_previous_missing_counts_as_satisfied(engine):
    noshow = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-13T16:00:00Z", version="5")
    assert names(match_triggers(engine, event_for(noshow), None)) == {"appointment.no_show"}


def test_kept_and_first_kept_carry_once_key(engine):
    arrived = appointment("a2", "arrived", "2026-03-13T14:00:00Z", "2026-03-13T14:05:00Z")
    fired = {t.trigger: t for t in match_triggers(engine, event_for(arrived), {"status": "booked"})}
    assert set(fired) == {"appointment.first_kept"} | ({"appointment.kept"} & engine.wanted_triggers())
    assert fired["appointment.first_kept"].once_key == "appointment.first_kept|Patient/p1"
    assert fired["appointment.first_kept"].patient == "Patient/p1"


def test_registration_vs_update_inference_for_classic_notifications(engine):
    new = patient()
    classic = dataclasses.replace(event_for(new), interaction=None)
    assert infer_interaction(classic, None) == "create"
    assert names(match_triggers(engine, classic, None)) == {"patient.registered"}
    # Known before → an update, not a new registration.
    assert infer_interaction(classic, {"resourceType": "Patient"}) == "update"
    v2 = dataclasses.replace(classic, version_id="2")
    assert infer_interaction(v2, None) == "update"
    assert "patient.registered" not in names(match_triggers(engine, v2, None))


def test_patient_made_inactive_is_a_discharge(engine):
    inactive = patient(active=False, meta={"versionId": "4", "lastUpdated": "2026-05-01T10:00:00Z"})
    fired = match_triggers(engine, event_for(inactive, "update"), {"resourceType": "Patient", "active": True})
    assert "patient.discharged" in names(fired)
    assert match_triggers(engine, event_for(inactive, "update"), {"resourceType": "Patient", "active": False}) == [
        t for t in fired if t.trigger != "patient.discharged"
    ]


def test_deletes_and_bodiless_events_fire_nothing(engine):
    noshow = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-13T16:00:00Z")
    assert match_triggers(engine, event_for(noshow, "delete"), None) == []
    assert match_triggers(engine, dataclasses.replace(event_for(noshow), resource=None), None) == []


def test_form_submitted_parameter_and_foreign_tasks(engine):
    response = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr1",
        "status": "completed",
        "questionnaire": "http://example.org/fhir/Questionnaire/follow-up|2",
        "subject": {"reference": "Patient/p1"},
    }
    (fired,) = match_triggers(engine, event_for(response), None)
    assert fired.parameters == {"questionnaire": "http://example.org/fhir/Questionnaire/follow-up|2"}
    assert fired.id.startswith("form.submitted|QuestionnaireResponse/qr1|")  # no version: the dedupe marker
    foreign_task = {
        "resourceType": "Task",
        "id": "t9",
        "status": "completed",
        "intent": "order",
        "for": {"reference": "Patient/p1"},
    }
    assert match_triggers(engine, event_for(foreign_task, "update"), {"status": "requested"}) == []


def test_unwanted_triggers_are_not_matched(engine):
    # patient.updated has no enabled flow and no lifecycle role: not even evaluated.
    updated = patient(meta={"versionId": "3"})
    assert "patient.updated" not in names(match_triggers(engine, event_for(updated, "update"), {"active": True}))
