"""Every shipped example flow, planned for realistic FHIR inputs: exact due instants, owners, messages, ids."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from fhir_smartflow.engine.followups import plan_followup
from fhir_smartflow.engine.plan import CancelGroup, Deliver, PatchTask, Plan, Schedule, WriteResource
from fhir_smartflow.engine.planner import plan
from fhir_smartflow.engine.triggers import match_triggers
from fhir_smartflow.engine.validation import validate_resource
from tests.support.engine import (
    PRACTITIONER,
    PRACTITIONER_ROLE,
    SETTINGS,
    appointment,
    event_for,
    patient,
    sha20,
    shipped_engine,
)
from tests.support.fakes import FakeContext

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SYSTEM = SETTINGS.fhir.identifier_system


@pytest.fixture(scope="module")
def engine():
    return shipped_engine()


def only_trigger(engine, resource, previous=None, interaction=None):
    triggers = match_triggers(engine, event_for(resource, interaction), previous)
    assert len(triggers) == 1, triggers
    return triggers[0]


def writes(p: Plan, rtype: str) -> list[dict]:
    return [a.resource for a in p.actions if isinstance(a, WriteResource) and a.resource_type == rtype]


def assert_all_valid(p: Plan) -> None:
    for action in p.actions:
        if isinstance(action, WriteResource):
            validate_resource(action.resource)
            assert action.resource["identifier"][0] == {"system": SYSTEM, "value": action.identifier}


def test_intake_forms_on_registration_dst_and_weekend(engine):
    # Registered Thursday 2026-03-05 10:00 EST. +3 days = Sunday 03-08, the day DST starts: 10:00 EDT
    # (only 71 wall hours later); next-monday moves it to Monday 03-09 10:00 EDT = 14:00Z.
    questionnaire = {
        "resourceType": "Questionnaire",
        "id": "intake",
        "url": "http://example.org/fhir/Questionnaire/intake",
        "title": "Adult intake questionnaire",
        "status": "active",
    }
    new_patient = patient()
    ctx = FakeContext([new_patient, questionnaire])
    trigger = only_trigger(engine, new_patient, interaction="create")
    assert trigger.id == "patient.registered|Patient/p1|v1"
    p = plan(engine, trigger, ctx, SETTINGS, NOW)
    (run,) = p.runs
    assert run.ran and run.flow_id == "intake-forms"
    assert run.group == "intake-forms/" + sha20("intake-forms", "1", trigger.id)
    assert_all_valid(p)

    form_task, review_task = writes(p, "Task")
    task_id = "intake-forms/send-intake-packet/Task/" + sha20("intake-forms", "1", trigger.id, 0, "Task", "", 0)
    assert form_task["identifier"][0]["value"] == task_id
    assert form_task["code"]["coding"][0] == {
        "system": "http://hl7.org/fhir/uv/sdc/CodeSystem/temp",
        "code": "complete-questionnaire",
        "display": "Complete Questionnaire",
    }
    assert form_task["input"][0]["valueCanonical"] == "http://example.org/fhir/Questionnaire/intake"
    assert form_task["for"] == form_task["owner"] == {"reference": "Patient/p1"}
    assert form_task["restriction"]["period"]["end"] == "2026-03-09T14:00:00Z"
    assert form_task["authoredOn"] == "2026-03-05T15:00:00Z"
    assert form_task["groupIdentifier"] == {"system": SYSTEM, "value": run.group}
    assert form_task["instantiatesUri"] == "urn:fhir-smartflow:flow:intake-forms:1#send-intake-packet"

    assert review_task["performerType"] == [
        {"coding": [{"system": "http://snomed.info/sct", "code": "768832004"}], "text": "case-manager"}
    ]
    assert "owner" not in review_task
    assert review_task["restriction"]["period"]["end"] == "2026-03-09T14:00:00Z"
    assert review_task["description"] == (
        "Review the intake packet of Alex Rivera (MRN MRN-0042) by Monday, March 9, 2026 at 10:00 AM EDT."
    )

    comms = writes(p, "Communication")
    assert [c["medium"][0]["coding"][0]["code"] for c in comms] == ["SMSWRIT", "EMAILWRIT", "ONLINEWRIT"]
    assert [c["status"] for c in comms] == ["in-progress", "in-progress", "completed"]
    link = "https://portal.example.org/tasks?identifier=" + task_id.replace("/", "%2F")
    assert comms[0]["payload"][0]["contentString"] == (
        "Hi Alex, welcome to Example Behavioral Health. Please complete Adult intake questionnaire by "
        f"Monday, March 9, 2026 at 10:00 AM EDT: {link}"
    )
    delivers = [a for a in p.actions if isinstance(a, Deliver)]
    assert [(d.channel, d.recipient) for d in delivers] == [("sms", "Patient/p1"), ("email", "Patient/p1")]
    assert delivers[0].communication == comms[0]["identifier"][0]["value"]
    assert delivers[1].subject == "Your forms from Example Behavioral Health"

    (reminder,) = [a for a in p.actions if isinstance(a, Schedule)]
    assert reminder.kind == "reminder"
    assert reminder.at == datetime(2026, 3, 8, 14, 0, tzinfo=UTC)  # 1 day before due, Sunday 10:00 EDT
    assert reminder.payload["task_identifier"] == task_id
    assert reminder.payload["due"] == "2026-03-09T14:00:00Z"

    # Same event twice → the identical plan.
    assert plan(engine, trigger, FakeContext([new_patient, questionnaire]), SETTINGS, NOW) == p


def test_intake_forms_skips_minors_and_discharged(engine):
    child = patient(birth="2015-02-01")
    trigger = only_trigger(engine, child, interaction="create")
    (run,) = plan(engine, trigger, FakeContext([child]), SETTINGS, NOW).runs
    assert not run.ran and run.reason.startswith("condition false")
    adult = patient()
    trigger = only_trigger(engine, adult, interaction="create")
    (run,) = plan(engine, trigger, FakeContext([adult]), SETTINGS, NOW, discharged=True).runs
    assert not run.ran and "discharged" in run.reason and run.actions == ()


def test_intake_reminder_follow_up_only_while_open(engine):
    new_patient = patient()
    ctx = FakeContext([new_patient])
    p = plan(engine, only_trigger(engine, new_patient, interaction="create"), ctx, SETTINGS, NOW)
    (reminder,) = [a for a in p.actions if isinstance(a, Schedule)]
    task = {"resourceType": "Task", "status": "requested"}
    follow = plan_followup(engine, "reminder", reminder.payload, task, ctx, SETTINGS, reminder.at)
    comms = writes(follow, "Communication")
    assert len(comms) == 3 and all(c["category"][0]["coding"][0]["code"] == "reminder" for c in comms)
    assert comms[0]["topic"]["text"] == "Reminder: Your forms from Example Behavioral Health"
    assert {c["identifier"][0]["value"] for c in comms}.isdisjoint(
        {c["identifier"][0]["value"] for c in writes(p, "Communication")}
    )
    assert follow == plan_followup(engine, "reminder", reminder.payload, task, ctx, SETTINGS, reminder.at)
    done = plan_followup(engine, "reminder", reminder.payload, {"status": "completed"}, ctx, SETTINGS, reminder.at)
    assert done.actions == () and "no longer open" in done.runs[0].reason


def test_follow_up_form_submitted_notifies_clinician(engine):
    response = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr9",
        "meta": {"versionId": "3", "lastUpdated": "2026-03-10T18:30:00Z"},
        "questionnaire": "http://example.org/fhir/Questionnaire/follow-up",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-03-10T18:29:00Z",
    }
    questionnaire = {
        "resourceType": "Questionnaire",
        "id": "fu",
        "url": "http://example.org/fhir/Questionnaire/follow-up",
        "title": "Follow-up questionnaire",
        "status": "active",
    }
    ctx = FakeContext([patient(), PRACTITIONER_ROLE, questionnaire])
    trigger = only_trigger(
        engine, response, previous={"resourceType": "QuestionnaireResponse", "status": "in-progress"}
    )
    assert trigger.parameters == {"questionnaire": "http://example.org/fhir/Questionnaire/follow-up"}
    p = plan(engine, trigger, ctx, SETTINGS, NOW)
    (run,) = p.runs
    assert run.ran, run.reason
    assert_all_valid(p)
    (comm,) = writes(p, "Communication")
    assert comm["recipient"] == [{"reference": "PractitionerRole/dr-lee-role"}]
    assert comm["status"] == "completed" and comm["sent"] == "2026-03-10T18:30:00Z"
    assert comm["payload"][0]["contentString"] == "Alex Rivera (MRN MRN-0042) submitted Follow-up questionnaire."
    assert not [a for a in p.actions if isinstance(a, Deliver)]  # staff-message is FHIR only
    (flag,) = writes(p, "Flag")
    assert flag["code"]["text"] == "Review the follow-up answers of Alex Rivera before the next visit"
    assert flag["period"] == {"start": "2026-03-10T18:30:00Z", "end": "2026-03-17T18:30:00Z"}
    assert flag["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "doctor"
    # Another questionnaire: the condition is false.
    other = {**response, "questionnaire": "http://example.org/fhir/Questionnaire/phq9"}
    (run,) = plan(engine, only_trigger(engine, other), ctx, SETTINGS, NOW).runs
    assert not run.ran and run.reason.startswith("condition false")


def test_missed_appointment_sms_callback_task_and_note(engine):
    # No-show for Friday 2026-03-13 10:00 EDT; call-back due 1 day after the appointment start =
    # Saturday → next-monday → Monday 03-16 10:00 EDT = 14:00Z.
    noshow = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-13T16:00:00Z", version="4")
    ctx = FakeContext([patient(), PRACTITIONER])
    previous = {"resourceType": "Appointment", "status": "booked", "meta": {"versionId": "3"}}
    trigger = only_trigger(engine, noshow, previous=previous)
    assert trigger.id == "appointment.no_show|Appointment/a1|v4" and trigger.patient == "Patient/p1"
    p = plan(engine, trigger, ctx, SETTINGS, NOW)
    (run,) = p.runs
    assert run.ran and run.flow_version == "2"
    assert_all_valid(p)
    (sms,) = writes(p, "Communication")
    assert sms["payload"][0]["contentString"] == (
        "Hi Alex, we missed you at your appointment on Friday, March 13, 2026. Please call Example Behavioral "
        "Health at (555) 555-0199 to reschedule."
    )
    (deliver,) = [a for a in p.actions if isinstance(a, Deliver)]
    assert (deliver.channel, deliver.recipient) == ("sms", "Patient/p1")
    (task,) = writes(p, "Task")
    assert task["restriction"]["period"]["end"] == "2026-03-16T14:00:00Z"
    assert task["performerType"][0]["text"] == "case-manager"
    assert task["focus"] == {"reference": "Appointment/a1"}
    assert task["description"] == (
        "Call Alex Rivera at +15555550100 to reschedule the missed appointment of Friday, March 13, 2026 at "
        "10:00 AM EDT with Dr. Jordan Lee."
    )
    (note,) = writes(p, "DocumentReference")
    assert note["type"]["coding"][0] == {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}
    assert note["author"] == [{"reference": "Device/fhir-smartflow"}]
    assert note["docStatus"] == "preliminary" and note["status"] == "current"
    text = base64.b64decode(note["content"][0]["attachment"]["data"]).decode()
    assert text.startswith("Patient did not attend the appointment of Friday, March 13, 2026 at 10:00 AM EDT")
    # A later update that keeps the no-show status fires nothing.
    assert match_triggers(engine, event_for(noshow), {"resourceType": "Appointment", "status": "noshow"}) == []


def test_careplan_update_portal_message(engine):
    careplan = {
        "resourceType": "CarePlan",
        "id": "cp1",
        "meta": {"versionId": "5", "lastUpdated": "2026-04-02T20:00:00Z"},
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
    }
    trigger = only_trigger(engine, careplan, previous={"resourceType": "CarePlan", "status": "active"})
    p = plan(engine, trigger, FakeContext([patient()]), SETTINGS, NOW)
    assert_all_valid(p)
    (comm,) = writes(p, "Communication")
    assert comm["medium"][0]["coding"][0]["code"] == "ONLINEWRIT" and comm["status"] == "completed"
    assert comm["payload"][0]["contentString"].startswith("Hi Alex, your treatment plan at Example Behavioral Health")
    assert not [a for a in p.actions if isinstance(a, Deliver)]


def test_weekly_checkin_recurs_across_dst_and_stops_at_discharge(engine):
    # First kept appointment Monday 2026-10-26 09:00 EDT; DST ends Sunday 11-01. The next check-in
    # is Monday 11-02 at 09:00 EST (= 14:00Z, not 13:00Z).
    kept = appointment("a7", "arrived", "2026-10-26T13:00:00Z", "2026-10-26T13:00:00Z")
    ctx = FakeContext([patient()])
    triggers = match_triggers(engine, event_for(kept), {"resourceType": "Appointment", "status": "booked"})
    first_kept = next(t for t in triggers if t.trigger == "appointment.first_kept")
    assert first_kept.once_key == "appointment.first_kept|Patient/p1"
    p = plan(engine, first_kept, ctx, SETTINGS, NOW)
    assert_all_valid(p)
    (task,) = writes(p, "Task")
    assert task["restriction"]["period"]["end"] == "2026-10-28T13:00:00Z"
    (nxt,) = [a for a in p.actions if isinstance(a, Schedule)]
    assert nxt.kind == "recurrence" and nxt.at == datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
    assert nxt.payload["occurrence"] == 1

    open_task = {"resourceType": "Task", "status": "requested"}
    second = plan_followup(engine, "recurrence", nxt.payload, open_task, ctx, SETTINGS, nxt.at)
    assert_all_valid(second)
    (task2,) = writes(second, "Task")
    assert task2["restriction"]["period"]["end"] == "2026-11-04T14:00:00Z"
    assert task2["authoredOn"] == "2026-11-02T14:00:00Z"
    assert task2["identifier"] != task["identifier"] and task2["groupIdentifier"] == task["groupIdentifier"]
    (third,) = [a for a in second.actions if isinstance(a, Schedule)]
    assert third.at == datetime(2026, 11, 9, 14, 0, tzinfo=UTC) and third.payload["occurrence"] == 2

    last = plan_followup(engine, "recurrence", {**nxt.payload, "occurrence": 11}, open_task, ctx, SETTINGS, nxt.at)
    assert writes(last, "Task") and not [a for a in last.actions if isinstance(a, Schedule)]  # 12th of 12

    stopped = plan_followup(engine, "recurrence", nxt.payload, open_task, ctx, SETTINGS, nxt.at, discharged=True)
    assert stopped.actions == () and "discharged" in stopped.runs[0].reason

    # Discharge cancels the open tasks of every not_after flow for the patient.
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "meta": {"versionId": "2", "lastUpdated": "2026-11-20T15:00:00Z"},
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2026-10-26T13:00:00Z", "end": "2026-11-20T15:00:00Z"},
    }
    discharge = only_trigger(engine, encounter, previous={"resourceType": "Encounter", "status": "in-progress"})
    (run,) = plan(engine, discharge, ctx, SETTINGS, NOW).runs
    (cancel,) = run.actions
    assert isinstance(cancel, CancelGroup)
    assert cancel.patient == "Patient/p1"
    assert cancel.flows == ("intake-forms", "previsit-questionnaire", "weekly-checkin")


def test_billing_task_after_primary_insurance_effective_date(engine):
    # Primary coverage (order 1) effective Monday 2026-05-04 (a date without a time: the clinic's end of
    # business, 17:00); +5 days = Saturday → previous-friday → Friday 05-08 17:00 EDT = 21:00Z, and the
    # text shows the date alone. The secondary coverage (order 2) is ignored.
    coverage = {
        "resourceType": "Coverage",
        "id": "cov1",
        "meta": {"versionId": "1", "lastUpdated": "2026-05-01T14:00:00Z"},
        "status": "active",
        "order": 1,
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"reference": "Organization/acme"}],
        "period": {"start": "2026-05-04"},
    }
    secondary = {
        **coverage,
        "id": "cov0",
        "order": 2,
        "period": {"start": "2026-01-01"},
        "payor": [{"reference": "Organization/other"}],
    }
    acme = {"resourceType": "Organization", "id": "acme", "name": "Acme Health Plan"}
    ctx = FakeContext([patient(), secondary, acme])
    p = plan(engine, only_trigger(engine, coverage, interaction="create"), ctx, SETTINGS, NOW)
    assert_all_valid(p)
    (task,) = writes(p, "Task")
    assert task["restriction"]["period"]["end"] == "2026-05-08T21:00:00Z"
    assert task["performerType"][0]["coding"][0] == {"system": "urn:fhir-smartflow:role", "code": "billing"}
    assert task["description"] == (
        "Verify Acme Health Plan coverage and benefits for Alex Rivera (MRN MRN-0042) by Friday, May 8, 2026."
    )


def test_missing_anchor_is_recorded_not_raised(engine):
    coverage = {
        "resourceType": "Coverage",
        "id": "cov1",
        "meta": {"versionId": "1", "lastUpdated": "2026-05-01T14:00:00Z"},
        "status": "active",
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"display": "Acme"}],
    }
    (run,) = plan(
        engine, only_trigger(engine, coverage, interaction="create"), FakeContext([patient()]), SETTINGS, NOW
    ).runs
    assert not run.ran
    assert "anchor 'insurance_effective' not found" in run.reason and "period.start" in run.reason


def test_previsit_overdue_and_completes_workflow(engine):
    # Booked for Friday 2026-03-20 10:00 EDT: form due 2 days before (Wed 03-18 14:00Z), call task
    # 1 day before (Thu 03-19 14:00Z) owned by the front-desk group.
    booked = appointment("a3", "booked", "2026-03-20T14:00:00Z", "2026-03-10T12:00:00Z", version="1")
    ctx = FakeContext([patient(), booked])
    trigger = only_trigger(engine, booked, interaction="create")
    p = plan(engine, trigger, ctx, SETTINGS, NOW)
    assert_all_valid(p)
    form_task, call_task = writes(p, "Task")
    # SDC sdc-t1: a complete-questionnaire Task has no focus; the booked appointment is its reason.
    assert "focus" not in form_task and form_task["reasonReference"] == {"reference": "Appointment/a3"}
    assert form_task["restriction"]["period"]["end"] == "2026-03-18T14:00:00Z"
    assert call_task["restriction"]["period"]["end"] == "2026-03-19T14:00:00Z"
    assert call_task["owner"] == {"reference": "CareTeam/front-desk"}
    (overdue,) = [a for a in p.actions if isinstance(a, Schedule)]
    assert overdue.kind == "overdue" and overdue.at == datetime(2026, 3, 18, 14, 0, tzinfo=UTC)

    followup = plan_followup(engine, "overdue", overdue.payload, {"status": "in-progress"}, ctx, SETTINGS, overdue.at)
    patch = followup.actions[0]
    assert patch == PatchTask(
        identifier=form_task["identifier"][0]["value"],
        business_status="overdue",
        status_reason="past its due date",
        action="pre-visit-questionnaire",
    )
    texts = [c["topic"]["text"] for c in writes(followup, "Communication")]
    assert texts == ["Overdue: Before your visit on Friday, March 20, 2026"] * 2

    # The patient completes the form task: the rest of the workflow (the call task) is cancelled.
    completed = {
        **form_task,
        "id": "t1",
        "status": "completed",
        "meta": {"versionId": "2", "lastUpdated": "2026-03-15T10:00:00Z"},
    }
    done = only_trigger(engine, completed, previous={"resourceType": "Task", "status": "requested"})
    (run,) = plan(engine, done, ctx, SETTINGS, NOW).runs
    (cancel,) = run.actions
    assert cancel.group == form_task["groupIdentifier"]["value"] == call_task["groupIdentifier"]["value"]
    assert cancel.keep == form_task["identifier"][0]["value"]
    # Completing the call task (no completes_workflow) cancels nothing.
    call_done = {**call_task, "id": "t2", "status": "completed", "meta": {"versionId": "2"}}
    assert (
        plan(engine, only_trigger(engine, call_done, previous={"status": "requested"}), ctx, SETTINGS, NOW).runs == ()
    )
