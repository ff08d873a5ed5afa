"""Nobody is silently left out, end to end with the real parts (the `sandbox` store notifying `serve`, a
`worker` process, Redis): a staff message for a role nobody holds and a text to a patient with no phone
both end not-done with a coded reason, and `[roles] fallback` gets the notice; the chart note names the
clinician and location the appointment references (read from the store by the worker)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.communication import Communication

from fhir_smartflow.config import Settings
from fhir_smartflow.metrics import Metrics
from tests.support.channels import TwilioFake
from tests.support.fhir import client_id
from tests.support.lifecycle import PREFIX, Stack, category, medium, next_local, sms_config
from tests.support.net import wait_for

pytestmark = pytest.mark.integration

FALLBACK = "Group/on-call"


def _reason(comm: dict[str, Any]) -> str:
    return comm["statusReason"]["coding"][0]["code"]


def _to_fallback(stack: Stack, patient: str, topic: str) -> list[dict[str, Any]]:
    return [
        c
        for c in stack.comms(patient, "alert")
        if c.get("recipient") == [{"reference": FALLBACK}] and (c.get("topic") or {}).get("text") == topic
    ]


def test_unroutable_staff_message_and_unreachable_patient_reach_the_fallback(start_stack, serve_app) -> None:
    twilio = TwilioFake()
    stack = start_stack(sections={**sms_config(serve_app(twilio.app).url), "roles": {"fallback": FALLBACK}})
    stack.move_clock(next_local(12))  # daytime: no quiet-hours deferral
    stack.put({"resourceType": "Group", "id": "on-call", "type": "practitioner", "actual": True})
    stack.subscribe("Appointment", "QuestionnaireResponse")
    patient = stack.new_patient()  # no telecom: the text cannot go out

    # A follow-up form submitted: its notify goes to the clinicians, and no PractitionerRole is a clinician.
    now = datetime.now(UTC)
    stack.put(
        {
            "resourceType": "QuestionnaireResponse",
            "id": client_id(),
            "status": "completed",
            "questionnaire": "http://example.org/fhir/Questionnaire/follow-up",
            "subject": {"reference": patient},
            "authored": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    [routed] = wait_for(lambda: _to_fallback(stack, patient, "Message not routed: no clinician"), "fallback told")
    [message] = [c for c in stack.comms(patient, "alert") if c["status"] == "not-done"]
    assert (medium(message), _reason(message)) == ("staff-message", "recipient-unavailable")
    assert "clinician" in message["statusReason"]["text"] and "recipient" not in message
    assert routed["status"] == "completed" and "submitted" in routed["payload"][0]["contentString"]
    for comm in (message, routed):
        Communication.model_validate(comm)

    # A missed appointment: the text has no number, and its owner role (case-manager) has no member either.
    # Its clinician and location are named by reference only: the chart note reads their names.
    stack.put({"resourceType": "Practitioner", "id": "e2e-dr", "name": [{"prefix": ["Dr."], "family": "Okafor"}]})
    stack.put({"resourceType": "Location", "id": "e2e-loc", "name": "Main Street Clinic"})
    start = now - timedelta(hours=1)
    stack.put(
        {
            "resourceType": "Appointment",
            "id": client_id(),
            "status": "noshow",
            "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "participant": [
                {"actor": {"reference": patient}, "status": "accepted"},
                {"actor": {"reference": "Practitioner/e2e-dr"}, "status": "accepted"},  # no display: read
                {"actor": {"reference": "Location/e2e-loc"}, "status": "accepted"},
            ],
        }
    )
    [notice] = wait_for(lambda: _to_fallback(stack, patient, "Message not delivered"), "the failure notice")
    [text] = [c for c in stack.comms(patient) if medium(c) == "sms"]
    assert (text["status"], _reason(text)) == ("not-done", "invalid-phone-number")
    assert notice["about"] == [{"reference": f"Communication/{text['id']}"}] and category(notice) == "alert"
    assert twilio.requests == []
    stack.wait_settled()
    [note] = stack.search("DocumentReference", subject=patient)
    text = base64.b64decode(note["content"][0]["attachment"]["data"]).decode()
    assert " with Dr. Okafor at Main Street Clinic." in text, text

    metrics = Metrics(stack.conn, PREFIX)
    assert metrics.counter_value("unroutable_messages", flow="followup-form-submitted", role="clinician") == 1
    log = stack.log()
    assert "nobody holds role clinician" in log and "routed to Group/on-call" in log


def test_doctor_warns_about_a_role_nobody_holds(tmp_path, sandbox_server: str, redis_url: str) -> None:
    from click.testing import CliRunner

    from fhir_smartflow.cli import main
    from tests.support.fhir import seed
    from tests.support.toml import write_config

    system, _, code = Settings().roles["case-manager"].partition("|")  # whatever code the shipped role has
    case_manager = {"system": system, "code": code}
    seed(
        sandbox_server,
        {"resourceType": "PractitionerRole", "id": "cm", "active": True, "code": [{"coding": [case_manager]}]},
    )
    sections = {"redis": {"url": redis_url}, "fhir": {"base_url": sandbox_server}}
    config = write_config(tmp_path / "c.toml", {**sections, "roles": {"fallback": "Group/missing"}})
    result = CliRunner().invoke(main, ["--config", str(config), "doctor", "--check", "role-members", "--json"])
    findings = {f["detail"].split(" ", 1)[0].rstrip(":"): f for f in json.loads(result.output)}
    assert findings["case-manager"]["status"] == "ok"
    clinician = findings["clinician"]
    assert clinician["status"] == "warn" and "followup-form-submitted" in clinician["detail"]
    assert "they go to the fallback Group/missing" in clinician["detail"]
    assert findings["[roles]"]["status"] == "warn"  # the fallback itself does not exist
