"""notify_on_failure end to end with the real parts: the `sandbox` store process notifies `serve`, a
`worker` process runs the shipped missed-appointment flow, and a Twilio-shaped provider rejects the text
with a permanent 400. The case managers get one in-EHR staff message about it — also when the same
notification is delivered three times."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from fhir.resources.R4B.communication import Communication
from flask import Flask, Response, request

from fhir_smartflow.metrics import Metrics
from fhir_smartflow.sandbox.subscriptions import self_subscription
from tests.support.channels import TwilioFake
from tests.support.fhir import wait_subscription
from tests.support.lifecycle import PREFIX, SECRET, SYSTEM, Stack, category, medium, next_local, sms_config
from tests.support.net import wait_for

pytestmark = pytest.mark.integration

REJECTED = (400, {}, {"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400})
FORWARDED = ("Content-Type", "X-Smartflow-Secret")


class Relay:
    """Between the store and `serve`: forwards each notification and keeps it, to deliver it again."""

    def __init__(self, target: str, serve: Any) -> None:
        self.target = target
        self.received: list[tuple[bytes, dict[str, str]]] = []
        app = Flask("relay")
        app.add_url_rule("/", "relay", self._relay, methods=["POST"])
        self.url = serve(app).url + "/"

    def _relay(self) -> Response:
        body, headers = request.get_data(), {k: v for k, v in request.headers.items() if k in FORWARDED}
        self.received.append((body, headers))
        answer = self.deliver(body, headers)
        return Response(answer.content, status=answer.status_code, mimetype="application/fhir+json")

    def deliver(self, body: bytes, headers: dict[str, str]) -> requests.Response:
        return requests.post(self.target, data=body, headers=headers, timeout=10)

    def notification_about(self, reference: str) -> tuple[bytes, dict[str, str]] | None:
        return next(((b, h) for b, h in self.received if reference.encode() in b), None)


def subscribe_through(stack: Stack, relay: Relay, rtype: str) -> None:
    sid = f"nf-{rtype.lower()}"
    sub = self_subscription(sid, relay.url, f"X-Smartflow-Secret: {SECRET}", rtype, "backport", "full-resource", 0)
    put = requests.put(f"{stack.store}/Subscription/{sid}", json=sub, headers={"Content-Type": "application/fhir+json"})
    assert put.status_code < 300, put.text
    wait_subscription(stack.store, sid)


def case_managers(stack: Stack) -> str:
    """A case manager and a nurse; the notice must reach the case manager's PractitionerRole only."""
    stack.put({"resourceType": "Practitioner", "id": "cm-e2e"})
    for rid, code in (("cm-e2e-role", "768832004"), ("rn-e2e-role", "224535009")):
        coding = {"system": "http://snomed.info/sct", "code": code}
        stack.put(
            {
                "resourceType": "PractitionerRole",
                "id": rid,
                "active": True,
                "practitioner": {"reference": "Practitioner/cm-e2e"},
                "code": [{"coding": [coding]}],
            }
        )
    return "PractitionerRole/cm-e2e-role"


def no_show(stack: Stack, patient: str) -> str:
    aid = uuid.uuid4().hex[:16]
    start = datetime.now(UTC) - timedelta(hours=1)
    stack.put(
        {
            "resourceType": "Appointment",
            "id": aid,
            "status": "noshow",
            "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "participant": [{"actor": {"reference": patient}, "status": "accepted"}],
        }
    )
    return f"Appointment/{aid}"


def notices(stack: Stack, patient: str) -> list[dict[str, Any]]:
    return [c for c in stack.comms(patient, "alert") if (c.get("topic") or {}).get("text") == "Message not delivered"]


def test_a_rejected_text_reaches_the_case_manager_once(start_stack, serve_app) -> None:
    twilio = TwilioFake()
    twilio.script = [REJECTED]
    stack = start_stack(sections=sms_config(serve_app(twilio.app).url))
    _rejected_text_reaches_the_case_manager_once(stack, Relay(stack.notify, serve_app), twilio)


def _rejected_text_reaches_the_case_manager_once(stack: Stack, relay: Relay, twilio: TwilioFake) -> None:
    stack.move_clock(next_local(12))  # daytime: the text goes out at once
    owner = case_managers(stack)
    subscribe_through(stack, relay, "Appointment")
    patient = stack.new_patient(phone="+15551230009")
    appointment = no_show(stack, patient)

    [notice] = wait_for(lambda: notices(stack, patient), "the case manager told", stack.log)
    [text] = [c for c in stack.comms(patient) if medium(c) == "sms"]
    assert text["status"] == "not-done" and "21211" in text["statusReason"]["text"]
    Communication.model_validate(notice)
    assert (notice["status"], medium(notice), category(notice)) == ("completed", "staff-message", "alert")
    assert notice["recipient"] == [{"reference": owner}]
    assert notice["about"] == [{"reference": f"Communication/{text['id']}"}]

    # The same notification delivered twice more (a store retrying after a lost answer).
    body, headers = wait_for(lambda: relay.notification_about(appointment), "the no-show notification kept")
    metrics = Metrics(stack.conn, PREFIX)
    seen = metrics.counter_value("events", result="deduplicated")
    for _ in range(2):
        assert relay.deliver(body, headers).status_code < 300
    wait_for(
        lambda: metrics.counter_value("events", result="deduplicated") == seen + 2, "redeliveries handled", stack.log
    )
    stack.wait_settled()

    [again] = notices(stack, patient)
    identifier = next(i["value"] for i in again["identifier"] if i["system"] == SYSTEM)
    assert again["id"] == notice["id"] and identifier.endswith("/failure-notice")
    assert len(twilio.requests) == 1  # the text was tried once
    assert metrics.counter_value("failure_notices", channel="sms", result="created") == 1
