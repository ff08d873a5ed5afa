"""`doctor`'s OpenEMR checks against the emulator (7.0.0-dev): client enabled, tokens, category, resource types."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import redis

from fhir_smartflow.config import EngineConfig
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.flowfiles import load_engine
from fhir_smartflow.openemr.factory import build_openemr_target
from fhir_smartflow.tooling.doctor.checks import run_checks
from fhir_smartflow.tooling.doctor.model import DoctorContext
from tests.support.openemr import ENV, authorize, make_settings
from tests.test_openemr_target import note

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
FORM_FLOW = """
id = "f"
name = "Form"
enabled = true
version = "1"
trigger = "patient.registered"

[[actions]]
name = "Send form"
category = "smartflow"
type = "send-form"
item = "http://example.org/fhir/Questionnaire/intake"
template = "t"
methods = ["portal"]
owner = "patient"
"""
TEMPLATE = 'id = "t"\nname = "T"\nmethods = ["portal"]\nbody = "Please fill in {{ form.title }}: {{ form.link }}"\n'


def findings(settings, conn, names):
    ctx = DoctorContext(
        settings, lambda: FhirClient.from_settings(settings), lambda: conn, lambda: load_engine(settings)
    )
    return {f.check: f for f in run_checks(ctx, names)}


def test_doctor_checks_an_openemr_installation(
    emulator, redis_url: str, redis_conn: redis.Redis, key_file: Path, tmp_path: Path, monkeypatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "flows").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "flows/f.toml").write_text(FORM_FLOW)
    (tmp_path / "templates/t.toml").write_text(TEMPLATE)
    settings = make_settings(emulator, redis_url, key_file, types=["Patient"])
    settings = dataclasses.replace(
        settings,
        engine=EngineConfig(
            mappings=[str(ROOT / "mappings")], flows=[str(tmp_path / "flows")], templates=[str(tmp_path / "templates")]
        ),
        openemr=dataclasses.replace(settings.openemr, local_store=str(tmp_path / "local.sqlite3")),
    )
    names = ["openemr-read-token", "openemr-write-token", "openemr-category", "flow-resource-types"]
    emulator.clients["smartflow-client"]["enabled"] = False  # as OpenEMR stores a new registration
    first = findings(settings, redis_conn, names)
    assert first["openemr-read-token"].status == "fail" and "API Clients" in first["openemr-read-token"].fix
    assert first["openemr-write-token"].status == "fail" and "openemr authorize" in first["openemr-write-token"].fix
    emulator.enable_client("smartflow-client")
    authorize(settings, redis_conn)
    second = findings(settings, redis_conn, names)
    assert second["openemr-read-token"].status == "ok" and second["openemr-write-token"].status == "ok"
    assert second["flow-resource-types"].status == "warn" and "Questionnaire" in second["flow-resource-types"].detail
    assert second["openemr-category"].status == "warn"  # nothing uploaded yet: not verifiable over the API
    puuid = emulator.add_patient("Doe", "Jane")
    build_openemr_target(settings, redis_conn, env=ENV).create(note(puuid, "n/d/document/1"), "n/d/document/1")
    assert findings(settings, redis_conn, names)["openemr-category"].status == "ok"
    (tmp_path / "flows/f.toml").write_text(FORM_FLOW + 'form_title = "Intake questionnaire"\n')
    assert findings(settings, redis_conn, names)["flow-resource-types"].status == "ok"
