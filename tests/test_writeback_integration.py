"""FhirWriteBack + PlanExecutor writing resource by resource (a server without transactions) against the
sandbox FHIR store over HTTP and real Redis: conditional create, the lock fallback, bodiless answers.

The Deliverer and Scheduler are in-memory fakes (tests/support/fakes.py): the writes are under test here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import CancelGroup, FlowRun, PatchTask, Plan, WriteResource
from fhir_smartflow.engine.validation import validate_resource
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirUnavailable
from fhir_smartflow.fhir.writeback import FhirWriteBack
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.retry import RetryPolicy
from fhir_smartflow.worker.execute import PlanExecutor
from tests.support.fakes import FakeDeliverer, FakeScheduler
from tests.support.fhir import (
    Sandbox,
    clear_faults,
    prefer_minimal,
    search_all,
    seed,
    serve_sandbox,
    set_faults,
    without_transactions,
)
from tests.support.plans import DELIVERY_ID, GROUP, NOW, SYSTEM, TASK_ID, intake_plan, sdc_task, trigger

pytestmark = pytest.mark.integration


CONSENT = {
    "resourceType": "Consent",
    "id": "c1",
    "status": "active",
    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"reference": "Patient/p1"},
    "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
}


@pytest.fixture
def server(serve_app: Callable[..., Any]) -> Iterator[Sandbox]:
    """The sandbox without transaction support, so every write is its own request; one Patient, one Consent."""
    sandbox = serve_sandbox(serve_app, variant=without_transactions)
    seed(sandbox, {"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe"}]})
    seed(sandbox, CONSENT)
    yield sandbox
    sandbox.close()


@pytest.fixture
def minimal(serve_app: Callable[..., Any]) -> Iterator[Sandbox]:
    """The same, answering writes without a body (only Location)."""
    sandbox = serve_sandbox(serve_app, variant=lambda app: prefer_minimal(without_transactions(app)))
    yield sandbox
    sandbox.close()


def all_of(server: Sandbox, rtype: str) -> list[dict[str, Any]]:
    return search_all(server, rtype)


class FaultScript:
    """Retry-After per fault: ``$faults`` holds one plan at a time, so each time the client backs off
    (its injected sleep) after the current plan's last failure, the next plan is armed."""

    def __init__(self, base: str, *plans: dict[str, Any]) -> None:
        self.base, self.plans, self.sleeps = base, list(plans), []
        self._left = 0
        self._arm()

    def _arm(self) -> None:
        if self.plans:
            plan = self.plans.pop(0)
            set_faults(self.base, **plan)
            self._left = plan["fail_first"]

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._left -= 1
        if self._left == 0:
            self._arm()


def make_executor(server, redis_conn, *, sleeps=None, deliverer=None, scheduler=None, conditional=True, metrics=None):
    sleep = sleeps.sleep if isinstance(sleeps, FaultScript) else (sleeps if sleeps is not None else []).append
    client = FhirClient(server, retry=RetryPolicy(max_retries=4), sleep=sleep)
    keys = Keys("t:")
    target = FhirWriteBack(client, SYSTEM, redis_conn, keys, conditional_create=conditional)
    executor = PlanExecutor(
        target,
        redis_conn,
        keys,
        Settings(),
        deliverer=deliverer or FakeDeliverer(),
        scheduler=scheduler or FakeScheduler(),
        metrics=metrics,
        clock=lambda: NOW,
    )
    return executor, target


