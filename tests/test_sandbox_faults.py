"""Fault injection: deterministic fail_first, rates, stalls, and off unless enabled."""

from __future__ import annotations

import time

import pytest
import requests

from fhir_smartflow.config import Settings
from fhir_smartflow.sandbox.app import create_sandbox_app
from fhir_smartflow.sandbox.faults import FaultInjector, FaultPlan

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}
PATIENT = {"resourceType": "Patient"}


def test_fail_first_is_deterministic_and_method_scoped(sandbox_server: str) -> None:
    plan = {"fail_first": 3, "statuses": [503, 429], "retry_after": 1, "methods": ["POST", "PUT"]}
    assert requests.post(f"{sandbox_server}/$faults", json=plan, timeout=5).status_code == 200
    assert requests.get(f"{sandbox_server}/Patient", timeout=5).status_code == 200  # GET is not in methods
    answers = [requests.post(f"{sandbox_server}/Patient", json=PATIENT, headers=FHIR, timeout=5) for _ in range(4)]
    assert [r.status_code for r in answers] == [503, 429, 503, 201]
    assert all(r.headers["Retry-After"] == "1" for r in answers[:3])
    assert answers[0].json()["resourceType"] == "OperationOutcome"
    assert answers[0].json()["issue"][0]["code"] == "transient"
    # nothing was stored by the failed requests
    assert requests.get(f"{sandbox_server}/Patient", timeout=5).json()["total"] == 1
    state = requests.get(f"{sandbox_server}/$faults", timeout=5).json()
    assert state["counters"]["failed"] == 3 and state["fail_first_remaining"] == 0


def test_status_rate_with_seed(sandbox_server: str) -> None:
    plan = {"status_rate": 0.3, "statuses": [503], "seed": 7, "methods": ["GET"]}
    requests.post(f"{sandbox_server}/$faults", json=plan, timeout=5)
    codes = [requests.get(f"{sandbox_server}/Patient", timeout=5).status_code for _ in range(100)]
    failed = codes.count(503)
    assert 15 <= failed <= 45, failed
    assert set(codes) == {200, 503}
    requests.delete(f"{sandbox_server}/$faults", timeout=5)
    assert all(requests.get(f"{sandbox_server}/Patient", timeout=5).status_code == 200 for _ in range(20))


def test_stall(sandbox_server: str) -> None:
    requests.post(f"{sandbox_server}/$faults", json={"stall_rate": 1.0, "stall_seconds": 0.3}, timeout=5)
    started = time.monotonic()
    assert requests.get(f"{sandbox_server}/metadata", timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_bad_plans_are_refused(sandbox_server: str) -> None:
    for plan, text in [
        ({"status_rate": 2}, "status_rate"),
        ({"statuses": [200]}, "statuses"),
        ({"fail_frist": 1}, "unknown fault settings: fail_frist"),
        ({"stall_seconds": 600}, "stall_seconds"),
    ]:
        response = requests.post(f"{sandbox_server}/$faults", json=plan, timeout=5)
        assert response.status_code == 400 and text in response.json()["issue"][0]["diagnostics"], plan


def test_faults_are_off_unless_enabled(serve_app) -> None:
    app = create_sandbox_app(Settings(), start_notifier=False)
    server = serve_app(app)
    response = requests.post(f"{server.url}/$faults", json={"fail_first": 1}, timeout=5)
    assert response.status_code == 403 and "--faults" in response.json()["issue"][0]["diagnostics"]
    assert requests.post(f"{server.url}/Patient", json=PATIENT, headers=FHIR, timeout=5).status_code == 201


def test_injector_stalls_through_the_injected_sleep() -> None:
    slept: list[float] = []
    injector = FaultInjector(sleep=slept.append)
    injector.configure(FaultPlan(stall_rate=1.0, stall_seconds=2.0, fail_first=1, statuses=(429,), retry_after=3))
    first, second = injector.apply("POST"), injector.apply("POST")
    assert (first.status, first.retry_after, second.status) == (429, 3, None)
    assert slept == [2.0, 2.0]
