"""The executor against the REAL sandbox FHIR store (fhir_smartflow/sandbox/) over HTTP, with its own
fault injection: exactly-once under 503/429 and redelivery, validity of what it stores, cancellation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import CancelGroup, FlowRun, Plan, WriteResource
from fhir_smartflow.engine.validation import validate_resource
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.writeback import FhirWriteBack
from fhir_smartflow.retry import RetryPolicy
from fhir_smartflow.worker.execute import PlanExecutor
from tests.support.fakes import FakeDeliverer, FakeScheduler
from tests.support.fhir import seed, serve_sandbox
from tests.support.plans import GROUP, NOW, SYSTEM, TASK_ID, intake_plan, trigger

pytestmark = pytest.mark.integration
FHIR = {"Content-Type": "application/fhir+json"}


def _executor(base: str, redis_conn, sleeps: list[float], deliverer: FakeDeliverer) -> tuple[PlanExecutor, FhirClient]:
    client = FhirClient(base, retry=RetryPolicy(max_retries=5), sleep=sleeps.append)
    keys = Keys("s:")
    target = FhirWriteBack(client, SYSTEM, redis_conn, keys)
    executor = PlanExecutor(
        target, redis_conn, keys, Settings(), deliverer=deliverer, scheduler=FakeScheduler(), clock=lambda: NOW
    )
    return executor, client


def _all(client: FhirClient, rtype: str) -> list[dict]:
    return client.search(rtype, {})


def test_exactly_once_on_the_sandbox_under_faults(sandbox_server: str, redis_conn) -> None:
    requests.put(f"{sandbox_server}/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers=FHIR, timeout=5)
    fault = {"fail_first": 3, "statuses": [503, 429], "retry_after": 1}
    assert requests.post(f"{sandbox_server}/$faults", json=fault, timeout=5).status_code < 300
    sleeps: list[float] = []
    deliverer = FakeDeliverer()
    executor, client = _executor(sandbox_server, redis_conn, sleeps, deliverer)

    first = executor.execute(intake_plan())
    again = executor.execute(intake_plan())
    requests.delete(f"{sandbox_server}/$faults", timeout=5)

    assert sleeps[:3] == [1.0, 1.0, 1.0]
    tasks, comms = _all(client, "Task"), _all(client, "Communication")
    assert len(tasks) == 1 and len(comms) == 1
    assert comms[0]["status"] == "completed" and len(deliverer.calls) == 1
    for resource in tasks + comms:
        validate_resource(resource)
    assert [w.created for w in again.written if w.resource_type != "Provenance"] == [False, False]
    # Provenance is matched by `_tag` (R4 Provenance has no identifier): each exists exactly once.
    assert not first.errors and not again.errors, (first.errors, again.errors)
    provs = _all(client, "Provenance")
    assert len(provs) == 2
    for p in provs:
        validate_resource(p)


def test_cancel_group_on_the_sandbox(sandbox_server: str, redis_conn) -> None:
    requests.put(f"{sandbox_server}/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers=FHIR, timeout=5)
    executor, client = _executor(sandbox_server, redis_conn, [], FakeDeliverer())
    executor.execute(intake_plan())
    keep_plan = intake_plan()  # a sibling task in the same group that must survive
    cancel = CancelGroup(reason="workflow completed", identifier="c", group=GROUP, keep=TASK_ID)
    sibling = dict(keep_plan.runs[0].actions[0].resource)
    sibling["identifier"] = [{"system": SYSTEM, "value": "intake-forms/other/task/dddddddddddddddddddd"}]
    plan = Plan(
        trigger=trigger(),
        runs=(
            FlowRun(
                "intake-forms",
                "1",
                GROUP,
                True,
                "t",
                (WriteResource("Task", "intake-forms/other/task/dddddddddddddddddddd", sibling), cancel),
            ),
        ),
    )
    result = executor.execute(plan)
    statuses = {t["identifier"][0]["value"]: t["status"] for t in _all(client, "Task")}
    assert statuses == {TASK_ID: "requested", "intake-forms/other/task/dddddddddddddddddddd": "cancelled"}
    assert len(result.cancelled) == 1


def test_plan_writes_go_in_one_transaction_with_their_provenance(sandbox_server: str, redis_conn) -> None:
    requests.put(f"{sandbox_server}/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers=FHIR, timeout=5)
    executor, client = _executor(sandbox_server, redis_conn, [], FakeDeliverer())
    sent: list[tuple[str, str]] = []
    original = client.session.request

    def recording(method: str, url: str, *args, **kwargs):
        sent.append((method, url.removeprefix(sandbox_server)))
        return original(method, url, *args, **kwargs)

    client.session.request = recording  # type: ignore[method-assign]
    first = executor.execute(intake_plan())
    writes = [(m, u) for m, u in sent if m in {"POST", "PUT"}]
    # Task + Communication in one transaction Bundle, then both Provenances (targets versioned) in another.
    assert writes[:2] == [("POST", ""), ("POST", "")]
    assert not any(u.startswith(("/Task", "/Provenance")) for m, u in writes)  # the delivery updates the Communication
    kinds = [(w.resource_type, w.created) for w in first.written]
    assert kinds == [("Task", True), ("Provenance", True), ("Communication", True), ("Provenance", True)]

    again = executor.execute(intake_plan())  # a rerun: every conditional create finds its match
    assert [w.created for w in again.written] == [False] * 4
    assert [w.id for w in again.written] == [w.id for w in first.written]
    provs = _all(client, "Provenance")
    assert len(provs) == 2
    stored = {f"{w.resource_type}/{w.id}/_history/1" for w in first.written if w.resource_type != "Provenance"}
    assert {p["target"][0]["reference"] for p in provs} == stored  # the stored versions, as one by one
    for p in provs:
        validate_resource(p)


def test_without_conditional_create_writes_fall_back_to_one_by_one(sandbox_server: str, redis_conn) -> None:
    requests.put(f"{sandbox_server}/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers=FHIR, timeout=5)
    client = FhirClient(sandbox_server, retry=RetryPolicy(max_retries=1))
    target = FhirWriteBack(client, SYSTEM, redis_conn, Keys("s:"), conditional_create=False)
    assert not target.supports_transactions()
    executor = PlanExecutor(
        target,
        redis_conn,
        Keys("s:"),
        Settings(),
        deliverer=FakeDeliverer(),
        scheduler=FakeScheduler(),
        clock=lambda: NOW,
    )
    result = executor.execute(intake_plan())
    assert result.ok, result.errors
    assert len(_all(client, "Task")) == 1 and len(_all(client, "Provenance")) == 2


@pytest.mark.parametrize("profile", ["lenient", "hapi"])
def test_a_plan_writes_in_two_requests_on_a_server_that_answers_minimally_by_default(
    serve_app: Callable[..., Any], redis_conn, profile: str
) -> None:
    """HAPI puts the stored resources in a transaction answer only for ``Prefer: return=representation``;
    without it, each written entry would be read back with a GET of its own."""
    sandbox = serve_sandbox(serve_app, profile=profile)
    try:
        seed(sandbox, {"resourceType": "Patient", "id": "p1"})
        seed(sandbox, {"resourceType": "Device", "id": Settings().fhir.device_id})  # Provenance's agent
        executor, client = _executor(sandbox, redis_conn, [], FakeDeliverer())
        before = len(sandbox.log.requests)
        result = executor.execute(intake_plan())
        assert result.ok, result.errors
        sent = [(r.method, r.path) for r in sandbox.log.requests[before:]]
        assert sent.count(("POST", "/")) == 2  # Task + Communication, then their Provenances
        written = ("/Task", "/Communication", "/Provenance")
        assert not [(m, p) for m, p in sent if m == "GET" and p.startswith(written)], sent
        provs = _all(client, "Provenance")
        stored = {f"{w.resource_type}/{w.id}/_history/1" for w in result.written if w.resource_type != "Provenance"}
        assert {p["target"][0]["reference"] for p in provs} == stored
    finally:
        sandbox.close()
