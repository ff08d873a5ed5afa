"""The console's pages through HTTP (the app on a real Redis, the flow files in a tmp site): what the editor
saves, what it refuses (an invalid flow, a stale edit), enable / disable in place, versions, replay."""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry

from fhir_smartflow.batch_queueing import outcome_key
from fhir_smartflow.console import create_console_app
from fhir_smartflow.console.deps import build_console_deps
from fhir_smartflow.console.forms import form_from_post, write_flow
from fhir_smartflow.defaults import QUEUE_NAME
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.queueing import PROCESS_EVENT, PROCESS_EVENTS, job_description
from tests.support.console_flow import POSTED
from tests.support.engine import SETTINGS, patient
from tests.support.procs import ROOT

pytestmark = pytest.mark.integration

PASSWORD = "a long enough test password"


@dataclass
class Site:
    client: Any
    flows: Path
    conn: redis.Redis
    deps: Any

    def post(self, url: str, data: Any, **kw: Any) -> Any:
        page = self.client.get("/flows")
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert token, page.text
        fields = data.copy() if hasattr(data, "copy") else dict(data)
        fields["csrf_token"] = token.group(1)
        return self.client.post(url, data=fields, **kw)


@pytest.fixture
def site(redis_conn: redis.Redis, tmp_path: Path) -> Iterator[Site]:
    flows = tmp_path / "flows"
    shutil.copytree(ROOT / "flows" / "examples", flows)
    (flows / "intake-forms.toml").unlink()
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    engine = dataclasses.replace(
        SETTINGS.engine, flows=[str(flows)], templates=[str(templates)], mappings=[str(ROOT / "mappings")]
    )
    redis_config = dataclasses.replace(SETTINGS.redis, key_prefix="cp:")
    settings = dataclasses.replace(SETTINGS, engine=engine, redis=redis_config)
    deps = build_console_deps(settings, redis_conn, secret_key="s" * 40)
    deps.accounts.add("ann", PASSWORD, "admin")
    app = create_console_app(deps)
    app.config.update(SESSION_COOKIE_SECURE=False, SESSION_COOKIE_PATH="/")  # the test client is plain HTTP at /
    client = app.test_client()
    login = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
    assert token
    done = client.post("/login", data={"username": "ann", "password": PASSWORD, "csrf_token": token.group(1)})
    assert done.status_code == 302
    yield Site(client, flows, redis_conn, deps)


def _save(site: Site, fields: Any, url: str = "/flows/new") -> Any:
    data = fields.copy()
    data["step"] = "save"
    return site.post(url, data)


def test_a_flow_saved_from_the_editor_is_the_form_written_as_toml(site: Site):
    response = _save(site, POSTED)
    assert response.status_code == 302 and response.headers["Location"].endswith("/flows/welcome-forms")
    assert (site.flows / "welcome-forms.toml").read_text() == write_flow(form_from_post(POSTED))
    page = site.client.get("/flows")
    assert "Welcome forms" in page.text and 'aria-label="Disable Welcome forms"' in page.text


def test_an_invalid_flow_is_not_saved_and_its_errors_are_at_the_fields(site: Site):
    bad = POSTED.copy()
    bad["condition"] = "birthDate <= today() -"
    bad["actions-0-due_unit"] = "fortnights"
    response = _save(site, bad)
    assert response.status_code == 422
    assert not (site.flows / "welcome-forms.toml").exists()
    html = response.text
    assert re.search(r'<p class="field-error" id="condition-error" role="alert">', html)
    assert re.search(r'id="actions-0-due_unit-error" role="alert">unknown unit', html)
    assert re.search(r'id="condition"[^>]*aria-describedby="condition-hint condition-error" aria-invalid="true"', html)


