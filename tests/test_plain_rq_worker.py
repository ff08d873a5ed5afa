"""A plain `rq worker` process (rq's own CLI, forking worker) pointed at our queue runs the flows: its job
builds the service runtime from $SMARTFLOW_CONFIG. Without a [redis] url in that config the job fails,
saying why, instead of marking the event done. Real Redis, real sandbox store over HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
from rq.job import Job

from fhir_smartflow.config import load_settings
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.queueing import enqueue_events, queue_for
from tests.support.procs import child_env
from tests.support.service import write_service_config

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}
PREFIX = "plainrq:"


def config(tmp_path: Path, fhir_base: str, redis_url: str = "") -> Path:
    return write_service_config(tmp_path, prefix=PREFIX, redis_url=redis_url, fhir_base=fhir_base)


def registered_patient(store: str) -> ResourceEvent:
    patient = {
        "resourceType": "Patient",
        "id": "plain1",
        "birthDate": "1980-05-01",
        "name": [{"given": ["Ada"], "family": "Example"}],
        "telecom": [{"system": "phone", "value": "+15555550100"}],
    }
    stored = requests.put(f"{store}/Patient/plain1", json=patient, headers=FHIR, timeout=10).json()
    return ResourceEvent(
        subscription="smartflow-patient",
        resource_type="Patient",
        resource_id="plain1",
        received_at="2026-03-02T15:00:00+00:00",
        version_id=stored["meta"]["versionId"],
        interaction="create",
        resource=stored,
    )


def rq_worker_burst(redis_url: str, config_path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """rq's own `rq worker --burst` (the default, forking worker class) on our queue."""
    env = child_env({"SMARTFLOW_CONFIG": str(config_path)})
    rq_cli = [str(Path(sys.executable).with_name("rq"))]
    done = subprocess.run(
        [*rq_cli, "worker", "--burst", "--url", redis_url, "smartflow"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_plain_rq_worker_runs_the_flows(sandbox_server: str, redis_conn: redis.Redis, redis_url, tmp_path) -> None:
    path = config(tmp_path, sandbox_server, redis_url)
    queue = queue_for(redis_conn, load_settings(path).redis)
    (job_id,) = enqueue_events(queue, [registered_patient(sandbox_server)])

    rq_worker_burst(redis_url, path, tmp_path)

    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == "finished" and job.return_value() == "processed"
    tasks = FhirClient(sandbox_server).search("Task", {"patient": "Patient/plain1"})
    assert len(tasks) == 2  # the intake form's Task and the case manager's review: the flow ran
    assert not redis_conn.exists(f"{PREFIX}dispatched")  # not the ingest-only recording dispatcher


def test_plain_rq_worker_without_a_redis_url_in_the_config_fails_the_job_saying_why(
    sandbox_server: str, redis_conn: redis.Redis, redis_url, tmp_path
) -> None:
    path = config(tmp_path, sandbox_server)  # no [redis] url: an in-process queue, not the worker's Redis
    queue = queue_for(redis_conn, load_settings(path).redis)
    (job_id,) = enqueue_events(queue, [registered_patient(sandbox_server)])

    done = rq_worker_burst(redis_url, path, tmp_path)

    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == "scheduled"  # failed, kept for rq's retry: never "finished"
    assert "ConfigError: [redis] url: a plain `rq worker` runs our jobs only with" in done.stdout + done.stderr
    assert FhirClient(sandbox_server).search("Task", {"patient": "Patient/plain1"}) == []
    assert not redis_conn.exists(f"{PREFIX}dispatched")
