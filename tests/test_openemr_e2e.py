"""End to end without OpenEMR: emulator (real HTTP) + real Redis + poller + rq worker + engine + openemr target,
in both modelled OpenEMR versions, set up the way docs/openemr.md says.

`openemr register` → the administrator enables the client and creates the category → `openemr authorize` →
a new patient registered through the Standard API → the poller queues it within one pass → the worker runs
the intake flow → the OpenEMR message (staff task) and document (patient note, in its category) are created
exactly once. An appointment set to no-show in the calendar runs the missed-appointment flow. A second poll
doubles nothing; 500 / 429 answers for a while change nothing of that.
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
from fhir_smartflow.openemr.factory import build_openemr_target
from fhir_smartflow.worker.context import CachingContextSource
from fhir_smartflow.worker.execute import PlanExecutor
from fhir_smartflow.worker.pipeline import EnginePipeline
from fhir_smartflow.worker.prior import RedisPriorState
from fhir_smartflow.worker.runtime import build_runtime, install
from tests.support.openemr import SECRET_ENV, TOKEN_KEY, book_appointment, make_settings
from tests.support.openemr_emulator import OpenEmrEmulator
from tests.support.openemr_emulator_scopes import DEV, MODES

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
ENV = {"T_OPENEMR_KEY": TOKEN_KEY}
MISSED = """
id = "openemr-missed"
name = "Missed appointment (OpenEMR)"
enabled = true
version = "1"
trigger = "appointment.no_show"

[[actions]]
name = "Call back"
category = "smartflow"
type = "staff-task"
item = "e2e-callback"
template = "e2e-callback"
due = { amount = 1, unit = "days", anchor = "event" }
owner = { practitioner = "Practitioner/p1" }
"""
CALLBACK = """
id = "e2e-callback"
name = "Call back"
methods = []
body = "Call {{ patient.full_name }} back about the missed appointment."
"""

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
    files = {
        "flows/intake.toml": FLOW,
        "flows/missed.toml": MISSED,
        "templates/review.toml": REVIEW,
        "templates/note.toml": NOTE,
        "templates/callback.toml": CALLBACK,
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    settings = make_settings(emulator, redis_url, key_file, types=["Patient", "Appointment"])
    return dataclasses.replace(
        settings,
        engine=EngineConfig(
            mappings=[str(ROOT / "mappings")], flows=[str(tmp_path / "flows")], templates=[str(tmp_path / "templates")]
        ),
        openemr=dataclasses.replace(settings.openemr, local_store=str(tmp_path / "local.sqlite3")),
    )


def follow_the_guide(emulator: OpenEmrEmulator, settings: Settings, conn: redis.Redis, key_file: Path, tmp_path: Path):
    """docs/openemr.md steps 2-4: register (with the printed scopes), the administrator enables the client and
    creates the category, authorize once. Returns the settings with the registered client and the env."""
    from click.testing import CliRunner

    from fhir_smartflow.cli import main
    from tests.support.openemr import authorize

    config = tmp_path / "register.toml"
    config.write_text(f"""
[fhir]
base_url = "{emulator.fhir_base}"
private_key_file = "{key_file}"
key_id = "k1"
[openemr]
base_url = "{emulator.base_url}"
redirect_uri = "{settings.openemr.redirect_uri}"
client_secret_env = "{SECRET_ENV}"
[poll]
types = ["Patient", "Appointment"]
""")
    out = CliRunner().invoke(main, ["--config", str(config), "openemr", "register"])
    assert out.exit_code == 0, out.output
    lines = dict(line.split(" = ", 1) if " = " in line else (line, "") for line in out.output.splitlines())
    client_id = lines["client_id"].strip('"')
    secret = out.output.split(f"export {SECRET_ENV}='", 1)[1].split("'", 1)[0]
    read_scopes = lines["[fhir] scopes"].strip('"')
    assert "Enable" in out.output and client_id in emulator.clients
    assert not emulator.clients[client_id]["enabled"]  # OpenEMR stores it disabled
    emulator.enable_client(client_id)  # Administration → System → API Clients → Enable
    emulator.add_category("Smart Flows")  # the document category the guide says to create
    settings = dataclasses.replace(
        settings, fhir=dataclasses.replace(settings.fhir, client_id=client_id, scopes=read_scopes)
    )
    env = {**ENV, SECRET_ENV: secret}
    granted = authorize(settings, conn, env=env)
    assert granted["refresh_token"]
    return settings, env


def worker_runtime(settings: Settings, conn: redis.Redis, env: dict[str, str]):
    """What `worker` builds with [fhir] writeback = "openemr" (worker/runtime.py), built here so the token
    key comes from the test's environment (ENV)."""
    keys, metrics = Keys("t:"), Metrics(conn, "t:")
    reads = FhirClient.from_settings(settings, metrics)  # [fhir] auth = "smart-backend", as `worker` builds it
    target = build_openemr_target(settings, conn, metrics, env=env)
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


