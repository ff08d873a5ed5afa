"""Every enqueue path gives its jobs the configured ``[redis] job_timeout_seconds``, not rq's default:
gap recovery (through the service runtime, against the sandbox store), the real `replay` command, the
follow-up scheduler and the webhook. Real Redis throughout."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import requests
from rq.job import Job
from rq.registry import FailedJobRegistry

from fhir_smartflow.config import load_settings
from fhir_smartflow.engine.plan import Schedule
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.queueing import enqueue_events, make_queue
from fhir_smartflow.scheduling.scheduler import build_scheduler
from fhir_smartflow.worker.gaps import Gap
from fhir_smartflow.worker.runtime import build_service_runtime
from tests.support.procs import ROOT
from tests.support.service import write_service_config

pytestmark = pytest.mark.integration

TIMEOUT = 77  # neither rq's default (180) nor ours (300)
PREFIX = "jt:"


def write_config(tmp_path: Path, redis_url: str, fhir_base: str = "") -> Path:
    subscription = """
[[subscriptions]]
id = "appointments"
header = "X-Smartflow-Secret"
secret_env = "JT_SECRET"
criteria = "Appointment?"
resource_types = ["Appointment", "Patient"]
"""
    extra = f"job_timeout_seconds = {TIMEOUT}"
    config = write_service_config(tmp_path, prefix=PREFIX, redis_url=redis_url, fhir_base=fhir_base, extra=extra)
    config.write_text(config.read_text() + subscription)
    return config


def event(number: int) -> ResourceEvent:
    return ResourceEvent(
        subscription="appointments",
        resource_type="Appointment",
        resource_id="a1",
        received_at="2026-03-02T15:00:00+00:00",
        event_number=number,
        source="webhook",
    )


def test_recovered_jobs_carry_the_configured_timeout(sandbox_server: str, redis_conn, redis_url, tmp_path) -> None:
    appointment = {"resourceType": "Appointment", "id": "a1", "status": "noshow", "participant": []}
    put = requests.put(f"{sandbox_server}/Appointment/a1", json=appointment, timeout=10)
    assert put.status_code in (200, 201), put.text
    settings = load_settings(write_config(tmp_path, redis_url, sandbox_server), env={"JT_SECRET": "s"})
    rt = build_service_runtime(settings, redis_conn)
    rt.gap_recovery.recover("appointments", Gap("appointments", 4, 5, "2026-03-02T15:00:00Z", "2000-01-01T00:00:00Z"))
    jobs = rt.queue.get_jobs()
    assert [j.args[0]["source"] for j in jobs] == ["recovery"]  # found by _lastUpdated: the sandbox has no topic
    assert [j.timeout for j in jobs] == [TIMEOUT]


def test_replayed_jobs_carry_the_configured_timeout(redis_conn: redis.Redis, redis_url: str, tmp_path, run_cli) -> None:
    config = write_config(tmp_path, redis_url)
    # A job enqueued by a process with another timeout, that then failed for good.
    old_queue = make_queue(redis_conn, "smartflow", PREFIX)  # the default, 300 s
    (job_id,) = enqueue_events(old_queue, [event(1)])
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.timeout == 300
    FailedJobRegistry(queue=old_queue).add(job, exc_string="Traceback ...\nFhirUnavailable: down")

    done = run_cli("replay", "--json", env={"SMARTFLOW_CONFIG": str(config), "JT_SECRET": "s"})
    assert done.returncode == 0, done.stderr
    [replayed] = json.loads(done.stdout)["replayed"]
    new = Job.fetch(replayed["new_job_id"], connection=redis_conn)
    assert new.args[0]["source"] == "replay"
    assert new.timeout == TIMEOUT


def test_followup_and_webhook_jobs_carry_the_configured_timeout(redis_conn, redis_url, tmp_path, monkeypatch) -> None:
    from fhir_smartflow.app import create_app

    monkeypatch.setenv("JT_SECRET", "s")  # the webhook reads subscription secrets from the environment
    settings = load_settings(write_config(tmp_path, redis_url), env={"JT_SECRET": "s"})
    scheduler = build_scheduler(settings, redis_conn)
    due = scheduler.clock() - timedelta(seconds=1)
    scheduler.schedule(Schedule(at=due, kind="reminder", identifier="f/a/Schedule/r", payload={}))
    assert scheduler.tick() == 1
    [followup] = scheduler.queue.get_jobs()
    assert followup.timeout == TIMEOUT

    app = create_app(settings, redis_conn)
    bundle = json.loads((ROOT / "tests/fixtures/notifications/backport-r4-event-full-resource.json").read_text())
    answer = app.test_client().post(settings.server.notify_path, json=bundle, headers={"X-Smartflow-Secret": "s"})
    assert answer.status_code < 300, answer.get_data(as_text=True)
    events = [j for j in scheduler.queue.get_jobs() if j.id != followup.id]
    assert events and {j.timeout for j in events} == {TIMEOUT}
