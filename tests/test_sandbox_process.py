"""The real `fhir-smartflow sandbox` process: file-backed store survives a restart; --faults works."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.support.net import free_port
from tests.support.procs import smartflow_cmd

FHIR = {"Content-Type": "application/fhir+json"}

pytestmark = pytest.mark.integration


def test_file_database_persists_across_restarts(processes: Callable, tmp_path: Path) -> None:
    db = tmp_path / "sandbox.sqlite"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = smartflow_cmd("sandbox", "--port", str(port), "--database", str(db), "--faults")

    first = processes(args, name="sandbox")
    first.wait_http(f"{base}/metadata")
    made = requests.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=FHIR, timeout=5).json()
    requests.put(f"{base}/Patient/{made['id']}", json={**made, "active": True}, headers=FHIR, timeout=5)
    assert requests.post(f"{base}/$faults", json={"fail_first": 1}, timeout=5).status_code == 200
    assert requests.get(f"{base}/Patient/{made['id']}", timeout=5).status_code == 503
    assert first.stop() == 0
    assert "NOT FOR PRODUCTION" in first.log_path.read_text()

    second = processes(smartflow_cmd("sandbox", "--port", str(port), "--database", str(db)), name="sandbox")
    second.wait_http(f"{base}/metadata")
    again = requests.get(f"{base}/Patient/{made['id']}", timeout=5).json()
    assert again["meta"]["versionId"] == "2" and again["active"] is True
    assert requests.get(f"{base}/Patient/{made['id']}/_history/1", timeout=5).status_code == 200
    # lastUpdated stays increasing across the restart
    newer = requests.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=FHIR, timeout=5).json()
    assert newer["meta"]["lastUpdated"] > again["meta"]["lastUpdated"]
    assert requests.post(f"{base}/$faults", json={"fail_first": 1}, timeout=5).status_code == 403


def test_bad_database_path_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fhir_smartflow.cli import main

    result = CliRunner().invoke(main, ["sandbox", "--port", "0", "--database", str(tmp_path / "no" / "x.db")])
    assert result.exit_code == 2
    assert "cannot open database" in result.output