@pytest.mark.parametrize("mode", MODES)
def test_following_the_guide_a_new_patient_and_a_no_show_reach_openemr_exactly_once(
    mode: str, serve_app, redis_url: str, redis_conn: redis.Redis, key_file: Path, tmp_path: Path
) -> None:
    emulator = OpenEmrEmulator(mode)
    emulator.base_url = serve_app(emulator.app).url
    settings = e2e_settings(emulator, redis_url, key_file, tmp_path)
    settings, env = follow_the_guide(emulator, settings, redis_conn, key_file, tmp_path)
    rt, target = worker_runtime(settings, redis_conn, env)
    install(rt)
    front_desk = {
        "Authorization": "Bearer "
        + emulator.issue_user_token(
            "api:oemr user/patient.write user/patient.c user/appointment.write user/appointment.c"
        )
    }
    try:
        poller = build_poller(settings, redis_conn, env=env)
        assert [r.queued for r in poller.run_once()] == [0, 0]  # nothing yet
        made = requests.post(
            f"{emulator.api_base}/patient",
            headers=front_desk,
            timeout=5,
            json={"fname": "Jane", "lname": "Doe", "DOB": "1980-01-01", "sex": "Female"},
        )
        assert made.status_code == 201
        puuid = made.json()["data"]["uuid"]
        emulator.advance(30)
        assert {r.resource_type: r.queued for r in poller.run_once()}["Patient"] == 1  # within one pass
        emulator.fail_next(2, 500, prefix="/apis/default/api/patient/")  # OpenEMR struggling for a while
        emulator.fail_next(1, 429, prefix="/apis/default/api/patient/")
        drain(rt)
        again = poller.run_once()  # a second poll doubles nothing: the dev build's full scan queues nothing,
        assert mode != DEV or [r.queued for r in again] == [0, 0]  # a current release's overlap re-read is deduped
        drain(rt)
        [message] = emulator.messages
        assert message["to"] == "drsmith" and "Review the intake packet of Jane Doe" in message["body"]
        assert message["pid"] == 1
        [doc] = emulator.documents
        assert doc.content.decode().startswith("Intake flow started for Jane Doe")
        assert doc.category_id == emulator.categories.last_id_of_path("/Categories/Smart_Flows") is not None

        booked = book_appointment(emulator, front_desk)
        assert booked.status_code == 200
        assert {r.resource_type: r.queued for r in poller.run_once()}["Appointment"] == 1  # booked
        drain(rt)
        emulator.set_appointment_status(booked.json()["id"], "?")  # the calendar: no show
        assert {r.resource_type: r.queued for r in poller.run_once()}["Appointment"] == 1
        drain(rt)
        again = poller.run_once()
        assert mode != DEV or [r.queued for r in again] == [0, 0]
        drain(rt)
    finally:
        install(None)
    assert len(emulator.messages) == 2 and len(emulator.documents) == 1  # nothing doubled
    assert "Call Jane Doe back about the missed appointment" in emulator.messages[1]["body"]
    assert len(target.search("Task", {})) == 2
    assert {p.uuid for p in emulator.patients} == {puuid}
    assert emulator.log == []  # no undeclared search parameter was ever sent
