"""End to end without OpenEMR: emulator (real HTTP) + real Redis + poller + rq worker + engine + openemr target.

A new patient appears in the emulator → the poller queues it → the worker runs the intake flow → the OpenEMR
message (staff task) and document (patient note) are created exactly once, the canonical Task is in the local
store. A poller restarted mid-run and 500 / 429 answers for a while change nothing of that.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import redis
import requests
from rq import SimpleWorker
from rq.job import Job

from fhir_smartflow.config import EngineConfig, Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.flowfiles import load_engine
from fhir_smartflow.ingest.poll import build_poller
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.openemr.factory import build_openemr_target, user_token_store
from fhir_smartflow.openemr.tokens import build_authorization_request, exchange_code, parse_redirect
from fhir_smartflow.worker.context import CachingContextSource
from fhir_smartflow.worker.execute import PlanExecutor
from fhir_smartflow.worker.pipeline import EnginePipeline
from fhir_smartflow.worker.prior import RedisPriorState
from fhir_smartflow.worker.runtime import build_runtime, install
from tests.support.openemr import TOKEN_KEY, make_settings
from tests.support.openemr_emulator import OpenEmrEmulator

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
ENV = {"T_OPENEMR_KEY": TOKEN_KEY}

FLOW = """
id = "openemr-intake"
name = "Intake review on registration (OpenEMR)"
enabled = true
version = "1"
trigger = "patient.registered"

[[actions]]
name = "Review intake"
category = "smartflow"
type = "staff-task"
item = "e2e-review"
template = "e2e-review"
due = { amount = 3, unit = "days", anchor = "event" }
owner = { practitioner = "Practitioner/p1" }

[[actions]]
name = "Intake note"
category = "smartflow"
type = "patient-note"
item = "e2e-note"
template = "e2e-note"
methods = ["patient-note"]
"""
REVIEW = """
id = "e2e-review"
name = "Review intake"
methods = []
body = "Review the intake packet of {{ patient.full_name }} by {{ task.due }}."
"""
NOTE = """
id = "e2e-note"
name = "Intake started"
methods = ["patient-note"]
note_type = "progress-note"
body = "Intake flow started for {{ patient.full_name }}."
"""


def e2e_settings(emulator: OpenEmrEmulator, redis_url: str, key_file: Path, tmp_path: Path) -> Settings:
    for name, text in {"flows/intake.toml": FLOW, "templates/review.toml": REVIEW, "templates/note.toml": NOTE}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    settings = make_settings(emulator, redis_url, key_file, types=["Patient"])
    return dataclasses.replace(
        settings,
        engine=EngineConfig(
            mappings=[str(ROOT / "mappings")], flows=[str(tmp_path / "flows")], templates=[str(tmp_path / "templates")]
        ),
        openemr=dataclasses.replace(settings.openemr, local_store=str(tmp_path / "local.sqlite3")),
    )


def authorize(settings: Settings, conn: redis.Redis) -> None:
    store = user_token_store(settings, conn, env=ENV)
    emr = settings.openemr
    req = build_authorization_request(
        f"{emr.oauth_base}/authorize", store.client_id, emr.redirect_uri, emr.user_scopes, settings.fhir.base_url
    )
    code, state = parse_redirect(requests.get(req.url, allow_redirects=False, timeout=5).headers["Location"])
    exchange_code(store, req, code, state)


def worker_runtime(settings: Settings, conn: redis.Redis, emulator: OpenEmrEmulator):
    """What `worker` builds with [fhir] writeback = "openemr" (worker/runtime.py), built here so the token
    key comes from the test's environment (ENV)."""
    keys, metrics = Keys("t:"), Metrics(conn, "t:")
    reads = FhirClient.from_settings(settings, metrics)  # [fhir] auth = "smart-backend", as `worker` builds it
    target = build_openemr_target(settings, conn, metrics, env=ENV)
    executor = PlanExecutor(target, conn, keys, settings, metrics=metrics)
    pipeline = EnginePipeline(
        load_engine(settings),
        settings,
        RedisPriorState(conn, keys),
        lambda _event: CachingContextSource(reads),
        executor,
        conn,
        keys,
        metrics=metrics,
    )
    return build_runtime(settings, conn, dispatcher=pipeline), target


def drain(rt) -> None:
    """Run the worker until the queue is empty, running rq's scheduled retries at once instead of in 5 s."""
    for _ in range(10):
        SimpleWorker([rt.queue], connection=rt.redis).work(burst=True)
        registry = rt.queue.scheduled_job_registry
        waiting = registry.get_job_ids()
        if not waiting:
            return
        for job_id in waiting:
            registry.remove(job_id)
            rt.queue.enqueue_job(Job.fetch(job_id, connection=rt.redis))
    raise AssertionError("jobs still retrying")


def test_new_patient_runs_the_intake_flow_into_openemr_exactly_once(
    emulator: OpenEmrEmulator, redis_url: str, redis_conn: redis.Redis, key_file: Path, tmp_path: Path
) -> None:
    settings = e2e_settings(emulator, redis_url, key_file, tmp_path)
    authorize(settings, redis_conn)
    rt, target = worker_runtime(settings, redis_conn, emulator)
    install(rt)
    try:
        first = emulator.add_patient("Doe", "Jane")
        assert build_poller(settings, redis_conn).run_once()[0].queued == 1
        emulator.fail_next(2, 500, prefix="/apis/default/api/patient/")  # OpenEMR struggling for a while
        emulator.fail_next(1, 429, prefix="/apis/default/api/patient/")
        drain(rt)
        assert len(emulator.messages) == 1 and len(emulator.documents) == 1
        [message] = emulator.messages
        assert message["to"] == "drsmith" and "Review the intake packet of Jane Doe" in message["body"]
        assert emulator.documents[0]["content"].decode().startswith("Intake flow started for Jane Doe")
        [task] = target.search("Task", {"patient": f"Patient/{first}"}) or target.search("Task", {})
        assert task["owner"]["reference"] == "Practitioner/p1"  # canonical Task in the local store

        # The poller restarts mid-run (a new process: nothing in memory), a second patient arrives.
        emulator.advance(30)
        second = emulator.add_patient("Roe", "Rick")
        assert build_poller(settings, redis_conn).run_once()[0].queued >= 1
        drain(rt)
        assert build_poller(settings, redis_conn).run_once()[0].queued >= 1  # overlap re-reads: dedupe absorbs
        drain(rt)
    finally:
        install(None)
    pids = sorted(m["pid"] for m in emulator.messages)
    assert pids == [1, 2] and sorted(d["pid"] for d in emulator.documents) == [1, 2]  # nothing missed or doubled
    assert len(target.search("Task", {})) == 2
    assert Metrics(redis_conn, "t:").counter_value("events", result="processed") == 2
    assert {first, second} == {p["uuid"] for p in emulator.patients}
