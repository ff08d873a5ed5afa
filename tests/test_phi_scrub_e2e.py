"""PHI stays out of logs (every level), run history and Communication.statusReason when the FHIR server
and the SMS provider quote it back, with the real parts: the `sandbox` store behind a real HTTP front
that refuses Task writes with an OperationOutcome quoting the resource and the patient (as validating
servers do), `serve` and a `worker` logging at DEBUG, and a Twilio-shaped provider whose error quotes
the number and the message."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from flask import Flask, Response, jsonify, request

from fhir_smartflow.connections import Keys
from tests.support.channels import TwilioFake
from tests.support.lifecycle import PREFIX, Stack, medium, next_local, sms_config
from tests.support.net import wait_for
from tests.support.service import merged

pytestmark = pytest.mark.integration

NAME = ("Quintessa", "Oddfellow")
MRN = "MRN-778899"
PHONE = "+15557654321"
MESSAGE = "we missed you at your appointment"  # in the shipped missed-appointment text
FORWARDED = ("Content-Type", "Accept", "Prefer", "If-None-Exist", "If-Match", "Authorization")


class QuotingServer:
    """In front of the sandbox: forwards everything, but answers a Task write (alone or in a Bundle)
    with 422 and diagnostics that quote the request and name the patient."""

    def __init__(self, serve: Any) -> None:
        self.target = ""
        self.ready = threading.Event()
        self.refused = 0
        app = Flask("quoting-server")
        app.add_url_rule("/", "root", self._forward, methods=["GET", "POST"], defaults={"path": ""})
        app.add_url_rule("/<path:path>", "any", self._forward, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
        self.url = serve(app).url

    def _forward(self, path: str) -> Any:
        if not self.ready.wait(30):
            return Response(status=503)
        body = request.get_data()
        if request.method in ("POST", "PUT") and _writes_a_task(body):
            self.refused += 1
            quoted = body.decode()[:1500]
            diagnostics = (
                f"HAPI-0450: Task for {' '.join(NAME)} ({MRN}), phone {PHONE}, Task.description value "
                f'"{MESSAGE}" failed validation: {quoted}'
            )
            issue = {"severity": "error", "code": "processing", "diagnostics": diagnostics, "expression": ["Task"]}
            return jsonify({"resourceType": "OperationOutcome", "issue": [issue]}), 422
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED}
        answer = requests.request(
            request.method, f"{self.target}/{path}", params=request.args, data=body, headers=headers, timeout=30
        )
        kept = {k: v for k, v in answer.headers.items() if k in ("Content-Type", "Location", "ETag", "Last-Modified")}
        if "Location" in kept:
            kept["Location"] = kept["Location"].replace(self.target, self.url)
        content = answer.content.replace(self.target.encode(), self.url.encode())  # links name the front
        return Response(content, status=answer.status_code, headers=kept)


def _writes_a_task(body: bytes) -> bool:
    try:
        data = json.loads(body or b"null")
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    if data.get("resourceType") == "Task":
        return True
    entries = data.get("entry") or [] if data.get("resourceType") == "Bundle" else []
    return any((e.get("resource") or {}).get("resourceType") == "Task" for e in entries if isinstance(e, dict))


class QuotingTwilio(TwilioFake):
    """Refuses every text with an error quoting the number and the message, as some providers do."""

    def __init__(self) -> None:
        super().__init__()
        self.app.view_functions["create"] = self._refuse

    def _refuse(self, sid: str, resource: str) -> Any:
        form = request.form.to_dict()
        self.requests.append((resource, form))
        message = f"The 'To' number {form.get('To')} cannot receive \"{form.get('Body')}\""
        return jsonify({"code": 21610, "message": message, "status": 400}), 400


def phi_in(text: str) -> list[str]:
    digits = PHONE.lstrip("+")
    found = [v for v in (*NAME, MRN, PHONE, digits[-7:], MESSAGE) if v.lower() in text.lower()]
    return found


def test_server_and_provider_texts_quoting_phi_never_reach_logs_history_or_status_reasons(
    start_stack, serve_app
) -> None:
    front = QuotingServer(serve_app)
    twilio = QuotingTwilio()
    sections = merged(sms_config(serve_app(twilio.app).url), {"logging": {"level": "DEBUG"}})
    stack: Stack = start_stack(sections=sections, workers=0)
    front.target = stack.service.store
    front.ready.set()
    # The worker writes through the quoting front (the webhook keeps the store's own address).
    config = stack.service.config
    worker_config = config.with_name("worker.toml")
    worker_config.write_text(config.read_text().replace(f'"{front.target}"', f'"{front.url}"'))
    stack.service.env = {**stack.service.env, "SMARTFLOW_CONFIG": str(worker_config)}
    stack.start_worker()
    stack.move_clock(next_local(12))
    stack.subscribe("Appointment")
    pid = "phi-scrub-patient"
    stack.put(
        {
            "resourceType": "Patient",
            "id": pid,
            "active": True,
            "name": [{"given": [NAME[0]], "family": NAME[1]}],
            "birthDate": "1970-05-06",
            "identifier": [
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                 "system": "urn:example:mrn", "value": MRN}
            ],
            "telecom": [{"system": "phone", "value": PHONE, "use": "mobile"}],
        }
    )  # fmt: skip
    patient = f"Patient/{pid}"
    stack.appointment(patient, "noshow", datetime.now(UTC) - timedelta(hours=1))

    [text] = wait_for(
        lambda: [c for c in stack.comms(patient) if medium(c) == "sms" and c["status"] == "not-done"],
        "the refused text recorded",
        stack.log,
    )
    wait_for(lambda: front.refused >= 2, "the Task refused (in the transaction, then alone)", stack.log)
    stack.wait_settled()
    assert twilio.requests, "the provider was asked"

    reason = text["statusReason"]
    assert reason["coding"][0]["code"] == "system-error"
    assert "21610" in reason["text"] and not phi_in(reason["text"]), reason

    history = [v.decode() for k in stack.conn.scan_iter(f"{PREFIX}run:*") if (v := stack.conn.get(k))]
    errors = [e for record in history for e in json.loads(record).get("errors", [])]
    assert any("Task" in e and "422" in e for e in errors), errors  # the error is recorded, without PHI
    assert not phi_in("\n".join(history)), history
    failed_jobs = [
        v.decode(errors="replace")
        for k in stack.conn.scan_iter("rq:job:*")
        for v in [stack.conn.hget(k, "exc_info") or b""]
    ]
    assert not phi_in("\n".join(failed_jobs))

    logs = stack.service.logs()
    assert " DEBUG " in logs  # every level is in there
    assert "HAPI-0450" in logs or "422" in logs  # the refusal is logged ...
    assert not phi_in(logs), [line for line in logs.splitlines() if phi_in(line)][:5]  # ... without PHI
    assert Keys(PREFIX)  # the prefix the records were read under
