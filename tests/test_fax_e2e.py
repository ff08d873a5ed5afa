"""A channel added without touching the core, end to end: `tests/fax_channel.py` registered through
``[delivery] plugins`` (a module on the processes' PYTHONPATH, as a clinic's own package would be) with its
``[channels.fax]`` table. The sandbox store notifies `serve`, the `worker` runs a flow whose action uses
``methods = ["fax"]``, writes the Communication with the plugin's medium and sends the fax to a real HTTP
receiver this test runs."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.communication import Communication

from fhir_smartflow.channels import PARTICIPATION_MODE
from fhir_smartflow.metrics import Metrics
from tests.support.fhir import client_id
from tests.support.lifecycle import PREFIX, Stack, category, medium
from tests.support.net import Receiver, wait_for
from tests.support.procs import ROOT

pytestmark = pytest.mark.integration

FAX_NUMBER = "+15557654321"


def fax_sections(url: str) -> dict[str, dict[str, Any]]:
    return {"delivery": {"plugins": ["fax=tests.fax_channel:FaxChannel"]}, "channels": {"fax": {"url": url}}}


def new_fax_patient(stack: Stack) -> str:
    pid = client_id()
    stack.put(
        {
            "resourceType": "Patient",
            "id": pid,
            "active": True,
            "name": [{"given": ["Faxy"], "family": "Testperson"}],
            "telecom": [{"system": "phone", "value": "+15551230000"}, {"system": "fax", "value": FAX_NUMBER}],
        }
    )
    return f"Patient/{pid}"


def test_a_plugin_channel_is_used_by_a_flow(start_stack, serve_app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # where the clinic's module (tests/fax_channel.py) is found
    gateway = Receiver(status=201, body={"id": "FX1"}).listen(serve_app)
    stack = start_stack(flows=("tests/fixtures/fax",), sections=fax_sections(gateway.url + "/fax"))
    stack.subscribe("Patient")
    patient = new_fax_patient(stack)

    def faxed() -> list[dict[str, Any]]:
        return [c for c in stack.comms(patient) if medium(c) == "fax" and c["status"] == "completed"]

    [comm] = wait_for(faxed, "the fax Communication completed", stack.log)
    Communication.model_validate(comm)
    [coding] = comm["medium"][0]["coding"]
    assert coding == {"system": PARTICIPATION_MODE, "code": "FAXWRIT", "display": "telefax"}  # the plugin's
    assert category(comm) == "notification" and comm["recipient"] == [{"reference": patient}]
    stack.wait_settled()
    [page] = gateway.seen()
    assert (page.method, page.path) == ("POST", "/fax")
    sent = page.json()
    assert sent["to"] == FAX_NUMBER  # the telecom entry of the channel's system, not the phone
    assert sent["body"].startswith("Dear Faxy, welcome to ") and sent["subject"].startswith("Welcome to ")
    assert sent["idempotency_key"].startswith("welcome-fax/")
    assert Metrics(stack.conn, PREFIX).counter_value("deliveries", channel="fax", status="sent") == 1
