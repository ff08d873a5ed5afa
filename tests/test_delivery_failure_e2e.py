"""notify_on_failure end to end with the real parts: the `sandbox` store process notifies `serve`, a
`worker` process runs the shipped missed-appointment flow, and a Twilio-shaped provider rejects the text
with a permanent 400. The case managers get one in-EHR staff message about it — also when the same
notification is delivered three times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.communication import Communication

from fhir_smartflow.metrics import Metrics
from tests.support.channels import TwilioFake
from tests.support.fhir import client_id
from tests.support.lifecycle import PREFIX, SYSTEM, Stack, category, medium, next_local, sms_config
from tests.support.net import wait_for
from tests.support.relay import Relay, subscribe_through

pytestmark = pytest.mark.integration

REJECTED = (400, {}, {"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400})


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
    aid = client_id()
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
