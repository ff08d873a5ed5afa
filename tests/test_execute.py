"""PlanExecutor unit tests: delivery outcomes, claims, scheduling; in-memory WriteBackTarget / Deliverer /
Scheduler (tests/support/fakes.py).

Claims use the real Redis (redis_conn fixture).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.delivery.outcome import DeliveryOutcome
from fhir_smartflow.engine.plan import Deliver, FlowRun, Plan
from fhir_smartflow.engine.validation import validate_resource
from fhir_smartflow.fhir.errors import FhirBadRequest, FhirServerError
from fhir_smartflow.worker.execute import PlanExecutor
from tests.support.fakes import FakeDeliverer, FakeScheduler, MemoryTarget
from tests.support.plans import DELIVERY_ID, NOW, intake_plan, trigger

pytestmark = pytest.mark.integration


@pytest.fixture
def target() -> MemoryTarget:
    t = MemoryTarget()
    t.resources["Patient/p1"] = {"resourceType": "Patient", "id": "p1"}
    return t


def executor(target, redis_conn, deliverer=None, scheduler=None, clock=lambda: NOW) -> PlanExecutor:
    return PlanExecutor(
        target,
        redis_conn,
        Keys("u:"),
        Settings(),
        deliverer=deliverer,
        scheduler=scheduler or FakeScheduler(),
        clock=clock,
    )


def communication(target: MemoryTarget) -> dict[str, Any]:
    return next(r for r in target.resources.values() if r["resourceType"] == "Communication")


def test_created_flag_is_unknown_for_targets_that_do_not_say(target, redis_conn) -> None:
    result = executor(target, redis_conn, FakeDeliverer()).execute(intake_plan())
    assert [(w.resource_type, w.created) for w in result.written][:2] == [("Task", None), ("Provenance", None)]
    for resource in target.resources.values():
        validate_resource(resource)
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["written"][0]["resource_type"] == "Task" and as_json["deliveries"] == [[DELIVERY_ID, "completed"]]


def test_not_done_outcome_sets_status_reason(target, redis_conn) -> None:
    outcome = DeliveryOutcome("not-done", reason="patient opted out of SMS", reason_code="patient-objection")
    result = executor(target, redis_conn, FakeDeliverer(outcome)).execute(intake_plan())
    comm = communication(target)
    assert comm["status"] == "not-done" and comm["statusReason"]["text"] == "patient opted out of SMS"
    assert comm["statusReason"]["coding"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/communication-not-done-reason",
            "code": "patient-objection",
            "display": "Patient Objection",
        }
    ]
    assert "sent" not in comm
    assert result.deliveries == [(DELIVERY_ID, "not-done")]
    validate_resource(comm)


def test_deferred_delivery_is_scheduled_and_sent_when_due(target, redis_conn) -> None:
    later = NOW + timedelta(hours=10)
    deliverer = FakeDeliverer(
        DeliveryOutcome("deferred", reason="quiet hours", retry_at=later), DeliveryOutcome("completed")
    )
    scheduler = FakeScheduler()
    result = executor(target, redis_conn, deliverer, scheduler).execute(intake_plan())
    delivery_jobs = [s for s in scheduler.scheduled if s.kind == "delivery"]
    assert len(delivery_jobs) == 1 and delivery_jobs[0].at == later
    assert delivery_jobs[0].payload["communication"] and delivery_jobs[0].payload["channel"] == "sms"
    assert result.deliveries == [(DELIVERY_ID, "deferred")]
    assert communication(target)["status"] == "in-progress"

    # Redelivered before the deferral ends: nothing is sent.
    early = executor(target, redis_conn, deliverer, scheduler).execute(intake_plan())
    assert early.deliveries == [(DELIVERY_ID, "already-deferred")] and len(deliverer.calls) == 1
    # When it is due, it is sent, once.
    due = executor(target, redis_conn, deliverer, scheduler, clock=lambda: later)
    assert due.execute(intake_plan()).deliveries == [(DELIVERY_ID, "completed")]
    assert due.execute(intake_plan()).deliveries == [(DELIVERY_ID, "already-completed")]
    assert len(deliverer.calls) == 2 and communication(target)["status"] == "completed"


def test_cancelling_the_workflow_withdraws_its_deferred_deliveries(target, redis_conn) -> None:
    """Discharge / workflow completion: a delivery deferred by quiet hours is a pending job of the flow;
    it is removed with the group's follow-ups, never sent, and its Communication says why."""
    from rq import Queue

    from fhir_smartflow.engine.plan import CancelGroup
    from fhir_smartflow.scheduling.scheduler import RqScheduler
    from tests.support.plans import GROUP

    later = NOW + timedelta(hours=10)
    deliverer = FakeDeliverer(DeliveryOutcome("deferred", retry_at=later), DeliveryOutcome("completed"))
    scheduler = RqScheduler(redis_conn, Keys("u:"), Queue("u", connection=redis_conn), lambda: NOW)
    executor(target, redis_conn, deliverer, scheduler).execute(intake_plan())
    [pending] = scheduler.pending_for(patient="Patient/p1", flows=("intake-forms",))
    assert pending.kind == "delivery" and pending.payload["group"] == GROUP
    assert scheduler.pending_for(group=GROUP) == [pending]

    cancel = CancelGroup(reason="patient discharged", identifier="c/1", patient="Patient/p1", flows=("intake-forms",))
    run = FlowRun("lifecycle-discharge", "1", "d/1", ran=True, reason="discharged", actions=(cancel,))
    result = executor(target, redis_conn, deliverer, scheduler).execute(Plan(trigger(), (run,)))
    assert result.deliveries == [(DELIVERY_ID, "cancelled")] and scheduler.pending_for(group=GROUP) == []
    comm = communication(target)
    assert comm["status"] == "not-done" and comm["statusReason"]["text"] == "patient discharged"
    validate_resource(comm)
    # A delivery job that had already been enqueued finds the withdrawn claim and sends nothing.
    late = executor(target, redis_conn, deliverer, scheduler, clock=lambda: later).execute(intake_plan())
    assert late.deliveries == [(DELIVERY_ID, "already-not-done")] and len(deliverer.calls) == 1


