"""Workflow lifecycle end to end with the real parts (tests/support/lifecycle.py starts them): reminders,
cancellation, recurring series, overdue marks, quiet hours and opt-outs, on a test clock shared through
Redis that the tests move instead of sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.task import Task

from fhir_smartflow.connections import Keys
from fhir_smartflow.scheduling.scheduler import iter_pending
from tests.support.channels import TwilioFake
from tests.support.fhir import client_id
from tests.support.lifecycle import (
    OPEN,
    PREFIX,
    Stack,
    based_on,
    ident,
    medium,
    next_local,
    sms_config,
)
from tests.support.net import wait_for
from tests.support.procs import ROOT

pytestmark = pytest.mark.integration


def intake_task(stack: Stack, patient: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        tasks = [t for t in stack.tasks(patient, "intake-forms") if t.get("code", {}).get("coding")]
        return tasks[0] if tasks and len(stack.comms(patient)) >= 3 else None

    return wait_for(found, f"intake Task of {patient}", stack.log)


def due_of(task: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(task["restriction"]["period"]["end"].replace("Z", "+00:00"))


# -- 1. reminders ------------------------------------------------------------------------------------------


def test_reminder_fires_once_for_open_tasks_only(start_stack) -> None:
    stack = start_stack(profile="hapi", workers=2)  # two workers, each with a scheduler thread (one holds the lock)
    stack.subscribe("Patient")
    open_patient, done_patient = stack.new_patient(), stack.new_patient()
    open_task, done_task = intake_task(stack, open_patient), intake_task(stack, done_patient)
    stack.wait_settled()  # each run schedules its reminder after its Communications are written
    assert stack.comms(open_patient, "reminder") == []
    reminders = [p for p in iter_pending(stack.scheduler(), 1000) if p.kind == "reminder"]
    assert {p.payload["task_identifier"] for p in reminders} == {ident(open_task), ident(done_task)}

    stack.set_task_status(done_task, "completed")  # an EHR user completes it before the reminder time
    remind_at = due_of(open_task) - timedelta(days=1)
    stack.move_clock(remind_at - timedelta(minutes=5))
    stack.settle()  # several scheduler ticks: nothing is due yet
    assert stack.comms(open_patient, "reminder") == []

    stack.move_clock(remind_at + timedelta(minutes=1))
    sent = wait_for(lambda: stack.comms(open_patient, "reminder"), "reminder Communications", stack.log)
    wait_for(lambda: stack.jobs("reminder", "skipped-closed") == 1, "the completed task's reminder skipped", stack.log)
    stack.wait_settled()
    # More ticks, another clock move and an extra tick from a third scheduler (this process): nothing new.
    stack.move_clock(remind_at + timedelta(minutes=30))
    stack.settle()
    assert stack.scheduler().tick() == 0
    stack.wait_settled()

    sent = stack.comms(open_patient, "reminder")
    assert sorted(medium(c) for c in sent) == ["email", "portal", "sms"]  # one per method, exactly once
    assert len({ident(c) for c in sent}) == len(sent) == 3
    for comm in sent:
        Communication.model_validate(comm)
        assert based_on(comm) == ident(open_task)
        assert comm["topic"]["text"].startswith("Reminder: ")
    assert stack.jobs("reminder", "executed") == 1
    assert stack.comms(done_patient, "reminder") == []  # completed task: no reminder
    assert stack.read(f"Task/{done_task['id']}")["status"] == "completed"


# -- 2. completes_workflow ---------------------------------------------------------------------------------


def by_action(tasks: list[dict[str, Any]], slug_part: str) -> dict[str, Any]:
    return next(t for t in tasks if t["instantiatesUri"].split("#")[1].startswith(slug_part))


def group_of(task: dict[str, Any]) -> str:
    return task["groupIdentifier"]["value"]


def test_completing_task_cancels_siblings_and_their_followups(start_stack) -> None:
    stack = start_stack(profile="hapi", flows=("flows/examples", "tests/fixtures/flows"))
    stack.subscribe("Appointment", "Task")
    patient = stack.new_patient()
    stack.appointment(patient, "booked", datetime.now(UTC) + timedelta(days=10))
    checklist = wait_for(
        lambda: len(t := stack.tasks(patient, "visit-checklist")) == 2 and t, "checklist tasks", stack.log
    )
    previsit = wait_for(lambda: len(t := stack.tasks(patient, "previsit-questionnaire")) == 2 and t, "previsit tasks")
    completing, sibling = by_action(checklist, "visit-questionnaire"), by_action(checklist, "upload-insurance")
    group = group_of(completing)
    assert group_of(sibling) == group
    stack.wait_settled()  # the run's Schedule actions come after its writes
    assert sorted(p.kind for p in stack.pending(group=group)) == ["overdue", "reminder"]  # the sibling's
    assert {p.payload["task_identifier"] for p in stack.pending(group=group)} == {ident(sibling)}
    previsit_group = group_of(previsit[0])
    assert [p.kind for p in stack.pending(group=previsit_group)] == ["overdue"]

    stack.set_task_status(completing, "completed")  # the patient finished it; the EHR marks it done
    cancelled = wait_for(
        lambda: (t := stack.read(f"Task/{sibling['id']}"))["status"] == "cancelled" and t,
        "sibling cancelled",
        stack.log,
    )
    Task.model_validate(cancelled)
    assert ident(completing) in cancelled["statusReason"]["text"]
    assert stack.pending(group=group) == []  # the sibling's reminder and overdue check are gone
    assert stack.read(f"Task/{completing['id']}")["status"] == "completed"
    # Another workflow of the same patient is untouched.
    assert all(stack.read(f"Task/{t['id']}")["status"] in OPEN for t in previsit)
    assert [p.kind for p in stack.pending(group=previsit_group)] == ["overdue"]
    status = stack.cli("scheduler", "--status", "--json")
    assert status["pending"] == 1 and status["soonest"][0]["kind"] == "overdue"

    # The shipped example: completing the pre-visit questionnaire cancels the front desk's call task.
    questionnaire, call = by_action(previsit, "pre-visit-questionnaire"), by_action(previsit, "call-about")
    stack.set_task_status(questionnaire, "completed")
    wait_for(lambda: stack.read(f"Task/{call['id']}")["status"] == "cancelled", "call task cancelled", stack.log)
    # The follow-ups are cancelled after the sibling Tasks: wait for that, not just for the Task.
    wait_for(lambda: stack.pending(group=previsit_group) == [], "the group's follow-ups cancelled", stack.log)
    assert stack.scheduler().pending_count() == 0

    # Past every former due time: nothing fires, no reminder is written.
    stack.move_clock(datetime.now(UTC) + timedelta(days=11))
    stack.settle()
    assert stack.comms(patient, "reminder") == [] and stack.comms(patient, "alert") == []


# -- 3. recurring series and discharge ---------------------------------------------------------------------


def test_weekly_series_stops_at_discharge(start_stack, serve_app) -> None:
    twilio = TwilioFake()
    provider = serve_app(twilio.app).url
    stack = start_stack(profile="hapi", sections=sms_config(provider))
    _weekly_series_stops_at_discharge(stack, twilio)


def _weekly_series_stops_at_discharge(stack: Stack, twilio: TwilioFake) -> None:
    stack.move_clock(next_local(12))  # daytime: SMS go out at once
    stack.subscribe("Patient", "Appointment")
    patient = stack.new_patient(adult=False, phone="+15551230003")  # a minor: the intake flow skips it
    first_runs = stack.flow_runs("skipped")
    wait_for(lambda: stack.flow_runs("skipped") > first_runs, "registration seen (prior state recorded)", stack.log)
    stack.appointment(patient, "arrived", datetime.now(UTC))  # first kept appointment: the series starts
    first = wait_for(lambda: stack.tasks(patient, "weekly-checkin"), "first check-in", stack.log)[0]
    group = group_of(first)
    [recurrence] = wait_for(lambda: stack.pending(group=group), "next occurrence scheduled", stack.log)
    assert recurrence.kind == "recurrence"
    start = datetime.fromisoformat(first["authoredOn"].replace("Z", "+00:00"))

    stack.move_clock(next_local(12, after=start + timedelta(weeks=1)))  # week 1, at noon: sent at once
    wait_for(lambda: len(stack.tasks(patient, "weekly-checkin")) == 2, "week 1", stack.log)
    stack.wait_settled()  # its SMS goes out at noon, before the clock moves on
    # Week 2 at 23:00 clinic time: the occurrence is created, its SMS deferred to the morning.
    stack.move_clock(night := next_local(23, after=start + timedelta(weeks=2)))
    wait_for(lambda: len(stack.tasks(patient, "weekly-checkin")) == 3, "week 2", stack.log)
    stack.wait_settled()
    tasks = stack.tasks(patient, "weekly-checkin")
    assert len({ident(t) for t in tasks}) == 3 and {group_of(t) for t in tasks} == {group}
    authored = sorted(datetime.fromisoformat(t["authoredOn"].replace("Z", "+00:00")) for t in tasks)
    assert [(a - authored[0]).days for a in authored] == [0, 7, 14]
    for task in tasks:
        Task.model_validate(task)
    pending = stack.pending(patient=patient)
    assert sorted(p.kind for p in pending) == ["delivery", "recurrence"], (pending, stack.comms(patient), night)
    assert len(twilio.requests) == 2  # the first and week 1's; week 2's waits for 08:00

    # Discharge at night: the Patient record is made inactive (mappings/patient.toml).
    stack.put({**stack.read(patient), "active": False})
    wait_for(
        lambda: all(t["status"] == "cancelled" for t in stack.tasks(patient, "weekly-checkin")),
        "open check-ins cancelled",
        stack.log,
    )
    for task in stack.tasks(patient, "weekly-checkin"):
        assert task["statusReason"]["text"] == "patient discharged"
    stack.wait_settled()
    assert stack.pending(patient=patient) == []  # the next occurrence and the deferred SMS are gone
    stack.move_clock(next_local(8, 1, after=night))
    stack.settle()
    assert len(twilio.requests) == 2  # the deferred check-in SMS is not sent to a discharged patient
    unsent = [c for c in stack.comms(patient, "instruction") if medium(c) == "sms" and c["status"] != "completed"]
    assert [(c["status"], c["statusReason"]["text"]) for c in unsent] == [("not-done", "patient discharged")]
    stack.move_clock(start + timedelta(weeks=4, minutes=1))
    stack.settle()
    assert len(stack.tasks(patient, "weekly-checkin")) == 3  # no further occurrences

    # A new trigger for the discharged patient does not start a not_after flow (previsit-questionnaire).
    skipped = stack.flow_runs("skipped")
    stack.appointment(patient, "booked", start + timedelta(weeks=6))
    wait_for(lambda: stack.flow_runs("skipped") > skipped, "booking processed", stack.log)
    stack.wait_settled()
    assert stack.tasks(patient, "previsit-questionnaire") == []
    assert len(twilio.requests) == 2


# -- 4. overdue --------------------------------------------------------------------------------------------


def test_overdue_marks_the_open_task_and_tells_the_owner(start_stack) -> None:
    stack = start_stack(profile="hapi")
    stack.subscribe("Appointment")
    patient = stack.new_patient()
    stack.appointment(patient, "booked", datetime.now(UTC) + timedelta(days=6))
    tasks = wait_for(lambda: len(t := stack.tasks(patient, "previsit-questionnaire")) == 2 and t, "tasks", stack.log)
    questionnaire, call = by_action(tasks, "pre-visit-questionnaire"), by_action(tasks, "call-about")
    due = due_of(questionnaire)
    stack.wait_settled()
    assert [p.kind for p in stack.pending(group=group_of(questionnaire))] == ["overdue"]
    # Every worker (and its scheduler thread) is restarted; the pending check lives in Redis and the new
    # worker picks it up. (SIGTERM: rq finishes the job at hand, a kill would leave it "started" for minutes.)
    for worker in stack.workers:
        assert worker.stop() == 0
    stack.start_worker()

    stack.move_clock(due - timedelta(minutes=1))
    stack.settle()
    assert "businessStatus" not in stack.read(f"Task/{questionnaire['id']}")

    stack.move_clock(due + timedelta(minutes=1))
    marked = wait_for(
        lambda: "businessStatus" in (t := stack.read(f"Task/{questionnaire['id']}")) and t, "overdue", stack.log
    )
    Task.model_validate(marked)
    assert marked["status"] in OPEN and marked["businessStatus"]["coding"][0]["code"] == "overdue"
    alerts = wait_for(lambda: len(a := stack.comms(patient, "alert")) == 2 and a, "owner told", stack.log)
    assert sorted(medium(c) for c in alerts) == ["email", "sms"]  # the owner is the patient: the action's methods
    for comm in alerts:
        Communication.model_validate(comm)
        assert based_on(comm) == ident(questionnaire) and comm["topic"]["text"].startswith("Overdue: ")
    assert "businessStatus" not in stack.read(f"Task/{call['id']}")  # the call task asks for no overdue check

    # Discharge by a finished Encounter cancels the still-open tasks; a new booking starts nothing until
    # an admission (Encounter in-progress) clears the discharge.
    stack.subscribe("Encounter")
    stack.put(encounter(patient, "finished"))
    wait_for(
        lambda: all(t["status"] == "cancelled" for t in stack.tasks(patient, "previsit-questionnaire")),
        "open tasks cancelled at discharge",
        stack.log,
    )
    skipped = stack.flow_runs("skipped")
    stack.appointment(patient, "booked", due + timedelta(days=10))
    wait_for(lambda: stack.flow_runs("skipped") > skipped, "booking while discharged processed", stack.log)
    stack.wait_settled()
    assert len(stack.tasks(patient, "previsit-questionnaire")) == 2
    marker = Keys(PREFIX).discharged(patient)
    assert stack.conn.exists(marker)
    stack.put(encounter(patient, "in-progress"))
    wait_for(lambda: not stack.conn.exists(marker), "admission clears the discharge", stack.log)
    stack.appointment(patient, "booked", due + timedelta(days=12))
    wait_for(lambda: len(stack.tasks(patient, "previsit-questionnaire")) == 4, "flow runs after admission", stack.log)


def encounter(patient: str, status: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": client_id(),
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": patient},
    }


# -- 5. quiet hours and opt-out ----------------------------------------------------------------------------


def sms_comm(stack: Stack, patient: str) -> dict[str, Any]:
    return next(c for c in stack.comms(patient, "instruction") if medium(c) == "sms")


def opt_out_consent(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": client_id(),
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": {
            "type": "deny",
            "action": [{"coding": [{"system": "urn:fhir-smartflow:channel", "code": "sms"}]}],
        },
    }


def test_quiet_hours_defer_sms_and_opt_out_blocks_it(start_stack, serve_app) -> None:
    twilio = TwilioFake()
    provider = serve_app(twilio.app).url
    # Lenient: the opt-out Consent is written before the Patient it names exists, which a server checking
    # references refuses (the flow must see the opt-out when the Patient's registration arrives).
    stack = start_stack(workers=2, sections=sms_config(provider), profile="lenient")  # two workers: one SMS each
    night = next_local(23)  # 23:00 clinic time: inside the default quiet hours 21:00-08:00
    stack.move_clock(night)
    stack.subscribe("Patient")
    patient = stack.new_patient(phone="+15551230001")
    opted_out_id = client_id()
    consent = stack.put(opt_out_consent(f"Patient/{opted_out_id}"))
    opted_out = stack.new_patient(phone="+15551230002", pid=opted_out_id)
    finished = stack.new_patient(phone="+15551230004")  # completes the forms before the morning
    intake_task(stack, patient), intake_task(stack, opted_out)
    stack.set_task_status(intake_task(stack, finished), "completed")
    stack.wait_settled()

    deferred = sms_comm(stack, patient)
    assert deferred["status"] == "in-progress" and twilio.requests == []
    [pending] = [p for p in stack.pending(patient=patient) if p.kind == "delivery"]
    morning = next_local(8, after=night)
    assert pending.at == morning  # deferred to the end of quiet hours, 08:00 clinic time

    blocked = sms_comm(stack, opted_out)  # opt-out: not-done at once, with the reason, never sent
    Communication.model_validate(blocked)
    assert blocked["status"] == "not-done"
    assert blocked["statusReason"]["text"] == f"patient opted out of sms (Consent/{consent['id']})"
    assert [p for p in stack.pending(patient=opted_out) if p.kind == "delivery"] == []

    stack.move_clock(morning - timedelta(minutes=1))
    stack.settle()
    assert twilio.requests == [] and sms_comm(stack, patient)["status"] == "in-progress"

    stack.move_clock(morning + timedelta(minutes=1))
    sent = wait_for(lambda: (c := sms_comm(stack, patient))["status"] == "completed" and c, "SMS sent", stack.log)
    Communication.model_validate(sent)
    stack.move_clock(morning + timedelta(minutes=30))  # more ticks: nothing is sent again
    stack.settle()
    assert [(r, f["To"]) for r, f in twilio.requests] == [("Messages", "+15551230001")]
    # The deferred "please complete" text of a task completed overnight is not sent, and says why.
    withdrawn = sms_comm(stack, finished)
    Communication.model_validate(withdrawn)
    assert withdrawn["status"] == "not-done" and "was completed" in withdrawn["statusReason"]["text"]
    assert sent["sent"] == morning.replace(minute=1).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the shipped examples use every lifecycle feature --------------------------------------------------------


def test_examples_use_every_lifecycle_feature_and_validate(run_cli) -> None:
    from fhir_smartflow.config import Settings
    from fhir_smartflow.flowfiles import load_paths

    engine, errors = load_paths(
        [str(ROOT / "mappings")], [str(ROOT / "flows/examples")], [str(ROOT / "templates")], Settings()
    )
    assert errors == [] and engine is not None
    actions = [a for f in engine.flows.values() for a in f.actions]
    assert any(a.reminder for a in actions)
    assert any(a.overdue for a in actions)
    assert any(a.recurring and (a.recurring.count or a.recurring.until) for a in actions)  # a series with an end
    assert any(a.completes_workflow for a in actions)
    assert any(f.not_after == "patient.discharged" for f in engine.flows.values())
    validate = run_cli("validate", "flows/examples")
    assert validate.returncode == 0, validate.stdout + validate.stderr
