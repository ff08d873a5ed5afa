"""A channel added without touching the core, end to end: `tests/fax_channel.py` registered through
``[delivery] plugins`` (a module on the processes' PYTHONPATH, as a clinic's own package would be) with its
``[channels.fax]`` table. The sandbox store notifies `serve`, the `worker` runs a flow whose action uses
``methods = ["fax"]``, writes the Communication with the plugin's medium and sends the fax to a real HTTP
receiver this test runs."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import ThreadedWsgiServer
from fhir.resources.R4B.communication import Communication
from flask import Flask, jsonify, request
from test_lifecycle_e2e import (  # noqa: F401 - start_stack is the fixture
    PREFIX,
    ROOT,
    Stack,
    category,
    medium,
    start_stack,
    wait_for,
)

from fhir_smartflow.channels import PARTICIPATION_MODE
from fhir_smartflow.metrics import Metrics

pytestmark = pytest.mark.integration

FAX_NUMBER = "+15557654321"


class FaxReceiver:
    """The fax gateway: keeps every page it is sent."""

    def __init__(self) -> None:
        self.pages: list[dict[str, Any]] = []
        app = Flask("fax-gateway")
        app.add_url_rule("/fax", "fax", self._fax, methods=["POST"])
        self.server = ThreadedWsgiServer(app)
        self.url = self.server.url + "/fax"

    def _fax(self) -> Any:
        self.pages.append(request.get_json())
        return jsonify({"id": f"FX{len(self.pages)}"}), 201


def fax_config(url: str) -> str:
    return f'[delivery]\nplugins = ["fax=tests.fax_channel:FaxChannel"]\n[channels.fax]\nurl = "{url}"\n'


def new_fax_patient(stack: Stack) -> str:
    pid = uuid.uuid4().hex[:16]
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


def test_a_plugin_channel_is_used_by_a_flow(start_stack, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # where the clinic's module (tests/fax_channel.py) is found
    receiver = FaxReceiver()
    try:
        stack = start_stack(flows=("tests/fixtures/fax",), extra_config=fax_config(receiver.url))
        stack.subscribe("Patient")
        patient = new_fax_patient(stack)

        def faxed() -> list[dict[str, Any]]:
            return [c for c in stack.comms(patient) if medium(c) == "fax" and c["status"] == "completed"]

        [comm] = wait_for(faxed, "the fax Communication completed", stack.log)
        Communication.model_validate(comm)
        [coding] = comm["medium"][0]["coding"]
        assert coding == {"system": PARTICIPATION_MODE, "code": "FAXWRIT", "display": "telefax"}  # the plugin's
        assert category(comm) == "notification" and comm["recipient"] == [{"reference": patient}]
        [page] = receiver.pages
        assert page["to"] == FAX_NUMBER  # the telecom entry of the channel's system, not the phone
        assert page["body"].startswith("Dear Faxy, welcome to ") and page["subject"].startswith("Welcome to ")
        assert page["idempotency_key"].startswith("welcome-fax/")
        stack.wait_settled()
        assert len(receiver.pages) == 1
        assert Metrics(stack.conn, PREFIX).counter_value("deliveries", channel="fax", status="sent") == 1
    finally:
        receiver.server.stop()