def test_deliverer_crash_is_never_resent(target, redis_conn) -> None:
    deliverer = FakeDeliverer(raises=RuntimeError("provider timeout after sending?"))
    first = executor(target, redis_conn, deliverer).execute(intake_plan())
    second = executor(target, redis_conn, deliverer).execute(intake_plan())
    assert first.deliveries == [(DELIVERY_ID, "unknown")]
    assert second.deliveries == [(DELIVERY_ID, "already-sending")]
    assert len(deliverer.calls) == 1


def test_outcome_is_recorded_on_rerun_after_the_update_failed(target, redis_conn) -> None:
    deliverer = FakeDeliverer()
    target.fail_update = FhirServerError("503", status=503)
    with pytest.raises(FhirServerError):
        executor(target, redis_conn, deliverer).execute(intake_plan())
    target.fail_update = None
    result = executor(target, redis_conn, deliverer).execute(intake_plan())
    assert result.deliveries == [(DELIVERY_ID, "already-completed")]
    assert communication(target)["status"] == "completed" and len(deliverer.calls) == 1


def test_no_deliverer_is_an_error_not_a_silent_drop(target, redis_conn) -> None:
    result = executor(target, redis_conn, deliverer=None).execute(intake_plan())
    assert any("no Deliverer" in e.message for e in result.errors)
    assert communication(target)["status"] == "in-progress"


def test_permanent_http_error_on_one_write_skips_its_delivery(target, redis_conn) -> None:
    deliverer = FakeDeliverer()
    original = target.create

    def create(resource, identifier):
        if resource["resourceType"] == "Communication":
            raise FhirBadRequest("POST Communication answered 400: bad medium", status=400)
        return original(resource, identifier)

    target.create = create
    result = executor(target, redis_conn, deliverer).execute(intake_plan())
    assert [e.status for e in result.errors] == [400, None]
    assert "was not written" in result.errors[1].message
    assert deliverer.calls == []
    assert any(r["resourceType"] == "Task" for r in target.resources.values())


def test_runs_that_did_not_run_are_skipped(target, redis_conn) -> None:
    plan = intake_plan()
    skipped = Plan(trigger=trigger(), runs=(FlowRun("intake-forms", "1", "g", False, "disabled", plan.actions),))
    result = executor(target, redis_conn, FakeDeliverer()).execute(skipped)
    assert result.written == [] and len(target.resources) == 1


def test_retry_without_a_time_waits_the_default_delay(target, redis_conn) -> None:
    deliverer = FakeDeliverer(DeliveryOutcome("retry", reason="provider 503"), DeliveryOutcome("completed"))
    scheduler = FakeScheduler()
    executor(target, redis_conn, deliverer, scheduler).execute(intake_plan())
    [job] = [s for s in scheduler.scheduled if s.kind == "delivery"]
    assert job.at == NOW + timedelta(minutes=5)
    again = executor(target, redis_conn, deliverer, scheduler).execute(intake_plan())
    assert again.deliveries == [(DELIVERY_ID, "already-retry")] and len(deliverer.calls) == 1


def test_scheduled_delivery_plan_finds_its_communication_by_identifier(target, redis_conn) -> None:
    """What the scheduling job does: a plan holding only the Deliver, rebuilt from the Schedule payload."""
    later = NOW + timedelta(hours=1)
    deliverer = FakeDeliverer(DeliveryOutcome("deferred", retry_at=later), DeliveryOutcome("completed"))
    scheduler = FakeScheduler()
    executor(target, redis_conn, deliverer, scheduler).execute(intake_plan())
    [job] = [s for s in scheduler.scheduled if s.kind == "delivery"]
    deliver = Deliver(**{k: job.payload[k] for k in ("channel", "recipient", "body", "identifier", "communication")})
    only_deliver = Plan(trigger=trigger(), runs=(FlowRun("intake-forms", "1", "g", True, "delivery", (deliver,)),))
    fired = executor(target, redis_conn, deliverer, scheduler, clock=lambda: later - timedelta(seconds=5))
    assert fired.execute(only_deliver).deliveries == [(DELIVERY_ID, "completed")]
    assert communication(target)["status"] == "completed"
    assert fired.execute(only_deliver).deliveries == [(DELIVERY_ID, "already-completed")]
    assert len(deliverer.calls) == 2


def test_a_key_error_in_a_write_is_a_bug_not_bad_data(target, redis_conn) -> None:
    """Our own KeyError / IndexError propagates (rq records the job as failed); only PlanDataError,
    FhirError and ResourceInvalid are recorded as an action's error."""
    original = target.create

    def create(resource, identifier):
        if resource["resourceType"] == "Communication":
            return original(resource, identifier)["no-such-field"]  # a bug in code the executor calls
        return original(resource, identifier)

    target.create = create
    with pytest.raises(KeyError, match="no-such-field"):
        executor(target, redis_conn, FakeDeliverer()).execute(intake_plan())


def test_a_missing_resource_is_recorded_as_a_data_problem(target, redis_conn) -> None:
    from fhir_smartflow.engine.plan import PatchTask

    plan = Plan(trigger=trigger(), runs=(FlowRun("intake-forms", "1", "g", True, "r", (PatchTask("no-such-task"),)),))
    result = executor(target, redis_conn).execute(plan)
    assert [e.message for e in result.errors] == ["Task with identifier no-such-task not found"]
