"""The Workflow Builder in a real browser (Debian's Chromium under Playwright) against the real service: the
sandbox FHIR store, `serve` with the console, a real Redis and a separate `worker`.

An administrator logs in, writes an SMS template with merge fields, builds a flow with a send-form task
(due 3 days after registration, following Monday, a reminder), sees the loader's error for a bad FHIRPath at
the field, tests the flow on a sandbox patient without writing anything, saves it, and watches a new
Patient get the Task and the run appear in the history; disabled, the flow does nothing for the next
Patient; a failed job is replayed from the Operations page. Screenshots of the main pages go to
docs/console/ when ``SMARTFLOW_CONSOLE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry

from fhir_smartflow.console.accounts import Accounts
from fhir_smartflow.console.keys import ConsoleKeys
from fhir_smartflow.console.reload import ReloadBus
from fhir_smartflow.defaults import QUEUE_NAME
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.queueing import PROCESS_EVENT, job_description
from fhir_smartflow.sandbox.subscriptions import self_subscription
from tests.support.fhir import client_id, search_all, wait_subscription
from tests.support.net import wait_for
from tests.support.procs import ROOT
from tests.support.service import SECRET_HEADER, Service, start_service
from tests.support.settle import event_state, wait_settled

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}
SECRET = "console-browser-secret"
PREFIX = "cb:"
ADMIN, PASSWORD = "ann", "a long enough test password"
QUESTIONNAIRE = "http://example.org/fhir/Questionnaire/intake"
SCREENSHOTS = ROOT / "docs" / "console"


@dataclass
class Console:
    service: Service
    base: str  # the console's URL
    conn: redis.Redis
    flows_dir: Path

    def new_patient(self, family: str) -> str:
        pid = client_id(12)
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": ["Sam"]}],
                "birthDate": "1980-02-03", "telecom": [{"system": "phone", "value": "+15555550123"}]}  # fmt: skip
        put = requests.put(f"{self.service.store}/Patient/{pid}", json=body, headers=FHIR, timeout=10)
        assert put.status_code == 201, put.text
        return pid

    def tasks(self, pid: str) -> list[dict[str, Any]]:
        return search_all(self.service.store, "Task", {"patient": f"Patient/{pid}"})

    def reloaded(self, generation: int) -> None:
        """The worker (the process that runs flows) has loaded change ``generation`` (console/reload.py)."""
        bus = ReloadBus(self.conn, ConsoleKeys(PREFIX), lambda: datetime.now(UTC))

        def done() -> bool:
            seen = bus.status()
            return any(s.role == "worker" and s.generation >= generation and s.ok for s in seen)

        wait_for(done, f"the worker to load change {generation}", log=self.service.logs, timeout=20)


@pytest.fixture
def console(processes, redis_url: str, redis_conn: redis.Redis, tmp_path: Path) -> Iterator[Console]:
    site = tmp_path / "site"
    flows = site / "flows"
    shutil.copytree(ROOT / "flows" / "examples", flows)
    (flows / "intake-forms.toml").unlink()  # the only other flow on patient.registered
    shutil.copytree(ROOT / "templates", site / "templates")
    users = site / "console-users.json"
    Accounts.build(str(users), None, ConsoleKeys(PREFIX)).add(ADMIN, PASSWORD, "admin")
    sections = {
        "engine": {"flows": [str(flows)], "templates": [str(site / "templates")], "mappings": [str(ROOT / "mappings")]},
        "console": {"users_file": str(users), "reload_poll_seconds": 0.2},
        "scheduler": {"interval_seconds": 0.2},
    }
    env = {"SMARTFLOW_CONSOLE_SECRET": "k" * 48}
    service = start_service(
        processes, tmp_path, redis_url=redis_url, prefix=PREFIX, secret=("CB_SECRET", SECRET), sections=sections,
        env=env,
    )  # fmt: skip
    # localhost: a secure context for Chromium, so the console's Secure session cookie is sent over HTTP.
    base = service.serve_url.replace("127.0.0.1", "localhost") + "/console"
    yield Console(service, base, redis_conn, flows)
    assert "Pat-Browser" not in service.logs()  # no patient names in the logs


def _shot(page: Any, name: str) -> None:
    if os.environ.get("SMARTFLOW_CONSOLE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _subscribe(console: Console) -> None:
    store = console.service.store
    header = f"{SECRET_HEADER}: {SECRET}"
    sub = self_subscription("console", console.service.notify, header, "Patient", "backport", "full-resource", 0)
    assert requests.put(f"{store}/Subscription/console", json=sub, headers=FHIR, timeout=10).status_code < 300
    wait_subscription(store, "console")


def _failed_job(console: Console, pid: str) -> str:
    """A Patient event whose job failed for good (as when the FHIR server was down through every retry)."""
    resource = requests.get(f"{console.service.store}/Patient/{pid}", timeout=10).json()
    event = ResourceEvent("sandbox", "Patient", pid, datetime.now(UTC).isoformat(), version_id="1",
                          interaction="create", resource=resource)  # fmt: skip
    job = Job.create(PROCESS_EVENT, args=[event.to_dict()], connection=console.conn,
                     description=job_description(event), origin=QUEUE_NAME)  # fmt: skip
    job.save()
    registry = FailedJobRegistry(queue=Queue(QUEUE_NAME, connection=console.conn))
    registry.add(job, exc_string="Traceback ...\nFhirUnavailable: 503 from the FHIR server")
    return job.id


def settle(console: Console, webhook_deliveries: int) -> None:
    state = lambda: event_state(console.conn, QUEUE_NAME, PREFIX)  # noqa: E731
    wait_settled(state, webhook_deliveries=webhook_deliveries, log=console.service.logs)


def _runs_shown(page: Any, console: Console, pid: str) -> int:
    """The runs the history page lists for the patient (the page loaded again each time)."""
    page.goto(f"{console.base}/history?patient={pid}")
    return int(page.locator(".run").count())


def test_build_test_save_watch_disable_and_replay_in_the_browser(console: Console, page: Any) -> None:
    page.set_default_timeout(15_000)
    sandbox_patient = console.new_patient("Pat-Browser")  # before any subscription: nothing runs for it

    # Nobody without logging in.
    page.goto(f"{console.base}/flows")
    assert "/login" in page.url
    _shot(page, "login")
    page.get_by_label("User").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/console/**flows**")

    # An SMS template with merge fields, one of them put in with the Insert menu.
    page.goto(f"{console.base}/templates/new")
    page.get_by_label("Template id").fill("welcome-sms")
    page.get_by_label("Name (required)").fill("Welcome form (SMS)")
    page.get_by_label("sms", exact=True).check()
    body = page.get_by_label("Content")
    body.fill("Hi {{ patient.first_name }}, please fill in {{ form.title }} by ")
    page.get_by_label("Insert merge field").select_option("task.due")
    page.get_by_role("button", name="Insert", exact=True).click()
    assert body.input_value().endswith("by {{ task.due }}")
    page.locator("#preview").get_by_text("Hi Alex, please fill in").wait_for()  # the live preview, sample patient
    _shot(page, "template-editor")
    page.get_by_role("button", name="Save").click()
    page.get_by_text("Saved template welcome-sms.").wait_for()

    # The flow: a bad FHIRPath first.
    page.goto(f"{console.base}/flows/new")
    page.get_by_label("Flow id").fill("welcome-forms")
    page.get_by_label("Workflow name").fill("Welcome forms on registration")
    page.get_by_label("Trigger event").select_option("patient.registered")
    condition = page.get_by_label("Condition (FHIRPath, optional)")
    condition.fill("birthdate.exists()")  # checked as typed against the trigger's resource type (Patient)
    page.locator("#condition-live").get_by_text("which the Patient that triggers it does not have").wait_for()
    condition.fill("birthDate <= today() -")
    page.get_by_label("Task name").fill("Send welcome form")
    page.get_by_label("Action type").select_option("send-form")
    page.get_by_label("Action item").fill(QUESTIONNAIRE)
    page.get_by_label("Template").select_option("welcome-sms")
    page.locator("#actions-0-methods-sms").check()
    page.get_by_label("Amount (X)").fill("3")
    page.get_by_label("Unit", exact=True).select_option("days")
    page.get_by_label("Before / after").select_option("after")
    page.get_by_label("Anchor (Y)").select_option("event")
    page.get_by_label("Weekend rule").select_option("next-monday")
    page.get_by_label("Responsible").select_option("patient")
    page.get_by_label("Reminder: how long before due").fill("1")
    page.get_by_role("button", name="Check").click()
    error = page.locator("#condition-error")
    error.wait_for()
    assert (
        error.get_attribute("role") == "alert"
        and page.get_by_label("Condition (FHIRPath, optional)").get_attribute("aria-invalid") == "true"
    )
    _shot(page, "flow-editor-error")
    assert not (console.flows_dir / "welcome-forms.toml").exists()  # nothing saved while invalid

    # Fixed, then tested on the sandbox patient: it would run, write the form Task and text the patient.
    page.get_by_label("Condition (FHIRPath, optional)").fill("birthDate.exists()")
    page.get_by_label("Patient from the FHIR server (name or id)").fill("Pat-Browser")
    page.get_by_role("button", name="Test", exact=True).click()
    result = page.locator("#dry-run")
    result.get_by_text("this flow RUNS").wait_for()
    assert f"Patient/{sandbox_patient}" in result.inner_text()
    assert "Writes Task (valid R4B)" in result.inner_text()
    assert "Message via sms" in result.inner_text() and "Hi Sam, please fill in" in result.inner_text()
    assert "reminder" in result.inner_text()
    _shot(page, "flow-test")
    assert console.tasks(sandbox_patient) == []  # the test wrote nothing

    page.get_by_role("button", name="Save").click()
    page.get_by_text("Saved Welcome forms on registration.").wait_for()
    saved = (console.flows_dir / "welcome-forms.toml").read_text()
    assert 'weekend = "next-monday"' in saved and "reminder = { amount = 1" in saved
    console.reloaded(2)  # the template, then the flow

    # A new Patient gets the Task; the run is in the history.
    _subscribe(console)
    first = console.new_patient("Pat-Browser-One")
    (task,) = wait_for(lambda: console.tasks(first), "the welcome Task", log=console.service.logs)
    assert task["instantiatesUri"].startswith("urn:fhir-smartflow:flow:welcome-forms:")
    wait_for(lambda: _runs_shown(page, console, first), "the run in the history", log=console.service.logs)
    assert "welcome-forms v1: ran" in page.locator(".run").first.inner_text()
    _shot(page, "history")

    # Disabled in place: the next Patient gets nothing (its run says why).
    page.goto(f"{console.base}/flows")
    _shot(page, "flows")
    page.get_by_role("button", name="Disable Welcome forms on registration").click()
    page.get_by_text("Welcome forms on registration is now disabled.").wait_for()
    console.reloaded(3)
    second = console.new_patient("Pat-Browser-Two")
    settle(console, webhook_deliveries=2)  # both Patients' notifications received and processed
    assert console.tasks(second) == []

    # A failed job (its Patient created unseen, no subscription), replayed from Operations once the flow is
    # enabled again: the worker runs it and writes the Task.
    requests.delete(f"{console.service.store}/Subscription/console", timeout=10)
    third = console.new_patient("Pat-Browser-Three")
    job_id = _failed_job(console, third)
    page.goto(f"{console.base}/flows")
    page.get_by_role("button", name="Enable Welcome forms on registration").click()
    page.get_by_text("Welcome forms on registration is now enabled.").wait_for()
    console.reloaded(4)
    page.goto(f"{console.base}/operations")
    page.locator(f"#job-{job_id}").wait_for()
    _shot(page, "operations")
    page.get_by_role("button", name=f"Replay job {job_id}").click()
    page.get_by_text(f"Job {job_id} replayed as").wait_for()
    assert page.locator(f"#job-{job_id}").count() == 0
    wait_for(lambda: console.tasks(third), "the replayed job's Task", log=console.service.logs)
    wait_for(lambda: _runs_shown(page, console, third), "the replayed job's run", log=console.service.logs)
    assert "welcome-forms v3: ran" in page.locator(".run").first.inner_text()  # disabled, enabled: v3


def test_pages_are_usable_at_a_narrow_width(console: Console, page: Any) -> None:
    page.set_viewport_size({"width": 380, "height": 800})
    page.goto(f"{console.base}/login")
    page.get_by_label("User").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")  # by keyboard
    page.get_by_role("heading", name="Flows").wait_for()
    flow = "/flows/missed-appointment"
    pages = ("/flows", flow, f"{flow}/doc", f"{flow}/versions", "/templates", "/templates/intake-forms", "/history",
             "/operations", "/audit")  # fmt: skip
    for path in pages:
        page.goto(console.base + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 380 + 1, f"{path} scrolls sideways at 380 px ({width} px)"
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                 .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).map(el => el.name)"""
        )
        assert unlabelled == [], f"{path}: fields without a label: {unlabelled}"
    page.goto(console.base + "/flows/missed-appointment")
    _shot_narrow = os.environ.get("SMARTFLOW_CONSOLE_SCREENSHOTS") == "1"
    if _shot_narrow:
        page.screenshot(path=str(SCREENSHOTS / "flow-editor-narrow.png"), full_page=False)
