"""Against a real FHIR server (Medplum, HAPI FHIR, ...), only when one is given; skipped otherwise.

    SMARTFLOW_TEST_FHIR_BASE        the FHIR base, e.g. http://localhost:8103/fhir/R4
    SMARTFLOW_TEST_FHIR_CLIENT_ID   with SMARTFLOW_TEST_FHIR_CLIENT_SECRET: client-credentials auth
    SMARTFLOW_TEST_WEBHOOK_HOST     the address the server reaches this machine at (default 127.0.0.1)
    SMARTFLOW_TEST_SUBSCRIPTION_AUTH  header (default) or hmac (Medplum signs with the secret extension)

sync → doctor → a new Patient → the intake Task, Communications and Provenance exactly once → an
Appointment booked → noshow → the SMS Communication and the call-back Task → sync again changes nothing.
Resources are created by POST (real servers assign ids)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fhir_smartflow.config import load_settings
from fhir_smartflow.fhir.client import FhirClient
from tests.support.net import free_port, wait_for
from tests.support.procs import ROOT, run_cli, smartflow_cmd
from tests.support.toml import write_config

BASE = os.environ.get("SMARTFLOW_TEST_FHIR_BASE", "")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not BASE, reason="SMARTFLOW_TEST_FHIR_BASE (and credentials) not set: no real server"),
]
SECRET = uuid.uuid4().hex
INTAKE = (2, 3)  # Tasks, Communications of the intake flow (flows/examples/intake-forms.toml)


def _config(tmp_path: Path, redis_url: str, port: int) -> tuple[Path, dict[str, str]]:
    fhir: dict[str, Any] = {"base_url": BASE, "max_retries": 2}
    env = {"REAL_SUB_SECRET": SECRET}
    if os.environ.get("SMARTFLOW_TEST_FHIR_CLIENT_ID"):
        fhir |= {"auth": "client-credentials", "client_id": os.environ["SMARTFLOW_TEST_FHIR_CLIENT_ID"]}
        env["SMARTFLOW_FHIR_CLIENT_SECRET"] = os.environ.get("SMARTFLOW_TEST_FHIR_CLIENT_SECRET", "")
    auth = os.environ.get("SMARTFLOW_TEST_SUBSCRIPTION_AUTH", "header")
    subscription = {"id": "real", "auth": auth, "secret_env": "REAL_SUB_SECRET", "criteria": "Patient?",
                    "resource_types": ["Patient", "Appointment", "Task", "QuestionnaireResponse", "Encounter",
                                       "EpisodeOfCare", "CarePlan", "Coverage"]}  # fmt: skip
    prefix = f"real{uuid.uuid4().hex[:6]}:"
    sections = {
        "server": {"host": "0.0.0.0", "port": port},
        "redis": {"url": redis_url, "key_prefix": prefix},
        "fhir": fhir,
        "engine": {"flows": [str(ROOT / "flows/examples")], "mappings": [str(ROOT / "mappings")],
                   "templates": [str(ROOT / "templates")]},
    }  # fmt: skip
    config = write_config(tmp_path / "smartflow.toml", sections, [subscription])
    return config, {**env, "SMARTFLOW_CONFIG": str(config)}


def _client(config: Path, env: dict[str, str]) -> FhirClient:
    return FhirClient.from_settings(load_settings(config, env=env), env=env)


def test_a_real_server_end_to_end(processes, redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    config, env = _config(tmp_path, redis_url, port)
    host = os.environ.get("SMARTFLOW_TEST_WEBHOOK_HOST", "127.0.0.1")
    endpoint = f"http://{host}:{port}/fhir/notify"
    serve = processes(smartflow_cmd("serve"), env, "serve")
    worker = processes(smartflow_cmd("worker"), env, "worker")
    serve.wait_http(f"http://127.0.0.1:{port}/healthz")

    def logs() -> str:
        return serve.output() + worker.output()

    synced = run_cli("subscriptions", "sync", "--endpoint", endpoint, env=env, timeout=120)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    checks = ["fhir-base", "fhir-base-url", "fhir-auth", "service-device", "subscriptions"]
    doctor = run_cli("doctor", *[a for c in checks for a in ("--check", c)], env=env, timeout=120)
    assert doctor.returncode == 0, doctor.stdout

    client = _client(config, env)
    patient, _ = client.create({"resourceType": "Patient", "name": [{"family": "Realtest"}], "birthDate": "1970-05-06",
                                "telecom": [{"system": "phone", "value": "+15555550100", "use": "mobile"},
                                            {"system": "email", "value": "real@example.org"}]})  # fmt: skip
    ref = f"Patient/{patient['id']}"

    def intake() -> tuple[list[dict], list[dict]] | None:
        tasks = client.search("Task", {"patient": ref})
        comms = client.search("Communication", {"subject": ref})
        return (tasks, comms) if (len(tasks), len(comms)) >= INTAKE else None

    tasks, comms = wait_for(intake, "the intake resources", log=logs, timeout=120)
    assert (len(tasks), len(comms)) == INTAKE
    for resource in tasks + comms:
        tag = f"urn:fhir-smartflow:id|{resource['identifier'][0]['value']}/provenance"
        assert len(client.search("Provenance", {"_tag": tag})) == 1

    start = datetime.now(UTC) + timedelta(days=3)
    period = {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
              "end": (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip
    appointment, _ = client.create(
        {
            "resourceType": "Appointment",
            "status": "booked",
            **period,
            "participant": [{"actor": {"reference": ref}, "status": "accepted"}],
        }
    )
    client.update({**appointment, "status": "noshow"})

    def noshow() -> tuple[list[dict], list[dict]] | None:
        sms = [c for c in client.search("Communication", {"subject": ref}) if "missed-appointment" in str(c)]
        callback = [t for t in client.search("Task", {"patient": ref}) if "missed-appointment" in str(t)]
        return (sms, callback) if sms and callback else None

    sms, callback = wait_for(noshow, "the SMS Communication and the call-back Task", log=logs, timeout=120)
    assert len(sms) == 1 and len(callback) == 1

    again = run_cli("subscriptions", "sync", "--endpoint", endpoint, env=env, timeout=120)
    assert again.returncode == 0 and again.stdout.startswith("nothing changed"), again.stdout + again.stderr