def test_plan_writes_exactly_once_under_faults_and_redelivery(server, redis_conn) -> None:
    deliverer, scheduler, metrics = FakeDeliverer(), FakeScheduler(), Metrics(redis_conn, "m:")
    faults = FaultScript(
        server,
        {"fail_first": 2, "statuses": [503], "retry_after": 1},
        {"fail_first": 1, "statuses": [429], "retry_after": 2},
    )
    executor, _ = make_executor(
        server, redis_conn, sleeps=faults, deliverer=deliverer, scheduler=scheduler, metrics=metrics
    )
    sleeps = faults.sleeps

    first = executor.execute(intake_plan())
    assert first.ok, first.errors
    assert sleeps[:3] == [1.0, 1.0, 2.0]  # Retry-After honoured (through the injected sleep)
    assert [(w.resource_type, w.created) for w in first.written] == [
        ("Task", True),
        ("Provenance", True),
        ("Communication", True),
        ("Provenance", True),
    ]
    # The same plan again (redelivered notification, rq retry) and from a second worker.
    again = executor.execute(intake_plan())
    other, _ = make_executor(server, redis_conn, deliverer=deliverer, scheduler=scheduler)
    third = other.execute(intake_plan())
    for result in (again, third):
        assert result.ok and all(w.created is False for w in result.written)
        assert result.deliveries == [(DELIVERY_ID, "already-completed")]

    tasks, comms, provs = all_of(server, "Task"), all_of(server, "Communication"), all_of(server, "Provenance")
    assert len(tasks) == 1 and len(comms) == 1 and len(provs) == 2
    assert len(deliverer.calls) == 1  # sent once
    _, recipient, consents = deliverer.calls[0]
    assert recipient["id"] == "p1" and [c["id"] for c in consents] == ["c1"]

    [comm] = comms
    assert comm["status"] == "completed" and comm["sent"] == "2026-03-02T15:00:00Z"
    for resource in tasks + comms + provs:
        validate_resource(resource)
    task = tasks[0]
    task_prov = next(p for p in provs if p["target"][0]["reference"].startswith(f"Task/{task['id']}/"))
    assert task_prov["target"][0]["reference"] == f"Task/{task['id']}/_history/1"
    assert task_prov["entity"] == [{"role": "source", "what": {"reference": "Patient/p1/_history/1"}}]
    assert task_prov["agent"][0]["who"] == {"reference": "Device/fhir-smartflow"}
    assert task_prov["policy"] == ["urn:fhir-smartflow:flow:intake-forms:1"]
    assert task_prov["meta"]["tag"][0] == {"system": SYSTEM, "code": TASK_ID + "/provenance"}
    assert [s.kind for s in scheduler.scheduled] == ["reminder"] * 3  # the scheduler dedupes by identifier
    assert metrics.counter_value("writes", type="Task", result="created") == 1
    assert metrics.counter_value("writes", type="Task", result="existing") == 1  # the rerun on `executor`
    assert metrics.counter_value("writes", type="Provenance", result="created") == 2


def test_conditional_create_header_is_url_encoded(server, redis_conn) -> None:
    executor, _ = make_executor(server, redis_conn)
    executor.execute(intake_plan())
    posts = [h for m, p, h in server.log.requests if m == "POST" and p == "/Task"]
    assert posts[0]["If-None-Exist"] == f"identifier={SYSTEM}|{TASK_ID}"
    prov_posts = [h for m, p, h in server.log.requests if m == "POST" and p == "/Provenance"]
    assert prov_posts[0]["If-None-Exist"] == f"_tag={SYSTEM}|{TASK_ID}/provenance"


def test_lock_fallback_creates_once_under_concurrent_writers(redis_conn, server) -> None:
    with_lock = server  # the writers below send no If-None-Exist: only the Redis lock prevents duplicates
    results: list[bool] = []
    errors: list[Exception] = []

    def write() -> None:
        client = FhirClient(with_lock, retry=RetryPolicy(max_retries=2), sleep=lambda s: None)
        target = FhirWriteBack(client, SYSTEM, redis_conn, Keys("t:"), conditional_create=False)
        try:
            results.append(target.create_with_status(sdc_task(), TASK_ID)[1])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(all_of(with_lock, "Task")) == 1
    assert sorted(results) == [False] * 7 + [True]
    assert not redis_conn.keys("t:lock:*")  # every lock released


def test_server_without_response_bodies_location_is_followed(redis_conn, minimal) -> None:
    seed(minimal, {"resourceType": "Patient", "id": "p1"})
    executor, target = make_executor(minimal, redis_conn)
    result = executor.execute(intake_plan())
    assert result.ok, result.errors
    assert target.find_by_identifier("Task", TASK_ID)["id"] == result.written[0].id
    assert all_of(minimal, "Communication")[0]["status"] == "completed"