def test_a_stale_save_is_refused_and_shows_the_newer_version(site: Site):
    assert _save(site, POSTED).status_code == 302
    page = site.client.get("/flows/welcome-forms")
    etag = re.search(r'name="etag" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    first = POSTED.copy()
    first["etag"], first["name"] = etag, "Renamed by the first administrator"
    assert _save(site, first, "/flows/welcome-forms").status_code == 302
    second = POSTED.copy()
    second["etag"], second["name"] = etag, "Renamed by the second administrator"
    refused = _save(site, second, "/flows/welcome-forms")
    assert refused.status_code == 409
    assert "Someone saved this flow meanwhile" in refused.text and "Renamed by the first administrator" in refused.text
    assert "second administrator" not in (site.flows / "welcome-forms.toml").read_text()
    versions = site.client.get("/flows/welcome-forms/versions")
    assert "+name = &#34;Renamed by the first administrator&#34;" in versions.text and "ann" in versions.text


def test_disable_in_place_changes_only_enabled_and_the_version(site: Site):
    path = site.flows / "missed-appointment.toml"
    before = path.read_text()
    page = site.client.get("/flows")
    row = page.text[page.text.index('id="flow-missed-appointment"') :]
    etag = re.search(r'name="etag" value="([^"]+)"', row).group(1)  # type: ignore[union-attr]
    response = site.post("/flows/missed-appointment/enabled", {"enabled": "false", "etag": etag})
    assert response.status_code == 302
    after = path.read_text()
    changed = sorted(set(after.splitlines()) ^ set(before.splitlines()))
    assert changed == ["enabled = false", 'version = "2"', 'version = "3"'], changed  # it had no `enabled`
    assert "is now disabled" in site.client.get("/flows").text


def test_the_test_button_runs_the_unsaved_flow_on_a_pasted_patient_and_writes_nothing(site: Site):
    import json

    fields = POSTED.copy()
    fields["step"] = "test"
    fields["test_resource"] = json.dumps(patient("p9"))
    response = site.post("/flows/new", fields)
    assert response.status_code == 200
    assert "this flow RUNS" in response.text and "Writes Task" in response.text and "Message via sms" in response.text
    assert not (site.flows / "welcome-forms.toml").exists()


def test_replay_puts_one_failed_job_back_on_the_queue(site: Site):
    event = ResourceEvent("sandbox", "Patient", "p1", datetime.now(UTC).isoformat(), resource=patient("p1"))
    job = Job.create(PROCESS_EVENT, args=[event.to_dict()], connection=site.conn,
                     description=job_description(event), origin=QUEUE_NAME)  # fmt: skip
    job.save()
    queue = Queue(QUEUE_NAME, connection=site.conn)
    FailedJobRegistry(queue=queue).add(job, exc_string="FhirUnavailable: down")
    assert job.id in site.client.get("/operations").text
    response = site.post(f"/operations/failed/{job.id}/replay", {})
    assert response.status_code == 302
    assert FailedJobRegistry(queue=queue).get_job_ids() == []
    (queued,) = queue.get_jobs()
    assert queued.args[0]["source"] == "replay" and queued.args[0]["resource_id"] == "p1"
    assert "job.replay" in site.client.get("/audit").text


def test_replay_of_a_failed_batch_puts_back_only_its_unfinished_events(site: Site):
    now = datetime.now(UTC).isoformat()
    events = [
        ResourceEvent("sandbox", "Patient", pid, now, resource=patient(pid)).to_dict() for pid in ("p1", "p2", "p3")
    ]
    job = Job.create(PROCESS_EVENTS, args=[events], connection=site.conn, description="process_events 3 event(s)",
                     origin=QUEUE_NAME)  # fmt: skip
    job.save()
    # Its last attempt: p1 processed, p2 failed, p3 never reached (a claim held elsewhere).
    site.conn.set(outcome_key("cp:", job.id, 0), "processed")
    site.conn.set(outcome_key("cp:", job.id, 1), "failed")
    queue = Queue(QUEUE_NAME, connection=site.conn)
    FailedJobRegistry(queue=queue).add(job, exc_string="BatchFailed: 2 of 3 event(s) failed (first: RuntimeError)")
    assert site.post(f"/operations/failed/{job.id}/replay", {}).status_code == 302
    assert FailedJobRegistry(queue=queue).get_job_ids() == []
    queued = queue.get_jobs()
    assert [(j.func_name, j.args[0]["resource_id"], j.args[0]["source"]) for j in queued] == [
        (PROCESS_EVENT, "p2", "replay"),
        (PROCESS_EVENT, "p3", "replay"),
    ]


def test_the_template_preview_renders_the_sample_record_and_names_an_unknown_field(site: Site):
    fields = {"body": "Hi {{ patient.first_name }}, due {{ task.due }}", "subject": "{{ patient.nickname }}"}
    shown = site.post("/templates/preview", fields).get_json()
    assert shown["body"]["text"].startswith("Hi Alex, due ")
    assert "nickname" in shown["subject"]["error"]


def test_a_template_saved_from_the_editor_loads_and_keeps_its_multiline_body(site: Site):
    fields = {
        "id": "welcome-sms",
        "name": "Welcome (SMS)",
        "status": "enabled",
        "methods": "sms",
        "body": 'Hi {{ patient.first_name }},\r\nplease fill in "{{ form.title }}".',
        "step": "save",
    }
    response = site.post("/templates/new", fields)
    assert response.status_code == 302, response.text
    text = (site.flows.parent / "templates" / "welcome-sms.toml").read_text()
    assert 'body = """Hi {{ patient.first_name }},\nplease fill in "{{ form.title }}"."""' in text
    assert "Saved template welcome-sms." in site.client.get(response.headers["Location"]).text


def test_lint_warnings_are_shown_before_saving(site: Site):
    fields = POSTED.copy()
    fields["actions-0-reminder_amount"] = "3"  # a reminder as early as the due date is anchored on
    fields["step"] = "check"
    response = site.post("/flows/new", fields)
    assert response.status_code == 200
    assert "Lint warnings" in response.text and "reminder-not-before-due" in response.text
    assert not (site.flows / "welcome-forms.toml").exists()


def test_a_patient_of_the_fhir_server_is_tested_with_their_latest_resource_of_the_triggers_type(
    site: Site, sandbox_server: str
):
    import requests

    from fhir_smartflow.fhir.client import FhirClient

    fhir = dataclasses.replace(SETTINGS.fhir, base_url=sandbox_server)
    site.deps.fhir = FhirClient.from_settings(dataclasses.replace(SETTINGS, fhir=fhir))
    person = patient("p7", name=[{"family": "Tester", "given": ["Quinn"]}])
    appointment = {
        "resourceType": "Appointment",
        "id": "a7",
        "status": "booked",
        "start": "2026-12-20T15:00:00Z",
        "end": "2026-12-20T15:30:00Z",
        "participant": [{"actor": {"reference": "Patient/p7"}, "status": "accepted"}],
    }
    for resource in (person, appointment):
        url = f"{sandbox_server}/{resource['resourceType']}/{resource['id']}"
        assert requests.put(url, json=resource, timeout=10).status_code in (200, 201)
    before = requests.get(f"{sandbox_server}/Task", timeout=10).json().get("total")
    fields = POSTED.copy()
    fields["trigger"] = "appointment.booked"
    fields["actions-0-due_anchor"] = "appointment_start"
    fields["actions-0-due_direction"] = "before"
    fields["actions-0-due_amount"] = "2"
    fields["actions-0-reminder_amount"] = ""
    fields["step"] = "test"
    fields["test_patient"] = "Tester"
    response = site.post("/flows/new", fields)
    assert "Test result for Appointment/a7" in response.text, response.text
    assert "this flow RUNS" in response.text and "Hi Quinn" in response.text
    assert requests.get(f"{sandbox_server}/Task", timeout=10).json().get("total") == before  # nothing written

    # "Who is responsible" searches the server's Practitioners by name.
    practitioner = {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Lee", "given": ["Jordan"]}]}
    assert requests.put(f"{sandbox_server}/Practitioner/pr1", json=practitioner, timeout=10).status_code in (200, 201)
    found = site.client.get("/staff?q=Lee").get_json()
    assert {"reference": "Practitioner/pr1", "label": "Jordan Lee"} in found


def test_a_flow_deleted_from_the_editor_is_gone_and_its_versions_stay(site: Site):
    assert _save(site, POSTED).status_code == 302
    page = site.client.get("/flows/welcome-forms")
    etag = re.search(r'name="etag" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    response = site.post("/flows/welcome-forms/delete", {"etag": etag})
    assert response.status_code == 302
    assert not (site.flows / "welcome-forms.toml").exists()
    assert "Deleted welcome-forms" in site.client.get("/flows").text
    assert "flow.delete" in site.client.get("/audit").text
