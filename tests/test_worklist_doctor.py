"""`doctor --check worklist-smart` against the sandbox as the EHR (a real `sandbox` process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_smartflow.cli import main
from tests.support.toml import write_config
from tests.support.worklist import start_ehr

pytestmark = pytest.mark.integration


def doctor(config: Path) -> tuple[int, list[dict[str, str]]]:
    result = CliRunner().invoke(main, ["--config", str(config), "doctor", "--check", "worklist-smart", "--json"])
    return result.exit_code, json.loads(result.output)


def test_worklist_check_reads_the_smart_configuration(processes, tmp_path: Path) -> None:
    ehr = start_ehr(processes, tmp_path, serve_port=9).base
    worklist = {"client_id": "worklist", "public_url": "https://smartflow.example/worklist"}
    config = write_config(tmp_path / "c.toml", {"fhir": {"base_url": ehr}, "worklist": worklist})
    code, findings = doctor(config)
    assert code == 0 and [f["status"] for f in findings] == ["ok"], findings


def test_worklist_check_fails_without_smart_or_secret(processes, tmp_path: Path, sandbox_server: str) -> None:
    worklist = {"client_id": "worklist", "client_secret_env": "WL_UNSET_SECRET_FOR_TEST"}
    config = write_config(tmp_path / "c.toml", {"fhir": {"base_url": sandbox_server}, "worklist": worklist})
    code, findings = doctor(config)
    assert code == 1
    statuses = {f["status"] for f in findings}
    assert statuses == {"fail", "warn"}
    assert any("WL_UNSET_SECRET_FOR_TEST" in f["detail"] for f in findings)
    assert any("smart-configuration" in f["detail"] for f in findings)