def test_cancel_group_cancels_open_siblings_but_not_keep(server, redis_conn) -> None:
    open_task = seed(server, sdc_task("intake-forms/a/task/1"))
    keep = seed(server, sdc_task("intake-forms/b/task/2"))
    done = seed(server, sdc_task("intake-forms/c/task/3", status="completed"))
    other_group = seed(server, sdc_task("other/d/task/4", group="other/xyz"))
    scheduler = FakeScheduler()
    executor, _ = make_executor(server, redis_conn, scheduler=scheduler)
    cancel = CancelGroup(reason="workflow completed", identifier="cancel-1", group=GROUP, keep="intake-forms/b/task/2")
    plan = Plan(trigger=trigger(), runs=(FlowRun("intake-forms", "1", GROUP, True, "completed", (cancel,)),))
    result = executor.execute(plan)
    assert result.cancelled == [f"Task/{open_task['id']}"]
    stored = {t["id"]: t for t in all_of(server, "Task")}
    assert stored[open_task["id"]]["status"] == "cancelled"
    assert stored[open_task["id"]]["statusReason"] == {"text": "workflow completed"}
    assert stored[keep["id"]]["status"] == "requested"
    assert stored[done["id"]]["status"] == "completed"
    assert stored[other_group["id"]]["status"] == "requested"
    assert scheduler.cancels == [{"group": GROUP, "patient": None, "flows": ()}]


def test_cancel_by_patient_only_touches_our_flows(server, redis_conn) -> None:
    ours = seed(server, sdc_task("intake-forms/a/task/1"))
    foreign = sdc_task("x/task")
    foreign["instantiatesUri"] = "urn:fhir-smartflow:flow:other-flow:1#x"
    foreign = seed(server, foreign)
    executor, _ = make_executor(server, redis_conn)
    cancel = CancelGroup(reason="discharged", identifier="c", patient="Patient/p1", flows=("intake-forms",))
    plan = Plan(trigger=trigger(), runs=(FlowRun("intake-forms", "1", GROUP, True, "discharge", (cancel,)),))
    assert executor.execute(plan).cancelled == [f"Task/{ours['id']}"]
    assert {t["id"]: t["status"] for t in all_of(server, "Task")}[foreign["id"]] == "requested"


def test_patch_task_marks_overdue_only_when_open(server, redis_conn) -> None:
    seed(server, sdc_task(TASK_ID))
    seed(server, sdc_task("done/task", status="completed"))
    executor, _ = make_executor(server, redis_conn)
    patches = (
        PatchTask(identifier=TASK_ID, business_status="overdue"),
        PatchTask(identifier="done/task", business_status="overdue"),
    )
    plan = Plan(trigger=trigger(), runs=(FlowRun("intake-forms", "1", GROUP, True, "due", patches),))
    assert executor.execute(plan).ok
    by_ident = {t["identifier"][0]["value"]: t for t in all_of(server, "Task")}
    assert by_ident[TASK_ID]["businessStatus"]["text"] == "overdue"
    assert "businessStatus" not in by_ident["done/task"]
    validate_resource(by_ident[TASK_ID])


def test_permanent_errors_are_recorded_and_the_rest_continues(server, redis_conn) -> None:
    bad = WriteResource("Task", "bad/task", {"resourceType": "Task", "status": "requested"})  # no intent
    executor, _ = make_executor(server, redis_conn)
    result = executor.execute(intake_plan(extra=(bad,)))
    assert [e.action for e in result.errors] == ["WriteResource Task bad/task"]
    assert "intent" in result.errors[0].message
    assert len(all_of(server, "Task")) == 1 and len(all_of(server, "Communication")) == 1


def test_transient_failure_raises_so_the_plan_is_retried(server, redis_conn) -> None:
    executor, _ = make_executor(server, redis_conn)
    set_faults(server, fail_first=50, statuses=[503], retry_after=0)
    with pytest.raises(FhirUnavailable):
        executor.execute(intake_plan())
    clear_faults(server)
    result = executor.execute(intake_plan())  # the rq retry
    assert result.ok and len(all_of(server, "Task")) == 1
