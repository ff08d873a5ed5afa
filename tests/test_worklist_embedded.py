"""The worklist in `serve --embedded` (one real process: the sandbox store as the EHR, the worker, the
worklist): the shipped intake flow's review task reaches the case manager's worklist from an EHR launch."""

from __future__ import annotations

import pytest
import requests

from tests.support.net import free_port, wait_for
from tests.support.procs import smartflow_cmd
from tests.support.toml import write_config
from tests.support.worklist import CLIENT_ID, ENV, FHIR, ehr_launch, put, sandbox_sections, seed_staff

pytestmark = pytest.mark.integration


def test_embedded_serve_mounts_the_worklist_on_the_sandbox(processes, tmp_path) -> None:
    port = free_port()
    sections = sandbox_sections(port)
    sections["sandbox"]["database"] = str(tmp_path / "sandbox.sqlite")
    sections["worklist"] = {"client_id": CLIENT_ID, "client_secret_env": "WL_CLIENT_SECRET"}
    config = write_config(tmp_path / "smartflow.toml", sections)
    serve = processes(smartflow_cmd("serve", "--embedded", "--port", str(port)),
                      {**ENV, "SMARTFLOW_CONFIG": str(config)}, "embedded")  # fmt: skip
    serve.wait_http(f"http://127.0.0.1:{port}/healthz")
    ehr = f"http://127.0.0.1:{port}/sandbox/fhir"
    seed_staff(ehr)
    put(ehr, {"resourceType": "Patient", "id": "emb1", "active": True, "birthDate": "1970-01-01",
              "name": [{"given": ["Emma"], "family": "Bedded"}]})  # fmt: skip

    def review() -> list[dict]:
        found = requests.get(f"{ehr}/Task", params={"patient": "Patient/emb1"}, headers=FHIR, timeout=10).json()
        tasks = [e["resource"] for e in found.get("entry", [])]
        return [t for t in tasks if t.get("performerType")]

    (task,) = wait_for(review, "the intake review task", serve.output)
    launch = ehr_launch(ehr, "emb1", "alice")
    assert launch.page.url == f"http://127.0.0.1:{port}/worklist/"
    assert f'data-task="{task["id"]}"' in launch.page.text and "Emma Bedded" in launch.page.text
    assert "Emma" not in serve.output()  # no names in the logs
