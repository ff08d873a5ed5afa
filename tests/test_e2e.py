"""End to end with real processes: sandbox FHIR store → `serve` → real Redis → `worker` → back to the store.

A Patient created in the sandbox makes the sandbox notify the webhook (Backport topic-based with each
payload content, or classic rest-hook); the worker runs the shipped intake flow and writes the intake
Task, the review Task, the Communications and a Provenance for each, exactly once — also when every
notification arrives three times and when the store answers 503 / 429 to the first writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task

from fhir_smartflow import defaults
from fhir_smartflow.sandbox.subscriptions import self_subscription
from tests.support.fhir import client_id, search_all, wait_subscription
from tests.support.net import wait_for
from tests.support.service import start_service
from tests.support.settle import event_state, wait_settled

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}
SECRET = "e2e-secret-value"
PREFIX = "e2e:"
MODELS = {"Task": Task, "Communication": Communication, "Provenance": Provenance}
INTAKE_TASKS = 2  # send-form Task + the case manager's review Task (flows/examples/intake-forms.toml)
INTAKE_COMMUNICATIONS = 3  # sms, email, portal


@dataclass
class Stack:
    store: str  # sandbox FHIR base
    notify: str  # webhook endpoint
    conn: redis.Redis
    worker_log: Callable[[], str]
    subscribed: set[str] = field(default_factory=set)
    notifications: int = 0  # sent by the store so far: one per subscription per Patient change

    def subscribe(self, sid: str, style: str, payload: str) -> None:
        sub = self_subscription(sid, self.notify, f"X-Smartflow-Secret: {SECRET}", "Patient", style, payload, 0)
        assert requests.put(f"{self.store}/Subscription/{sid}", json=sub, headers=FHIR, timeout=10).status_code < 300
        wait_subscription(self.store, sid)
        self.subscribed.add(sid)

    def unsubscribe(self, *sids: str) -> None:
        for sid in sids:
            requests.delete(f"{self.store}/Subscription/{sid}", timeout=10)
            self.subscribed.discard(sid)

    def new_patient(self) -> str:
        pid = client_id()
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": "Testperson"}], "birthDate": "1970-05-06"}
        # PUT (update-as-create): the injected faults below only hit POSTs, i.e. the worker's writes.
        assert requests.put(f"{self.store}/Patient/{pid}", json=body, headers=FHIR, timeout=10).status_code == 201
        self.notifications += len(self.subscribed)
        return f"Patient/{pid}"

    def search(self, rtype: str, **params: str) -> list[dict]:
        return search_all(self.store, rtype, params)

    def written_for(self, patient: str) -> list[dict]:
        return self.search("Task", patient=patient) + self.search("Communication", subject=patient)

    def assert_intake_once(self, patient: str) -> None:
        def complete() -> bool:
            written = self.written_for(patient)
            return len(written) >= INTAKE_TASKS + INTAKE_COMMUNICATIONS and bool(self._provenance_for(written))

        wait_for(complete, f"the intake flow for {patient}", log=self.worker_log)
        # Every notification the store sent is received and finished: any duplicate would be written now.
        wait_settled(lambda: event_state(self.conn, defaults.QUEUE_NAME, PREFIX),
                     webhook_deliveries=self.notifications, log=self.worker_log)  # fmt: skip
        written = self.written_for(patient)
        tasks = [r for r in written if r["resourceType"] == "Task"]
        assert len(tasks) == INTAKE_TASKS and len(written) == INTAKE_TASKS + INTAKE_COMMUNICATIONS
        assert len({r["identifier"][0]["value"] for r in written}) == len(written)
        for resource in written:
            MODELS[resource["resourceType"]].model_validate(resource)
        provenance = self._provenance_for(written)
        assert provenance is not None and len(provenance) == len(written)  # exactly one per write
        for p in provenance:
            Provenance.model_validate(p)
        # Both Tasks of this run share one workflow instance.
        assert len({t["groupIdentifier"]["value"] for t in tasks}) == 1

    def _provenance_for(self, written: list[dict]) -> list[dict] | None:
        found = []
        for resource in written:
            ref = f"{resource['resourceType']}/{resource['id']}"
            matches = [
                p
                for p in self.search(
                    "Provenance", _tag=f"urn:fhir-smartflow:id|{resource['identifier'][0]['value']}/provenance"
                )
                if p["target"][0]["reference"].startswith(ref)
            ]
            if not matches:
                return None
            found += matches
        return found


@pytest.fixture
def stack(processes, redis_url: str, redis_conn: redis.Redis, tmp_path: Path) -> Iterator[Stack]:
    sections = {
        "fhir": {"max_retries": 8, "backoff_base_seconds": 0.05, "backoff_max_seconds": 1.0},
        "scheduler": {"interval_seconds": 0.2},
    }
    service = start_service(
        processes, tmp_path, redis_url=redis_url, prefix=PREFIX, secret=("E2E_SECRET", SECRET), sections=sections,
        faults=True, profile="hapi",  # strict: ids, references and their types checked, secrets masked
    )  # fmt: skip
    worker = service.workers[0]
    yield Stack(service.store, service.notify, redis_conn, worker.output)
    assert "Testperson" not in service.logs()  # no patient names in INFO logs


def test_backport_payloads_triple_delivery_and_store_faults(stack: Stack) -> None:
    # Full resource, every notification delivered three times (three subscriptions, one secret), while
    # the store answers 503 / 429 (Retry-After 1) to the first five writes.
    sids = [f"full-{n}" for n in range(3)]
    for sid in sids:
        stack.subscribe(sid, "backport", "full-resource")
    fault = {"fail_first": 5, "statuses": [503, 429], "retry_after": 1, "methods": ["POST"]}
    assert requests.post(f"{stack.store}/$faults", json=fault, timeout=10).status_code == 200
    stack.assert_intake_once(stack.new_patient())
    state = requests.get(f"{stack.store}/$faults", timeout=10).json()
    assert state["fail_first_remaining"] == 0 and state["counters"]["failed"] == 5, state  # faults were hit
    assert {int(k) for k in state["counters"]["by_status"]} == {503, 429}, state
    stack.unsubscribe(*sids)

    # id-only and empty payloads: the worker reads the focus / re-queries the subscription's criteria.
    for payload in ("id-only", "empty"):
        stack.subscribe(payload, "backport", payload)
        stack.assert_intake_once(stack.new_patient())
        stack.unsubscribe(payload)


def test_classic_rest_hook(stack: Stack) -> None:
    stack.subscribe("classic", "classic", "full-resource")
    stack.assert_intake_once(stack.new_patient())
    stack.unsubscribe("classic")
    stack.subscribe("classic-empty", "classic", "empty")
    stack.assert_intake_once(stack.new_patient())
